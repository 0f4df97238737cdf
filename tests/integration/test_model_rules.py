"""What current models take differently from the rest of their provider kind, through the official
SDKs: OpenAI's reasoning models get `max_completion_tokens` for `max_tokens` and refuse sampling,
Claude Opus 4.7 refuses sampling and thinks adaptively only, and Claude's `output_config` (Claude
Code sends it) is translated where it can be and refused or dropped where it cannot. The mock
refuses what those models refuse (OpenAI's "Use 'max_completion_tokens' instead", Anthropic's
"`temperature` is deprecated for this model", a thinking budget on Opus 4.7), so a request the
gateway got wrong fails here."""
import anthropic
import openai
import pytest

from harness import Gateway
from test_params import params_mock, reset_params  # noqa: F401  (fixtures)
from test_providers import KEYS, providers_config

HI = [{"role": "user", "content": "hi"}]
OPUS = {"anthropic": "claude-opus-4-7", "bedrock": "us.anthropic.claude-opus-4-7-v1:0"}


@pytest.fixture(scope="module")
def rules_gw(params_mock):
    config = {
        "providers": providers_config(),
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "o3": {"members": [{"provider": "openai", "model": "o3-mini"}]},
            # The reasoning model wins every pick (priority): only what the request needs sends it elsewhere.
            "o3_first": {"strategy": "priority", "members": [{"provider": "openai", "model": "o3-mini"},
                                                              {"provider": "openai", "model": "gpt-4o", "priority": 1}]},
            **{f"opus_{kind}": {"max_response_tokens": 256, "members": [{"provider": kind, "model": model}]}
               for kind, model in OPUS.items()},
            "gpt4o": {"members": [{"provider": "openai", "model": "gpt-4o"}]},
            # The OpenAI member wins every pick (priority).
            "openai_first": {"max_response_tokens": 256, "strategy": "priority", "members": [
                {"provider": "openai", "model": "gpt-4o"},
                {"provider": "bedrock", "model": "anthropic.claude-3-haiku-20240307-v1:0", "priority": 1}]},
            "nova": {"members": [{"provider": "bedrock", "model": "amazon.nova-lite-v1:0"}]},
            "opus_drops_sampling": {"max_response_tokens": 256, "drop_params": ["temperature", "top_p"],
                                    "members": [{"provider": "anthropic", "model": OPUS["anthropic"]}]},
        },
    }
    g = Gateway(config, dict(params_mock.addrs), KEYS)
    yield g
    g.stop()


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="client-key", max_retries=0)


def claude(gw):
    return anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0)


def last_body(mock, kind):
    return mock.requests(kind)[-1]["body"]


def test_max_tokens_reaches_an_openai_reasoning_model_as_max_completion_tokens(rules_gw, params_mock):
    r = gpt(rules_gw).chat.completions.create(model="o3", messages=HI, max_tokens=50)
    assert r.choices[0].message.content
    body = last_body(params_mock, "openai")
    assert (body.get("max_tokens"), body["max_completion_tokens"]) == (None, 50)


def test_sampling_a_reasoning_model_refuses_goes_to_a_member_that_takes_it(rules_gw):
    client = gpt(rules_gw)
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="o3_first", messages=HI, temperature=0.2)
        assert raw.headers["x-switchboard-member"] == "openai/gpt-4o"
    raw = client.chat.completions.with_raw_response.create(model="o3_first", messages=HI, max_tokens=20)
    assert raw.headers["x-switchboard-member"] == "openai/o3-mini"


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
def test_opus_4_7_sampling_is_a_400_naming_it_unless_dropping_is_allowed(rules_gw, params_mock, kind):
    client = gpt(rules_gw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=f"opus_{kind}", messages=HI, temperature=0.3)
    assert (e.value.body["code"], e.value.body["param"]) == ("unsupported_parameter", "temperature")
    assert params_mock.count(kind) == 0
    raw = client.chat.completions.with_raw_response.create(
        model=f"opus_{kind}", messages=HI, temperature=0.3, top_p=0.9,
        extra_headers={"x-switchboard-drop-params": "temperature,top_p"})
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-switchboard-dropped-params"] == "temperature, top_p"
    sent = str(last_body(params_mock, kind))
    assert "temperature" not in sent and "top_p" not in sent and "topP" not in sent


def test_a_pool_that_drops_sampling_serves_opus_4_7_and_says_so(rules_gw, params_mock):
    raw = gpt(rules_gw).chat.completions.with_raw_response.create(
        model="opus_drops_sampling", messages=HI, temperature=0.7)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-switchboard-dropped-params"] == "temperature"
    assert "temperature" not in last_body(params_mock, "anthropic")


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
def test_reasoning_effort_reaches_opus_4_7_as_adaptive_thinking_with_its_text(rules_gw, params_mock, kind):
    """Opus 4.7 refuses a thinking budget and omits its thinking text unless asked for a summary:
    `reasoning_effort` becomes adaptive thinking at that effort, summarized, and the answer carries it."""
    r = gpt(rules_gw).chat.completions.create(model=f"opus_{kind}", messages=HI, reasoning_effort="high")
    body = last_body(params_mock, kind)
    fields = body["additionalModelRequestFields"] if kind == "bedrock" else body
    assert fields["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert fields["output_config"] == {"effort": "high"}
    if kind == "anthropic":
        assert r.choices[0].message.model_extra.get("reasoning_content"), r


# --- Claude's output_config on the Messages door ---------------------------------------------------

def test_claude_codes_adaptive_thinking_with_an_effort_reaches_a_reasoning_model_as_reasoning_effort(rules_gw, params_mock):
    r = claude(rules_gw).messages.create(model="o3", max_tokens=200, messages=HI, thinking={"type": "adaptive"},
                                         extra_body={"output_config": {"effort": "xhigh"}})
    assert r.content[0].text
    body = last_body(params_mock, "openai")
    assert body["reasoning_effort"] == "high"
    assert "thinking" not in body and "output_config" not in body and "max_tokens" not in body


def test_an_output_format_reaches_any_kind_as_structured_output(rules_gw, params_mock):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    claude(rules_gw).messages.create(model="gpt4o", max_tokens=50, messages=HI,
                                     extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    sent = last_body(params_mock, "openai")["response_format"]
    assert (sent["type"], sent["json_schema"]["schema"]) == ("json_schema", schema)


def test_an_effort_without_thinking_goes_to_claude_or_is_refused_unless_dropped(rules_gw, params_mock):
    """`output_config.effort` alone (the effort of the whole answer) has no counterpart on other kinds:
    a pool routes it to its Claude member, which gets it as is; a pool without one answers a 400 naming
    it; dropping it (the header) lets OpenAI serve and the answer says so."""
    client = claude(rules_gw)
    effort = {"output_config": {"effort": "medium"}}
    raw = client.messages.with_raw_response.create(model="openai_first", max_tokens=50, messages=HI, extra_body=effort)
    assert raw.headers["x-switchboard-member"] == "bedrock/anthropic.claude-3-haiku-20240307-v1:0"
    assert last_body(params_mock, "bedrock")["additionalModelRequestFields"]["output_config"] == {"effort": "medium"}
    for pool in ["gpt4o", "nova"]:
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model=pool, max_tokens=50, messages=HI, extra_body=effort)
        assert e.value.body["error"]["message"].startswith("`output_config`"), e.value.body
    raw = client.messages.with_raw_response.create(model="gpt4o", max_tokens=50, messages=HI, extra_body=effort,
                                                   extra_headers={"x-switchboard-drop-params": "output_config"})
    assert raw.headers["x-switchboard-dropped-params"] == "output_config"
    assert "output_config" not in last_body(params_mock, "openai")
