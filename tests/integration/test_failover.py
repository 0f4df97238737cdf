"""Failover through dispatch_http_call, health in shared data."""
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import base_config, clusters_for
from harness import chat, closed_port, member_stat, pool_stat


def three_member_config(**overrides):
    cfg = base_config(**overrides)
    cfg["pools"]["gpt4o_16k"]["members"] = [
        {"provider": "alpha", "model": "gpt-4o", "weight": 1},
        {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 1},
        {"provider": "gamma", "model": "gpt-4o-mini", "weight": 1},
    ]
    return cfg


def hammer(gw, n, concurrency=8, body=None, timeout=30):
    body = body or chat("gpt4o_16k")

    def one(_):
        with httpx.Client(timeout=timeout) as c:
            out = []
            for _ in range(n // concurrency):
                t = time.monotonic()
                r = c.post(gw.base + "/v1/chat/completions", json=body)
                out.append((r.status_code, time.monotonic() - t, r.headers.get("x-switchboard-attempts"), r))
            return out

    with ThreadPoolExecutor(concurrency) as ex:
        return [x for part in ex.map(one, range(concurrency)) for x in part]


def test_member_always_503_all_requests_succeed(make_gateway, mock):
    gw = make_gateway(three_member_config())
    mock.faults("alpha", status=503)
    results = hammer(gw, 200)
    assert [s for s, *_ in results if s != 200] == []
    for *_, r in results:
        assert r.headers["x-switchboard-member"] != "alpha/gpt-4o"
        assert "mock reply" in r.json()["choices"][0]["message"]["content"]
    # Ejection keeps the bad member out: with 2 workers and 3 failures to eject, only a handful.
    assert mock.count("alpha") <= 10, mock.count("alpha")
    stats = gw.stats()
    assert stats[member_stat("gpt4o_16k", "alpha/gpt-4o", "ejections")] >= 1
    assert stats[pool_stat("gpt4o_16k", "failovers")] >= 1


def test_failover_replaces_body_status_and_content_type(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 1000})
    gw = make_gateway(cfg)
    mock.faults("alpha", status=500, body='{"error":{"message":"raw upstream error"}}')
    seen_failover = 0
    for _ in range(40):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert "raw upstream error" not in r.text
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
        if r.headers["x-switchboard-attempts"] == "2":
            seen_failover += 1
            assert r.json()["model"] == "gpt-4o-2024-08-06"
    assert seen_failover >= 15  # weight 3:1 -> ~30 of 40 go to alpha first


def test_connection_refused_fails_over(make_gateway, mock):
    gw = make_gateway(base_config(), clusters_for(mock, alpha=f"127.0.0.1:{closed_port()}"))
    results = hammer(gw, 80, concurrency=4)
    assert all(s == 200 for s, *_ in results)
    assert all(r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06" for *_, r in results)


def test_hanging_member_times_out_per_try_and_fails_over(make_gateway, mock):
    cfg = base_config(per_try_timeout_ms=400, timeout_ms=3000, health={"consecutive_failures": 1000})
    gw = make_gateway(cfg)
    mock.faults("alpha", hang=True)
    for _ in range(8):
        t = time.monotonic()
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
        elapsed = time.monotonic() - t
        assert r.status_code == 200, r.text
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
        assert elapsed < 1.5, elapsed


def test_hang_on_failover_call_is_cut_by_per_try_timeout(make_gateway, mock):
    """The retried call itself hangs: the dispatch timeout ends it, the next member answers."""
    cfg = three_member_config(per_try_timeout_ms=300, timeout_ms=5000, health={"consecutive_failures": 1000})
    cfg["pools"]["gpt4o_16k"]["members"][0]["weight"] = 1000
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    mock.faults("beta", hang=True)
    for _ in range(5):
        t = time.monotonic()
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
        assert r.status_code == 200
        assert r.headers["x-switchboard-member"] == "gamma/gpt-4o-mini"
        assert time.monotonic() - t < 2.0


def test_retry_after_takes_member_out_until_then(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 1000})
    # beta a weight-0 standby: the first request always goes to alpha (a 100:1 weight missed it 1 in 101 runs).
    cfg["pools"]["gpt4o_16k"]["members"][1]["weight"] = 0
    gw = make_gateway(cfg)
    mock.faults("alpha", status=429, retry_after="2")
    # The hold runs from the 429's arrival, which is after t0: until t0 + 1.5 s alpha is surely out.
    t0 = time.monotonic()
    first = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
    assert first.status_code == 200
    assert first.headers["x-switchboard-attempts"] == "2"
    mock.reset("alpha")
    while time.monotonic() - t0 < 1.5:
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
    assert mock.count("alpha") == 0
    time.sleep(0.8)
    members = [httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k")).headers["x-switchboard-member"] for _ in range(10)]
    assert "alpha/gpt-4o" in members


def test_ejected_member_gets_a_handful_during_cooldown_across_workers(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 3, "cooldown_ms": 30000})
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    results = hammer(gw, 400, concurrency=16)
    assert all(s == 200 for s, *_ in results)
    # 3 failures eject it for everyone; a few in flight at that moment may add to it.
    assert mock.count("alpha") <= 3 + 16, mock.count("alpha")
    before = mock.count("alpha")
    results = hammer(gw, 200, concurrency=8)
    assert all(s == 200 for s, *_ in results)
    assert mock.count("alpha") == before, "ejected member received traffic during cooldown"


def test_half_open_trial_restores_member(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 2, "cooldown_ms": 800})
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    hammer(gw, 40, concurrency=4)
    mock.reset("alpha")
    time.sleep(1.0)
    results = hammer(gw, 80, concurrency=4)
    assert all(s == 200 for s, *_ in results)
    assert mock.count("alpha") > 30, "restored member should take its weighted share again"
    assert gw.stats()[member_stat("gpt4o_16k", "alpha/gpt-4o", "restorations")] >= 1


def test_all_members_down_gives_503_listing_attempts_within_deadline(make_gateway, mock):
    cfg = base_config(per_try_timeout_ms=300, timeout_ms=1000)
    gw = make_gateway(cfg)
    mock.faults("alpha", status=502)
    mock.faults("beta", status=503, body="upstream raw body")
    t = time.monotonic()
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert time.monotonic() - t < 1.5
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "no_healthy_upstream"
    assert err["type"] == "server_error" and err["param"] is None  # OpenAI's type for a 5xx
    assert "alpha/gpt-4o:502" in err["message"] and "beta/gpt-4o-2024-08-06:503" in err["message"]
    assert "upstream raw body" not in r.text
    assert r.headers["x-switchboard-attempts"] == "2"
    # Hanging everywhere: the overall deadline bounds the wait.
    mock.faults("alpha", hang=True)
    mock.faults("beta", hang=True)
    t = time.monotonic()
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 503
    assert time.monotonic() - t < 1.6


def test_client_errors_are_returned_without_failover(make_gateway, mock):
    gw = make_gateway(base_config())
    mock.faults("alpha", status=400)
    mock.faults("beta", status=400)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
    assert r.status_code == 400
    assert r.headers["x-switchboard-attempts"] == "1"


def test_pool_can_list_401_for_failover(make_gateway, mock):
    gw = make_gateway(base_config(retry_on=[401, 429, 500, 502, 503, 504]))
    mock.faults("alpha", status=401)
    for _ in range(10):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
        assert r.status_code == 200
        assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"


def test_client_disconnect_during_pending_retry_leaves_envoy_healthy(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 1000}, per_try_timeout_ms=3000)
    cfg["pools"]["gpt4o_16k"]["members"][0]["weight"] = 1000
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    mock.faults("beta", latency_ms=1500)
    for _ in range(10):
        try:
            httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=0.3)
        except httpx.TimeoutException:
            pass
    time.sleep(1.6)  # let the pending calls complete into destroyed contexts
    assert gw.alive()
    mock.reset()
    for _ in range(20):
        assert httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k")).status_code == 200
    stats = gw.stats()
    assert not any(k.startswith("wasm.") and "fail" in k and v for k, v in stats.items()), \
        {k: v for k, v in stats.items() if k.startswith("wasm.")}
    assert "panicked" not in gw.logs() and "Function: proxy_on" not in gw.logs()


def test_request_fallback_list_and_fallback_pools(make_gateway, mock):
    cfg = base_config()
    cfg["pools"]["backup"] = {"members": [{"provider": "gamma", "model": "gpt-4o-mini"}]}
    cfg["pools"]["gpt4o_16k"]["fallback_pools"] = []
    cfg["pools"]["tiny"] = {"members": [{"provider": "alpha", "model": "gpt-4o"}], "fallback_pools": ["backup"]}
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    mock.faults("beta", status=503)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", fallback=["backup"]))
    assert r.status_code == 200
    assert r.headers["x-switchboard-member"] == "gamma/gpt-4o-mini"
    assert r.headers["x-switchboard-pool"] == "backup"
    assert r.headers["x-switchboard-attempts"] == "3"
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("tiny"))
    assert r.status_code == 200 and r.headers["x-switchboard-member"] == "gamma/gpt-4o-mini"
    # Unknown fallback names are an error, not silently ignored.
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", fallback=["nope"]))
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_load_balance_group_selects_pool(make_gateway, mock):
    gw = make_gateway(base_config())
    body = {"load_balance_group": {"group_id": "gpt4o_16k"}, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.base + "/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["x-switchboard-pool"] == "gpt4o_16k"
    body["model"] = "gpt-4o-2024-08-06"
    r = httpx.post(gw.base + "/v1/chat/completions", json=body)
    assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
    for req in mock.requests("alpha") + mock.requests("beta"):
        assert "load_balance_group" not in req["body"]


def test_stream_failing_before_first_byte_is_retried_as_complete_sse(make_gateway, mock):
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}))
    mock.faults("alpha", status=503)
    got_retry = False
    for _ in range(12):
        with httpx.stream("POST", gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=True)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [l[6:] for l in r.iter_lines() if l.startswith("data: ")]
            got_retry |= r.headers["x-switchboard-attempts"] == "2"
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e)["choices"])
        assert "mock reply from beta" in text
    assert got_retry


def test_probes_restore_ejected_member(make_gateway, mock):
    cfg = base_config(health={"consecutive_failures": 2, "cooldown_ms": 60000}, probe={"interval_ms": 300, "timeout_ms": 1000})
    gw = make_gateway(cfg)
    mock.faults("alpha", status=503)
    hammer(gw, 40, concurrency=4)
    assert gw.stats()[pool_stat("gpt4o_16k", "healthy_members")] in (0, 1, 2)
    mock.reset("alpha")
    deadline = time.time() + 5
    while time.time() < deadline:
        if gw.stats()[member_stat("gpt4o_16k", "alpha/gpt-4o", "restorations")] >= 1:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("probe did not restore the member")
    # The probe is the only traffic alpha saw after reset (cooldown is 60 s).
    probe_bodies = [r["body"] for r in mock.requests("alpha")]
    assert probe_bodies and all(b["max_tokens"] == 1 for b in probe_bodies)
    results = hammer(gw, 40, concurrency=4)
    assert any(r.headers["x-switchboard-member"] == "alpha/gpt-4o" for *_, r in results)


def test_2000_requests_half_failing_member_all_answered(make_gateway, mock, record_property):
    """One of two members answers 503 half the time: every client request still succeeds."""
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}))
    mock.faults("alpha", status=503, rate=0.5)
    results = hammer(gw, 2000, concurrency=16)
    assert len(results) == 2000
    assert [s for s, *_ in results if s != 200] == []
    direct = [t for s, t, a, _ in results if a == "1"]
    failover = [t for s, t, a, _ in results if a == "2"]
    assert len(failover) > 100
    extra_ms = (statistics.median(failover) - statistics.median(direct)) * 1000
    record_property("failover_extra_latency_ms_p50", round(extra_ms, 2))
    print(f"\nfailover extra latency p50: {extra_ms:.2f} ms over {len(failover)} failovers")


def test_stream_broken_after_first_byte_ends_without_done_and_gateway_keeps_serving(make_gateway, mock):
    """Documented limit: once bytes reached the client a stream cannot be retried."""
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}))
    mock.faults("alpha", reset_after_first_chunk=True)
    mock.faults("beta", reset_after_first_chunk=True)
    events = []
    try:
        with httpx.stream("POST", gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=True), timeout=10) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
    except httpx.HTTPError:
        pass  # the connection is cut, as the upstream's was
    assert events, "the first event reaches the client"
    assert "[DONE]" not in events
    mock.reset()
    assert httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k")).status_code == 200
    assert gw.alive()


def test_answer_cut_off_mid_body_is_the_members_failure_and_ejects_it(make_gateway, mock):
    """A 200 whose body the provider cuts off is no success: the member is ejected
    after `consecutive_failures` such answers and traffic moves to the healthy one."""
    gw = make_gateway(base_config(health={"consecutive_failures": 2, "cooldown_ms": 60000}))
    mock.faults("alpha", reset_after_first_chunk=True)
    broken = 0
    with httpx.Client(timeout=10) as c:
        for _ in range(16):
            try:
                r = c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
                r.json()
                assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06"
            except (httpx.TransportError, ValueError):
                broken += 1
    assert 1 <= broken <= 3, broken
    stats = gw.stats()
    assert stats[member_stat("gpt4o_16k", "alpha/gpt-4o", "ejections")] >= 1
    assert stats[member_stat("gpt4o_16k", "alpha/gpt-4o", "requests")] == 0


def test_answers_cut_after_their_headers_are_logged_and_counted_as_broken_per_member(make_gateway, mock):
    """The client got a 200's headers and a broken body: the call log says 502 with `"cut": true`
    (the attempt: no complete answer), the request stats count an upstream error for that member, and the
    member's `cut_answers` counts it; a whole answer next to them stays a 200."""
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}), call_log=True)
    mock.faults("alpha", reset_after_first_chunk=True)
    mock.faults("beta", reset_after_first_chunk=True)
    for stream in (False, True):
        try:
            with httpx.stream("POST", gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=stream),
                              timeout=10) as r:
                assert r.status_code == 200
                r.read()
            raise AssertionError("the body should have been cut")
        except httpx.TransportError:
            pass
    mock.reset()
    assert httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10).status_code == 200
    lines = gw.calls(3)
    assert [(line["status"], line["cut"], line["stream"]) for line in lines] == [
        (502, True, False), (502, True, True), (200, False, False)], lines
    assert [a["status"] for line in lines[:2] for a in line["attempts"]] == [0, 0]
    stats = gw.stats()
    cut = {}
    for line in lines[:2]:
        cut[line["member"]] = cut.get(line["member"], 0) + 1
    for member, n in cut.items():
        assert stats[member_stat("gpt4o_16k", member, "cut_answers")] == n, stats
        requests = f"wasmcustom.switchboard.requests;gen_ai.operation.name=chat;pool=gpt4o_16k;member={member};tenant=-"
        assert stats[f"{requests};outcome=upstream_error"] == n
        assert stats.get(f"{requests};outcome=ok", 0) <= 1


def test_provider_429_reaches_the_sdk_as_rate_limit_error_with_retry_after(make_gateway, mock):
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}))
    mock.faults("alpha", status=429, retry_after=7)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt-4o"), timeout=10)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert 6 <= int(r.headers["retry-after"]) <= 7
    assert r.headers["x-should-retry"] == "true"
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_sdk_does_not_retry_what_the_gateway_already_tried(make_gateway, mock):
    """Both members down: the SDK's default retries would walk the pool three times
    (6 upstream calls); `x-should-retry: false` keeps it to the gateway's own 2."""
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}))
    mock.faults("alpha", status=503)
    mock.faults("beta", status=503)
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="k")  # default max_retries=2
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in e.value.response.headers
    assert mock.count("alpha") + mock.count("beta") == 2


def test_long_non_streaming_generation_finishes_with_default_timeouts(make_gateway, mock):
    """A healthy generation that needs 31 s is neither cut nor run twice (the old
    30 s per-try default cut it, failed it over and cut it again)."""
    cfg = base_config()
    gw = make_gateway(cfg)
    mock.faults("alpha", latency_ms=31000)
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="k")
    started = time.monotonic()
    resp = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "think hard"}])
    assert resp.choices[0].message.content
    assert 31 <= time.monotonic() - started < 45
    assert mock.count("alpha") == 1


def test_probes_never_restore_a_member_before_its_retry_after(make_gateway, mock):
    gw = make_gateway(base_config(health={"consecutive_failures": 1000}, probe={"interval_ms": 300, "timeout_ms": 1000}))
    mock.faults("alpha", status=503, retry_after=4)
    with httpx.Client(timeout=10) as c:
        for _ in range(40):
            r = c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
            if r.headers["x-switchboard-attempts"] == "2":
                break
        else:
            pytest.fail("alpha never took a request")
        held_at = time.monotonic()
        mock.reset("alpha")  # healthy again: a probe would now succeed
        while time.monotonic() - held_at < 2.5:
            r = c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"))
            assert r.headers["x-switchboard-member"] == "beta/gpt-4o-2024-08-06", "restored before its Retry-After"
            time.sleep(0.05)
        time.sleep(max(0.0, 4.5 - (time.monotonic() - held_at)))
        members = {c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k")).headers["x-switchboard-member"]
                   for _ in range(30)}
    assert "alpha/gpt-4o" in members
