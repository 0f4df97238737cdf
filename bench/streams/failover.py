#!/usr/bin/env python3
"""Streaming failover measured with the mock provider (bench/results/streams-failover.md).

    .venv/bin/python bench/streams/failover.py [--wasm PATH] [--label NAME]

Modes: `buffered` (render.py stream_failover=False: failover through the
filter's HTTP calls, whose answers arrive whole) and `redirect` (the upstream
filter + internal redirect, the default). Measured on one Envoy per mode:
(1) alpha answers 503 at once, beta streams 20 events over 2 s: time to the
client's first event; (2) beta streams at once: time to first event and to
the end; (3) no failure (alpha streams at once): time to first event; (4) non-streaming, alpha 503 half the time, 8 concurrent clients:
latency of failed-over vs direct requests and requests per second."""
import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
from harness import Gateway, MockProvider, chat  # noqa: E402
from conftest import KEYS, base_config  # noqa: E402
import httpx  # noqa: E402

ALPHA_FIRST = [
    {"provider": "alpha", "model": "gpt-4o", "weight": 1},
    {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 0},
]


def timed_stream(client, gw, attempts="2"):
    start = time.monotonic()
    first = None
    with client.stream("POST", gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and first is None:
                first = time.monotonic() - start
        assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == attempts, r.status_code
    return first, time.monotonic() - start


def ms(xs, q=0.5):
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def hammer(gw, n, concurrency):
    def one(_):
        out = []
        with httpx.Client(timeout=30) as c:
            for _ in range(n // concurrency):
                t = time.monotonic()
                r = c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
                out.append((r.status_code, time.monotonic() - t, r.headers.get("x-switchboard-attempts")))
        return out

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as ex:
        results = [x for part in ex.map(one, range(concurrency)) for x in part]
    return results, time.monotonic() - start


def measure(mock, mode):
    clusters = {n: mock.addrs[n] for n in ("alpha", "beta", "gamma", "secret")}
    out = {}
    gw = Gateway(base_config(members=ALPHA_FIRST, health={"consecutive_failures": 100000}), clusters, KEYS,
                 stream_failover=(mode == "redirect"))
    try:
        with httpx.Client(timeout=30) as c:
            mock.reset()
            mock.faults("alpha", status=503)
            mock.faults("beta", stream_chunks=20, stream_delay_ms=100)
            runs = [timed_stream(c, gw) for _ in range(5)]
            out["slow_first_event_ms_p50"] = ms([f for f, _ in runs])
            out["slow_total_ms_p50"] = ms([t for _, t in runs])
            mock.reset("beta")
            timed_stream(c, gw)
            runs = [timed_stream(c, gw) for _ in range(200)]
            out["fast_first_event_ms_p50"] = ms([f for f, _ in runs])
            out["fast_first_event_ms_p90"] = ms([f for f, _ in runs], 0.9)
            out["fast_total_ms_p50"] = ms([t for _, t in runs])
            mock.reset("alpha")
            runs = [timed_stream(c, gw, attempts="1") for _ in range(200)]
            out["direct_first_event_ms_p50"] = ms([f for f, _ in runs])
            out["direct_first_event_ms_p90"] = ms([f for f, _ in runs], 0.9)
    finally:
        gw.stop()
    # Non-streaming: a weighted pool (no standby) so half the requests go direct.
    gw = Gateway(base_config(health={"consecutive_failures": 100000}), clusters, KEYS,
                 stream_failover=(mode == "redirect"))
    try:
        mock.reset()
        mock.faults("alpha", status=503, rate=0.5)
        hammer(gw, 64, 8)
        results, secs = hammer(gw, 2000, 8)
        assert all(s == 200 for s, *_ in results)
        direct = [t for _, t, a in results if a == "1"]
        failed_over = [t for _, t, a in results if a == "2"]
        out["nonstream_direct_ms_p50"] = ms(direct)
        out["nonstream_failover_ms_p50"] = ms(failed_over)
        out["nonstream_failover_ms_p90"] = ms(failed_over, 0.9)
        out["nonstream_failovers"] = len(failed_over)
        out["nonstream_rps"] = round(len(results) / secs)
    finally:
        gw.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default=harness.WASM)
    ap.add_argument("--modes", default="buffered,redirect")
    args = ap.parse_args()
    harness.WASM = args.wasm
    mock = MockProvider({"alpha": f"key={KEYS['ALPHA_KEY']}", "beta": f"key={KEYS['BETA_KEY']}",
                         "gamma": f"key={KEYS['GAMMA_KEY']}", "secret": ""})
    try:
        for mode in args.modes.split(","):
            print(json.dumps({"mode": mode, "wasm": os.path.basename(args.wasm), **measure(mock, mode)}), flush=True)
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
