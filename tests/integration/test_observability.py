"""Usage, call log and GenAI metrics through a real Envoy (2 workers): stream
usage of every provider kind equals what the provider reported (the mock says
it in `x-mock-usage`), the usage chunk the gateway asked OpenAI-wire providers
for reaches only clients that asked for it, one call-log line per request, and
metric values equal the providers' usage sums."""
import hashlib
import json
import os
import re
import time

import httpx
import pytest

from harness import Gateway, MockProvider, chat
from test_providers import KEYS, KIND_LISTENERS, KINDS, providers_config

TENANT_KEYS = {"team-a": "sk-obs-team-a", "team-rpm": "sk-obs-team-rpm", "team-budget": "sk-obs-team-budget"}
OPENAI_WIRE = ("openai", "compat", "azure")
# Prices (USD per million tokens) every member gets: cost in micro-USD = prompt * 1 + completion * 2.
PRICES = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def member(name, **extra):
    m = {"provider": name, "model": KINDS[name][1], **PRICES, **extra}
    if name == "azure":
        m["deployment"] = "prod-4o"
    return m


@pytest.fixture(scope="module")
def obs_mock():
    m = MockProvider(KIND_LISTENERS)
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def reset_obs_mock(obs_mock):
    obs_mock.reset()
    yield


@pytest.fixture(scope="module")
def gw(obs_mock):
    config = {
        "providers": providers_config(),
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {
            **{f"only_{n}": {"max_response_tokens": 512, "members": [member(n)]} for n in KINDS},
            # The openai member is always tried first; azure is its standby.
            "failover": {"members": [member("openai"), member("azure", weight=0)]},
            # openai is routed, compat hedges it after 200 ms.
            "hedged": {"strategy": "priority", "hedge_after_ms": 200,
                       "members": [member("openai", priority=0), member("compat", priority=1)]},
            # Streams broken after their first byte continue on the other member.
            "resuming": {"resume_streams": True, "members": [member("openai"), member("azure")]},
        },
        "tenants": {
            "team-a": {"keys_sha256": [sha(TENANT_KEYS["team-a"])]},
            "team-rpm": {"keys_sha256": [sha(TENANT_KEYS["team-rpm"])], "rpm": 1},
            "team-budget": {"keys_sha256": [sha(TENANT_KEYS["team-budget"])],
                            "budget_usd": {"per": "day", "limit": 0.00001}},
        },
    }
    g = Gateway(config, dict(obs_mock.addrs), KEYS, call_log=True)
    yield g
    g.stop()


def auth(tenant="team-a"):
    return {"authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def request_id(r):
    return r.headers.get("x-switchboard-request-id") or r.headers["x-request-id"]


def mock_usage(r):
    prompt, completion = r.headers["x-mock-usage"].split()
    return int(prompt), int(completion)


def events(text):
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]


def stream(gw, body, tenant="team-a"):
    with httpx.stream("POST", gw.base + "/v1/chat/completions", json=body, headers=auth(tenant), timeout=10) as r:
        r.read()
        return r


def lines_for(gw, ids):
    """The call-log lines of these request ids, each exactly once."""
    wanted = set(ids)
    deadline = time.time() + 5
    while True:
        lines = [line for line in gw.calls(0) if line["request_id"] in wanted]
        if len(lines) >= len(wanted) or time.time() > deadline:
            break
        time.sleep(0.1)
    by_id = {}
    for line in lines:
        assert line["request_id"] not in by_id, f"two call-log lines for {line['request_id']}"
        by_id[line["request_id"]] = line
    assert set(by_id) == wanted, f"missing call-log lines: {wanted - set(by_id)}"
    return by_id


@pytest.mark.parametrize("asked", [False, True], ids=["usage_not_asked", "usage_asked"])
@pytest.mark.parametrize("name", list(KINDS))
def test_stream_usage_of_every_kind_equals_what_the_provider_reported(gw, obs_mock, name, asked):
    body = chat(f"only_{name}", content="count these words please", stream=True)
    if asked:
        body["stream_options"] = {"include_usage": True}
    r = stream(gw, body)
    assert r.status_code == 200, r.text
    reported = mock_usage(r)
    usage_chunks = [e for e in events(r.text) if e.get("choices") == [] and e.get("usage")]
    if asked:
        assert len(usage_chunks) == 1, r.text
        got = usage_chunks[0]["usage"]
        assert (got["prompt_tokens"], got["completion_tokens"]) == reported
    else:
        assert usage_chunks == [], f"usage chunk reached a client that did not ask: {r.text}"
        assert r.text.rstrip().endswith("data: [DONE]")
    if name in OPENAI_WIRE:
        # The provider was asked for usage either way.
        sent = obs_mock.requests(name)[-1]["body"]
        assert sent["stream_options"] == {"include_usage": True}, sent
    line = lines_for(gw, [request_id(r)])[request_id(r)]
    assert (line["prompt_tokens"], line["completion_tokens"]) == reported
    assert line["usage_estimated"] is False
    assert line["stream"] is True and line["status"] == 200
    assert line["cost_micro_usd"] == reported[0] * 1 + reported[1] * 2


def test_usage_chunk_of_a_failed_over_stream_is_dropped_and_counted(gw, obs_mock):
    obs_mock.faults("openai", status=503)
    r = stream(gw, chat("failover", stream=True))
    assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2", r.text
    assert [e for e in events(r.text) if e.get("choices") == []] == []
    line = lines_for(gw, [request_id(r)])[request_id(r)]
    assert [(a["member"], a["status"]) for a in line["attempts"]] == [
        ("openai/gpt-4o", 503), ("azure/gpt-4o-azure", 200)]
    assert line["usage_estimated"] is False and line["completion_tokens"] > 0


def test_stream_without_usage_is_counted_from_what_was_relayed_and_flagged(gw, obs_mock):
    before = settled(gw)
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    obs_mock.faults("compat", status=200, body=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")
    r = stream(gw, chat("only_compat", stream=True, max_tokens=50))
    assert r.status_code == 200 and "hi" in r.text
    line = lines_for(gw, [request_id(r)])[request_id(r)]
    assert line["usage_estimated"] is True
    # The estimate: about 4 bytes a token of the body, and of the output relayed ("hi": 1 token),
    # not the requested 50.
    assert line["completion_tokens"] == 1 and line["prompt_tokens"] > 0
    # Labels read as configured, dots included: the same names as the call log's.
    assert line["member"] == "compat/llama-3.1-8b"
    labels = {"pool": "only_compat", "member": line["member"], "tenant": "team-a"}
    assert delta(gw, before, "switchboard_usage_estimated", labels) == 1


def test_call_log_lines_match_the_requests_one_to_one(gw, obs_mock):
    secret_text = "my confidential prompt text"
    sent = {}
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("only_anthropic", content=secret_text),
                   headers=auth(), timeout=10)
    sent["plain"] = r
    sent["stream"] = stream(gw, chat("only_gemini", content=secret_text, stream=True))
    sent["unauthenticated"] = httpx.post(gw.base + "/v1/chat/completions", json=chat("only_openai"),
                                         headers={"authorization": "Bearer sk-wrong"}, timeout=10)
    # Over 64 KiB: refused at its headers, the body never read.
    sent["unauthenticated_large"] = httpx.post(gw.base + "/v1/chat/completions",
                                               json=chat("only_openai", content="x" * 70_000),
                                               headers={"authorization": "Bearer sk-wrong"}, timeout=10)
    sent["unknown_model"] = httpx.post(gw.base + "/v1/chat/completions", json=chat("no_such_pool"),
                                       headers=auth(), timeout=10)
    obs_mock.faults("openai", status=503)
    sent["failover"] = httpx.post(gw.base + "/v1/chat/completions", json=chat("failover", content=secret_text),
                                  headers=auth(), timeout=10)
    statuses = {k: r.status_code for k, r in sent.items()}
    assert statuses == {"plain": 200, "stream": 200, "unauthenticated": 401, "unauthenticated_large": 401,
                        "unknown_model": 404, "failover": 200}
    lines = lines_for(gw, [request_id(r) for r in sent.values()])
    got = {k: lines[request_id(r)] for k, r in sent.items()}

    plain = got["plain"]
    assert plain["tenant"] == "team-a" and plain["model"] == "only_anthropic" and plain["pool"] == "only_anthropic"
    assert plain["member"] == "anthropic/claude-3-5-haiku" and plain["stream"] is False and plain["status"] == 200
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == mock_usage(sent["plain"])
    assert [a["status"] for a in plain["attempts"]] == [200]
    assert 0 <= plain["first_byte_ms"] <= plain["duration_ms"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", plain["time"])
    assert got["stream"]["stream"] is True and got["stream"]["member"] == "gemini/gemini-1.5-flash"

    for refused, status, code in (("unauthenticated", 401, "invalid_api_key"), ("unknown_model", 404, "model_not_found")):
        line = got[refused]
        assert line["status"] == status and line["attempts"] == [] and line["prompt_tokens"] is None
        assert line["error"] == code, line
    # An unauthenticated request names the model it asked for, unless its body is over 64 KiB
    # (refused at its headers then, the body never read).
    assert got["unauthenticated"]["model"] == "only_openai" and got["unknown_model"]["model"] == "no_such_pool"
    assert got["unauthenticated_large"]["model"] is None and got["unauthenticated_large"]["error"] == "invalid_api_key"
    for line in got.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["end"])
        assert line["end"] >= line["time"]
    assert all(got[k]["error"] is None for k in ("plain", "stream", "failover"))
    assert got["unauthenticated"]["tenant"] is None and got["unknown_model"]["tenant"] == "team-a"

    failover = got["failover"]
    assert [(a["member"], a["status"]) for a in failover["attempts"]] == [
        ("openai/gpt-4o", 503), ("azure/gpt-4o-azure", 200)]
    assert all(a["ms"] >= 0 for a in failover["attempts"])
    assert failover["member"] == "azure/gpt-4o-azure" and failover["pool"] == "failover"
    usage = sent["failover"].json()["usage"]
    assert (failover["prompt_tokens"], failover["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert failover["cost_micro_usd"] == usage["prompt_tokens"] + 2 * usage["completion_tokens"]

    # Never a key, never prompt or answer text.
    with open(gw.call_log_path) as f:
        text = f.read()
    for secret in [secret_text, "mock reply", *TENANT_KEYS.values(), *KEYS.values(), "sk-wrong"]:
        assert secret not in text


def test_a_hedged_request_lists_both_attempts_the_loser_unanswered(gw, obs_mock):
    obs_mock.faults("openai", latency_ms=2000)
    r = httpx.post(gw.base + "/v1/chat/completions", json=chat("hedged"), headers=auth(), timeout=10)
    assert r.status_code == 200 and r.headers["x-switchboard-member"] == "compat/llama-3.1-8b", r.text
    line = lines_for(gw, [request_id(r)])[request_id(r)]
    assert sorted((a["member"], a["status"]) for a in line["attempts"]) == [
        ("compat/llama-3.1-8b", 200), ("openai/gpt-4o", 0)]
    assert line["member"] == "compat/llama-3.1-8b" and line["status"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"]) == tuple(r.json()["usage"][k] for k in ("prompt_tokens", "completion_tokens"))
    assert line["duration_ms"] >= 200


def series(prom, name, labels):
    """The value of one series: the one whose labels include `labels`."""
    found = [v for (n, ls), v in prom.items() if n == name and set(labels.items()) <= ls]
    return sum(found)


def settled(gw):
    """/stats/prometheus once what earlier requests recorded is there: counters reach Envoy
    on the filter's next tick (each second), histograms at the next stats flush (each second)."""
    time.sleep(1.5)
    return gw.prometheus()


def delta(gw, before, name, labels):
    return series(settled(gw), name, labels) - series(before, name, labels)


def test_metric_values_equal_the_providers_usage_sums(gw, obs_mock):
    before = settled(gw)
    expected = {}  # (pool, member) -> [requests, prompt, completion, streams]
    for i in range(12):
        name = list(KINDS)[i % len(KINDS)]
        body = chat(f"only_{name}", content="word " * (i + 1), stream=i % 3 == 0)
        if body["stream"]:
            r = stream(gw, body)
        else:
            r = httpx.post(gw.base + "/v1/chat/completions", json=body, headers=auth(), timeout=10)
        assert r.status_code == 200, r.text
        prompt, completion = mock_usage(r)
        key = (f"only_{name}", f"{name}/{KINDS[name][1]}")
        e = expected.setdefault(key, [0, 0, 0, 0])
        e[0] += 1
        e[1] += prompt
        e[2] += completion
        e[3] += int(body["stream"])
    after = settled(gw)
    for (pool, member_id), (requests, prompt, completion, streams) in expected.items():
        labels = {"pool": pool, "member": member_id, "tenant": "team-a"}
        d = lambda name, **extra: series(after, name, {**labels, **extra}) - series(before, name, {**labels, **extra})
        assert d("gen_ai_client_token_usage", gen_ai_token_type="input") == prompt, pool
        assert d("gen_ai_client_token_usage", gen_ai_token_type="output") == completion, pool
        assert d("switchboard_cost_micro_usd") == prompt + 2 * completion, pool
        assert d("switchboard_requests", outcome="ok") == requests, pool
        assert d("gen_ai_server_request_duration_milliseconds_count") == requests, pool
        assert d("gen_ai_server_time_to_first_token_milliseconds_count") == streams, pool
        # A histogram: cumulative buckets ending in +Inf.
        assert d("gen_ai_server_request_duration_milliseconds_bucket", le="+Inf") == requests, pool
        # The GenAI attributes, as configured (the pool is the model asked for).
        model = KINDS[pool[len("only_"):]][1]
        genai = {"gen_ai_operation_name": "chat", "gen_ai_request_model": pool,
                 "gen_ai_provider_name": pool[len("only_"):], "gen_ai_response_model": model}
        assert d("gen_ai_client_token_usage", gen_ai_token_type="output", **genai) == completion, pool
    # Buckets for LLM latencies: 10 ms to 10 min.
    les = {dict(ls).get("le") for (n, ls) in after if n == "gen_ai_server_request_duration_milliseconds_bucket"}
    assert {"10", "1000", "30000", "600000", "+Inf"} <= les and "0.5" not in les, sorted(les)


def test_rate_limited_and_budget_refused_requests_are_counted_per_tenant(gw):
    before = settled(gw)
    post = lambda tenant: httpx.post(gw.base + "/v1/chat/completions", json=chat("only_openai"),
                                     headers=auth(tenant), timeout=10)
    statuses = [post("team-rpm").status_code for _ in range(3)]
    # rpm 1: one admitted, the rest refused (two if the minute turned in between).
    limited = statuses.count(429)
    assert statuses[0] == 200 and limited >= 1 and set(statuses) <= {200, 429}, statuses
    first, second = post("team-budget"), post("team-budget")
    assert first.status_code == 200 and second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert delta(gw, before, "switchboard_tenant_rate_limited", {"tenant": "team-rpm"}) == limited
    assert delta(gw, before, "switchboard_tenant_budget_refused", {"tenant": "team-budget"}) == 1
    assert delta(gw, before, "switchboard_requests", {"tenant": "team-rpm", "outcome": "rate_limited"}) == limited


OBSERVABILITY = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "observability")
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "by", "without",
                "label_values", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}


def dashboard_queries():
    with open(f"{OBSERVABILITY}/grafana-dashboard.json") as f:
        dashboard = json.load(f)
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries, variables


def alert_queries():
    """The `expr` of every rule in alerts.yml (one line, or a `|` block)."""
    with open(f"{OBSERVABILITY}/alerts.yml") as f:
        lines = f.read().splitlines()
    exprs = []
    for i, line in enumerate(lines):
        key, _, value = line.strip().partition(":")
        if key != "expr":
            continue
        if value.strip() != "|":
            exprs.append(value.strip())
            continue
        indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
        block = []
        for more in lines[i + 1:]:
            if more.strip() and len(more) - len(more.lstrip()) < indent:
                break
            block.append(more.strip())
        exprs.append(" ".join(block))
    return exprs


def test_dashboard_queries_name_stats_the_gateway_emits(gw, obs_mock):
    # Traffic that makes every kind of stat exist: answers, a stream, a failover, tenant refusals.
    assert stream(gw, chat("only_openai", stream=True)).status_code == 200
    obs_mock.faults("openai", status=503)
    assert httpx.post(gw.base + "/v1/chat/completions", json=chat("failover"), headers=auth(), timeout=10).status_code == 200
    for tenant in ("team-rpm", "team-budget"):
        for _ in range(2):
            httpx.post(gw.base + "/v1/chat/completions", json=chat("only_openai"), headers=auth(tenant), timeout=10)
    prom = settled(gw)
    with open(f"{OBSERVABILITY}/prometheus.yml") as f:
        path = re.search(r"metrics_path:\s*(\S+)", f.read()).group(1)
    assert path == "/stats/prometheus"
    emitted = {}
    for (name, labels), _ in prom.items():
        emitted.setdefault(name, set()).update(k for k, _ in labels)

    queries, variables = dashboard_queries()
    assert len(queries) >= 20 and len(variables) == 2
    alerts = alert_queries()
    assert len(alerts) >= 5
    queries += alerts
    used = set()
    for expr in queries:
        names = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr)
        assert names, f"no stat in {expr}"
        for name in names:
            assert name not in PROMQL_WORDS
            assert name in emitted, f"{name} (in {expr}) is not a stat the gateway emits"
            used.add(name)
        # Every label the query groups by or matches on is a label of its stats.
        labels = set(re.findall(r"by \(([^)]*)\)", expr))
        labels = {l.strip() for group in labels for l in group.split(",")}
        labels |= set(re.findall(r"([a-z_]+)(?:=~|!~|!=|=)\"", expr))
        for label in labels - {"le"}:
            assert any(label in emitted[n] for n in names), f"label {label} of {expr} is on none of {names}"
    for query in variables:
        name, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
        assert label in emitted[name]
    # What the issue asks the dashboard to show is there.
    for stat in ("switchboard_member_ejections", "switchboard_member_restorations", "switchboard_pool_hedged",
                 "switchboard_pool_hedge_wins", "switchboard_pool_stream_idle_timeouts",
                 "switchboard_pool_resumed_streams", "switchboard_local_errors",
                 "switchboard_tenant_budget_spent_micro_usd", "switchboard_tenant_budget_limit_micro_usd",
                 "switchboard_requests", "switchboard_pool_failovers", "switchboard_pool_healthy_members",
                 "gen_ai_client_token_usage", "switchboard_cost_micro_usd", "gen_ai_server_request_duration_milliseconds_bucket",
                 "gen_ai_server_time_to_first_token_milliseconds_bucket", "switchboard_tenant_rate_limited",
                 "switchboard_tenant_budget_refused"):
        assert stat in used, stat


def values(prom, name, labels):
    """The values of every series of `name` whose labels include `labels`."""
    return [v for (n, ls), v in prom.items() if n == name and set(labels.items()) <= ls]


OUTCOMES = ("ok", "client_error", "rate_limited", "quota", "upstream_error", "exhausted", "cancelled")


def test_every_series_exists_at_zero_from_start_so_the_first_error_is_counted(obs_mock):
    """A series born with its first value shows no increase in Prometheus: the first bad-JSON
    error or budget refusal of a pool, member or tenant was invisible. Every series a dashboard
    or alert reads now exists at 0 as soon as the configuration is loaded."""
    config = {
        "providers": providers_config(),
        "pools": {"only_openai": {"members": [member("openai")]}},
        "tenants": {
            "team-a": {"keys_sha256": [sha(TENANT_KEYS["team-a"])]},
            "team-budget": {"keys_sha256": [sha(TENANT_KEYS["team-budget"])],
                            "budget_usd": {"per": "day", "limit": 0.00001}},
        },
    }
    g = Gateway(config, dict(obs_mock.addrs), KEYS)
    try:
        start = g.prometheus()
        openai = "openai/gpt-4o"
        for tenant in ("team-a", "team-budget"):
            for outcome in OUTCOMES:
                for pool, member_id in (("only_openai", openai), ("only_openai", "-"), ("-", "-")):
                    labels = {"pool": pool, "member": member_id, "tenant": tenant, "outcome": outcome}
                    assert values(start, "switchboard_requests", labels) == [0], labels
            base = {"pool": "only_openai", "member": openai, "tenant": tenant}
            for name, extra in (("gen_ai_client_token_usage", {"gen_ai_token_type": "input"}),
                                ("gen_ai_client_token_usage", {"gen_ai_token_type": "output"}),
                                ("switchboard_cost_micro_usd", {})):
                assert values(start, name, {**base, **extra}) == [0], (name, tenant)
            # The duration by the spec's error.type: none for a success, the outcome otherwise.
            durations = {dict(ls).get("error_type"): v for (n, ls), v in start.items()
                         if n == "gen_ai_server_request_duration_milliseconds_count" and set(base.items()) <= ls}
            assert durations == {None: 0, "client_error": 0, "rate_limited": 0, "upstream_error": 0,
                                 "exhausted": 0, "cancelled": 0}, durations
        for outcome in OUTCOMES:  # unauthenticated
            labels = {"pool": "-", "member": "-", "tenant": "-", "outcome": outcome}
            assert values(start, "switchboard_requests", labels) == [0], labels
        for code in ("invalid_json", "insufficient_quota", "rate_limit_exceeded", "no_healthy_upstream",
                     "invalid_api_key", "model_not_found"):
            assert values(start, "switchboard_local_errors", {"code": code}) == [0], code
        assert series(start, "switchboard_tenant_budget_refused", {"tenant": "team-budget"}) == 0
        assert series(start, "switchboard_tenant_budget_spent_micro_usd", {"tenant": "team-budget"}) == 0
        assert not [n for (n, _) in start if n.startswith("switchboard_local_errors_")], "one family, code as label"

        # The first bad JSON and the first budget refusal: each counted once.
        bad = httpx.post(g.base + "/v1/chat/completions", content=b'{"model": ', headers=auth(), timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json", bad.text
        post = lambda: httpx.post(g.base + "/v1/chat/completions", json=chat("only_openai"),
                                  headers=auth("team-budget"), timeout=10)
        assert post().status_code == 200
        refused = post()
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        after = settled(g)
        d = lambda name, labels: series(after, name, labels) - series(start, name, labels)
        assert d("switchboard_requests", {"tenant": "team-a", "outcome": "client_error"}) == 1
        assert d("switchboard_requests", {"pool": "-", "tenant": "team-a", "outcome": "client_error"}) == 1
        assert d("switchboard_local_errors", {"code": "invalid_json"}) == 1
        assert d("switchboard_requests", {"tenant": "team-budget", "outcome": "quota"}) == 1
        assert d("switchboard_requests", {"tenant": "team-budget", "outcome": "ok"}) == 1
        assert d("switchboard_local_errors", {"code": "insufficient_quota"}) == 1
        assert d("switchboard_tenant_budget_refused", {"tenant": "team-budget"}) == 1
        # The budget as gauges, for "budget nearly spent": limit 0.00001 USD, spent by the one answer.
        assert series(after, "switchboard_tenant_budget_limit_micro_usd", {"tenant": "team-budget"}) == 10
        assert series(after, "switchboard_tenant_budget_spent_micro_usd", {"tenant": "team-budget"}) >= 10
        assert values(after, "switchboard_tenant_budget_spent_micro_usd", {"tenant": "team-a"}) == []
        # No status codes, no client-sent model names in labels: no new series appeared.
        ours = lambda prom: {k for k in prom if k[0].startswith(("switchboard_", "gen_ai_"))}
        assert ours(after) == ours(start)
    finally:
        g.stop()


def test_healthy_members_gauge_recovers_when_the_cooldown_ends_without_a_request(obs_mock):
    config = {
        "providers": providers_config(),
        "defaults": {"health": {"consecutive_failures": 1, "cooldown_ms": 1500}},
        "pools": {"pair": {"strategy": "priority",
                           "members": [member("openai", priority=0), member("azure", priority=1)]}},
    }
    g = Gateway(config, dict(obs_mock.addrs), KEYS)
    try:
        gauge = lambda: series(g.prometheus(), "switchboard_pool_healthy_members", {"pool": "pair"})
        deadline = time.time() + 3
        while gauge() != 2 and time.time() < deadline:
            time.sleep(0.2)
        assert gauge() == 2
        obs_mock.faults("openai", status=503)
        r = httpx.post(g.base + "/v1/chat/completions", json=chat("pair"), timeout=10)
        assert r.status_code == 200 and r.headers["x-switchboard-attempts"] == "2", r.text
        time.sleep(1.1)
        assert gauge() == 1, "the ejected member is not counted"
        obs_mock.reset("openai")  # clears the fault and the request count
        # No request: the cooldown's end alone brings the gauge back (within a tick).
        deadline = time.time() + 3
        while gauge() != 2 and time.time() < deadline:
            time.sleep(0.2)
        assert gauge() == 2, "a member past its cooldown counts as healthy (it is offered the next request)"
        assert obs_mock.count("openai") == 0, "no request reached the member meanwhile"
    finally:
        g.stop()
