"""Request-aware routing through Envoy (2 workers): candidate filters by
capability, context window and tags; strategies (least_busy, lowest_latency,
lowest_cost, priority) with failover; routers by rule; the learned router and
its feedback endpoint."""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

HERE = os.path.dirname(__file__)
PARITY = os.path.join(HERE, "..", "fixtures", "learned", "parity.jsonl")


def member(provider, model, **facts):
    return {"provider": provider, "model": model, **facts}


def policies_config():
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["max_body_bytes"] = 1_000_000
    cfg["pools"] = {
        "vision": {"members": [member("alpha", "seer", capabilities=["vision", "tools"]),
                               member("beta", "blind", capabilities=["tools"])]},
        "ctx": {"members": [member("alpha", "big", context_window=128000),
                            member("beta", "small", context_window=8000)]},
        "tagged": {"members": [member("alpha", "eu-model", tags=["eu"]), member("beta", "us-model", tags=["us"])]},
        "latency": {"strategy": "lowest_latency", "explore": 0.05,
                    "members": [member("alpha", "slow"), member("beta", "fast")]},
        "busy": {"strategy": "least_busy", "members": [member("alpha", "slow"), member("beta", "fast")]},
        "cheap": {"strategy": "lowest_cost",
                  "members": [member("alpha", "pricey", input_cost_per_mtok=10, output_cost_per_mtok=30),
                              member("beta", "bargain", input_cost_per_mtok=0.1, output_cost_per_mtok=0.3)]},
        "tiers": {"strategy": "priority", "members": [member("alpha", "primary", priority=0),
                                                      member("beta", "backup", priority=1)]},
        "strong": {"members": [member("gamma", "gpt-4")]},
        "weak": {"members": [member("beta", "mixtral")]},
    }
    cfg["routers"] = {
        "auto": {
            "rules": [
                {"name": "confidential", "when": {"header": {"name": "x-data-class", "equals": "confidential"}},
                 "pool": "tagged"},
                {"name": "images", "when": {"has_images": True}, "pool": "vision"},
                {"name": "long", "when": {"min_prompt_tokens": 10000}, "pool": "ctx"},
                {"name": "code", "when": {"any_keywords": ["python", "stack trace"]}, "pool": "cheap"},
            ],
            "default": "tiers",
        },
        "smart": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "threshold": 0.5, "explore": 0.0},
                  "default": "strong"},
        # Exploration (default 0.05) sends 5% of the 30% to weak: 28.5% expected.
        "share": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "strong_share": 0.3}},
    }
    return cfg


@pytest.fixture(scope="module")
def gw(mock):
    g = Gateway(policies_config(), clusters_for(mock), KEYS)
    yield g
    g.stop()


def post(gw, body, headers=None):
    return httpx.post(gw.base + "/v1/chat/completions", json=body, headers=headers or {}, timeout=20)


IMAGE = {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}


def test_image_requests_never_reach_a_member_without_vision(gw):
    for _ in range(100):
        r = post(gw, {"model": "vision", "messages": [IMAGE]})
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == "alpha/seer", r.text
    seen = {post(gw, chat("vision")).headers["x-switchboard-member"] for _ in range(40)}
    assert seen == {"alpha/seer", "beta/blind"}, "text requests use both"


def test_long_prompts_only_reach_members_whose_context_fits(gw):
    long_text = "The quick brown fox jumps over the lazy dog. " * 2000  # ~20k tokens
    for _ in range(20):
        r = post(gw, chat("ctx", long_text))
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == "alpha/big"
    r = post(gw, chat("ctx", long_text * 8))  # ~160k tokens: fits nobody
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_tags_header_only_narrows(gw):
    for _ in range(20):
        r = post(gw, chat("tagged"), {"x-switchboard-require-tags": "eu"})
        assert r.headers["x-switchboard-member"] == "alpha/eu-model"
    r = post(gw, chat("tagged"), {"x-switchboard-require-tags": "eu,us"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_member_with_tags"


def test_router_rules_and_answer_headers(gw):
    cases = [
        ({"model": "auto", "messages": [{"role": "user", "content": "hello"}]}, {}, "default", "tiers"),
        ({"model": "auto", "messages": [IMAGE]}, {}, "images", "vision"),
        (chat("auto", "my Python script fails"), {}, "code", "cheap"),
        (chat("auto", "word " * 12000), {}, "long", "ctx"),
        (chat("auto", "python", ), {"x-data-class": "confidential"}, "confidential", "tagged"),
    ]
    for body, headers, rule, pool in cases:
        r = post(gw, body, headers)
        assert r.status_code == 200, r.text
        assert (r.headers["x-switchboard-router"], r.headers["x-switchboard-rule"]) == ("auto", rule)
        assert r.headers["x-switchboard-pool"] == pool
    ids = {m["id"]: m for m in httpx.get(gw.base + "/v1/models").json()["data"]}
    assert ids["auto"]["subtype"] == "router" and ids["smart"]["subtype"] == "router"


def test_lowest_cost_and_priority_prefer_then_fail_over(gw, mock):
    for pool, preferred, other in (("cheap", "beta/bargain", "alpha/pricey"), ("tiers", "alpha/primary", "beta/backup")):
        assert {post(gw, chat(pool)).headers["x-switchboard-member"] for _ in range(20)} == {preferred}
        mock.faults(preferred.split("/")[0], status=503)
        r = post(gw, chat(pool))
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == other
        assert r.headers["x-switchboard-attempts"] == "2"
        mock.reset()


def test_least_busy_sends_most_requests_to_the_member_that_frees_up(gw, mock):
    mock.faults("alpha", latency_ms=500)
    mock.faults("beta", latency_ms=5)
    deadline = time.monotonic() + 3

    def client(_):
        served = []
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < deadline:
                served.append(c.post(gw.base + "/v1/chat/completions", json=chat("busy")).headers["x-switchboard-member"])
        return served

    with ThreadPoolExecutor(8) as ex:
        served = [m for part in ex.map(client, range(8)) for m in part]
    fast = served.count("beta/fast") / len(served)
    assert fast >= 0.8, (fast, len(served))


def test_lowest_latency_finds_the_fast_member_and_follows_a_slowdown(gw, mock):
    mock.faults("alpha", latency_ms=200)
    mock.faults("beta", latency_ms=10)
    with httpx.Client(timeout=10) as c:
        def share(n, member):
            got = [c.post(gw.base + "/v1/chat/completions", json=chat("latency")).headers["x-switchboard-member"]
                   for _ in range(n)]
            return got.count(member) / n
        share(10, "beta/fast")  # warm-up: both get measured
        assert share(60, "beta/fast") >= 0.85
        mock.faults("beta", latency_ms=400)  # the fast one turns slow
        share(30, "alpha/slow")
        assert share(40, "alpha/slow") >= 0.6


def parity_prompts(n):
    with open(PARITY) as f:
        rows = [json.loads(line) for line in f]
    return rows[:n]


def test_learned_router_scores_like_the_offline_model_and_routes_by_threshold(gw):
    for row in parity_prompts(120):
        r = post(gw, chat("smart", row["prompt"]))
        assert r.status_code == 200, r.text
        assert r.headers["x-switchboard-rule"] == "learned"
        assert abs(float(r.headers["x-switchboard-route-score"]) - row["score"]) <= 0.0011
        assert r.headers["x-switchboard-pool"] == ("strong" if row["score"] >= 0.5 else "weak")


def test_learned_router_strong_share_holds_on_held_out_prompts(gw):
    with ThreadPoolExecutor(4) as ex:
        pools = list(ex.map(lambda row: post(gw, chat("share", row["prompt"])).headers["x-switchboard-pool"],
                            parity_prompts(400)))
    share = pools.count("strong") / len(pools)
    assert abs(share - 0.3) <= 0.05, share


def test_feedback_endpoint(gw):
    r = post(gw, chat("smart", "What is 2+2?"))
    rid = r.headers["x-switchboard-feedback-id"]
    fb = lambda body: httpx.post(gw.base + "/v1/feedback", json=body, timeout=10)
    assert fb({"request_id": rid, "score": 0.2}).status_code == 204
    again = fb({"request_id": rid, "score": 0.9})
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_already_recorded"
    unknown = fb({"request_id": "no-such-request", "score": 0.5})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    for bad, code in (({"request_id": rid}, "missing_required_parameter"), ({"request_id": rid, "score": 2}, "invalid_value"),
                      ({"request_id": 5, "score": 1}, "invalid_type")):
        r = fb(bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    r = httpx.post(gw.base + "/v1/feedback", content=b"{nope", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(gw.base + "/v1/feedback", timeout=10).status_code == 405
