"""What a client is told to wait, and what the gateway does meanwhile; hung members.

Checks with the official openai SDK (default retries) that a provider's
`Retry-After` does not turn into growing waits, that `Retry-After` is when the
gateway itself tries again (no upstream call before it), and that a member that
never answers is left once clients keep giving up on it while another member
answers, without a slow healthy generation ever being cut."""
import threading
import time

import httpx
import openai

from conftest import base_config
from harness import chat, member_stat


def equal_weights(cfg):
    for m in cfg["pools"]["gpt4o_16k"]["members"]:
        m["weight"] = 1
    return cfg


def sdk(gw, **options):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", **options)


def test_a_passed_retry_after_does_not_grow_later_waits(make_gateway, mock):
    gw = make_gateway(equal_weights(base_config()))
    mock.faults("alpha", status=429, retry_after="1")
    mock.faults("beta", status=429, retry_after="1")
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 429 and r.headers["retry-after"] == "1", (r.status_code, r.headers)
    time.sleep(1.3)
    # Later, a plain outage.
    mock.faults("alpha", status=500)
    mock.faults("beta", status=500)
    client = sdk(gw)
    started = time.monotonic()
    for _ in range(2):
        try:
            client.chat.completions.create(model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("the outage answered 200")
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
    took = time.monotonic() - started
    assert took < 25, f"two SDK calls with default retries took {took:.1f} s"
    # The advertised waits are the gateway's own: at most the first cooldown doubled twice.
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 503
    assert 1 <= int(r.headers.get("retry-after", 0)) <= 20, r.text


def test_retry_after_is_when_the_gateway_tries_again(make_gateway, mock):
    cfg = equal_weights(base_config(health={"consecutive_failures": 1, "cooldown_ms": 3000}))
    gw = make_gateway(cfg)
    mock.faults("alpha", status=500)
    mock.faults("beta", status=500)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "3", r.headers
    assert r.headers["x-should-retry"] == "true"
    calls = mock.count("alpha") + mock.count("beta")
    assert calls == 2
    # While every member is ejected, requests are answered at once and reach no member.
    for _ in range(5):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
        assert r.status_code == 503, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 3
        assert "ejected" in r.json()["error"]["message"]
    assert mock.count("alpha") + mock.count("beta") == calls
    # Once the wait is over the gateway tries (and, the members back, answers).
    mock.reset("alpha")
    mock.reset("beta")
    time.sleep(3.1)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 200, r.text


def test_sdk_backoff_is_left_on_for_rate_limits_and_single_attempts(make_gateway, mock):
    cfg = base_config()
    cfg["pools"]["gpt4o_16k"]["members"] = [{"provider": "alpha", "model": "gpt-4o"}]
    gw = make_gateway(cfg)
    mock.faults("alpha", status=429)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.status_code == 429 and r.headers["x-should-retry"] == "true", r.headers
    # The SDK backs off and retries twice, as it would against the provider.
    with_retries = sdk(gw, max_retries=2)
    before = mock.count("alpha")
    try:
        with_retries.chat.completions.create(model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}])
    except openai.RateLimitError:
        pass
    assert mock.count("alpha") - before == 3


def test_hung_member_is_left_and_a_slow_healthy_one_is_never_cut(make_gateway, mock):
    cfg = equal_weights(base_config())
    cfg["pools"]["slow"] = {"members": [{"provider": "gamma", "model": "gpt-4o-slow"}]}
    gw = make_gateway(cfg)
    # Both members answer for a while: every worker learns how fast the pool answers.
    seen = set()
    for _ in range(40):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=4)
        assert r.status_code == 200
        seen.add(r.headers["x-switchboard-member"])
        if len(seen) == 2:
            break
    time.sleep(1.2)
    mock.faults("alpha", hang=True)
    mock.faults("gamma", first_byte_delay_ms=90_000)
    slow = {}

    def slow_request():
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("slow"), timeout=150)
        slow["status"], slow["member"] = r.status_code, r.headers.get("x-switchboard-member")

    long_generation = threading.Thread(target=slow_request)
    long_generation.start()
    answered = 0
    for _ in range(20):
        try:
            r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=4)
            answered += r.status_code == 200
        except httpx.TimeoutException:
            pass
    # Each client that gives up on alpha counts against it: after `consecutive_failures` (3) it is left.
    assert answered >= 17, f"{answered} of 20 answered"
    stats = gw.stats()
    assert stats[member_stat("gpt4o_16k", "alpha/gpt-4o", "ejections")] >= 1
    long_generation.join(timeout=150)
    assert slow == {"status": 200, "member": "gamma/gpt-4o-slow"}, slow
    assert gw.alive()
