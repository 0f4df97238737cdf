"""Hedging and shadow latency through Envoy (2 workers) with the mock provider:
client latency with and without hedge_after_ms, with and without a slow shadow.
Run from the repository root: .venv/bin/python bench/hedging_shadow.py"""
import sys, time, statistics, httpx
sys.path.insert(0, "tests/integration")
from conftest import KEYS, base_config
from harness import MockProvider, Gateway, chat
from test_hedging import hedged_config
m = MockProvider({"alpha": "", "beta": "", "gamma": "", "secret": ""})
cl = {n: m.addrs[n] for n in m.addrs}
c = httpx.Client(timeout=10)
def run(gw, n, body):
    out = []
    for _ in range(n):
        t = time.monotonic(); r = c.post(gw.base + "/v1/chat/completions", json=body); assert r.status_code == 200
        out.append((time.monotonic() - t) * 1000)
    out.sort(); return round(statistics.median(out)), round(out[int(len(out) * 0.9) - 1]), r.headers["x-switchboard-member"]
for label, cfg in [("no hedging", hedged_config(200)), ("hedge_after_ms 200", hedged_config(200))]:
    if label == "no hedging":
        del cfg["pools"]["gpt4o_16k"]["hedge_after_ms"]
    g = Gateway(cfg, cl, KEYS)
    m.reset(); m.faults("alpha", latency_ms=2000); m.faults("beta", latency_ms=50)
    print(label, "A 2000 ms, B 50 ms:", run(g, 10 if label == "no hedging" else 30, chat("gpt4o_16k")))
    m.reset()
    print(label, "A 0 ms:", run(g, 50, chat("gpt4o_16k")))
    g.stop()
for label, shadow in [("no shadow", None), ("shadow sample 1.0, shadow 2 s", {"provider": "gamma", "model": "gpt-4o-mini", "sample": 1.0})]:
    cfg = base_config(**({"shadow": shadow} if shadow else {}))
    g = Gateway(cfg, cl, KEYS); m.reset(); m.faults("gamma", latency_ms=2000)
    run(g, 10, chat("gpt4o_16k"))
    print(label, run(g, 100, chat("gpt4o_16k")))
    g.stop()
m.stop()
