"""Learned router feedback through Envoy (2 workers): scores of weak-pool answers
(POST /v1/feedback) teach the router to rank a domain it ranked at random;
exploration sends a share of would-be-strong prompts to weak; and the abuses of
the feedback endpoint are refused (another tenant's request, a request refused
before routing, a client-chosen id, too many scores a minute)."""
import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import KEYS, base_config, clusters_for
from harness import Gateway, chat

# A made-up domain the shipped model never saw: the task verb decides whether the
# weak model copes, the filler's length says nothing.
HARD = ["Prove that", "Derive a closed form for", "Find a counterexample to the claim that",
        "Write a formal proof that", "Compute the exact asymptotic bound of", "Show rigorously that",
        "Give an optimal algorithm for", "Determine every integer solution of"]
EASY = ["Summarise in two sentences:", "Translate into French:", "Rewrite more politely:",
        "Give a title for this text:", "Correct the spelling in:", "List the nouns in:",
        "Make this sentence shorter:", "Say whether this is positive or negative:"]
LEXICON = ("the team river market garden letter winter station window number village paper music "
           "system morning table question history friend teacher bridge story island travel energy "
           "picture mountain kitchen doctor evening forest machine engine signal planet ocean light "
           "stone summer city road school family water house field child voice heart image language "
           "value order group party reason minute member power level office theory process result").split()


def domain(n, seed=22):
    """n (prompt, weak correct, strong correct): hard verbs leave the weak model right
    25% of the time, easy ones 90%; strong is right 90%; filler of 5..60 words drawn
    independently (fixed seed: the same prompts and outcomes every run)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hard = rng.random() < 0.5
        verb = rng.choice(HARD if hard else EASY)
        words = " ".join(rng.choice(LEXICON) for _ in range(rng.randint(5, 60)))
        weak = rng.random() < (0.25 if hard else 0.9)
        strong = rng.random() < 0.9
        out.append((f"{verb} {words}.", weak, strong))
    return out


def apgr(scores, weak, strong):
    """Mean PGR over strong shares 10%..100%, the top-scored prompts going to strong
    (ties in prompt order), as router/data.py computes it."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])
    base, top = sum(weak) / n, sum(strong) / n
    total = 0.0
    for k in range(1, 11):
        m = round(k * n / 10)
        q = (sum(weak) + sum(strong[i] - weak[i] for i in order[:m])) / n
        total += (q - base) / (top - base)
    return total / 10


def routers():
    learned = {"strong": "strong", "weak": "weak"}
    return {
        # Every prompt to weak, so every answer can be scored (the curve's 1,000 labels).
        "learn": {"rules": [], "learned": {**learned, "threshold": 1.0, "feedback_per_minute": 5000}},
        # Every prompt would go to strong: only exploration sends some to weak.
        "explore": {"rules": [], "learned": {**learned, "threshold": 0.0}},
        "no_explore": {"rules": [], "learned": {**learned, "threshold": 0.0, "explore": 0.0}},
    }


def pools():
    return {"strong": {"members": [{"provider": "gamma", "model": "gpt-4"}]},
            "weak": {"members": [{"provider": "beta", "model": "mixtral"}]}}


@pytest.fixture(scope="module")
def fb_gw(mock):
    # Its own gateway: learning lives in shared data per router and must start empty.
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["pools"] = pools()
    cfg["routers"] = routers()
    g = Gateway(cfg, clusters_for(mock), KEYS)
    yield g
    g.stop()


def ask(client, gw, router, prompt, headers=None):
    r = client.post(gw.base + "/v1/chat/completions", json=chat(router, prompt), headers=headers or {})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchboard-rule"] == "learned"
    return r


def score(client, gw, request_id, value, headers=None):
    return client.post(gw.base + "/v1/feedback", json={"request_id": request_id, "score": value},
                       headers=headers or {})


def test_scores_of_weak_answers_teach_the_router_a_domain_it_ranked_at_random(fb_gw):
    rows = domain(1400)
    train, held = rows[:1000], rows[1000:]
    weak = [float(w) for _, w, _ in held]
    strong = [float(s) for _, _, s in held]
    length = apgr([float(len(p)) for p, _, _ in held], weak, strong)
    curve = {}
    with httpx.Client(timeout=20, limits=httpx.Limits(max_connections=8)) as client, ThreadPoolExecutor(8) as ex:

        def measure():
            time.sleep(0.25)  # every worker rereads the learning (100 ms)
            answers = list(ex.map(lambda row: ask(client, fb_gw, "learn", row[0]), held))
            return apgr([float(r.headers["x-switchboard-route-score"]) for r in answers], weak, strong)

        def answer_and_score(row):
            r = ask(client, fb_gw, "learn", row[0])
            return r.headers["x-switchboard-pool"], score(client, fb_gw, r.headers["x-switchboard-feedback-id"],
                                                           1.0 if row[1] else 0.0).status_code

        def learn(batch):
            # Each answer scored right away (memory is a bounded set of slots).
            results = list(ex.map(answer_and_score, batch))
            assert results == [("weak", 204)] * len(batch), results

        curve[0] = measure()
        done = 0
        for upto in (250, 500, 1000):
            learn(train[done:upto])
            done = upto
            curve[upto] = measure()
    print(f"APGR on 400 held-out prompts by scores learned: {curve}; prompt length: {length:.3f}")
    assert curve[0] < 0.62, curve  # the shipped model ranks this domain about at random (0.55)
    assert curve[1000] - curve[0] >= 0.08, curve
    assert curve[1000] >= length, (curve, length)


def test_explore_sends_that_share_of_would_be_strong_prompts_to_weak(fb_gw):
    prompts = [p for p, _, _ in domain(400, seed=5)]
    with httpx.Client(timeout=20, limits=httpx.Limits(max_connections=8)) as client, ThreadPoolExecutor(8) as ex:
        explored = list(ex.map(lambda p: ask(client, fb_gw, "explore", p).headers["x-switchboard-pool"], prompts))
        plain = list(ex.map(lambda p: ask(client, fb_gw, "no_explore", p).headers["x-switchboard-pool"], prompts))
        # An explored prompt is explored every time (chosen by the prompt), and its answer is scorable.
        first = next(p for p, pool in zip(prompts, explored) if pool == "weak")
        again = ask(client, fb_gw, "explore", first)
        assert again.headers["x-switchboard-pool"] == "weak"
        assert score(client, fb_gw, again.headers["x-switchboard-feedback-id"], 0.0).status_code == 204
    share = explored.count("weak") / len(prompts)
    print(f"explore 0.05: {share:.3f} of 400 would-be-strong prompts went to weak")
    assert 0.02 <= share <= 0.09, share
    assert plain.count("weak") == 0


def test_only_the_gateway_made_feedback_id_is_scorable_not_a_client_chosen_id(fb_gw):
    with httpx.Client(timeout=20) as client:
        r = ask(client, fb_gw, "learn", "Prove that the river is long.", {"x-request-id": "my-own-id-1"})
        assert r.headers["x-switchboard-request-id"] == "my-own-id-1"
        made = r.headers["x-switchboard-feedback-id"]
        # Worker lane and sequence number, then 64 random bits: knowing one id does not give another.
        assert made != "my-own-id-1" and len(made) == 32 and int(made, 16) >= 0
        for wrong_id in ("my-own-id-1", made[:16] + ("0" * 16 if made[16:] != "0" * 16 else "1" * 16)):
            wrong = score(client, fb_gw, wrong_id, 0.0)
            assert wrong.status_code == 404, wrong.text
            assert wrong.json()["error"]["code"] == "request_not_found"
        assert score(client, fb_gw, made, 0.0).status_code == 204
        assert score(client, fb_gw, made, 0.0).status_code == 409


KEY_A, KEY_B = "sk-learn-a-secret", "sk-learn-b-secret"
LIMIT = 5


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def tenant_gw(mock):
    cfg = base_config(health={"consecutive_failures": 1000})
    cfg["pools"] = pools()
    cfg["routers"] = {"fb": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "threshold": 1.0,
                                                       "feedback_per_minute": LIMIT}}}
    cfg["tenants"] = {"team-a": {"keys_sha256": [sha(KEY_A)]},
                      "team-b": {"keys_sha256": [sha(KEY_B)], "rpm": 1}}
    g = Gateway(cfg, clusters_for(mock), KEYS)
    yield g
    g.stop()


A = {"authorization": f"Bearer {KEY_A}"}
B = {"authorization": f"Bearer {KEY_B}"}


def test_only_the_tenant_that_sent_a_routed_request_can_score_it(tenant_gw):
    with httpx.Client(timeout=20) as client:
        mine = ask(client, tenant_gw, "fb", "Prove that the river is long.", A).headers["x-switchboard-feedback-id"]
        r = score(client, tenant_gw, mine, 0.0, B)
        assert r.status_code == 404, r.text
        assert score(client, tenant_gw, mine, 0.0, A).status_code == 204
        # team-b's second request this minute is refused before routing: it gets no
        # feedback id, and neither its request id nor anything else scores it.
        first = client.post(tenant_gw.base + "/v1/chat/completions", json=chat("fb", "Prove it."), headers=B)
        refused = client.post(tenant_gw.base + "/v1/chat/completions", json=chat("fb", "Prove it."), headers=B)
        assert first.status_code == 200 and refused.status_code == 429, refused.text
        assert "x-switchboard-feedback-id" not in refused.headers
        r = score(client, tenant_gw, refused.headers["x-switchboard-request-id"], 0.0, B)
        assert r.status_code == 404, r.text
        assert score(client, tenant_gw, first.headers["x-switchboard-feedback-id"], 0.0, B).status_code == 204


def test_scores_are_limited_per_tenant_and_minute(tenant_gw):
    # Not across a minute boundary: the limit counts per calendar minute.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    with httpx.Client(timeout=20) as client:
        ids = [ask(client, tenant_gw, "fb", f"Summarise in two sentences: story {i}.", A)
               .headers["x-switchboard-feedback-id"] for i in range(LIMIT + 1)]
        # The ownership test above may have used one of this minute's scores.
        answers = [score(client, tenant_gw, rid, 1.0, A) for rid in ids]
    codes = [r.status_code for r in answers]
    assert codes.count(204) <= LIMIT and codes[-1] == 429, codes
    assert set(codes) == {204, 429}, codes
    assert answers[-1].json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
