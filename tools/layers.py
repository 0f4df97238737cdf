#!/usr/bin/env python3
"""Checks the module layering of src/: no import circle between modules and no
import from a lower layer to a higher one, per the layer list in
docs/architecture.md (the lines between the `layers:begin` and `layers:end`
markers). Edges are the `use crate::`/`use super::` imports and the inline
`crate::`/`super::` paths of each file, test modules left out; a parent's
imports of its own submodules are its structure, not a dependency. The
`learned` crate is checked for circles too. Run by `make lint`; `-v` prints
the edges."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ARCH = ROOT / "docs" / "architecture.md"


def module_of(path, src):
    """src/api/tokens.rs -> ('api', 'tokens'); src/api/mod.rs -> ('api',)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


# Comments, raw strings (ending at `"` and as many `#`), strings, char literals.
LEXEMES = re.compile(
    r"//[^\n]*|/\*.*?\*/"
    r'|(?<![A-Za-z0-9_])b?r(#+)".*?"\1|(?<![A-Za-z0-9_])b?r"[^"]*"'
    r'|"(?:\\.|[^"\\])*"'
    r"|'(?:\\.|[^'\\])'",
    re.S,
)


def strip(text):
    """The file without comments, string literals and `#[cfg(test)]` items."""
    # One pass, left to right, so that `//` in a string or `"` in a comment is read as what it is in.
    text = re.sub(LEXEMES, lambda m: "" if m.group(0).startswith("/") else '""', text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        # Skip the attributed item: up to its `;` or its balanced `{...}`.
        j = m.end()
        while j < len(text) and text[j] not in ";{":
            j += 1
        if j < len(text) and text[j] == "{":
            depth = 0
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def use_paths(text):
    """Every path a `use` statement names, grouped imports expanded."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        toks = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\{|\}|,|\*", m.group(1).replace("::", " "))
        pos = 0

        def tree(prefix):
            # One use tree: a path, then `{...}` of trees, `as name`, or nothing.
            nonlocal pos
            path = list(prefix)
            while pos < len(toks):
                tok = toks[pos]
                if tok == "{":
                    pos += 1
                    while pos < len(toks) and toks[pos] != "}":
                        if toks[pos] == ",":
                            pos += 1
                            continue
                        tree(path)
                    pos += 1
                    return
                if tok in ",}":
                    break
                pos += 1
                if tok == "as":
                    pos += 1
                    break
                if tok != "*":
                    path.append(tok)
            if path:
                paths.append("::".join(path))

        tree([])
    return paths


def inline_paths(text):
    return re.findall(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)", text)


def resolve(path, here, modules):
    """The module a `crate::`/`super::`/`self::` path lands in (`()`: the crate root), or None for other crates."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base = here
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    elif segs[0] == "self":
        base, segs = here, segs[1:]
    else:
        return None
    mod = base
    for s in segs:
        if mod + (s,) in modules:
            mod = mod + (s,)
        else:
            break
    return mod


def layers():
    text = ARCH.read_text()
    m = re.search(r"layers:begin -->(.*?)<!-- layers:end", text, re.S)
    if not m:
        sys.exit(f"{ARCH}: no layers:begin/layers:end block")
    order = {}
    # One layer a line: `1. `a`, `b`: what they are`, names before the first colon.
    for n, line in enumerate(l for l in m.group(1).splitlines() if re.match(r"\s*\d+\.", l)):
        head = re.sub(r"^\s*\d+\.", "", line).split(": ", 1)[0]
        for name in re.findall(r"`([a-z_:]+)`", head):
            order[tuple(name.split("::"))] = n
    return order


def layer_of(mod, order):
    for k in range(len(mod), -1, -1):
        if mod[:k] in order:
            return order[mod[:k]], mod[:k]
    return None, None


def graph(src):
    """The modules of the crate at `src` (test modules left out) and their import edges."""
    files = [f for f in sorted(src.rglob("*.rs")) if "bin" not in f.relative_to(src).parts]
    # Files that are test modules (`#[cfg(test)] mod x;` in their parent).
    tests = set()
    for f in files:
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", f.read_text()):
            tests.add(module_of(f, src) + (m.group(1),))
    modules = {module_of(f, src): f for f in files if module_of(f, src) not in tests}
    edges = {}
    for mod, f in modules.items():
        text = strip(f.read_text())
        for p in use_paths(text) + inline_paths(text):
            to = resolve(p, mod, modules)
            # Outside the crate, the crate root, itself, or one of its own submodules.
            if not to or to[: len(mod)] == mod:
                continue
            edges.setdefault(mod, {}).setdefault(to, p)
    return modules, edges


def circles(modules, edges):
    """Strongly connected components of more than one module."""
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sccs


def check(crate, src, order):
    """Problems of one crate: circles, and with a layer `order` upward imports."""
    modules, edges = graph(src)

    def name(m):
        return "::".join((crate,) + m)

    problems = []
    for a in sorted(modules) if order is not None else []:
        la, ka = layer_of(a, order)
        if la is None:
            if a:
                problems.append(f"{name(a)}: in no layer of docs/architecture.md")
            continue
        for b, p in sorted(edges.get(a, {}).items()):
            lb, kb = layer_of(b, order)
            if lb is not None and lb > la:
                problems.append(f"upward: {name(a)} (layer of `{'::'.join(ka)}`) uses `{p}` (layer of `{'::'.join(kb)}`)")
    for comp in circles(modules, edges):
        detail = "; ".join(
            f"{name(a)} -> {name(b)} (`{p}`)" for a in sorted(comp) for b, p in sorted(edges.get(a, {}).items()) if b in comp
        )
        problems.append(f"circle: {', '.join(sorted(name(c) for c in comp))}: {detail}")
    if "-v" in sys.argv:
        for a, outs in sorted(edges.items()):
            print(name(a), "->", ", ".join(sorted(name(b) for b in outs)))
    return modules, edges, problems


def main():
    problems, counts = [], []
    # The filter by the layers of docs/architecture.md; the learned crate (below
    # all of them, depending on nothing of the filter's) for circles.
    for crate, src, order in (("crate", SRC, layers()), ("learned", ROOT / "learned" / "src", None)):
        modules, edges, found = check(crate, src, order)
        problems += found
        counts.append(f"{crate}: {len(modules)} modules, {sum(len(o) for o in edges.values())} edges")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"layers: {'; '.join(counts)}; no circle, nothing upward")


if __name__ == "__main__":
    main()
