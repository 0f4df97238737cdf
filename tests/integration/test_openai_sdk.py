"""The official openai Python SDK against the gateway."""
import openai

from conftest import KEYS


def client(gateway):
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="client-key", max_retries=0)


def test_sdk_chat_completion(gateway):
    resp = client(gateway).chat.completions.create(
        model="gpt4o_16k", messages=[{"role": "user", "content": "Why is the sky blue?"}], extra_body={"provider": "pool"})
    assert resp.choices[0].message.role == "assistant"
    assert "mock reply" in resp.choices[0].message.content
    assert resp.model in ("gpt-4o", "gpt-4o-2024-08-06")
    assert resp.usage.total_tokens > 0


def test_sdk_streaming(gateway):
    stream = client(gateway).chat.completions.create(
        model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "mock reply" in text


def test_sdk_lists_pools(gateway):
    models = client(gateway).models.list()
    ids = [m.id for m in models.data]
    assert "gpt4o_16k" in ids


def test_sdk_unknown_model_raises_not_found(gateway):
    try:
        client(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert "nope" in str(e)
    else:
        raise AssertionError("expected NotFoundError")


def test_sdk_embeddings(gateway, mock):
    resp = client(gateway).embeddings.create(model="gpt-4o", input=["a", "b"])
    assert len(resp.data) == 2
    assert mock.requests("alpha")[-1]["path"] == "/v1/embeddings"
    assert mock.requests("alpha")[-1]["headers"]["authorization"] == f"Bearer {KEYS['ALPHA_KEY']}"
