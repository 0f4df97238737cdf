"""The dashboard and the alert rules, evaluated by a real Prometheus (Debian's package) scraping a
real Envoy with switchboard every second: a scripted mix of successes, errors of every class (each
the first of its kind), a member's fault and recovery, a hedge, a stream idle timeout and tenants
with limits. Every query of examples/observability/grafana-dashboard.json and every rule of
alerts.yml must parse and return exactly what the script caused, computed from the call log.
`make test-observability` runs it (and installs prometheus when missing)."""
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter

import httpx
import pytest

from conftest import KEYS, clusters_for
from harness import Gateway, chat, free_port

HERE = os.path.dirname(__file__)
OBSERVABILITY = os.path.join(HERE, "..", "..", "examples", "observability")
# rate()/increase() windows: longer than the whole test, so every event is inside.
WINDOW_S = 300
TENANT_KEYS = {"team.a": "sk-prom-team-a", "team-rpm": "sk-prom-rpm", "team-budget": "sk-prom-budget"}
PRICES = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
BUDGET_MICRO_USD = 10
LATENCY_BUCKETS = [10, 25, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000,
                   30000, 45000, 60000, 90000, 120000, 180000, 300000, 600000]


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def member(provider, model, **extra):
    return {"provider": provider, "model": model, **PRICES, **extra}


CONFIG = {
    "providers": {name: {"kind": "openai", "cluster": name, "host": f"api.{name}.example",
                         "api_key_env": f"{name.upper()}_KEY"} for name in ("alpha", "beta", "gamma")},
    "pools": {
        # A dotted pool and member names: labels keep them as configured.
        "gpt-4.1": {"strategy": "priority", "health": {"consecutive_failures": 1, "cooldown_ms": 3000},
                    "members": [member("alpha", "gpt-4.1", priority=0), member("beta", "gpt-4.1-mini", priority=1)]},
        "solo": {"health": {"consecutive_failures": 1000}, "members": [member("gamma", "gpt-4o-solo")]},
        "hedged": {"strategy": "priority", "hedge_after_ms": 150, "health": {"consecutive_failures": 1000},
                   "members": [member("beta", "gpt-4o-h1", priority=0), member("gamma", "gpt-4o-h2", priority=1)]},
        "idle": {"stream_idle_timeout_ms": 300, "health": {"consecutive_failures": 1000},
                 "members": [member("gamma", "gpt-4o-idle")]},
        "resuming": {"resume_streams": True, "health": {"consecutive_failures": 1000},
                     "members": [member("beta", "gpt-4o-r1"), member("gamma", "gpt-4o-r2")]},
    },
    "tenants": {
        "team.a": {"keys_sha256": [sha(TENANT_KEYS["team.a"])]},
        "team-rpm": {"keys_sha256": [sha(TENANT_KEYS["team-rpm"])], "rpm": 1},
        "team-budget": {"keys_sha256": [sha(TENANT_KEYS["team-budget"])],
                        "budget_usd": {"per": "day", "limit": BUDGET_MICRO_USD / 1e6}},
    },
}


def prometheus_binary():
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed: `make test-observability` installs it "
                    "(apt-get install -y prometheus), or install Debian's package by hand")
    return path


# examples/observability/prometheus.yml's rule: the native build's series read as the wasm build's.
NATIVE_PREFIX_DROPPED = {"source_labels": ["__name__"], "regex": "envoy_dynamicmodulescustom_(.*)",
                         "target_label": "__name__", "replacement": "$1"}


def test_the_example_scrape_config_drops_the_native_prefix():
    with open(os.path.join(OBSERVABILITY, "prometheus.yml")) as f:
        example = f.read()
    assert f'regex: "{NATIVE_PREFIX_DROPPED["regex"]}"' in example
    assert f'replacement: "{NATIVE_PREFIX_DROPPED["replacement"]}"' in example


class Prometheus:
    """Prometheus scraping Envoy's /stats/prometheus every second, with alerts.yml loaded."""

    def __init__(self, admin_port):
        self.dir = tempfile.mkdtemp(prefix="switchboard-prom-")
        self.port = free_port()
        rules = os.path.abspath(os.path.join(OBSERVABILITY, "alerts.yml"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "switchboard", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
                                "metric_relabel_configs": [NATIVE_PREFIX_DROPPED]}],
        }
        path = os.path.join(self.dir, "prometheus.yml")
        with open(path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while True:
            try:
                if httpx.get(self.base + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, f"prometheus did not start: {self.logs()}"
            time.sleep(0.2)

    def api(self, path, **params):
        r = httpx.get(self.base + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr, at):
        """{frozenset(labels): value} of an instant query at `at`."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", (expr, data)
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in data["result"]}

    def last_scrape(self):
        """The timestamp of the newest scrape (every series of a scrape has it)."""
        data = self.api("query", query='timestamp(up{job="switchboard"})')
        return float(data["result"][0]["value"][1]) if data["result"] else None

    def wait_scrape_after(self, t, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            last = self.last_scrape()
            if last is not None and last > t:
                return last
            time.sleep(0.2)
        raise AssertionError(f"no scrape after {t}: {self.logs()}")

    def logs(self):
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def dashboard_targets():
    with open(os.path.join(OBSERVABILITY, "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    return [(p["title"], i, t["expr"]) for p in dashboard["panels"] for i, t in enumerate(p["targets"])]


def instant(expr):
    """A dashboard query as Grafana sends it with every pool and tenant selected."""
    return (expr.replace("$__rate_interval", f"{WINDOW_S}s").replace('"$pool"', '".*"')
            .replace('"$tenant"', '".*"'))


def outcome(line):
    if line["error"] == "no_healthy_upstream":
        return "exhausted"
    status = line["status"]
    if status == 0:
        return "cancelled"
    if line["error"] == "insufficient_quota":
        return "quota"
    if status == 429:
        return "rate_limited"
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "upstream_error"


def by(lines, keys, value=lambda line: 1, where=lambda line: True):
    """Sums of `value` over the call-log lines, by the labels `keys` (None reads `-`)."""
    out = Counter()
    for line in lines:
        if where(line):
            labels = {"pool": line["pool"], "member": line["member"], "tenant": line["tenant"],
                      "outcome": outcome(line), "code": line["error"]}
            out[frozenset((k, labels[k] if labels[k] is not None else "-") for k in keys)] += value(line)
    return out


def nonzero(result):
    """What a panel draws: no zeros, no NaN (a ratio of two zeros)."""
    return {k: v for k, v in result.items() if v != 0 and not math.isnan(v)}


def rates(counts):
    return {k: v / WINDOW_S for k, v in counts.items() if v}


def close(got, want):
    want = nonzero(want)
    assert set(got) == set(want), f"\n got {sorted(map(sorted, got))}\nwant {sorted(map(sorted, want))}"
    for k in want:
        assert math.isclose(got[k], want[k], rel_tol=1e-6), (sorted(k), got[k], want[k])


def bucket_bounds(values):
    """The latency buckets (ms) around the smallest and the largest value: any quantile is between
    (Envoy bins a value at two significant digits first: up to 10% above it)."""
    low = max([0] + [b for b in LATENCY_BUCKETS if b <= min(values)])
    high = min([b for b in LATENCY_BUCKETS if b >= max(values) * 1.1] + [math.inf])
    return low, high


@pytest.fixture(scope="module")
def stack(mock):
    env = dict(KEYS)
    g = Gateway(CONFIG, clusters_for(mock), env, concurrency=1, call_log=True)
    prom = Prometheus(g.admin_port)
    try:
        yield g, prom
    finally:
        prom.stop()
        g.stop()


def post(g, model, tenant="team.a", stream=False, **extra):
    headers = {"authorization": f"Bearer {TENANT_KEYS[tenant]}"} if tenant else {"authorization": "Bearer sk-nobody"}
    with httpx.stream("POST", g.base + "/v1/chat/completions", json=chat(model, stream=stream, **extra),
                      headers=headers, timeout=15) as r:
        try:
            r.read()
        except httpx.TransportError:
            pass  # an answer cut after its headers
        return r


def test_every_dashboard_query_and_alert_rule_returns_what_the_script_caused(stack, mock):
    g, prom = stack
    # Prometheus has the series at 0 before the first event of any kind.
    start = prom.wait_scrape_after(0, timeout=20)
    zero = prom.query('switchboard_requests{pool="solo",outcome="exhausted"}', start)
    # Per tenant (3), with the member and before one was tried.
    assert list(zero.values()) == [0] * 6, zero

    # Successes: plain and streamed.
    for i in range(4):
        assert post(g, "gpt-4.1", stream=i == 0).status_code == 200
    for _ in range(7):
        assert post(g, "solo").status_code == 200
    # Client errors: bad JSON, unknown model, unknown key.
    bad = httpx.post(g.base + "/v1/chat/completions", content=b'{"model": ', timeout=10,
                     headers={"authorization": f"Bearer {TENANT_KEYS['team.a']}"})
    assert bad.status_code == 400
    assert post(g, "no-such-model").status_code == 404
    assert post(g, "gpt-4.1", tenant=None).status_code == 401
    # A tenant's rpm (1) and budget.
    rpm = [post(g, "gpt-4.1", tenant="team-rpm").status_code for _ in range(3)]
    assert 429 in rpm and set(rpm) <= {200, 429}, rpm
    assert [post(g, "gpt-4.1", tenant="team-budget").status_code for _ in range(2)] == [200, 429]
    # A provider's 400 passed on, an exhausted pool, an answer cut after its headers.
    mock.faults("gamma", status=400)
    assert post(g, "solo").status_code == 400
    mock.faults("gamma", status=503)
    assert post(g, "solo").status_code == 503
    mock.faults("gamma", reset_after_first_chunk=True)
    assert post(g, "solo").status_code == 200  # cut after its headers
    mock.reset()
    # A hedge that wins, a stream silent past its idle limit.
    mock.faults("beta", latency_ms=1000)
    assert post(g, "hedged").headers["x-switchboard-member"] == "gamma/gpt-4o-h2"
    mock.reset()
    mock.faults("gamma", stream_delay_ms=3000, stream_chunks=3)
    post(g, "idle", stream=True)
    mock.reset()
    # A fault: alpha fails, is ejected (the request fails over to beta), recovers after its cooldown.
    mock.faults("alpha", status=503)
    failed_over = post(g, "gpt-4.1")
    assert failed_over.status_code == 200 and failed_over.headers["x-switchboard-attempts"] == "2"
    mock.reset()
    during_fault = prom.wait_scrape_after(time.time() + 1.2)
    healthy = 'max by (pool) (switchboard_pool_healthy_members{pool="gpt-4.1"})'
    assert list(prom.query(healthy, during_fault).values()) == [1]
    deadline = time.time() + 6
    while list(prom.query(healthy, prom.last_scrape()).values()) != [2] and time.time() < deadline:
        time.sleep(0.3)
    # The member's trial succeeds: restored.
    assert post(g, "gpt-4.1").headers["x-switchboard-member"] == "alpha/gpt-4.1"

    # Counters reach Envoy on the filter's tick, histograms on the stats flush (each second).
    time.sleep(2.2)
    at = prom.wait_scrape_after(time.time())
    lines = g.calls(0)
    assert len(lines) == 4 + 7 + 3 + 3 + 2 + 3 + 2 + 2, [line["status"] for line in lines]
    pools = set(prom.api("label/pool/values", **{"match[]": "switchboard_requests"}))
    assert set(CONFIG["pools"]) <= pools and "-" in pools, pools

    ok = lambda line: outcome(line) == "ok"
    tokens = lambda line: line["prompt_tokens"] or 0
    cost = lambda line: line["cost_micro_usd"] or 0
    served = [line for line in lines if line["prompt_tokens"] is not None]
    alpha, beta = "alpha/gpt-4.1", "beta/gpt-4.1-mini"
    h1, h2, gamma_solo, gamma_idle = "beta/gpt-4o-h1", "gamma/gpt-4o-h2", "gamma/gpt-4o-solo", "gamma/gpt-4o-idle"
    key = lambda **labels: frozenset(labels.items())
    attempts = Counter(a["member"] for line in lines for a in line["attempts"])
    expected = {
        ("Requests per pool", 0): rates(by(lines, ["pool"])),
        ("Errors per pool", 0): rates(by(lines, ["pool", "outcome"], where=lambda l: not ok(l))),
        ("Requests per tenant", 0): rates(by(lines, ["tenant"])),
        ("Errors per tenant", 0): rates(by(lines, ["tenant", "outcome"], where=lambda l: not ok(l))),
        ("Failovers and exhausted pools", 0): rates({key(pool="gpt-4.1"): 1}),
        ("Failovers and exhausted pools", 1): rates({key(pool="solo"): 1}),
        ("Healthy members", 0): {key(pool=p): len(c["members"]) for p, c in CONFIG["pools"].items()},
        ("Tokens per tenant", 0): rates({**{k | {("gen_ai_token_type", "input")}: v
                                            for k, v in by(served, ["tenant"], tokens).items()},
                                         **{k | {("gen_ai_token_type", "output")}: v
                                            for k, v in by(served, ["tenant"], lambda l: l["completion_tokens"]).items()}}),
        ("Cost per tenant (USD per hour)", 0): {k: v * 3600 / 1e6 for k, v in rates(by(served, ["tenant"], cost)).items()},
        ("Cost per member (USD per hour)", 0): {k: v * 3600 / 1e6
                                                for k, v in rates(by(served, ["pool", "member"], cost)).items()},
        ("Refused by tenant limits", 0): rates(by(lines, ["tenant"], where=lambda l: l["error"] == "rate_limit_exceeded")),
        ("Refused by tenant limits", 1): rates(by(lines, ["tenant"], where=lambda l: l["error"] == "insufficient_quota")),
        ("Usage estimated (answers without usage)", 0): rates(by(served, ["pool", "member"],
                                                                 lambda l: int(l["usage_estimated"]))),
        ("Member attempts and failures", 0): rates({key(member=m): n for m, n in attempts.items()}),
        # alpha's 503; gamma's 503, cut answer and silent stream (a provider's 400 is the client's fault).
        ("Member attempts and failures", 1): rates({key(member=alpha): 1, key(member=gamma_solo): 2,
                                                    key(member=gamma_idle): 1}),
        ("Ejections and restorations", 0): {key(pool="gpt-4.1", member=alpha): 1},
        ("Ejections and restorations", 1): {key(pool="gpt-4.1", member=alpha): 1},
        ("Hedges and hedge wins", 0): rates({key(pool="hedged"): 1}),
        ("Hedges and hedge wins", 1): rates({key(pool="hedged"): 1}),
        ("Stream idle timeouts and continuations", 0): rates({key(pool="idle"): 1}),
        ("Stream idle timeouts and continuations", 1): {},
        ("Gateway errors by code", 0): rates(by(lines, ["code"], where=lambda l: l["error"] is not None)),
        ("Budget spent by tenant", 0): {key(tenant="team-budget"): sum(cost(l) for l in served
                                                                       if l["tenant"] == "team-budget") / BUDGET_MICRO_USD},
    }
    member_lines = [line for line in lines if line["member"] is not None]
    all_by_member = by(member_lines, ["pool", "member"])
    failed_by_member = by(member_lines, ["pool", "member"], where=lambda l: not ok(l))
    expected[("Error ratio by member", 0)] = {k: failed_by_member[k] / n for k, n in all_by_member.items()}
    # Every first error of each kind is in the counts above: a series born with its first
    # request would show no increase.
    firsts = {outcome(line) for line in lines}
    assert firsts >= {"ok", "client_error", "rate_limited", "quota", "upstream_error", "exhausted"}, firsts

    checked = []
    for title, index, expr in dashboard_targets():
        got = prom.query(instant(expr), at)
        if title.startswith(("Request duration", "Time to first token")):
            # A quantile lies between the buckets of the smallest and the largest value recorded.
            streams = title.startswith("Time to first token")
            group = re.search(r"by \(le, (\w+)\)", expr).group(1)
            failed = 'error_type!=""' in expr
            recorded = [line for line in lines if line["attempts"] and (
                (line["stream"] and ok(line)) if streams else ok(line) != failed)]
            value_of = lambda line: line["first_byte_ms"] if streams else line["duration_ms"]
            label_of = lambda line: line["pool"] if group == "pool" else outcome(line)
            groups = {label_of(line) for line in recorded}
            assert groups and {dict(k)[group] for k, v in got.items() if not math.isnan(v)} == groups, (expr, got)
            for name in groups:
                low, high = bucket_bounds([value_of(line) for line in recorded if label_of(line) == name])
                assert low <= got[key(**{group: name})] <= high, (expr, name, got, low, high)
        elif title == "Healthy members":
            # The implicit one-model pools (model names a client may ask for directly) have their one member.
            close({k: v for k, v in got.items() if dict(k)["pool"] in CONFIG["pools"]}, expected[(title, index)])
            assert all(v == 1 for k, v in got.items() if dict(k)["pool"] not in CONFIG["pools"]), got
        else:
            want = expected.get((title, index))
            assert want is not None, f"no expectation for the dashboard's {title!r} query {index}: {expr}"
            close(nonzero(got), want)
        checked.append(title)
    assert len(checked) == len(dashboard_targets()) >= 30

    # The alert rules: loaded (Prometheus refuses a file that does not parse), evaluated without error,
    # and each returns what the script caused.
    groups = prom.api("rules")["groups"]
    rules = {r["name"]: r for group in groups for r in group["rules"]}
    assert len(rules) >= 6 and all(r["health"] == "ok" for r in rules.values()), rules
    alerts_expected = {
        "SwitchboardPoolExhausted": {key(pool="solo"): 1},
        "SwitchboardNoHealthyMember": {},
        "SwitchboardEjectionStorm": {},
        # gamma in solo: 3 of 10 requests failed (a 400, an exhausted pool, a cut answer).
        "SwitchboardMemberErrorRate": {key(pool="solo", member=gamma_solo): 0.3},
        "SwitchboardBudgetNearlySpent": expected[("Budget spent by tenant", 0)],
        "SwitchboardBudgetRefusals": {key(tenant="team-budget"): 1},
    }
    assert set(rules) == set(alerts_expected), set(rules)
    for name, rule in rules.items():
        close(prom.query(rule["query"], at), alerts_expected[name])
    # And Prometheus fires the ones without a `for:` (the others wait it out).
    firing = set()
    deadline = time.time() + 5
    while time.time() < deadline:
        firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}
        if firing >= {"SwitchboardPoolExhausted", "SwitchboardMemberErrorRate", "SwitchboardBudgetNearlySpent",
                      "SwitchboardBudgetRefusals"}:
            break
        time.sleep(0.5)
    assert firing == {"SwitchboardPoolExhausted", "SwitchboardMemberErrorRate", "SwitchboardBudgetNearlySpent",
                      "SwitchboardBudgetRefusals"}, firing
