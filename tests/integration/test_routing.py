"""Pools routed by the filter inside a real Envoy."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import KEYS, base_config
from harness import chat, local_error_stat, member_stat, pool_stat


def post(gw, body, **kw):
    return httpx.post(gw.base + "/v1/chat/completions", json=body, timeout=10, **kw)


def test_weighted_split_over_2000_requests(gateway):
    def run(n):
        counts = {}
        with httpx.Client(timeout=10) as c:
            for _ in range(n):
                r = c.post(gateway.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
                assert r.status_code == 200, r.text
                m = r.headers["x-switchboard-member"]
                counts[m] = counts.get(m, 0) + 1
        return counts

    with ThreadPoolExecutor(8) as ex:
        parts = list(ex.map(run, [250] * 8))
    total = {}
    for p in parts:
        for k, v in p.items():
            total[k] = total.get(k, 0) + v
    n = sum(total.values())
    assert n == 2000
    share = total.get("alpha/gpt-4o", 0) / n
    # Weight 3:1 -> 0.75; binomial sd ~0.0097, allow 4 sd.
    assert abs(share - 0.75) < 0.04, total


def test_upstream_sees_provider_key_and_member_model(gateway, mock):
    body = chat("gpt4o_16k", provider="pool", temperature=0.3)
    for _ in range(20):
        r = post(gateway, body, headers={"authorization": "Bearer client-key-should-not-leak", "x-api-key": "nope"})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    seen = mock.requests("alpha") + mock.requests("beta")
    assert len(seen) == 20
    for req in seen:
        provider = "alpha" if req["headers"]["authorization"] == f"Bearer {KEYS['ALPHA_KEY']}" else "beta"
        assert req["headers"]["authorization"] == f"Bearer {KEYS[provider.upper() + '_KEY']}"
        assert "x-api-key" not in req["headers"]
        assert req["headers"]["host"] == f"api.{provider}.example"
        assert req["path"] == "/v1/chat/completions"
        expected_model = {"alpha": "gpt-4o", "beta": "gpt-4o-2024-08-06"}[provider]
        assert req["body"]["model"] == expected_model
        assert "provider" not in req["body"]
        assert req["body"]["temperature"] == 0.3
        assert req["body"]["messages"] == body["messages"]
    assert {r["headers"]["authorization"] for r in seen} <= {f"Bearer {KEYS['ALPHA_KEY']}", f"Bearer {KEYS['BETA_KEY']}"}


def test_response_names_pool_and_member(gateway):
    r = post(gateway, chat("gpt4o_16k"))
    assert r.headers["x-switchboard-pool"] == "gpt4o_16k"
    assert r.headers["x-switchboard-member"] in ("alpha/gpt-4o", "beta/gpt-4o-2024-08-06")
    assert r.headers["x-switchboard-attempts"] == "1"
    assert r.json()["model"] == r.headers["x-switchboard-member"].split("/", 1)[1]


def test_direct_model_routes_to_its_only_member(gateway, mock):
    for _ in range(10):
        r = post(gateway, chat("gpt-4o-2024-08-06"))
        assert r.status_code == 200
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
    assert mock.count("alpha") == 0


def test_client_cluster_header_cannot_pick_a_cluster(gateway, mock):
    for target in ("secret", "beta", "alpha"):
        r = post(gateway, chat("gpt-4o"), headers={"x-switchboard-cluster": target})
        assert r.status_code == 200
        assert r.headers["x-switchboard-member"] == "alpha/gpt-4o"
    # Unroutable requests must not reach any cluster either.
    r = httpx.get(gateway.base + "/anything", headers={"x-switchboard-cluster": "secret"})
    assert r.status_code == 404
    r = post(gateway, {"model": "missing", "messages": []}, headers={"x-switchboard-cluster": "secret"})
    assert r.status_code == 404
    assert mock.count("secret") == 0
    assert mock.count("beta") == 0


def test_models_listing(gateway):
    r = httpx.get(gateway.base + "/v1/models?subtype=pool")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["object"] == "list"
    assert data["data"] == [{
        "id": "gpt4o_16k", "object": "model", "created": 0, "owned_by": "switchboard",
        "type": "llm", "subtype": "pool", "provider": "pool", "model": "gpt4o_16k",
        "description": "GPT-4o class models", "max_response_tokens": 16384,
        "members": ["alpha/gpt-4o", "beta/gpt-4o-2024-08-06"],
    }]
    everything = httpx.get(gateway.base + "/v1/models").json()["data"]
    assert [m["id"] for m in everything] == ["gpt4o_16k", "gpt-4o", "gpt-4o-2024-08-06"]


def error_of(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-switchboard-attempts"] == "0"
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"] and err["type"]
    return err


def test_error_cases_and_gateway_keeps_serving(gateway):
    url = gateway.base + "/v1/chat/completions"
    error_of(httpx.post(url, content=b'{"model": "gpt4o_16k", "messages": [', headers={"content-type": "application/json"}), 400, "invalid_json")
    error_of(httpx.post(url, json={"messages": []}), 400, "missing_model")
    error_of(httpx.post(url, json={"model": 5, "messages": []}), 400, "invalid_type")
    err = error_of(httpx.post(url, json=chat("gpt-9")), 404, "model_not_found")
    assert "gpt-9" in err["message"]
    error_of(httpx.post(url, json=chat("gpt4o_16k", content="x" * 100_000)), 413, "request_too_large")
    # Chunked upload over the limit (no content-length): caught while buffering.
    def chunks():
        yield b'{"model":"gpt4o_16k","messages":[{"role":"user","content":"'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'
    error_of(httpx.post(url, content=chunks()), 413, "request_too_large")
    error_of(httpx.get(url), 405, "method_not_allowed")
    error_of(httpx.delete(gateway.base + "/v1/models"), 405, "method_not_allowed")
    error_of(httpx.get(gateway.base + "/v2/unknown"), 404, "not_found")
    error_of(httpx.post(url, content=b""), 400, "invalid_json")
    # Still serving, on every worker.
    for _ in range(20):
        assert httpx.post(url, json=chat("gpt4o_16k")).status_code == 200
    stats = gateway.stats()
    assert stats[local_error_stat("request_too_large")] >= 2
    assert stats[local_error_stat("model_not_found")] >= 1


def test_streaming_is_incremental(gateway, mock):
    mock.faults("alpha", stream_delay_ms=400, stream_chunks=3)
    mock.faults("beta", stream_delay_ms=400, stream_chunks=3)
    start = time.monotonic()
    first = None
    events = []
    with httpx.stream("POST", gateway.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=True), timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                if first is None:
                    first = time.monotonic() - start
                events.append(line[6:])
    total = time.monotonic() - start
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "mock reply" in text
    # Upstream takes >= 4 gaps of 400 ms; the first event must arrive well before the end.
    assert total >= 1.2
    assert first < total - 0.8, (first, total)


def test_metrics_count_requests_per_pool_and_member(gateway):
    before = gateway.stats()
    for _ in range(10):
        assert post(gateway, chat("gpt4o_16k")).status_code == 200
    after = gateway.stats()
    key = pool_stat("gpt4o_16k", "requests")
    assert after[key] - before.get(key, 0) == 10
    members = [member_stat("gpt4o_16k", m, "requests") for m in ("alpha/gpt-4o", "beta/gpt-4o-2024-08-06")]
    assert sum(after[m] - before.get(m, 0) for m in members) == 10


def test_invalid_config_is_refused_with_field_name(make_gateway, mock):
    from harness import Gateway
    from conftest import clusters_for
    cfg = base_config()
    cfg["pools"]["gpt4o_16k"]["members"][1]["provider"] = "gamma2"
    g = Gateway(cfg, clusters_for(mock), KEYS, expect_failure=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and "members[1].provider" not in g.logs():
            time.sleep(0.2)
        logs = g.logs()
        assert 'pools.gpt4o_16k.members[1].provider: unknown provider "gamma2"' in logs
    finally:
        g.stop()


def test_a_type_error_in_a_pools_policy_names_the_field_not_the_pool(mock):
    from harness import Gateway
    from conftest import clusters_for
    cfg = base_config(max_attempts="3")
    g = Gateway(cfg, clusters_for(mock), KEYS, expect_failure=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and "invalid type" not in g.logs():
            time.sleep(0.2)
        assert 'pools.gpt4o_16k.max_attempts: invalid type: string "3", expected u32' in g.logs(), g.logs()[-2000:]
    finally:
        g.stop()


def test_completions_endpoint_routes_too(gateway, mock):
    r = httpx.post(gateway.base + "/v1/completions", json={"model": "gpt-4o", "prompt": "Say hi"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-switchboard-member"] == "alpha/gpt-4o"
    [upstream] = mock.requests("alpha")
    assert upstream["path"] == "/v1/completions"
    assert upstream["body"] == {"model": "gpt-4o", "prompt": "Say hi"}
    r = httpx.post(gateway.base + "/v1/completions", json={"model": "gpt-4o"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
