"""Responses API follow-ups through the official openai SDK: a response created
through the gateway on a natively serving member (openai, azure) is found again
there: `responses.retrieve`, `cancel`, `input_items.list`, `delete` and a later
request's `previous_response_id` go to the provider that created it (the gateway
remembers the id with the provider, per instance, in shared data), whatever the
pool's weights say. Anything else is refused clearly."""
import httpx
import openai
import pytest

from harness import Gateway, MockProvider

KEYS = {"OA_KEY": "sk-oa-secret", "AZ_KEY": "az-secret", "AN_KEY": "sk-an-secret"}


@pytest.fixture(scope="module")
def mock():
    m = MockProvider({
        "oa1": f"kind=openai,key={KEYS['OA_KEY']}",
        "oa2": f"kind=openai,key={KEYS['OA_KEY']}",
        "az": f"kind=azure,key={KEYS['AZ_KEY']}",
        "an": f"kind=anthropic,key={KEYS['AN_KEY']}",
    })
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(mock):
    openai_provider = lambda n: {"kind": "openai", "cluster": n, "host": f"{n}.example", "api_key_env": "OA_KEY"}
    config = {
        "providers": {
            "oa1": openai_provider("oa1"), "oa2": openai_provider("oa2"),
            "az": {"kind": "azure", "cluster": "az", "host": "az.example", "api_key_env": "AZ_KEY"},
            "an": {"kind": "anthropic", "cluster": "an", "host": "an.example", "api_key_env": "AN_KEY"},
        },
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            "two": {"members": [{"provider": "oa1", "model": "gpt-4o"}, {"provider": "oa2", "model": "gpt-4o"}]},
            "azure": {"members": [{"provider": "az", "model": "gpt-4o", "deployment": "prod-4o"}]},
            "claude": {"max_response_tokens": 256, "members": [{"provider": "an", "model": "claude-3-5-haiku"}]},
        },
    }
    g = Gateway(config, dict(mock.addrs), KEYS)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def reset(mock):
    mock.reset()
    yield


def gpt(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)


def create(gw, model, **kw):
    """(the response, the mock listener that served it)."""
    kw.setdefault("store", True)
    raw = gpt(gw).responses.with_raw_response.create(model=model, input="hello", **kw)
    return raw.parse(), raw.headers["x-switchboard-member"].split("/")[0]


def followups(mock, name):
    return [(r["method"], r["path"]) for r in mock.requests(name) if "/responses/" in r["path"]]


def test_follow_ups_go_to_the_openai_member_that_created_the_response(gw, mock):
    for _ in range(4):  # both members of the pool serve some: each response goes back to its own
        response, member = create(gw, "two")
        other = "oa2" if member == "oa1" else "oa1"
        mock.reset()
        client = gpt(gw)
        got = client.responses.retrieve(response.id)
        assert (got.id, got.status) == (response.id, "completed")
        assert client.responses.cancel(response.id).status == "cancelled"
        page = client.responses.input_items.list(response.id, limit=5, order="asc")
        assert page.data == []
        client.responses.delete(response.id)
        assert followups(mock, member) == [
            ("GET", f"/v1/responses/{response.id}"),
            ("POST", f"/v1/responses/{response.id}/cancel"),
            ("GET", f"/v1/responses/{response.id}/input_items?limit=5&order=asc"),
            ("DELETE", f"/v1/responses/{response.id}"),
        ]
        assert followups(mock, other) == []
        sent = [r for r in mock.requests(member)]
        assert all(r["headers"]["authorization"] == f"Bearer {KEYS['OA_KEY']}" for r in sent), "the provider's key"


def test_a_streamed_response_and_an_azure_one_are_found_again(gw, mock):
    events = list(gpt(gw).responses.create(model="two", input="hello", stream=True))
    rid = events[0].response.id
    assert gpt(gw).responses.retrieve(rid).id == rid
    assert sum(len(followups(mock, n)) for n in ("oa1", "oa2")) == 1
    response, member = create(gw, "azure")
    assert member == "az"
    assert gpt(gw).responses.retrieve(response.id).id == response.id
    [request] = [r for r in mock.requests("az") if r["method"] == "GET"]
    assert request["path"] == f"/openai/v1/responses/{response.id}"
    assert request["headers"]["api-key"] == KEYS["AZ_KEY"]


def test_previous_response_id_goes_to_the_member_that_holds_the_conversation(gw, mock):
    response, member = create(gw, "two")
    other = "oa2" if member == "oa1" else "oa1"
    mock.reset()
    for _ in range(6):
        follow, served = create(gw, "two", previous_response_id=response.id)
        assert served == member
    assert mock.count(other) == 0 and mock.count(member) == 6
    assert all(r["body"]["previous_response_id"] == response.id for r in mock.requests(member))


def test_unknown_ids_paths_and_methods_are_refused_clearly(gw, mock):
    with pytest.raises(openai.NotFoundError) as raised:
        gpt(gw).responses.retrieve("resp_never_seen")
    assert "No response `resp_never_seen` is known to this gateway" in raised.value.message
    # A response the gateway translated (an Anthropic member) is stored nowhere.
    response, member = create(gw, "claude", store=False)
    assert member == "an"
    with pytest.raises(openai.NotFoundError):
        gpt(gw).responses.retrieve(response.id)
    r = httpx.put(gw.base + f"/v1/responses/{response.id}", timeout=5)
    assert r.status_code == 405 and "use GET or DELETE" in r.json()["error"]["message"]
    r = httpx.get(gw.base + "/v1/unknown", timeout=5)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "/v1/responses" in message and "/v1/messages" in message
    assert sum(mock.count(n) for n in ("oa1", "oa2", "az")) == 0


def test_a_tenant_finds_only_its_own_responses(mock):
    import hashlib
    keys = {"a": "sk-tenant-a", "b": "sk-tenant-b"}
    config = {
        "providers": {"oa1": {"kind": "openai", "cluster": "oa1", "host": "oa1.example", "api_key_env": "OA_KEY"}},
        "pools": {"one": {"members": [{"provider": "oa1", "model": "gpt-4o"}]}},
        "tenants": {n: {"keys_sha256": [hashlib.sha256(k.encode()).hexdigest()]} for n, k in keys.items()},
    }
    g = Gateway(config, dict(mock.addrs), KEYS)
    try:
        client = lambda t: openai.OpenAI(base_url=g.base + "/v1", api_key=keys[t], max_retries=0)
        response = client("a").responses.create(model="one", input="hello", store=True)
        assert client("a").responses.retrieve(response.id).id == response.id
        with pytest.raises(openai.NotFoundError):
            client("b").responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError) as raised:
            client("b").responses.create(model="one", input="more", previous_response_id=response.id)
        assert raised.value.body["param"] == "previous_response_id"
        assert client("a").responses.create(model="one", input="more", previous_response_id=response.id).id
        assert [r["method"] for r in mock.requests("oa1")] == ["POST", "GET", "POST"]
    finally:
        g.stop()
