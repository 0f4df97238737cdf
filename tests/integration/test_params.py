"""Parameters across doors and provider kinds, through the official SDKs: a
parameter reaches the member in the member's own terms, or the request is
refused with a 400 naming it (in the door's error shape), unless the pool's
`drop_params` or the request's `x-switchboard-drop-params` header lets it be
dropped, which the answer then says in `x-switchboard-dropped-params`. A pool
with members of several kinds routes to the members that take the request."""
import anthropic
import httpx
import openai
import pytest

from harness import Gateway, MockProvider
from test_providers import KEYS, KINDS, KIND_LISTENERS, providers_config


@pytest.fixture(scope="module")
def params_mock():
    m = MockProvider(KIND_LISTENERS)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def params_gw(params_mock):
    member = lambda n: {"provider": n, "model": KINDS[n][1], **({"deployment": "prod-4o"} if n == "azure" else {})}
    config = {
        "providers": providers_config(),
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            **{f"only_{n}": {"max_response_tokens": 256, "members": [member(n)]} for n in KINDS},
            # The Anthropic member wins every pick (priority): only the filter sends a request elsewhere.
            "mixed": {"max_response_tokens": 256, "strategy": "priority", "members": [
                member("anthropic"), {**member("gemini"), "priority": 1}, {**member("openai"), "priority": 2}]},
            "anthropic_drops_seed": {"max_response_tokens": 256, "drop_params": ["seed"], "members": [member("anthropic")]},
            # The OpenAI member wins every pick (priority): only what the request needs sends it elsewhere.
            "openai_first": {"max_response_tokens": 256, "strategy": "priority", "members": [
                member("openai"), {**member("gemini"), "priority": 1}, {**member("bedrock"), "priority": 2}]},
            "bedrock_nova": {"max_response_tokens": 256, "members": [{"provider": "bedrock", "model": "amazon.nova-lite-v1:0"}]},
        },
    }
    g = Gateway(config, dict(params_mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset_params(params_mock):
    params_mock.reset()
    yield


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="client-key", max_retries=0)


def claude(gw):
    return anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0)


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
def test_chat_parameter_a_kind_cannot_take_is_a_400_naming_it(params_gw, params_mock, kind):
    """`seed` on an anthropic or bedrock member: 400 unsupported_parameter, param seed; nothing sent."""
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(model=f"only_{kind}", messages=HI, seed=7)
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "seed"
    assert "x-switchboard-drop-params: seed" in e.value.body["message"]
    assert params_mock.count(kind) == 0


def test_chat_parameter_a_kind_takes_reaches_it_in_its_own_terms(params_gw, params_mock):
    """`seed`, `n` and `top_k` on a gemini member become generationConfig fields."""
    r = gpt(params_gw).chat.completions.create(model="only_gemini", messages=HI, seed=7, n=2, extra_body={"top_k": 3})
    config = params_mock.requests("gemini")[-1]["body"]["generationConfig"]
    assert (config["seed"], config["candidateCount"], config["topK"]) == (7, 2, 3)
    assert len(r.choices) >= 1


def test_mixed_pool_routes_to_members_that_take_the_parameters(params_gw, params_mock):
    """The heavy anthropic member cannot take `seed`: gemini or openai serves it, by weight among
    them (then only openai takes `logprobs`)."""
    for _ in range(5):
        raw = gpt(params_gw).chat.completions.with_raw_response.create(model="mixed", messages=HI, seed=7)
        member = raw.headers["x-switchboard-member"]
        assert member in ("gemini/" + KINDS["gemini"][1], "openai/gpt-4o"), member
        assert "x-switchboard-dropped-params" not in raw.headers
        kind = member.split("/")[0]
        body = params_mock.requests(kind)[-1]["body"]
        assert (body["generationConfig"]["seed"] if kind == "gemini" else body["seed"]) == 7
    raw = gpt(params_gw).chat.completions.with_raw_response.create(model="mixed", messages=HI, logprobs=True)
    assert raw.headers["x-switchboard-member"] == "openai/gpt-4o"
    assert params_mock.requests("openai")[-1]["body"]["logprobs"] is True
    assert params_mock.count("anthropic") == 0


def test_the_header_drops_a_parameter_and_the_answer_says_so(params_gw, params_mock):
    """`x-switchboard-drop-params: seed` lets the anthropic member serve without it, named in the answer."""
    raw = gpt(params_gw).chat.completions.with_raw_response.create(
        model="only_anthropic", messages=HI, seed=7, extra_headers={"x-switchboard-drop-params": "seed, top_k"})
    assert raw.headers["x-switchboard-dropped-params"] == "seed"
    assert "seed" not in params_mock.requests("anthropic")[-1]["body"]
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(
            model="only_anthropic", messages=HI, extra_headers={"x-switchboard-drop-params": "sead"})
    assert e.value.body["code"] == "invalid_value" and "sead" in e.value.body["message"]


def test_a_pools_drop_params_drops_only_what_it_lists(params_gw, params_mock):
    """A pool with `drop_params: [seed]` drops seed (and says so) but still refuses `n: 2`."""
    raw = gpt(params_gw).chat.completions.with_raw_response.create(model="anthropic_drops_seed", messages=HI, seed=7)
    assert raw.headers["x-switchboard-dropped-params"] == "seed"
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(model="anthropic_drops_seed", messages=HI, n=2)
    assert e.value.body["param"] == "n"


def test_unknown_parameters_pass_to_openai_wire_kinds_and_are_refused_by_translated_ones(params_gw, params_mock):
    """A parameter the gateway does not know reaches an OpenAI member as it is; an anthropic member refuses it."""
    gpt(params_gw).chat.completions.create(model="only_openai", messages=HI, extra_body={"frobnicate": 1})
    assert params_mock.requests("openai")[-1]["body"]["frobnicate"] == 1
    with pytest.raises(openai.BadRequestError) as e:
        gpt(params_gw).chat.completions.create(model="only_anthropic", messages=HI, extra_body={"frobnicate": 1})
    assert e.value.body["param"] == "frobnicate"


def test_defaults_ask_nothing(params_gw, params_mock):
    """`n: 1`, `logprobs: false` and `store: false` are defaults: an anthropic member serves them."""
    r = gpt(params_gw).chat.completions.create(model="only_anthropic", messages=HI, n=1, logprobs=False, store=False)
    assert r.choices[0].message.content


def test_messages_door_parameters_follow_the_same_rule(params_gw, params_mock):
    """On the Messages door, `top_k` reaches gemini as topK, is refused by an OpenAI member
    (Anthropic's error shape, the message naming it), and a parameter only Anthropic takes
    (`context_management`) keeps the request on Anthropic members."""
    client = claude(params_gw)
    client.messages.create(model="only_gemini", max_tokens=50, messages=HI, extra_body={"top_k": 4})
    assert params_mock.requests("gemini")[-1]["body"]["generationConfig"]["topK"] == 4
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="only_openai", max_tokens=50, messages=HI, extra_body={"top_k": 4})
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith("`top_k`")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="only_openai", max_tokens=50, messages=HI,
                               extra_body={"context_management": {"edits": []}})
    assert "context_management" in e.value.body["error"]["message"]
    client.messages.create(model="only_anthropic", max_tokens=50, messages=HI,
                           extra_body={"context_management": {"edits": []}})
    assert params_mock.requests("anthropic")[-1]["body"]["context_management"] == {"edits": []}


def test_responses_door_parameters_follow_the_same_rule(params_gw, params_mock):
    """On the Responses door, `top_logprobs` cannot reach a gemini member: 400 naming it,
    OpenAI's shape; with the header it is dropped and the answer says so."""
    client = gpt(params_gw)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="only_gemini", input="hi", top_logprobs=2)
    assert (e.value.body["code"], e.value.body["param"]) == ("unsupported_parameter", "top_logprobs")
    raw = client.responses.with_raw_response.create(
        model="only_gemini", input="hi", top_logprobs=2, extra_headers={"x-switchboard-drop-params": "top_logprobs"})
    assert raw.headers["x-switchboard-dropped-params"] == "top_logprobs"
    assert raw.parse().output_text
