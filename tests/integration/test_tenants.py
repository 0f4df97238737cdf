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


# Budgets hold on one proxy: each request reserves its worst-case cost before it goes upstream.
# Members priced $2 an output token (input free); the mock's usage is one completion token per
# word of its reply, so a reply of n words costs $2n.
def budget_config(limit):
    cfg = tenant_config(budget_usd={"per": "day", "limit": limit})
    for m in cfg["pools"]["gpt4o_16k"]["members"]:
        m.update(input_cost_per_mtok=0, output_cost_per_mtok=2_000_000)
    return cfg


def reply(mock, words, **fault):
    for name in ("alpha", "beta"):
        mock.faults(name, reply=" ".join(["word"] * words), **fault)


def test_budget_of_100_with_50_concurrent_requests_of_22_answers_4(mock):
    g = Gateway(budget_config(100), clusters_for(mock), KEYS)
    try:
        reply(mock, 11, latency_ms=300)  # $22 each, and max_tokens 11 reserves exactly $22
        b = {"authorization": f"Bearer {KEY_B}"}

        def one(_):
            with httpx.Client(timeout=10) as c:
                return c.post(g.base + "/v1/chat/completions", json=chat("gpt-4o", max_tokens=11), headers=b)

        with ThreadPoolExecutor(50) as ex:
            answers = list(ex.map(one, range(50)))
        statuses = [r.status_code for r in answers]
        # $88 reserved by 4 in flight: a 5th would hold $110. Before, all 50 went upstream ($1,100).
        assert statuses.count(200) == 4 and statuses.count(429) == 46, statuses
        assert mock.count("alpha") + mock.count("beta") == 4
        assert all(r.json()["usage"]["completion_tokens"] == 11 for r in answers if r.status_code == 200)
        for r in answers:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "insufficient_quota", r.text
                assert "worst-case cost ($22.00)" in r.json()["error"]["message"], r.text
                assert 1 <= int(r.headers["retry-after"]) <= 86400
        # $88 spent: $22 never fits again today; $12 does, exactly.
        r = post(g, b, model="gpt-4o", max_tokens=11)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 1, r.text
        reply(mock, 6)
        assert post(g, b, model="gpt-4o", max_tokens=6).status_code == 200
        r = post(g, b, model="gpt-4o", max_tokens=1)
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    finally:
        g.stop()


def test_a_released_reservation_lets_the_next_request_in(mock):
    # $40: one request reserving $22 fits, two do not. Each answer really costs $2.
    cfg = budget_config(40)
    # An Anthropic member: a request it cannot take is refused by the gateway after admission.
    cfg["providers"]["claude"] = {"kind": "anthropic", "cluster": "gamma", "host": "api.anthropic.example",
                                  "api_key_env": "GAMMA_KEY"}
    cfg["pools"]["claude_pool"] = {"members": [{"provider": "claude", "model": "claude-x", "input_cost_per_mtok": 0,
                                                "output_cost_per_mtok": 2_000_000}]}
    cfg["tenants"]["team-b"]["allow"].append("claude_pool")
    g = Gateway(cfg, clusters_for(mock), KEYS)
    try:
        b = {"authorization": f"Bearer {KEY_B}"}
        ask = lambda **kw: post(g, b, model="gpt-4o", max_tokens=11, **kw)
        reply(mock, 1, latency_ms=1000)
        with ThreadPoolExecutor(1) as ex:
            first = ex.submit(ask)
            time.sleep(0.4)
            held = ask()
            # Held by the request in flight, not spent: worth retrying soon.
            assert held.status_code == 429 and held.headers["retry-after"] == "1", held.text
            assert first.result().status_code == 200
        reply(mock, 1)
        assert ask().status_code == 200  # $2 spent: room again
        # A failed request gives its reservation back and spends nothing.
        for name in ("alpha", "beta"):
            mock.faults(name, status=500)
        assert ask().status_code >= 500
        reply(mock, 1)
        assert ask().status_code == 200
        # And one the gateway itself refused after admitting it (here: translating it for Anthropic).
        local = post(g, b, model="claude_pool", max_tokens=11, temperature="hot")
        assert local.status_code == 400 and local.json()["error"]["param"] == "temperature", local.text
        assert mock.count("gamma") == 0
        assert ask().status_code == 200
        # So does a request whose client left.
        reply(mock, 1, latency_ms=3000)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(g.base + "/v1/chat/completions", json=chat("gpt-4o", max_tokens=11), headers=b, timeout=0.3)
        time.sleep(0.3)
        reply(mock, 1)
        assert ask().status_code == 200  # $10 spent; a leaked $22 would have refused it
        # Spent + reserved stays within $40: a worst case of $32 does not fit, $30 does, exactly.
        assert post(g, b, model="gpt-4o", max_tokens=16).status_code == 429
        assert post(g, b, model="gpt-4o", max_tokens=15).status_code == 200
    finally:
        g.stop()


BAD_TOKEN_LIMITS = [("1180591620717411303424", "invalid_value"), ('"10"', "invalid_type"), ("-5", "invalid_value"),
                    ("1.5", "invalid_type"), ("1e400", "invalid_type"), ("0", "invalid_value")]


def test_unreadable_token_limits_are_a_400_naming_the_field_in_each_door(gw, mock):
    a = {"authorization": f"Bearer {KEY_A}", "content-type": "application/json"}
    msgs = '[{"role": "user", "content": "hi"}]'
    doors = [
        ("/v1/chat/completions", "max_tokens", f'"messages": {msgs}'),
        ("/v1/chat/completions", "max_completion_tokens", f'"messages": {msgs}'),
        ("/v1/messages", "max_tokens", f'"messages": {msgs}'),
        ("/v1/responses", "max_output_tokens", '"input": "hi"'),
    ]
    for path, field, rest in doors:
        for raw, code in BAD_TOKEN_LIMITS:
            body = f'{{"model": "gpt4o_16k", {rest}, "{field}": {raw}}}'
            r = httpx.post(gw.base + path, content=body, headers=a, timeout=10)
            assert r.status_code == 400, (path, body, r.text)
            error = r.json()["error"]
            if path == "/v1/messages":  # Anthropic's shape: the field is named in the message
                assert r.json()["type"] == "error" and error["type"] == "invalid_request_error", r.text
                assert error["message"].startswith(field), r.text
            else:
                assert (error["param"], error["code"], error["type"]) == (field, code, "invalid_request_error"), r.text
                assert field in error["message"]
    assert mock.count("alpha") + mock.count("beta") == 0
    ok = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", max_tokens=7), headers=a, timeout=10)
    assert ok.status_code == 200, ok.text
