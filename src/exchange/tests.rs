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
    /// Stored responses' holders.
    responses: RefCell<HashMap<String, Holder>>,
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
            responses: RefCell::default(),
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

    fn remember_response(&self, id: &str, holder: &Holder) {
        self.responses.borrow_mut().insert(id.to_string(), holder.clone());
    }

    fn response_holder(&self, id: &str) -> Option<Holder> {
        self.responses.borrow().get(id).cloned()
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
        Step::Reply { headers, .. } => headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
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
    ex.score = Some((0.25, String::new()));
    let headers = ex.result_headers(&sh, attempt.picked.member);
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
    let headers = ex.result_headers(&sh, next.picked.member);
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
        match ex.answer.relay(&mut a, piece.as_bytes(), end) {
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
    let Relayed::Out(Some(out)) = ex.answer.relay(&mut a, cut.as_bytes(), true) else { panic!("no end added") };
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
    let Relayed::Out(Some(out)) = ex.answer.relay(&mut a, stream.as_bytes(), true) else { panic!("untranslated") };
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
    ex.answer.resume = Some(crate::routing::resume::StreamWatch::default());
    // Text, then the stream ends without a finish: broken after its first byte.
    let cut = chunk(r#"{"content":"hello"}"#, "null");
    let relayed = ex.answer.relay(&mut a, cut.as_bytes(), true);
    assert!(matches!(relayed, Relayed::Broken(_)), "{relayed:?}");
    assert_eq!(ex.answer.resume.as_ref().unwrap().text(), "hello");
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
    let headers = ex.result_headers(&sh, hedge.picked.member);
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
    let members = r#"[{"provider": "c", "model": "claude-3-5-haiku"}, {"provider": "c", "model": "m3", "prefill": true}, {"provider": "c", "model": "claude-opus-4-6"}]"#;
    let sh = Mem::new(&format!(r#""main": {{"resume_streams": true, "strategy": "priority", "members": {members}}}"#));
    let mut ex = streamed(&sh, r#"{"model":"main","stream":true,"messages":[{"role":"user","content":"count"}]}"#);
    let mut next = first(&sh, &mut ex);
    let picked = next.picked;
    let last_role = |ex: &Exchange, member: usize, next: &mut Attempt| {
        let picked = Picked { member: MemberRef { pool: picked.member.pool, member }, ..picked };
        let upstream = ex.continuation(&sh, picked, next, "one, two,", sh.now.get()).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(body["stream"], serde_json::Value::Null, "one call for the rest, not a stream");
        body["messages"].as_array().unwrap().last().unwrap()["role"].as_str().unwrap().to_string()
    };
    assert_eq!(last_role(&ex, 0, &mut next), "assistant", "a Claude before 4.6 is prefilled with the text so far");
    assert_eq!(last_role(&ex, 1, &mut next), "assistant", "so is a member configured with `prefill: true`");
    assert_eq!(last_role(&ex, 2, &mut next), "user", "Claude 4.6 refuses a prefill: it is asked to continue");
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
    ex.note_response_id(&sh, member, false, 200);
    assert!(sh.responses.borrow().is_empty(), "a translated answer's id is the gateway's");
    ex.note_response_id(&sh, member, true, 500);
    ex.door = Door::Chat;
    ex.note_response_id(&sh, member, true, 200);
    assert!(sh.responses.borrow().is_empty());
    ex.door = Door::Responses;
    ex.note_response_id(&sh, member, true, 200);
    let holder = sh.response_holder("resp_7").unwrap();
    assert_eq!((holder.provider.as_str(), holder.tenant.as_str()), ("b", ""));
    // Noted once: a later chunk does not write it again.
    sh.responses.borrow_mut().clear();
    ex.note_response_id(&sh, member, true, 200);
    assert!(sh.responses.borrow().is_empty());
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

// What the host applies: failover calls, answer headers and bodies, timers, replays.

/// The host's calls, in memory: each sent call listed, its id the next
/// number; calls to `refuse` fail to start.
#[derive(Default)]
struct Sent {
    calls: Vec<(MemberRef, bool, Vec<u8>)>,
    refuse: Option<MemberRef>,
}

impl Calls for Sent {
    fn send(
        &mut self,
        _: &Exchange,
        member: MemberRef,
        up: &UpstreamRequest,
        stream: bool,
        _: u64,
    ) -> Result<u64, ApiError> {
        if self.refuse == Some(member) {
            return Err(ApiError::internal("refused"));
        }
        self.calls.push((member, stream, up.body.clone()));
        Ok(self.calls.len() as u64)
    }
}

use crate::providers::UpstreamRequest;

/// An exchange whose first attempt to its first member is routed, with its body kept for failovers.
fn routed_to_first(sh: &Mem, body: &str) -> Exchange {
    let mut ex = exchange(sh, body);
    ex.body = body.as_bytes().to_vec();
    let parsed = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
    ex.routed(&parsed, body.len(), sh.now.get());
    let attempt = first(sh, &mut ex);
    ex.state = State::Routed(attempt);
    ex
}

const CHAT: &str = r#"{"model":"main","messages":[{"role":"user","content":"hi"}]}"#;

fn answered(ex: &mut Exchange, sh: &Mem, headers: &[(&str, &str)], calls: &mut Sent) -> HeadersStep {
    ex.response_headers(sh, &headers, false, Relays { prime: true, resume: true }, calls)
}

#[test]
fn a_failed_routed_answer_is_sent_to_the_next_member_as_a_call() {
    let sh = Mem::new(TWO);
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    assert_eq!(answered(&mut ex, &sh, &[(":status", "503")], &mut calls), HeadersStep::Step(Step::Pause));
    assert!(matches!(ex.state, State::Failover { call: 1, .. }));
    assert_eq!(calls.calls.len(), 1);
    assert_eq!(calls.calls[0].0, MemberRef::new(0, 1), "the other member");
    assert!(!calls.calls[0].1, "not a stream");
    assert_eq!(sh.counted(Count::Failover(MemberRef::new(0, 0))), 1);
    // While the call is out, a late routed answer waits too.
    assert_eq!(answered(&mut ex, &sh, &[(":status", "200")], &mut calls), HeadersStep::Step(Step::Pause));
}

#[test]
fn a_member_whose_call_cannot_start_is_a_failed_attempt_and_none_left_is_the_exhausted_answer() {
    let sh = Mem::new(TWO);
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent { refuse: Some(MemberRef::new(0, 1)), ..Sent::default() };
    let HeadersStep::Step(step) = answered(&mut ex, &sh, &[(":status", "500")], &mut calls) else { panic!() };
    assert_eq!(status(&step), 503);
    assert_eq!(header(&step, "x-switchboard-attempts"), Some("2"));
    assert!(matches!(ex.state, State::Answered));
    assert_eq!(ex.obs.attempts.iter().map(|a| a.1).collect::<Vec<_>>(), vec![500, 0]);
}

#[test]
fn a_failover_answer_is_the_clients_with_the_gateways_and_the_providers_headers() {
    let sh = Mem::new(TWO);
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    answered(&mut ex, &sh, &[(":status", "429")], &mut calls);
    assert_eq!(ex.call_answered(&sh, 7, &[], || unreachable!(), &mut calls), CallStep::Nothing, "not its call");
    let headers = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("x-request-id", "up-1"),
        ("x-ratelimit-remaining-requests", "9"),
        ("set-cookie", "no"),
    ];
    let CallStep::Step(step) = ex.call_answered(&sh, 1, &headers, || CHAT_BODY.as_bytes().to_vec(), &mut calls) else {
        panic!("no answer")
    };
    assert_eq!(status(&step), 200);
    assert_eq!(header(&step, "x-switchboard-attempts"), Some("2"));
    assert_eq!(header(&step, "x-switchboard-member"), Some("b/m2"));
    assert_eq!(header(&step, "x-upstream-request-id"), Some("up-1"));
    assert_eq!(header(&step, "x-ratelimit-remaining-requests"), Some("9"));
    assert_eq!(header(&step, "set-cookie"), None, "only the provider's rate and id headers are relayed");
    assert_eq!(ex.answer.usage().map(|u| (u.prompt, u.completion)), Some((3, 2)));
}

#[test]
fn a_failed_failover_answer_fails_over_again_until_none_is_left() {
    let sh = Mem::new(
        r#""main": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}, {"provider": "a", "model": "m3"}]}"#,
    );
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    answered(&mut ex, &sh, &[(":status", "502")], &mut calls);
    // A call that failed (reset, timed out) arrives without headers: its member's failure.
    assert_eq!(ex.call_answered(&sh, 1, &[], || unreachable!(), &mut calls), CallStep::Step(Step::Pause));
    assert!(matches!(ex.state, State::Failover { call: 2, .. }));
    let CallStep::Step(step) = ex.call_answered(&sh, 2, &[(":status", "503")], Vec::new, &mut calls) else { panic!() };
    assert_eq!(status(&step), 503);
    assert!(ex.obs.exhausted);
}

#[test]
fn a_good_routed_answer_gets_the_gateways_headers_and_is_relayed() {
    let sh = Mem::new(TWO);
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    let HeadersStep::Answer { set, drop, hold, wake_at } =
        answered(&mut ex, &sh, &[(":status", "200"), ("x-request-id", "up-1")], &mut calls)
    else {
        panic!("not an answer")
    };
    assert!(set.contains(&("x-switchboard-member", "a/m1".into())));
    assert!(set.contains(&("x-upstream-request-id", "up-1".into())));
    assert!(drop.is_empty() && !hold && wake_at.is_none());
    assert!(matches!(ex.state, State::Relaying { status: 200, .. }));
    assert!(calls.calls.is_empty());
    // A plain answer is read only for its usage, then recorded at its end.
    assert_eq!(ex.body_read(&sh, 10, false), BodyRead::From(0));
    let step = ex.response_body(&sh, CHAT_BODY.as_bytes().to_vec(), CHAT_BODY.len(), true, &mut calls);
    assert_eq!(step, BodyStep { body: None, status: None, step: Step::Continue });
    assert_eq!(ex.obs.attempts.len(), 1);
    assert_eq!(ex.answer.usage().map(|u| u.completion), Some(2));
}

#[test]
fn a_redirect_the_upstream_filter_made_and_envoy_did_not_follow_is_the_failure_it_carries() {
    let sh = Mem::new(TWO);
    let mut ex = routed_to_first(&sh, CHAT);
    ex.try_token = Some("t".into());
    let location = format!(
        "http://gw/v1/chat/completions?{}=t&{}=503",
        crate::routing::redirect::TOKEN_PARAM,
        crate::routing::redirect::STATUS_PARAM
    );
    let mut calls = Sent::default();
    answered(&mut ex, &sh, &[(":status", "307"), ("location", &location)], &mut calls);
    assert_eq!(ex.obs.attempts[0].1, 503, "the failure the redirect carries");
    assert_eq!(calls.calls.len(), 1, "failed over");
}

#[test]
fn a_translated_whole_answer_is_held_until_its_body_is_read() {
    let sh =
        Mem::new(r#""main": {"members": [{"provider": "c", "model": "claude"}, {"provider": "a", "model": "m1"}]}"#);
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    let HeadersStep::Answer { set, drop, hold: true, .. } = answered(&mut ex, &sh, &[(":status", "200")], &mut calls)
    else {
        panic!("not held")
    };
    assert!(set.contains(&("content-type", "application/json".into())));
    assert_eq!(drop, &["content-length"]);
    assert_eq!(ex.body_read(&sh, 5, false), BodyRead::Skip(Step::Pause), "the whole body first");
    assert_eq!(ex.body_read(&sh, 5, true), BodyRead::From(0));
    let step = ex.response_body(&sh, CLAUDE_BODY.as_bytes().to_vec(), CLAUDE_BODY.len(), true, &mut calls);
    assert!(text(step.body.as_deref().unwrap()).contains("chat.completion"), "in OpenAI's shape");
    assert_eq!((step.status, step.step), (None, Step::Continue));

    // An unreadable one is the member's 502, failed over while the headers are still held.
    let mut ex = routed_to_first(&sh, CHAT);
    answered(&mut ex, &sh, &[(":status", "200")], &mut calls);
    let step = ex.response_body(&sh, b"<html>".to_vec(), 6, true, &mut calls);
    assert_eq!(step, BodyStep { body: None, status: None, step: Step::Pause });
    assert!(matches!(ex.state, State::Failover { .. }));
    assert_eq!(ex.obs.attempts[0].1, 502);
    assert_eq!(sh.counted(Count::LocalError(ErrorCode::InvalidUpstreamResponse)), 1);
}

#[test]
fn a_translated_stream_is_primed_until_its_first_event_and_fails_over_before_it() {
    let sh =
        Mem::new(r#""main": {"members": [{"provider": "c", "model": "claude"}, {"provider": "a", "model": "m1"}]}"#);
    let body = r#"{"model":"main","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut ex = routed_to_first(&sh, body);
    let mut calls = Sent::default();
    let HeadersStep::Answer { set, hold: true, .. } = answered(&mut ex, &sh, &[(":status", "200")], &mut calls) else {
        panic!("not primed")
    };
    assert!(set.contains(&("content-type", "text/event-stream".into())));
    assert!(matches!(ex.state, State::Priming { fed: 0, .. }));
    // Nothing readable yet (half an event): held, its bytes counted as read.
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude\",\"usage\":{\"input_tokens\":3}}}\n\n";
    let (half, rest) = start.split_at(20);
    let step = ex.response_body(&sh, half.as_bytes().to_vec(), half.len(), false, &mut calls);
    assert_eq!(step, BodyStep { body: None, status: None, step: Step::Pause });
    assert!(matches!(ex.state, State::Priming { fed: 20, .. }));
    assert_eq!(ex.body_read(&sh, start.len(), false), BodyRead::From(20), "only the new bytes");
    let step = ex.response_body(&sh, rest.as_bytes().to_vec(), start.len(), false, &mut calls);
    assert!(text(step.body.as_deref().unwrap()).contains("chat.completion.chunk"), "the first event leaves");
    assert!(matches!(ex.state, State::Relaying { .. }));
    assert!(ex.obs.first_event_ms > 0);
    // A host that cannot hold a stream's headers relays it at once.
    let mut ex = routed_to_first(&sh, body);
    let step = ex.response_headers(
        &sh,
        &[(":status", "200")].as_slice(),
        false,
        Relays { prime: false, resume: false },
        &mut calls,
    );
    assert!(matches!(step, HeadersStep::Answer { hold: false, .. }));
    assert!(matches!(ex.state, State::Relaying { .. }));
    // An error event before any output is the member's 502: failed over.
    let mut ex = routed_to_first(&sh, body);
    answered(&mut ex, &sh, &[(":status", "200")], &mut calls);
    let error =
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
    let step = ex.response_body(&sh, error.as_bytes().to_vec(), error.len(), true, &mut calls);
    assert_eq!(step.step, Step::Pause);
    assert!(matches!(ex.state, State::Failover { .. }));
    assert_eq!(ex.obs.attempts[0].1, 502);
}

#[test]
fn a_hedge_is_sent_at_its_deadline_and_the_first_good_answer_wins() {
    let sh = Mem::new(
        r#""main": {"hedge_after_ms": 500, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    let now = sh.now.get();
    assert_eq!(ex.arm_hedge(&sh, 0, now), Some(now + 500));
    assert_eq!(ex.on_timer(&sh, now + 500, &mut calls), Timer::HedgeSent(1));
    assert_eq!(sh.counted(Count::Hedged(0)), 1);
    assert_eq!(ex.on_timer(&sh, now + 600, &mut calls), Timer::Nothing, "sent once");
    // The hedge answers first: it wins, the routed attempt is nobody's failure.
    let CallStep::Step(step) = ex.call_answered(&sh, 1, &[(":status", "200")], || CHAT_BODY.into(), &mut calls) else {
        panic!()
    };
    assert_eq!((status(&step), header(&step, "x-switchboard-member")), (200, Some("b/m2")));
    assert_eq!(header(&step, "x-switchboard-attempts"), Some("2"));
    assert_eq!(sh.counted(Count::HedgeWin(0)), 1);
    assert_eq!(sh.health_of("a/m1"), MemberHealth::default());

    // The routed answer comes first: the hedge in flight is abandoned.
    let mut ex = routed_to_first(&sh, CHAT);
    ex.arm_hedge(&sh, 0, now);
    ex.on_timer(&sh, now + 500, &mut calls);
    assert!(matches!(answered(&mut ex, &sh, &[(":status", "200")], &mut calls), HeadersStep::Answer { .. }));
    assert!(ex.hedge.is_none());
    assert_eq!(ex.call_answered(&sh, 2, &[(":status", "200")], || unreachable!(), &mut calls), CallStep::Nothing);

    // A failed hedge is its member's failure; the routed attempt goes on.
    let mut ex = routed_to_first(&sh, CHAT);
    ex.arm_hedge(&sh, 0, now);
    ex.on_timer(&sh, now + 500, &mut calls);
    assert_eq!(ex.call_answered(&sh, 3, &[(":status", "503")], || unreachable!(), &mut calls), CallStep::Nothing);
    assert!(matches!(ex.state, State::Routed(_)));
    assert_eq!(ex.obs.attempts, vec![(MemberRef::new(0, 1), 503, 0)]);
}

#[test]
fn a_routed_failure_with_a_hedge_in_flight_waits_for_the_hedge() {
    let sh = Mem::new(
        r#""main": {"hedge_after_ms": 500, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let mut ex = routed_to_first(&sh, CHAT);
    let mut calls = Sent::default();
    ex.arm_hedge(&sh, 0, sh.now.get());
    ex.on_timer(&sh, sh.now.get() + 500, &mut calls);
    assert_eq!(answered(&mut ex, &sh, &[(":status", "503")], &mut calls), HeadersStep::Step(Step::Pause));
    assert!(matches!(ex.state, State::Failover { call: 1, .. }), "the hedge is the next attempt");
    assert_eq!(calls.calls.len(), 1, "no other call");
}

#[test]
fn a_relayed_stream_silent_past_its_limit_is_reset_as_its_members_failure() {
    let sh = Mem::new(
        r#""main": {"stream_idle_timeout_ms": 2000, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let body = r#"{"model":"main","stream":true,"messages":[]}"#;
    let mut ex = routed_to_first(&sh, body);
    let mut calls = Sent::default();
    let now = sh.now.get();
    let HeadersStep::Answer { wake_at, .. } = answered(&mut ex, &sh, &[(":status", "200")], &mut calls) else {
        panic!()
    };
    assert_eq!(wake_at, Some(now + 2000));
    sh.now.set(now + 1500);
    ex.body_read(&sh, 0, false);
    assert_eq!(ex.on_timer(&sh, now + 2000, &mut calls), Timer::WakeAt(now + 3500), "alive 500 ms ago");
    assert_eq!(ex.on_timer(&sh, now + 3600, &mut calls), Timer::Reset);
    assert_eq!(sh.counted(Count::StreamIdleTimeout(0)), 1);
    assert!(ex.obs.cut);
    assert_eq!(ex.obs.attempts[0].1, 0);
    assert_eq!(ex.on_timer(&sh, now + 9000, &mut calls), Timer::Nothing);
}

#[test]
fn a_stream_is_tagged_for_its_replay_and_the_replay_records_the_failure() {
    let mut sh = Mem::new(TWO);
    let body = r#"{"model":"main","stream":true,"messages":[]}"#;
    let mut ex = routed_to_first(&sh, body);
    let url = [(":authority", "gw"), (":path", "/v1/chat/completions")];
    assert_eq!(ex.try_tag(&sh, MemberRef::new(0, 0), &url.as_slice()), None);
    sh.config.stream_failover = true;
    let tag = ex.try_tag(&sh, MemberRef::new(0, 0), &url.as_slice()).unwrap();
    let token = ex.try_token.clone().unwrap();
    assert!(tag.contains(&format!("http://gw/v1/chat/completions?{}={token}", crate::routing::redirect::TOKEN_PARAM)));
    // A request that simply ended is not parked; Envoy's replay is.
    assert_eq!(ex.replaying(|| Some(b"via_upstream".to_vec())), None);
    assert_eq!(ex.replaying(|| Some(b"internal_redirect".to_vec())), Some(token));
    let path = format!("/v1/chat/completions?{}=503", crate::routing::redirect::STATUS_PARAM);
    assert_eq!(ex.replayed(&sh, Vec::new(), &path, false), Step::Pause);
    assert!(matches!(ex.state, State::Replayed { .. }));
    assert_eq!(ex.obs.attempts[0].1, 503);
    // Then the replayed body goes to the next member.
    let (next, ()) = ex.start_next(&sh, sh.now.get(), "replay", |_, _, _| Ok(())).ok().unwrap();
    assert_eq!(next.picked.member, MemberRef::new(0, 1));
}

#[test]
fn a_broken_stream_is_continued_by_one_call_and_its_answer_ends_the_stream() {
    let sh = Mem::new(
        r#""main": {"resume_streams": true, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let body = r#"{"model":"main","stream":true,"messages":[{"role":"user","content":"count"}]}"#;
    let mut ex = routed_to_first(&sh, body);
    let mut calls = Sent::default();
    answered(&mut ex, &sh, &[(":status", "200")], &mut calls);
    assert!(ex.answer.resume.is_some(), "watched");
    let cut = chunk(r#"{"content":"one, two,"}"#, "null");
    let step = ex.response_body(&sh, cut.clone().into_bytes(), cut.len(), true, &mut calls);
    assert_eq!(step.step, Step::Pause, "the end held while the call is out");
    assert_eq!(calls.calls.len(), 1);
    assert!(!calls.calls[0].1, "one call, not a stream");
    assert!(matches!(ex.state, State::Resuming { call: 1, .. }));
    let answer = br#"{"choices":[{"message":{"role":"assistant","content":" three."},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
    let CallStep::EndStream { size, body } =
        ex.call_answered(&sh, 1, &[(":status", "200")], || answer.to_vec(), &mut calls)
    else {
        panic!("not ended")
    };
    assert_eq!(size, cut.len());
    let body = text(&body);
    assert!(body.contains("one, two,") && body.contains(" three.") && body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(sh.counted(Count::ResumedStream(0)), 1);
    assert_eq!(ex.obs.attempts.iter().map(|a| a.1).collect::<Vec<_>>(), vec![0, 200]);
}

#[test]
fn a_continuation_that_fails_ends_the_stream_as_it_would_have() {
    let sh = Mem::new(
        r#""main": {"resume_streams": true, "members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}"#,
    );
    let body = r#"{"model":"main","stream":true,"messages":[]}"#;
    let mut ex = routed_to_first(&sh, body);
    let mut calls = Sent::default();
    answered(&mut ex, &sh, &[(":status", "200")], &mut calls);
    let cut = chunk(r#"{"content":"one"}"#, "null");
    ex.response_body(&sh, cut.into_bytes(), 10, true, &mut calls);
    let CallStep::EndStream { body, .. } =
        ex.call_answered(&sh, 1, &[(":status", "500")], || unreachable!(), &mut calls)
    else {
        panic!()
    };
    assert!(text(&body).contains("one"));
    assert_eq!(ex.obs.attempts.iter().map(|a| a.1).collect::<Vec<_>>(), vec![0, 500]);
    assert_eq!(sh.counted(Count::ResumedStream(0)), 0);
}

#[test]
fn feedback_is_a_204_or_says_why_not() {
    let sh = Mem::new(TWO);
    let mut ex = Exchange { request_id: "r9".into(), ..Exchange::default() };
    let step = ex.feedback_reply::<()>(&sh, "x", &Feedback::Accepted(None), 3_600_000);
    assert_eq!((status(&step), header(&step, "x-switchboard-request-id")), (204, Some("r9")));
    let step = ex.feedback_reply::<()>(&sh, "x", &Feedback::Unknown, 3_600_000);
    assert_eq!(status(&step), 404);
    let Step::Reply { body, .. } = &step else { panic!() };
    assert!(text(body).contains("kept for 60 minutes"));
    assert_eq!(status(&ex.feedback_reply::<()>(&sh, "x", &Feedback::AlreadyScored, 1)), 409);
    let step = ex.feedback_reply::<()>(&sh, "x", &Feedback::TooMany { limit: 5, retry_after_s: 12 }, 1);
    assert_eq!((status(&step), header(&step, "retry-after")), (429, Some("12")));
}

#[test]
fn a_remembered_response_is_followed_up_on_its_holder_for_its_tenant_only() {
    let sh = Mem::new(TWO);
    let ex = Exchange::default();
    let f = "/v1/responses/resp_1/input_items?limit=2";
    assert_eq!(ex.followup(&sh, "GET", f).err().map(|e| e.status), Some(404));
    sh.remember_response("resp_1", &Holder { provider: "b".into(), tenant: String::new() });
    let (member, upstream) = ex.followup(&sh, "GET", f).unwrap();
    assert_eq!(member, MemberRef::new(0, 1));
    assert!(upstream.path.ends_with("resp_1/input_items?limit=2"), "{}", upstream.path);
    sh.remember_response("resp_1", &Holder { provider: "b".into(), tenant: "other".into() });
    assert!(ex.followup(&sh, "GET", f).is_err(), "another tenant's response is not found");
}

// The request's headers.

/// `Mem` with the model listing a host keeps.
struct Listed(Mem, crate::api::models::ModelListing);

impl Shared for Listed {
    fn config(&self) -> &Config {
        &self.0.config
    }
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
    fn pick(&self, plan: &mut Plan, now_ms: u64) -> Option<Picked> {
        self.0.pick(plan, now_ms)
    }
    fn record(&self, p: Picked, status: u16, failed: bool, retry_after: Option<&str>, now_ms: u64, id: &str) {
        self.0.record(p, status, failed, retry_after, now_ms, id)
    }
    fn note_answered(&self, _: MemberRef, _: u64, _: u64) {}
    fn abort_is_failure(&self, _: MemberRef, _: u64, _: u64) -> bool {
        false
    }
    fn next_try_ms(&self, member_id: &str, now_ms: u64) -> Option<u64> {
        self.0.next_try_ms(member_id, now_ms)
    }
    fn passed_over(&self, member_id: &str, now_ms: u64) -> PassedOver {
        self.0.passed_over(member_id, now_ms)
    }
    fn begin_in_flight(&self, _: MemberRef) {}
    fn end_in_flight(&self, _: MemberRef) {}
    fn observe_latency(&self, _: MemberRef, _: LatencyKind, _: f64) {}
    fn count(&self, what: Count) {
        self.0.count(what)
    }
    fn listing(&self, _: Option<usize>) -> Option<&crate::api::models::ModelListing> {
        Some(&self.1)
    }
}

fn opening<K: AsRef<str>, V: AsRef<str>>(sh: &dyn Shared, headers: &[(K, V)], end: bool) -> (Exchange, Opening) {
    let mut ex = Exchange::default();
    let opening = ex.request_headers(sh, &headers, end, true, || 0xab);
    (ex, opening)
}

#[test]
fn a_pipeline_requests_headers_hold_it_for_its_body_with_its_door_and_id() {
    let sh = Mem::new(TWO);
    let post = |path: &str| {
        vec![(":method", "POST".to_string()), (":path", path.to_string()), ("content-length", "20".to_string())]
    };
    let (ex, o) = opening(&sh, &post("/v1/messages"), false);
    assert_eq!(o, Opening::Step(Step::Pause));
    assert_eq!((ex.door, ex.body_for, ex.request_id.as_str()), (Door::Messages, BodyFor::Routing, "00000000000000ab"));
    let mut headers = post("/v1/feedback");
    headers.push(("x-request-id", "r-7".to_string()));
    let (ex, _) = opening(&sh, &headers, false);
    assert_eq!((ex.body_for, ex.request_id.as_str()), (BodyFor::Feedback, "r-7"));
    let (_, o) = opening(&sh, &[(":method", "GET"), (":path", "/v1/responses/resp_1")], true);
    assert_eq!(o, Opening::Followup);
    let replayed = format!("/v1/chat/completions?{}=abc", crate::routing::redirect::TOKEN_PARAM);
    let (_, o) = opening(&sh, &post(&replayed), false);
    assert_eq!(o, Opening::Replay("abc".into()), "the failover token of a replay");
    let mut ex = Exchange::default();
    let o = ex.request_headers(&sh, &post(&replayed).as_slice(), false, false, || 1);
    assert!(matches!(o, Opening::Step(ref s) if status(s) == 400), "a host that replays nothing refuses it");
}

#[test]
fn headers_that_say_the_body_cannot_be_read_are_refused_at_once() {
    let sh = Mem::new(TWO);
    let refused = |headers: &[(&str, &str)], end: bool| match opening(&sh, headers, end).1 {
        Opening::Step(step) => (status(&step), header(&step, "content-type").map(str::to_string)),
        other => panic!("{other:?}"),
    };
    let chat = [(":method", "POST"), (":path", "/v1/chat/completions")];
    assert_eq!(refused(&chat, true).0, 400, "no body");
    assert_eq!(refused(&[chat[0], chat[1], ("content-length", "0")], false).0, 400);
    assert_eq!(refused(&[chat[0], chat[1], ("content-encoding", "br")], false).0, 415);
    assert_eq!(refused(&[chat[0], chat[1], ("content-length", "999999999")], false).0, 413);
    assert_eq!(refused(&[(":method", "GET"), chat[1]], false).0, 405);
    assert_eq!(refused(&[chat[0], (":path", "/v2/nothing")], false).0, 404);
}

#[test]
fn the_model_listing_is_answered_at_the_headers() {
    let mem = Mem::new(TWO);
    let listing = crate::api::models::ModelListing::build(&mem.config);
    let sh = Listed(mem, listing);
    let (_, o) = opening(&sh, &[(":method", "GET"), (":path", "/v1/models")], true);
    let Opening::Step(Step::Reply { status: 200, body, .. }) = o else { panic!("{o:?}") };
    assert!(text(&body).contains("\"main\""), "{}", text(&body));
    let (_, o) = opening(&sh, &[(":method", "GET"), (":path", "/v1/models/main")], true);
    assert!(matches!(o, Opening::Step(Step::Reply { status: 200, .. })));
    let (_, o) = opening(&sh, &[(":method", "GET"), (":path", "/v1/models/nope%2Fx")], true);
    let Opening::Step(Step::Reply { status: 404, body, .. }) = o else { panic!("{o:?}") };
    assert!(text(&body).contains("nope/x"), "the id decoded: {}", text(&body));
}

#[test]
fn a_request_never_ends_before_its_answer_s_first_byte_left() {
    let mut obs = Observed { start_ms: 100, ended_ms: 105, ..Observed::default() };
    assert_eq!(obs.end_ms(|| 999), 105, "the last byte read, no clock needed");
    // A translated answer's headers leave once its whole body was read.
    obs.first_byte_ms = 107;
    assert_eq!(obs.end_ms(|| 999), 107);
    let unanswered = Observed { start_ms: 100, ..Observed::default() };
    assert_eq!(unanswered.end_ms(|| 120), 120);
}
