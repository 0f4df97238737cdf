"""Training data from real traffic through Envoy: with `call_log_prompts` on, the call
log's lines of learned-routed answers carry the text the router scored and their
feedback id, scores taken by /v1/feedback are logged, and `switchboard training-data`
joins them into the CSV `make train-router` reads. Without the option no prompt is
ever written. A retrained model given in the configuration loads into a running Envoy."""
import base64
import copy
import csv
import io
import json
import os
import struct
import subprocess
import time

import httpx

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "target", "release", "switchboard")


def config(prompts):
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["pools"] = {"strong": {"members": [{"provider": "gamma", "model": "gpt-4"}]},
                    "weak": {"members": [{"provider": "beta", "model": "mixtral"}]}}
    # Threshold 1: every prompt goes to weak, so every answer is scorable.
    cfg["routers"] = {"smart": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "threshold": 1.0}},
                      "rules_only": {"rules": [], "default": "strong"}}
    cfg["call_log"] = True
    if prompts:
        cfg["call_log_prompts"] = True
    return cfg


PROMPTS = [("Prove that \"every\" bounded monotone sequence converges,\nstep by step.", 0.0),
           ("Translate into French: good morning", 1.0),
           ("Derive a closed form for the sum of k^2 — café, naïve.", 0.2)]


def traffic(gw):
    """Three learned answers scored, one left unscored, one routed by rule; returns the feedback ids."""
    ids = []
    with httpx.Client(timeout=20) as client:
        for prompt, value in PROMPTS:
            r = client.post(gw.base + "/v1/chat/completions", json=chat("smart", prompt))
            assert r.status_code == 200 and r.headers["x-switchboard-pool"] == "weak", r.text
            ids.append(r.headers["x-switchboard-feedback-id"])
            s = client.post(gw.base + "/v1/feedback", json={"request_id": ids[-1], "score": value})
            assert s.status_code == 204, s.text
        r = client.post(gw.base + "/v1/chat/completions", json=chat("smart", "Never scored."))
        assert r.status_code == 200
        r = client.post(gw.base + "/v1/chat/completions", json=chat("rules_only", "Not learned."))
        assert r.status_code == 200
    return ids


def test_scored_answers_become_training_rows_of_the_router(mock, tmp_path):
    gw = Gateway(config(prompts=True), clusters_for(mock), KEYS, call_log=True)
    try:
        ids = traffic(gw)
        lines = gw.calls(2 * len(PROMPTS) + 2)
        log = tmp_path / "calls.log"
        log.write_bytes(open(gw.call_log_path, "rb").read())
    finally:
        gw.stop()
    routed = [l for l in lines if l.get("router") == "smart" and l.get("feedback_id")]
    assert [l["prompt"] for l in routed[:3]] == [p for p, _ in PROMPTS]
    assert [l["feedback_id"] for l in routed[:3]] == ids
    scored = [l["feedback"] for l in lines if "feedback" in l]
    assert scored == [{"feedback_id": i, "score": v} for i, (_, v) in zip(ids, PROMPTS)]
    assert all("prompt" not in l for l in lines if l.get("router") == "rules_only")

    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(config(prompts=True)))
    out = subprocess.run([CLI, "training-data", str(cfg_path), "smart", str(log)],
                         capture_output=True, text=True, timeout=30, env={**os.environ, **KEYS})
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    # A score below 0.5 says the weak answer was worse: label 1.
    assert rows == [{"prompt": p, "label": "1" if v < 0.5 else "0"} for p, v in PROMPTS], out.stdout
    assert "1 answered but not scored" in out.stderr, out.stderr


def test_without_call_log_prompts_no_prompt_is_written(mock):
    gw = Gateway(config(prompts=False), clusters_for(mock), KEYS, call_log=True)
    try:
        traffic(gw)
        lines = gw.calls(2 * len(PROMPTS) + 2)
    finally:
        gw.stop()
    assert len(lines) >= 2 * len(PROMPTS) + 2
    assert all("prompt" not in l for l in lines)
    # The feedback ids and scores are still there: joining them needs no prompt.
    assert sum(1 for l in lines if l.get("feedback_id")) == len(PROMPTS) + 1
    assert sum(1 for l in lines if "feedback" in l) == len(PROMPTS)


def fnv1a(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def retrained(bias_shift):
    """The shipped model with its bias moved (as a retrained model would differ), checksum redone."""
    raw = bytearray(open(os.path.join(ROOT, "router", "models", "default.sblr"), "rb").read())
    (bias,) = struct.unpack_from("<f", raw, 12)  # after magic, version, 4 sizes, quantile count
    struct.pack_into("<f", raw, 12, bias + bias_shift)
    struct.pack_into("<I", raw, len(raw) - 4, fnv1a(raw[:-4]))
    return base64.b64encode(bytes(raw)).decode()


def test_a_retrained_model_in_the_configuration_loads_into_a_running_envoy(mock):
    cfg = config(prompts=False)
    gw = Gateway(cfg, clusters_for(mock), KEYS, reloadable=True)
    prompt = "Derive a closed form for the number of binary trees with n nodes."

    def route_score():
        time.sleep(0.25)
        r = httpx.post(gw.base + "/v1/chat/completions", json=chat("smart", prompt), timeout=10)
        assert r.status_code == 200, r.text
        return float(r.headers["x-switchboard-route-score"])

    try:
        shipped = route_score()
        mine = copy.deepcopy(cfg)
        mine["routers"]["smart"]["learned"]["model"] = retrained(+1.0)
        gw.reconfigure(mine)
        loaded = route_score()
        # A logit one higher: sigmoid(x + 1) > sigmoid(x).
        assert loaded > shipped + 0.05, (shipped, loaded)

        # A damaged file is refused at load, naming the field; the model before keeps serving.
        broken = copy.deepcopy(cfg)
        raw = bytearray(base64.b64decode(retrained(-1.0)))
        raw[20] ^= 0xFF
        broken["routers"]["smart"]["learned"]["model"] = base64.b64encode(bytes(raw)).decode()
        gw.reconfigure(broken, rejected=True)
        assert gw.stats(settle=False)[gw.REJECTED] == 1
        assert "routers.smart.learned.model" in gw.logs()
        assert abs(route_score() - loaded) < 1e-6
    finally:
        gw.stop()
