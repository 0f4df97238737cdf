"""One pool across OpenAI, Azure, Anthropic, Gemini, Bedrock and
OpenAI-compatible servers. The mock checks each provider's auth and request
shape, so a wrong rewrite fails here."""
import json

import httpx
import openai
import pytest

from harness import Gateway, MockProvider, chat, member_stat

KEYS = {
    "OPENAI_KEY": "sk-openai-secret",
    "AZURE_KEY": "azure-secret",
    "ANTHROPIC_KEY": "sk-ant-secret",
    "GEMINI_KEY": "gemini-secret",
    "AWS_AK": "AKIDSWITCHBOARD",
    "AWS_SK": "aws-secret-key/xyz",
}

KINDS = {
    # provider name: (mock kind, model, provider config extras)
    "openai": ("openai", "gpt-4o", {"api_key_env": "OPENAI_KEY"}),
    "compat": ("openai", "llama-3.1-8b", {"kind": "openai_compatible", "base_path": "/serving/v1"}),
    "azure": ("azure", "gpt-4o-azure", {"api_key_env": "AZURE_KEY", "api_version": "2024-10-21"}),
    "anthropic": ("anthropic", "claude-3-5-haiku", {"api_key_env": "ANTHROPIC_KEY"}),
    "gemini": ("gemini", "gemini-1.5-flash", {"api_key_env": "GEMINI_KEY"}),
    "bedrock": ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0",
                {"region": "us-east-1", "access_key_id_env": "AWS_AK", "secret_access_key_env": "AWS_SK"}),
}


# One mock listener per provider kind, checking that kind's credentials.
KIND_LISTENERS = {
    "openai": f"kind=openai,key={KEYS['OPENAI_KEY']}",
    "compat": "kind=openai",
    "azure": f"kind=azure,key={KEYS['AZURE_KEY']}",
    "anthropic": f"kind=anthropic,key={KEYS['ANTHROPIC_KEY']}",
    "gemini": f"kind=gemini,key={KEYS['GEMINI_KEY']}",
    "bedrock": f"kind=bedrock,key={KEYS['AWS_AK']},secret={KEYS['AWS_SK']}",
}


@pytest.fixture(scope="module")
def kinds_mock():
    m = MockProvider(KIND_LISTENERS)
    yield m
    m.stop()


def providers_config():
    providers = {}
    for name, (_, _, extra) in KINDS.items():
        p = {"kind": name if name != "compat" else "openai_compatible", "cluster": name, "host": f"{name}.provider.example"}
        p.update(extra)
        providers[name] = p
    return providers


@pytest.fixture(scope="module")
def kinds_gateway(kinds_mock):
    members = lambda *names: [{"provider": n, "model": KINDS[n][1], **({"deployment": "prod-4o"} if n == "azure" else {})} for n in names]
    config = {
        "providers": providers_config(),
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            **{f"only_{n}": {"max_response_tokens": 512, "members": members(n)} for n in KINDS},
            "mixed": {"description": "Anthropic + OpenAI", "max_response_tokens": 1024, "members": members("anthropic", "openai")},
        },
    }
    g = Gateway(config, dict(kinds_mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset_kinds(kinds_mock):
    kinds_mock.reset()
    yield


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_non_streaming(kinds_gateway, kinds_mock, name):
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", timeout=10,
                   json=chat(f"only_{name}", "Say hi", temperature=0.5, max_tokens=50, stop=["\n\n"]),
                   headers={"authorization": "Bearer client-key"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert f"mock reply from {name}" in msg["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
    [upstream] = kinds_mock.requests(name)
    headers = upstream["headers"]
    assert "client-key" not in json.dumps(headers)
    if name == "azure":
        assert upstream["path"] == "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    if name == "compat":
        assert upstream["path"] == "/serving/v1/chat/completions"
        assert "authorization" not in headers
    if name == "anthropic":
        assert upstream["body"]["max_tokens"] == 50
        assert upstream["body"]["stop_sequences"] == ["\n\n"]
    if name == "bedrock":
        assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEYS['AWS_AK']}/")
        assert KEYS["AWS_SK"] not in json.dumps(headers)


def stream_text(gateway, model, **extra):
    events = []
    with httpx.stream("POST", gateway.base + "/v1/chat/completions", timeout=10,
                      json=chat(model, "Say hi", stream=True, **extra)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    return text, finish, r


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_streaming(kinds_gateway, kinds_mock, name):
    text, finish, _ = stream_text(kinds_gateway, f"only_{name}")
    assert f"mock reply from {name}" in text
    assert finish == ["stop"]


@pytest.mark.parametrize("name", ["anthropic", "gemini", "bedrock", "openai"])
def test_tool_calls_translate(kinds_gateway, name):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", timeout=10,
                   json=chat(f"only_{name}", "What is the weather in Paris?", tools=tools))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}


def test_anthropic_system_and_roles_are_translated(kinds_gateway, kinds_mock):
    body = {"model": "only_anthropic", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
    ]}
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    [upstream] = kinds_mock.requests("anthropic")
    assert upstream["path"] == "/v1/messages"
    assert upstream["headers"]["x-api-key"] == KEYS["ANTHROPIC_KEY"]
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"
    sent = upstream["body"]
    assert "Be brief." in json.dumps(sent["system"])
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["max_tokens"] == 512  # the pool's max_response_tokens


def test_failover_from_anthropic_to_openai_is_openai_shaped(kinds_gateway, kinds_mock):
    kinds_mock.faults("anthropic", status=529)
    kinds_mock.faults("openai", status=503)
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("mixed"), timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_healthy_upstream"
    assert r.json()["error"]["type"] == "server_error"
    kinds_mock.reset()
    kinds_mock.faults("anthropic", status=500)
    for _ in range(6):
        r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("mixed"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-switchboard-member"] == "openai/gpt-4o"
        assert r.json()["object"] == "chat.completion"


def test_failover_from_openai_to_anthropic_translates_dispatched_answer(kinds_gateway, kinds_mock):
    kinds_mock.faults("openai", status=503)
    for _ in range(6):
        r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("mixed"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-switchboard-member"] == "anthropic/claude-3-5-haiku"
        assert "mock reply from anthropic" in r.json()["choices"][0]["message"]["content"]
        text, finish, resp = stream_text(kinds_gateway, "mixed")
        assert "mock reply from anthropic" in text and finish == ["stop"]


def test_provider_errors_become_openai_errors(kinds_gateway, kinds_mock):
    kinds_mock.faults("anthropic", status=400)
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("only_anthropic"), timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] and err["param"] is None
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_request_error")
    kinds_mock.faults("gemini", status=404)
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("only_gemini"), timeout=10)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["message"] and (err["type"], err["code"]) == ("invalid_request_error", "NOT_FOUND")


def test_openai_sdk_against_mixed_pool(kinds_gateway, kinds_mock):
    client = openai.OpenAI(base_url=kinds_gateway.base + "/v1", api_key="client", max_retries=0)
    seen = set()
    for _ in range(12):
        resp = client.chat.completions.create(model="mixed", messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content.startswith("mock reply from")
        seen.add(resp.choices[0].message.content.split()[3])
        stream = client.chat.completions.create(model="mixed", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.startswith("mock reply from")
    assert seen == {"anthropic", "openai"}


def test_unreadable_provider_answer_counts_as_a_failed_attempt(kinds_gateway, kinds_mock):
    kinds_mock.faults("anthropic", status=200, body="<html>proxy error</html>")
    member = lambda name: member_stat("only_anthropic", "anthropic/claude-3-5-haiku", name)
    before = kinds_gateway.stats()
    # Single-member pool: nothing to fail over to, the client gets the attempt list.
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("only_anthropic"), timeout=10)
    assert r.status_code == 503, r.text
    assert "anthropic/claude-3-5-haiku:502" in r.json()["error"]["message"]
    assert "<html>" not in r.text
    # One attempt, counted once: as a failure, never also as a success.
    after = kinds_gateway.stats()
    assert after[member("attempts")] - before[member("attempts")] == 1
    assert after[member("failures")] - before[member("failures")] == 1
    assert after[member("requests")] - before[member("requests")] == 0
    # Mixed pool: the unreadable answer is failed over to the OpenAI member.
    failovers = 0
    for _ in range(10):
        r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("mixed"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-switchboard-member"] == "openai/gpt-4o"
        assert r.json()["object"] == "chat.completion"
        failovers += r.headers["x-switchboard-attempts"] == "2"
    assert failovers >= 1
    kinds_mock.reset()
    r = httpx.post(kinds_gateway.base + "/v1/chat/completions", json=chat("only_anthropic"), timeout=10)
    assert r.status_code == 200


def raw_stream_events(gateway, model, **extra):
    with httpx.stream("POST", gateway.base + "/v1/chat/completions", timeout=10,
                      json=chat(model, "Say hi", stream=True, **extra)) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("name", ["anthropic", "gemini", "bedrock", "openai"])
def test_stream_has_no_usage_unless_asked(kinds_gateway, name):
    chunks = raw_stream_events(kinds_gateway, f"only_{name}")
    assert all("usage" not in c for c in chunks), chunks
    sdk = openai.OpenAI(base_url=kinds_gateway.base + "/v1", api_key="client", max_retries=0)
    stream = sdk.chat.completions.create(model=f"only_{name}", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert all(c.usage is None for c in stream)


@pytest.mark.parametrize("name", ["anthropic", "gemini", "bedrock", "openai"])
def test_stream_usage_is_one_final_chunk_with_include_usage(kinds_gateway, name):
    chunks = raw_stream_events(kinds_gateway, f"only_{name}", stream_options={"include_usage": True})
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"] > 0
    assert all(c.get("usage") is None for c in chunks[:-1])
    if name != "openai":  # translated: every other chunk says `"usage": null`, as OpenAI's do
        assert all("usage" in c for c in chunks[:-1])
    sdk = openai.OpenAI(base_url=kinds_gateway.base + "/v1", api_key="client", max_retries=0)
    stream = list(sdk.chat.completions.create(model=f"only_{name}", messages=[{"role": "user", "content": "hi"}],
                                              stream=True, stream_options={"include_usage": True}))
    assert stream[-1].usage.total_tokens > 0 and stream[-1].choices == []
    assert all(c.usage is None for c in stream[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("mock reply from")
