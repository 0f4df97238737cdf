"""Shadow traffic (pool `shadow`): a sampled share of requests is copied to
the shadow member, measured and discarded. Envoy with 2 workers."""
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import base_config
from harness import chat, pool_stat

SHADOW = {name: pool_stat("gpt4o_16k", f"shadow_{name}") for name in
          ("requests", "failures", "prompt_tokens", "completion_tokens")}


def shadow_config(sample):
    return base_config(shadow={"provider": "gamma", "model": "gpt-4o-mini", "sample": sample})


def send(gw, n, concurrency=4, body=None):
    body = body or chat("gpt4o_16k")

    def one(_):
        with httpx.Client(timeout=10) as c:
            out = []
            for _ in range(n // concurrency):
                t = time.monotonic()
                r = c.post(gw.base + "/v1/chat/completions", json=body)
                out.append((r.status_code, time.monotonic() - t))
            return out

    with ThreadPoolExecutor(concurrency) as ex:
        return [x for part in ex.map(one, range(concurrency)) for x in part]


def test_half_of_200_requests_are_copied_and_measured(make_gateway, mock):
    gw = make_gateway(shadow_config(0.5))
    results = send(gw, 200)
    assert {s for s, _ in results} == {200}
    time.sleep(0.5)  # the last copies leave on the next tick
    copies = mock.count("gamma")
    # Binomial(200, 0.5): mean 100, sd about 7; 60..140 is over 5 sd.
    assert 60 <= copies <= 140, copies
    body = mock.requests("gamma")[-1]["body"]
    assert body["model"] == "gpt-4o-mini", body
    stats = gw.stats()
    assert stats[SHADOW["requests"]] == copies
    assert stats.get(SHADOW["failures"], 0) == 0
    assert stats[SHADOW["completion_tokens"]] > 0 and stats[SHADOW["prompt_tokens"]] > 0
    # The client's answers all came from the pool's members.
    assert mock.count("alpha") + mock.count("beta") == 200


def test_client_never_waits_for_a_slow_shadow_and_its_answer_is_still_measured(make_gateway, mock):
    gw = make_gateway(shadow_config(1.0))
    mock.faults("gamma", latency_ms=2000)
    results = send(gw, 20, concurrency=2)
    latencies = sorted(t for _, t in results)
    assert {s for s, _ in results} == {200}
    assert latencies[len(latencies) // 2] < 0.3 and latencies[-1] < 1.0, latencies
    # The copies' answers come after their requests ended: the root context still measures them.
    time.sleep(2.5)
    stats = gw.stats()
    assert stats[SHADOW["requests"]] == 20
    assert gw.alive() and "panicked" not in gw.logs()


def test_failing_shadow_is_counted_and_never_reaches_the_client(make_gateway, mock):
    gw = make_gateway(shadow_config(1.0))
    mock.faults("gamma", status=500)
    results = send(gw, 10, concurrency=2)
    assert {s for s, _ in results} == {200}
    time.sleep(0.3)
    stats = gw.stats()
    assert stats[SHADOW["requests"]] == 10 and stats[SHADOW["failures"]] == 10
    # The shadow is no pool member: its failures touch no member health.
    assert not any("gamma" in k and v for k, v in stats.items() if k.startswith("wasmcustom.switchboard.member."))
