"""Stream continuation (`resume_streams`): a stream that breaks after its first
byte (the provider's error event, or an end without a finish) continues on the
next member, spliced into the same client stream: the client's text is the whole
answer exactly once (no repeated or missing words), every chunk keeps the
stream's id, one `[DONE]`, usage summed over both attempts. The mock streams a
fixed answer and continues it from a prefill or a continuation instruction."""
import json

import httpx
import openai
import pytest

from harness import Gateway, MockProvider, chat, member_stat, pool_stat

KEYS = {"OA_KEY": "sk-oa-secret", "AN_KEY": "sk-an-secret"}
REPLY = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all day long"
# 10 deltas of 2 words each: a break after n deltas leaves the first 2n words with the client.
STREAM = {"reply": REPLY, "stream_chunks": 10}


@pytest.fixture(scope="module")
def mock():
    m = MockProvider({
        "oa1": f"kind=openai,key={KEYS['OA_KEY']}",
        "oa2": f"kind=openai,key={KEYS['OA_KEY']}",
        "an1": f"kind=anthropic,key={KEYS['AN_KEY']}",
        "an2": f"kind=anthropic,key={KEYS['AN_KEY']}",
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(mock):
    def provider(name):
        kind = "openai" if name.startswith("oa") else "anthropic"
        key = "OA_KEY" if kind == "openai" else "AN_KEY"
        return {"kind": kind, "cluster": name, "host": f"{name}.example", "api_key_env": key}

    model = {"oa1": "gpt-4o", "oa2": "gpt-4o-mini", "an1": "claude-3-5-haiku", "an2": "claude-3-5-sonnet"}

    def pool(first, standby, resume=True):
        # The standby has weight 0: every request starts on `first`.
        members = [{"provider": first, "model": model[first], "weight": 1},
                   {"provider": standby, "model": model[standby], "weight": 0}]
        return {"max_response_tokens": 512, "members": members, "resume_streams": resume}

    def standby(member, **facts):
        # A pool whose standby is `member` of listener an2 (the same mock, another model or facts).
        return {"max_response_tokens": 512, "resume_streams": True,
                "members": [{"provider": "an1", "model": model["an1"], "weight": 1},
                            {"provider": "an2", "model": member, "weight": 0, **facts}]}

    config = {
        "providers": {n: provider(n) for n in model},
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "an_claude46": standby("claude-opus-4-6"),
            "an_no_prefill": standby(model["an2"], prefill=False),
            "oa_oa": pool("oa1", "oa2"),
            "oa_an": pool("oa1", "an2"),
            "an_an": pool("an1", "an2"),
            "an_oa": pool("an1", "oa2"),
            "plain": pool("oa1", "oa2", resume=False),
        },
    }
    g = Gateway(config, dict(mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset(mock):
    mock.reset()
    yield


def stream(gw, model, include_usage=True, path="/v1/chat/completions", body=None):
    """(response, data events as parsed JSON, with "[DONE]" as the string)."""
    body = body or chat(model, "Tell me about the fox", stream=True,
                        **({"stream_options": {"include_usage": True}} if include_usage else {}))
    with httpx.stream("POST", gw.base + path, json=body, timeout=20) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    return r, [e if e == "[DONE]" else json.loads(e) for e in events]


def text_of(events):
    chunks = [e for e in events if e != "[DONE]" and e.get("choices")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def prompt_tokens(request):
    """The mock's prompt count for a request it got: body bytes / 4."""
    return max(int(request["headers"]["content-length"]) // 4, 1)


def words(text):
    return len(text.split())


def counters(gw):
    """The gateway's counters now; `counters(gw) - before` style deltas via `changed`."""
    return {k: v for k, v in gw.stats().items() if k.startswith("wasmcustom.")}


def changed(gw, before):
    """What each counter gained since `before` (the gateway serves the whole module)."""
    return {k: v - before.get(k, 0) for k, v in counters(gw).items()}


def assert_spliced(events, first_usage=(0, 0), continuation=None):
    """One answer, told once: every chunk with the stream's id, the finish, the summed usage, one [DONE]."""
    assert text_of(events) == REPLY, text_of(events)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("error" not in c for c in chunks), chunks
    assert len({c["id"] for c in chunks}) == 1 and len({c["model"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    if continuation is not None:
        usage = chunks[-1]["usage"]
        assert chunks[-1]["choices"] == []
        prompt = first_usage[0] + prompt_tokens(continuation)
        assert usage["prompt_tokens"] == prompt, (usage, first_usage)
        assert usage["completion_tokens"] >= first_usage[1] + 1
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_an_openai_stream_cut_cleanly_is_continued_on_the_next_openai_member_by_instruction(gw, mock):
    mock.faults("oa1", **STREAM, stream_cut_after=4)
    mock.faults("oa2", reply=REPLY)
    before = counters(gw)
    r, events = stream(gw, "oa_oa")
    assert r.status_code == 200 and r.headers["x-switchboard-member"] == "oa1/gpt-4o"
    [cont] = mock.requests("oa2")
    assert_spliced(events, continuation=cont)
    body = cont["body"]
    partial = " ".join(REPLY.split()[:8])
    assert body["stream"] is False and "stream_options" not in body and body["model"] == "gpt-4o-mini"
    assert body["messages"][-2] == {"role": "assistant", "content": partial}
    assert body["messages"][-1]["role"] == "user" and "Continue" in body["messages"][-1]["content"]
    assert body["messages"][0]["content"] == "Tell me about the fox"
    # The rest is exactly what the continuation added: one usage of its own words.
    assert events[-2]["usage"]["completion_tokens"] == words(REPLY) - 8
    stats = changed(gw, before)
    assert stats[pool_stat("oa_oa", "resumed_streams")] == 1
    assert stats[member_stat("oa_oa", "oa1/gpt-4o", "failures")] == 1
    assert stats[member_stat("oa_oa", "oa2/gpt-4o-mini", "attempts")] == 1
    assert stats[member_stat("oa_oa", "oa2/gpt-4o-mini", "failures")] == 0


def test_an_anthropic_overloaded_error_event_is_continued_by_prefill_on_the_next_anthropic_member(gw, mock):
    mock.faults("an1", **STREAM, stream_error_after=3)
    mock.faults("an2", reply=REPLY)
    r, events = stream(gw, "an_an")
    [first] = mock.requests("an1")
    [cont] = mock.requests("an2")
    # The broken attempt reported its prompt (message_start) and 1 output token before the break.
    assert_spliced(events, first_usage=(prompt_tokens(first), 1), continuation=cont)
    body = cont["body"]
    assert not body.get("stream")
    # A true prefill: the partial answer is the last (assistant) message, trailing space trimmed.
    assert body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": " ".join(REPLY.split()[:6])}]} \
        or body["messages"][-1] == {"role": "assistant", "content": " ".join(REPLY.split()[:6])}
    assert events[-2]["usage"]["completion_tokens"] == 1 + words(REPLY) - 6


@pytest.mark.parametrize("pool", ["an_claude46", "an_no_prefill"])
def test_a_claude_that_refuses_prefills_is_asked_to_continue_in_a_user_message(gw, mock, pool):
    """Claude 4.6 and later answer a conversation that ends with an assistant
    message with a 400 (the mock too): on such a member, or one configured with
    `prefill: false`, the partial answer is followed by the instruction to continue."""
    mock.faults("an1", **STREAM, stream_error_after=3)
    mock.faults("an2", reply=REPLY)
    r, events = stream(gw, pool)
    [first] = mock.requests("an1")
    [cont] = mock.requests("an2")
    assert_spliced(events, first_usage=(prompt_tokens(first), 1), continuation=cont)
    messages = cont["body"]["messages"]
    partial = " ".join(REPLY.split()[:6])
    assert [m["role"] for m in messages[-2:]] == ["assistant", "user"]
    assert json.dumps(messages[-2]["content"]).count(partial) == 1
    assert "Continue it exactly where it stopped" in json.dumps(messages[-1]["content"])


def test_an_openai_error_event_is_continued_on_an_anthropic_member_without_the_words_it_repeats(gw, mock):
    """The continuing model starts by repeating the last 3 words it was given: they reach the client once."""
    mock.faults("oa1", **STREAM, stream_error_after=5)
    mock.faults("an2", reply=REPLY, continuation_overlap_words=3)
    r, events = stream(gw, "oa_an")
    [cont] = mock.requests("an2")
    assert_spliced(events, continuation=cont)
    assert cont["body"]["messages"][-1]["role"] == "assistant"
    assert mock.count("oa2") == 0


def test_an_anthropic_stream_cut_is_continued_on_an_openai_member(gw, mock):
    mock.faults("an1", **STREAM, stream_cut_after=2)
    mock.faults("oa2", reply=REPLY, continuation_overlap_words=2)
    r, events = stream(gw, "an_oa", include_usage=False)
    assert text_of(events) == REPLY and events.count("[DONE]") == 1
    assert all("usage" not in e for e in events[:-1]), "no usage chunk unless asked"
    assert len({e["id"] for e in events[:-1]}) == 1


def test_the_openai_sdk_reads_a_continued_stream_as_one_answer(gw, mock):
    mock.faults("oa1", **STREAM, stream_error_after=4)
    mock.faults("oa2", reply=REPLY)
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="oa_oa", messages=[{"role": "user", "content": "Tell me about the fox"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == words(REPLY) - 8


def test_a_continuation_that_fails_too_ends_the_stream_as_without_it(gw, mock):
    mock.faults("oa1", **STREAM, stream_cut_after=4)
    mock.faults("oa2", status=503)
    before = counters(gw)
    r, events = stream(gw, "oa_oa")
    assert text_of(events) == " ".join(REPLY.split()[:8])
    assert events[-2]["error"]["code"] == "incomplete_stream" and events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert mock.count("oa2") == 1, "at most one continuation"
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="oa_oa", messages=[{"role": "user", "content": "hi"}], stream=True))
    stats = changed(gw, before)
    assert stats[pool_stat("oa_oa", "resumed_streams")] == 0
    assert stats[member_stat("oa_oa", "oa2/gpt-4o-mini", "failures")] == 2


def test_an_anthropic_error_event_whose_continuation_fails_ends_with_that_error(gw, mock):
    mock.faults("an1", **STREAM, stream_error_after=3)
    mock.faults("an2", status=529)
    r, events = stream(gw, "an_an")
    assert text_of(events) == " ".join(REPLY.split()[:6])
    assert events[-2]["error"]["code"] == "overloaded_error" and events[-1] == "[DONE]"


def test_a_pool_without_resume_streams_ends_a_broken_stream_as_incomplete(gw, mock):
    mock.faults("oa1", **STREAM, stream_cut_after=4)
    r, events = stream(gw, "plain")
    assert text_of(events) == " ".join(REPLY.split()[:8])
    assert events[-2]["error"]["code"] == "incomplete_stream" and events[-1] == "[DONE]"
    assert mock.count("oa2") == 0


def test_a_stream_that_finishes_is_untouched_and_nothing_is_continued(gw, mock):
    mock.faults("oa1", **STREAM)
    r, events = stream(gw, "oa_oa")
    assert text_of(events) == REPLY and events.count("[DONE]") == 1
    assert events[-2]["usage"]["completion_tokens"] == words(REPLY)
    assert mock.count("oa2") == 0


def test_a_messages_door_client_gets_its_continued_stream_in_messages_events(gw, mock):
    """A /v1/messages client on OpenAI members: the continuation's chunks go through the door's converter too."""
    mock.faults("oa1", **STREAM, stream_cut_after=4)
    mock.faults("oa2", reply=REPLY)
    body = {"model": "oa_oa", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "fox?"}]}
    r, events = stream(gw, "oa_oa", path="/v1/messages", body=body)
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop" and "error" not in types
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == REPLY
    [stop] = [e for e in events if e["type"] == "message_delta"]
    assert stop["delta"]["stop_reason"] == "end_turn"


# Limits: what gives the filter no body callback to pause cannot be continued.


def test_an_upstream_reset_after_the_first_byte_resets_the_client_and_is_not_continued(gw, mock):
    """Envoy resets the client's stream itself: the filter never sees the body end."""
    mock.faults("oa1", **STREAM, reset_after_first_chunk=True)
    mock.faults("oa2", reply=REPLY)
    with pytest.raises(httpx.RemoteProtocolError):
        stream(gw, "oa_oa")
    assert mock.count("oa2") == 0


def test_the_call_log_lists_the_broken_attempt_and_the_continuation_with_the_summed_usage(mock):
    config = {
        "providers": {n: {"kind": "openai", "cluster": n, "host": f"{n}.example", "api_key_env": "OA_KEY"}
                      for n in ("oa1", "oa2")},
        "pools": {"logged": {"resume_streams": True, "members": [
            {"provider": "oa1", "model": "gpt-4o", "weight": 1}, {"provider": "oa2", "model": "gpt-4o", "weight": 0}]}},
    }
    g = Gateway(config, dict(mock.addrs), KEYS, call_log=True)
    try:
        mock.faults("oa1", **STREAM, stream_cut_after=4)
        mock.faults("oa2", reply=REPLY)
        r, events = stream(g, "logged")
        assert text_of(events) == REPLY
        [line] = g.calls(1)
        assert [(a["member"], a["status"]) for a in line["attempts"]] == [("oa1/gpt-4o", 0), ("oa2/gpt-4o", 200)]
        usage = events[-2]["usage"]
        assert (line["prompt_tokens"], line["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert line["status"] == 200 and line["stream"] is True
    finally:
        g.stop()


def test_a_stalled_stream_is_reset_by_its_idle_timeout_and_not_continued(mock):
    """A silent upstream gives no body callback: from the idle timer the filter can add nothing (docs/failover-and-streams.md)."""
    config = {
        "providers": {n: {"kind": "openai", "cluster": n, "host": f"{n}.example", "api_key_env": "OA_KEY"}
                      for n in ("oa1", "oa2")},
        "pools": {"stalls": {"resume_streams": True, "stream_idle_timeout_ms": 300, "members": [
            {"provider": "oa1", "model": "gpt-4o", "weight": 1}, {"provider": "oa2", "model": "gpt-4o", "weight": 0}]}},
    }
    g = Gateway(config, dict(mock.addrs), KEYS)
    try:
        mock.faults("oa1", reply=REPLY, stream_chunks=3, stream_delay_ms=3000)
        with pytest.raises(httpx.RemoteProtocolError):
            stream(g, "stalls")
        assert mock.count("oa2") == 0
        assert g.stats()[pool_stat("stalls", "stream_idle_timeouts")] == 1
    finally:
        g.stop()


# Every kind the mock imitates: its own break (native error event, or a clean cut), continued on another kind.


@pytest.fixture(scope="module")
def kinds():
    from test_providers import KEYS as KIND_KEYS, KIND_LISTENERS, KINDS, providers_config
    m = MockProvider(KIND_LISTENERS)
    member = lambda n, w: {"provider": n, "model": KINDS[n][1], "weight": w,
                           **({"deployment": "prod-4o"} if n == "azure" else {})}
    pools = {f"{a}_{b}": {"max_response_tokens": 512, "resume_streams": True, "members": [member(a, 1), member(b, 0)]}
             for a, b in [("gemini", "openai"), ("bedrock", "openai"), ("azure", "openai"), ("compat", "openai"),
                          ("openai", "bedrock"), ("openai", "gemini")]}
    config = {"providers": providers_config(), "defaults": {"health": {"consecutive_failures": 1000}}, "pools": pools}
    g = Gateway(config, dict(m.addrs), KIND_KEYS)
    yield m, g
    g.stop()
    m.stop()


@pytest.mark.parametrize("broken", ["gemini", "bedrock", "azure", "compat"])
@pytest.mark.parametrize("fault", ["stream_cut_after", "stream_error_after"])
def test_each_kind_s_broken_stream_is_continued(kinds, broken, fault):
    m, g = kinds
    m.reset()
    m.faults(broken, **STREAM, **{fault: 3})
    m.faults("openai", reply=REPLY, continuation_overlap_words=1)
    r, events = stream(g, f"{broken}_openai")
    assert r.status_code == 200
    assert_spliced(events)
    assert m.count("openai") == 1


@pytest.mark.parametrize("serving,prefill", [("bedrock", True), ("gemini", False)])
def test_a_continuation_on_bedrock_is_a_prefill_and_on_gemini_an_instruction(kinds, serving, prefill):
    m, g = kinds
    m.reset()
    m.faults("openai", **STREAM, stream_error_after=4)
    m.faults(serving, reply=REPLY, continuation_overlap_words=2)
    r, events = stream(g, f"openai_{serving}")
    assert_spliced(events)
    [cont] = m.requests(serving)
    turns = cont["body"]["messages" if serving == "bedrock" else "contents"]
    partial = " ".join(REPLY.split()[:8])
    if prefill:
        assert turns[-1] == {"role": "assistant", "content": [{"text": partial}]}
    else:
        assert turns[-2]["role"] == "model" and turns[-1]["role"] == "user"


def test_a_responses_door_client_on_anthropic_members_gets_its_continued_stream_in_responses_events(gw, mock):
    mock.faults("an1", **STREAM, stream_error_after=4)
    mock.faults("an2", reply=REPLY)
    body = {"model": "an_an", "stream": True, "input": "fox?"}
    r, events = stream(gw, "an_an", path="/v1/responses", body=body)
    types = [e["type"] for e in events]
    assert types[-1] == "response.completed" and "error" not in types and "response.failed" not in types
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == REPLY
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == REPLY
