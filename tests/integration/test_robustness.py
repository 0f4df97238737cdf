"""Chaos under load and a bad-input matrix, through a real Envoy.

The chaos test sends 10,000 requests (the last 1,000 streamed) at concurrency 32
to a pool whose members fail in every way the mock provider can (5xx, 429 with
Retry-After, hangs, TCP resets) next to one healthy member, and checks that
every request gets exactly one 200 (its own answer), that the wasm VMs never
fail, and that Envoy's memory stays flat. The matrix sends malformed requests of
every kind and checks each gets a clear OpenAI-style 4xx while the gateway keeps
serving on every worker. The last tests check what reaches providers: JSON
content type, and no compression the gateway could not pass on or read.
"""
import gzip
import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, MockProvider, chat, member_stat, pool_stat

POOL = "gpt4o_16k"
CHAT = "/v1/chat/completions"
MEMBER_MODELS = {"alpha": "gpt-4o", "beta": "gpt-4o-2024-08-06", "gamma": "gpt-4o-mini"}
MAX_BODY = 65536  # base_config()'s max_body_bytes


def three_member_config(**overrides):
    cfg = base_config(**overrides)
    cfg["pools"][POOL]["members"] = [
        {"provider": name, "model": model, "weight": 1} for name, model in MEMBER_MODELS.items()
    ]
    return cfg


# ---------------------------------------------------------------- helpers

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wasm_health(gw):
    """Stats that move when a wasm VM fails, traps or is reloaded."""
    stats = gw.stats()
    return {k: v for k, v in stats.items()
            if k.startswith("wasm.") and ("fail" in k or "reload" in k or k.endswith(".created") or k.endswith("vm_count"))}


def assert_no_wasm_failure(gw, before):
    after = wasm_health(gw)
    failing = {k: v for k, v in after.items() if ("fail" in k or "reload" in k) and v}
    assert failing == {}, failing
    # A VM recreated after a trap shows up as another `created`.
    assert after == before, (before, after)
    logs = gw.logs()
    for needle in ("panicked", "Function: proxy_on", "Uncaught", "wasm trap"):
        assert needle not in logs, f"{needle!r} in Envoy log:\n" + "\n".join(
            l for l in logs.splitlines() if needle in l)[:4000]
    assert not [l for l in logs.splitlines() if l.startswith("C ")], "critical lines in Envoy log"
    assert gw.alive()


STREAMS_FROM = 9000  # the last 1,000 requests stream


def is_stream(i):
    return i >= STREAMS_FROM


def chaos_body(i):
    """A compact body whose length encodes the request (`usage.prompt_tokens` = upstream bytes / 4)."""
    content = f"chaos {i} " + "p" * (4 * (i % 61))
    body = {"model": POOL, "messages": [{"role": "user", "content": content}], "user": f"req-{i}"}
    if is_stream(i):
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body, separators=(",", ":")).encode()


def expected_prompt_tokens(body, model):
    # The filter rewrites only `model` (raw bytes of the rest are copied), so the
    # upstream body is the client's with the pool name replaced by the member's model.
    return max(1, (len(body) - len(POOL) + len(model)) // 4)


def answer_of(i, content):
    """(model, id, prompt_tokens, text) of a chat answer, streamed or not."""
    if not is_stream(i):
        a = json.loads(content)
        return a["model"], a["id"], a["usage"]["prompt_tokens"], a["choices"][0]["message"]["content"]
    events = [line[6:] for line in content.decode().split("\n") if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", (i, content[-200:])
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({(c["model"], c["id"]) for c in chunks}) == 1, (i, "chunks of several answers")
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1, (i, content[-300:])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return chunks[0]["model"], chunks[0]["id"], usage[0]["prompt_tokens"], text


def run_load(gw, indices, concurrency=32, timeout=20.0):
    """Each of `concurrency` threads sends its share of `indices` on its own keep-alive client."""
    shares = [indices[k::concurrency] for k in range(concurrency)]

    def worker(share):
        out = []
        with httpx.Client(base_url=gw.base, timeout=timeout) as c:
            for i in share:
                body = chaos_body(i)
                try:
                    r = c.post(CHAT, content=body, headers={"content-type": "application/json"})
                    out.append((i, body, r.status_code, r.content, r.headers.get("x-switchboard-attempts")))
                except httpx.HTTPError as e:
                    out.append((i, body, None, repr(e).encode(), None))
        return out

    with ThreadPoolExecutor(concurrency) as ex:
        return [x for part in ex.map(worker, shares) for x in part]


def check_results(results, indices):
    """Every request answered exactly once, with 200 and its own answer."""
    assert Counter(i for i, *_ in results) == Counter(indices), "a request was lost or answered twice"
    failed = [(i, s, c[:300]) for i, _, s, c, _ in results if s != 200]
    assert failed == [], f"{len(failed)} non-200 answers, first: {failed[:5]}"
    seen_ids = set()
    attempts = Counter()
    for i, body, _, content, n in results:
        model, answer_id, prompt_tokens, text = answer_of(i, content)
        assert model in MEMBER_MODELS.values(), (i, model)
        # The answer is this request's: the mock counts this request's upstream bytes.
        assert prompt_tokens == expected_prompt_tokens(body, model), (i, model, prompt_tokens)
        assert "mock reply" in text, (i, text)
        # Upstream ids are per-listener counters: a duplicate is one answer delivered twice.
        key = (model, answer_id)
        assert key not in seen_ids, f"answer {key} delivered twice"
        seen_ids.add(key)
        attempts[n] += 1
    return attempts


# ---------------------------------------------------------------- chaos

ALPHA_FAULTS = {"mix": [
    {"weight": 6, "status": 500}, {"weight": 3, "status": 502}, {"weight": 6, "status": 503},
    {"weight": 3, "status": 504}, {"weight": 6, "status": 429}, {"weight": 1, "status": 429, "retry_after": "0.2"},
    {"weight": 33},  # a normal answer more often than not, so the member keeps flapping
]}
BETA_FAULTS = {"mix": [{"weight": 1, "hang": True}, {"weight": 2, "reset": True}, {"weight": 5}]}
# Streams get resets and errors but no hangs here: hangs on streams have their
# own test below (test_stream_from_member_that_never_answers_...).
BETA_STREAM_FAULTS = {"mix": [{"weight": 1, "status": 503}, {"weight": 2, "reset": True}, {"weight": 5}]}


def test_chaos_10k_requests_each_answered_200_exactly_once(make_gateway, mock, record_property):
    cfg = three_member_config(
        per_try_timeout_ms=300, timeout_ms=10000,
        # Short cooldowns keep the bad members flapping (ejected, trial, restored) all run long.
        health={"consecutive_failures": 5, "cooldown_ms": 100, "max_cooldown_ms": 400},
    )
    # The bad members get most of the traffic whenever they are in rotation.
    for member in cfg["pools"][POOL]["members"]:
        member["weight"] = 1 if member["provider"] == "gamma" else 3
    gw = make_gateway(cfg, concurrency=2)
    mock.faults("alpha", **ALPHA_FAULTS)
    mock.faults("beta", **BETA_FAULTS)
    wasm_before = wasm_health(gw)
    stats0 = gw.stats()
    t0 = time.monotonic()

    warmup = list(range(1000))
    results = run_load(gw, warmup)
    rss_warm = rss_kb(gw.proc.pid)
    rest = list(range(1000, STREAMS_FROM))
    results += run_load(gw, rest)
    mock.faults("beta", **BETA_STREAM_FAULTS)
    streams = list(range(STREAMS_FROM, 10000))
    results += run_load(gw, streams)
    elapsed = time.monotonic() - t0
    rss_end = rss_kb(gw.proc.pid)

    attempts = check_results(results, warmup + rest + streams)
    stats = gw.stats()

    def delta(name):
        return stats.get(name, 0) - stats0.get(name, 0)

    # A stream failed over by internal redirect is replayed as one more downstream request.
    replays = sum(delta(f"cluster.{c}.upstream_internal_redirect_succeeded_total") for c in ("alpha", "beta", "gamma"))
    assert delta("http.switchboard.downstream_rq_total") == 10000 + replays
    assert delta("http.switchboard.downstream_rq_2xx") == 10000
    assert delta("http.switchboard.downstream_rq_5xx") == 0
    assert_no_wasm_failure(gw, wasm_before)

    # The chaos actually happened: every fault kind hit, failovers on both bad members.
    alpha, beta = mock.client.get(mock.url("alpha") + "/_mock/stats").json(), mock.client.get(mock.url("beta") + "/_mock/stats").json()
    for status in ("500", "502", "503", "504", "429"):
        assert alpha["by_status"].get(status, 0) > 0, alpha
    assert beta["hangs"] > 0 and beta["resets"] > 0, beta
    failovers = delta(pool_stat(POOL, "failovers"))
    assert failovers > 200, failovers
    for member in ("alpha/gpt-4o", "beta/gpt-4o-2024-08-06"):
        assert delta(member_stat(POOL, member, "ejections")) > 0, member
        assert delta(member_stat(POOL, member, "restorations")) > 0, member

    growth_mb = (rss_end - rss_warm) / 1024
    record_property("chaos_seconds", round(elapsed, 1))
    record_property("chaos_rss_growth_mb", round(growth_mb, 1))
    print(f"\nchaos: 10000 requests in {elapsed:.1f}s ({10000 / elapsed:.0f} rps), attempts {dict(attempts)}, "
          f"failovers {failovers}, alpha {alpha['by_status']}, beta hangs {beta['hangs']} resets {beta['resets']}, "
          f"Envoy RSS {rss_warm // 1024} -> {rss_end // 1024} MB")
    assert growth_mb < 30, f"Envoy RSS grew {growth_mb:.1f} MB after warmup ({rss_warm} -> {rss_end} kB)"


def test_stream_from_member_that_never_answers_is_failed_over_within_per_try(make_gateway, mock):
    """Once a stream has started it may run up to the request's deadline, but a
    member that sends no response headers within the per-try timeout is failed
    over: on the routed request and on failover calls alike."""
    cfg = three_member_config(per_try_timeout_ms=300, timeout_ms=10000, health={"consecutive_failures": 1000})
    for member, weight in zip(cfg["pools"][POOL]["members"], (1_000_000, 1000, 1)):
        member["weight"] = weight  # alpha, then beta, then gamma
    gw = make_gateway(cfg)

    def stream():
        t = time.monotonic()
        r = httpx.post(gw.base + CHAT, json=chat(POOL, stream=True), timeout=20)
        assert r.status_code == 200, r.text[:300]
        assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
        return r, time.monotonic() - t

    # A slow but live stream (~1.5 s, longer than the per-try timeout) is not cut.
    mock.faults("alpha", stream_delay_ms=150, stream_chunks=10)
    r, elapsed = stream()
    assert r.headers["x-switchboard-attempts"] == "1" and elapsed > 1.2, (r.headers, elapsed)
    # The routed member hangs: failed over after the per-try timeout, not the deadline.
    mock.faults("alpha", hang=True)
    for _ in range(3):
        r, elapsed = stream()
        assert r.headers["x-switchboard-attempts"] == "2" and elapsed < 1.5, (r.headers, elapsed)
    # The failover call hangs: the same bound.
    mock.faults("alpha", status=503)
    mock.faults("beta", hang=True)
    for _ in range(3):
        r, elapsed = stream()
        assert r.headers["x-switchboard-member"] == "gamma/gpt-4o-mini" and elapsed < 1.5, (r.headers, elapsed)


# ---------------------------------------------------------------- bad inputs

def raw_exchange(port, data, read_timeout=10):
    """Sends raw bytes on a fresh connection, returns (status, headers, body) of the first response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer (and close) before the whole body is sent
        resp = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode())
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        sock.close()


def post_raw(port, body, content_type="application/json", path=CHAT, method="POST", extra=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\n".encode()
    if content_type:
        head += f"content-type: {content_type}\r\n".encode()
    if body is not None:
        head += f"content-length: {len(body)}\r\n".encode()
    return raw_exchange(port, head + extra + b"\r\n" + (body or b""))


def chunked(body, size=8192):
    out = b""
    for k in range(0, len(body), size):
        part = body[k:k + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def valid():
    return json.dumps(chat(POOL)).encode()


def nested(depth):
    return ('{"model":"%s","messages":[{"role":"user","content":"x","meta":%s1%s}]}'
            % (POOL, "[" * depth, "]" * depth)).encode()


HUGE = json.dumps(chat(POOL, "x" * (MAX_BODY + 1000))).encode()

# name -> (raw request bytes builder, expected status, expected error code)
BAD_INPUTS = {
    "empty body": (lambda p: post_raw(p, b""), 400, "invalid_json"),
    "whitespace body": (lambda p: post_raw(p, b" \r\n\t "), 400, "invalid_json"),
    "header-only POST": (lambda p: post_raw(p, None), 400, "invalid_json"),
    "malformed JSON": (lambda p: post_raw(p, b'{"model": "gpt4o_16k", "messages": [}'), 400, "invalid_json"),
    "truncated JSON": (lambda p: post_raw(p, valid()[:len(valid()) // 2]), 400, "invalid_json"),
    "trailing garbage": (lambda p: post_raw(p, valid() + b"}{"), 400, "invalid_json"),
    "JSON array": (lambda p: post_raw(p, b"[1, 2]"), 400, "invalid_json"),
    "JSON null": (lambda p: post_raw(p, b"null"), 400, "invalid_json"),
    "UTF-8 BOM": (lambda p: post_raw(p, b"\xef\xbb\xbf" + valid()), 400, "invalid_json"),
    "non-UTF-8 bytes": (lambda p: post_raw(p, b'{"model":"gpt4o_16k","messages":[{"role":"user","content":"\xff\xfe\xc0"}]}'), 400, "invalid_json"),
    # gzip is taken off by Envoy's decompressor (test_clients.py); other encodings are refused.
    "brotli-encoded body": (lambda p: post_raw(p, valid(), extra=b"content-encoding: br\r\n"), 415, "unsupported_content_encoding"),
    "model is a number": (lambda p: post_raw(p, b'{"model": 5, "messages": []}'), 400, "invalid_type"),
    "messages is an object": (lambda p: post_raw(p, b'{"model": "gpt4o_16k", "messages": {}}'), 400, "invalid_type"),
    "messages is null": (lambda p: post_raw(p, b'{"model": "gpt4o_16k", "messages": null}'), 400, "invalid_type"),
    "stream is a string": (lambda p: post_raw(p, json.dumps(chat(POOL, stream="yes")).encode()), 400, "invalid_type"),
    "fallback of numbers": (lambda p: post_raw(p, json.dumps(chat(POOL, fallback=[1])).encode()), 400, "invalid_type"),
    "missing model": (lambda p: post_raw(p, b'{"messages": [{"role": "user", "content": "hi"}]}'), 400, "missing_model"),
    "missing messages": (lambda p: post_raw(p, b'{"model": "gpt4o_16k"}'), 400, "missing_required_parameter"),
    "unknown model": (lambda p: post_raw(p, json.dumps(chat("no-such-model")).encode()), 404, "model_not_found"),
    "100-level nesting": (lambda p: post_raw(p, nested(100)), 400, "invalid_json"),
    "10000-level nesting": (lambda p: post_raw(p, nested(10000)), 400, "invalid_json"),
    "huge body, content-length": (lambda p: post_raw(p, HUGE), 413, "request_too_large"),
    "huge body, chunked": (lambda p: raw_exchange(p, (
        f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\n\r\n").encode() + chunked(HUGE)), 413, "request_too_large"),
    "huge content-length, no body sent": (lambda p: raw_exchange(p, (
        f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
        "content-length: 1000000000\r\n\r\n").encode()), 413, "request_too_large"),
    "unknown path": (lambda p: post_raw(p, valid(), path="/v1/chat/completion"), 404, "not_found"),
    "unknown path, GET": (lambda p: post_raw(p, None, path="/", method="GET", content_type=None), 404, "not_found"),
    "wrong method GET": (lambda p: post_raw(p, None, method="GET", content_type=None), 405, "method_not_allowed"),
    "wrong method PUT": (lambda p: post_raw(p, valid(), method="PUT"), 405, "method_not_allowed"),
    "wrong method DELETE models": (lambda p: post_raw(p, None, path="/v1/models", method="DELETE", content_type=None), 405, "method_not_allowed"),
    "embeddings without input": (lambda p: post_raw(p, b'{"model": "gpt4o_16k"}', path="/v1/embeddings"), 400, "missing_required_parameter"),
}


# Bodies a provider would refuse with no `code` of its own: the gateway refuses them first,
# naming the code and the field (name -> (body, code, param)).
BAD_FIELDS = {
    "messages of numbers": (b'{"model": "gpt4o_16k", "messages": [1, 2]}', "invalid_type", "messages"),
    "tools is an object": (b'{"model": "gpt4o_16k", "messages": [{"role": "user", "content": "hi"}], "tools": {}}',
                           "invalid_type", "tools"),
    "lone surrogate": (b'{"model": "gpt4o_16k", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json", None),
    "max_tokens 1e400": (b'{"model": "gpt4o_16k", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
                         "invalid_type", "max_tokens"),
    "negative max_completion_tokens": (
        b'{"model": "gpt4o_16k", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -5}',
        "invalid_value", "max_completion_tokens"),
    "unknown model": (json.dumps(chat("no-such-model")).encode(), "model_not_found", "model"),
}


@pytest.mark.parametrize("name", list(BAD_FIELDS))
def test_every_refusal_has_a_code_and_names_the_field(robust_gateway, mock, name):
    body, code, param = BAD_FIELDS[name]
    status, _, raw = post_raw(robust_gateway.port, body)
    assert 400 <= status < 500, (status, raw[:300])
    err = json.loads(raw)["error"]
    assert (err["code"], err["param"]) == (code, param), err
    assert mock.count("alpha") + mock.count("beta") == 0, "refused by the gateway, not by a provider"


@pytest.fixture(scope="module")
def robust_gateway(mock):
    g = Gateway(base_config(), clusters_for(mock), KEYS, concurrency=2)
    yield g
    g.stop()


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_clear_4xx(robust_gateway, mock, name):
    send, status, code = BAD_INPUTS[name]
    got_status, headers, body = send(robust_gateway.port)
    assert got_status == status, (got_status, body[:500])
    assert headers.get("content-type", "").startswith("application/json"), headers
    err = json.loads(body)["error"]
    assert err["code"] == code, err
    assert err["type"] == "invalid_request_error", err
    assert isinstance(err["message"], str) and len(err["message"]) > 10, err
    assert mock.count("alpha") + mock.count("beta") == 0, "a bad request reached a provider"


def test_json_body_with_other_content_type_is_accepted_and_sent_as_json(robust_gateway, mock):
    """The body decides, not the label: `curl -d` (form content type), text/plain
    and no content type all work. The provider always gets `application/json`."""
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        status, _, body = post_raw(robust_gateway.port, valid(), content_type=ctype)
        assert status == 200, (ctype, body[:300])
        assert json.loads(body)["choices"][0]["message"]["content"]
    sent = mock.requests("alpha") + mock.requests("beta")
    assert len(sent) == 3
    assert all(r["headers"].get("content-type") == "application/json" for r in sent), \
        [r["headers"].get("content-type") for r in sent]


def test_gateway_keeps_serving_on_every_worker_after_bad_inputs(robust_gateway, mock):
    gw = robust_gateway
    wasm_before = wasm_health(gw)
    for name, (send, status, _) in BAD_INPUTS.items():
        assert send(gw.port)[0] == status, name
    # Fresh connections spread over both workers (SO_REUSEPORT); each gets a 200.
    workers = [k for k in gw.stats() if k.startswith("listener.127.0.0.1_") and k.endswith(".downstream_cx_total")
               and ".worker_" in k]
    assert len(workers) == 2, workers
    before = {k: gw.stats()[k] for k in workers}
    for _ in range(40):
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            r = c.post(CHAT, json=chat(POOL))
            assert r.status_code == 200, r.text
    after = gw.stats()
    served = {k: after[k] - before[k] for k in workers}
    assert all(n > 0 for n in served.values()), served
    assert_no_wasm_failure(gw, wasm_before)


# ---------------------------------------------------------------- upstream compression

class GzipProvider:
    """A minimal OpenAI-style provider that compresses its answers when the
    request allows it (as api.openai.com and Google's APIs do)."""

    def __init__(self):
        seen = self.accept_encodings = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                model = json.loads(body).get("model", "?")
                seen.append(", ".join(self.headers.get_all("accept-encoding") or []))
                answer = json.dumps({
                    "id": "chatcmpl-gz", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "gzip reply"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if "gzip" in seen[-1]:
                    answer = gzip.compress(answer)
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_failover_answer_from_compressing_provider_is_readable(make_gateway, mock):
    """Clients (the OpenAI SDKs among them) send `accept-encoding: gzip`. An answer
    relayed by a failover call must reach them decodable: either the upstream is
    asked for identity, or `content-encoding` is kept."""
    gz = GzipProvider()
    try:
        cfg = base_config(health={"consecutive_failures": 1000})
        cfg["pools"][POOL]["members"] = [
            {"provider": "alpha", "model": "gpt-4o", "weight": 1},
            # A standby (weight 0): every request starts on alpha and fails over to it.
            {"provider": "gamma", "model": "gpt-4o-mini", "weight": 0},
        ]
        gw = make_gateway(cfg, clusters_for(mock, gamma=gz.addr))
        mock.faults("alpha", status=503)
        for _ in range(3):
            r = httpx.post(gw.base + CHAT, json=chat(POOL), headers={"accept-encoding": "gzip"}, timeout=10)
            assert r.status_code == 200, r.content[:200]
            assert r.headers["x-switchboard-attempts"] == "2"
            assert r.json()["choices"][0]["message"]["content"] == "gzip reply", r.content[:100]
    finally:
        gz.stop()


@pytest.fixture(scope="module")
def kinds_mock():
    m = MockProvider({"bad": "", "an": "kind=anthropic", "ge": "kind=gemini", "br": "kind=bedrock"})
    yield m
    m.stop()


def test_translated_providers_are_never_offered_compression(make_gateway, kinds_mock):
    """The gateway reads (translates) Anthropic, Gemini and Bedrock answers, so it
    must ask them for identity encoding, whatever the client accepts: on the
    routed request and on failover calls alike."""
    kinds = {"an": "anthropic", "ge": "gemini", "br": "bedrock"}
    providers = {"bad": {"kind": "openai", "cluster": "bad", "host": "bad.example", "api_key_env": "BAD_KEY"},
                 "an": {"kind": "anthropic", "cluster": "an", "host": "an.example", "api_key_env": "AN_KEY"},
                 "ge": {"kind": "gemini", "cluster": "ge", "host": "ge.example", "api_key_env": "GE_KEY"},
                 "br": {"kind": "bedrock", "cluster": "br", "host": "br.example", "region": "us-east-1",
                        "access_key_id_env": "AWS_AK", "secret_access_key_env": "AWS_SK"}}
    pools = {f"via_{p}": {"health": {"consecutive_failures": 1000}, "strategy": "priority", "members": [
        {"provider": "bad", "model": "bad-model"}, {"provider": p, "model": f"m-{p}", "priority": 1}]}
        for p in kinds}
    cfg = {"providers": providers, "pools": pools}
    env = {"BAD_KEY": "k", "AN_KEY": "k", "GE_KEY": "k", "AWS_AK": "AKIDEXAMPLE", "AWS_SK": "secret"}
    gw = make_gateway(cfg, dict(kinds_mock.addrs), env=env)
    kinds_mock.reset()
    kinds_mock.faults("bad", status=503)
    headers = {"accept-encoding": "gzip, deflate, br", "content-type": "text/plain"}
    for p in kinds:
        for model, attempts in ((f"via_{p}", "2"), (f"m-{p}", "1")):  # failover call, then routed request
            r = httpx.post(gw.base + CHAT, content=json.dumps(chat(model)), headers=headers, timeout=10)
            assert r.status_code == 200, (model, r.text[:300])
            assert r.headers["x-switchboard-attempts"] == attempts, model
            assert "mock reply" in r.json()["choices"][0]["message"]["content"]
        sent = kinds_mock.requests(p)
        assert len(sent) == 2
        got = [(s["headers"].get("accept-encoding"), s["headers"].get("content-type")) for s in sent]
        assert got == [("identity", "application/json")] * 2, (kinds[p], "[failover, routed]:", got)


# ------------------------------------------------- slow clients, connection limit

def test_bootstrap_sets_request_timeouts_and_a_connection_limit(robust_gateway):
    """render.py's defaults: a client has 10 s for its headers and 120 s for its whole request
    (not the 15-minute stream idle timeout), and Envoy has a connection limit, so it does not
    warn at start that it has none."""
    import render
    doc = render.bootstrap(base_config(), "x.wasm", 1, 2, {"alpha": "127.0.0.1:1"})
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert (hcm["request_headers_timeout"], hcm["request_timeout"]) == ("10s", "120s")
    (monitor,) = doc["overload_manager"]["resource_monitors"]
    assert monitor["typed_config"]["max_active_downstream_connections"] == 10000
    assert "no configured limit to the number of allowed active downstream connections" not in robust_gateway.logs()


def test_a_client_sending_less_body_than_announced_is_cut_at_the_request_timeout(make_gateway, mock):
    """Content-Length says 1000, 20 bytes come: 408 at the request timeout and the connection
    closed; likewise a client that never finishes its headers. A generation longer than the
    request timeout, streamed or not, still finishes: the timer stops once the request is upstream."""
    g = make_gateway(base_config(health={"consecutive_failures": 1000}), request_timeout_s=2,
                     request_headers_timeout_s=1)
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        started = time.time()
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
                     "content-length: 1000\r\n\r\n{\"model\": \"gpt4o_16".encode())
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        elapsed = time.time() - started
        assert resp.status == 408 and 1.8 < elapsed < 5, (resp.status, elapsed)
        resp.read()
        assert sock.recv(1) == b"", "the connection is closed"
    finally:
        sock.close()
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        started = time.time()
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\n".encode())
        data = sock.recv(4096)
        while data and b"\r\n\r\n" not in data:
            more = sock.recv(4096)
            data, _ = data + more, more
        assert time.time() - started < 4, "headers never finished: closed after the header timeout"
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:100]
    finally:
        sock.close()
    assert mock.count("alpha") + mock.count("beta") == 0
    # Generations that take longer than the request timeout are never cut by it.
    mock.faults("alpha", latency_ms=3500)
    mock.faults("beta", latency_ms=3500)
    started = time.time()
    r = httpx.post(g.base + CHAT, json=chat(POOL), timeout=20)
    assert r.status_code == 200 and time.time() - started > 3.4, (r.status_code, r.text[:200])
    mock.faults("alpha", stream_delay_ms=500, stream_chunks=8)
    mock.faults("beta", stream_delay_ms=500, stream_chunks=8)
    with httpx.stream("POST", g.base + CHAT, json=chat(POOL, stream=True), timeout=20) as r:
        text = "".join(r.iter_text())
    assert r.status_code == 200 and text.rstrip().endswith("data: [DONE]"), text[-200:]


def test_the_connection_limit_refuses_new_connections_and_never_cuts_open_generations(make_gateway, mock):
    """With a limit of 3 connections, 3 clients each waiting on a slow generation all get their
    answer, while a 4th connection is closed at once; once they are done, new clients are served."""
    g = make_gateway(base_config(health={"consecutive_failures": 1000}), max_connections=3)
    mock.faults("alpha", latency_ms=2500)
    mock.faults("beta", latency_ms=2500)
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(httpx.post, g.base + CHAT, json=chat(POOL), timeout=20) for _ in range(3)]
        time.sleep(1.0)
        refused = None
        try:
            with httpx.Client(timeout=5) as c:
                refused = c.get(g.base + "/v1/models")
        except httpx.TransportError as e:
            refused = e
        assert isinstance(refused, httpx.TransportError), f"a 4th connection was served: {refused}"
        assert [f.result().status_code for f in slow] == [200, 200, 200]
    mock.reset()
    time.sleep(0.5)
    assert httpx.post(g.base + CHAT, json=chat(POOL), timeout=10).status_code == 200
    assert "no configured limit" not in g.logs()
