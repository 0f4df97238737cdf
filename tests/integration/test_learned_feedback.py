"""Learned router feedback through Envoy (2 workers): weak-pool answers to one
kind of prompt scored 0 via POST /v1/feedback move that kind to the strong pool,
and only that kind. Shares are measured through the gateway (the
x-switchboard-pool header) over fixed probe sets that the feedback never sees."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "..", "router"))
from features import bucket_of  # noqa: E402  (the reference definition of the feedback buckets)

PARITY = os.path.join(HERE, "..", "fixtures", "learned", "parity.jsonl")
CHOICE, MATH, SHORT, MEDIUM = 2, 1, 3, 4


def kinds():
    """Multiple-choice questions (bucket 2), math (1), and the same questions without
    their options: short (3) and medium (4) prompts."""
    with open(PARITY) as f:
        rows = [json.loads(line) for line in f]
    choice = [r["prompt"] for r in rows if r["bucket"] == CHOICE]
    math = [r["prompt"] for r in rows if r["bucket"] == MATH]
    stems = [p.split("\nA.")[0] for p in choice]
    short = [p for p in stems if bucket_of(p) == SHORT]
    medium = [p for p in stems if bucket_of(p) == MEDIUM]
    return choice, math, short, medium


@pytest.fixture(scope="module")
def fb_gw(mock):
    # Its own gateway: the correction lives in shared data per router, and must start neutral.
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["pools"] = {"strong": {"members": [{"provider": "gamma", "model": "gpt-4"}]},
                    "weak": {"members": [{"provider": "beta", "model": "mixtral"}]}}
    cfg["routers"] = {"fb": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "strong_share": 0.3}}}
    g = Gateway(cfg, clusters_for(mock), KEYS)
    yield g
    g.stop()


def ask(client, gw, prompt):
    r = client.post(gw.base + "/v1/chat/completions", json=chat("fb", prompt))
    assert r.status_code == 200, r.text
    assert r.headers["x-switchboard-rule"] == "learned"
    return r


def strong_share(client, gw, prompts):
    with ThreadPoolExecutor(4) as ex:
        pools = list(ex.map(lambda p: ask(client, gw, p).headers["x-switchboard-pool"], prompts))
    return pools.count("strong") / len(pools)


def test_weak_answers_scored_zero_move_only_their_kind_to_strong(fb_gw):
    choice, math, short, medium = kinds()
    assert len(choice) >= 500 and len(math) >= 150 and len(short) >= 100 and len(medium) >= 100
    # The feedback's 300 prompts and the choice probes are disjoint.
    train, probes = choice[:300], {"choice": choice[300:], "math": math, "short": short,
                                   "medium": medium}
    with httpx.Client(timeout=20, limits=httpx.Limits(max_connections=8)) as client:
        before = {k: strong_share(client, fb_gw, ps) for k, ps in probes.items()}
        scored = 0
        # One at a time, so each score is in shared data before the next decision.
        for prompt in train:
            r = ask(client, fb_gw, prompt)
            if r.headers["x-switchboard-pool"] == "weak":
                fb = client.post(fb_gw.base + "/v1/feedback",
                                 json={"request_id": r.headers["x-switchboard-request-id"], "score": 0.0})
                assert fb.status_code == 204, fb.text
                scored += 1
        after = {k: strong_share(client, fb_gw, ps) for k, ps in probes.items()}
    print(f"{scored} weak answers scored 0; strong share before {before}, after {after}")
    assert scored >= 100, scored
    assert after["choice"] - before["choice"] >= 0.20, (before, after)
    for kind in ("math", "short", "medium"):
        assert abs(after[kind] - before[kind]) < 0.05, (kind, before, after)
