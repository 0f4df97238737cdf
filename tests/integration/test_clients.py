"""What real clients send and see: header hygiene upstream, request ids in
every answer, compressed bodies, CORS preflight, keep-alive after a bad request."""
import gzip

import httpx
import openai
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat


@pytest.fixture(scope="module")
def gw(mock):
    g = Gateway(base_config(health={"consecutive_failures": 1000}), clusters_for(mock), KEYS)
    yield g
    g.stop()


CLIENT_HEADERS = {
    "cookie": "session=secret",
    "openai-organization": "org-client",
    "openai-project": "proj-client",
    "x-stainless-lang": "python",
    "x-switchboard-cluster": "gamma",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "user-agent": "hygiene-test/1.0",
}


def assert_clean(req):
    headers = req["headers"]
    for name in ("cookie", "openai-organization", "openai-project", "x-stainless-lang", "x-switchboard-cluster"):
        assert name not in headers, (name, headers)
    assert headers["traceparent"] == CLIENT_HEADERS["traceparent"]
    assert headers["user-agent"] == "hygiene-test/1.0"


def test_only_allow_listed_client_headers_reach_the_provider_routed_or_failed_over(gw, mock):
    for _ in range(10):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers=CLIENT_HEADERS, timeout=10)
        assert r.status_code == 200, r.text
    seen = mock.requests("alpha") + mock.requests("beta")
    assert len(seen) == 10 and not mock.requests("gamma"), "a client header never picks a cluster"
    for req in seen:
        assert_clean(req)
    # The same allow-list on failover calls (alpha fails, beta answers through dispatch_http_call).
    mock.reset()
    mock.faults("alpha", status=503)
    failovers = 0
    for _ in range(10):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers=CLIENT_HEADERS, timeout=10)
        assert r.status_code == 200, r.text
        failovers += r.headers["x-switchboard-attempts"] == "2"
    assert failovers >= 1
    for req in mock.requests("beta"):
        assert_clean(req)


def test_sdk_organization_and_project_never_reach_the_provider(gw, mock):
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="client-key", organization="org-x", project="proj-y")
    resp = client.chat.completions.create(model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content
    (req,) = mock.requests("alpha") + mock.requests("beta")
    assert "openai-organization" not in req["headers"] and "openai-project" not in req["headers"]
    assert req["headers"]["authorization"].startswith("Bearer sk-")


def test_every_answer_carries_the_request_id(gw, mock):
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt4o_16k", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"] and raw.headers["x-request-id"] == raw.headers["x-switchboard-request-id"]
    assert raw.parse()._request_id == raw.headers["x-request-id"]
    answers = [
        httpx.post(gw.base + "/v1/chat/completions", json=chat("nope"), timeout=10),  # local 404
        httpx.post(gw.base + "/v1/chat/completions", content=b"{", timeout=10),  # local 400
        httpx.get(gw.base + "/v1/models", timeout=10),
    ]
    mock.faults("alpha", status=503)
    answers += [httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10) for _ in range(4)]
    ids = set()
    for r in answers:
        assert r.headers.get("x-request-id"), (r.status_code, r.headers)
        assert r.headers["x-request-id"] == r.headers["x-switchboard-request-id"]
        ids.add(r.headers["x-request-id"])
    assert len(ids) == len(answers), "one id per request"


def test_gzip_request_body_is_read_and_other_encodings_get_415(gw, mock):
    body = httpx.Request("POST", "/", json=chat("gpt4o_16k")).read()
    r = httpx.post(
        gw.base + "/v1/chat/completions",
        content=gzip.compress(body),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (req,) = mock.requests("alpha") + mock.requests("beta")
    assert req["body"]["messages"] == chat("gpt4o_16k")["messages"]
    r = httpx.post(
        gw.base + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "br"},
        timeout=10,
    )
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_content_encoding"


def test_cors_preflight_is_answered_and_answers_allow_the_origin(gw):
    origin = "https://app.example"
    r = httpx.options(
        gw.base + "/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers={"origin": origin}, timeout=10)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin


def test_keep_alive_connection_survives_a_bad_request(gw):
    with httpx.Client(base_url=gw.base, timeout=10) as c:
        for bad in (b"{", b'{"model": 5, "messages": []}', b'{"model": "nope", "messages": []}'):
            r = c.post("/v1/chat/completions", content=bad, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500
            assert r.headers.get("connection") != "close", (bad, r.headers)
        r = c.post("/v1/chat/completions", json=chat("gpt4o_16k"))
        assert r.status_code == 200


def test_provider_request_id_and_rate_limit_headers_survive_routing_and_failover(gw, mock):
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    assert r.headers["x-upstream-request-id"].startswith("req_mock_")
    assert r.headers["x-request-id"] == r.headers["x-switchboard-request-id"] != r.headers["x-upstream-request-id"]
    assert r.headers["x-ratelimit-remaining-requests"] == "4999"
    mock.faults("alpha", status=503)
    seen_failover = False
    for _ in range(8):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
        assert r.status_code == 200
        if r.headers["x-switchboard-attempts"] == "2":
            seen_failover = True
            assert r.headers["x-upstream-request-id"].startswith("req_mock_")
            assert r.headers["x-ratelimit-remaining-requests"] == "4999"
    assert seen_failover


def test_models_retrieve_and_known_params_in_400s(gw):
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="k", max_retries=0)
    assert client.models.retrieve("gpt4o_16k").id == "gpt4o_16k"
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    for body, param in (({"messages": []}, "model"), ({"model": "gpt4o_16k"}, "messages"),
                        ({"model": 5, "messages": []}, "model"), ({"model": "gpt4o_16k", "messages": [], "stream": "y"}, "stream")):
        r = httpx.post(gw.base + "/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_a_member_id_from_the_answer_headers_is_a_model(gw):
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
    member = r.headers["x-switchboard-member"]
    for _ in range(5):
        again = httpx.post(gw.base + "/v1/chat/completions", json=chat(member), timeout=10)
        assert again.status_code == 200, again.text
        assert again.headers["x-switchboard-member"] == member


def sent_header_names(sdk, make_client, call):
    """The header names an official SDK sends for `call` (recorded by its own HTTP client)."""
    names = set()
    call(make_client(sdk.DefaultHttpxClient(event_hooks={"request": [lambda r: names.update(k.lower() for k in r.headers)]})))
    return names


# What the JavaScript SDKs add in a browser (dangerouslyAllowBrowser) besides what the Python SDKs send.
BROWSER_ONLY = {
    "anthropic": {"anthropic-dangerous-direct-browser-access", "x-api-key", "authorization", "x-stainless-helper-method", "x-stainless-stream-helper",
                  "x-stainless-read-timeout", "idempotency-key"},
    "openai": {"x-stainless-helper-method", "x-stainless-poll-helper", "x-stainless-custom-poll-interval",
               "x-stainless-read-timeout", "idempotency-key"},
}
# Sent by the browser itself, never listed in Access-Control-Request-Headers.
FORBIDDEN_OR_SAFELISTED = {"host", "content-length", "connection", "accept-encoding", "user-agent", "accept"}


def test_cors_preflight_allows_every_header_the_official_sdks_send(gw, mock):
    """A browser preflight listing each SDK's full header list (what the SDK sends for a plain call and
    its streaming helper, plus what its browser build adds) is allowed, on every door; the answer then
    exposes the headers the SDKs read (request ids, retry advice)."""
    import anthropic
    msg = [{"role": "user", "content": "hi"}]

    def claude(http):
        return anthropic.Anthropic(base_url=gw.base, api_key="k", http_client=http, max_retries=0)

    def gpt(http):
        return openai.OpenAI(base_url=gw.base + "/v1", api_key="k", http_client=http, max_retries=0,
                             organization="org-x", project="proj-y")

    def claude_stream(c):
        with c.messages.stream(model="gpt4o_16k", max_tokens=10, messages=msg, extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"}) as s:
            list(s.text_stream)

    def gpt_stream(c):
        with c.chat.completions.stream(model="gpt4o_16k", messages=msg) as s:
            list(s)

    sdk_headers = {
        "anthropic": sent_header_names(anthropic, claude, claude_stream) | sent_header_names(
            anthropic, claude, lambda c: c.messages.create(model="gpt4o_16k", max_tokens=10, messages=msg)),
        "openai": sent_header_names(openai, gpt, gpt_stream) | sent_header_names(
            openai, gpt, lambda c: c.responses.create(model="gpt4o_16k", input="hi")),
    }
    assert {"anthropic-version", "anthropic-beta", "x-stainless-helper-method"} <= sdk_headers["anthropic"], sdk_headers
    assert {"authorization", "openai-organization", "x-stainless-retry-count"} <= sdk_headers["openai"]
    origin = "https://app.example"
    for sdk, path in (("anthropic", "/v1/messages"), ("anthropic", "/v1/messages/count_tokens"),
                      ("openai", "/v1/chat/completions"), ("openai", "/v1/responses")):
        requested = sorted((sdk_headers[sdk] | BROWSER_ONLY[sdk]) - FORBIDDEN_OR_SAFELISTED)
        r = httpx.options(gw.base + path, timeout=10, headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": ",".join(requested)})
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert set(requested) <= allowed, (sdk, set(requested) - allowed)
    mock.faults("alpha", status=503)
    mock.faults("beta", status=503)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers={"origin": origin}, timeout=10)
    assert r.status_code == 503
    exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "request-id", "retry-after", "x-should-retry", "x-switchboard-member"} <= exposed
    assert r.headers["access-control-allow-origin"] == origin, "every member failed: the browser may still read why"


def test_cors_headers_on_the_gateways_own_errors_only_for_allowed_origins(make_gateway, mock):
    """Every member failing is answered after an upstream answer reached the filters (Envoy sends
    it straight to the client, past the CORS filter): it still carries the CORS headers for an
    allowed origin, and none for another."""
    g = make_gateway(base_config(health={"consecutive_failures": 1000}), cors_origins=("https://app.example",))
    mock.faults("alpha", status=503)
    mock.faults("beta", status=503)
    for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
        for body in (chat("gpt4o_16k"), chat("nope")):
            r = httpx.post(g.base + "/v1/chat/completions", json=body, headers={"origin": origin}, timeout=10)
            assert r.status_code in (503, 404), r.text
            assert r.headers.get("access-control-allow-origin") == (origin if allowed else None), (origin, r.headers)
            assert ("x-should-retry" in r.headers.get("access-control-expose-headers", "")) == allowed


def test_models_retrieve_decodes_ids_and_an_ambiguous_name_lists_its_member_ids(make_gateway, mock):
    """`client.models.retrieve("alpha/gpt-4o")` percent-encodes the id; a model name two members serve
    is neither routed nor "unknown": a 404 `ambiguous_model` naming the member ids to use."""
    config = base_config()
    config["pools"]["gpt4o_16k"]["members"][1]["model"] = "gpt-4o"
    g = make_gateway(config)
    client = openai.OpenAI(base_url=g.base + "/v1", api_key="k", max_retries=0)
    listed = {m.id for m in client.models.list()}
    assert {"alpha/gpt-4o", "beta/gpt-4o"} <= listed and "gpt-4o" not in listed
    for member in ("alpha/gpt-4o", "beta/gpt-4o"):
        assert client.models.retrieve(member).id == member
        r = httpx.get(g.base + "/v1/models/" + member.replace("/", "%2F"), timeout=10)
        assert r.status_code == 200 and r.json()["id"] == member, r.text
        served = client.chat.completions.with_raw_response.create(model=member, messages=[{"role": "user", "content": "hi"}])
        assert served.headers["x-switchboard-member"] == member
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "ambiguous_model" and e.value.param == "model"
    assert "alpha/gpt-4o, beta/gpt-4o" in e.value.message and "neither" not in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "ambiguous_model"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found" and e.value.param == "model"
