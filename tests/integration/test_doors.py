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
            # The Anthropic member first (priority), failing in the failover tests.
            "mixed": {"max_response_tokens": 512, "strategy": "priority",
                      "members": [member("anthropic"), {**member("openai"), "priority": 1}]},
            # The OpenAI member first, failing in the reverse failover tests.
            "mixed_reverse": {"max_response_tokens": 512, "strategy": "priority",
                              "members": [member("openai"), {**member("anthropic"), "priority": 1}]},
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
    assert msg.content[0].type == "thinking" and msg.content[-1].text.startswith("mock reply from anthropic") and msg.usage.output_tokens > 0
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


def test_every_member_overloaded_keeps_529_on_the_messages_door_only(doors_gw, doors_mock):
    """Every attempt answered 529: the anthropic SDK raises OverloadedError (Anthropic's own status and
    type), whether the member was native or translated; other doors, whose clients know no 529, get 503.
    A mix of 529 and another failure is not "overloaded": 503."""
    doors_mock.faults("anthropic", status=529)
    with pytest.raises(anthropic.OverloadedError) as e:
        claude(doors_gw).messages.create(model="only_anthropic", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 529
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "overloaded_error", e.value.body
    assert "anthropic/claude-3-5-haiku:529" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.OverloadedError):
        with claude(doors_gw).messages.stream(model="only_anthropic", max_tokens=10,
                                              messages=[{"role": "user", "content": "hi"}]) as s:
            list(s.text_stream)
    doors_mock.faults("openai", status=529)
    with pytest.raises(anthropic.OverloadedError):
        claude(doors_gw).messages.create(model="mixed", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    # The same failures on the OpenAI doors: 503, which the openai SDK knows (InternalServerError).
    with pytest.raises(openai.InternalServerError) as e:
        gpt(doors_gw).chat.completions.create(model="mixed", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and e.value.code == "no_healthy_upstream"
    with pytest.raises(openai.InternalServerError) as e:
        gpt(doors_gw).responses.create(model="mixed", input="hi")
    assert e.value.status_code == 503
    # Overloaded and broken: not all overloaded.
    doors_mock.faults("openai", status=500)
    with pytest.raises(anthropic.InternalServerError) as e:
        claude(doors_gw).messages.create(model="mixed", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and not isinstance(e.value, anthropic.OverloadedError)


def test_every_answer_of_the_messages_api_is_anthropic_shaped_refused_keys_included(doors_mock):
    """A tenant's missing or wrong key on /v1/messages and /v1/messages/count_tokens (401), a pool it
    may not use (403) and an unknown Messages API path (404) all reach the anthropic SDK in Anthropic's
    error shape; the chat door's 401 stays OpenAI's."""
    from test_tenants import sha
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic")}
    config = {
        "providers": providers,
        "pools": {"claude": {"members": [{"provider": "anthropic", "model": "claude-3-5-haiku"}]},
                  "gpt": {"members": [{"provider": "openai", "model": "gpt-4o"}]}},
        "tenants": {"t": {"keys_sha256": [sha("sk-tenant")], "allow": ["claude"]}},
    }
    g = Gateway(config, dict(doors_mock.addrs), KEYS)
    try:
        messages = [{"role": "user", "content": "hi"}]
        client = anthropic.Anthropic(base_url=g.base, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            client.messages.create(model="claude", max_tokens=10, messages=messages)
        assert e.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": e.value.body["error"]["message"]}}, e.value.body
        with pytest.raises(anthropic.AuthenticationError) as e:
            client.messages.count_tokens(model="claude", messages=messages)
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
        for path in ("/v1/messages", "/v1/messages/count_tokens"):  # no key at all
            r = httpx.post(g.base + path, json={"model": "claude", "max_tokens": 10, "messages": messages}, timeout=10)
            assert r.status_code == 401 and r.json()["type"] == "error", r.text
            assert r.json()["error"]["type"] == "authentication_error"
        client = anthropic.Anthropic(base_url=g.base, api_key="sk-tenant", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError) as e:
            client.messages.create(model="gpt", max_tokens=10, messages=messages)
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "permission_error"
        with pytest.raises(anthropic.NotFoundError) as e:
            client.messages.batches.list()
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
        assert client.messages.create(model="claude", max_tokens=10, messages=messages).content
        # The chat door keeps OpenAI's shape.
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=g.base + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
                model="claude", messages=messages)
        assert e.value.code == "invalid_api_key" and "type" not in e.value.response.json()
        assert doors_mock.count("anthropic") == 1 and doors_mock.count("openai") == 0
    finally:
        g.stop()


def test_an_8_mb_image_request_is_served_on_every_door_and_on_failover(doors_mock):
    """With the default max_body_bytes (64 MiB, what OpenAI and Anthropic accept for images), an
    8 MB base64 image reaches an OpenAI member as it is and an Anthropic member translated, from the
    chat door (also when the first member fails, non-streamed and streamed) and the Messages door;
    a body over the default is refused with the gateway's 413 before it is read."""
    import base64
    import os
    import socket
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic")}
    member = lambda n, **kw: {"provider": n, "model": KINDS[n][1], **kw}
    config = {
        "providers": providers,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {"gpt": {"members": [member("openai")]}, "claude": {"members": [member("anthropic")]},
                  "both": {"members": [member("anthropic", weight=1000), member("openai")]}},
    }
    g = Gateway(config, dict(doors_mock.addrs), KEYS)
    try:
        image = base64.b64encode(os.urandom(6 * 1024 * 1024)).decode()  # 8 MiB of base64
        url = f"data:image/png;base64,{image}"
        messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                                 {"type": "image_url", "image_url": {"url": url}}]}]
        client = openai.OpenAI(base_url=g.base + "/v1", api_key="k", max_retries=0, timeout=60)
        for pool, provider in (("gpt", "openai"), ("claude", "anthropic")):
            r = client.chat.completions.create(model=pool, messages=messages)
            assert r.choices[0].message.content.startswith(f"mock reply from {provider}")
            sent = upstream(doors_mock, provider)["body"]
            assert image in json.dumps(sent), f"the image reached {provider}"
        doors_mock.faults("anthropic", status=529)
        r = client.chat.completions.with_raw_response.create(model="both", messages=messages)
        assert r.headers["x-switchboard-attempts"] == "2" and r.headers["x-switchboard-member"] == "openai/gpt-4o"
        with client.chat.completions.stream(model="both", messages=messages) as s:
            text = "".join(e.delta for e in s if e.type == "content.delta")
        assert text.startswith("mock reply from openai")
        assert image in json.dumps(upstream(doors_mock, "openai")["body"])
        doors_mock.reset()
        msg = anthropic.Anthropic(base_url=g.base, api_key="k", max_retries=0, timeout=60).messages.create(
            model="claude", max_tokens=50, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
                {"type": "text", "text": "What is in this image?"}]}])
        assert msg.content[0].text.startswith("mock reply from anthropic")
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        try:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
                         f"content-length: {64 * 1024 * 1024 + 1}\r\n\r\n".encode())
            head = sock.recv(65536).decode(errors="replace")
        finally:
            sock.close()
        assert head.startswith("HTTP/1.1 413") and "67108864 bytes" in head and "request_too_large" in head, head[:500]
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
