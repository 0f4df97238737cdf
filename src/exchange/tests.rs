//! The exchange against an in-memory [`Shared`]: health, load and counters
//! kept in maps, the clock set by the test.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::*;
use crate::api::request::ParsedRequest;
use crate::config::tests::ENV;
use crate::config::{Config, Member};
use crate::doors::DoorAnswer;
use crate::routing::exhausted::PassedOver;
use crate::routing::health::retry_after_until_ms;
use crate::routing::{Availability, LatencyKind, LiveStats, MemberHealth, Plan};

const TRIAL_RECHECK_MS: u64 = 1_000;

/// What requests share, in memory.
struct Mem {
    config: Config,
    now: Cell<u64>,
    health: RefCell<HashMap<String, MemberHealth>>,
    in_flight: RefCell<HashMap<String, i64>>,
    latency: RefCell<Vec<(MemberRef, f64)>>,
    counts: RefCell<Vec<Count>>,
    /// (member, waited) the pool's evidence says is a hung member's failure.
    hung: Cell<bool>,
}

impl Mem {
    fn new(pools: &str) -> Mem {
        let json = format!(
            r#"{{"providers": {{
                  "a": {{"kind": "openai", "cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}},
                  "b": {{"kind": "openai", "cluster": "b", "host": "b", "api_key_env": "BETA_KEY"}},
                  "c": {{"kind": "anthropic", "cluster": "c", "host": "c", "api_key_env": "ALPHA_KEY"}}
                }}, "pools": {{{pools}}}}}"#
        );
        Mem {
            config: Config::parse(json.as_bytes(), &ENV).unwrap(),
            now: Cell::new(1_000_000),
            health: RefCell::default(),
            in_flight: RefCell::default(),
            latency: RefCell::default(),
            counts: RefCell::default(),
            hung: Cell::new(false),
        }
    }

    fn health_of(&self, id: &str) -> MemberHealth {
        self.health.borrow().get(id).copied().unwrap_or_default()
    }

    fn counted(&self, what: Count) -> usize {
        self.counts.borrow().iter().filter(|c| **c == what).count()
    }
}

impl LiveStats for Mem {
    fn availability(&self, member: &Member) -> Availability {
        self.health_of(&member.id).availability(self.now.get())
    }
}

impl Shared for Mem {
    fn config(&self) -> &Config {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn pick(&self, plan: &mut Plan, _now_ms: u64) -> Option<Picked> {
        let member = plan.next_member(&self.config, self, 0)?;
        let health = self.health_of(self.member_id(member));
        Some(Picked { member, health })
    }

    fn record(&self, picked: Picked, status: u16, failed: bool, retry_after: Option<&str>, now_ms: u64, _: &str) {
        let Some(pool) = self.config.pool_at(picked.member.pool) else { return };
        let id = self.member_id(picked.member).to_string();
        let mut health = self.health.borrow_mut();
        let h = health.entry(id).or_default();
        if !failed {
            h.record_success();
            return;
        }
        let hold = retry_after.filter(|_| status == 429 || status == 503).and_then(|v| retry_after_until_ms(v, now_ms));
        match hold {
            Some(until) => h.record_held_failure(now_ms, until, &pool.health),
            None => h.record_failure(now_ms, &pool.health),
        };
    }

    fn note_answered(&self, _: MemberRef, _: u64, _: u64) {}

    fn abort_is_failure(&self, _: MemberRef, _: u64, _: u64) -> bool {
        self.hung.get()
    }

    fn next_try_ms(&self, member_id: &str, now_ms: u64) -> Option<u64> {
        self.health_of(member_id).next_try_ms(now_ms, TRIAL_RECHECK_MS)
    }

    fn passed_over(&self, member_id: &str, now_ms: u64) -> PassedOver {
        let h = self.health_of(member_id);
        PassedOver {
            next_try_ms: h.next_try_ms(now_ms, TRIAL_RECHECK_MS),
            held_by_provider: h.held_by_provider(now_ms),
        }
    }

    fn begin_in_flight(&self, member: MemberRef) {
        *self.in_flight.borrow_mut().entry(self.member_id(member).to_string()).or_default() += 1;
    }

    fn end_in_flight(&self, member: MemberRef) {
        *self.in_flight.borrow_mut().entry(self.member_id(member).to_string()).or_default() -= 1;
    }

    fn observe_latency(&self, member: MemberRef, _: LatencyKind, sample_ms: f64) {
        self.latency.borrow_mut().push((member, sample_ms));
    }

    fn count(&self, what: Count) {
        self.counts.borrow_mut().push(what);
    }
}

const TWO: &str = r#""main": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#;

/// An exchange routed by `body` (a chat request) with its plan made at the shared clock.
fn exchange(sh: &Mem, body: &str) -> Exchange {
    let parsed = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
    let plan = Plan::new(&sh.config, &parsed, sh.now.get()).unwrap();
    Exchange { plan: Some(plan), request_id: "req-1".into(), ..Exchange::default() }
}

fn header<'a>(step: &'a Step, name: &str) -> Option<&'a str> {
    match step {
        Step::Reply { headers, .. } => headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()),
        _ => None,
    }
}

fn status(step: &Step) -> u16 {
    match step {
        Step::Reply { status, .. } => *status,
        _ => 0,
    }
}

/// Starts the first attempt as routing does.
fn first(sh: &Mem, ex: &mut Exchange) -> Attempt {
    let now = sh.now.get();
    let picked = ex.plan.as_mut().and_then(|p| sh.pick(p, now)).unwrap();
    ex.begin(sh, picked, now)
}

#[test]
fn an_attempt_is_counted_released_and_logged_once_it_ends() {
    let sh = Mem::new(
        r#""main": {"strategy": "least_busy", "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let attempt = first(&sh, &mut ex);
    let id = sh.member_id(attempt.picked.member).to_string();
    assert_eq!(sh.in_flight.borrow().get(&id), Some(&1));
    assert_eq!(sh.counted(Count::Attempt(attempt.picked.member)), 1);
    sh.now.set(sh.now.get() + 250);
    assert!(!ex.finish(&sh, &attempt, 200, None, sh.now.get()));
    assert_eq!(sh.in_flight.borrow().get(&id), Some(&0));
    assert_eq!(ex.obs.attempts, vec![(attempt.picked.member, 200, 250)]);
    assert_eq!(ex.plan.as_ref().unwrap().attempts.len(), 1);
    let headers = ex.result_headers(&sh, attempt.picked.member, Some((0.25, "")));
    assert!(headers.contains(&("x-switchboard-attempts", "1".into())));
    assert!(headers.contains(&("x-switchboard-route-score", "0.250".into())));
    assert!(headers.contains(&("x-switchboard-request-id", "req-1".into())));
}

#[test]
fn a_lowest_latency_pool_measures_its_attempts() {
    let sh = Mem::new(
        r#""main": {"strategy": "lowest_latency", "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let mut attempt = first(&sh, &mut ex);
    attempt.first_byte_ms = sh.now.get() + 40;
    ex.finish(&sh, &attempt, 200, None, sh.now.get() + 100);
    assert_eq!(sh.latency.borrow().len(), 1);
}

#[test]
fn a_failover_status_moves_on_to_the_next_member() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let failed = first(&sh, &mut ex);
    let now = sh.now.get();
    assert!(ex.finish(&sh, &failed, 503, None, now));
    let next = ex.next_attempt(&sh, now).unwrap();
    assert_ne!(next.picked.member, failed.picked.member);
    assert_eq!(sh.counted(Count::Failover(failed.picked.member)), 1);
    assert!(!ex.finish(&sh, &next, 200, None, now));
    let headers = ex.result_headers(&sh, next.picked.member, None);
    assert!(headers.contains(&("x-switchboard-attempts", "2".into())));
    assert_eq!(sh.health_of(sh.member_id(failed.picked.member)).failures, 1);
}

#[test]
fn a_status_the_pool_does_not_retry_on_is_the_answer() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let attempt = first(&sh, &mut ex);
    assert!(!ex.finish(&sh, &attempt, 400, None, sh.now.get()));
}

#[test]
fn a_connect_failure_or_first_byte_timeout_fails_over() {
    // No response at all (a reset, a refused connection, a dispatched call timing out) is status 0;
    // the router's first-byte timeout is Envoy's 504.
    for status in [0, 504] {
        let sh = Mem::new(
            r#""main": {"retry_on": [503], "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
        );
        let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
        let attempt = first(&sh, &mut ex);
        let failed = ex.finish(&sh, &attempt, status, None, sh.now.get());
        assert_eq!(failed, status == 0, "status {status}");
    }
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let attempt = first(&sh, &mut ex);
    assert!(ex.finish(&sh, &attempt, 504, None, sh.now.get()));
    assert!(ex.next_attempt(&sh, sh.now.get()).is_some());
}

#[test]
fn a_member_that_cannot_be_started_is_a_failed_attempt() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let attempt = first(&sh, &mut ex);
    ex.start_failed(&sh, &attempt, "failover call", &ApiError::internal("no cluster"), sh.now.get());
    assert_eq!(ex.plan.as_ref().unwrap().attempts.first().map(|a| a.status), Some(0));
    assert_eq!(sh.health_of(sh.member_id(attempt.picked.member)).failures, 1);
}

#[test]
fn exhausted_says_when_the_gateway_tries_again() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let now = sh.now.get();
    let a = first(&sh, &mut ex);
    ex.finish(&sh, &a, 503, Some("7"), now);
    let b = ex.next_attempt(&sh, now).unwrap();
    ex.finish(&sh, &b, 503, Some("3"), now);
    assert!(ex.next_attempt(&sh, now).is_none());
    let step = ex.exhausted(&sh);
    assert_eq!(status(&step), 503);
    assert_eq!(header(&step, "retry-after"), Some("3"));
    assert_eq!(header(&step, "x-should-retry"), Some("true"));
    assert_eq!(header(&step, "x-switchboard-attempts"), Some("2"));
    assert!(ex.obs.exhausted);
    assert_eq!(ex.obs.error, Some(ErrorCode::NoHealthyUpstream));
    assert_eq!(sh.counted(Count::Exhausted(0)), 1);
    assert!(matches!(ex.state, State::Answered));
}

#[test]
fn every_member_held_by_its_provider_is_a_429() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let now = sh.now.get();
    let a = first(&sh, &mut ex);
    ex.finish(&sh, &a, 429, Some("20"), now);
    let b = ex.next_attempt(&sh, now).unwrap();
    ex.finish(&sh, &b, 429, Some("5"), now);
    let step = ex.exhausted(&sh);
    assert_eq!(status(&step), 429);
    assert_eq!(header(&step, "retry-after"), Some("5"));
    assert_eq!(ex.obs.error, Some(ErrorCode::RateLimitExceeded));

    // The next request finds both held: none is tried, and the answer is still a 429.
    let mut later = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    assert!(later.plan.as_mut().and_then(|p| sh.pick(p, now + 1_000)).is_none());
    sh.now.set(now + 1_000);
    let step = later.exhausted(&sh);
    assert_eq!(status(&step), 429);
    assert_eq!(header(&step, "retry-after"), Some("4"));
}

#[test]
fn every_member_overloaded_is_a_529_on_the_messages_door_only() {
    for (door, expected) in [(Door::Messages, 529), (Door::Chat, 503)] {
        let sh = Mem::new(TWO);
        let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
        ex.door = door;
        let now = sh.now.get();
        let a = first(&sh, &mut ex);
        ex.finish(&sh, &a, 529, None, now);
        let b = ex.next_attempt(&sh, now).unwrap();
        ex.finish(&sh, &b, 529, None, now);
        assert_eq!(status(&ex.exhausted(&sh)), expected);
    }
}

#[test]
fn no_attempt_after_the_deadline() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let a = first(&sh, &mut ex);
    let deadline = ex.plan.as_ref().unwrap().deadline_ms;
    ex.finish(&sh, &a, 503, None, deadline);
    assert!(ex.next_attempt(&sh, deadline).is_none());
}

#[test]
fn a_client_that_left_unanswered_judges_no_one_unless_the_member_hung() {
    for hung in [false, true] {
        let sh = Mem::new(TWO);
        sh.hung.set(hung);
        let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
        let a = first(&sh, &mut ex);
        sh.now.set(sh.now.get() + 30_000);
        ex.left_unanswered(&sh, &a);
        assert_eq!(ex.obs.attempts, vec![(a.picked.member, 0, 30_000)]);
        let failures = sh.health_of(sh.member_id(a.picked.member)).failures;
        assert_eq!(failures, u64::from(hung), "hung {hung}");
        assert_eq!(ex.plan.as_ref().unwrap().attempts.len(), usize::from(hung));
    }
}

#[test]
fn a_cut_answer_is_the_members_failure_and_a_502_for_the_client() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let a = first(&sh, &mut ex);
    ex.cut_answer(&sh, &a, sh.now.get());
    assert_eq!((ex.obs.status, ex.obs.cut), (CUT_STATUS, true));
    assert_eq!(sh.counted(Count::CutAnswer(a.picked.member)), 1);
    assert_eq!(sh.health_of(sh.member_id(a.picked.member)).failures, 1);
}

#[test]
fn an_error_reply_carries_the_doors_shape_and_the_tenants_rate_headers() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.door = Door::Messages;
    ex.tenant =
        Some(Admission { rate_headers: vec![("x-ratelimit-limit-requests", "10".into())], ..Admission::default() });
    let step = ex.error_reply(&sh, &ApiError::unavailable("down").with_retry_after(2));
    assert_eq!(header(&step, "retry-after"), Some("2"));
    assert_eq!(header(&step, "x-ratelimit-limit-requests"), Some("10"));
    let Step::Reply { body, .. } = step else { panic!("not a reply") };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(sh.counted(Count::LocalError(ErrorCode::NoHealthyUpstream)), 1);
}

#[test]
fn a_member_of_the_doors_api_is_served_natively_without_an_adapter() {
    let sh =
        Mem::new(r#""main": {"members": [{"provider": "c", "model": "claude"}, {"provider": "a", "model": "m1"}]}"#);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.door = Door::Messages;
    let claude = MemberRef::new(0, 0);
    let picked = Picked { member: claude, health: MemberHealth::default() };
    let attempt = ex.begin(&sh, picked, sh.now.get());
    assert!(attempt.native && attempt.adapter.is_none());
    ex.door = Door::Chat;
    let attempt = ex.begin(&sh, picked, sh.now.get());
    assert!(!attempt.native && attempt.adapter.is_some());
}

// The answer chain.

/// Members: `a/m1` (OpenAI), `c/claude` (Anthropic, translated).
const MIXED: &str = r#""main": {"members": [{"provider": "a", "model": "m1"}, {"provider": "c", "model": "claude"}]}"#;
const OPENAI: MemberRef = MemberRef { pool: 0, member: 0 };
const ANTHROPIC: MemberRef = MemberRef { pool: 0, member: 1 };

/// An exchange routed as `Filter::route` leaves it: door, shape, the answer's readers.
fn routed(sh: &Mem, door: Door, stream: bool, include_usage: bool) -> Exchange {
    let mut ex = exchange(sh, r#"{"model":"main","messages":[]}"#);
    ex.door = door;
    ex.shape = AnswerShape { stream, include_usage, choices: 1 };
    ex.answer.shape = ex.shape;
    ex.answer.api = door.native_api();
    ex.answer.door = DoorAnswer::new(door, "main", stream, 1);
    ex.answer.tail = Some(crate::api::usage::Tail::default());
    ex
}

fn attempt_on(sh: &Mem, ex: &mut Exchange, member: MemberRef) -> Attempt {
    ex.begin(sh, Picked { member, health: MemberHealth::default() }, sh.now.get())
}

const CHAT_BODY: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
const CLAUDE_BODY: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m1\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

const USAGE_CHUNK: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_whole_openai_answer_passes_as_it_is_on_the_chat_door() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, false, false);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    let whole = ex.answer.whole(&mut a, 200, Some("application/json"), CHAT_BODY.as_bytes().to_vec(), true);
    assert_eq!(
        whole,
        Whole { verdict: 200, content_type: "application/json".into(), body: CHAT_BODY.as_bytes().to_vec() }
    );
}

#[test]
fn a_whole_anthropic_answer_is_translated_and_an_unreadable_one_is_a_502() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, false, false);
    let mut a = attempt_on(&sh, &mut ex, ANTHROPIC);
    let whole = ex.answer.whole(&mut a, 200, Some("application/json"), CLAUDE_BODY.as_bytes().to_vec(), true);
    assert_eq!(whole.verdict, 200);
    let body: serde_json::Value = serde_json::from_slice(&whole.body).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    ex.answer.note_adapter_usage(a.adapter.as_ref());
    assert_eq!(ex.answer.usage().map(|t| (t.prompt, t.completion)), Some((3, 2)));

    let mut b = attempt_on(&sh, &mut ex, ANTHROPIC);
    assert_eq!(ex.answer.whole(&mut b, 200, None, b"not json".to_vec(), true).verdict, 502);
}

#[test]
fn a_whole_answer_on_the_messages_door_is_put_in_anthropics_shape() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Messages, false, false);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    let whole = ex.answer.whole(&mut a, 200, Some("application/json"), CHAT_BODY.as_bytes().to_vec(), true);
    let body: serde_json::Value = serde_json::from_slice(&whole.body).unwrap();
    assert_eq!((whole.verdict, body["type"].as_str()), (200, Some("message")));
    // A member that speaks the door's API natively answers in it already: nothing is translated.
    let mut native = attempt_on(&sh, &mut ex, ANTHROPIC);
    assert!(native.native);
    let whole = ex.answer.whole(&mut native, 200, Some("application/json"), CLAUDE_BODY.as_bytes().to_vec(), true);
    assert_eq!(whole.body, CLAUDE_BODY.as_bytes());
}

#[test]
fn a_whole_stream_cut_short_fails_over_or_gets_its_end() {
    let sh = Mem::new(MIXED);
    let cut = chunk(r#"{"content":"hi"}"#, "null");
    for (fails_over, verdict) in [(true, 502), (false, 200)] {
        let mut ex = routed(&sh, Door::Chat, true, true);
        let mut a = attempt_on(&sh, &mut ex, OPENAI);
        let whole = ex.answer.whole(&mut a, 200, Some("text/event-stream"), cut.as_bytes().to_vec(), fails_over);
        assert_eq!(whole.verdict, verdict, "fails over: {fails_over}");
        if !fails_over {
            assert!(text(&whole.body).ends_with("data: [DONE]\n\n"), "{}", text(&whole.body));
        }
    }
}

#[test]
fn a_usage_chunk_the_client_did_not_ask_for_is_read_and_taken_out() {
    let sh = Mem::new(MIXED);
    let stream =
        format!("{}{}{USAGE_CHUNK}data: [DONE]\n\n", chunk(r#"{"content":"hi"}"#, "null"), chunk("{}", "\"stop\""));
    // Whole, from a dispatched call.
    let mut ex = routed(&sh, Door::Chat, true, false);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    let whole = ex.answer.whole(&mut a, 200, Some("text/event-stream"), stream.as_bytes().to_vec(), true);
    assert!(!text(&whole.body).contains("prompt_tokens"));
    assert_eq!(ex.answer.usage().map(|t| (t.prompt, t.completion)), Some((3, 2)));
    // Relayed by the router, chunk by chunk.
    let mut ex = routed(&sh, Door::Chat, true, false);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    ex.answer.start(&a, 200);
    let (first, rest) = stream.split_at(40);
    let mut out = Vec::new();
    for (piece, end) in [(first, false), (rest, true)] {
        match ex.answer.relay(&mut a, piece.as_bytes(), end, None) {
            Relayed::Out(Some(bytes)) => out.extend_from_slice(&bytes),
            Relayed::Out(None) => out.extend_from_slice(piece.as_bytes()),
            Relayed::Broken(_) => panic!("not watched"),
        }
    }
    assert!(!text(&out).contains("prompt_tokens"));
    assert!(text(&out).ends_with("data: [DONE]\n\n"));
    assert_eq!(ex.answer.usage().map(|t| (t.prompt, t.completion)), Some((3, 2)));
}

#[test]
fn a_relayed_stream_cut_short_gets_its_end_and_reads_failed() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, true, true);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    ex.answer.start(&a, 200);
    let cut = chunk(r#"{"content":"hi"}"#, "null");
    let Relayed::Out(Some(out)) = ex.answer.relay(&mut a, cut.as_bytes(), true, None) else { panic!("no end added") };
    assert!(text(&out).starts_with(&cut) && text(&out).ends_with("data: [DONE]\n\n"));
    assert!(ex.answer.stream_end.as_ref().is_some_and(crate::api::stream_end::StreamEnd::failed));
}

#[test]
fn a_relayed_stream_on_the_messages_door_becomes_anthropic_events() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Messages, true, false);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    ex.answer.start(&a, 200);
    assert!(ex.answer.reads(&a));
    let stream =
        format!("{}{}{USAGE_CHUNK}data: [DONE]\n\n", chunk(r#"{"content":"hi"}"#, "null"), chunk("{}", "\"stop\""));
    let Relayed::Out(Some(out)) = ex.answer.relay(&mut a, stream.as_bytes(), true, None) else {
        panic!("untranslated")
    };
    let out = text(&out);
    assert!(out.contains("event: message_start") && out.contains("event: message_stop"), "{out}");
}

#[test]
fn a_plain_relayed_answer_is_read_only_for_its_usage() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, false, false);
    let a = attempt_on(&sh, &mut ex, OPENAI);
    ex.answer.start(&a, 200);
    assert!(ex.answer.stream_end.is_none() && ex.answer.usage_chunks.is_none());
    ex.answer.tail = None;
    assert!(!ex.answer.reads(&a));
}

#[test]
fn a_held_translated_body_is_the_doors_or_the_members_502() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, false, false);
    let mut a = attempt_on(&sh, &mut ex, ANTHROPIC);
    let (out, status, unreadable) = ex.answer.hold(&mut a, 200, CLAUDE_BODY.as_bytes().to_vec());
    assert_eq!((status, unreadable), (200, false));
    assert!(text(&out).contains("chat.completion"));
    assert_eq!(ex.answer.usage().map(|t| (t.prompt, t.completion)), Some((3, 2)));
    let mut b = attempt_on(&sh, &mut ex, ANTHROPIC);
    let (_, status, unreadable) = ex.answer.hold(&mut b, 200, b"{".to_vec());
    assert_eq!((status, unreadable), (502, true));
}

#[test]
fn a_watched_stream_that_breaks_is_handed_to_the_continuation() {
    let sh = Mem::new(MIXED);
    let mut ex = routed(&sh, Door::Chat, true, true);
    let mut a = attempt_on(&sh, &mut ex, OPENAI);
    ex.answer.start(&a, 200);
    let mut watch = crate::routing::resume::StreamWatch::default();
    // Text, then the stream ends without a finish: broken after its first byte.
    let cut = chunk(r#"{"content":"hello"}"#, "null");
    let relayed = ex.answer.relay(&mut a, cut.as_bytes(), true, Some(&mut watch));
    assert!(matches!(relayed, Relayed::Broken(_)), "{relayed:?}");
    assert_eq!(watch.text(), "hello");
}

// Timers: hedge and stream idle.

#[test]
fn a_hedge_goes_to_another_member_and_its_loser_is_nobodys_failure() {
    let sh = Mem::new(
        r#""main": {"hedge_after_ms": 500, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    assert_eq!(hedge_at(&sh.config, 0, 1_000), Some(1_500));
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let routed = first(&sh, &mut ex);
    let picked = ex.hedge_pick(&sh, routed.picked.member, sh.now.get()).unwrap();
    assert_ne!(picked.member, routed.picked.member);
    // The routed member was counted as tried for that pick only.
    assert!(ex.plan.as_ref().unwrap().attempts.is_empty());
    let hedge = ex.begin(&sh, picked, sh.now.get());
    ex.abandon_hedged(&sh, &routed);
    assert!(!ex.finish(&sh, &hedge, 200, None, sh.now.get()));
    let headers = ex.result_headers(&sh, hedge.picked.member, None);
    assert!(headers.contains(&("x-switchboard-attempts", "2".into())));
    assert_eq!(sh.health_of(sh.member_id(routed.picked.member)), MemberHealth::default());
    // Past the deadline there is no hedge.
    let deadline = ex.plan.as_ref().unwrap().deadline_ms;
    assert!(ex.hedge_pick(&sh, routed.picked.member, deadline).is_none());
}

#[test]
fn a_pool_without_hedge_after_does_not_hedge() {
    let sh = Mem::new(TWO);
    assert_eq!(hedge_at(&sh.config, 0, 1_000), None);
}

#[test]
fn a_silent_stream_is_cut_at_its_idle_limit_and_a_live_one_is_looked_at_again() {
    let sh = Mem::new(
        r#""main": {"stream_idle_timeout_ms": 2000, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    assert_eq!(IdleWatch::start(&sh.config, 0, false, 200, 0), None, "not a stream");
    assert_eq!(IdleWatch::start(&sh.config, 0, true, 404, 0), None, "not a success");
    let mut watch = IdleWatch::start(&sh.config, 0, true, 200, 10_000).unwrap();
    assert_eq!(watch.due_at(), 12_000);
    watch.last_ms = 11_000;
    assert_eq!(watch.check(12_000), Idle::WakeAt(13_000));
    assert_eq!(watch.check(13_500), Idle::Silent(2_500));
    assert_eq!(IdleWatch::start(&Mem::new(TWO).config, 0, true, 200, 0), None, "no limit");
}

// Before routing: feedback bodies, what admission reserves, refusals.

#[test]
fn a_feedback_body_names_its_bad_field() {
    assert_eq!(feedback_body(br#"{"request_id":"r1","score":0.5}"#).unwrap(), ("r1".to_string(), 0.5));
    for (body, param) in [
        (r#"{"score":1}"#, "request_id"),
        (r#"{"request_id":"","score":1}"#, "request_id"),
        (r#"{"request_id":"r1"}"#, "score"),
        (r#"{"request_id":"r1","score":"high"}"#, "score"),
        (r#"{"request_id":"r1","score":1.5}"#, "score"),
    ] {
        let e = feedback_body(body.as_bytes()).unwrap_err();
        assert_eq!((e.status, e.param), (400, Some(param)), "{body}");
    }
    assert_eq!(feedback_body(b"nope").unwrap_err().code, ErrorCode::InvalidJson);
}

#[test]
fn admission_reserves_the_prompt_and_the_output_asked_for() {
    let body = r#"{"model":"main","messages":[],"max_tokens":100}"#;
    let parsed = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
    assert_eq!(Some(expected_tokens(&parsed, 400)).map(|t| (t.prompt, t.completion)), Some((100, 100)));
    let parsed = ParsedRequest::parse(br#"{"model":"main","messages":[]}"#, Endpoint::ChatCompletions).unwrap();
    assert_eq!(expected_tokens(&parsed, 8).completion, 1024);
}

#[test]
fn an_answer_left_open_is_the_clients_doing_or_the_members_cut() {
    for (details, cut) in [("downstream_remote_disconnect", false), ("upstream_reset_after_response_started", true)] {
        let sh = Mem::new(TWO);
        let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
        let a = first(&sh, &mut ex);
        let member = a.picked.member;
        ex.state = State::Relaying { attempt: a, status: 200 };
        ex.end_unfinished(&sh, || details.to_string());
        assert_eq!(ex.obs.cut, cut, "{details}");
        assert_eq!(sh.health_of(sh.member_id(member)).failures, u64::from(cut), "{details}");
        assert_eq!(ex.obs.attempts.len(), 1);
    }
    // Nothing open: nothing to judge, and the details are not read.
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.state = State::Answered;
    ex.end_unfinished(&sh, || unreachable!("read"));
    assert!(ex.obs.attempts.is_empty());
}
