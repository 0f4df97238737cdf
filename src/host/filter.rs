//! The HTTP context: one client request. Reads the body, routes it to a pool
//! member by rewriting the request, and on a retriable upstream answer pauses
//! the response and retries other members through `dispatch_http_call`,
//! replacing the response with the first success.
//!
//! A stream's failed attempt is replayed by Envoy instead (internal redirect,
//! `filter/replay.rs`), so the next member's answer streams to the client;
//! one that breaks after its first byte may be continued (`filter/resume.rs`).
//!
//! The request's state and the bookkeeping of its attempts are the host-free
//! `exchange`: every attempt, routed or dispatched, ends in `Exchange::finish`;
//! every failed one continues in `fail_over`, which dispatches the next member
//! or answers what the exchange says when none is left.

mod followup;
mod hedge;
mod resume;
mod stream_idle;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::api::forward::relayed_response_header;
use crate::api::models::ModelListing;
use crate::api::request::{model_of, ParsedRequest};
use crate::api::{ApiError, ErrorCode};
use crate::config::MemberRef;
use crate::doors::{messages, Door, DoorError};
use crate::encoding::percent_decode;
use crate::exchange::{
    build_upstream, feedback_body, Admission, Attempt, BodyFor, ChatBody, Exchange, Hedge, IdleWatch, Passage, Relayed,
    Route, State, Step, Whole,
};
use crate::providers::UpstreamRequest;
use crate::routing::router::HeaderLookup;
use crate::routing::{redirect, Plan};
use crate::tenant::limits::Settlement;
use crate::tenant::{authenticate, presented_key};

use super::fleet::{self, Ask};
use super::learned_store::{self, Decided, Feedback, Scorer};
use super::observe;
use super::runtime::Runtime;
use super::{abi, shadow, tenant_store, wake};

mod replay;

const REQ: u32 = abi::MAP_REQUEST_HEADERS;
const RESP: u32 = abi::MAP_RESPONSE_HEADERS;
/// With the call log on, an unauthenticated request whose body declares at most
/// this size is refused once its body is in, so that the line names the model it
/// asked for; a larger or undeclared body is refused at its headers, unread.
const REFUSED_BODY_PEEK_BYTES: usize = 64 * 1024;

pub struct Filter {
    rt: Option<Rc<Runtime>>,
    /// The request itself: its state, what it asked, what it tried.
    ex: Exchange,
    context_id: u32,
    /// This filter, for the root context to wake (see `wake`).
    me: wake::Handle,
    hedge: Option<Hedge>,
    idle: Option<IdleWatch>,
    resume: Option<Box<resume::Resume>>,
    /// The client's request headers, serialized as the host gave them.
    client_headers: Vec<u8>,
    /// What a learned router decided for this request (score header, feedback).
    learned: Option<Decided>,
    /// The gateway-made id its owner scores this answer with (`x-switchboard-feedback-id`).
    feedback_id: String,
    /// The id of the natively served Responses answer was remembered (`followup`).
    response_noted: bool,
    /// The token of the routed attempt, when it can fail over by internal redirect.
    try_token: Option<String>,
    /// A refusal at the headers that waits for a small body (see `REFUSED_BODY_PEEK_BYTES`).
    refused: Option<ApiError>,
    /// Fleet mode: the tenant's admission asked of the state service.
    fleet: Ask,
}

impl Filter {
    pub fn new(context_id: u32, rt: Option<Rc<Runtime>>) -> Self {
        Filter {
            rt,
            ex: Exchange::default(),
            context_id,
            me: wake::Handle::new(),
            hedge: None,
            idle: None,
            resume: None,
            client_headers: Vec::new(),
            response_noted: false,
            learned: None,
            feedback_id: String::new(),
            try_token: None,
            refused: None,
            fleet: Ask::Idle,
        }
    }

    /// A request refused at its headers whose body was awaited: answered once the
    /// body is in (the call log names its model), or at once if it grows too large.
    fn refuse_after_body(&mut self, refusal: ApiError, body_size: usize, end_of_stream: bool) -> Action {
        if body_size <= REFUSED_BODY_PEEK_BYTES {
            if !end_of_stream {
                self.refused = Some(refusal);
                return Action::Pause;
            }
            self.ex.obs.model = abi::buffer(abi::BUFFER_REQUEST_BODY, 0, body_size).ok().and_then(|b| model_of(&b));
        }
        self.answer_error(&refusal)
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
        log::warn!("switchboard[{}]: host call failed: {what} (status {status})", self.ex.request_id);
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
        let Some(rt) = self.rt.clone() else {
            self.ex.state = State::Answered;
            let body = error.to_json();
            if let Err(s) = abi::send_local_response(error.status, &[("content-type", "application/json")], &body) {
                self.host_error("send_local_response", s);
            }
            return Action::Pause;
        };
        let step = self.ex.error_reply(&*rt, error);
        self.apply(step)
    }

    /// Does what the exchange asks of the host.
    fn apply(&mut self, step: Step) -> Action {
        match step {
            Step::Continue => Action::Continue,
            Step::Pause => Action::Pause,
            Step::Reply { status, headers, body } => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if let Err(s) = abi::send_local_response(status, &headers, &body) {
                    self.host_error("send_local_response", s);
                }
                Action::Pause
            }
        }
    }

    /// Answers a 200 JSON body the gateway wrote itself (model listings, token counts).
    fn answer_json(&mut self, rt: &Runtime, body: Vec<u8>) -> Action {
        let step = self.ex.json_reply(rt, body);
        self.apply(step)
    }

    /// Refuses a door request its translator cannot take (always a 400).
    fn refuse_door_request(&mut self, rt: &Runtime, e: &DoorError) -> Action {
        let step = self.ex.refuse_door_request(rt, e);
        self.apply(step)
    }

    /// Every attempt failed (or every member is out): the exchange's answer.
    fn exhausted(&mut self, rt: &Runtime) -> Action {
        let step = self.ex.exhausted(rt);
        self.apply(step)
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
            let Some(attempt) = self.ex.next_attempt(rt, now) else { return Err(self.exhausted(rt)) };
            match start(self, attempt.picked.member) {
                Ok(started) => return Ok((attempt, started)),
                Err(e) => self.ex.start_failed(rt, &attempt, what, &e, now),
            }
        }
    }

    /// What the caller may see of the models: its tenant's listing, else all.
    fn listing<'r>(&self, rt: &'r Runtime) -> &'r ModelListing {
        match &self.ex.tenant {
            Some(t) => rt.tenant_listings.get(t.index).unwrap_or(&rt.listing),
            None => &rt.listing,
        }
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.ex.state = State::Answered;
        let now = self.now_ms();
        self.ex.obs.answered(status, now);
        if let Err(s) = abi::send_local_response(status, headers, body) {
            self.host_error("send_local_response", s);
        }
    }

    /// A complete request body: answered here (token counting) or routed.
    fn serve(&mut self, rt: &Runtime, body: Vec<u8>) -> Action {
        match self.ex.body_for {
            BodyFor::Routing => self.route(rt, body),
            BodyFor::Feedback => self.take_feedback(rt, &body),
            BodyFor::CountTokens => match messages::count_tokens(&body) {
                Ok(count) => self.answer_json(rt, count),
                Err(e) => self.refuse_door_request(rt, &e),
            },
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
                if rt.config.call_log {
                    let score_text = serde_json::to_string(&score).unwrap_or_default();
                    self.ex.obs.feedback = Some((request_id.clone(), score_text));
                }
                // Only a weak-pool answer's score is a label.
                if let Some((label, router, model)) = label.and_then(|l| {
                    Some((l, rt.config.routers.get(l.router)?, rt.learned_models.get(l.router)?.as_ref()?))
                }) {
                    if let Some(learned) = &router.learned {
                        let key = learned_store::learning_key(&router.name, model, learned);
                        if let Some(shared) = &rt.config.shared_state {
                            fleet::tell_learned(shared, &key, &label.inputs, label.logit, score as f32, self.context_id);
                        } else {
                            learned_store::learn(&key, &label.inputs, label.logit, score as f32);
                            rt.learned_learning.forget(label.router);
                        }
                    }
                }
                let request_id = self.ex.request_id.clone();
                self.respond(204, &[("x-switchboard-request-id", &request_id)], b"");
                Action::Pause
            }
        }
    }

    /// Who may score this request: its tenant ("" without tenants).
    fn feedback_owner(&self, rt: &Runtime) -> String {
        let tenant = self.ex.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index));
        tenant.map(|t| t.name.clone()).unwrap_or_default()
    }

    fn route(&mut self, rt: &Runtime, client_body: Vec<u8>) -> Action {
        let client_len = client_body.len();
        // Fleet mode: the body is routed again once the state service has answered.
        let asks = rt.config.shared_state.is_some() && self.ex.tenant.is_some() && matches!(self.fleet, Ask::Idle);
        let kept = asks.then(|| client_body.clone());
        let ChatBody { body, native_only } = match self.ex.to_chat(client_body) {
            Ok(chat) => chat,
            Err(e) => return self.refuse_door_request(rt, &e),
        };
        let now = self.now_ms();
        let (plan, picked, upstream) = {
            let mut parsed = match ParsedRequest::parse(&body, self.ex.endpoint) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            // A stand-in for a door body only native members take: its fields are not chat parameters.
            if native_only.is_some() {
                parsed.params = 0;
            }
            let headers = RequestHeaders(&self.client_headers);
            let scorer = Scorer {
                config: &rt.config,
                models: &rt.learned_models,
                learning: &rt.learned_learning,
                now_ms: now,
                decided: Cell::new(None),
                prompt: RefCell::new(None),
            };
            let mut plan = match self.ex.plan(rt, &parsed, &headers, Some(&scorer), native_only, now) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            if let Err(e) = self.hold_conversation(rt, &mut plan, &parsed.target) {
                return self.answer_error(&e);
            }
            self.learned = scorer.decided.get();
            match self.admit_tenant(rt, &parsed, &plan, client_len, now) {
                Err(e) => return self.answer_error(&e),
                Ok(false) => {
                    if let (Ask::Waiting { body, .. }, Some(kept)) = (&mut self.fleet, kept) {
                        *body = kept;
                    }
                    return Action::Pause;
                }
                Ok(true) => {}
            }
            let Some(picked) = self.ex.pick_first(rt, &mut plan, now) else {
                self.ex.plan = Some(plan);
                return self.exhausted(rt);
            };
            let upstream =
                match build_upstream(rt, self.ex.endpoint, &parsed, picked.member, now, self.ex.native_body()) {
                    Ok(u) => u,
                    Err(e) => return self.answer_error(&e),
                };
            // Scorable only once actually routed (not refused by limits), by its owner.
            if let Some(decided) = self.learned {
                self.feedback_id = format!("{:016x}", rt.random());
                learned_store::remember(&self.feedback_owner(rt), &self.feedback_id, &decided, now);
                self.ex.obs.feedback_id = Some(self.feedback_id.clone());
                self.ex.obs.prompt = scorer.prompt.take();
            }
            self.ex.routed(&parsed, body.len(), now);
            (plan, picked, upstream)
        };
        self.ex.plan = Some(plan);
        let timeouts = self.ex.timeouts_ms(rt, picked.member.pool, now, self.ex.shape.stream);
        let present = &self.client_headers;
        if let Err((what, s)) = self.rewrite_request(rt, picked.member, &upstream, timeouts, client_len, present) {
            self.host_error(what, s);
            return self.answer_error(&ApiError::internal("The gateway could not rewrite the request."));
        }
        shadow::sample(rt, picked.member.pool, self.ex.endpoint, &body, &self.client_headers);
        self.ex.body = body;
        self.ex.state = State::Routed(self.ex.begin(rt, picked, now));
        self.arm_hedge(rt, picked.member.pool, now);
        self.tag_try(picked.member);
        Action::Continue
    }

    /// The calling tenant's admission (`Exchange::tenant_ask`), decided by
    /// its store: this proxy's shared data, or in fleet mode the state
    /// service (`Ok(false)` while its answer is awaited).
    fn admit_tenant(
        &mut self,
        rt: &Runtime,
        parsed: &ParsedRequest<'_>,
        plan: &Plan,
        body_len: usize,
        now: u64,
    ) -> Result<bool, ApiError> {
        let Some(ask) = self.ex.tenant_ask(rt, parsed, plan, body_len)? else { return Ok(true) };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(ask.index)) else { return Ok(true) };
        let now_s = now / 1000;
        let (reserve, worst) = (ask.reserve, ask.budget.micro_usd);
        let verdict = match (&rt.config.shared_state, self.ex.tenant.as_mut()) {
            (Some(shared), Some(admission)) => {
                let lease = *admission.lease.get_or_insert_with(|| rt.random());
                match fleet::admission(&mut self.fleet, shared, tenant, lease, now, reserve, worst) {
                    fleet::Step::Wait => return Ok(false),
                    fleet::Step::Deny(e) => {
                        admission.lease = None;
                        return Err(e);
                    }
                    fleet::Step::Local => {
                        admission.lease = None;
                        self.ex.obs.limits = Some("local");
                        tenant_store::admit(tenant, now_s, reserve, worst)
                    }
                    fleet::Step::Shared(verdict) => {
                        self.ex.obs.limits = Some("shared");
                        verdict.map(|window| Some(crate::tenant::limits::TenantState { window, ..Default::default() }))
                    }
                }
            }
            _ => tenant_store::admit(tenant, now_s, reserve, worst),
        };
        self.ex.tenant_verdict(rt, &ask, verdict, now).map(|()| true)
    }

    /// Lets a successful answer through; it is recorded when its body ends.
    fn relay(&mut self, rt: &Runtime, attempt: Attempt, status: u16, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.ex.finish_success(rt, &attempt, status);
        } else {
            self.watch_stream_idle(attempt.picked.member.pool, status);
            self.ex.state = State::Relaying { attempt, status };
        }
        Action::Continue
    }

    /// After a failed attempt: dispatches the request to the next member, or
    /// answers that every attempt failed (none left, or the deadline passed).
    fn fail_over(&mut self, rt: &Runtime, now: u64) -> Action {
        match self.start_next(rt, now, "failover call", |f, member| f.dispatch(rt, member, now)) {
            Ok((attempt, call)) => {
                self.ex.state = State::Failover { attempt, call };
                Action::Pause
            }
            Err(exhausted) => exhausted,
        }
    }

    /// Sends the saved request to `member` with Envoy's HTTP call API.
    fn dispatch(&self, rt: &Runtime, member: MemberRef, now: u64) -> Result<u32, ApiError> {
        let parsed = ParsedRequest::parse(&self.ex.body, self.ex.endpoint)?;
        let upstream = build_upstream(rt, self.ex.endpoint, &parsed, member, now, self.ex.native_body())?;
        self.dispatch_upstream(rt, member, now, &upstream, self.ex.shape.stream)
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
        let present = abi::pairs(&self.client_headers);
        let call = self
            .ex
            .dispatch(rt, member, now, upstream, stream, present)
            .ok_or_else(|| ApiError::internal("member without cluster"))?;
        let timeout = Duration::from_millis(call.timeout_ms);
        proxy_wasm::hostcalls::dispatch_http_call(call.cluster, call.headers(), Some(call.body()), vec![], timeout)
            .map_err(|s| ApiError::internal(format!("dispatch_http_call to cluster {} failed: {s:?}", call.cluster)))
    }

    /// Points the paused request at `member` (`present`: its header map as
    /// it is now) as the exchange's `Rewrite` says.
    fn rewrite_request(
        &self,
        rt: &Runtime,
        member: MemberRef,
        upstream: &UpstreamRequest,
        timeouts: (u64, Option<u64>),
        original_len: usize,
        present: &[u8],
    ) -> Result<(), (&'static str, abi::Status)> {
        let rewrite = self
            .ex
            .rewrite(rt, member, upstream, timeouts, original_len, abi::pairs(present))
            .map_err(|_| ("remove request header", abi::NOT_FOUND))?;
        if let Some(body) = rewrite.body {
            abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, original_len, body).map_err(|s| ("set request body", s))?;
        }
        for (name, value) in &rewrite.headers {
            match value {
                Some(v) => abi::set_header(REQ, name, v).map_err(|s| ("set request header", s))?,
                None => abi::remove_header(REQ, name).map_err(|s| ("remove request header", s))?,
            }
        }
        Ok(())
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
        for (k, v) in self
            .ex
            .result_headers(rt, serving, self.learned.as_ref().map(|d| (d.score, self.feedback_id.as_str())))
            .iter()
        {
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
        if matches!(self.fleet, Ask::Waiting { token, .. } if token == token_id) {
            return self.admission_answered(num_headers, body_size);
        }
        if !self.hedge_answered(token_id, num_headers) {
            return;
        }
        if let (State::Resuming { .. }, Some(rt)) = (&self.ex.state, self.rt.clone()) {
            return self.resume_answered(&rt, token_id, num_headers, body_size);
        }
        let State::Failover { call, .. } = &self.ex.state else { return };
        if *call != token_id {
            return;
        }
        let State::Failover { mut attempt, .. } = std::mem::replace(&mut self.ex.state, State::Answered) else {
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
            self.ex.finish(&*rt, &attempt, status, header_value(&headers, "retry-after"), now);
            self.fail_over(&rt, now);
            return;
        }
        let body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_else(|s| {
            self.host_error("get call response body", s);
            Vec::new()
        });
        // A stream given whole that ended short of its end (or with an error
        // event) has reached no one yet: it fails over as its member's 502.
        // (Else, when the pool does not fail over on 502, it is relayed with its end.)
        let fails_over = rt.is_failure(attempt.picked.member, 502);
        let content_type = header_value(&headers, "content-type");
        let Whole { verdict, content_type, body } =
            self.ex.answer.whole(&mut attempt, status, content_type, body, fails_over);
        if verdict != status {
            rt.metrics.local_error(ErrorCode::InvalidUpstreamResponse);
            log::warn!(
                "switchboard[{}]: unreadable or incomplete {status} answer from {}",
                self.ex.request_id,
                rt.member_id(attempt.picked.member)
            );
        }
        if self.ex.finish(&*rt, &attempt, verdict, None, now) {
            self.fail_over(&rt, now);
            return;
        }
        self.ex.answer.note(&body);
        self.note_response_id(&rt, attempt.picked.member, attempt.native, verdict);
        self.ex.answer.note_adapter_usage(attempt.adapter.as_ref());
        let ours = self.ex.result_headers(
            &*rt,
            attempt.picked.member,
            self.learned.as_ref().map(|d| (d.score, self.feedback_id.as_str())),
        );
        let mut out: Vec<(&str, &str)> = vec![("content-type", &content_type)];
        out.extend(ours.iter().map(|(k, v)| (*k, v.as_str())));
        out.extend(abi::pairs(&headers).filter_map(|(k, v)| {
            let name = relayed_response_header(std::str::from_utf8(k).ok()?)?;
            Some((name, std::str::from_utf8(v).ok()?))
        }));
        self.respond(verdict, &out, &body);
        if self.ex.shape.stream {
            // A failed-over stream reaches the client whole: its first event leaves now.
            self.ex.obs.first_event_ms = self.ex.obs.first_byte_ms;
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return self.answer_error(&ApiError::internal("switchboard is not configured"));
        };
        self.ex.obs.start_ms = self.now_ms();
        // One host call for every header the filter needs now and for the rewrite later.
        let raw = match abi::headers_raw(REQ) {
            Ok(raw) => raw,
            Err(s) => {
                self.host_error("get request headers", s);
                return self.answer_error(&ApiError::internal("The gateway could not read the request headers."));
            }
        };
        self.ex.request_id = match header_value(&raw, "x-request-id") {
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
        self.ex.door = Door::error_shape_of(&path);
        if let Some(tenants) = &rt.config.tenants {
            let key = presented_key(|name| header_value(&raw, name));
            match authenticate(tenants, key) {
                Ok(index) => self.ex.tenant = Some(Admission { index, ..Admission::default() }),
                Err(e) if rt.config.call_log && !end_of_stream && small_body(&raw) => {
                    self.refused = Some(e);
                    return Action::Pause;
                }
                Err(e) => return self.answer_error(&e),
            }
        }
        let declared = header_value(&raw, "content-length").and_then(|v| v.parse::<usize>().ok());
        let route = match Route::parse(header_value(&raw, ":method").unwrap_or_default(), &path) {
            Ok(route) => route,
            Err(e) => return self.answer_error(&e),
        };
        // The client's headers never reach the provider as they are: the
        // rewrite replaces the whole map (a client can never pick a cluster).
        self.client_headers = raw;
        let body = match route {
            Route::Followup(f) => return self.serve_followup(&rt, f),
            Route::Models { query } => {
                let body = self.listing(&rt).body(query).to_vec();
                return self.answer_json(&rt, body);
            }
            Route::Model { id } => {
                // The SDKs percent-encode the id (`o1/gpt-4o` arrives as `o1%2Fgpt-4o`).
                let id = String::from_utf8_lossy(&percent_decode(id)).into_owned();
                let Some(body) = self.listing(&rt).entry(&id).map(<[u8]>::to_vec) else {
                    return self.answer_error(&rt.config.unknown_target(&id, "model"));
                };
                return self.answer_json(&rt, body);
            }
            _ => route.body(),
        };
        if let Some((body_for, endpoint, door)) = body {
            (self.ex.body_for, self.ex.endpoint, self.ex.door) = (body_for, endpoint, door);
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
        match self.ex.state {
            State::Reading => {}
            State::Replayed { .. } => return self.replay_body(body_size, end_of_stream),
            State::Answered => return Action::Pause,
            _ => return Action::Continue,
        }
        if let Some(refusal) = self.refused.take() {
            return self.refuse_after_body(refusal, body_size, end_of_stream);
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
        match self.ex.state {
            State::Reading => {}
            State::Replayed { .. } => {
                let size = abi::buffer(abi::BUFFER_REQUEST_BODY, 0, usize::MAX).map_or(0, |b| b.len());
                return self.replay_body(size, true);
            }
            State::Answered => return Action::Pause,
            _ => return Action::Continue,
        }
        if let Some(refusal) = self.refused.take() {
            let size = abi::buffer(abi::BUFFER_REQUEST_BODY, 0, REFUSED_BODY_PEEK_BYTES + 1).map_or(0, |b| b.len());
            return self.refuse_after_body(refusal, size, true);
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
        let mut attempt = match std::mem::replace(&mut self.ex.state, State::Passing) {
            State::Routed(attempt) => attempt,
            // A routed answer coming while a hedge's or failover's answer is awaited waits too.
            other @ State::Failover { .. } => {
                self.ex.state = other;
                return Action::Pause;
            }
            other => {
                self.ex.state = other;
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
            self.ex.finish(&*rt, &attempt, status, retry_after, now);
            if let Some(wait) = self.settle_hedge(&rt, true) {
                return wait;
            }
            return self.fail_over(&rt, now);
        }
        self.settle_hedge(&rt, false);
        self.watch_resume(&rt, &attempt, status);
        self.ex.answer.start(&attempt, status);
        let translated = ["content-type", "content-length"];
        match self.ex.answer.passage(&attempt, status) {
            Passage::AsIs => {
                self.ex.obs.answered(status, now);
                self.set_response_headers(&rt, attempt.picked.member, &headers, &[], &[]);
                return self.relay(&rt, attempt, status, end_of_stream);
            }
            Passage::Stream { primed } => {
                self.ex.obs.answered(status, now);
                let content_type = [("content-type", "text/event-stream")];
                self.set_response_headers(&rt, attempt.picked.member, &headers, &translated, &content_type);
                if primed && !end_of_stream {
                    self.ex.state = State::Priming { attempt, status, fed: 0 };
                    return Action::Pause;
                }
                return self.relay(&rt, attempt, status, end_of_stream);
            }
            Passage::Whole => {}
        }
        let content_type = [("content-type", "application/json")];
        self.set_response_headers(&rt, attempt.picked.member, &headers, &translated, &content_type);
        if end_of_stream {
            self.ex.obs.answered(status, now);
            self.ex.finish_success(&*rt, &attempt, status);
            return Action::Continue;
        }
        // A whole translated body is only known good once read: hold the
        // headers so an unreadable answer can still fail over.
        self.ex.state = State::Holding { attempt, status };
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream_alive();
        match &self.ex.state {
            // Hold the failed upstream's body back until the local answer replaces it.
            State::Failover { .. } | State::Resuming { .. } => return Action::Pause,
            State::Holding { .. } if !end_of_stream => return Action::Pause,
            State::Holding { .. } | State::Priming { .. } => {}
            State::Relaying { attempt, .. } if self.ex.answer.reads(attempt) => {}
            State::Relaying { .. } if end_of_stream => {
                if let (State::Relaying { attempt, status }, Some(rt)) =
                    (std::mem::replace(&mut self.ex.state, State::Passing), self.rt.clone())
                {
                    self.ex.finish_success(&*rt, &attempt, status);
                }
                return Action::Continue;
            }
            _ => return Action::Continue,
        }
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        // A primed stream's body is buffered by Envoy while held: only the new bytes are read.
        let start = if let State::Priming { fed, .. } = &self.ex.state { (*fed).min(body_size) } else { 0 };
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
        let out = match std::mem::replace(&mut self.ex.state, State::Passing) {
            State::Priming { attempt, status, .. } => {
                match self.prime(&rt, attempt, status, &chunk, body_size, end_of_stream) {
                    Ok(out) => {
                        if self.ex.obs.first_event_ms == 0 && !out.is_empty() {
                            self.ex.obs.first_event_ms = self.now_ms();
                        }
                        out
                    }
                    Err(action) => return action,
                }
            }
            State::Relaying { mut attempt, status } => {
                if self.ex.shape.stream && self.ex.obs.first_event_ms == 0 && body_size > 0 {
                    self.ex.obs.first_event_ms = self.now_ms();
                }
                let watch = self.resume.as_deref_mut().map(|r| &mut r.watch);
                let relayed = self.ex.answer.relay(&mut attempt, &chunk, end_of_stream, watch);
                self.note_response_id(&rt, attempt.picked.member, attempt.native, status);
                let translated = match relayed {
                    Relayed::Broken(out) => return self.continue_stream(&rt, attempt, body_size, out),
                    Relayed::Out(out) => out,
                };
                if end_of_stream {
                    self.ex.stream_ended(&*rt, &attempt, status);
                } else {
                    self.ex.state = State::Relaying { attempt, status };
                }
                // A pass-through answer read only for its usage stays as it is.
                let Some(out) = translated else { return Action::Continue };
                out
            }
            State::Holding { mut attempt, status } => {
                let (out, door_status, unreadable) = self.ex.answer.hold(&mut attempt, status, chunk);
                if unreadable {
                    rt.metrics.local_error(ErrorCode::InvalidUpstreamResponse);
                    log::warn!(
                        "switchboard[{}]: unreadable {status} answer from {}",
                        self.ex.request_id,
                        rt.member_id(attempt.picked.member)
                    );
                    // The headers are still held: an unreadable answer is the member's 502.
                    let now = self.now_ms();
                    if self.ex.finish(&*rt, &attempt, 502, None, now) {
                        return self.fail_over(&rt, now);
                    }
                } else {
                    self.ex.finish_success(&*rt, &attempt, status);
                }
                let now = self.now_ms();
                self.ex.obs.answered(door_status, now);
                if door_status != status {
                    if let Err(s) = abi::set_header(RESP, ":status", &door_status.to_string()) {
                        self.host_error("set response status", s);
                    }
                }
                out
            }
            other => {
                self.ex.state = other;
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
        let ended_ms = if self.ex.obs.ended_ms > 0 { self.ex.obs.ended_ms } else { self.now_ms() };
        self.ex.count_relayed();
        self.report(&rt, ended_ms);
        self.release_tenant(&rt, ended_ms);
    }
}

impl Filter {
    /// The call-log line and the request-end stats.
    fn report(&self, rt: &Runtime, ended_ms: u64) {
        let end = observe::End {
            request_id: &self.ex.request_id,
            tenant: self.ex.tenant.as_ref().map(|t| t.index),
            plan: self.ex.plan.as_ref(),
            stream: self.ex.shape.stream,
            usage: self.ex.answer.usage(),
            now_ms: ended_ms,
        };
        observe::report(rt, &self.ex.obs, &end);
    }

    /// The tenant's request ended: the exchange's settlement, told to the
    /// store that admitted it.
    fn release_tenant(&mut self, rt: &Runtime, ended_ms: u64) {
        let Some((index, lease, end)) = self.ex.settlement(rt) else { return };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(index)) else { return };
        let now_s = ended_ms / 1000;
        match (lease, &rt.config.shared_state) {
            (Some(_), Some(shared)) => fleet::release(shared, tenant, &end, ended_ms, self.context_id),
            _ if end != Settlement::default() => tenant_store::settle(tenant, now_s, &end),
            _ => {}
        }
    }

    /// The state service answered the tenant's admission (or did not, in
    /// time): the request is routed again with its verdict, and resumed.
    fn admission_answered(&mut self, num_headers: usize, body_size: usize) {
        let Some(rt) = self.rt.clone() else { return };
        let now = self.now_ms();
        let body = fleet::answered(&mut self.fleet, now, num_headers, body_size);
        if self.route(&rt, body) == Action::Continue {
            if let Err(s) = abi::resume_request() {
                self.host_error("resume request", s);
            }
        }
    }

    /// The request ended with an attempt still open: the exchange judges it,
    /// from how the response ended (Envoy's details, read only when it asks).
    fn end_unfinished_answer(&mut self, rt: &Runtime) {
        self.ex.end_unfinished(rt, || {
            let details = abi::property(&["response", "code_details"]).ok().flatten().unwrap_or_default();
            String::from_utf8_lossy(&details).into_owned()
        });
    }
}

/// The request declares a body of at most `REFUSED_BODY_PEEK_BYTES`.
fn small_body(headers: &[u8]) -> bool {
    header_value(headers, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= REFUSED_BODY_PEEK_BYTES)
}
