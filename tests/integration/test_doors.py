"""The Anthropic Messages and OpenAI Responses front doors, through the
official `anthropic` and `openai` SDKs, against an Anthropic member, an OpenAI
member and a mixed pool whose first member fails."""
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
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def doors_gw(doors_mock):
    providers = {n: p for n, p in providers_config().items() if n in ("openai", "anthropic")}
    member = lambda n: {"provider": n, "model": KINDS[n][1]}
    config = {
        "providers": providers,
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "only_anthropic": {"max_response_tokens": 512, "members": [member("anthropic")]},
            "only_openai": {"max_response_tokens": 512, "members": [member("openai")]},
            # The Anthropic member first (weight), failing in the failover tests.
            "mixed": {"max_response_tokens": 512, "members": [{**member("anthropic"), "weight": 1000}, member("openai")]},
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
    """The tool result "sunny" reached the pool's provider in that provider's own format."""
    sent = mock.requests(pool.removeprefix("only_"))[-1]["body"]["messages"]
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


def test_responses_stateful_features_get_a_clear_400(doors_gw):
    with pytest.raises(openai.BadRequestError) as e:
        gpt(doors_gw).responses.create(model="only_openai", input="hi", previous_response_id="resp_123")
    assert "previous_response_id" in e.value.message
