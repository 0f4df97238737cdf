"""The Anthropic Messages and OpenAI Responses front doors, through the
official `anthropic` and `openai` SDKs, against an Anthropic member, an OpenAI
member and mixed pools whose first member fails. A door's own kinds get the
client's body as it is (model rewritten) and their answers untouched; the
other kinds are translated both ways."""
import json

import anthropic
import httpx
import openai
import pytest

from harness import Gateway, MockProvider
from test_providers import KEYS, KINDS, providers_config


@pytest.fixture(scope="module")
def doors_mock():
    m = MockProvider({
        "openai": f"kind=openai,key={KEYS['OPENAI_KEY']}",
        "anthropic": f"kind=anthropic,key={KEYS['ANTHROPIC_KEY']}",
        "azure": f"kind=azure,key={KEYS['AZURE_KEY']}",
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def doors_gw(doors_mock):
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic", "azure")}
    member = lambda n: {"provider": n, "model": KINDS[n][1]}
    config = {
        "providers": providers,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "only_anthropic": {"max_response_tokens": 512, "members": [member("anthropic")]},
            "only_openai": {"max_response_tokens": 512, "members": [member("openai")]},
            # The Anthropic member first (weight), failing in the failover tests.
            "mixed": {"max_response_tokens": 512, "members": [{**member("anthropic"), "weight": 1000}, member("openai")]},
            # The OpenAI member first, failing in the reverse failover tests.
            "mixed_reverse": {"max_response_tokens": 512,
                              "members": [{**member("openai"), "weight": 1000}, member("anthropic")]},
            "only_azure": {"members": [{**member("azure"), "deployment": "prod-4o"}]},
        },
    }
    g = Gateway(config, dict(doors_mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset_doors(doors_mock):
    doors_mock.reset()
    yield


POOLS = ["only_anthropic", "only_openai", "mixed"]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def assert_tool_result_reached(mock, pool, call_id):
    """The tool result "sunny" reached the pool's provider in that provider's own format
    (a Responses request reaches OpenAI as it is)."""
    body = mock.requests(pool.removeprefix("only_"))[-1]["body"]
    if "input" in body:
        assert {"type": "function_call_output", "call_id": call_id, "output": "sunny"} in body["input"], body
        return
    sent = body["messages"]
    if pool == "only_openai":
        assert {"role": "tool", "tool_call_id": call_id, "content": "sunny"} in sent
    else:
        blocks = [b for m in sent if isinstance(m["content"], list) for b in m["content"]]
        assert any(b.get("type") == "tool_result" and b.get("tool_use_id") == call_id for b in blocks), sent


def claude(gw):
    return anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0)


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="client-key", max_retries=0)


def fail_first_member(mock, pool):
    if pool == "mixed":
        mock.faults("anthropic", status=529)


@pytest.mark.parametrize("pool", POOLS)
def test_messages_create(doors_gw, doors_mock, pool):
    fail_first_member(doors_mock, pool)
    msg = claude(doors_gw).messages.create(
        model=pool, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hello"}]
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("mock reply from")
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    if pool == "mixed":
        assert "mock reply from openai" in msg.content[0].text


@pytest.mark.parametrize("pool", POOLS)
def test_messages_stream(doors_gw, doors_mock, pool):
    fail_first_member(doors_mock, pool)
    with claude(doors_gw).messages.stream(
        model=pool, max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("mock reply from")
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("pool", ["only_anthropic", "only_openai"])
def test_messages_tool_round_trip(doors_gw, doors_mock, pool):
    client = claude(doors_gw)
    first = client.messages.create(
        model=pool, max_tokens=100, tools=[WEATHER], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather in Lyon?"}],
    )
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.name == "get_weather" and isinstance(tool_use.input, dict)
    assert first.stop_reason == "tool_use"
    second = client.messages.create(
        model=pool, max_tokens=100, tools=[WEATHER],
        messages=[
            {"role": "user", "content": "weather in Lyon?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
        ],
    )
    assert second.type == "message" and second.content
    assert_tool_result_reached(doors_mock, pool, tool_use.id)


def test_messages_count_tokens_and_errors_in_anthropic_shape(doors_gw):
    client = claude(doors_gw)
    count = client.messages.count_tokens(model="only_openai", messages=[{"role": "user", "content": "hello " * 100}])
    assert 100 <= count.input_tokens <= 300
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(doors_gw.base + "/v1/messages", json={"model": "only_openai", "messages": []}, timeout=10)
    assert r.status_code == 400 and r.json()["type"] == "error", r.text


@pytest.mark.parametrize("pool", POOLS)
def test_responses_create(doors_gw, doors_mock, pool):
    fail_first_member(doors_mock, pool)
    resp = gpt(doors_gw).responses.create(model=pool, input="hello", instructions="Be brief.")
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text.startswith("mock reply from")
    assert resp.usage.output_tokens > 0


@pytest.mark.parametrize("pool", POOLS)
def test_responses_stream(doors_gw, doors_mock, pool):
    fail_first_member(doors_mock, pool)
    with gpt(doors_gw).responses.stream(model=pool, input="hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas).startswith("mock reply from")
    assert final.status == "completed" and final.usage.output_tokens > 0


@pytest.mark.parametrize("pool", ["only_anthropic", "only_openai"])
def test_responses_function_tools(doors_gw, doors_mock, pool):
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": WEATHER["input_schema"]}
    resp = gpt(doors_gw).responses.create(model=pool, input="weather in Lyon?", tools=[tool], tool_choice="required")
    call = next(o for o in resp.output if o.type == "function_call")
    assert call.name == "get_weather"
    follow = gpt(doors_gw).responses.create(
        model=pool, tools=[tool],
        input=[{"role": "user", "content": "weather in Lyon?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert follow.status == "completed" and follow.output
    assert_tool_result_reached(doors_mock, pool, call.call_id)


class Captured:
    """The SDK's own HTTP client, keeping the bodies it sent, to compare with what reached the provider."""

    def __init__(self, sdk):
        self.bodies = []
        self.http = sdk.DefaultHttpxClient(event_hooks={"request": [lambda r: self.bodies.append(json.loads(r.read()))]})

    def sent_with_model(self, model):
        return {**self.bodies[-1], "model": model}


def upstream(mock, name):
    return mock.requests(name)[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_messages_pass_through_to_anthropic_untouched(doors_gw, doors_mock, stream):
    """Anthropic-only fields reach an Anthropic member as the client sent them (only `model`
    rewritten), with the client's anthropic-beta and the gateway's key; the answer is the member's own."""
    cap = Captured(anthropic)
    client = anthropic.Anthropic(base_url=doors_gw.base, api_key="client-key", max_retries=0, http_client=cap.http)
    params = dict(
        model="only_anthropic", max_tokens=2048, metadata={"user_id": "u1"}, extra_body={"top_k": 5},
        thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Paris is in France."}},
            {"type": "text", "text": "hello"}]}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
        extra_headers={"anthropic-beta": "files-api-2025-04-14"},
    )
    if stream:
        with client.messages.stream(**params) as s:
            text = "".join(s.text_stream)
            msg = s.get_final_message()
        assert text.startswith("mock reply from anthropic")
    else:
        msg = client.messages.create(**params)
    assert msg.id.startswith("msg_mock"), "the member's own message id: the answer was not translated"
    assert msg.content[0].text.startswith("mock reply from anthropic") and msg.usage.output_tokens > 0
    got = upstream(doors_mock, "anthropic")
    assert got["body"] == cap.sent_with_model("claude-3-5-haiku")
    assert got["headers"]["anthropic-beta"] == "files-api-2025-04-14"
    assert got["headers"]["x-api-key"] == KEYS["ANTHROPIC_KEY"] and got["headers"]["anthropic-version"]


@pytest.mark.parametrize("pool,member", [("only_openai", ("openai", "gpt-4o")), ("only_azure", ("azure", "prod-4o"))])
@pytest.mark.parametrize("stream", [False, True])
def test_responses_pass_through_to_openai_and_azure_untouched(doors_gw, doors_mock, pool, member, stream):
    """Stateful Responses features reach OpenAI (and Azure's v1 API) as the client sent them, only
    `model` rewritten; the answer is the member's own."""
    name, model = member
    cap = Captured(openai)
    client = openai.OpenAI(base_url=doors_gw.base + "/v1", api_key="client-key", max_retries=0, http_client=cap.http)
    params = dict(model=pool, input="hello", previous_response_id="resp_earlier", store=True,
                  tools=[{"type": "web_search"}], include=["web_search_call.action.sources"], metadata={"k": "v"})
    if stream:
        with client.responses.stream(**params) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            resp = s.get_final_response()
        assert "".join(deltas).startswith(f"mock reply from {name}")
    else:
        resp = client.responses.create(**params)
    assert resp.id.startswith("resp_mock"), "the member's own response id: the answer was not translated"
    assert resp.output_text.startswith(f"mock reply from {name} to {model}") and resp.usage.output_tokens > 0
    got = upstream(doors_mock, name)
    assert got["body"] == cap.sent_with_model(model)
    if name == "azure":
        assert got["path"] == "/openai/v1/responses" and got["headers"]["api-key"] == KEYS["AZURE_KEY"]
    else:
        assert got["path"] == "/v1/responses" and got["headers"]["authorization"] == f"Bearer {KEYS['OPENAI_KEY']}"


@pytest.mark.parametrize("stream", [False, True])
def test_reverse_failover_keeps_each_doors_shape(doors_gw, doors_mock, stream):
    """The OpenAI member failing, the Anthropic member answering: a Messages client gets the
    Anthropic member's answer as it is, a Responses client a translated one."""
    doors_mock.faults("openai", status=500)
    client = claude(doors_gw)
    if stream:
        with client.messages.stream(model="mixed_reverse", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
            assert s.get_final_message().stop_reason == "end_turn"
    else:
        text = client.messages.create(model="mixed_reverse", max_tokens=50,
                                      messages=[{"role": "user", "content": "hi"}]).content[0].text
    assert text.startswith("mock reply from anthropic")
    if stream:
        with gpt(doors_gw).responses.stream(model="mixed_reverse", input="hi") as s:
            text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            assert s.get_final_response().status == "completed"
    else:
        text = gpt(doors_gw).responses.create(model="mixed_reverse", input="hi").output_text
    assert text.startswith("mock reply from anthropic")
    assert doors_mock.count("openai") == 2, "each door tried the failing OpenAI member first"


def test_native_only_features_stay_on_members_that_serve_them(doors_gw, doors_mock):
    """In a mixed pool, a Messages request with a server tool skips the preferred OpenAI member and
    a Responses request with previous_response_id skips the preferred Anthropic member: neither is an attempt."""
    msg = claude(doors_gw).messages.with_raw_response.create(
        model="mixed_reverse", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    assert msg.headers["x-switchboard-member"] == "anthropic/claude-3-5-haiku"
    assert msg.headers["x-switchboard-attempts"] == "1"
    resp = gpt(doors_gw).responses.with_raw_response.create(model="mixed", input="hi", previous_response_id="resp_1")
    assert resp.headers["x-switchboard-member"] == "openai/gpt-4o"
    assert resp.headers["x-switchboard-attempts"] == "1"
    assert doors_mock.count("openai") == 1 and doors_mock.count("anthropic") == 1


def test_native_only_features_without_such_a_member_get_a_clear_400(doors_gw, doors_mock):
    """No member can serve the feature: a 400 naming it, in each door's error shape, and nothing sent upstream."""
    with pytest.raises(openai.BadRequestError) as e:
        gpt(doors_gw).responses.create(model="only_anthropic", input="hi", previous_response_id="resp_123")
    assert e.value.code == "unsupported_feature"
    assert "previous_response_id" in e.value.message and "openai or azure members" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(doors_gw).messages.create(
            model="only_openai", max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}],
        )
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "document" in e.value.body["error"]["message"] and "anthropic members" in e.value.body["error"]["message"]
    assert doors_mock.count("openai") == 0 and doors_mock.count("anthropic") == 0


@pytest.mark.parametrize("stream", [False, True])
def test_tenant_tokens_are_corrected_with_the_usage_of_answers_passed_through(doors_mock, stream):
    """A tenant's reservation (max_tokens 2000 against a tpm of 3000) is corrected with the usage a
    native answer reports in its own fields (Anthropic's and the Responses API's, JSON or SSE):
    without that, the second request would not fit."""
    from test_tenants import sha, wait_for_fresh_minute
    wait_for_fresh_minute(min_left=10)
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic")}
    config = {
        "providers": providers,
        "pools": {"claude": {"members": [{"provider": "anthropic", "model": "claude-3-5-haiku"}]},
                  "gpt": {"members": [{"provider": "openai", "model": "gpt-4o"}]}},
        "tenants": {"t": {"keys_sha256": [sha("sk-tenant")], "tpm": 3000}},
    }
    g = Gateway(config, dict(doors_mock.addrs), KEYS)
    try:
        claude_client = anthropic.Anthropic(base_url=g.base, api_key="sk-tenant", max_retries=0)
        gpt_client = openai.OpenAI(base_url=g.base + "/v1", api_key="sk-tenant", max_retries=0)
        for _ in range(3):
            if stream:
                with claude_client.messages.stream(model="claude", max_tokens=2000,
                                                   messages=[{"role": "user", "content": "hi"}]) as s:
                    assert s.get_final_message().usage.output_tokens > 0
                with gpt_client.responses.stream(model="gpt", input="hi", max_output_tokens=2000) as s:
                    assert s.get_final_response().usage.output_tokens > 0
            else:
                claude_client.messages.create(model="claude", max_tokens=2000, messages=[{"role": "user", "content": "hi"}])
                gpt_client.responses.create(model="gpt", input="hi", max_output_tokens=2000)
        assert doors_mock.count("anthropic") == 3 and doors_mock.count("openai") == 3
    finally:
        g.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_every_door_names_the_model_that_served_the_answer(doors_gw, doors_mock, stream):
    """One rule on every door, native or translated: `model` is the serving member's
    model as its answer names it (the pool is in `x-switchboard-pool`)."""
    served = {"only_anthropic": "claude-3-5-haiku", "only_openai": "gpt-4o", "only_azure": "prod-4o"}
    for pool, model in served.items():
        messages = [{"role": "user", "content": "hello"}]
        if stream:
            with claude(doors_gw).messages.stream(model=pool, max_tokens=50, messages=messages) as s:
                msg = s.get_final_message()
            with gpt(doors_gw).responses.stream(model=pool, input="hello") as s:
                resp = s.get_final_response()
            chunks = list(gpt(doors_gw).chat.completions.create(model=pool, messages=messages, stream=True))
            chat_model = chunks[0].model
        else:
            msg = claude(doors_gw).messages.create(model=pool, max_tokens=50, messages=messages)
            resp = gpt(doors_gw).responses.create(model=pool, input="hello")
            chat_model = gpt(doors_gw).chat.completions.create(model=pool, messages=messages).model
        assert (pool, msg.model, resp.model, chat_model) == (pool, model, model, model)
