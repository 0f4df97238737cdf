"""Reasoning across doors and kinds, through the official SDKs: each door's
reasoning control reaches each kind's own (Anthropic's thinking budget with a
`max_tokens` above it, Gemini's thinkingConfig, OpenAI's reasoning_effort);
reasoning comes back in each door's shape; and a thinking block's signature
survives a tool loop through chat and Responses clients, which the mock's
Anthropic refuses without it, as Anthropic does."""
import json

import anthropic
import openai
import pytest

from test_params import claude, gpt, params_gw, params_mock, reset_params  # noqa: F401  (fixtures)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def last_body(mock, kind):
    return mock.requests(kind)[-1]["body"]


def test_chat_tool_loop_with_thinking_keeps_the_signature(params_gw, params_mock):
    """`reasoning_effort: low` becomes a 2048-token thinking budget with max_tokens above it; the
    answer's `thinking_blocks` carry the signature, and sent back with the assistant message the
    next turn of the tool loop is accepted; without them Anthropic's rule refuses it."""
    client = gpt(params_gw)
    messages = [{"role": "user", "content": "weather in Lyon?"}]
    first = client.chat.completions.create(model="only_anthropic", messages=messages, max_tokens=100,
                                           reasoning_effort="low", tools=[WEATHER], tool_choice="required")
    sent = last_body(params_mock, "anthropic")
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and sent["max_tokens"] == 2148
    message = first.choices[0].message
    assert message.reasoning_content.startswith("The user wrote")
    blocks = message.model_extra["thinking_blocks"]
    assert blocks[0]["type"] == "thinking" and blocks[0]["signature"].startswith("mocksig")
    call = message.tool_calls[0]
    result = {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    second = client.chat.completions.create(model="only_anthropic", reasoning_effort="low", tools=[WEATHER],
                                            messages=messages + [message.model_dump(exclude_none=True), result])
    assert second.choices[0].message.content
    assert last_body(params_mock, "anthropic")["messages"][1]["content"][0] == blocks[0]
    stripped = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="only_anthropic", reasoning_effort="low", tools=[WEATHER],
                                       messages=messages + [stripped, result])
    assert "Expected `thinking` or `redacted_thinking`" in e.value.message


def test_responses_tool_loop_with_reasoning_keeps_the_signature(params_gw, params_mock):
    """On the Responses door, `reasoning.effort` thinks on an Anthropic member; the reasoning item
    (summary text, the signed block as `encrypted_content`) sent back as input lets the tool loop go on."""
    client = gpt(params_gw)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    first = client.responses.create(model="only_anthropic", input="weather in Lyon?", max_output_tokens=100,
                                    reasoning={"effort": "medium"}, tools=[tool], tool_choice="required")
    assert last_body(params_mock, "anthropic")["thinking"]["budget_tokens"] == 8192
    reasoning = next(i for i in first.output if i.type == "reasoning")
    assert reasoning.summary[0].text.startswith("The user wrote")
    assert json.loads(reasoning.encrypted_content)["signature"].startswith("mocksig")
    call = next(i for i in first.output if i.type == "function_call")
    follow = [{"role": "user", "content": "weather in Lyon?"}, *[i.model_dump(exclude_none=True) for i in first.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = client.responses.create(model="only_anthropic", input=follow, reasoning={"effort": "medium"}, tools=[tool])
    assert second.output_text
    assert last_body(params_mock, "anthropic")["messages"][1]["content"][0]["type"] == "thinking"


def test_messages_thinking_reaches_gemini_and_openai_in_their_terms(params_gw, params_mock):
    """A Messages `thinking` budget becomes Gemini's thinkingConfig (max tokens above it) and
    OpenAI's reasoning_effort (3000 tokens: medium), never a `thinking` field they do not know."""
    client = claude(params_gw)
    thinking = {"type": "enabled", "budget_tokens": 3000}
    client.messages.create(model="only_gemini", max_tokens=100, thinking=thinking,
                           messages=[{"role": "user", "content": "hi"}])
    config = last_body(params_mock, "gemini")["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 3000, "includeThoughts": True}
    assert config["maxOutputTokens"] == 3100
    client.messages.create(model="only_openai", max_tokens=100, thinking=thinking,
                           messages=[{"role": "user", "content": "hi"}])
    sent = last_body(params_mock, "openai")
    assert sent["reasoning_effort"] == "medium" and "thinking" not in sent


def test_reasoning_comes_back_in_each_doors_shape(params_gw, params_mock):
    """Gemini's thoughts come back as a thinking block on the Messages door, a reasoning item on
    the Responses door and `reasoning_content` on the chat door, with the reasoning tokens counted."""
    msg = claude(params_gw).messages.create(model="only_gemini", max_tokens=2000,
                                            thinking={"type": "enabled", "budget_tokens": 1024},
                                            messages=[{"role": "user", "content": "hi"}])
    assert (msg.content[0].type, msg.content[0].thinking) == ("thinking", "Thinking it over.")
    assert msg.content[1].type == "text"
    r = gpt(params_gw).responses.create(model="only_gemini", input="hi", reasoning={"effort": "low"})
    assert r.output[0].type == "reasoning" and r.output[0].summary[0].text == "Thinking it over."
    assert r.usage.output_tokens_details.reasoning_tokens == 3
    c = gpt(params_gw).chat.completions.create(model="only_gemini", messages=[{"role": "user", "content": "hi"}],
                                               reasoning_effort="low")
    assert c.choices[0].message.reasoning_content == "Thinking it over."
    assert c.usage.completion_tokens_details.reasoning_tokens == 3


def test_bad_reasoning_values_are_a_400_naming_the_field(params_gw, params_mock):
    """An unknown effort or a budget under 1024 is refused by the gateway, naming the field."""
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(model="only_anthropic", messages=[{"role": "user", "content": "hi"}],
                                               extra_body={"reasoning_effort": "extreme"})
    assert e.value.body["param"] == "reasoning_effort"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(params_gw).messages.create(model="only_gemini", max_tokens=100,
                                          thinking={"type": "enabled", "budget_tokens": 10},
                                          messages=[{"role": "user", "content": "hi"}])
    assert "thinking" in e.value.message
