#!/usr/bin/env python3
"""Checks the module layering of src/: no import circle between modules and no
import from a lower layer to a higher one, per the layer list in
docs/architecture.md (the lines between the `layers:begin` and `layers:end`
markers). Edges are the `use crate::`/`use super::` imports and the inline
`crate::`/`super::` paths of each file, test modules left out; a parent's
imports of its own submodules are its structure, not a dependency."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ARCH = ROOT / "docs" / "architecture.md"


def module_of(path):
    """src/api/tokens.rs -> ('api', 'tokens'); src/api/mod.rs -> ('api',)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip(text):
    """The file without comments, string literals and `#[cfg(test)]` items."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "' '", text)
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
    """The module a `crate::`/`super::` path lands in, or None when outside src/."""
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
    for n, line in enumerate(l for l in m.group(1).splitlines() if l.strip().startswith(("-", "*", "1", "2", "3", "4", "5", "6", "7", "8", "9"))):
        for name in re.findall(r"`([a-z_:]+)`", line):
            order[tuple(name.split("::"))] = n
    return order


def layer_of(mod, order):
    for k in range(len(mod), -1, -1):
        if mod[:k] in order:
            return order[mod[:k]], mod[:k]
    return None, None


def main():
    files = sorted(SRC.rglob("*.rs"))
    files = [f for f in files if "bin" not in f.relative_to(SRC).parts]
    # Files that are test modules (`#[cfg(test)] mod x;` in their parent).
    tests = set()
    for f in files:
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", f.read_text()):
            tests.add(module_of(f) + (m.group(1),))
    files = [f for f in files if module_of(f) not in tests]
    modules = {module_of(f): f for f in files}
    edges = {}
    for mod, f in modules.items():
        text = strip(f.read_text())
        for p in use_paths(text) + inline_paths(text):
            to = resolve(p, mod, modules)
            if to is None or to == mod or to[: len(mod)] == mod:
                continue  # itself, or one of its own submodules
            if mod[: len(to)] == to and not to:
                continue  # the crate root
            edges.setdefault(mod, {}).setdefault(to, p)
    order = layers()
    problems = []
    for a, outs in sorted(edges.items()):
        la, ka = layer_of(a, order)
        if la is None:
            problems.append(f"{'::'.join(a)}: in no layer of docs/architecture.md")
            continue
        for b, p in sorted(outs.items()):
            lb, kb = layer_of(b, order)
            if lb is not None and lb > la:
                problems.append(f"upward: {'::'.join(a)} (layer of `{'::'.join(ka)}`) uses `{p}` (layer of `{'::'.join(kb)}`)")
    # Circles: strongly connected components of the module graph.
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
    for comp in sccs:
        names = sorted("::".join(c) for c in comp)
        detail = "; ".join(
            f"{'::'.join(a)} -> {'::'.join(b)} (`{p}`)"
            for a in sorted(comp)
            for b, p in sorted(edges.get(a, {}).items())
            if b in comp
        )
        problems.append(f"circle: {', '.join(names)}: {detail}")
    if "-v" in sys.argv:
        for a, outs in sorted(edges.items()):
            print("::".join(a) or "crate", "->", ", ".join(sorted("::".join(b) for b in outs)))
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"layers: {len(modules)} modules, {sum(len(o) for o in edges.values())} edges, no circle, nothing upward")


if __name__ == "__main__":
    main()
