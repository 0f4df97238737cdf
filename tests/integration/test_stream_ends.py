"""A stream cut short ends the same way on every kind and door (without
`resume_streams`): the provider closes the body cleanly mid-answer (the mock's
`stream_cut_after`: no finish, no `[DONE]`, no `message_stop`, no
`response.completed`), and the client gets its API's failed end, so the
official SDKs raise instead of returning a truncated answer:

- chat completions (OpenAI-wire members passed through, translated kinds):
  an `incomplete_stream` error event, then `data: [DONE]`;
- `/v1/messages` served natively by Anthropic: an `event: error` (`api_error`);
- `/v1/responses` served natively by OpenAI or Azure: `error` and `response.failed`.

Each such stream, and one ended by the provider's own error event, is its
member's failure."""
import json

import anthropic
import httpx
import openai
import pytest

from harness import Gateway, MockProvider, chat, member_stat

KEYS = {"OA_KEY": "sk-oa-secret", "AZ_KEY": "az-secret", "AN_KEY": "sk-an-secret"}
REPLY = "The quick brown fox jumps over the lazy dog today"
# 5 deltas of 2 words each: a cut after 2 leaves the first 4 words with the client.
CUT = {"reply": REPLY, "stream_chunks": 5, "stream_cut_after": 2}
FIRST_WORDS = " ".join(REPLY.split()[:4])
PROVIDERS = {
    "oa": {"kind": "openai", "cluster": "oa", "host": "oa.example", "api_key_env": "OA_KEY"},
    "az": {"kind": "azure", "cluster": "az", "host": "az.example", "api_key_env": "AZ_KEY"},
    "an": {"kind": "anthropic", "cluster": "an", "host": "an.example", "api_key_env": "AN_KEY"},
}
MEMBERS = {"oa": "oa/gpt-4o", "az": "az/gpt-4o", "an": "an/claude-3-5-haiku"}


@pytest.fixture(scope="module")
def mock():
    m = MockProvider({
        "oa": f"kind=openai,key={KEYS['OA_KEY']}",
        "az": f"kind=azure,key={KEYS['AZ_KEY']}",
        "an": f"kind=anthropic,key={KEYS['AN_KEY']}",
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(mock):
    config = {
        "providers": PROVIDERS,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "oa": {"members": [{"provider": "oa", "model": "gpt-4o"}]},
            "az": {"members": [{"provider": "az", "model": "gpt-4o"}]},
            "an": {"max_response_tokens": 512, "members": [{"provider": "an", "model": "claude-3-5-haiku"}]},
        },
    }
    g = Gateway(config, dict(mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset(mock):
    mock.reset()
    yield


def failures(gw, pool):
    return gw.stats().get(member_stat(pool, MEMBERS[pool], "failures"), 0)


def attempts(gw, pool):
    return gw.stats().get(member_stat(pool, MEMBERS[pool], "attempts"), 0)


def sse(gw, path, body):
    """The (event name, data) pairs of a streamed answer, data parsed unless `[DONE]`."""
    with httpx.stream("POST", gw.base + path, json=body, timeout=20) as r:
        assert r.status_code == 200, r.read()
        raw = r.read().decode()
    out = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        name = next((line[7:] for line in block.splitlines() if line.startswith("event: ")), None)
        data = next(line[6:] for line in block.splitlines() if line.startswith("data: "))
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("pool", ["oa", "az", "an"])
def test_a_chat_stream_cut_short_ends_with_incomplete_stream_and_the_openai_sdk_raises(gw, mock, pool):
    mock.faults(pool, **CUT)
    before = failures(gw, pool)
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for chunk in gpt(gw).chat.completions.create(
                model=pool, messages=[{"role": "user", "content": "fox?"}], stream=True):
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == FIRST_WORDS, "what the provider sent reached the client first"
    assert raised.value.body["code"] == "incomplete_stream"
    assert failures(gw, pool) == before + 1, "a cut stream is its member's failure"
    # On the wire: the error event, then one [DONE].
    events = [data for _, data in sse(gw, "/v1/chat/completions", chat(pool, "fox?", stream=True))]
    assert events[-2]["error"]["code"] == "incomplete_stream" and events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert not any(e["choices"][0].get("finish_reason") for e in events[:-2] if e.get("choices"))


@pytest.mark.parametrize("pool", ["oa", "az"])
def test_a_complete_openai_stream_is_untouched_and_a_success(gw, mock, pool):
    mock.faults(pool, reply=REPLY, stream_chunks=5)
    before = attempts(gw, pool), failures(gw, pool)
    stream = gpt(gw).chat.completions.create(model=pool, messages=[{"role": "user", "content": "fox?"}],
                                             stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.completion_tokens > 0
    assert (attempts(gw, pool), failures(gw, pool)) == (before[0] + 1, before[1])


def test_the_provider_s_own_error_event_passes_as_it_is_and_is_a_failure(gw, mock):
    mock.faults("oa", reply=REPLY, stream_chunks=5, stream_error_after=2)
    before = failures(gw, "oa")
    events = [data for _, data in sse(gw, "/v1/chat/completions", chat("oa", "fox?", stream=True))]
    assert events[-1]["error"]["message"] == "mock fault: the model stopped"
    assert not any(e.get("error", {}).get("code") == "incomplete_stream" for e in events if e != "[DONE]")
    assert failures(gw, "oa") == before + 1


def test_a_native_messages_stream_cut_short_ends_with_an_error_event_and_the_anthropic_sdk_raises(gw, mock):
    mock.faults("an", **CUT)
    before = failures(gw, "an")
    client = anthropic.Anthropic(base_url=gw.base, api_key="unused", max_retries=0)
    text = ""
    with pytest.raises(anthropic.APIStatusError) as raised:
        for event in client.messages.create(model="an", max_tokens=100, stream=True,
                                            messages=[{"role": "user", "content": "fox?"}]):
            if event.type == "content_block_delta":
                text += event.delta.text
    assert text == FIRST_WORDS
    assert raised.value.body == {"type": "error", "error": {
        "type": "api_error", "message": "The provider's stream ended before the answer was complete."}}
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="an", max_tokens=100,
                                    messages=[{"role": "user", "content": "fox?"}]) as stream:
            stream.get_final_message()
    assert failures(gw, "an") == before + 2
    body = {"model": "an", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "fox?"}]}
    events = sse(gw, "/v1/messages", body)
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert "message_stop" not in [name for name, _ in events]


@pytest.mark.parametrize("pool", ["oa", "az"])
def test_a_native_responses_stream_cut_short_fails_the_response(gw, mock, pool):
    mock.faults(pool, **CUT)
    before = failures(gw, pool)
    events = list(gpt(gw).responses.create(model=pool, input="fox?", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == FIRST_WORDS
    error, failed = events[-2], events[-1]
    assert error.code == "server_error" and "ended before the answer was complete" in error.message
    assert failed.response.status == "failed" and failed.response.error.code == "server_error"
    assert failed.response.id == events[0].response.id
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers)), "sequence numbers go on"
    # The SDK's stream helper has no completed response to return.
    with pytest.raises(RuntimeError, match="response.completed"):
        with gpt(gw).responses.stream(model=pool, input="fox?") as stream:
            stream.get_final_response()
    assert failures(gw, pool) == before + 2


def test_a_native_responses_stream_the_provider_fails_passes_as_it_is_and_is_a_failure(gw, mock):
    mock.faults("oa", reply=REPLY, stream_chunks=5, stream_error_after=2)
    before = failures(gw, "oa")
    events = list(gpt(gw).responses.create(model="oa", input="fox?", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message == "mock fault: the model stopped", "the provider's, not the gateway's"
    assert [e.type for e in events].count("error") == 1
    assert failures(gw, "oa") == before + 1


def test_a_translated_door_stream_cut_short_is_its_member_s_failure(gw, mock):
    """A /v1/messages client on an OpenAI member: the door's converter ends the stream with its error event."""
    mock.faults("oa", **CUT)
    before = failures(gw, "oa")
    body = {"model": "oa", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "fox?"}]}
    events = sse(gw, "/v1/messages", body)
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert failures(gw, "oa") == before + 1


# Usage of a stream the client leaves: what was relayed, not the 1,024 tokens expected.

TENANT_KEY = "sk-tenant-secret"


@pytest.fixture(scope="module")
def metered(mock):
    import hashlib
    config = {
        "providers": {"oa": {"kind": "openai", "cluster": "oa", "host": "oa.example", "api_key_env": "OA_KEY"}},
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {"oa": {"members": [{"provider": "oa", "model": "gpt-4o",
                                      "input_cost_per_mtok": 1, "output_cost_per_mtok": 1}]}},
        "tenants": {"t": {"keys_sha256": [hashlib.sha256(TENANT_KEY.encode()).hexdigest()],
                          "tpm": 100000, "budget_usd": {"per": "day", "limit": 1000}}},
    }
    g = Gateway(config, dict(mock.addrs), KEYS, call_log=True)
    yield g
    g.stop()


def test_a_stream_the_client_leaves_is_charged_what_was_relayed(metered, mock):
    mock.faults("oa", reply=" ".join(["word"] * 40), stream_chunks=20, stream_delay_ms=200)
    headers = {"authorization": f"Bearer {TENANT_KEY}"}
    body = chat("oa", "count", stream=True)
    with httpx.stream("POST", metered.base + "/v1/chat/completions", json=body, headers=headers, timeout=20) as r:
        assert r.status_code == 200
        received = 0
        for line in r.iter_lines():
            if '"content":"word' in line or '"content":" word' in line:
                received += 1
            if received == 3:
                break  # the client leaves: 3 deltas of 2 words ("word word", about 9 bytes each)
    [call] = metered.calls(1)
    assert call["status"] == 200 and call["stream"] is True
    assert call["usage_estimated"] is True
    # 3-4 deltas relayed of about 9 bytes: 7-10 tokens at 4 bytes a token (the reservation expected 1,024).
    assert 5 <= call["completion_tokens"] <= 12, call
    assert call["attempts"] == [{"member": "oa/gpt-4o", "status": 200, "ms": call["attempts"][0]["ms"]}]
    # The tenant was charged the same: what the next request finds left of its tokens and cost.
    assert call["cost_micro_usd"] == pytest.approx(call["completion_tokens"] + call["prompt_tokens"], abs=1)
    mock.faults("oa", reply="ok")
    r = httpx.post(metered.base + "/v1/chat/completions", json=chat("oa", "count", max_tokens=10),
                   headers=headers, timeout=10)
    assert r.status_code == 200
    second_reservation = len(json.dumps(chat("oa", "count", max_tokens=10))) // 4 + 10
    used = 100000 - int(r.headers["x-ratelimit-remaining-tokens"]) - second_reservation
    assert used == pytest.approx(call["prompt_tokens"] + call["completion_tokens"], abs=3), used


def test_a_cut_stream_answered_whole_by_a_failover_call_fails_over_instead_of_reaching_the_client(mock):
    """Without stream failover by redirect, a failed-over stream arrives whole through an
    HTTP call: a cut one has reached no one yet, so it is its member's 502 and the next
    member answers."""
    config = {
        "providers": PROVIDERS,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {"three": {"max_response_tokens": 256, "strategy": "priority", "members": [
            {"provider": "an", "model": "claude-3-5-haiku", "priority": 0},
            {"provider": "oa", "model": "gpt-4o", "priority": 1},
            {"provider": "az", "model": "gpt-4o", "priority": 2}]}},
    }
    g = Gateway(config, dict(mock.addrs), KEYS, stream_failover=False)
    try:
        mock.faults("an", status=529)
        mock.faults("oa", **CUT)
        mock.faults("az", reply=REPLY, stream_chunks=5)
        with httpx.stream("POST", g.base + "/v1/chat/completions", json=chat("three", "fox?", stream=True),
                          timeout=20) as r:
            raw = r.read().decode()
        assert r.status_code == 200 and r.headers["x-switchboard-member"] == "az/gpt-4o"
        assert r.headers["x-switchboard-attempts"] == "3"
        assert "incomplete_stream" not in raw and raw.endswith("data: [DONE]\n\n")
        assert (mock.count("an"), mock.count("oa"), mock.count("az")) == (1, 1, 1)
    finally:
        g.stop()
