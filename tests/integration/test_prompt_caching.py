"""Prompt caching across doors and kinds, through the official SDKs: a client's
`cache_control` (on system, message and tool blocks, or on the request)
reaches anthropic members as `cache_control` and bedrock members as
`cachePoint` blocks, and is not sent to openai members, which cache by
themselves; the cache reads and writes the member reports come back in each
door's shape, streamed too; and the call log prices them at the member's cache
prices. The mock caches what a request marks (or, on openai, a repeated long
prefix): the first request writes it, the same request again reads it."""
import hashlib
import time
import uuid

import anthropic
import openai
import pytest

from harness import Gateway, MockProvider
from test_providers import KEYS, KINDS, KIND_LISTENERS, providers_config

EPHEMERAL = {"type": "ephemeral"}
# USD per million tokens: input, output, cache reads, cache writes.
PRICES = {"input_cost_per_mtok": 3, "output_cost_per_mtok": 15,
          "cached_input_cost_per_mtok": 0.3, "cache_write_cost_per_mtok": 3.75}
LISTENERS = {n: KIND_LISTENERS[n] for n in ("openai", "anthropic", "bedrock", "gemini")}


@pytest.fixture(scope="module")
def cache_mock():
    m = MockProvider(LISTENERS)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def cache_gw(cache_mock):
    providers = {n: p for n, p in providers_config().items() if n in LISTENERS}
    pools = {f"only_{n}": {"max_response_tokens": 256, "members": [{"provider": n, "model": KINDS[n][1], **PRICES}]}
             for n in LISTENERS}
    g = Gateway({"providers": providers, "defaults": {"health": {"consecutive_failures": 1000}}, "pools": pools},
                dict(cache_mock.addrs), KEYS, call_log=True)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def fresh_cache(cache_mock, request):
    """Each test starts with an empty cache; every answer it got is priced at the cache prices."""
    if "cache_gw" not in request.fixturenames:
        cache_mock.reset()
        yield
        return
    cache_gw = request.getfixturevalue("cache_gw")
    time.sleep(0.3)  # the previous test's lines flushed
    before = len(cache_gw.calls(0, timeout=0))
    cache_mock.reset()  # the mock's cache too
    yield
    sent = sum(cache_mock.count(name) for name in LISTENERS)
    for line in call_lines(cache_gw, before + sent)[before:]:
        if line["status"] == 200:
            assert line["cost_micro_usd"] == cost(line), line


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="client-key", max_retries=0)


def claude(gw):
    return anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0)


def rules():
    """A system text no other test sends (each test's cache starts empty anyway)."""
    return f"Rules {uuid.uuid4().hex}: answer briefly. " * 20


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        "cache_control": EPHEMERAL}


def field(model, name):
    """A usage field, declared by the SDK's model or kept as an extra."""
    return getattr(model, name, None) if name in type(model).model_fields else model.model_extra[name]


def last_body(mock, name):
    return mock.requests(name)[-1]["body"]


def call_lines(gw, count):
    """The call log's first `count` lines, once there are that many."""
    lines = gw.calls(count)
    assert len(lines) >= count
    return lines[:count]


def cost(line):
    """The call-log line's tokens at PRICES, in micro-USD."""
    cached, written = line.get("cached_tokens", 0), line.get("cache_write_tokens", 0)
    uncached = line["prompt_tokens"] - cached - written
    micro = uncached * 3 + cached * 0.3 + written * 3.75 + line["completion_tokens"] * 15
    return int(micro + 0.5)  # halves away from zero, as the gateway rounds


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
def test_chat_cache_control_reaches_the_member_and_reads_come_back_priced(cache_gw, cache_mock, kind):
    """The chat door's `cache_control` on a system part and a tool (LiteLLM's fields) becomes
    Anthropic's `cache_control` on the same blocks, or Bedrock's `cachePoint` after them. The
    first answer reports the prefix written (`prompt_tokens_details.cache_write_tokens`), the
    same request streamed then reads it (`cached_tokens` in the usage chunk); the call log
    prices reads and writes at the member's cache prices."""
    before = len(cache_gw.calls(0, timeout=0))
    text = rules()
    messages = [{"role": "system", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]},
                {"role": "user", "content": "What do the rules say?"}]
    first = gpt(cache_gw).chat.completions.create(model=f"only_{kind}", messages=messages, tools=[TOOL])
    sent = last_body(cache_mock, kind)
    if kind == "anthropic":
        assert sent["system"] == [{"type": "text", "text": text, "cache_control": EPHEMERAL}]
        assert sent["tools"][0]["cache_control"] == EPHEMERAL
    else:
        assert sent["system"] == [{"text": text}, {"cachePoint": {"type": "default"}}]
        assert sent["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}
        assert "cache_control" not in str(sent)
    details = first.usage.prompt_tokens_details
    written = field(details, "cache_write_tokens")
    assert details.cached_tokens == 0 and written > len(text) // 4
    assert first.usage.prompt_tokens > written

    stream = gpt(cache_gw).chat.completions.create(model=f"only_{kind}", messages=messages, tools=[TOOL],
                                                   stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens == written
    assert 0 <= usage.prompt_tokens - first.usage.prompt_tokens <= 5  # `"stream": true` more

    write_line, read_line = call_lines(cache_gw, before + 2)[before:]
    assert write_line["cache_write_tokens"] == written and "cached_tokens" not in write_line
    assert read_line["cached_tokens"] == written and "cache_write_tokens" not in read_line
    for line in (write_line, read_line):
        assert line["cost_micro_usd"] == cost(line), line
    # Reading the prefix costs a tenth of its input price, writing it 1.25 times.
    assert read_line["cost_micro_usd"] < write_line["cost_micro_usd"]


def test_messages_door_cache_control_reaches_anthropic_as_is_and_bedrock_as_cache_points(cache_gw, cache_mock):
    """Through the anthropic SDK: an Anthropic member gets the request's blocks as they are, a
    Bedrock member gets `cachePoint`s; both report the write then the read in Messages usage
    (`cache_creation_input_tokens`, `cache_read_input_tokens`, `input_tokens` without them)."""
    text = rules()
    system = [{"type": "text", "text": text, "cache_control": EPHEMERAL}]
    ask = [{"role": "user", "content": [{"type": "text", "text": "Summarise.", "cache_control": EPHEMERAL}]}]
    for kind in ("anthropic", "bedrock"):
        client = claude(cache_gw)
        first = client.messages.create(model=f"only_{kind}", max_tokens=50, system=system, messages=ask)
        sent = last_body(cache_mock, kind)
        if kind == "anthropic":
            assert sent["system"] == system and sent["messages"] == ask
        else:
            assert sent["system"][1] == {"cachePoint": {"type": "default"}}
            assert sent["messages"][0]["content"] == [{"text": "Summarise."}, {"cachePoint": {"type": "default"}}]
        written = first.usage.cache_creation_input_tokens
        assert written > len(text) // 4 and first.usage.cache_read_input_tokens == 0, kind
        with client.messages.stream(model=f"only_{kind}", max_tokens=50, system=system, messages=ask) as s:
            second = s.get_final_message()
        assert second.usage.cache_read_input_tokens == written, kind
        assert second.usage.cache_creation_input_tokens == 0, kind
        assert 0 <= second.usage.input_tokens - first.usage.input_tokens <= 5, kind  # `"stream": true` more


def test_responses_door_cache_control_reaches_anthropic(cache_gw, cache_mock):
    """On the Responses door a `cache_control` on an input part and a function tool reaches
    an Anthropic member; the read comes back as `input_tokens_details.cached_tokens`."""
    text = rules()
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}},
            "cache_control": EPHEMERAL}
    items = [{"role": "user", "content": [{"type": "input_text", "text": text, "cache_control": EPHEMERAL}]},
             {"role": "user", "content": "And now?"}]
    client = gpt(cache_gw)
    first = client.responses.create(model="only_anthropic", input=items, tools=[tool])
    sent = last_body(cache_mock, "anthropic")
    assert sent["messages"][0]["content"][0] == {"type": "text", "text": text, "cache_control": EPHEMERAL}
    assert sent["tools"][0]["cache_control"] == EPHEMERAL
    assert first.usage.input_tokens_details.cached_tokens == 0
    written = field(first.usage.input_tokens_details, "cache_write_tokens")
    assert written > len(text) // 4
    second = client.responses.create(model="only_anthropic", input=items, tools=[tool], stream=True)
    done = [e for e in second if e.type == "response.completed"][0]
    assert done.response.usage.input_tokens_details.cached_tokens == written
    assert 0 <= done.response.usage.input_tokens - first.usage.input_tokens <= 5


def test_token_usage_counts_cache_reads_and_writes_as_parts_of_the_input(cache_gw, cache_mock):
    """Envoy's /stats: `gen_ai.client.token.usage` with `gen_ai.token.type` `cache_write` and
    `cache_read` counts the prefix written then read; `input` counts every input token once
    (Anthropic's `input_tokens` plus its cache reads and writes, never the cache again)."""
    def usage(stats, token_type):
        member = f"anthropic/{KINDS['anthropic'][1]}"
        name = (f"wasmcustom.gen_ai.client.token.usage;gen_ai.operation.name=chat;pool=only_anthropic;"
                f"member={member};tenant=-;gen_ai.token.type={token_type}")
        return stats[name]
    before = cache_gw.stats()
    system = [{"type": "text", "text": rules(), "cache_control": EPHEMERAL}]
    answers = [claude(cache_gw).messages.create(model="only_anthropic", max_tokens=50, system=system,
                                                messages=[{"role": "user", "content": "Go."}]) for _ in range(2)]
    after = cache_gw.stats()
    d = lambda t: usage(after, t) - usage(before, t)
    written = answers[0].usage.cache_creation_input_tokens
    assert written > 0 and answers[1].usage.cache_read_input_tokens == written
    assert (d("cache_write"), d("cache_read")) == (written, written)
    inputs = sum(a.usage.input_tokens + a.usage.cache_read_input_tokens + a.usage.cache_creation_input_tokens
                 for a in answers)
    assert d("input") == inputs
    assert d("output") == sum(a.usage.output_tokens for a in answers)


def test_openai_members_get_no_cache_control_and_report_their_own_cache(cache_gw, cache_mock):
    """OpenAI caches a repeated long prefix by itself: the chat door's marks are taken out (the
    content stays), and its `cached_tokens` come back on the chat door, on the Messages door
    as `cache_read_input_tokens`, and on the Responses door (served natively) as they are."""
    text = rules() * 12  # over 1024 tokens: OpenAI's minimum
    messages = [{"role": "system", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]},
                {"role": "user", "content": "Go."}]
    client = gpt(cache_gw)
    first = client.chat.completions.create(model="only_openai", messages=messages, tools=[TOOL])
    sent = last_body(cache_mock, "openai")
    assert "cache_control" not in str(sent)
    assert sent["messages"][0]["content"] == [{"type": "text", "text": text}]
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = client.chat.completions.create(model="only_openai", messages=messages, tools=[TOOL])
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0

    system = [{"type": "text", "text": text + " (Messages)", "cache_control": EPHEMERAL}]
    for i in range(2):
        msg = claude(cache_gw).messages.create(model="only_openai", max_tokens=50, system=system,
                                               messages=[{"role": "user", "content": "Go."}])
    assert "cache_control" not in str(last_body(cache_mock, "openai"))
    assert msg.usage.cache_read_input_tokens >= 1024

    for i in range(2):
        r = client.responses.create(model="only_openai", instructions=text, input="Go.")
    assert r.usage.input_tokens_details.cached_tokens >= 1024


def test_gemini_gets_no_cache_control_and_its_implicit_cache_reads_come_back(cache_gw, cache_mock):
    """Gemini caches a repeated long prefix by itself: the marks are not sent, and its
    `cachedContentTokenCount` comes back as the chat door's `cached_tokens`, streamed too."""
    text = rules() * 12
    messages = [{"role": "system", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]},
                {"role": "user", "content": "Go.", "cache_control": EPHEMERAL}]
    client = gpt(cache_gw)
    first = client.chat.completions.create(model="only_gemini", messages=messages)
    assert "cache_control" not in str(last_body(cache_mock, "gemini"))
    assert first.usage.prompt_tokens_details is None
    stream = client.chat.completions.create(model="only_gemini", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens >= 1024


def test_anthropics_breakpoint_limit_is_the_members_answer(cache_gw, cache_mock):
    """Five breakpoints: Anthropic refuses the request (the mock as Anthropic does) and the
    client reads that 400 in its door's shape; the gateway neither adds nor removes any."""
    parts = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(5)]
    with pytest.raises(openai.BadRequestError) as e:
        gpt(cache_gw).chat.completions.create(model="only_anthropic", messages=[{"role": "user", "content": parts}])
    assert "maximum of 4 blocks with cache_control" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        gpt(cache_gw).chat.completions.create(
            model="only_anthropic", messages=[{"role": "user", "content": "x", "cache_control": "yes"}])
    assert "messages[0].cache_control" in e.value.message


def test_a_tenants_budget_is_charged_at_the_cache_prices(cache_mock):
    """A tenant's budget settles each answer at what the call log says it cost, cache writes
    and reads at the member's cache prices: the spent gauge is the sum of the two lines."""
    key = "sk-cache-team-secret"
    providers = {n: p for n, p in providers_config().items() if n in LISTENERS}
    config = {"providers": providers, "defaults": {"health": {"consecutive_failures": 1000}},
              "pools": {"only_anthropic": {"members": [{"provider": "anthropic", "model": KINDS["anthropic"][1], **PRICES}]}},
              "tenants": {"team-cache": {"keys_sha256": [hashlib.sha256(key.encode()).hexdigest()],
                                         "budget_usd": {"per": "day", "limit": 100}}}}
    g = Gateway(config, dict(cache_mock.addrs), KEYS, call_log=True)
    try:
        client = openai.OpenAI(base_url=g.base + "/v1", api_key=key, max_retries=0)
        messages = [{"role": "system", "content": [{"type": "text", "text": rules(), "cache_control": EPHEMERAL}]},
                    {"role": "user", "content": "Go."}]
        for _ in range(2):
            client.chat.completions.create(model="only_anthropic", messages=messages, max_tokens=50)
        write, read = call_lines(g, 2)
        assert write["cache_write_tokens"] == read["cached_tokens"] > 0
        assert [line["cost_micro_usd"] for line in (write, read)] == [cost(write), cost(read)]
        time.sleep(1.5)  # gauges reach Envoy on the filter's next tick
        spent = g.prometheus()[("switchboard_tenant_budget_spent_micro_usd", frozenset({("tenant", "team-cache")}))]
        assert spent == write["cost_micro_usd"] + read["cost_micro_usd"]
    finally:
        g.stop()
