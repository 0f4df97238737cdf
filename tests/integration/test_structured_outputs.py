"""Structured outputs (`response_format` json_schema / json_object) through
the gateway for every translated kind and for OpenAI: the official SDK's
`client.chat.completions.parse(response_format=PydanticModel)` gets a parsed
object whichever member answers, streamed or not. Anthropic and Bedrock get
the schema as a forced tool (the mock answers forced tools with arguments
built from the schema); Gemini gets responseSchema."""
import json
from typing import List, Optional

import httpx
import openai
import pytest
from pydantic import BaseModel

from harness import chat
from test_providers import KINDS, kinds_gateway, kinds_mock, reset_kinds  # noqa: F401 (fixtures)

STRUCTURED_TOOL = "json_schema_response"
MEMBERS = ["anthropic", "bedrock", "gemini", "openai"]


class Stop(BaseModel):
    city: str
    nights: int


class Trip(BaseModel):
    title: str
    budget: float
    confirmed: bool
    stops: List[Stop]
    note: Optional[str]


def client(gateway):
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="client", max_retries=0)


def upstream_body(mock, name):
    [request] = mock.requests(name)
    return request["body"]


@pytest.mark.parametrize("name", MEMBERS)
def test_sdk_parse_returns_the_pydantic_object(kinds_gateway, kinds_mock, name):
    completion = client(kinds_gateway).chat.completions.parse(
        model=f"only_{name}", messages=[{"role": "user", "content": "Plan a trip to Lisbon."}], response_format=Trip)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls in (None, [])
    trip = choice.message.parsed
    assert isinstance(trip, Trip)
    assert isinstance(trip.stops[0], Stop)
    assert completion.usage.total_tokens > 0
    sent = upstream_body(kinds_mock, name)
    if name == "anthropic":
        [tool] = sent["tools"]
        assert tool["name"] == STRUCTURED_TOOL and "Trip" in tool["description"]
        assert tool["input_schema"]["properties"].keys() == Trip.model_json_schema()["properties"].keys()
        assert sent["tool_choice"] == {"type": "tool", "name": STRUCTURED_TOOL, "disable_parallel_tool_use": True}
    if name == "bedrock":
        [tool] = sent["toolConfig"]["tools"]
        assert tool["toolSpec"]["name"] == STRUCTURED_TOOL
        assert "$defs" in tool["toolSpec"]["inputSchema"]["json"]
        assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": STRUCTURED_TOOL}}
    if name == "gemini":
        config = sent["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        # Pydantic's $defs/$ref are inlined: Gemini's schema has no references.
        assert "$ref" not in json.dumps(config["responseSchema"])
        assert config["responseSchema"]["properties"]["stops"]["items"]["properties"]["city"]["type"] == "string"


@pytest.mark.parametrize("name", MEMBERS)
def test_sdk_parse_of_a_stream(kinds_gateway, kinds_mock, name):
    with client(kinds_gateway).chat.completions.stream(
            model=f"only_{name}", messages=[{"role": "user", "content": "Plan a trip."}], response_format=Trip) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert not any(e.type.startswith("tool_calls.") for e in events)
    assert isinstance(final.choices[0].message.parsed, Trip)
    assert final.choices[0].finish_reason == "stop"


def test_beta_parse_alias_against_a_mixed_pool(kinds_gateway):
    """The pool mixes Anthropic and OpenAI: both members give the parsed object."""
    beta = client(kinds_gateway).beta.chat.completions
    members = set()
    for _ in range(12):
        raw = beta.with_raw_response.parse(model="mixed", messages=[{"role": "user", "content": "Plan."}],
                                           response_format=Trip)
        members.add(raw.headers["x-switchboard-member"].split("/")[0])
        assert isinstance(raw.parse().choices[0].message.parsed, Trip)
    assert members == {"anthropic", "openai"}


@pytest.mark.parametrize("name", ["anthropic", "bedrock"])
def test_client_tools_stay_callable_next_to_the_schema(kinds_gateway, kinds_mock, name):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    body = chat(f"only_{name}", "What is the weather in Paris?", tools=tools, response_format={
        "type": "json_schema", "json_schema": {"name": "Trip", "schema": Trip.model_json_schema()}})
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    sent = upstream_body(kinds_mock, name)
    if name == "anthropic":
        assert [t["name"] for t in sent["tools"]] == ["get_weather", STRUCTURED_TOOL]
        assert sent["tool_choice"] == {"type": "any"}
    else:
        assert [t["toolSpec"]["name"] for t in sent["toolConfig"]["tools"]] == ["get_weather", STRUCTURED_TOOL]
        assert sent["toolConfig"]["toolChoice"] == {"any": {}}


@pytest.mark.parametrize("name", ["anthropic", "bedrock"])
def test_json_object_mode_is_a_system_instruction(kinds_gateway, kinds_mock, name):
    body = chat(f"only_{name}", "Give me JSON.", response_format={"type": "json_object"})
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    sent = upstream_body(kinds_mock, name)
    assert "JSON object" in json.dumps(sent["system"])
    assert "tools" not in sent and "toolConfig" not in sent


def test_reserved_tool_name_is_refused_on_translated_members(kinds_gateway):
    tools = [{"type": "function", "function": {"name": STRUCTURED_TOOL, "parameters": {"type": "object"}}}]
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", timeout=10,
                   json=chat("only_anthropic", "hi", tools=tools))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tools"
