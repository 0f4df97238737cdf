"""Tenants: keys (as SHA-256 in the config) through every SDK header, allow
lists, per-minute request and token limits shared by both workers, requests
in flight, and OpenAI's rate-limit headers."""
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

KEY_A, KEY_B, KEY_C = "sk-team-a-secret", "sk-team-b-secret", "sk-team-c-secret"


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def tenant_config(**limits_b):
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["tenants"] = {
        "team-a": {"keys_sha256": [sha(KEY_A)]},
        "team-b": {"keys_sha256": [sha(KEY_B)], "allow": ["gpt-4o"], **limits_b},
        "team-c": {"keys_sha256": [sha(KEY_C).upper()], "rpm": 1000, "tpm": 100000},
    }
    return cfg


@pytest.fixture(scope="module")
def gw(mock):
    g = Gateway(tenant_config(rpm=40), clusters_for(mock), KEYS)
    yield g
    g.stop()


def post(gw, headers, model="gpt4o_16k", **kw):
    return httpx.post(gw.base + "/v1/chat/completions", json=chat(model, **kw), headers=headers, timeout=10)


def test_missing_or_wrong_key_is_401_and_each_sdk_header_works(gw, mock):
    for headers in ({}, {"authorization": "Bearer sk-nope"}, {"x-api-key": "sk-nope"}):
        r = post(gw, headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "authentication_error"
    for headers in ({"authorization": f"Bearer {KEY_A}"}, {"api-key": KEY_A}, {"x-api-key": KEY_A}):
        r = post(gw, headers)
        assert r.status_code == 200, (headers, r.text)
    # The tenant's key never goes upstream; the provider's does.
    for req in mock.requests("alpha") + mock.requests("beta"):
        assert KEY_A not in str(req["headers"])
        assert "x-switchboard-tenant" not in req["headers"]
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key=KEY_A)
    assert client.chat.completions.create(model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}]).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base + "/v1", api_key="wrong", max_retries=0).models.list()


def test_allow_list_refuses_other_models_and_filters_the_listing(gw):
    b = {"authorization": f"Bearer {KEY_B}"}
    r = post(gw, b)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "model_not_allowed"
    assert r.json()["error"]["type"] == "permission_error"
    # A fallback cannot reach what the tenant may not use either.
    assert post(gw, b, model="gpt-4o", fallback=["gpt4o_16k"]).status_code == 403
    assert post(gw, b, model="gpt-4o").status_code == 200
    ids = [m["id"] for m in httpx.get(gw.base + "/v1/models", headers=b).json()["data"]]
    assert ids == ["gpt-4o"]
    all_ids = [m["id"] for m in httpx.get(gw.base + "/v1/models", headers={"x-api-key": KEY_A}).json()["data"]]
    assert "gpt4o_16k" in all_ids and len(all_ids) == 3


def concurrent_statuses(gw, headers, clients, requests):
    """Statuses of `requests` chat requests for `gpt-4o` sent by `clients` concurrent clients."""
    def one(_):
        with httpx.Client(timeout=10) as c:
            return c.post(gw.base + "/v1/chat/completions", json=chat("gpt-4o"), headers=headers).status_code

    with ThreadPoolExecutor(clients) as ex:
        return list(ex.map(one, range(requests)))


def wait_for_fresh_minute(min_left=15):
    left = 60 - time.time() % 60
    if left < min_left:
        time.sleep(left + 0.2)


def test_rpm_admits_exactly_the_limit_under_32_concurrent_clients(gw):
    wait_for_fresh_minute()
    b = {"authorization": f"Bearer {KEY_B}"}

    def one(_):
        with httpx.Client(timeout=10) as c:
            return c.post(gw.base + "/v1/chat/completions", json=chat("gpt-4o"), headers=b)

    with ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(one, range(120)))
    statuses = [r.status_code for r in answers]
    # team-b's window may hold requests of earlier tests in this minute: 40 in all.
    assert statuses.count(200) <= 40 and statuses.count(429) >= 80, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "40"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    ok = next(r for r in answers if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "40"
    assert int(ok.headers["x-ratelimit-remaining-requests"]) < 40
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")


def test_rpm_exact_count_in_a_fresh_window(mock):
    wait_for_fresh_minute(min_left=20)
    g = Gateway(tenant_config(rpm=25), clusters_for(mock), KEYS)
    try:
        statuses = concurrent_statuses(g, {"authorization": f"Bearer {KEY_B}"}, clients=32, requests=100)
        assert statuses.count(200) == 25, statuses
        assert statuses.count(429) == 75
    finally:
        g.stop()


def test_tokens_are_reserved_then_corrected_with_the_real_usage(mock):
    wait_for_fresh_minute(min_left=20)
    g = Gateway(tenant_config(tpm=3000), clusters_for(mock), KEYS)
    try:
        b = {"authorization": f"Bearer {KEY_B}"}
        # Each request reserves its prompt estimate + max_tokens 2000: a second one in
        # flight would not fit, but the mock's real usage is far smaller.
        statuses = []
        for _ in range(5):
            r = post(g, b, model="gpt-4o", max_tokens=2000)
            statuses.append(r.status_code)
            remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        assert statuses == [200] * 5, statuses
        assert remaining < 3000
        # One asking for more than is left is refused until the minute turns.
        r = post(g, b, model="gpt-4o", max_tokens=2999)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
        assert int(r.headers["retry-after"]) >= 1
    finally:
        g.stop()


def test_max_parallel_refuses_requests_beyond_those_in_flight(mock):
    g = Gateway(tenant_config(max_parallel=2), clusters_for(mock), KEYS)
    try:
        mock.faults("alpha", latency_ms=800)
        b = {"authorization": f"Bearer {KEY_B}"}
        statuses = concurrent_statuses(g, b, clients=6, requests=6)
        assert statuses.count(200) == 2 and statuses.count(429) == 4, statuses
        # Slots are released when requests end.
        assert post(g, b, model="gpt-4o").status_code == 200
    finally:
        g.stop()


def test_spent_budget_is_refused_with_insufficient_quota(mock):
    cfg = tenant_config(budget_usd={"per": "day", "limit": 0.05})
    for m in cfg["pools"]["gpt4o_16k"]["members"]:
        m.update(input_cost_per_mtok=10000, output_cost_per_mtok=10000)  # the mock's ~22 tokens: about $0.22
    g = Gateway(cfg, clusters_for(mock), KEYS)
    try:
        b = {"authorization": f"Bearer {KEY_B}"}
        assert post(g, b, model="gpt-4o").status_code == 200
        r = post(g, b, model="gpt-4o")
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert r.json()["error"]["type"] == "insufficient_quota"
        assert 1 <= int(r.headers["retry-after"]) <= 86400
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=g.base + "/v1", api_key=KEY_B, max_retries=0).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        # Other tenants are not affected.
        assert post(g, {"x-api-key": KEY_A}, model="gpt-4o").status_code == 200
    finally:
        g.stop()
