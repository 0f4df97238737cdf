"""Issue 5 (parts 5-6): chaos under load and a bad-input matrix, through a real Envoy.

The chaos test sends 10,000 requests at concurrency 32 to a pool whose members
fail in every way the mock provider can (5xx, 429 with Retry-After, hangs, TCP
resets) next to one healthy member, and checks that every request gets exactly
one 200 (the right one), that the wasm VMs never fail, and that Envoy's memory
stays flat. The matrix sends malformed requests of every kind and checks each
gets a clear OpenAI-style 4xx while the gateway keeps serving on every worker.
"""
import http.client
import json
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

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


def chaos_body(i):
    """A compact body whose length encodes the request (`usage.prompt_tokens` = upstream bytes / 4)."""
    content = f"chaos {i} " + "p" * (4 * (i % 61))
    return json.dumps({"model": POOL, "messages": [{"role": "user", "content": content}], "user": f"req-{i}"},
                      separators=(",", ":")).encode()


def expected_prompt_tokens(body, model):
    # The filter rewrites only `model` (raw bytes of the rest are copied), so the
    # upstream body is the client's with the pool name replaced by the member's model.
    return max(1, (len(body) - len(POOL) + len(model)) // 4)


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
        answer = json.loads(content)
        model = answer["model"]
        assert model in MEMBER_MODELS.values(), answer
        # The answer is this request's: the mock counts this request's upstream bytes.
        assert answer["usage"]["prompt_tokens"] == expected_prompt_tokens(body, model), (i, answer)
        assert "mock reply" in answer["choices"][0]["message"]["content"]
        # Upstream ids are per-listener counters: a duplicate is one answer delivered twice.
        key = (model, answer["id"])
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
    rest = list(range(1000, 10000))
    results += run_load(gw, rest)
    elapsed = time.monotonic() - t0
    rss_end = rss_kb(gw.proc.pid)

    attempts = check_results(results, warmup + rest)
    stats = gw.stats()

    def delta(name):
        return stats.get(name, 0) - stats0.get(name, 0)

    assert delta("http.switchboard.downstream_rq_total") == 10000
    assert delta("http.switchboard.downstream_rq_2xx") == 10000
    assert delta("http.switchboard.downstream_rq_5xx") == 0
    assert_no_wasm_failure(gw, wasm_before)

    # The chaos actually happened: every fault kind hit, failovers on both bad members.
    alpha, beta = mock.client.get(mock.url("alpha") + "/_mock/stats").json(), mock.client.get(mock.url("beta") + "/_mock/stats").json()
    for status in ("500", "502", "503", "504", "429"):
        assert alpha["by_status"].get(status, 0) > 0, alpha
    assert beta["hangs"] > 0 and beta["resets"] > 0, beta
    failovers = delta(f"wasmcustom.switchboard.pool.{POOL}.failovers")
    assert failovers > 200, failovers
    for member in ("alpha/gpt-4o", "beta/gpt-4o-2024-08-06"):
        assert delta(f"wasmcustom.switchboard.member.{POOL}.{member}.ejections") > 0, member
        assert delta(f"wasmcustom.switchboard.member.{POOL}.{member}.restorations") > 0, member

    growth_mb = (rss_end - rss_warm) / 1024
    record_property("chaos_seconds", round(elapsed, 1))
    record_property("chaos_rss_growth_mb", round(growth_mb, 1))
    print(f"\nchaos: 10000 requests in {elapsed:.1f}s ({10000 / elapsed:.0f} rps), attempts {dict(attempts)}, "
          f"failovers {failovers}, alpha {alpha['by_status']}, beta hangs {beta['hangs']} resets {beta['resets']}, "
          f"Envoy RSS {rss_warm // 1024} -> {rss_end // 1024} MB")
    assert growth_mb < 30, f"Envoy RSS grew {growth_mb:.1f} MB after warmup ({rss_warm} -> {rss_end} kB)"


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
    """Like OpenAI's API, the body decides: `curl -d` (form content type) and text/plain work.
    The provider always gets `content-type: application/json`."""
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
