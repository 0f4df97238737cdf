"""Canary rollback: a canary member failing much more than its pool's other
members drops to weight 0 on every worker. Envoy with 2 workers."""
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import base_config
from harness import chat, member_stat

CANARY = "beta/gpt-4o-2024-08-06"


def canary_config(min_requests=20):
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["pools"]["gpt4o_16k"]["members"] = [
        {"provider": "alpha", "model": "gpt-4o", "weight": 1},
        {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 1,
         "canary": {"max_error_rate": 0.2, "min_requests": min_requests}},
    ]
    return cfg


def send(gw, n, concurrency=4):
    def one(_):
        with httpx.Client(timeout=10) as c:
            return [c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k")).status_code
                    for _ in range(n // concurrency)]
    with ThreadPoolExecutor(concurrency) as ex:
        return [s for part in ex.map(one, range(concurrency)) for s in part]


def test_failing_canary_is_rolled_back_on_every_worker(make_gateway, mock):
    gw = make_gateway(canary_config(20))
    mock.faults("beta", status=500, rate=0.6)
    # About half the requests try the canary first; its failures fail over to alpha.
    assert set(send(gw, 120)) == {200}
    time.sleep(1.2)  # the other worker reads the rollback on its next tick
    stats = gw.stats()
    assert stats[member_stat("gpt4o_16k", CANARY, "canary_rollbacks")] == 1
    assert f"canary {CANARY} rolled back" in gw.logs()
    mock.reset("beta")
    before = mock.count("beta")
    assert set(send(gw, 80)) == {200}
    assert mock.count("beta") == before, "a rolled-back canary still got requests"


def test_healthy_canary_keeps_its_share(make_gateway, mock):
    # Both fail alike: the canary is no worse than the others. At 10% errors and
    # 40 canary attempts before a verdict, chance alone (an error rate 0.2 above
    # the others', about 4 standard deviations) practically never rolls it back.
    gw = make_gateway(canary_config(40))
    mock.faults("alpha", status=500, rate=0.1)
    mock.faults("beta", status=500, rate=0.1)
    send(gw, 120)
    stats = gw.stats()
    assert stats.get(member_stat("gpt4o_16k", CANARY, "canary_rollbacks"), 0) == 0
    mock.reset()
    send(gw, 80)
    assert mock.count("beta") > 15
