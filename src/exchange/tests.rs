//! The exchange against an in-memory [`Shared`]: health, load and counters
//! kept in maps, the clock set by the test.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::*;
use crate::api::request::ParsedRequest;
use crate::api::response_ids::Holder;
use crate::config::tests::ENV;
use crate::config::{Config, Member};
use crate::doors::DoorAnswer;
use crate::routing::exhausted::PassedOver;
use crate::routing::health::retry_after_until_ms;
use crate::routing::{Availability, LatencyKind, LiveStats, MemberHealth, Plan};
use crate::tenant::limits::{Refusal, Window};

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

fn upstream(path: &str, body: &[u8], headers: Vec<(&'static str, String)>) -> crate::providers::UpstreamRequest {
    crate::providers::UpstreamRequest { path: path.into(), authority: "a.example".into(), headers, body: body.to_vec() }
}

fn pairs<'a>(headers: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))
}

#[test]
fn a_rewrite_sets_the_members_headers_and_removes_the_clients_unlisted_ones() {
    let sh = Mem::new(TWO);
    let ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let member = MemberRef::new(0, 1);
    let up = upstream("/v1/chat/completions", b"{\"model\":\"m2\"}", vec![("authorization", "Bearer k".into())]);
    let client = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gateway"),
        ("content-type", "text/plain"),
        ("authorization", "Bearer client"),
        ("user-agent", "sdk"),
        ("x-secret", "1"),
    ];
    let rewrite = ex.rewrite(&sh, member, &up, (30_000, Some(5_000)), 20, pairs(&client)).unwrap();
    assert_eq!(rewrite.body, Some(&b"{\"model\":\"m2\"}"[..]));
    let set =
        |name: &str| rewrite.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_ref().map(|v| v.to_string()));
    assert_eq!(set(":authority"), Some(Some("a.example".into())));
    assert_eq!(set("content-length"), Some(Some("14".into())));
    assert_eq!(set(&sh.config.cluster_header), Some(Some("b".into())));
    assert_eq!(set("x-envoy-upstream-rq-timeout-ms"), Some(Some("30000".into())));
    assert_eq!(set("x-envoy-upstream-rq-per-try-timeout-ms"), Some(Some("5000".into())));
    assert_eq!(set("authorization"), Some(Some("Bearer k".into())), "the provider's credential, set once");
    assert_eq!(set("content-type"), Some(Some("application/json".into())), "the body is the gateway's JSON");
    assert_eq!(set("x-secret"), Some(None), "off the allow-list: removed");
    // Allow-listed, unchanged or pseudo headers are left alone; the path is already right.
    for kept in ["user-agent", ":method", ":path", ":authority-unused"] {
        assert_eq!(set(kept), None, "{kept}");
    }
    assert_eq!(rewrite.headers.iter().filter(|(n, _)| *n == "authorization").count(), 1);
}

#[test]
fn a_rewrite_sets_another_path_and_keeps_a_bodyless_followup_as_it_is() {
    let sh = Mem::new(TWO);
    let ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let client = [(":path", "/v1/responses/r1"), ("content-type", "application/json")];
    let up = upstream("/openai/v1/responses/r1", b"", vec![]);
    let rewrite = ex.rewrite(&sh, MemberRef::new(0, 0), &up, (1_000, None), 0, pairs(&client)).unwrap();
    assert_eq!(rewrite.body, None, "no body of the gateway's: the client's stays");
    let names: Vec<&str> = rewrite.headers.iter().map(|(n, _)| *n).collect();
    assert!(names.contains(&":path") && !names.contains(&"content-length") && !names.contains(&"content-type"));
    assert!(!names.contains(&"x-envoy-upstream-rq-per-try-timeout-ms"));
    let bad = [(&b"\xffname"[..], &b"v"[..])];
    assert_eq!(ex.rewrite(&sh, MemberRef::new(0, 0), &up, (1, None), 0, bad.into_iter()), Err(Unnamed));
}

#[test]
fn a_rewrite_names_the_tenant_for_the_filters_after() {
    let sh = with_tenant("");
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.tenant = Some(Admission::default());
    let up = upstream("/v1/chat/completions", b"{}", vec![]);
    let rewrite = ex.rewrite(&sh, MemberRef::new(0, 0), &up, (1, None), 2, std::iter::empty()).unwrap();
    assert!(rewrite.headers.contains(&(TENANT_HEADER, Some("team-a".into()))));
}

#[test]
fn a_dispatched_call_carries_the_allow_listed_headers_and_the_pools_timeouts() {
    let sh = Mem::new(
        r#""main": {"timeout_ms": 9000, "first_byte_timeout_ms": 2000, "members": [{"provider": "a", "model": "m1"}]}"#,
    );
    let ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    let up = upstream("/v1/chat/completions", b"{}", vec![("authorization", "Bearer k".into())]);
    let client = [("user-agent", "sdk"), ("authorization", "Bearer client"), ("x-secret", "1")];
    let now = sh.now.get();
    let call = ex.dispatch(&sh, MemberRef::new(0, 0), now, &up, true, pairs(&client)).unwrap();
    assert_eq!((call.cluster, call.body()), ("a", &b"{}"[..]));
    let headers = call.headers();
    assert!(headers.contains(&("user-agent", "sdk")) && headers.contains(&("authorization", "Bearer k")));
    assert!(!headers.iter().any(|(k, v)| *k == "x-secret" || *v == "Bearer client"));
    assert!(headers.contains(&(":path", "/v1/chat/completions")) && headers.contains(&(":method", "POST")));
    assert_eq!(call.timeout_ms, 9000, "a stream's call may take the request's whole deadline");
    assert!(headers.contains(&("x-envoy-upstream-rq-per-try-timeout-ms", "2000")));
}

/// `TWO`'s providers with pools `main` and `other`, and one tenant `team-a` with `limits`.
fn with_tenant(limits: &str) -> Mem {
    let json = format!(
        r#"{{"providers": {{"a": {{"kind": "openai", "cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}}}},
            "pools": {{"main": {{"members": [{{"provider": "a", "model": "m1"}}]}},
                       "other": {{"members": [{{"provider": "a", "model": "m2"}}]}}}},
            "tenants": {{"team-a": {{"keys_sha256": ["{}"]{limits}}}}}}}"#,
        "0".repeat(64)
    );
    let mut sh = Mem::new(TWO);
    sh.config = Config::parse(json.as_bytes(), &ENV).unwrap();
    sh
}

/// A tenant's request for `model`, parsed, with its plan: what `tenant_ask` takes.
fn ask(sh: &Mem, ex: &mut Exchange, body: &str) -> Result<Option<TenantAsk>, ApiError> {
    let parsed = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
    let plan = Plan::new(&sh.config, &parsed, sh.now.get()).unwrap();
    ex.tenant_ask(sh, &parsed, &plan, body.len())
}

#[test]
fn a_tenant_is_refused_a_model_off_its_allow_list_and_asks_nothing_without_limits() {
    let sh = with_tenant(r#", "allow": ["main"]"#);
    let mut ex = Exchange { tenant: Some(Admission::default()), ..Exchange::default() };
    let e = ask(&sh, &mut ex, r#"{"model":"other","messages":[]}"#).unwrap_err();
    assert_eq!((e.status, e.code, e.param), (403, ErrorCode::ModelNotAllowed, Some("model")));
    // A fallback is checked as the target is.
    let e = ask(&sh, &mut ex, r#"{"model":"main","fallback":["other"],"messages":[]}"#).unwrap_err();
    assert_eq!(e.status, 403);
    assert_eq!(ask(&sh, &mut ex, r#"{"model":"main","messages":[]}"#), Ok(None), "no limits: nothing to ask");
    let mut anonymous = Exchange::default();
    assert_eq!(ask(&sh, &mut anonymous, r#"{"model":"other","messages":[]}"#), Ok(None));
}

#[test]
fn an_admitted_tenant_holds_its_reservation_and_reads_its_rate_headers() {
    let sh = with_tenant(r#", "rpm": 10, "tpm": 100000, "max_parallel": 2"#);
    let mut ex = Exchange { tenant: Some(Admission::default()), ..Exchange::default() };
    let body = r#"{"model":"main","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;
    let asked = ask(&sh, &mut ex, body).unwrap().unwrap();
    assert_eq!(asked.reserve, body.len() as u64 / 4 + 50, "the prompt estimate and the output asked for");
    let now = sh.now.get();
    let window = Window { start_s: now / 1000 - 10, requests: 3, tokens: 500 };
    let state = crate::tenant::limits::TenantState { window, ..Default::default() };
    assert_eq!(ex.tenant_verdict(&sh, &asked, Ok(Some(state)), now), Ok(()));
    let admission = ex.tenant.as_ref().unwrap();
    assert_eq!(
        (admission.reserved, admission.parallel_held, admission.window_start_s),
        (asked.reserve, true, window.start_s)
    );
    assert!(admission.rate_headers.contains(&("x-ratelimit-remaining-requests", "7".into())));
    assert!(ex.answer.tail.is_some(), "a token limit reads the answer's usage");
    // It ends: its slot and tokens are settled once.
    let (index, lease, end) = ex.settlement(&sh).unwrap();
    assert_eq!((index, lease, end.parallel_held), (0, None, true));
    assert_eq!(end.tokens, None, "no usage and no stream: the reservation stands");
    assert!(ex.settlement(&sh).is_none());
}

#[test]
fn a_refused_tenant_reads_what_ran_out_and_is_counted() {
    let sh = with_tenant(r#", "rpm": 10"#);
    let mut ex = Exchange { tenant: Some(Admission { lease: Some(7), ..Admission::default() }), ..Exchange::default() };
    let asked = ask(&sh, &mut ex, r#"{"model":"main","messages":[]}"#).unwrap().unwrap();
    let now = sh.now.get();
    let e = ex.tenant_verdict(&sh, &asked, Err(Refusal::Requests { retry_after_s: 12 }), now).unwrap_err();
    assert_eq!((e.status, e.code, e.retry_after_s), (429, ErrorCode::RateLimitExceeded, Some(12)));
    let admission = ex.tenant.as_ref().unwrap();
    assert!(admission.rate_headers.contains(&("x-ratelimit-remaining-requests", "0".into())));
    assert!(admission.rate_headers.contains(&("x-ratelimit-reset-requests", "12s".into())));
    assert_eq!(admission.lease, None, "a refused request holds no lease");
    assert_eq!(sh.counted(Count::TenantRefused { tenant: 0, budget: false }), 1);
    // Its error reply carries them too.
    let step = ex.error_reply(&sh, &e);
    assert_eq!(header(&step, "x-ratelimit-remaining-requests"), Some("0"));
    assert!(ex.settlement(&sh).is_none(), "nothing held, nothing settled");
}

/// A streamed chat exchange over `pools`, its body kept as routing keeps it.
fn streamed(sh: &Mem, body: &str) -> Exchange {
    let mut ex = exchange(sh, body);
    ex.body = body.as_bytes().to_vec();
    ex.shape.stream = true;
    ex
}

#[test]
fn only_a_successful_single_choice_chat_stream_of_a_continuing_pool_is_watched() {
    let resuming = r#""main": {"resume_streams": true, "members": [{"provider": "a", "model": "m1"}, {"provider": "c", "model": "m3"}]}"#;
    let sh = Mem::new(resuming);
    let mut ex = streamed(&sh, r#"{"model":"main","stream":true,"messages":[]}"#);
    let attempt = first(&sh, &mut ex);
    assert!(ex.watches_resume(&sh, &attempt, 200));
    assert!(!ex.watches_resume(&sh, &attempt, 500), "a failed answer is failed over, not continued");
    let mut two = streamed(&sh, r#"{"model":"main","stream":true,"n":2,"messages":[]}"#);
    let attempt = first(&sh, &mut two);
    assert!(!two.watches_resume(&sh, &attempt, 200), "two choices cannot be spliced");
    let mut whole = streamed(&sh, r#"{"model":"main","messages":[]}"#);
    whole.shape.stream = false;
    let attempt = first(&sh, &mut whole);
    assert!(!whole.watches_resume(&sh, &attempt, 200));
    let plain = Mem::new(TWO);
    let mut ex = streamed(&plain, r#"{"model":"main","stream":true,"messages":[]}"#);
    let attempt = first(&plain, &mut ex);
    assert!(!ex.watches_resume(&plain, &attempt, 200), "the pool does not continue streams");
}

#[test]
fn a_continuation_asks_the_next_member_for_the_rest_and_reads_its_answer() {
    let sh = Mem::new(r#""main": {"resume_streams": true, "members": [{"provider": "c", "model": "m3"}]}"#);
    let mut ex = streamed(&sh, r#"{"model":"main","stream":true,"messages":[{"role":"user","content":"count"}]}"#);
    let mut next = first(&sh, &mut ex);
    let picked = next.picked;
    let upstream = ex.continuation(&sh, picked, &mut next, "one, two,", sh.now.get()).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&upstream.body).unwrap();
    assert_eq!(body["stream"], serde_json::Value::Null, "one call for the rest, not a stream");
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "assistant", "an Anthropic member is prefilled with the text so far: {body}");
    assert!(next.adapter.is_some(), "its answer is read through its provider's adapter");
    // A failed call is not read at all; a good one is the rest of the answer.
    let mut plain = first(&sh, &mut ex);
    plain.adapter = None;
    assert!(continued(&mut plain, 503, || unreachable!("a failure's body is not read")).is_none());
    let answer = br#"{"choices":[{"message":{"role":"assistant","content":" three."},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
    let rest = continued(&mut plain, 200, || answer.to_vec()).unwrap();
    assert_eq!((rest.text.as_str(), rest.finish.as_str()), (" three.", "stop"));
    assert!(continued(&mut plain, 200, || b"not json".to_vec()).is_none());
}

#[test]
fn a_followup_goes_to_a_native_member_of_the_provider_holding_the_response() {
    let sh = Mem::new(
        r#""main": {"members": [{"provider": "c", "model": "m3"}]}, "other": {"members": [{"provider": "a", "model": "m1"}]}"#,
    );
    let (member, provider) = native_member_of(&sh.config, "a").unwrap();
    assert_eq!((member, provider.name.as_str()), (MemberRef::new(1, 0), "a"));
    assert!(native_member_of(&sh.config, "c").is_none(), "Anthropic does not hold Responses");
    assert!(native_member_of(&sh.config, "nobody").is_none());
    let f = crate::api::response_ids::followup("/v1/responses/resp_9/cancel").unwrap();
    let e = unknown_response(&f);
    assert_eq!((e.status, e.code), (404, ErrorCode::NotFound));
    assert!(e.message.starts_with("No response `resp_9` is known") && e.message.contains("/v1/responses/{id}/cancel"));
}

#[test]
fn a_previous_response_id_keeps_the_request_on_its_holder_for_its_tenant_only() {
    let sh = with_tenant("");
    let body = br#"{"model":"main","input":"hi","previous_response_id":"resp_1"}"#;
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.door = Door::Responses;
    ex.door_body = body.to_vec();
    ex.tenant = Some(Admission::default());
    assert_eq!(ex.previous_response_id().as_deref(), Some("resp_1"));
    let mut plan = ex.plan.take().unwrap();
    let holder = |tenant: &str| Some(Holder { provider: "a".into(), tenant: tenant.into() });
    let e = ex.hold_conversation(&sh, &mut plan, "main", "resp_1", holder("team-b")).unwrap_err();
    assert_eq!((e.status, e.param), (404, Some("previous_response_id")), "another tenant's is unknown");
    assert_eq!(ex.hold_conversation(&sh, &mut plan, "main", "resp_1", None), Ok(()), "unknown ids stay as they were");
    assert_eq!(ex.hold_conversation(&sh, &mut plan, "main", "resp_1", holder("team-a")), Ok(()));
    ex.door = Door::Chat;
    assert_eq!(ex.previous_response_id(), None, "only the Responses door has one");
}

#[test]
fn only_a_native_responses_answer_has_its_id_noted() {
    let sh = Mem::new(TWO);
    let mut ex = exchange(&sh, r#"{"model":"main","messages":[]}"#);
    ex.door = Door::Responses;
    let mut tail = crate::api::usage::Tail::default();
    tail.push(br#"{"id":"resp_7","object":"response"}"#);
    ex.answer.tail = Some(tail);
    let member = MemberRef::new(0, 1);
    let (id, holder) = ex.response_to_note(&sh, member, true, 200).unwrap();
    assert_eq!((id, holder.provider.as_str(), holder.tenant.as_str()), ("resp_7", "b", ""));
    assert!(ex.response_to_note(&sh, member, false, 200).is_none(), "a translated answer's id is the gateway's");
    assert!(ex.response_to_note(&sh, member, true, 500).is_none());
    ex.door = Door::Chat;
    assert!(ex.response_to_note(&sh, member, true, 200).is_none());
}

#[test]
fn a_door_request_is_routed_as_chat_completions_and_keeps_its_own_body() {
    let sh = Mem::new(TWO);
    let mut ex = Exchange { door: Door::Messages, ..Exchange::default() };
    let messages = br#"{"model":"main","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let chat = ex.to_chat(messages.to_vec()).unwrap();
    assert!(chat.native_only.is_none());
    assert_eq!(ex.door_body, messages.to_vec(), "kept for members serving the Messages API natively");
    let parsed = ParsedRequest::parse(&chat.body, Endpoint::ChatCompletions).unwrap();
    let mut plan = ex.plan(&sh, &parsed, &crate::routing::router::NoHeaders, None, None, sh.now.get()).unwrap();
    assert_eq!(ex.obs.model.as_deref(), Some("main"));
    let picked = ex.pick_first(&sh, &mut plan, sh.now.get()).unwrap();
    assert_eq!(sh.counted(Count::PoolRequest(0)), 1);
    assert_eq!(picked.member.pool, 0);
    ex.routed(&parsed, chat.body.len(), sh.now.get());
    assert!(ex.shape.stream && ex.shape.include_usage, "the door asks for the usage chunk its end events need");
    assert!(ex.answer.door.as_ref().is_some_and(DoorAnswer::is_stream) && ex.answer.tail.is_some());
    assert_eq!(ex.obs.estimate.completion, 5);
    // A chat request is its own body.
    let mut chat_ex = Exchange::default();
    let own = chat_ex.to_chat(b"{\"model\":\"main\",\"messages\":[]}".to_vec()).unwrap();
    assert_eq!((own.body.len(), chat_ex.door_body.len()), (30, 0));
    // A body the translator refuses never reaches routing.
    let mut bad = Exchange { door: Door::Messages, ..Exchange::default() };
    let refused = bad.to_chat(br#"{"model":"main","messages":[]}"#.to_vec()).unwrap_err();
    assert_eq!(refused.kind, crate::doors::DoorErrorKind::Invalid);
}

#[test]
fn a_feature_only_native_members_serve_keeps_the_request_on_them_or_refuses_it() {
    let sh = Mem::new(
        r#""main": {"members": [{"provider": "a", "model": "m1"}]}, "claude": {"members": [{"provider": "c", "model": "m3"}]}"#,
    );
    let body = br#"{"model":"main","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document"}]}]}"#;
    for (pool, served) in [("main", false), ("claude", true)] {
        let mut ex = Exchange { door: Door::Messages, ..Exchange::default() };
        let body = String::from_utf8_lossy(body).replace("\"main\"", &format!("\"{pool}\""));
        let chat = ex.to_chat(body.into_bytes()).unwrap();
        let refused = chat.native_only.clone();
        assert!(refused.is_some(), "a document block is the Messages API's own");
        let parsed = ParsedRequest::parse(&chat.body, Endpoint::ChatCompletions).unwrap();
        let planned = ex.plan(&sh, &parsed, &crate::routing::router::NoHeaders, None, refused, sh.now.get());
        match planned {
            Ok(mut plan) => {
                assert!(served, "{pool}");
                let picked = ex.pick_first(&sh, &mut plan, sh.now.get()).unwrap();
                assert_eq!(sh.member_id(picked.member), "c/m3", "the Anthropic member serves it as it is");
            }
            Err(e) => {
                assert!(!served, "{pool}: {}", e.message);
                assert_eq!((e.status, e.code), (400, ErrorCode::UnsupportedFeature));
            }
        }
    }
}

#[test]
fn an_answer_passes_as_it_is_event_by_event_or_whole() {
    let openai = Mem::new(TWO);
    let mut ex = streamed(&openai, r#"{"model":"main","stream":true,"messages":[]}"#);
    let plain = first(&openai, &mut ex);
    assert_eq!(ex.answer.passage(&plain, 200), Passage::AsIs);
    // The Messages door over an OpenAI member: its converter, event by event, nothing to prime.
    ex.answer.door = DoorAnswer::new(Door::Messages, "main", true, 0);
    assert_eq!(ex.answer.passage(&plain, 200), Passage::Stream { primed: false });
    assert_eq!(ex.answer.passage(&plain, 500), Passage::Whole, "an error is one body in the door's shape");
    let mut native = first(&openai, &mut ex);
    native.native = true;
    assert_eq!(ex.answer.passage(&native, 200), Passage::AsIs, "a native member's answer is the door's already");
    ex.answer.door = DoorAnswer::new(Door::Messages, "main", false, 0);
    assert_eq!(ex.answer.passage(&plain, 200), Passage::Whole);

    let anthropic = Mem::new(r#""main": {"members": [{"provider": "c", "model": "m3"}]}"#);
    let mut ex = streamed(&anthropic, r#"{"model":"main","stream":true,"messages":[]}"#);
    let translated = first(&anthropic, &mut ex);
    assert!(translated.adapter.is_some());
    assert_eq!(ex.answer.passage(&translated, 200), Passage::Stream { primed: true });
    assert_eq!(ex.answer.passage(&translated, 529), Passage::Whole);
    let mut whole = exchange(&anthropic, r#"{"model":"main","messages":[]}"#);
    let translated = first(&anthropic, &mut whole);
    assert_eq!(whole.answer.passage(&translated, 200), Passage::Whole);
}
