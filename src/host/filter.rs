//! The HTTP context: one client request. Reads the body, routes it to a pool
//! member by rewriting the request, and on a retriable upstream answer pauses
//! the response and retries other members through `dispatch_http_call`,
//! replacing the response with the first success.
//!
//! A stream's failed attempt is replayed by Envoy instead (internal redirect,
//! `filter/replay.rs`), so the next member's answer streams to the client;
//! one that breaks after its first byte may be continued (`filter/resume.rs`).
//!
//! Every attempt, routed or dispatched, ends in `finish` (recorded once in
//! the plan, shared health and metrics); every failed one continues in
//! `fail_over`, which dispatches the next member or answers that all failed.

mod followup;
mod hedge;
mod resume;
mod stream_idle;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::api::forward::{forwarded, relayed_response_header};
use crate::api::models::ModelListing;
use crate::api::request::ParsedRequest;
use crate::api::stream_end::{StreamEnd, Wire};
use crate::api::usage::{self, UsageChunkFilter};
use crate::api::{ApiError, Endpoint, ErrorCode};
use crate::config::Strategy;
use crate::doors::{messages, Door, DoorAnswer, DoorError};
use crate::encoding::percent_decode;
use crate::providers::{
    build_native, build_request, stream_include_usage, BuildContext, NativeApi, ResponseAdapter, UpstreamRequest,
};
use crate::routing::router::HeaderLookup;
use crate::routing::stats::latency_sample;
use crate::routing::{exhausted, redirect, NativeOnly, Plan, RouteInput};
use crate::tenant::limits::{rate_headers, Refusal, Settlement, Window, WINDOW_S};
use crate::tenant::reserve::Reservation;
use crate::tenant::{authenticate, presented_key};

use super::learned_store::{self, Decided, Feedback, Scorer};
use super::observe::{self, Observed};
use super::runtime::{Picked, Runtime};
use super::{abi, health_store, live_store, shadow, tenant_store, wake};
use crate::config::MemberRef;

mod replay;

const REQ: u32 = abi::MAP_REQUEST_HEADERS;
const RESP: u32 = abi::MAP_RESPONSE_HEADERS;
/// Names the authenticated tenant on the request, for Envoy filters after this one.
const TENANT_HEADER: &str = "x-switchboard-tenant";

/// One upstream attempt in flight.
struct Attempt {
    picked: Picked,
    /// Set when the member's provider does not speak OpenAI's format.
    adapter: Option<ResponseAdapter>,
    /// Counted in the member's requests in flight (`least_busy`): released when it ends.
    in_flight: bool,
    /// The member serves the client's door API as it is: the client's body
    /// goes upstream (model rewritten) and the answer comes back untouched.
    native: bool,
    /// When it started and when its response headers came (ms; 0: not measured).
    /// Measured for `lowest_latency` pools only.
    started_ms: u64,
    first_byte_ms: u64,
    /// When it started, for the call log.
    began_ms: u64,
}

enum State {
    /// Waiting for the request body.
    Reading,
    /// Envoy replays the request after a failed attempt (internal redirect):
    /// waiting for its body to point it at the next member. `headers`: the
    /// header map as replayed (the previous attempt's rewrite).
    Replayed { headers: Vec<u8> },
    /// Sent through Envoy's router; waiting for the response headers.
    Routed(Attempt),
    /// Nothing left to do: the response passes through.
    Passing,
    /// A translated stream, headers held until its first event proves it
    /// readable (else it fails over); `fed`: body bytes already translated.
    Priming { attempt: Attempt, status: u16, fed: usize },
    /// A successful answer on its way to the client (a stream of a translated
    /// kind is translated chunk by chunk). The attempt is recorded when the
    /// body ends, or in `on_log` if it never does: an answer cut off by the
    /// upstream is the member's failure, not a success.
    Relaying { attempt: Attempt, status: u16 },
    /// A translated whole-body answer, headers held: the attempt is recorded
    /// once the body proves readable, or fails over as the member's 502.
    Holding { attempt: Attempt, status: u16 },
    /// The response is paused while a failover call is in flight.
    Failover { attempt: Attempt, call: u32 },
    /// A broken stream's end is paused while its continuation call is in flight (`resume`).
    Resuming { attempt: Attempt, call: u32 },
    /// The filter answered itself (error, model list, or failover result).
    Answered,
}

pub struct Filter {
    rt: Option<Rc<Runtime>>,
    state: State,
    context_id: u32,
    /// This filter, for the root context to wake (see `wake`).
    me: wake::Handle,
    hedge: Option<hedge::Hedge>,
    idle: Option<stream_idle::IdleWatch>,
    resume: Option<Box<resume::Resume>>,
    /// Envoy's `x-request-id` (or one made up): in every log line and answer.
    request_id: String,
    endpoint: Endpoint,
    /// The client's body, kept for failover calls (as chat completions for a door).
    body: Vec<u8>,
    /// A door request's own body, for members serving its API natively.
    door_body: Vec<u8>,
    /// The client's request headers, serialized as the host gave them.
    client_headers: Vec<u8>,
    shape: AnswerShape,
    /// The API the client speaks, and how its answers are put back in that shape.
    door: Door,
    door_answer: Option<DoorAnswer>,
    plan: Option<Plan>,
    /// The calling tenant (when tenants are configured) and what it holds.
    tenant: Option<Admission>,
    /// What a learned router decided for this request (score header, feedback).
    learned: Option<Decided>,
    /// The gateway-made id its owner scores this answer with (`x-switchboard-feedback-id`).
    feedback_id: String,
    /// `POST /v1/feedback`: a user's score of an earlier answer.
    feedback: bool,
    /// The end of the answer, kept to read its token usage when limits,
    /// budgets or latency per token need it.
    answer_tail: Option<usage::Tail>,
    /// Usage a translating adapter saw (streams report it even when the client did not ask).
    adapter_usage: Option<(u64, u64)>,
    /// An OpenAI-wire stream whose client did not ask for usage: its usage chunk is taken out.
    usage_chunks: Option<UsageChunkFilter>,
    /// A stream as relayed (the provider's, or an adapter's translation): how it ends, what it carried.
    stream_end: Option<StreamEnd>,
    /// The id of the natively served Responses answer was remembered (`followup`).
    response_noted: bool,
    /// What the call log and the request-end stats report.
    obs: Observed,
    /// The token of the routed attempt, when it can fail over by internal redirect.
    try_token: Option<String>,
}

/// A tenant's admission: released and corrected when the request ends.
#[derive(Debug, Default)]
struct Admission {
    index: usize,
    parallel_held: bool,
    /// Tokens reserved (prompt estimate + expected output), in the window starting at `window_start_s`.
    reserved: u64,
    window_start_s: u64,
    /// The worst-case cost held against the budget (see `tenant::reserve`).
    budget: Reservation,
    rate_headers: Vec<(&'static str, String)>,
}

impl Filter {
    pub fn new(context_id: u32, rt: Option<Rc<Runtime>>) -> Self {
        Filter {
            rt,
            state: State::Reading,
            context_id,
            me: wake::Handle::new(),
            hedge: None,
            idle: None,
            resume: None,
            request_id: String::new(),
            endpoint: Endpoint::ChatCompletions,
            body: Vec::new(),
            door_body: Vec::new(),
            client_headers: Vec::new(),
            shape: AnswerShape::default(),
            door: Door::Chat,
            door_answer: None,
            plan: None,
            tenant: None,
            answer_tail: None,
            adapter_usage: None,
            usage_chunks: None,
            stream_end: None,
            response_noted: false,
            obs: Observed::default(),
            learned: None,
            feedback_id: String::new(),
            feedback: false,
            try_token: None,
        }
    }

    /// Called once, right after creation, with the `Rc` the filter lives in.
    pub fn set_handle(&mut self, me: wake::Handle) {
        self.me = me;
    }

    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// Woken by the root's tick (see `wake`): a hedge or an idle stream may be due.
    pub fn on_timer(&mut self, now: u64) {
        self.hedge_due(now);
        self.stream_idle_due(now);
    }

    fn host_error(&self, what: &str, status: abi::Status) {
        log::warn!("switchboard[{}]: host call failed: {what} (status {status})", self.request_id);
        if let Some(rt) = &self.rt {
            rt.metrics.inc(rt.metrics.host_errors);
        }
    }

    fn now_ms(&self) -> u64 {
        abi::now_ms().unwrap_or_else(|status| {
            self.host_error("get_current_time", status);
            0
        })
    }

    /// Answers the client with an OpenAI-style error. Returns the action to give Envoy.
    fn answer_error(&mut self, error: &ApiError) -> Action {
        if let Some(rt) = &self.rt {
            self.obs.local_error(&rt.metrics, error.code);
        }
        let retry_after = error.retry_after_s.map(|s| s.to_string());
        let attempts = self.plan.as_ref().map_or(0, |p| p.attempts.len()).to_string();
        let request_id = self.request_id.clone();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("x-switchboard-attempts", &attempts),
            ("x-switchboard-request-id", &request_id),
        ];
        if let Some(v) = retry_after.as_deref() {
            headers.push(("retry-after", v));
        }
        if let Some(retry) = error.should_retry {
            headers.push(("x-should-retry", if retry { "true" } else { "false" }));
        }
        let rate = self.tenant.as_ref().map(|t| t.rate_headers.clone()).unwrap_or_default();
        headers.extend(rate.iter().map(|(k, v)| (*k, v.as_str())));
        let body = self.door.error_body(error.status, error.to_json());
        self.respond(error.status, &headers, &body);
        Action::Pause
    }

    /// Answers a 200 JSON body the gateway wrote itself (model listings, token counts).
    fn answer_json(&mut self, body: &[u8]) -> Action {
        let request_id = self.request_id.clone();
        self.respond(200, &[("content-type", "application/json"), ("x-switchboard-request-id", &request_id)], body);
        Action::Pause
    }

    /// What the caller may see of the models: its tenant's listing, else all.
    fn listing<'r>(&self, rt: &'r Runtime) -> &'r ModelListing {
        match &self.tenant {
            Some(t) => rt.tenant_listings.get(t.index).unwrap_or(&rt.listing),
            None => &rt.listing,
        }
    }

    /// Refuses a door request its translator cannot take (always a 400).
    fn refuse_door_request(&mut self, e: &DoorError) -> Action {
        if let Some(rt) = &self.rt {
            self.obs.local_error(&rt.metrics, e.code);
        }
        let body = self.door.refusal_body(e);
        let request_id = self.request_id.clone();
        let headers = [("content-type", "application/json"), ("x-switchboard-request-id", request_id.as_str())];
        self.respond(e.status(), &headers, &body);
        Action::Pause
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.state = State::Answered;
        let now = self.now_ms();
        self.obs.answered(status, now);
        if let Err(s) = abi::send_local_response(status, headers, body) {
            self.host_error("send_local_response", s);
        }
    }

    /// A complete request body: answered here (token counting) or routed.
    fn serve(&mut self, rt: &Runtime, body: Vec<u8>) -> Action {
        if self.feedback {
            return self.take_feedback(rt, &body);
        }
        if self.door != Door::CountTokens {
            return self.route(rt, body);
        }
        match messages::count_tokens(&body) {
            Ok(count) => self.answer_json(&count),
            Err(e) => self.refuse_door_request(&e),
        }
    }

    /// `POST /v1/feedback {"request_id", "score"}`: 204, or 400/404/409 in OpenAI's error shape.
    fn take_feedback(&mut self, rt: &Runtime, body: &[u8]) -> Action {
        let (request_id, score) = match feedback_body(body) {
            Ok(v) => v,
            Err(e) => return self.answer_error(&e),
        };
        let owner = self.feedback_owner(rt);
        match learned_store::take_feedback(&rt.config, &owner, &request_id, self.now_ms()) {
            Feedback::Unknown => self.answer_error(
                &ApiError::new(
                    404,
                    ErrorCode::RequestNotFound,
                    format!(
                        "No recent answer of yours has the feedback id `{request_id}` (x-switchboard-feedback-id; kept for {} minutes).",
                        learned_store::FEEDBACK_TTL_MS / 60_000
                    ),
                )
                .with_param("request_id"),
            ),
            Feedback::AlreadyScored => self.answer_error(
                &ApiError::new(409, ErrorCode::FeedbackAlreadyRecorded, format!("Request `{request_id}` was already scored."))
                    .with_param("request_id"),
            ),
            Feedback::TooMany { limit, retry_after_s } => self.answer_error(
                &ApiError::new(
                    429,
                    ErrorCode::RateLimitExceeded,
                    format!("Feedback limit reached: {limit} scores per minute for this router."),
                )
                .with_retry_after(retry_after_s),
            ),
            Feedback::Accepted(label) => {
                // Only a weak-pool answer's score is a label.
                if let Some((label, router, model)) = label.and_then(|l| {
                    Some((l, rt.config.routers.get(l.router)?, rt.learned_models.get(l.router)?.as_ref()?))
                }) {
                    if let Some(learned) = &router.learned {
                        let key = learned_store::learning_key(&router.name, model, learned);
                        learned_store::learn(&key, &label.inputs, label.logit, score as f32);
                        rt.learned_learning.forget(label.router);
                    }
                }
                let request_id = self.request_id.clone();
                self.respond(204, &[("x-switchboard-request-id", &request_id)], b"");
                Action::Pause
            }
        }
    }

    /// Who may score this request: its tenant ("" without tenants).
    fn feedback_owner(&self, rt: &Runtime) -> String {
        let tenant = self.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index));
        tenant.map(|t| t.name.clone()).unwrap_or_default()
    }

    fn route(&mut self, rt: &Runtime, client_body: Vec<u8>) -> Action {
        let client_len = client_body.len();
        let (body, native_only) = match self.door.to_chat(&client_body) {
            Ok(Some(routed)) => {
                self.door_body = client_body;
                (routed.chat, routed.native_only)
            }
            Ok(None) => (client_body, None),
            Err(e) => return self.refuse_door_request(&e),
        };
        let now = self.now_ms();
        let (plan, picked, upstream) = {
            let parsed = match ParsedRequest::parse(&body, self.endpoint) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            let headers = RequestHeaders(&self.client_headers);
            let scorer = Scorer {
                config: &rt.config,
                models: &rt.learned_models,
                learning: &rt.learned_learning,
                now_ms: now,
                decided: Cell::new(None),
            };
            let input = RouteInput { request: &parsed, headers: &headers, scorer: Some(&scorer) };
            self.obs.model = Some(parsed.target.clone());
            let mut plan = match Plan::for_request(&rt.config, input, now) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            if let (Some(refused), Some(api)) = (native_only, self.door.native_api()) {
                let native = NativeOnly::new(&rt.config, refused.message, api.kinds(), |k| api.served_by(k));
                if let Err(e) = plan.require_native(&rt.config, native, &parsed.target) {
                    return self.answer_error(&e);
                }
            }
            if let Err(e) = self.hold_conversation(rt, &mut plan, &parsed.target) {
                return self.answer_error(&e);
            }
            self.learned = scorer.decided.get();
            if let Err(e) = self.admit_tenant(rt, &parsed, &plan, client_len, now) {
                return self.answer_error(&e);
            }
            if let Some(pm) = rt.metrics.pool(plan.primary_pool()) {
                rt.metrics.inc(pm.requests);
            }
            let Some(picked) = rt.pick(&mut plan, now) else {
                // Every member ejected or held: the answer says when the gateway tries again.
                self.plan = Some(plan);
                return self.exhausted(rt);
            };
            let upstream = match build_upstream(rt, self.endpoint, &parsed, picked.member, now, self.native_body()) {
                Ok(u) => u,
                Err(e) => return self.answer_error(&e),
            };
            // Scorable only once actually routed (not refused by limits), by its owner.
            if let Some(decided) = self.learned {
                self.feedback_id = format!("{:016x}", rt.random());
                learned_store::remember(&self.feedback_owner(rt), &self.feedback_id, &decided, now);
            }
            self.shape = AnswerShape {
                stream: parsed.stream,
                include_usage: stream_include_usage(&parsed),
                choices: parsed.field("n").and_then(|n| n.get().parse::<u32>().ok()).unwrap_or(1),
            };
            self.door_answer = DoorAnswer::new(self.door, &parsed.target, parsed.stream, now / 1000);
            // Every answer's usage is read: for the stats, the call log and the tenant's limits.
            self.answer_tail.get_or_insert_with(usage::Tail::default);
            self.obs.estimate = expected_tokens(&parsed, body.len());
            (plan, picked, upstream)
        };
        self.plan = Some(plan);
        let timeouts = self.timeouts_ms(rt, picked.member.pool, now, self.shape.stream);
        let present = &self.client_headers;
        if let Err((what, s)) = self.rewrite_request(rt, picked.member, &upstream, timeouts, client_len, present) {
            self.host_error(what, s);
            return self.answer_error(&ApiError::internal("The gateway could not rewrite the request."));
        }
        shadow::sample(rt, picked.member.pool, self.endpoint, &body, &self.client_headers);
        self.body = body;
        self.state = State::Routed(self.begin(rt, picked, now));
        self.arm_hedge(rt, picked.member.pool, now);
        self.tag_try(picked.member);
        Action::Continue
    }

    /// The calling tenant may use what it asked for, within its limits:
    /// budget, then requests in flight, then this minute's requests and
    /// tokens (reserved now, corrected with the real usage at the end). The
    /// budget holds the worst case on the dearest member `plan` may try.
    fn admit_tenant(
        &mut self,
        rt: &Runtime,
        parsed: &ParsedRequest<'_>,
        plan: &Plan,
        body_len: usize,
        now: u64,
    ) -> Result<(), ApiError> {
        let Some(admission) = self.tenant.as_mut() else { return Ok(()) };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(admission.index)) else { return Ok(()) };
        if let Some(name) = std::iter::once(&parsed.target).chain(&parsed.fallback).find(|n| !tenant.allows(n)) {
            return Err(crate::tenant::not_allowed(tenant, name));
        }
        if !tenant.has_limits() {
            return Ok(());
        }
        let now_s = now / 1000;
        let index = admission.index;
        let refused = |r: Refusal| {
            rt.metrics.tenant_refused(index, matches!(r, Refusal::Budget { .. }));
            refusal_error(tenant, r)
        };
        let (prompt_estimate, expected_output) = expected_tokens(parsed, body_len);
        let reserve = prompt_estimate.saturating_add(expected_output);
        let budget = match &tenant.budget {
            Some(_) => {
                let prompt = u64::from(parsed.content().prompt_tokens).max(prompt_estimate);
                tenant_store::budget_reservation(&rt.config, plan, prompt, parsed.max_output_tokens)
            }
            None => Reservation::default(),
        };
        // Nothing held when the store could not be written (fails open).
        admission.budget = Reservation { micro_usd: 0, ..budget };
        match tenant_store::admit(tenant, now_s, reserve, budget.micro_usd) {
            Ok(state) => {
                if let Some(state) = state {
                    admission.budget = budget;
                    admission.parallel_held = tenant.max_parallel.is_some();
                    admission.reserved = reserve;
                    admission.window_start_s = state.window.start_s;
                    admission.rate_headers = rate_headers(tenant.rpm, tenant.tpm, &state.window, now_s);
                }
                if tenant.tpm.is_some() || tenant.budget.is_some() {
                    self.answer_tail = Some(usage::Tail::default());
                }
                Ok(())
            }
            Err(r) => {
                if let Refusal::Requests { retry_after_s } | Refusal::Tokens { retry_after_s } = r {
                    // What was exhausted reads 0 remaining, until the window turns.
                    let full = Window {
                        start_s: (now_s + retry_after_s).saturating_sub(WINDOW_S),
                        requests: if matches!(r, Refusal::Requests { .. }) { tenant.rpm.unwrap_or(0) } else { 0 },
                        tokens: if matches!(r, Refusal::Tokens { .. }) { tenant.tpm.unwrap_or(0) } else { 0 },
                    };
                    admission.rate_headers = rate_headers(tenant.rpm, tenant.tpm, &full, now_s);
                }
                Err(refused(r))
            }
        }
    }

    /// Starts an attempt on `picked` at `now`, with what its pool's strategy measures.
    fn begin(&mut self, rt: &Runtime, picked: Picked, now: u64) -> Attempt {
        if let Some(mm) = rt.metrics.member(picked.member.pool, picked.member.member) {
            rt.metrics.inc(mm.attempts);
        }
        let strategy = rt.config.pool_at(picked.member.pool).map(|p| p.strategy);
        let in_flight = strategy == Some(Strategy::LeastBusy);
        if in_flight {
            live_store::begin(rt.member_id(picked.member));
        }
        let timed = strategy == Some(Strategy::LowestLatency);
        let native = self.serves_natively(rt, picked.member);
        Attempt {
            picked,
            adapter: if native { None } else { adapter_for(rt, self.endpoint, self.shape, picked.member) },
            in_flight,
            native,
            started_ms: if timed { now.max(1) } else { 0 },
            first_byte_ms: 0,
            began_ms: now,
        }
    }

    /// Whether `member` serves the client's door API as it is.
    fn serves_natively(&self, rt: &Runtime, member: MemberRef) -> bool {
        let kind = rt.config.resolve(member).map(|(_, _, p)| p.kind);
        self.door.native_api().zip(kind).is_some_and(|(api, kind)| api.served_by(kind))
    }

    /// The door's API and body, for building a pass-through request.
    fn native_body(&self) -> Option<(NativeApi, &[u8])> {
        self.door.native_api().map(|api| (api, self.door_body.as_slice()))
    }

    /// Client headers forwarded to `member` besides the allow-list (`anthropic-beta` when native).
    fn native_headers(&self, rt: &Runtime, member: MemberRef) -> &'static [&'static str] {
        match self.door.native_api() {
            Some(api) if self.serves_natively(rt, member) => api.forwarded_headers(),
            _ => &[],
        }
    }

    /// An attempt that ends without a verdict (the client left): only what it holds is released.
    fn abandon(&mut self, rt: &Runtime, attempt: &Attempt) {
        if attempt.in_flight {
            live_store::end(rt.member_id(attempt.picked.member));
        }
    }

    /// Records how `attempt` ended. Returns whether it failed (fail over next).
    fn finish(&mut self, rt: &Runtime, attempt: &Attempt, status: u16, retry_after: Option<&str>, now: u64) -> bool {
        self.abandon(rt, attempt);
        self.obs.attempts.push((attempt.picked.member, status, now.saturating_sub(attempt.began_ms)));
        let Some(plan) = self.plan.as_mut() else { return false };
        let failed = rt.record(plan, attempt.picked, status, retry_after, now, &self.request_id);
        if !failed && now > 0 {
            rt.note_answered(attempt.picked.member, now, now.saturating_sub(attempt.began_ms));
        }
        if !failed && attempt.started_ms > 0 {
            let total = now.saturating_sub(attempt.started_ms);
            let first_byte = if attempt.first_byte_ms > 0 {
                attempt.first_byte_ms.saturating_sub(attempt.started_ms)
            } else {
                total
            };
            let output = self.answer_usage().map_or(1, |(_, completion)| u32::try_from(completion).unwrap_or(u32::MAX));
            let (kind, sample) = latency_sample(self.shape.stream, first_byte, total, output);
            live_store::observe(rt.member_id(attempt.picked.member), kind, sample);
        }
        failed
    }

    /// Records a successful attempt; its answer has ended (the request's end, for the report).
    fn finish_success(&mut self, rt: &Runtime, attempt: &Attempt, status: u16) {
        let now = self.now_ms();
        self.obs.ended_ms = now;
        self.finish(rt, attempt, status, None, now);
    }

    /// The format of a successful stream as relayed: OpenAI's (passed
    /// through, or an adapter's translation), or the door's own when served natively.
    fn stream_wire(&self, attempt: &Attempt, status: u16) -> Option<Wire> {
        if !self.shape.stream || !(200..300).contains(&status) {
            return None;
        }
        match self.door.native_api().filter(|_| attempt.native) {
            None => Some(Wire::OpenAi),
            Some(NativeApi::Messages) => Some(Wire::Messages),
            Some(NativeApi::Responses) => Some(Wire::Responses),
        }
    }

    /// A relayed stream's body ended: a success, unless it ended failed (the
    /// provider's error event, or cut short before its API's end, which the
    /// client was then given): that is its member's failure, as an answer
    /// cut off after its headers (status 0, whatever `retry_on` says).
    fn stream_ended(&mut self, rt: &Runtime, attempt: &Attempt, status: u16) {
        let failed = attempt.adapter.as_ref().is_some_and(ResponseAdapter::stream_failed)
            || self.stream_end.as_ref().is_some_and(StreamEnd::failed);
        if !failed {
            return self.finish_success(rt, attempt, status);
        }
        log::warn!(
            "switchboard[{}]: stream from {} ended before its answer was complete",
            self.request_id,
            rt.member_id(attempt.picked.member)
        );
        let now = self.now_ms();
        self.obs.ended_ms = now;
        self.finish(rt, attempt, 0, None, now);
    }

    /// Lets a successful answer through; it is recorded when its body ends.
    fn relay(&mut self, rt: &Runtime, attempt: Attempt, status: u16, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.finish_success(rt, &attempt, status);
        } else {
            self.watch_stream_idle(attempt.picked.member.pool, status);
            self.state = State::Relaying { attempt, status };
        }
        Action::Continue
    }

    /// After a failed attempt: dispatches the request to the next member, or
    /// answers that every attempt failed (none left, or the deadline passed).
    fn fail_over(&mut self, rt: &Runtime, now: u64) -> Action {
        match self.start_next(rt, now, "failover call", |f, member| f.dispatch(rt, member, now)) {
            Ok((attempt, call)) => {
                self.state = State::Failover { attempt, call };
                Action::Pause
            }
            Err(exhausted) => exhausted,
        }
    }

    /// Starts the next member the plan allows with `start`; a member that
    /// cannot be started is a failed attempt and the next one is tried.
    /// `Err`: none left, the exhausted answer.
    fn start_next<T>(
        &mut self,
        rt: &Runtime,
        now: u64,
        what: &str,
        mut start: impl FnMut(&mut Self, MemberRef) -> Result<T, ApiError>,
    ) -> Result<(Attempt, T), Action> {
        loop {
            let Some(picked) = self.pick_next(rt, now) else { return Err(self.exhausted(rt)) };
            let attempt = self.begin(rt, picked, now);
            match start(self, picked.member) {
                Ok(started) => return Ok((attempt, started)),
                Err(e) => {
                    log::warn!(
                        "switchboard[{}]: {what} to {} failed to start: {}",
                        self.request_id,
                        rt.member_id(picked.member),
                        e.message
                    );
                    self.finish(rt, &attempt, 0, None, now);
                }
            }
        }
    }

    /// The member to fail over to (counted as a failover of the last one),
    /// or none: no member left, or the deadline passed.
    fn pick_next(&mut self, rt: &Runtime, now: u64) -> Option<Picked> {
        let plan = self.plan.as_mut().filter(|p| now < p.deadline_ms)?;
        let failed_from = plan.attempts.last().map(|a| (a.pool, a.member));
        let picked = rt.pick(plan, now)?;
        if let Some((p, m)) = failed_from {
            rt.metrics.inc(rt.metrics.member(p, m).and_then(|mm| mm.failovers));
            rt.metrics.inc(rt.metrics.pool(p).and_then(|pm| pm.failovers));
        }
        Some(picked)
    }

    /// Sends the saved request to `member` with Envoy's HTTP call API.
    fn dispatch(&self, rt: &Runtime, member: MemberRef, now: u64) -> Result<u32, ApiError> {
        let parsed = ParsedRequest::parse(&self.body, self.endpoint)?;
        let upstream = build_upstream(rt, self.endpoint, &parsed, member, now, self.native_body())?;
        self.dispatch_upstream(rt, member, now, &upstream, self.shape.stream)
    }

    /// Sends `upstream` (a stream or not: its timeouts) to `member` with Envoy's HTTP call API.
    fn dispatch_upstream(
        &self,
        rt: &Runtime,
        member: MemberRef,
        now: u64,
        upstream: &UpstreamRequest,
        stream: bool,
    ) -> Result<u32, ApiError> {
        let cluster = cluster_of(rt, member).ok_or_else(|| ApiError::internal("member without cluster"))?;
        let extra = self.native_headers(rt, member);
        let forwarded: Vec<(String, String)> = abi::pairs(&self.client_headers)
            .filter(|(k, _)| forwarded(k, false, extra))
            .filter_map(|(k, v)| {
                Some((std::str::from_utf8(k).ok()?.to_string(), std::str::from_utf8(v).ok()?.to_string()))
            })
            .collect();
        let mut headers = upstream.call_headers(&forwarded);
        let (attempt_ms, first_byte_ms) = self.timeouts_ms(rt, member.pool, now, stream);
        let first_byte = first_byte_ms.map(|ms| ms.to_string());
        if let Some(ms) = first_byte.as_deref() {
            headers.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms));
        }
        let timeout = Duration::from_millis(attempt_ms);
        proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, Some(&upstream.body), vec![], timeout)
            .map_err(|s| ApiError::internal(format!("dispatch_http_call to cluster {cluster} failed: {s:?}")))
    }

    /// Points the paused request at `member`: body, then the header map
    /// (`present`: as it is now): allow-listed client headers, path,
    /// authority, cluster, content type and length, timeouts, the provider's headers.
    fn rewrite_request(
        &self,
        rt: &Runtime,
        member: MemberRef,
        upstream: &UpstreamRequest,
        (timeout_ms, first_byte_ms): (u64, Option<u64>),
        original_len: usize,
        present: &[u8],
    ) -> Result<(), (&'static str, abi::Status)> {
        let extra = self.native_headers(rt, member);
        // A request without a body of the gateway's (a Responses follow-up) keeps the client's.
        let own_body = !(upstream.body.is_empty() && original_len == 0);
        if own_body {
            abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, original_len, &upstream.body)
                .map_err(|s| ("set request body", s))?;
        }
        let cluster = cluster_of(rt, member).unwrap_or_default();
        let content_length = upstream.body.len().to_string();
        let timeout = timeout_ms.to_string();
        let first_byte = first_byte_ms.map(|ms| ms.to_string());
        let tenant = self.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index));
        let mut ours: Vec<(&str, &str)> = Vec::with_capacity(12);
        ours.push((":authority", &upstream.authority));
        if own_body {
            ours.push(("content-length", &content_length));
        }
        ours.push((&rt.config.cluster_header, cluster));
        ours.push(("x-envoy-upstream-rq-timeout-ms", &timeout));
        if let Some(ms) = first_byte.as_deref() {
            ours.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms));
        }
        ours.extend(upstream.headers.iter().map(|(k, v)| (*k, v.as_str())));
        // For Envoy's global rate limit after this filter; removed before the request leaves Envoy.
        if let Some(t) = tenant {
            ours.push((TENANT_HEADER, &t.name));
        }
        // Only what changes is written: client headers off the allow-list are
        // removed, the gateway's set; what the client already has right stays.
        let sets = |name: &[u8]| ours.iter().any(|(n, _)| n.as_bytes() == name);
        let mut client_path = "";
        let mut json = false;
        for (k, v) in abi::pairs(present) {
            match k {
                b":path" => client_path = std::str::from_utf8(v).unwrap_or(""),
                b"content-type" => json = v == b"application/json",
                b":method" | b":scheme" | b":authority" => {}
                _ if forwarded(k, true, extra) || sets(k) => {}
                _ => {
                    let name = std::str::from_utf8(k).map_err(|_| ("remove request header", abi::NOT_FOUND))?;
                    abi::remove_header(REQ, name).map_err(|s| ("remove request header", s))?;
                }
            }
        }
        if upstream.path != client_path {
            ours.push((":path", &upstream.path));
        }
        // The body is the gateway's JSON, whatever the client labelled its own.
        if !json && !ours.iter().any(|(n, _)| *n == "content-type") {
            ours.push(("content-type", "application/json"));
        }
        for (k, v) in ours {
            abi::set_header(REQ, k, v).map_err(|s| ("set request header", s))?;
        }
        Ok(())
    }

    /// The pool's attempt and first-byte timeouts within the request's remaining deadline.
    fn timeouts_ms(&self, rt: &Runtime, pool: usize, now: u64, stream: bool) -> (u64, Option<u64>) {
        let Some(policy) = rt.config.pool_at(pool).map(|p| &p.retry) else { return (1, None) };
        let remaining = self.plan.as_ref().map_or(policy.timeout_ms, |p| p.deadline_ms.saturating_sub(now));
        policy.attempt_timeouts(remaining, stream)
    }

    /// Every attempt failed (or every member is ejected): 503 listing them
    /// (429 when all were rate limited, 529 on the Messages door when all
    /// were overloaded), with the `Retry-After` and `x-should-retry` that tell
    /// the client truthfully when trying again can help: `Retry-After` is when
    /// the gateway itself next tries a member.
    fn exhausted(&mut self, rt: &Runtime) -> Action {
        let now = self.now_ms();
        let error = match &self.plan {
            Some(plan) => {
                rt.metrics.inc(rt.metrics.pool(plan.primary_pool()).and_then(|p| p.exhausted));
                self.obs.exhausted = true;
                let target = rt.config.pool_at(plan.primary_pool()).map_or("", |p| p.name.as_str());
                let statuses: Vec<u16> = plan.attempts.iter().map(|a| a.status).collect();
                let tried = plan.attempts.iter().map(|a| health_store::next_try_ms(&a.member_id, now));
                let passed_over: Vec<_> =
                    plan.passed_over.iter().map(|m| health_store::passed_over(rt.member_id(*m), now)).collect();
                let answer = exhausted::exhausted(&statuses, tried, &passed_over, now);
                let mut error = plan.exhausted_error(target);
                if answer.status == 429 {
                    error.status = 429;
                    error.code = ErrorCode::RateLimitExceeded;
                } else if self.door == Door::Messages && all_overloaded(&statuses) {
                    // Anthropic's own status, so its SDKs raise `OverloadedError` as they would
                    // against Anthropic (529 has no meaning to OpenAI clients: they get the 503).
                    error.status = 529;
                    error.code = ErrorCode::Overloaded;
                }
                error.retry_after_s = answer.retry_after_s;
                error.should_retry = Some(answer.should_retry);
                error
            }
            None => ApiError::unavailable("No upstream could be tried."),
        };
        self.answer_error(&error)
    }

    /// The headers every routed answer carries: which pool and member served
    /// it, after how many attempts (counting `serving`, recorded or not), and the request id.
    fn result_headers(&self, rt: &Runtime, serving: MemberRef) -> Vec<(&'static str, String)> {
        let recorded = self.plan.as_ref().map_or(0, |p| p.attempts.len());
        let serving_recorded = self
            .plan
            .as_ref()
            .and_then(|p| p.attempts.last())
            .is_some_and(|a| (a.pool, a.member) == (serving.pool, serving.member));
        let attempts = if serving_recorded { recorded } else { recorded + 1 };
        let mut out = Vec::with_capacity(4);
        if let Some(pool) = rt.config.pool_at(serving.pool) {
            out.push(("x-switchboard-pool", pool.name.clone()));
        }
        out.push(("x-switchboard-member", rt.member_id(serving).to_string()));
        out.push(("x-switchboard-attempts", attempts.to_string()));
        if let Some((router, rule)) = self.plan.as_ref().and_then(|p| p.router_headers(&rt.config)) {
            out.push(("x-switchboard-router", router.to_string()));
            out.push(("x-switchboard-rule", rule.to_string()));
        }
        if let Some(decided) = &self.learned {
            out.push(("x-switchboard-route-score", format!("{:.3}", decided.score)));
        }
        if !self.feedback_id.is_empty() {
            out.push(("x-switchboard-feedback-id", self.feedback_id.clone()));
        }
        out.push(("x-switchboard-request-id", self.request_id.clone()));
        if let Some(t) = &self.tenant {
            out.extend(t.rate_headers.iter().cloned());
        }
        out
    }

    /// Rewrites the response headers in one host call: the upstream's own
    /// (less `drop`), then the result headers and `extra`.
    fn set_response_headers(
        &self,
        rt: &Runtime,
        serving: MemberRef,
        upstream: &[u8],
        drop: &[&str],
        extra: &[(&'static str, &str)],
    ) {
        // Only what changes is written: the headers the gateway adds, the
        // provider's request id under another name (Envoy sets `x-request-id`
        // to the gateway's), and the framing a translation changes.
        let set = |name: &str, value: &str| {
            if let Err(s) = abi::set_header(RESP, name, value) {
                self.host_error("set response header", s);
            }
        };
        for (k, v) in self.result_headers(rt, serving).iter() {
            set(k, v);
        }
        for (k, v) in extra {
            set(k, v);
        }
        if let Some(id) = header_value(upstream, "x-request-id") {
            set("x-upstream-request-id", id);
        }
        for name in drop.iter().filter(|d| !extra.iter().any(|(k, _)| k == *d)) {
            if let Err(s) = abi::remove_header(RESP, name) {
                self.host_error("remove response header", s);
            }
        }
    }
}

/// Every attempt answered 529 (Anthropic's "overloaded").
fn all_overloaded(statuses: &[u16]) -> bool {
    !statuses.is_empty() && statuses.iter().all(|s| *s == 529)
}

/// Tokens to reserve for a request before it runs: its prompt (about 4 bytes
/// a token) and the output it asked for (`max_completion_tokens`,
/// `max_tokens`), else `DEFAULT_EXPECTED_OUTPUT`.
fn expected_tokens(parsed: &ParsedRequest<'_>, body_len: usize) -> (u64, u64) {
    const DEFAULT_EXPECTED_OUTPUT: u64 = 1024;
    let requested = parsed.max_output_tokens.map(u64::from);
    (body_len as u64 / 4, requested.unwrap_or(DEFAULT_EXPECTED_OUTPUT))
}

fn refusal_error(tenant: &crate::tenant::Tenant, refusal: Refusal) -> ApiError {
    let name = &tenant.name;
    match refusal {
        Refusal::Requests { retry_after_s } => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!("Rate limit reached for tenant `{name}`: {} requests per minute.", tenant.rpm.unwrap_or(0)),
        )
        .with_retry_after(retry_after_s),
        Refusal::Tokens { retry_after_s } => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!("Rate limit reached for tenant `{name}`: {} tokens per minute.", tenant.tpm.unwrap_or(0)),
        )
        .with_retry_after(retry_after_s),
        Refusal::Parallel => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!(
                "Tenant `{name}` has {} requests in flight, its max_parallel; retry when one ends.",
                tenant.max_parallel.unwrap_or(0)
            ),
        )
        .with_retry_after(1),
        Refusal::Budget(short) => {
            ApiError::new(429, ErrorCode::InsufficientQuota, short.message(name)).with_retry_after(short.retry_after_s)
        }
    }
}

/// A stream answer the adapter translates event by event.
fn translates_stream(adapter: &ResponseAdapter, status: u16) -> bool {
    status < 400 && adapter.is_stream()
}

/// The response adapter for a member, if its provider needs one.
fn adapter_for(rt: &Runtime, endpoint: Endpoint, shape: AnswerShape, member: MemberRef) -> Option<ResponseAdapter> {
    let (_, m, provider) = rt.config.resolve(member)?;
    let adapter = ResponseAdapter::new(provider.kind, endpoint, shape.stream, &m.model)?;
    Some(adapter.with_created(abi::now_ms().unwrap_or(0) / 1000).with_include_usage(shape.include_usage))
}

/// What the client asked its answer to look like.
#[derive(Debug, Clone, Copy, Default)]
struct AnswerShape {
    stream: bool,
    /// `stream_options.include_usage`: a final usage chunk in the stream.
    include_usage: bool,
    /// `n`: the choices a stream must finish.
    choices: u32,
}

fn cluster_of(rt: &Runtime, member: MemberRef) -> Option<&str> {
    rt.config.resolve(member).map(|(_, _, provider)| provider.cluster.as_str())
}

/// The request for `member`: the door's own body (`native`) to a member whose
/// kind serves its API, else the chat body `parsed` through the provider's adapter.
fn build_upstream(
    rt: &Runtime,
    endpoint: Endpoint,
    parsed: &ParsedRequest<'_>,
    member: MemberRef,
    now_ms: u64,
    native: Option<(NativeApi, &[u8])>,
) -> Result<UpstreamRequest, ApiError> {
    let (p, m, provider) = rt.config.resolve(member).ok_or_else(|| ApiError::internal("unknown member"))?;
    if let Some((api, body)) = native.filter(|(api, _)| api.served_by(provider.kind)) {
        return build_native(provider, m, api, body);
    }
    let ctx = BuildContext { now_unix_s: now_ms / 1000, max_response_tokens: p.max_response_tokens };
    build_request(provider, m, endpoint, parsed, &ctx)
}

/// A feedback body: the request id and a score in [0, 1].
fn feedback_body(body: &[u8]) -> Result<(String, f64), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(ErrorCode::InvalidJson, format!("Feedback must be a JSON object: {e}."))
    })?;
    let field = |name: &'static str| {
        value.get(name).ok_or_else(|| {
            ApiError::invalid_request(
                ErrorCode::MissingRequiredParameter,
                format!("Missing required parameter: `{name}`."),
            )
            .with_param(name)
        })
    };
    let request_id = field("request_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(ErrorCode::InvalidType, "`request_id` must be a non-empty string.")
                .with_param("request_id")
        })?
        .to_string();
    let score = field("score")?.as_f64().ok_or_else(|| {
        ApiError::invalid_request(ErrorCode::InvalidType, "`score` must be a number.").with_param("score")
    })?;
    if !(0.0..=1.0).contains(&score) {
        return Err(
            ApiError::invalid_request(ErrorCode::InvalidValue, "`score` must be between 0 and 1.").with_param("score")
        );
    }
    Ok((request_id, score))
}

/// The client's request headers, for routing rules and the tags header.
struct RequestHeaders<'a>(&'a [u8]);

impl HeaderLookup for RequestHeaders<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        header_value(self.0, name)
    }
}

fn header_value<'a>(raw: &'a [u8], name: &str) -> Option<&'a str> {
    abi::pairs(raw).find(|(k, _)| *k == name.as_bytes()).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

impl Context for Filter {
    /// Envoy destroys a replayed request's old instance after logging it,
    /// except where logging is deferred (HTTP/3): then the hand-over happens here.
    fn on_done(&mut self) -> bool {
        self.hand_over();
        true
    }

    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if !self.hedge_answered(token_id, num_headers) {
            return;
        }
        if let (State::Resuming { .. }, Some(rt)) = (&self.state, self.rt.clone()) {
            return self.resume_answered(&rt, token_id, num_headers, body_size);
        }
        let State::Failover { call, .. } = &self.state else { return };
        if *call != token_id {
            return;
        }
        let State::Failover { mut attempt, .. } = std::mem::replace(&mut self.state, State::Answered) else {
            return;
        };
        let Some(rt) = self.rt.clone() else { return };
        let now = self.now_ms();
        // A call that failed (reset, refused, timed out) arrives with no headers.
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            abi::headers_raw(abi::MAP_HTTP_CALL_RESPONSE_HEADERS).unwrap_or_else(|s| {
                self.host_error("get call response headers", s);
                Vec::new()
            })
        };
        let status = header_value(&headers, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if rt.is_failure(attempt.picked.member, status) {
            self.finish(&rt, &attempt, status, header_value(&headers, "retry-after"), now);
            self.fail_over(&rt, now);
            return;
        }
        let body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_else(|s| {
            self.host_error("get call response body", s);
            Vec::new()
        });
        let takes_usage_chunk = self.takes_usage_chunk(&attempt, status);
        // A stream given whole that ended short of its end (or with an error
        // event) has reached no one yet: it fails over as its member's 502.
        // (Else, when the pool does not fail over on 502, it is relayed with its end.)
        let fails_over = rt.is_failure(attempt.picked.member, 502);
        let (cut, tail) = match self.stream_wire(&attempt, status).filter(|_| attempt.adapter.is_none()) {
            Some(wire) => {
                let mut watch = StreamEnd::new(wire, self.shape.choices);
                watch.feed(&body);
                let tail = watch.end().filter(|_| attempt.native || self.door_answer.is_none());
                (watch.failed() && fails_over, tail)
            }
            None => (false, None),
        };
        let (content_type, body, verdict) = match attempt.adapter.as_mut() {
            Some(adapter) if translates_stream(adapter, status) => {
                let body = adapter.translate_stream(&body, true);
                (adapter.content_type(), body, if adapter.stream_failed() && fails_over { 502 } else { status })
            }
            Some(adapter) => {
                let translated = adapter.translate_body(status, &body);
                let verdict = if adapter.translation_failed() { 502 } else { status };
                ("application/json", translated, verdict)
            }
            None if takes_usage_chunk => {
                let mut chunks = UsageChunkFilter::default();
                let body = chunks.feed(&body, true).unwrap_or(body);
                self.usage_chunks = Some(chunks);
                (header_value(&headers, "content-type").unwrap_or("text/event-stream"), body, status)
            }
            None => (header_value(&headers, "content-type").unwrap_or("application/json"), body, status),
        };
        let verdict = if cut { 502 } else { verdict };
        let body = match tail {
            Some(tail) if !cut => [body, tail].concat(),
            _ => body,
        };
        let (verdict, content_type, body) = match self.door_answer.as_mut().filter(|_| !attempt.native) {
            Some(door) if door.is_stream() && verdict < 400 => (verdict, "text/event-stream", door.feed(&body, true)),
            Some(door) => {
                let (door_status, body) = door.body(verdict, &body);
                (door_status.max(verdict), "application/json", body)
            }
            None => (verdict, content_type, body),
        };
        if verdict != status {
            rt.metrics.local_error(ErrorCode::InvalidUpstreamResponse);
            log::warn!(
                "switchboard[{}]: unreadable or incomplete {status} answer from {}",
                self.request_id,
                rt.member_id(attempt.picked.member)
            );
        }
        if self.finish(&rt, &attempt, verdict, None, now) {
            self.fail_over(&rt, now);
            return;
        }
        self.note_answer(&body);
        self.note_response_id(&rt, attempt.picked.member, attempt.native, verdict);
        self.note_adapter_usage(attempt.adapter.as_ref());
        let content_type = content_type.to_string();
        let ours = self.result_headers(&rt, attempt.picked.member);
        let mut out: Vec<(&str, &str)> = vec![("content-type", &content_type)];
        out.extend(ours.iter().map(|(k, v)| (*k, v.as_str())));
        out.extend(abi::pairs(&headers).filter_map(|(k, v)| {
            let name = relayed_response_header(std::str::from_utf8(k).ok()?)?;
            Some((name, std::str::from_utf8(v).ok()?))
        }));
        self.respond(verdict, &out, &body);
        if self.shape.stream {
            // A failed-over stream reaches the client whole: its first event leaves now.
            self.obs.first_event_ms = self.obs.first_byte_ms;
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return self.answer_error(&ApiError::internal("switchboard is not configured"));
        };
        self.obs.start_ms = self.now_ms();
        // One host call for every header the filter needs now and for the rewrite later.
        let raw = match abi::headers_raw(REQ) {
            Ok(raw) => raw,
            Err(s) => {
                self.host_error("get request headers", s);
                return self.answer_error(&ApiError::internal("The gateway could not read the request headers."));
            }
        };
        self.request_id = match header_value(&raw, "x-request-id") {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("{:016x}", rt.random()),
        };
        if let Some(token) = header_value(&raw, ":path").and_then(redirect::token_in_path) {
            let token = token.to_string();
            return self.resume(&token, raw, end_of_stream);
        }
        if rt.config.stream_failover && header_value(&raw, "x-envoy-original-url").is_some() {
            // Envoy followed a redirect switchboard did not ask for (a provider's own): never re-routed.
            return self.answer_error(&ApiError::new(
                502,
                ErrorCode::InvalidUpstreamResponse,
                "The provider answered with a redirect, which the gateway does not follow.",
            ));
        }
        let path = header_value(&raw, ":path").unwrap_or_default().to_string();
        // Every answer of a door in its error shape, a refused key's included.
        self.door = Door::error_shape_of(&path);
        if let Some(tenants) = &rt.config.tenants {
            let key = presented_key(|name| header_value(&raw, name));
            match authenticate(tenants, key) {
                Ok(index) => self.tenant = Some(Admission { index, ..Admission::default() }),
                Err(e) => return self.answer_error(&e),
            }
        }
        let method = header_value(&raw, ":method").unwrap_or_default().to_string();
        let declared = header_value(&raw, "content-length").and_then(|v| v.parse::<usize>().ok());
        // The client's headers never reach the provider as they are: the
        // rewrite replaces the whole map (a client can never pick a cluster).
        self.client_headers = raw;
        self.feedback = path.split('?').next().is_some_and(|p| p.trim_end_matches('/') == "/v1/feedback");
        if self.feedback && method != "POST" {
            return self.answer_error(&ApiError::method_not_allowed(&method, "/v1/feedback", "POST"));
        }
        if let Some(action) = self.serve_followup(&rt, &path, &method) {
            return action;
        }
        if let Some(id) = path.split('?').next().and_then(|p| p.strip_prefix("/v1/models/")).filter(|id| !id.is_empty())
        {
            if method != "GET" && method != "HEAD" {
                return self.answer_error(&ApiError::method_not_allowed(&method, "/v1/models/{id}", "GET"));
            }
            // The SDKs percent-encode the id (`o1/gpt-4o` arrives as `o1%2Fgpt-4o`).
            let id = String::from_utf8_lossy(&percent_decode(id)).into_owned();
            let Some(body) = self.listing(&rt).entry(&id).map(<[u8]>::to_vec) else {
                return self.answer_error(&rt.config.unknown_target(&id, "model"));
            };
            return self.answer_json(&body);
        }
        let door = Door::from_path(&path).or(self.feedback.then_some(Door::Chat));
        let Some((endpoint, query)) = Endpoint::from_path(&path).or(door.map(|_| (Endpoint::ChatCompletions, "")))
        else {
            return self.answer_error(&ApiError::not_found(path.split('?').next().unwrap_or("")));
        };
        self.door = door.unwrap_or_default();
        self.endpoint = endpoint;
        if method != endpoint.method() && !(endpoint == Endpoint::Models && method == "HEAD") {
            let clean = path.split('?').next().unwrap_or("");
            return self.answer_error(&ApiError::method_not_allowed(&method, clean, endpoint.method()));
        }
        if endpoint == Endpoint::Models {
            let body = self.listing(&rt).body(query).to_vec();
            return self.answer_json(&body);
        }
        // Envoy's decompressor (before this filter) takes gzip off; anything left is unreadable.
        if let Some(encoding) = header_value(&self.client_headers, "content-encoding").filter(|e| *e != "identity") {
            return self.answer_error(&ApiError::unsupported_content_encoding(encoding));
        }
        if declared.is_some_and(|n| n > rt.config.max_body_bytes) {
            return self.answer_error(&ApiError::body_too_large(rt.config.max_body_bytes));
        }
        if end_of_stream || declared == Some(0) {
            return self.answer_error(&ApiError::invalid_request(
                ErrorCode::InvalidJson,
                "Request body is empty; expected a JSON object.",
            ));
        }
        // Hold the headers until the body says where the request goes
        // (needs allow_on_headers_stop_iteration in the plugin config).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.state {
            State::Reading => {}
            State::Replayed { .. } => return self.replay_body(body_size, end_of_stream),
            State::Answered => return Action::Pause,
            _ => return Action::Continue,
        }
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        if body_size > rt.config.max_body_bytes {
            return self.answer_error(&ApiError::body_too_large(rt.config.max_body_bytes));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match abi::buffer(abi::BUFFER_REQUEST_BODY, 0, body_size) {
            Ok(body) => self.serve(&rt, body),
            Err(s) => {
                self.host_error("get request body", s);
                self.answer_error(&ApiError::internal("The gateway could not read the request body."))
            }
        }
    }

    /// A body followed by trailers (Envoy's decompressor reports its byte
    /// counts in trailers) ends here, not with an end-of-stream body callback.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.state {
            State::Reading => {}
            State::Replayed { .. } => {
                let size = abi::buffer(abi::BUFFER_REQUEST_BODY, 0, usize::MAX).map_or(0, |b| b.len());
                return self.replay_body(size, true);
            }
            State::Answered => return Action::Pause,
            _ => return Action::Continue,
        }
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        match abi::buffer(abi::BUFFER_REQUEST_BODY, 0, rt.config.max_body_bytes.saturating_add(1)) {
            Ok(body) if body.len() > rt.config.max_body_bytes => {
                self.answer_error(&ApiError::body_too_large(rt.config.max_body_bytes))
            }
            Ok(body) => self.serve(&rt, body),
            Err(s) => {
                self.host_error("get request body", s);
                self.answer_error(&ApiError::internal("The gateway could not read the request body."))
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Anything but a routed request (our own local reply, say) passes through.
        let mut attempt = match std::mem::replace(&mut self.state, State::Passing) {
            State::Routed(attempt) => attempt,
            // A routed answer coming while a hedge's or failover's answer is awaited waits too.
            other @ State::Failover { .. } => {
                self.state = other;
                return Action::Pause;
            }
            other => {
                self.state = other;
                return Action::Continue;
            }
        };
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        let headers = abi::headers_raw(RESP).unwrap_or_else(|s| {
            self.host_error("get response headers", s);
            Vec::new()
        });
        let status = header_value(&headers, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        // A failure the upstream filter made a redirect that Envoy did not follow: fail over here.
        let redirected = self.try_token.take().filter(|_| status == 307).and(header_value(&headers, "location"));
        let (status, retry_after) = match redirected.map(redirect::failure_in) {
            Some((failed, retry_after)) => (failed, retry_after),
            None => (status, header_value(&headers, "retry-after").map(str::to_string)),
        };
        let retry_after = retry_after.as_deref();
        let failed = rt.is_failure(attempt.picked.member, status);
        // The time of the first byte is for failover (health, deadline), latency
        // pools and the call log; a plain success needs no clock here.
        let now = if failed || attempt.started_ms > 0 || rt.config.call_log { self.now_ms() } else { 0 };
        if attempt.started_ms > 0 {
            attempt.first_byte_ms = now;
        }
        if failed {
            self.finish(&rt, &attempt, status, retry_after, now);
            if let Some(wait) = self.settle_hedge(&rt, true) {
                return wait;
            }
            return self.fail_over(&rt, now);
        }
        self.settle_hedge(&rt, false);
        self.watch_resume(&rt, &attempt, status);
        self.stream_end = self.stream_wire(&attempt, status).map(|wire| StreamEnd::new(wire, self.shape.choices));
        let adapter = attempt.adapter.as_ref();
        let door = self.door_answer.as_ref().filter(|_| !attempt.native);
        if adapter.is_none() && door.is_none() {
            if self.takes_usage_chunk(&attempt, status) {
                self.usage_chunks = Some(UsageChunkFilter::default());
            }
            self.obs.answered(status, now);
            self.set_response_headers(&rt, attempt.picked.member, &headers, &[], &[]);
            return self.relay(&rt, attempt, status, end_of_stream);
        }
        let translated = ["content-type", "content-length"];
        // A successful stream is translated event by event (by the provider's
        // adapter, then the client's door); anything else as a whole body.
        let streams = status < 400
            && adapter.is_none_or(|a| translates_stream(a, status))
            && door.is_none_or(DoorAnswer::is_stream);
        if streams {
            self.obs.answered(status, now);
            let content_type = [("content-type", "text/event-stream")];
            self.set_response_headers(&rt, attempt.picked.member, &headers, &translated, &content_type);
            if attempt.adapter.is_some() && !end_of_stream {
                // Held until the first event: an unreadable stream can still fail over.
                self.state = State::Priming { attempt, status, fed: 0 };
                return Action::Pause;
            }
            return self.relay(&rt, attempt, status, end_of_stream);
        }
        let content_type = [("content-type", "application/json")];
        self.set_response_headers(&rt, attempt.picked.member, &headers, &translated, &content_type);
        if end_of_stream {
            self.obs.answered(status, now);
            self.finish_success(&rt, &attempt, status);
            return Action::Continue;
        }
        // A whole translated body is only known good once read: hold the
        // headers so an unreadable answer can still fail over.
        self.state = State::Holding { attempt, status };
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream_alive();
        match &self.state {
            // Hold the failed upstream's body back until the local answer replaces it.
            State::Failover { .. } | State::Resuming { .. } => return Action::Pause,
            State::Holding { .. } if !end_of_stream => return Action::Pause,
            State::Holding { .. } | State::Priming { .. } => {}
            State::Relaying { attempt, .. }
                if attempt.adapter.is_some()
                    || (self.door_answer.is_some() && !attempt.native)
                    || self.stream_end.is_some()
                    || self.reads_usage() => {}
            State::Relaying { .. } if end_of_stream => {
                if let (State::Relaying { attempt, status }, Some(rt)) =
                    (std::mem::replace(&mut self.state, State::Passing), self.rt.clone())
                {
                    self.finish_success(&rt, &attempt, status);
                }
                return Action::Continue;
            }
            _ => return Action::Continue,
        }
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        // A primed stream's body is buffered by Envoy while held: only the new bytes are read.
        let start = if let State::Priming { fed, .. } = &self.state { (*fed).min(body_size) } else { 0 };
        // Envoy ends a relayed answer with an empty callback: nothing to read.
        let chunk = match body_size - start {
            0 => Vec::new(),
            new => match abi::buffer(abi::BUFFER_RESPONSE_BODY, start, new) {
                Ok(chunk) => chunk,
                Err(s) => {
                    self.host_error("get response body", s);
                    return Action::Continue;
                }
            },
        };
        let out = match std::mem::replace(&mut self.state, State::Passing) {
            State::Priming { attempt, status, .. } => {
                match self.prime(&rt, attempt, status, &chunk, body_size, end_of_stream) {
                    Ok(out) => {
                        if self.obs.first_event_ms == 0 && !out.is_empty() {
                            self.obs.first_event_ms = self.now_ms();
                        }
                        out
                    }
                    Err(action) => return action,
                }
            }
            State::Relaying { mut attempt, status } => {
                if self.shape.stream && self.obs.first_event_ms == 0 && body_size > 0 {
                    self.obs.first_event_ms = self.now_ms();
                }
                let mut translated = attempt.adapter.as_mut().map(|a| a.translate_stream(&chunk, end_of_stream));
                if let Some(watch) = self.stream_end.as_mut() {
                    watch.feed(translated.as_deref().unwrap_or(&chunk));
                }
                if let (None, Some(chunks)) = (&translated, self.usage_chunks.as_mut()) {
                    translated = chunks.feed(&chunk, end_of_stream);
                }
                // A continuing pool's stream: its break is held back (`resume`).
                if let Some(watched) = self.resume_feed(translated.as_deref().unwrap_or(&chunk), end_of_stream) {
                    translated = Some(watched);
                }
                self.note_answer(translated.as_deref().unwrap_or(&chunk));
                self.note_response_id(&rt, attempt.picked.member, attempt.native, status);
                let broken = end_of_stream && self.resume_due();
                if let Some(door) = self.door_answer.as_mut().filter(|_| !attempt.native) {
                    translated = Some(door.feed(translated.as_deref().unwrap_or(&chunk), end_of_stream && !broken));
                }
                if broken {
                    return self.continue_stream(&rt, attempt, body_size, translated.unwrap_or(chunk));
                }
                if end_of_stream {
                    // A stream passed through that ended short of its API's end gets that end
                    // (a door translating it ends it itself), after what a watch held back.
                    let held = self.resume_held();
                    let tail = self.stream_end.as_mut().and_then(StreamEnd::end);
                    // (A translated stream's adapter always ends it.)
                    let tail =
                        tail.filter(|_| attempt.adapter.is_none() && (attempt.native || self.door_answer.is_none()));
                    if !held.is_empty() || tail.is_some() {
                        let mut out = translated.unwrap_or(chunk);
                        out.extend_from_slice(&held);
                        out.extend_from_slice(&tail.unwrap_or_default());
                        translated = Some(out);
                    }
                    self.note_adapter_usage(attempt.adapter.as_ref());
                    self.stream_ended(&rt, &attempt, status);
                } else {
                    self.state = State::Relaying { attempt, status };
                }
                // A pass-through answer read only for its usage stays as it is.
                let Some(out) = translated else { return Action::Continue };
                out
            }
            State::Holding { mut attempt, status } => {
                let (out, unreadable) = match attempt.adapter.as_mut() {
                    Some(adapter) => {
                        let out = adapter.translate_body(status, &chunk);
                        (out, adapter.translation_failed())
                    }
                    None => (chunk, false),
                };
                self.note_answer(&out);
                self.note_adapter_usage(attempt.adapter.as_ref());
                if unreadable {
                    rt.metrics.local_error(ErrorCode::InvalidUpstreamResponse);
                    log::warn!(
                        "switchboard[{}]: unreadable {status} answer from {}",
                        self.request_id,
                        rt.member_id(attempt.picked.member)
                    );
                    // The headers are still held: an unreadable answer is the member's 502.
                    let now = self.now_ms();
                    if self.finish(&rt, &attempt, 502, None, now) {
                        return self.fail_over(&rt, now);
                    }
                } else {
                    self.finish_success(&rt, &attempt, status);
                }
                let sent = if unreadable { 502 } else { status };
                let (door_status, out) = match &self.door_answer {
                    Some(door) => door.body(sent, &out),
                    None => (sent, out),
                };
                let now = self.now_ms();
                self.obs.answered(door_status, now);
                if door_status != status {
                    if let Err(s) = abi::set_header(RESP, ":status", &door_status.to_string()) {
                        self.host_error("set response status", s);
                    }
                }
                out
            }
            other => {
                self.state = other;
                return Action::Continue;
            }
        };
        if let Err(s) = abi::set_buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size, &out) {
            self.host_error("set response body", s);
        }
        Action::Continue
    }

    /// The request is over, however it ended: settle the attempt still open
    /// and the tenant's admission.
    fn on_log(&mut self) {
        if self.hand_over() {
            return;
        }
        let Some(rt) = self.rt.clone() else { return };
        self.settle_hedge(&rt, false);
        self.end_unfinished_answer(&rt);
        // A relayed answer ended when its last byte was read: no clock needed.
        let ended_ms = if self.obs.ended_ms > 0 { self.obs.ended_ms } else { self.now_ms() };
        self.count_relayed();
        self.report(&rt, ended_ms);
        self.release_tenant(&rt, ended_ms);
    }
}

impl Filter {
    /// Whether a successful OpenAI-wire answer carries a usage chunk the
    /// gateway asked for and the client did not (see `providers::openai`).
    fn takes_usage_chunk(&self, attempt: &Attempt, status: u16) -> bool {
        let openai_stream = self.shape.stream && !self.shape.include_usage && self.endpoint != Endpoint::Embeddings;
        openai_stream && status < 300 && !attempt.native && attempt.adapter.is_none()
    }

    /// Whether the answer's body must be read for its token usage.
    fn reads_usage(&self) -> bool {
        self.answer_tail.is_some()
    }

    /// Keeps the end of the (OpenAI-shaped) answer for its usage.
    fn note_answer(&mut self, bytes: &[u8]) {
        if let Some(tail) = self.answer_tail.as_mut() {
            tail.push(bytes);
        }
    }

    /// The usage a translating adapter read from the provider's own format.
    fn note_adapter_usage(&mut self, adapter: Option<&ResponseAdapter>) {
        if let Some(u) = adapter.and_then(ResponseAdapter::usage) {
            self.adapter_usage = Some((u.prompt, u.completion));
        }
    }

    /// (prompt, completion) tokens of the answer, when it reported them.
    fn answer_usage(&self) -> Option<(u64, u64)> {
        self.adapter_usage
            .or_else(|| self.usage_chunks.as_ref()?.usage())
            .or_else(|| self.answer_tail.as_ref()?.usage())
    }

    /// A stream whose answer reported no usage (the client left before its
    /// end, or a server that sends none) is counted from what was relayed:
    /// its output from the text, arguments and reasoning its events carried,
    /// its prompt from the body (4 bytes a token both), not from the output
    /// expected at admission.
    fn count_relayed(&mut self) {
        if self.answer_usage().is_some() {
            return;
        }
        if let Some(watch) = &self.stream_end {
            self.obs.estimate.1 = watch.output_tokens();
        }
    }

    /// The call-log line and the request-end stats.
    fn report(&self, rt: &Runtime, ended_ms: u64) {
        let end = observe::End {
            request_id: &self.request_id,
            tenant: self.tenant.as_ref().map(|t| t.index),
            plan: self.plan.as_ref(),
            stream: self.shape.stream,
            usage: self.answer_usage(),
            now_ms: ended_ms,
        };
        observe::report(rt, &self.obs, &end);
    }

    /// The tenant's request ended: its parallel slot is free again and its
    /// token reservation becomes the real usage (kept as reserved when the
    /// answer reported none).
    fn release_tenant(&mut self, rt: &Runtime, ended_ms: u64) {
        let Some(admission) = self.tenant.take() else { return };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(admission.index)) else { return };
        let mut end = Settlement {
            parallel_held: admission.parallel_held,
            budget_reserved_micro_usd: admission.budget.micro_usd,
            ..Settlement::default()
        };
        let now_s = ended_ms / 1000;
        let usage = self.answer_usage();
        if tenant.tpm.is_some() || tenant.budget.is_some() {
            match usage {
                Some((prompt, completion)) => {
                    end.tokens =
                        Some((admission.window_start_s, admission.reserved, prompt.saturating_add(completion)));
                }
                // A stream is charged what was relayed of it (`count_relayed`).
                None if self.stream_end.is_some() => {
                    let (prompt, completion) = self.obs.estimate;
                    log::info!(
                        "switchboard[{}]: no usage in the stream; tenant {} is charged {prompt} + {completion} tokens relayed",
                        self.request_id,
                        tenant.name,
                    );
                    end.tokens =
                        Some((admission.window_start_s, admission.reserved, prompt.saturating_add(completion)));
                }
                None => log::info!(
                    "switchboard[{}]: no usage in the answer; tenant {} keeps its estimate of {} tokens",
                    self.request_id,
                    tenant.name,
                    admission.reserved
                ),
            }
        }
        // Spend: the serving member's prices times the real usage, else its worst case there.
        let served = self.plan.as_ref().and_then(|p| p.attempts.last()).filter(|a| (200..300).contains(&a.status));
        if let (Some(served), Some(_)) = (served, &tenant.budget) {
            let member = rt.config.member(served.at());
            // A stream without usage is charged what was relayed of it (`count_relayed`).
            let usage = usage.or(self.stream_end.as_ref().map(|_| self.obs.estimate));
            end.spend_micro_usd = member.map_or(0, |m| tenant_store::spent_on(&admission.budget, m, usage));
        }
        if end != Settlement::default() {
            tenant_store::settle(tenant, now_s, &end);
        }
    }

    /// `attempt` ends without a verdict on its member (the client left, or a
    /// hedge won): the call log lists it with `status` (0: no answer yet).
    fn unjudged(&mut self, rt: &Runtime, attempt: &Attempt, status: u16) {
        let now = self.now_ms();
        self.obs.attempts.push((attempt.picked.member, status, now.saturating_sub(attempt.began_ms)));
        self.abandon(rt, attempt);
    }

    /// The client left before `attempt`'s member answered at all: nothing to
    /// judge the member by, unless the pool's other members have been
    /// answering much faster (a hung member, `routing::silence`).
    fn left_unanswered(&mut self, rt: &Runtime, attempt: &Attempt) {
        let now = self.now_ms();
        let waited = now.saturating_sub(attempt.began_ms);
        if now == 0 || !rt.abort_is_failure(attempt.picked.member, waited, now) {
            return self.unjudged(rt, attempt, 0);
        }
        log::warn!(
            "switchboard[{}]: client left after {waited} ms without an answer from {}, while the pool's other \
             members answered much faster: counted as its failure",
            self.request_id,
            rt.member_id(attempt.picked.member)
        );
        self.finish(rt, attempt, 0, None, now);
    }

    /// An answer still being relayed when the stream ended never reached its
    /// end: cut off by the upstream (the member's failure), or by the client.
    fn end_unfinished_answer(&mut self, rt: &Runtime) {
        let (attempt, status) = match std::mem::replace(&mut self.state, State::Passing) {
            State::Relaying { attempt, status }
            | State::Holding { attempt, status }
            | State::Priming { attempt, status, .. } => (attempt, status),
            State::Routed(attempt) | State::Failover { attempt, .. } => return self.left_unanswered(rt, &attempt),
            State::Resuming { attempt, .. } => return self.unjudged(rt, &attempt, 0),
            _ => return,
        };
        let details = abi::property(&["response", "code_details"]).ok().flatten().unwrap_or_default();
        let details = String::from_utf8_lossy(&details);
        if details.contains("downstream") {
            log::info!("switchboard[{}]: client left before the answer ended ({details})", self.request_id);
            return self.unjudged(rt, &attempt, status);
        }
        log::warn!(
            "switchboard[{}]: answer from {} ended early ({details})",
            self.request_id,
            rt.member_id(attempt.picked.member)
        );
        let now = self.now_ms();
        self.cut_answer(rt, &attempt, now);
    }

    /// An answer broken after its headers went out (the upstream cut it, or it
    /// fell silent past `stream_idle_timeout_ms`): the member's failure, and for
    /// the call log and the request stats what the client got, a broken answer,
    /// 502 rather than the 200 its headers said (`"cut": true` in the call log).
    fn cut_answer(&mut self, rt: &Runtime, attempt: &Attempt, now: u64) {
        self.obs.status = CUT_STATUS;
        self.obs.cut = true;
        let at = attempt.picked.member;
        rt.metrics.inc(rt.metrics.member(at.pool, at.member).and_then(|m| m.cut_answers));
        self.finish(rt, attempt, 0, None, now);
    }
}

/// How a request whose answer broke after its headers is counted and logged.
const CUT_STATUS: u16 = 502;
