"""A new plugin configuration handed to a running Envoy (extension config
discovery from a watched file, `render.py --plugin-config-dir`): it applies to
the requests that start after it, no request in flight or on a kept-alive
connection fails, and what requests share (tenants' windows, learning from
scores) carries over; a new `learning_epoch` starts learning again."""
import copy
import hashlib
import threading
import time

import httpx

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat


def weights(cfg, alpha, beta):
    cfg = copy.deepcopy(cfg)
    members = cfg["pools"]["gpt4o_16k"]["members"]
    members[0]["weight"], members[1]["weight"] = alpha, beta
    return cfg


def test_a_new_configuration_applies_without_dropping_a_request(mock):
    cfg = base_config(health={"consecutive_failures": 1000})
    gw = Gateway(weights(cfg, 1, 0), clusters_for(mock), KEYS, reloadable=True)
    mock.faults("alpha", latency_ms=150)
    mock.faults("beta", latency_ms=150)
    failures, answered, stop = [], [], threading.Event()

    def client(stream):
        # Keep-alive connections that stay open across every change.
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k", stream=stream))
                    body = r.text
                    if r.status_code != 200 or (stream and "[DONE]" not in body):
                        failures.append((r.status_code, body[:300]))
                    else:
                        answered.append(r.headers["x-switchboard-member"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    try:
        threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.6)
        for alpha, beta in ((0, 1), (1, 0), (0, 1), (1, 0), (0, 1)):
            gw.reconfigure(weights(cfg, alpha, beta))
            time.sleep(0.5)  # every worker serves requests under it
            served = set(answered[-4:])
            want = "alpha/gpt-4o" if alpha else "beta/gpt-4o-2024-08-06"
            assert served == {want}, (alpha, beta, answered[-8:])
        stop.set()
        for t in threads:
            t.join(15)
        assert failures == [], failures[:5]
        assert len(answered) >= 40, len(answered)
        assert gw.alive()
    finally:
        stop.set()
        mock.reset("alpha")
        mock.reset("beta")
        gw.stop()


KEY, LIMITED_KEY = "sk-reload-tenant", "sk-reload-limited"


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def learned_config(epoch=0, description="first"):
    cfg = base_config(health={"consecutive_failures": 1000}, description=description)
    cfg["pools"]["strong"] = {"members": [{"provider": "gamma", "model": "gpt-4"}]}
    cfg["pools"]["weak"] = {"members": [{"provider": "beta", "model": "mixtral"}]}
    cfg["routers"] = {"learn": {"rules": [], "learned": {
        "strong": "strong", "weak": "weak", "threshold": 1.0, "explore": 0.0,
        "feedback_per_minute": 1000, "learning_epoch": epoch}}}
    cfg["tenants"] = {"team": {"keys_sha256": [sha(KEY)]}, "limited": {"keys_sha256": [sha(LIMITED_KEY)], "rpm": 5}}
    return cfg


def test_tenant_windows_and_learning_carry_over_and_a_new_epoch_starts_learning_again(mock):
    gw = Gateway(learned_config(), clusters_for(mock), KEYS, reloadable=True)
    auth = {"authorization": f"Bearer {KEY}"}
    prompt = "Prove that every bounded monotone sequence of real numbers converges."
    try:
        # rpm counts in a window aligned to the minute: this part must not straddle one.
        if time.time() % 60 > 50:
            time.sleep(60.2 - time.time() % 60)
        limited = {"authorization": f"Bearer {LIMITED_KEY}"}
        before = [httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers=limited).status_code
                  for _ in range(3)]
        gw.reconfigure(learned_config(description="counted"))
        after = [httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), headers=limited).status_code
                 for _ in range(3)]
        # 3 of the tenant's 5 this minute were made under the earlier configuration.
        assert (before, after) == ([200] * 3, [200, 200, 429]), (before, after)

        with httpx.Client(timeout=10, headers=auth) as c:
            def route_score():
                time.sleep(0.25)  # every worker rereads the learning (100 ms)
                r = c.post(gw.base + "/v1/chat/completions", json=chat("learn", prompt))
                assert r.status_code == 200, r.text
                return float(r.headers["x-switchboard-route-score"])

            shipped = route_score()
            # 40 low scores of weak answers to this prompt: weak does worse on it.
            for _ in range(40):
                r = c.post(gw.base + "/v1/chat/completions", json=chat("learn", prompt))
                assert r.status_code == 200 and r.headers["x-switchboard-pool"] == "weak", r.text
                f = c.post(gw.base + "/v1/feedback",
                           json={"request_id": r.headers["x-switchboard-feedback-id"], "score": 0.0})
                assert f.status_code == 204, f.text
            learned = route_score()
            assert learned > shipped + 0.02, (shipped, learned)

            # The same model, another description: the learning stays.
            gw.reconfigure(learned_config(description="second"))
            assert abs(route_score() - learned) < 1e-6
            # A new epoch: learning starts again from the shipped model.
            gw.reconfigure(learned_config(epoch=1, description="third"))
            assert abs(route_score() - shipped) < 1e-6

    finally:
        gw.stop()


def test_an_invalid_configuration_is_refused_and_the_previous_one_keeps_serving(mock):
    cfg = base_config()
    gw = Gateway(cfg, clusters_for(mock), KEYS, reloadable=True)
    try:
        bad = copy.deepcopy(cfg)
        bad["pools"]["gpt4o_16k"]["members"][0]["provider"] = "nowhere"
        gw.reconfigure(bad, rejected=True)
        assert gw.stats(settle=False)[gw.REJECTED] == 1
        assert 'pools.gpt4o_16k.members[0].provider: unknown provider "nowhere"' in gw.logs()
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("gpt4o_16k"), timeout=10)
        assert r.status_code == 200, r.text
    finally:
        gw.stop()
