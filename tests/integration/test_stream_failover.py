"""Failover that keeps streaming: a stream whose first member fails before its
first byte is replayed by Envoy's internal redirect (the upstream filter
turns the failure into a 307) and the next member's events reach the client
as they are produced, across provider kinds, counted once, and no client can
steer the mechanism."""
import json
import time

import httpx
import pytest

from conftest import KEYS as OPENAI_KEYS, base_config, clusters_for
from harness import Gateway, MockProvider, chat, member_stat, pool_stat, local_error_stat
from test_providers import KEYS as KIND_KEYS, KINDS, providers_config

# alpha first (beta is a weight-0 standby), so every request fails over once.
ALPHA_FIRST = [
    {"provider": "alpha", "model": "gpt-4o", "weight": 1},
    {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 0},
]
SLOW_STREAM = {"stream_chunks": 20, "stream_delay_ms": 100}  # 20 events over 2 s


def timed_stream(gw, body, headers=None, path="/v1/chat/completions"):
    """(response, seconds to the first data event, seconds in all, data events)."""
    start = time.monotonic()
    first = None
    events = []
    with httpx.stream("POST", gw.base + path, json=body, headers=headers or {}, timeout=20) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                first = first if first is not None else time.monotonic() - start
                events.append(line[6:])
    return r, first, time.monotonic() - start, events


def text_of(events):
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


@pytest.fixture
def alpha_first(make_gateway):
    return lambda **kw: make_gateway(base_config(members=ALPHA_FIRST, health={"consecutive_failures": 1000}), **kw)


def test_failed_over_stream_first_event_arrives_while_the_second_member_is_still_streaming(alpha_first, mock):
    """alpha answers 503 at once, beta streams 20 events over 2 s: the client's
    first event comes in well under 300 ms (not after beta's 2 s), the rest follow."""
    gw = alpha_first()
    mock.faults("alpha", status=503)
    mock.faults("beta", **SLOW_STREAM)
    firsts = []
    for _ in range(3):
        r, first, total, events = timed_stream(gw, chat("gpt4o_16k", stream=True))
        assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2"
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
        assert events[-1] == "[DONE]" and "mock reply from beta" in text_of(events)
        assert total > 1.5, "beta streamed over 2 s, so the events cannot all be early"
        firsts.append(first)
    # Generous for a busy 2-core machine: each well before beta's 2 s, the best under 300 ms.
    assert min(firsts) < 0.3 and max(firsts) < 1.0, firsts
    assert mock.count("alpha") == 3 and mock.count("beta") == 3


def test_without_the_upstream_filter_a_failed_over_stream_arrives_whole(make_gateway, mock):
    """The buffered call path (render.py stream_failover=False): the first event comes with the last."""
    gw = make_gateway(base_config(members=ALPHA_FIRST, health={"consecutive_failures": 1000}), stream_failover=False)
    mock.faults("alpha", status=503)
    mock.faults("beta", **SLOW_STREAM)
    r, first, total, events = timed_stream(gw, chat("gpt4o_16k", stream=True))
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2"
    assert first > 1.5 and events[-1] == "[DONE]"


def test_attempts_health_and_metrics_count_each_attempt_once(alpha_first, mock):
    gw = alpha_first()
    mock.faults("alpha", status=503)
    for _ in range(5):
        r, _, _, events = timed_stream(gw, chat("gpt4o_16k", stream=True))
        assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2" and events[-1] == "[DONE]"
    stats = gw.stats()
    alpha = lambda name: stats[member_stat("gpt4o_16k", "alpha/gpt-4o", name)]
    beta = lambda name: stats[member_stat("gpt4o_16k", "beta/gpt-4o-2024-08-06", name)]
    assert alpha("attempts") == 5 and alpha("failures") == 5 and alpha("failovers") == 5
    assert beta("attempts") == 5 and beta("requests") == 5 and beta("failures") == 0
    assert stats[pool_stat("gpt4o_16k", "requests")] == 5
    assert stats[pool_stat("gpt4o_16k", "failovers")] == 5
    # Envoy followed the filter's redirect each time; the provider never saw the token.
    assert stats["cluster.alpha.upstream_internal_redirect_succeeded_total"] == 5
    for req in mock.requests("alpha") + mock.requests("beta"):
        assert "x-switchboard-try" not in req["headers"]
        assert "switchboard_failover" not in req["path"]


def test_a_gzip_request_stream_fails_over_from_its_replayed_body(alpha_first, mock):
    """Envoy's decompressor sits before the filter: the replay carries the plain body, routed again."""
    import gzip
    gw = alpha_first()
    mock.faults("alpha", status=503)
    body = gzip.compress(json.dumps(chat("gpt4o_16k", "zipped question", stream=True)).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    with httpx.stream("POST", gw.base + "/v1/chat/completions", content=body, headers=headers, timeout=10) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2" and events[-1] == "[DONE]"
    [sent] = mock.requests("beta")
    assert sent["body"]["messages"][0]["content"] == "zipped question"
    assert sent["body"]["model"] == "gpt-4o-2024-08-06"


def test_a_redirect_envoy_does_not_follow_still_fails_over_through_the_buffered_path(make_gateway, mock):
    """With max_internal_redirects 1 the second failure's 307 reaches the filter, which fails over by HTTP call."""
    members = ALPHA_FIRST + [{"provider": "gamma", "model": "gpt-4o", "weight": 0}]
    gw = make_gateway(base_config(members=members, health={"consecutive_failures": 1000}), max_internal_redirects=1)
    mock.faults("alpha", status=503)
    mock.faults("beta", status=503)
    seen = set()
    for _ in range(12):
        r, _, _, events = timed_stream(gw, chat("gpt4o_16k", stream=True))
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == "gamma/gpt-4o", r.read()
        assert "location" not in r.headers and events[-1] == "[DONE]"
        seen.add(r.headers["x-switchboard-attempts"])
    assert seen == {"2", "3"}  # gamma second (redirected) or third (after beta, by HTTP call)
    assert gw.stats()[member_stat("gpt4o_16k", "beta/gpt-4o-2024-08-06", "failures")] == mock.count("beta")


def test_every_member_failing_a_stream_lists_every_attempt(alpha_first, mock):
    gw = alpha_first()
    mock.faults("alpha", status=503)
    mock.faults("beta", status=429)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=True), timeout=10)
    assert r.status_code == 503, r.text
    assert r.headers["x-switchboard-attempts"] == "2"
    err = r.json()["error"]
    assert err["code"] == "no_healthy_upstream"
    assert "alpha/gpt-4o:503" in err["message"] and "beta/gpt-4o-2024-08-06:429" in err["message"]


def test_a_tenant_stream_fails_over_without_authenticating_again_and_frees_its_slot(make_gateway, mock):
    import hashlib
    key = "sk-tenant-a"
    cfg = base_config(members=ALPHA_FIRST, health={"consecutive_failures": 1000})
    cfg["tenants"] = {"a": {"keys_sha256": [hashlib.sha256(key.encode()).hexdigest()], "max_parallel": 1}}
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    for _ in range(3):  # max_parallel 1: a slot held by the replayed request would refuse the next
        r, _, _, events = timed_stream(gw, chat("gpt4o_16k", stream=True), headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2" and events[-1] == "[DONE]"
    assert all(key not in json.dumps(req["headers"]) for req in mock.requests("beta"))


def test_a_client_cannot_forge_a_replay_or_steer_the_upstream_filter(alpha_first, mock):
    gw = alpha_first()
    for path in ("/v1/chat/completions?switchboard_failover=" + "0" * 32, "/v1/chat/completions?switchboard_failover"):
        r = httpx.post(gw.base + path, json=chat("gpt4o_16k", stream=True), timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "switchboard_failover"
    assert mock.count("alpha") == mock.count("beta") == 0
    # Envoy drops a client's x-envoy-original-url, its mark of a replay: the request is an ordinary one.
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10,
                   headers={"x-envoy-original-url": "http://elsewhere/v1/chat/completions"})
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "1"
    mock.reset()
    # A client's own try header and cluster header are dropped: alpha's 503 is an ordinary failover.
    mock.faults("alpha", status=503)
    headers = {"x-switchboard-try": "0" * 32, "x-switchboard-cluster": "secret"}
    for body in (chat("gpt4o_16k", stream=True), chat("gpt4o_16k")):
        r = httpx.post(gw.base + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
    assert mock.count("secret") == 0
    for req in mock.requests("alpha") + mock.requests("beta"):
        assert "x-switchboard-try" not in req["headers"]


# Across provider kinds: an Anthropic member failing then an OpenAI one streaming, and the reverse.


@pytest.fixture(scope="module")
def kinds_mock():
    m = MockProvider({
        "openai": f"kind=openai,key={KIND_KEYS['OPENAI_KEY']}",
        "anthropic": f"kind=anthropic,key={KIND_KEYS['ANTHROPIC_KEY']}",
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def kinds_gw(kinds_mock):
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic")}
    member = lambda n, w: {"provider": n, "model": KINDS[n][1], "weight": w}
    config = {
        "providers": providers,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "anthropic_first": {"max_response_tokens": 512, "members": [member("anthropic", 1), member("openai", 0)]},
            "openai_first": {"max_response_tokens": 512, "members": [member("openai", 1), member("anthropic", 0)]},
        },
    }
    g = Gateway(config, dict(kinds_mock.addrs), KIND_KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset_kinds(request):
    if "kinds_mock" in request.fixturenames:
        request.getfixturevalue("kinds_mock").reset()
    yield


@pytest.mark.parametrize("pool,failing,serving", [
    ("anthropic_first", "anthropic", "openai"),
    ("openai_first", "openai", "anthropic"),
])
def test_cross_kind_stream_failover_streams_openai_chunks(kinds_gw, kinds_mock, pool, failing, serving):
    kinds_mock.faults(failing, status=529 if failing == "anthropic" else 503)
    kinds_mock.faults(serving, **SLOW_STREAM)
    r, first, total, events = timed_stream(kinds_gw, chat(pool, "Say hi", stream=True))
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2"
    assert r.headers["x-switchboard-member"].startswith(serving + "/")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert f"mock reply from {serving}" in text_of(events)
    assert first < 1.0 and total > 1.5, (first, total)


def test_messages_door_stream_fails_over_across_kinds_as_it_streams(kinds_gw, kinds_mock):
    """The Anthropic Messages door: its member fails, the OpenAI member's stream is turned back into Messages events."""
    kinds_mock.faults("anthropic", status=529)
    kinds_mock.faults("openai", **SLOW_STREAM)
    body = {"model": "anthropic_first", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r, first, total, events = timed_stream(kinds_gw, body, path="/v1/messages")
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2"
    types = [json.loads(e)["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    text = "".join(json.loads(e)["delta"].get("text", "") for e in events if json.loads(e)["type"] == "content_block_delta")
    assert "mock reply from openai" in text
    assert first < 1.0 and total > 1.5, (first, total)


def test_unreadable_translated_stream_fails_over_before_the_client_got_anything(kinds_gw, kinds_mock):
    """An Anthropic member answering 200 with garbage: nothing was sent yet, so it is that member's 502 and the
    OpenAI member answers (instead of a stream ending in an invalid_upstream_response error event)."""
    kinds_mock.faults("anthropic", status=200, body="<html>upstream proxy error</html>")
    r, _, _, events = timed_stream(kinds_gw, chat("anthropic_first", "Say hi", stream=True))
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2"
    assert r.headers["x-switchboard-member"].startswith("openai/")
    assert events[-1] == "[DONE]" and "mock reply from openai" in text_of(events)
    assert all("error" not in json.loads(e) for e in events[:-1])
    stats = kinds_gw.stats()
    assert stats[member_stat("anthropic_first", "anthropic/claude-3-5-haiku", "failures")] >= 1
    assert stats[local_error_stat("invalid_upstream_response")] >= 1
