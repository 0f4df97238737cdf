"""What no parameter may lose between a door and a kind, through the official SDKs:
`anthropic-beta` on the Messages door (Anthropic's header, Bedrock Claude's
`anthropic_beta`, else refused unless dropped), `stop` beyond a kind's limit,
`tool_choice` forms on every door and kind, cache marks towards OpenAI's
Responses API, and a cache breakpoint on a thinking block. The mock refuses
what each provider refuses (OpenAI's 4 stop sequences and unknown
`cache_control`, Gemini's 5, Anthropic's breakpoint on a thinking block), so a
request the gateway got wrong fails here."""
import anthropic
import httpx
import openai
import pytest

from test_params import claude, gpt, params_gw, params_mock, reset_params  # noqa: F401  (fixtures)
from test_providers import KEYS, KINDS

HI = [{"role": "user", "content": "hi"}]
FIVE = ["a1", "b2", "c3", "d4", "e5"]
SIX = FIVE + ["f6"]


def last_body(mock, kind):
    return mock.requests(kind)[-1]["body"]


def fn(name):
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


# --- anthropic-beta -------------------------------------------------------------------------------

def test_anthropic_beta_reaches_anthropic_as_the_header_and_bedrock_claude_as_anthropic_beta(params_gw, params_mock):
    """A beta that changes the request reaches an Anthropic member as the header it came in, and a
    Claude model on Bedrock as `additionalModelRequestFields.anthropic_beta` (betas that name the
    client or what is generally available are left out)."""
    beta = {"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"}
    client = claude(params_gw)
    client.messages.create(model="only_anthropic", max_tokens=20, messages=HI, extra_headers=beta)
    assert params_mock.requests("anthropic")[-1]["headers"]["anthropic-beta"] == beta["anthropic-beta"]
    r = client.messages.create(model="only_bedrock", max_tokens=20, messages=HI, extra_headers=beta)
    assert r.content[0].text
    assert last_body(params_mock, "bedrock")["additionalModelRequestFields"]["anthropic_beta"] == ["context-1m-2025-08-07"]


def test_anthropic_beta_is_refused_by_other_kinds_unless_dropped_and_the_answer_says_so(params_gw, params_mock):
    """Toward an OpenAI member a meaningful beta is a 400 (Anthropic's shape, the message naming
    `anthropic-beta`), nothing sent; with `x-switchboard-drop-params: anthropic-beta` the member
    serves and the answer names it in `x-switchboard-dropped-params`. A Bedrock model that is not
    Claude refuses it too."""
    client = claude(params_gw)
    beta = {"anthropic-beta": "context-1m-2025-08-07"}
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="only_openai", max_tokens=20, messages=HI, extra_headers=beta)
    assert e.value.body["error"]["message"].startswith("`anthropic-beta`"), e.value.body
    assert params_mock.count("openai") == 0
    raw = client.messages.with_raw_response.create(
        model="only_openai", max_tokens=20, messages=HI,
        extra_headers={**beta, "x-switchboard-drop-params": "anthropic-beta"})
    assert raw.headers["x-switchboard-dropped-params"] == "anthropic-beta"
    assert raw.parse().content[0].text
    assert "anthropic-beta" not in last_body(params_mock, "openai")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="bedrock_nova", max_tokens=20, messages=HI, extra_headers=beta)
    assert "anthropic-beta" in e.value.body["error"]["message"]


def test_harmless_betas_reach_any_member_and_a_mixed_pool_routes_a_meaningful_one(params_gw, params_mock):
    """Claude Code's own betas (the client's name, interleaved thinking, caching) ask nothing of a
    member: an OpenAI member serves them, nothing added to its body. A meaningful beta in a pool
    whose heavy member is OpenAI goes to the member that takes it (Bedrock Claude)."""
    client = claude(params_gw)
    harmless = "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,prompt-caching-2024-07-31"
    raw = client.messages.with_raw_response.create(model="only_openai", max_tokens=20, messages=HI,
                                                   extra_headers={"anthropic-beta": harmless})
    assert "x-switchboard-dropped-params" not in raw.headers
    assert "anthropic-beta" not in last_body(params_mock, "openai")
    for _ in range(4):
        raw = client.messages.with_raw_response.create(
            model="openai_first", max_tokens=20, messages=HI, extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
        assert raw.headers["x-switchboard-member"] == "bedrock/" + KINDS["bedrock"][1]
    assert params_mock.count("openai") == 1 and params_mock.count("gemini") == 0


# --- stop beyond a kind's limit ---------------------------------------------------------------------

def test_the_providers_refuse_too_many_stop_sequences(params_mock):
    """The mock refuses what OpenAI and Gemini refuse: 5 stop sequences on OpenAI, 6 on Gemini."""
    openai_url = params_mock.url("openai") + "/v1/chat/completions"
    r = httpx.post(openai_url, headers={"authorization": f"Bearer {KEYS['OPENAI_KEY']}"},
                   json={"model": "gpt-4o", "messages": HI, "stop": FIVE})
    assert r.status_code == 400 and "maximum length 4" in r.text
    gemini_url = params_mock.url("gemini") + "/v1beta/models/gemini-1.5-flash:generateContent"
    r = httpx.post(gemini_url, headers={"x-goog-api-key": KEYS["GEMINI_KEY"]},
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"stopSequences": SIX}})
    assert r.status_code == 400


def test_stop_beyond_a_kinds_limit_is_a_400_naming_stop_or_goes_to_members_that_take_it(params_gw, params_mock):
    """Five stop sequences: an OpenAI member is unfit (400 `unsupported_parameter`, param `stop`,
    nothing sent), Gemini and Bedrock take them as they are; six: Gemini is unfit too. In a pool
    whose heavy member is OpenAI, the request goes to those that take it."""
    client = gpt(params_gw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="only_openai", messages=HI, stop=FIVE)
    assert (e.value.body["code"], e.value.body["param"]) == ("unsupported_parameter", "stop")
    assert params_mock.count("openai") == 0
    client.chat.completions.create(model="only_gemini", messages=HI, stop=FIVE)
    assert last_body(params_mock, "gemini")["generationConfig"]["stopSequences"] == FIVE
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="only_gemini", messages=HI, stop=SIX)
    assert e.value.body["param"] == "stop"
    client.chat.completions.create(model="only_bedrock", messages=HI, stop=SIX)
    assert last_body(params_mock, "bedrock")["inferenceConfig"]["stopSequences"] == SIX
    for stop, allowed in ((FIVE, ("gemini", "bedrock")), (SIX, ("bedrock",))):
        raw = client.chat.completions.with_raw_response.create(model="openai_first", messages=HI, stop=stop)
        assert raw.headers["x-switchboard-member"].split("/")[0] in allowed
    assert params_mock.count("openai") == 0


def test_stop_beyond_the_limit_is_dropped_whole_only_when_asked_and_said(params_gw, params_mock):
    """With `x-switchboard-drop-params: stop`, an OpenAI member gets no `stop` (never a truncated
    list) and the answer says so; on the Messages door `stop_sequences` follows the same rule."""
    raw = gpt(params_gw).chat.completions.with_raw_response.create(
        model="only_openai", messages=HI, stop=FIVE, extra_headers={"x-switchboard-drop-params": "stop"})
    assert raw.headers["x-switchboard-dropped-params"] == "stop"
    assert "stop" not in last_body(params_mock, "openai")
    gpt(params_gw).chat.completions.create(model="only_openai", messages=HI, stop=FIVE[:4])
    assert last_body(params_mock, "openai")["stop"] == FIVE[:4]
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(params_gw).messages.create(model="only_openai", max_tokens=20, messages=HI, stop_sequences=FIVE)
    assert e.value.body["error"]["message"].startswith("`stop`")


# --- tool_choice ---------------------------------------------------------------------------------------

def test_allowed_tools_declare_only_the_allowed_tools_to_translated_kinds(params_gw, params_mock):
    """Chat's `allowed_tools` (and the Responses door's): an Anthropic member is declared only the
    allowed tools, `required` as `any`; Gemini gets them with mode AUTO; an OpenAI member the
    choice as it is."""
    client = gpt(params_gw)
    tools = [fn("a"), fn("b"), fn("c")]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "b"}}, {"type": "function", "function": {"name": "c"}}]}}
    client.chat.completions.create(model="only_anthropic", messages=HI, tools=tools, tool_choice=choice)
    sent = last_body(params_mock, "anthropic")
    assert [t["name"] for t in sent["tools"]] == ["b", "c"] and sent["tool_choice"] == {"type": "any"}
    auto = {"type": "allowed_tools", "allowed_tools": {**choice["allowed_tools"], "mode": "auto"}}
    client.chat.completions.create(model="only_gemini", messages=HI, tools=tools, tool_choice=auto)
    sent = last_body(params_mock, "gemini")
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["b", "c"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    client.chat.completions.create(model="only_openai", messages=HI, tools=tools, tool_choice=choice)
    assert last_body(params_mock, "openai")["tool_choice"] == choice
    rtools = [{"type": "function", "name": n, "parameters": {"type": "object", "properties": {}}} for n in "abc"]
    client.responses.create(model="only_anthropic", input="hi", tools=rtools, tool_choice={
        "type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "a"}]})
    sent = last_body(params_mock, "anthropic")
    assert [t["name"] for t in sent["tools"]] == ["a"] and sent["tool_choice"] == {"type": "auto"}


def test_a_tool_choice_a_kind_cannot_express_is_a_400_naming_tool_choice(params_gw, params_mock):
    """A custom tool's choice has no Anthropic form: 400 naming `tool_choice`, nothing sent; a
    choice naming a function the request does not declare likewise."""
    client = gpt(params_gw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="only_anthropic", messages=HI, tools=[fn("a")],
                                       tool_choice={"type": "custom", "custom": {"name": "a"}})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="only_gemini", messages=HI, tools=[fn("a")],
                                       tool_choice={"type": "function", "function": {"name": "z"}})
    assert e.value.body["param"] == "tool_choice"
    assert params_mock.count("anthropic") == 0 and params_mock.count("gemini") == 0


def test_messages_tool_choice_reaches_each_kind_in_its_own_terms(params_gw, params_mock):
    """Messages `{"type":"tool","name"}` with `disable_parallel_tool_use`: Gemini's ANY limited to the
    function, Bedrock's `toolChoice.tool`, OpenAI's function choice with `parallel_tool_calls:
    false`; `{"type":"none"}`: Gemini's NONE, and Bedrock (which has no "none") is not declared
    the tools, so it cannot call one."""
    client = claude(params_gw)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    forced = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    client.messages.create(model="only_gemini", max_tokens=20, messages=HI, tools=tools,
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert last_body(params_mock, "gemini")["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    client.messages.create(model="only_bedrock", max_tokens=20, messages=HI, tools=tools,
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert last_body(params_mock, "bedrock")["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    r = client.messages.create(model="only_openai", max_tokens=20, messages=HI, tools=tools, tool_choice=forced)
    sent = last_body(params_mock, "openai")
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False and r.stop_reason in ("tool_use", "end_turn")
    client.messages.create(model="only_gemini", max_tokens=20, messages=HI, tools=tools, tool_choice={"type": "none"})
    assert last_body(params_mock, "gemini")["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    r = client.messages.create(model="only_bedrock", max_tokens=20, tools=tools, tool_choice={"type": "none"},
                               messages=[{"role": "user", "content": "weather in Paris?"}])
    assert "toolConfig" not in last_body(params_mock, "bedrock")
    assert r.stop_reason == "end_turn"


def test_responses_tool_choice_and_parallel_tool_calls_reach_each_kind(params_gw, params_mock):
    """Responses `required` is Gemini's ANY and Anthropic's `any`; `parallel_tool_calls: false` is
    Anthropic's `disable_parallel_tool_use`, and a kind that cannot honour it refuses (400 naming it)."""
    client = gpt(params_gw)
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]
    client.responses.create(model="only_gemini", input="hi", tools=tools, tool_choice="required")
    assert last_body(params_mock, "gemini")["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    client.responses.create(model="only_anthropic", input="hi", tools=tools, tool_choice="required",
                            parallel_tool_calls=False)
    assert last_body(params_mock, "anthropic")["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="only_bedrock", input="hi", tools=tools, parallel_tool_calls=False)
    assert e.value.body["param"] == "parallel_tool_calls"


# --- cache marks and thinking blocks ------------------------------------------------------------------

def test_responses_cache_marks_are_taken_out_for_openai_which_refuses_them(params_gw, params_mock):
    """OpenAI caches prefixes by itself and refuses `cache_control` (the mock as OpenAI does): a
    Responses request with marks, served natively by an OpenAI member, arrives without them, the
    content as it was."""
    mark = {"type": "ephemeral"}
    url = params_mock.url("openai") + "/v1/responses"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "rules", "cache_control": mark}]},
             {"role": "user", "content": "go"}]
    r = httpx.post(url, headers={"authorization": f"Bearer {KEYS['OPENAI_KEY']}"},
                   json={"model": "gpt-4o", "input": items})
    assert r.status_code == 400 and "cache_control" in r.text
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "cache_control": mark}]
    out = gpt(params_gw).responses.create(model="only_openai", input=items, tools=tools)
    assert out.output_text
    sent = last_body(params_mock, "openai")
    assert "cache_control" not in str(sent)
    assert sent["input"][0]["content"] == [{"type": "input_text", "text": "rules"}]
    assert sent["tools"][0]["name"] == "f"


def test_a_cache_breakpoint_on_a_thinking_block_is_a_400_naming_its_path(params_gw, params_mock):
    """Anthropic refuses `cache_control` on a thinking block (the mock as Anthropic does): the
    gateway answers that 400 itself, naming the block's path, on the Messages door (Anthropic's
    shape) and the chat door (`param`), and sends nothing."""
    thinking = {"type": "thinking", "thinking": "t", "signature": "s", "cache_control": {"type": "ephemeral"}}
    turns = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": [thinking, {"type": "text", "text": "hello"}]},
             {"role": "user", "content": "go on"}]
    r = httpx.post(params_mock.url("anthropic") + "/v1/messages",
                   headers={"x-api-key": KEYS["ANTHROPIC_KEY"], "anthropic-version": "2023-06-01"},
                   json={"model": "claude-3-5-haiku", "max_tokens": 20, "messages": turns})
    assert r.status_code == 400 and "cache_control" in r.text
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(params_gw).messages.create(model="only_anthropic", max_tokens=20, messages=turns)
    assert e.value.body["error"]["message"].startswith("messages[1].content[0].cache_control")
    chat_turns = [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello", "thinking_blocks": [thinking]},
                  {"role": "user", "content": "go on"}]
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(model="only_anthropic", messages=chat_turns)
    assert e.value.body["param"] == "messages[1].thinking_blocks[0].cache_control"
    assert params_mock.count("anthropic") == 1  # the mock's own refusal above, nothing from the gateway
