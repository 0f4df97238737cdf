"""Fleet mode: three Envoy processes (two workers each) share tenants' limits
and budgets through the state service and Redis, exactly; when Redis or the
service fails, every proxy decides within `timeout_ms` as `on_unavailable`
says, and shared mode comes back by itself."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import ROOT, Gateway, chat, free_port, member_stat

STATE = os.path.join(ROOT, "target", "release", "switchboard-state")
KEY_RPM, KEY_RPM2 = "sk-fleet-rpm", "sk-fleet-rpm2"
KEY_PAR, KEY_BUDGET, KEY_FREE = "sk-fleet-par", "sk-fleet-budget", "sk-fleet-free"
KEY_RESTART, KEY_RESTART_BUDGET = "sk-fleet-restart", "sk-fleet-restart-budget"
CANARY = "beta/gpt-4o-2024-08-06"


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


class Redis:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL)
        deadline = time.time() + 5
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode != 0:
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)


class StateService:
    def __init__(self, redis_port, port=0):
        self.proc = subprocess.Popen([STATE, "--listen", f"127.0.0.1:{port}", "--redis", f"redis://127.0.0.1:{redis_port}"],
                                     stdout=subprocess.PIPE, text=True)
        self.addr = self.proc.stdout.readline().split('"')[3]

    def delay(self, ms):
        httpx.post(f"http://{self.addr}/_state/delay?ms={ms}", timeout=5).raise_for_status()

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


def fleet_config(**shared):
    cfg = base_config(health={"consecutive_failures": 1000})
    # One completion token costs $0.006 (the mock answers one token per word of its reply).
    for m in cfg["pools"]["gpt4o_16k"]["members"]:
        m.update(input_cost_per_mtok=0, output_cost_per_mtok=6000)
    cfg["pools"]["solo"] = {"members": [{"provider": "alpha", "model": "gpt-4o"}]}
    cfg["tenants"] = {
        "rpm": {"keys_sha256": [sha(KEY_RPM)], "rpm": 60},
        "rpm2": {"keys_sha256": [sha(KEY_RPM2)], "rpm": 60},
        "par": {"keys_sha256": [sha(KEY_PAR)], "max_parallel": 4},
        "budget": {"keys_sha256": [sha(KEY_BUDGET)], "budget_usd": {"per": "day", "limit": 0.05}},
        "free": {"keys_sha256": [sha(KEY_FREE)], "rpm": 100000},
        "restart": {"keys_sha256": [sha(KEY_RESTART)], "rpm": 10},
        "restart_budget": {"keys_sha256": [sha(KEY_RESTART_BUDGET)], "budget_usd": {"per": "day", "limit": 0.012}},
    }
    # A learned router sending every prompt to weak (so every answer can be scored), and a canary.
    cfg["pools"]["strong"] = {"members": [{"provider": "gamma", "model": "gpt-4"}]}
    cfg["pools"]["weak"] = {"members": [{"provider": "beta", "model": "mixtral"}]}
    cfg["routers"] = {"learn": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "threshold": 1.0,
                                                         "feedback_per_minute": 5000}}}
    cfg["pools"]["canaried"] = {"health": {"consecutive_failures": 1000}, "members": [
        {"provider": "alpha", "model": "gpt-4o", "weight": 1},
        {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 1,
         "canary": {"max_error_rate": 0.2, "min_requests": 20}}]}
    cfg["shared_state"] = {"cluster": "switchboard_state", **shared}
    return cfg


@pytest.fixture(scope="module")
def fleet(mock):
    redis = Redis()
    state = StateService(redis.port)
    clusters = clusters_for(mock, switchboard_state=state.addr)
    # A generous timeout: on this shared machine the exactness tests must never fall back.
    proxies = [Gateway(fleet_config(timeout_ms=1000, on_unavailable="deny"), clusters, KEYS, expect_failure=True)
               for _ in range(3)]
    for p in proxies:  # started together, waited for together (each compiles the filter)
        p.wait_ready(timeout=90)
    box = {"redis": redis, "state": state, "proxies": proxies, "clusters": clusters}
    yield box
    for p in proxies:
        p.stop()
    box["state"].stop()
    box["redis"].stop()


def post(gw, key, model="gpt4o_16k", timeout=10, **extra):
    return httpx.post(gw.base + "/v1/chat/completions", json=chat(model, **extra),
                      headers={"authorization": f"Bearer {key}"}, timeout=timeout)


def spread(proxies, key, n, clients, model="gpt4o_16k", **extra):
    """`n` requests from `clients` concurrent clients, request i to proxy i mod 3."""
    def one(i):
        return post(proxies[i % len(proxies)], key, model, **extra)

    with ThreadPoolExecutor(clients) as ex:
        return list(ex.map(one, range(n)))


def same_minute(seconds_needed):
    """Waits, if need be, so the next `seconds_needed` s fall in one clock minute (the rpm window)."""
    into = time.time() % 60
    if into > 60 - seconds_needed:
        time.sleep(60 - into + 0.2)


def test_rpm_60_over_three_proxies_admits_exactly_60_with_fleet_wide_headers(fleet):
    # The window is the clock minute: a run that spans two minutes (a very slow machine) is
    # repeated once with another tenant of the same limit.
    for key in (KEY_RPM, KEY_RPM2):
        same_minute(15)
        minute = time.time() // 60
        answers = spread(fleet["proxies"], key, 300, 30)
        if time.time() // 60 == minute:
            break
    else:
        pytest.fail("300 requests did not fit in one clock minute, twice")
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 60 and statuses.count(429) == 240, statuses
    # Each admitted answer says what remains as its proxy knows the fleet (docs/fleet.md: what no
    # proxy had taken at its last slice, plus its own slice's unused part): the last ones read 0,
    # though no proxy admitted 60 itself; per-proxy counts would never reach 0.
    admitted = [[int(r.headers["x-ratelimit-remaining-requests"]) for r in answers[p::3] if r.status_code == 200]
                for p in range(3)]
    assert all(0 <= n <= 59 for n in sum(admitted, [])), admitted
    assert 0 in sum(admitted, []) and all(len(a) < 60 for a in admitted), admitted
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_max_parallel_4_never_has_more_than_4_in_flight_upstream(fleet, mock):
    mock.faults("alpha", latency_ms=1000)
    answers = spread(fleet["proxies"], KEY_PAR, 40, 40, model="solo")
    statuses = [r.status_code for r in answers]
    stats = mock.client.get(mock.url("alpha") + "/_mock/stats").json()
    assert stats["max_in_flight"] == 4, stats
    assert statuses.count(200) >= 4 and statuses.count(200) + statuses.count(429) == 40, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "max_parallel" in refused.json()["error"]["message"]
    # Every slot came back when its request ended: four at once again, on any proxy.
    again = four_at_once(fleet["proxies"])
    assert [r.status_code for r in again] == [200] * 4


def four_at_once(proxies, within_s=3):
    """Four parallel requests of the `max_parallel: 4` tenant, tried until all four are admitted
    or `within_s` passed: each proxy gives its idle slots back by a call from its root context as
    its requests end (a moment under load), long before a lease would expire (600 s)."""
    deadline = time.time() + within_s
    while True:
        again = spread(proxies, KEY_PAR, 4, 4, model="solo")
        if all(r.status_code == 200 for r in again) or time.time() > deadline:
            return again
        time.sleep(0.1)


def test_a_client_that_leaves_gives_its_parallel_slot_back_at_once(fleet, mock):
    mock.faults("alpha", latency_ms=0)
    assert [r.status_code for r in four_at_once(fleet["proxies"])] == [200] * 4  # all four slots free
    mock.faults("alpha", latency_ms=2000)

    def leave(i):
        try:
            post(fleet["proxies"][i % 3], KEY_PAR, "solo", timeout=0.5)
        except httpx.TimeoutException:
            return "left"
        return "answered"

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(leave, range(4))) == ["left"] * 4
    mock.faults("alpha", latency_ms=0)
    # The four slots were released by the aborts, not by the 2 s answers nor by their leases' expiry.
    again = four_at_once(fleet["proxies"], within_s=1.0)  # the 2 s answers end later
    assert [r.status_code for r in again] == [200] * 4, [r.text for r in again]


def test_budget_of_5_cents_at_6_tenths_of_a_cent_answers_8_over_the_fleet(fleet, mock):
    for name in ("alpha", "beta"):
        mock.faults(name, reply="word", latency_ms=200)
    answers = spread(fleet["proxies"], KEY_BUDGET, 30, 30, max_tokens=1)
    statuses = [r.status_code for r in answers]
    # $0.048 reserved or spent by 8; a 9th would make $0.054.
    assert statuses.count(200) == 8 and statuses.count(429) == 22, statuses
    assert mock.count("alpha") + mock.count("beta") == 8
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in answers if r.status_code == 429)
    # Spent, not only held: refused until the day turns, on every proxy.
    for p in fleet["proxies"]:
        r = post(p, KEY_BUDGET, max_tokens=1)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 1, r.text


def fleet_stat(gateway, name):
    return gateway.stats().get(f"wasmcustom.switchboard.fleet.{name}", 0)


def test_redis_stopped_then_back_deny_answers_503_at_once_and_shared_mode_resumes(fleet):
    port = fleet["redis"].port
    fleet["redis"].stop()
    try:
        for p in fleet["proxies"]:
            started = time.time()
            r = post(p, KEY_FREE)
            assert r.status_code == 503, r.text
            assert "state service" in r.json()["error"]["message"]
            assert time.time() - started < 1.0
    finally:
        fleet["redis"] = Redis(port)
    # Redis is back (empty): the next requests are counted fleet-wide again, without a restart.
    counted = [int(post(p, KEY_FREE).headers["x-ratelimit-remaining-requests"]) for p in fleet["proxies"]]
    assert counted[1] < counted[0] and counted[2] < counted[1], counted
    assert fleet_stat(fleet["proxies"][0], "decisions.denied_unavailable") >= 1


def test_slow_or_killed_service_decides_within_timeout_and_nothing_hangs(fleet, mock):
    """Every request of tenant `par` (max_parallel 4: its slot goes back to the fleet as each
    request ends) asks the service; a tenant with a slice left is not slowed at all."""
    state = fleet["state"]
    # A proxy that falls back to its own counts after the default 50 ms.
    local = Gateway(fleet_config(on_unavailable="local"), fleet["clusters"], KEYS, expect_failure=True)
    local.wait_ready(timeout=90)
    try:
        assert post(local, KEY_PAR, "solo").status_code == 200
        same_minute(5)
        assert post(fleet["proxies"][2], KEY_FREE).status_code == 200  # a slice of `free` for this minute
        state.delay(2000)
        started = time.time()
        assert post(fleet["proxies"][2], KEY_FREE).status_code == 200
        assert time.time() - started < 1.0, "admitted from the proxy's slice, without the service"
        started = time.time()
        r = post(local, KEY_PAR, "solo")
        assert r.status_code == 200, r.text
        assert time.time() - started < 1.0, "decided by the 50 ms timeout, not by the slow service"
        started = time.time()
        r = post(fleet["proxies"][0], KEY_PAR, "solo")
        assert r.status_code == 503 and time.time() - started < 1.9, r.text  # its timeout is 1 s
        state.delay(0)
        stats = local.stats()
        assert stats["wasmcustom.switchboard.fleet.decisions.local_fallback"] >= 1
        assert stats["wasmcustom.switchboard.fleet.decisions.shared"] >= 1
        assert "switchboard.fleet.service_latency_ms" in httpx.get(local.admin + "/stats", timeout=5).text
        # The service killed: refused connections decide at once.
        port = int(state.addr.rsplit(":", 1)[1])
        state.stop()
        started = time.time()
        assert post(local, KEY_PAR, "solo").status_code == 200
        assert post(fleet["proxies"][1], KEY_PAR, "solo").status_code == 503
        assert time.time() - started < 2.0
        # A copy of the service started again on its address: shared mode again.
        fleet["state"] = StateService(fleet["redis"].port, port)
        deadline = time.time() + 5
        while post(fleet["proxies"][1], KEY_PAR, "solo").status_code != 200:
            assert time.time() < deadline, "shared mode did not resume"
            time.sleep(0.2)
    finally:
        local.stop()


def test_scores_sent_to_one_proxy_change_the_learned_router_on_another(fleet):
    """Feedback is learned fleet-wide: bad scores of weak answers to one prompt given on proxy 1
    raise that prompt's route score on proxy 3 within a second or two."""
    p1, p3 = fleet["proxies"][0], fleet["proxies"][2]
    prompt = "Prove that a uniformly convergent sequence of continuous functions has a continuous limit."
    headers = {"authorization": f"Bearer {KEY_FREE}"}

    def ask(gw):
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("learn", prompt), headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["x-switchboard-pool"] == "weak", r.text
        return r

    before = float(ask(p3).headers["x-switchboard-route-score"])
    for _ in range(20):
        r = ask(p1)
        scored = httpx.post(p1.base + "/v1/feedback", headers=headers, timeout=10,
                            json={"request_id": r.headers["x-switchboard-feedback-id"], "score": 0.0})
        assert scored.status_code == 204, scored.text
    deadline = time.time() + 3
    while (after := float(ask(p3).headers["x-switchboard-route-score"])) < before + 0.05:
        assert time.time() < deadline, (before, after)
        time.sleep(0.2)


def test_a_canary_rolled_back_by_one_proxy_gets_no_traffic_from_any_within_1s(fleet, mock):
    """A canary failing on proxy 2 is rolled back there; one second after, proxies 1 and 3, which
    never tried it, send it nothing either."""
    p1, p2, p3 = fleet["proxies"]
    mock.faults("beta", status=500)

    def send(gw, n):
        with ThreadPoolExecutor(4) as ex:
            return list(ex.map(lambda _: post(gw, KEY_FREE, "canaried").status_code, range(n)))

    # About half the requests try the canary first; its failures fail over to alpha.
    assert set(send(p2, 120)) == {200}
    sent = time.time()
    mock.reset("beta")
    time.sleep(max(0.0, sent + 1.0 - time.time()))
    before = mock.count("beta")
    assert set(send(p1, 40) + send(p3, 40)) == {200}
    assert mock.count("beta") == before, "a canary rolled back by proxy 2 still got requests"
    assert p2.stats()[member_stat("canaried", CANARY, "canary_rollbacks")] == 1
    assert "rolled back by another proxy of the fleet" in p1.logs()


def test_a_proxy_crashed_and_started_again_keeps_the_tenants_minute_and_budget(fleet, mock):
    """A proxy killed (SIGKILL) and replaced by a new Envoy process: the tenant's minute and its
    budget go on from Redis (per-proxy mode would start both afresh: docs/fleet.md)."""
    for name in ("alpha", "beta"):
        mock.faults(name, reply="word")
    config = fleet_config(timeout_ms=1000, on_unavailable="deny")
    old, new = (Gateway(config, fleet["clusters"], KEYS, expect_failure=True) for _ in range(2))
    try:
        for gw in (old, new):
            gw.wait_ready(timeout=90)
        same_minute(10)
        assert [post(old, KEY_RESTART).status_code for _ in range(4)] == [200] * 4
        assert [post(old, KEY_RESTART_BUDGET, max_tokens=1).status_code for _ in range(2)] == [200] * 2
        time.sleep(0.3)  # a tight budget's costs are told as each request ends
        old.proc.kill()
        old.proc.wait(5)
        # rpm 10: 6 left of the minute, not 10.
        assert [post(new, KEY_RESTART).status_code for _ in range(8)] == [200] * 6 + [429] * 2
        # $0.012 spent: refused until the day turns, not a fresh budget.
        r = post(new, KEY_RESTART_BUDGET, max_tokens=1)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 1, r.text
    finally:
        old.stop()
        new.stop()


def test_run_py_starts_a_fleet_prints_its_ports_and_stops_it_on_sigterm(mock, tmp_path):
    config = fleet_config()
    del config["shared_state"]  # the script adds the wiring itself
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(config))
    args = [sys.executable, os.path.join(ROOT, "examples", "fleet", "run.py"), "--plugin-config", str(path),
            "--proxies", "2"] + [f"--cluster={name}={addr}" for name, addr in clusters_for(mock).items()]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=dict(os.environ, **KEYS))
    try:
        ready = json.loads(run.stdout.readline())
        assert len(ready["proxies"]) == 2 and ready["redis"] > 0
        # One tenant, two proxies, one count.
        remaining = []
        for p in ready["proxies"]:
            r = httpx.post(f"http://127.0.0.1:{p['listen']}/v1/chat/completions", json=chat("gpt4o_16k"),
                           headers={"authorization": f"Bearer {KEY_FREE}"}, timeout=10)
            assert r.status_code == 200, r.text
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        # Each proxy takes a slice of 64 requests: the second one's count includes the first's slice.
        assert remaining == [100000 - 64 + 63, 100000 - 128 + 63]
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
    for p in ready["proxies"]:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{p['admin']}/ready", timeout=2)
    assert subprocess.run(["redis-cli", "-p", str(ready["redis"]), "ping"], capture_output=True).returncode != 0
