//! One client request in the dynamic module: reads what Envoy hands the
//! hooks, asks the host-free `switchboard::exchange` what to do, and applies
//! it with the ABI's callbacks. The same decisions as the proxy-wasm host
//! (`src/host/filter.rs`) for what this host serves (see docs/native.md):
//! the request held until its body is in, routed by rewriting it (cluster
//! header, path, authority, credentials, body) for Envoy's router; a
//! retriable answer fails over through HTTP callouts, the first good answer
//! replacing it; answers translated back through the exchange's answer chain.

use std::sync::Arc;

use switchboard::api::forward::forwarded;
use switchboard::api::request::{model_of, ParsedRequest};
use switchboard::api::{ApiError, ErrorCode};
use switchboard::config::MemberRef;
use switchboard::doors::messages;
use switchboard::exchange::fleet::{self as fleet_mode, Ask};
use switchboard::exchange::learning::{self, Feedback, Scorer};
use switchboard::exchange::shadow;
use switchboard::exchange::{
    build_upstream, feedback_body, BodyFor, BodyRead, BodyStep, CallStep, Calls, Exchange, HeadersStep, Opening,
    Relays, State, Step, Timer, REFUSED_BODY_PEEK_BYTES,
};
use switchboard::observe::{CallRecord, Outcome};
use switchboard::providers::UpstreamRequest;
use switchboard::routing::redirect;
use switchboard::routing::router::HeaderLookup;
use switchboard::routing::Plan;

use crate::abi::{self, Stream, REQUEST_HEADERS as REQ, RESPONSE_HEADERS as RESP};
use crate::fleet::{self, Fleet, StreamCalls};
use crate::metrics::{Family, Labels};
use crate::parked;
use crate::shadow::Shadows;
use crate::state::{self, Runtime};
use crate::timers::{self, Waker};

/// Names the authenticated tenant on the request, for Envoy filters after this one.
const TENANT_HEADER: &str = "x-switchboard-tenant";
/// The call-log line's filter-state key (`%FILTER_STATE(switchboard.call:PLAIN)%`).
const CALL_LOG_KEY: &str = "switchboard.call";

pub struct Filter {
    rt: Arc<Runtime>,
    ex: Exchange,
    /// The client's request headers as they came.
    client_headers: Vec<(String, String)>,
    /// All of the request body is in Envoy's buffer, nothing "received" (it ended with
    /// trailers, or waited for the fleet's answer).
    body_buffered: bool,
    /// Fleet mode: where the tenant's admission by the state service stands.
    fleet: Ask,
    /// The request's way back from the timer thread, made when it first needs waking.
    waker: Option<Arc<Waker>>,
    /// A refusal at the headers that waits for a small body (see `REFUSED_BODY_PEEK_BYTES`).
    refused: Option<ApiError>,
    /// A replay's own header map (the previous attempt's rewrite, at the redirect's URL), rewritten
    /// for the next member; `client_headers` are then the client's, as the parked request kept them.
    replay_headers: Vec<(String, String)>,
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(waker) = &self.waker {
            waker.forget();
        }
    }
}

/// The calls a request sends on its own (failovers), as HTTP callouts with
/// the client's allow-listed headers.
struct Caller<'a> {
    s: Stream,
    rt: &'a Runtime,
    client_headers: &'a [(String, String)],
}

impl Calls for Caller<'_> {
    fn send(
        &mut self,
        ex: &Exchange,
        member: MemberRef,
        upstream: &UpstreamRequest,
        stream: bool,
        now: u64,
    ) -> Result<u64, ApiError> {
        let present = self.client_headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
        let call = ex
            .dispatch(self.rt, member, now, upstream, stream, present)
            .ok_or_else(|| ApiError::internal("member without cluster"))?;
        let cluster = call.cluster;
        self.s
            .callout(cluster, &call.headers(), call.body(), call.timeout_ms)
            .map_err(|r| ApiError::internal(format!("HTTP callout to cluster {cluster} failed to start ({r})")))
    }
}

/// What a hook tells Envoy (the status enums of the ABI).
pub type Status = u32;

struct Headers<'a>(&'a [(String, String)]);

impl HeaderLookup for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        header(self.0, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl Filter {
    pub fn new(rt: Arc<Runtime>) -> Filter {
        Filter {
            rt,
            ex: Exchange::default(),
            client_headers: Vec::new(),
            body_buffered: false,
            fleet: Ask::Idle,
            waker: None,
            refused: None,
            replay_headers: Vec::new(),
        }
    }

    /// Wakes this request on its worker at `at` (`on_scheduled`).
    fn wake_at(&mut self, s: Stream, at: u64) {
        if self.waker.is_none() {
            self.waker = abi::FilterScheduler::new(s.0).map(Waker::new);
        }
        match &self.waker {
            Some(waker) => timers::wake_request(at, waker),
            None => log::warn!("switchboard[{}]: no scheduler for this request: its timer is off", self.ex.request_id),
        }
    }

    /// Woken by the timer thread: a hedge or an idle stream may be due.
    pub fn on_scheduled(&mut self, s: Stream, event: u64) {
        if event != timers::WAKE_EVENT {
            return;
        }
        let rt = self.rt.clone();
        let now = state::now_ms();
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        match self.ex.on_timer(&*rt, now, &mut caller) {
            // A hedge's answer comes to `on_callout_done`, as a failover's does.
            Timer::Nothing | Timer::HedgeSent(_) => {}
            Timer::WakeAt(at) => self.wake_at(s, at),
            Timer::Reset => abi::reset_stream(s.0, "switchboard_stream_idle_timeout"),
        }
    }

    /// Does what the exchange asks: a reply is sent as Envoy's local reply.
    fn apply(&mut self, s: Stream, step: Step) -> Status {
        match step {
            Step::Continue => abi::HEADERS_CONTINUE,
            Step::Pause => abi::HEADERS_STOP_ITERATION,
            Step::Reply { status, headers, body } => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
                s.send_response(status, &headers, &body, "switchboard");
                abi::HEADERS_STOP_ITERATION
            }
        }
    }

    fn answer_error(&mut self, s: Stream, error: &ApiError) -> Status {
        let rt = self.rt.clone();
        let step = self.ex.error_reply(&*rt, error);
        self.apply(s, step)
    }

    /// Fails the request after a panic caught at the boundary (as the wasm build's trap would).
    pub fn fail_internal(&mut self, s: Stream) {
        if !matches!(self.ex.state, State::Answered) {
            self.ex.state = State::Answered;
            let body = ApiError::internal("The gateway failed on this request.").to_json();
            s.send_response(500, &[("content-type", "application/json")], &body, "switchboard_panic");
        }
    }

    pub fn on_request_headers(&mut self, s: Stream, end_of_stream: bool) -> Status {
        let rt = self.rt.clone();
        self.ex.obs.start_ms = state::now_ms();
        let raw = s.headers(REQ);
        let opening = self.ex.request_headers(&*rt, &raw.as_slice(), end_of_stream, true, state::random);
        self.client_headers = raw;
        match opening {
            Opening::Step(step) => self.apply(s, step),
            // Answered once the small body is in: the call log names the model it asked for.
            Opening::RefuseAfterBody(e) => {
                self.refused = Some(e);
                abi::HEADERS_STOP_ITERATION
            }
            Opening::Followup => self.serve_followup(s),
            Opening::Replay(token) => self.replay(s, &token, end_of_stream),
        }
    }

    /// A request whose path carries a failover token: the replay of a parked
    /// request, or a client's forgery, which gets nothing but a 400.
    fn replay(&mut self, s: Stream, token: &str, end_of_stream: bool) -> Status {
        let Some((ex, client_headers)) = parked::unpark(token) else {
            return self.answer_error(s, &switchboard::exchange::forged_token());
        };
        self.ex = ex;
        self.replay_headers = std::mem::replace(&mut self.client_headers, client_headers);
        let rt = self.rt.clone();
        let path = header(&self.replay_headers, ":path").unwrap_or_default().to_string();
        // This host keeps the replay's headers itself (`client_headers`).
        let step = self.ex.replayed(&*rt, Vec::new(), &path, end_of_stream);
        self.apply(s, step)
    }

    /// The replayed body is in (`size` bytes): the request goes to the next
    /// member (or answers that every attempt failed).
    fn replay_body(&mut self, s: Stream, size: usize) -> Status {
        if !matches!(std::mem::replace(&mut self.ex.state, State::Passing), State::Replayed { .. }) {
            return abi::BODY_CONTINUE;
        }
        let rt = self.rt.clone();
        let now = state::now_ms();
        let (client_headers, body_buffered) = (&self.replay_headers, self.body_buffered);
        let rewrite = |ex: &Exchange, member: MemberRef, upstream: &UpstreamRequest| {
            let timeouts = ex.timeouts_ms(&*rt, member.pool, now, ex.shape.stream);
            Target { s, rt: &rt, ex, client_headers, body_buffered }.rewrite(member, upstream, timeouts, size);
            Ok(())
        };
        match self.ex.start_next(&*rt, now, "replay", rewrite) {
            Ok((attempt, ())) => {
                let member = attempt.picked.member;
                self.ex.state = State::Routed(attempt);
                self.tag_try(s, member);
                abi::BODY_CONTINUE
            }
            Err(exhausted) => {
                self.apply(s, exhausted);
                abi::BODY_STOP_NO_BUFFER
            }
        }
    }

    /// Tags the routed attempt of a stream so the upstream filter can turn
    /// its failure into a redirect (when the configuration says that filter runs).
    fn tag_try(&mut self, s: Stream, member: MemberRef) {
        let rt = self.rt.clone();
        let Some(tag) = self.ex.try_tag(&*rt, member, &Headers(&self.client_headers)) else { return };
        if !s.set_header(REQ, redirect::TRY_HEADER, &tag) {
            self.ex.try_token = None;
        }
    }

    /// A follow-up on a stored response: passed through as it is to the
    /// provider that holds the response, or refused.
    fn serve_followup(&mut self, s: Stream) -> Status {
        let rt = self.rt.clone();
        let h = &self.client_headers;
        let (method, path) = (header(h, ":method").unwrap_or_default(), header(h, ":path").unwrap_or_default());
        let (member, upstream) = match self.ex.followup(&*rt, method, path) {
            Ok(to) => to,
            Err(e) => return self.answer_error(s, &e),
        };
        let now = state::now_ms();
        let timeouts = self.ex.timeouts_ms(&*rt, member.pool, now, self.ex.shape.stream);
        self.rewrite_request(s, member, &upstream, timeouts, 0);
        // The answer, whatever it is, passes as it is.
        self.ex.state = State::Passing;
        abi::HEADERS_CONTINUE
    }

    pub fn on_request_body(&mut self, s: Stream, end_of_stream: bool) -> Status {
        match self.ex.state {
            State::Reading => {}
            State::Replayed { .. } if !end_of_stream => return abi::BODY_STOP_AND_BUFFER,
            State::Replayed { .. } => {
                let size = s.body_size(abi::BUFFERED_REQUEST_BODY) + s.body_size(abi::RECEIVED_REQUEST_BODY);
                return self.replay_body(s, size);
            }
            State::Answered => return abi::BODY_STOP_NO_BUFFER,
            _ => return abi::BODY_CONTINUE,
        }
        let max = self.rt.config.max_body_bytes;
        let size = s.body_size(abi::BUFFERED_REQUEST_BODY) + s.body_size(abi::RECEIVED_REQUEST_BODY);
        if let Some(refusal) = self.refused.take() {
            return self.refuse_after_body(s, refusal, size, end_of_stream);
        }
        if size > max {
            self.answer_error(s, &ApiError::body_too_large(max));
            return abi::BODY_STOP_NO_BUFFER;
        }
        if !end_of_stream {
            return abi::BODY_STOP_AND_BUFFER;
        }
        let mut body = Vec::with_capacity(size);
        s.read_body(abi::BUFFERED_REQUEST_BODY, &mut body);
        s.read_body(abi::RECEIVED_REQUEST_BODY, &mut body);
        self.serve(s, body)
    }

    /// A request refused at its headers whose body was awaited: answered once the
    /// body is in (the call log names its model), or at once if it grows too large.
    fn refuse_after_body(&mut self, s: Stream, refusal: ApiError, size: usize, end_of_stream: bool) -> Status {
        if size <= REFUSED_BODY_PEEK_BYTES {
            if !end_of_stream {
                self.refused = Some(refusal);
                return abi::BODY_STOP_AND_BUFFER;
            }
            let mut body = Vec::with_capacity(size);
            s.read_body(abi::BUFFERED_REQUEST_BODY, &mut body);
            s.read_body(abi::RECEIVED_REQUEST_BODY, &mut body);
            self.ex.obs.model = model_of(&body);
        }
        self.answer_error(s, &refusal);
        abi::BODY_STOP_NO_BUFFER
    }

    /// A body followed by trailers ends here.
    pub fn on_request_trailers(&mut self, s: Stream) -> Status {
        if matches!(self.ex.state, State::Replayed { .. }) {
            self.body_buffered = true;
            return match self.replay_body(s, s.body_size(abi::BUFFERED_REQUEST_BODY)) {
                abi::BODY_CONTINUE => abi::HEADERS_CONTINUE,
                _ => abi::HEADERS_STOP_ITERATION,
            };
        }
        if !matches!(self.ex.state, State::Reading) {
            return abi::HEADERS_CONTINUE;
        }
        if let Some(refusal) = self.refused.take() {
            let size = s.body_size(abi::BUFFERED_REQUEST_BODY);
            self.refuse_after_body(s, refusal, size, true);
            return abi::HEADERS_STOP_ITERATION;
        }
        let mut body = Vec::new();
        s.read_body(abi::BUFFERED_REQUEST_BODY, &mut body);
        self.body_buffered = true;
        if body.len() > self.rt.config.max_body_bytes {
            self.answer_error(s, &ApiError::body_too_large(self.rt.config.max_body_bytes));
            return abi::HEADERS_STOP_ITERATION;
        }
        match self.serve(s, body) {
            abi::BODY_CONTINUE => abi::HEADERS_CONTINUE,
            _ => abi::HEADERS_STOP_ITERATION,
        }
    }

    /// A complete request body: token counting and feedback answered here, the rest routed.
    fn serve(&mut self, s: Stream, body: Vec<u8>) -> Status {
        let rt = self.rt.clone();
        let step = match self.ex.body_for {
            BodyFor::Routing => None,
            BodyFor::Feedback => Some(match feedback_body(&body) {
                Ok((request_id, score)) => self.take_feedback(&request_id, score),
                Err(e) => self.ex.error_reply(&*rt, &e),
            }),
            BodyFor::CountTokens => Some(match messages::count_tokens(&body) {
                Ok(count) => self.ex.json_reply(&*rt, count),
                Err(e) => self.ex.refuse_door_request(&*rt, &e),
            }),
        };
        if let Some(step) = step {
            self.apply(s, step);
            return abi::BODY_STOP_NO_BUFFER;
        }
        match self.route(s, body) {
            Ok(true) => abi::BODY_CONTINUE,
            // Waits for the state service with the whole body in Envoy's buffer.
            Ok(false) => {
                self.body_buffered = true;
                abi::BODY_STOP_AND_BUFFER
            }
            Err(e) => {
                if let Some(e) = e {
                    self.answer_error(s, &e);
                }
                abi::BODY_STOP_NO_BUFFER
            }
        }
    }

    /// `POST /v1/feedback`: the score taken by the store of remembered
    /// answers, learned from when it labels a weak-pool answer.
    fn take_feedback(&mut self, request_id: &str, score: f64) -> Step {
        let rt = self.rt.clone();
        let owner = self.ex.tenant_name(&*rt).to_string();
        // One journal for every thread: nothing to wait for.
        let (journal, now) = (state::journal(), state::now_ms());
        let taken = learning::take_feedback(&state::Data, &rt.config, journal, (&owner, request_id), true, now);
        if rt.config.call_log && matches!(taken, Feedback::Accepted(_)) {
            let score_text = serde_json::to_string(&score).unwrap_or_default();
            self.ex.obs.feedback = Some((request_id.to_string(), score_text));
        }
        // Only a weak-pool answer's score is a label.
        if let Feedback::Accepted(Some(label)) = taken {
            if let Some(key) = learning::learning_key_of(&rt.config, &rt.learned_models, label.router) {
                if rt.config.shared_state.is_some() {
                    Fleet::tell(&rt, fleet_mode::learned_path(&key, &label.inputs, label.logit, score as f32));
                } else {
                    learning::learn(&state::Data, &key, &label.inputs, label.logit, score as f32);
                    rt.learning.forget(label.router);
                }
            }
        }
        self.ex.feedback_reply(&*rt, request_id, &taken, learning::FEEDBACK_TTL_MS)
    }

    /// Plans the request, admits its tenant, picks a member and points the request at it.
    /// `Ok(false)`: the tenant's admission waits for the state service (fleet mode);
    /// `Err(None)`: answered already (every member out).
    fn route(&mut self, s: Stream, client_body: Vec<u8>) -> Result<bool, Option<ApiError>> {
        let rt = self.rt.clone();
        let client_len = client_body.len();
        // Fleet mode: the body is routed again once the state service has answered.
        let asks = rt.config.shared_state.is_some() && self.ex.tenant.is_some() && matches!(self.fleet, Ask::Idle);
        let mut kept = asks.then(|| client_body.clone());
        let (body, native_only) = match self.ex.door.to_chat(&client_body, self.ex.anthropic_beta.as_deref()) {
            Ok(Some(routed)) => {
                self.ex.door_body = client_body;
                (routed.chat, routed.native_only)
            }
            Ok(None) => (client_body, None),
            Err(e) => {
                let step = self.ex.refuse_door_request(&*rt, &e);
                self.apply(s, step);
                return Err(None);
            }
        };
        let now = state::now_ms();
        let (plan, picked, upstream) = {
            let mut parsed = ParsedRequest::parse(&body, self.ex.endpoint)?;
            // A stand-in for a door body only native members take: its fields are not chat parameters.
            if native_only.is_some() {
                parsed.params = 0;
            }
            let headers = Headers(&self.client_headers);
            // Consulted only when the request's router is a learned one.
            let scorer = Scorer::new(&rt.config, &state::Data, &rt.learned_models, &rt.learning, now);
            let mut plan = self.ex.plan(&*rt, &parsed, &headers, Some(&scorer), native_only, now)?;
            self.ex.hold_remembered(&*rt, &mut plan, &parsed.target)?;
            let learned = scorer.decided.get();
            if !self.admit_tenant(s, &parsed, &plan, client_len, now)? {
                if let (Ask::Waiting { body, .. }, Some(kept)) = (&mut self.fleet, kept.take()) {
                    *body = kept;
                }
                return Ok(false);
            }
            let Some(picked) = self.ex.pick_first(&*rt, &mut plan, now) else {
                self.ex.plan = Some(plan);
                let step = self.ex.exhausted(&*rt);
                self.apply(s, step);
                return Err(None);
            };
            let upstream = build_upstream(&*rt, self.ex.endpoint, &parsed, picked.member, now, self.ex.native_body())?;
            // Scorable only once actually routed (not refused by limits), by its owner.
            if let Some(decided) = learned {
                let owner = self.ex.tenant_name(&*rt);
                if let Some(id) = state::journal().remember(&state::Data, owner, &decided, now, state::random()) {
                    self.ex.remembered(decided.score, id, scorer.prompt.take());
                }
            }
            self.ex.routed(&parsed, body.len(), now);
            (plan, picked, upstream)
        };
        self.ex.plan = Some(plan);
        let timeouts = self.ex.timeouts_ms(&*rt, picked.member.pool, now, self.ex.shape.stream);
        self.rewrite_request(s, picked.member, &upstream, timeouts, client_len);
        let present = self.client_headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
        let pool = picked.member.pool;
        if let Some(copy) = shadow::sample(&rt.config, pool, self.ex.endpoint, &body, present, state::random) {
            Shadows::queue(&rt, copy);
        }
        self.ex.body = body;
        self.ex.state = State::Routed(self.ex.begin(&*rt, picked, now));
        if let Some(at) = self.ex.arm_hedge(&*rt, pool, now) {
            self.wake_at(s, at);
        }
        self.tag_try(s, picked.member);
        Ok(true)
    }

    /// The calling tenant's admission (`Exchange::tenant_ask`), decided by its
    /// store: this module's, or in fleet mode the state service (`Ok(false)`
    /// while its answer is awaited).
    fn admit_tenant(
        &mut self,
        s: Stream,
        parsed: &ParsedRequest<'_>,
        plan: &Plan,
        body_len: usize,
        now: u64,
    ) -> Result<bool, ApiError> {
        let rt = self.rt.clone();
        let Some(ask) = self.ex.tenant_ask(&*rt, parsed, plan, body_len)? else { return Ok(true) };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(ask.index)) else { return Ok(true) };
        let (now_s, reserve, worst) = (now / 1000, ask.reserve, ask.budget.micro_usd);
        let local = || state::admit_tenant(tenant, now_s, reserve, worst).map(Some);
        let verdict = match &rt.config.shared_state {
            Some(shared) => {
                let mut calls = StreamCalls { s, metrics: &rt.metrics };
                let fleet_verdict = self.ex.fleet_verdict(
                    &mut self.fleet,
                    &state::Data,
                    &mut calls,
                    shared,
                    tenant,
                    now,
                    (reserve, worst),
                    state::random,
                    local,
                );
                match fleet_verdict? {
                    Some(verdict) => verdict,
                    None => return Ok(false),
                }
            }
            None => local(),
        };
        self.ex.tenant_verdict(&*rt, &ask, verdict, now).map(|()| true)
    }

    /// The state service answered the tenant's admission (or did not, in
    /// time): the request is routed again with its verdict, and continued.
    fn admission_answered(&mut self, s: Stream, headers: &[(String, String)], body: Vec<u8>) {
        let rt = self.rt.clone();
        let calls = StreamCalls { s, metrics: &rt.metrics };
        let client_body =
            fleet_mode::answered(&mut self.fleet, &calls, state::now_ms(), fleet::answer_body(headers, body));
        match self.route(s, client_body) {
            Ok(true) => s.continue_decoding(),
            // Decided from the answer: it never waits twice.
            Ok(false) => {}
            Err(Some(e)) => {
                self.answer_error(s, &e);
            }
            Err(None) => {}
        }
    }

    /// Points the held request at `member`: body, then the headers the gateway sets
    /// (client headers off the allow-list removed), then the route is chosen again.
    fn rewrite_request(
        &self,
        s: Stream,
        member: MemberRef,
        upstream: &UpstreamRequest,
        timeouts: (u64, Option<u64>),
        original_len: usize,
    ) {
        let to = Target {
            s,
            rt: &self.rt,
            ex: &self.ex,
            client_headers: &self.client_headers,
            body_buffered: self.body_buffered,
        };
        to.rewrite(member, upstream, timeouts, original_len);
    }

    pub fn on_response_headers(&mut self, s: Stream, end_of_stream: bool) -> Status {
        if !matches!(self.ex.state, State::Routed(_) | State::Failover { .. }) {
            return abi::HEADERS_CONTINUE;
        }
        let rt = self.rt.clone();
        let headers = s.headers(RESP);
        // A translated stream's headers wait for its first event; a broken stream's end waits for its continuation.
        let can = Relays { prime: true, resume: true };
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        match self.ex.response_headers(&*rt, &headers.as_slice(), end_of_stream, can, &mut caller) {
            HeadersStep::Step(step) => self.apply(s, step),
            HeadersStep::Answer { set, drop, hold, wake_at } => {
                if let Some(at) = wake_at {
                    self.wake_at(s, at);
                }
                for (k, v) in &set {
                    s.set_header(RESP, k, v);
                }
                for name in drop {
                    s.remove_header(RESP, name);
                }
                if hold {
                    abi::HEADERS_STOP_ITERATION
                } else {
                    abi::HEADERS_CONTINUE
                }
            }
        }
    }

    /// A call of this request answered (or failed: no headers): the exchange
    /// says what becomes of it (the failover's answer replaces the failed one,
    /// or the next member is tried).
    pub fn on_callout_done(&mut self, s: Stream, id: u64, headers: Vec<(String, String)>, body: Vec<u8>) {
        if self.fleet.waits_for(id) {
            return self.admission_answered(s, &headers, body);
        }
        let rt = self.rt.clone();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        match self.ex.call_answered(&*rt, id, &headers, || body, &mut caller) {
            CallStep::Step(Step::Reply { status, headers, body }) => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
                s.send_response(status, &headers, &body, "switchboard_failover");
            }
            // A continuation's answer: it replaces the broken end Envoy holds, and the stream ends.
            CallStep::EndStream { body, .. } => {
                s.replace_body(abi::BUFFERED_RESPONSE_BODY, &body);
                s.continue_encoding();
            }
            CallStep::Step(_) | CallStep::Nothing => {}
        }
    }

    pub fn on_response_body(&mut self, s: Stream, end_of_stream: bool) -> Status {
        let rt = self.rt.clone();
        let holding = matches!(self.ex.state, State::Holding { .. });
        // A translated stream held until its first event: Envoy buffers what the exchange already read.
        let priming = matches!(self.ex.state, State::Priming { .. });
        match self.ex.body_read(&*rt, 0, end_of_stream) {
            BodyRead::Skip(Step::Pause) if holding => return abi::BODY_STOP_AND_BUFFER,
            BodyRead::Skip(Step::Pause) => return abi::BODY_STOP_NO_BUFFER,
            BodyRead::Skip(_) => return abi::BODY_CONTINUE,
            BodyRead::From(_) => {}
        }
        // A held whole body is in Envoy's buffer and this last piece; a relayed one is this piece.
        let mut chunk = Vec::new();
        if holding {
            s.read_body(abi::BUFFERED_RESPONSE_BODY, &mut chunk);
        }
        s.read_body(abi::RECEIVED_RESPONSE_BODY, &mut chunk);
        let size = chunk.len();
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        let BodyStep { body, status, step } = self.ex.response_body(&*rt, chunk, size, end_of_stream, &mut caller);
        if let Some(status) = status {
            s.set_header(RESP, ":status", &status.to_string());
        }
        match (body, holding || priming) {
            (Some(out), true) => {
                s.drain_body(abi::BUFFERED_RESPONSE_BODY);
                s.replace_body(abi::RECEIVED_RESPONSE_BODY, &out);
                if holding {
                    s.set_header(RESP, "content-length", &out.len().to_string());
                }
            }
            (Some(out), false) => {
                s.replace_body(abi::RECEIVED_RESPONSE_BODY, &out);
            }
            // Still no event: held on (Envoy keeps buffering).
            (None, true) if matches!(self.ex.state, State::Priming { .. }) => {}
            // A held answer failed over: its body is replaced by the failover's answer.
            (None, true) => {
                s.drain_body(abi::BUFFERED_RESPONSE_BODY);
                s.drain_body(abi::RECEIVED_RESPONSE_BODY);
            }
            (None, false) => {}
        }
        match step {
            Step::Continue => abi::BODY_CONTINUE,
            Step::Pause => abi::HEADERS_STOP_ITERATION,
            reply => self.apply(s, reply),
        }
    }

    /// The request is over, however it ended: the attempt still open is judged,
    /// the call log written, the tenant's admission settled.
    pub fn on_stream_complete(&mut self, s: Stream) {
        // Envoy is replaying the request after its routed attempt failed (the upstream filter's
        // redirect was followed): its exchange waits for the replay, which records the failure.
        let details = || s.attribute_string(abi::ATTRIBUTE_RESPONSE_CODE_DETAILS).map(String::into_bytes);
        if let Some(token) = self.ex.replaying(details) {
            let ex = std::mem::take(&mut self.ex);
            if parked::park(token, ex, std::mem::take(&mut self.client_headers)) {
                return;
            }
        }
        let rt = self.rt.clone();
        self.ex.settle_hedge(&*rt, false);
        self.ex.end_unfinished(&*rt, || s.attribute_string(abi::ATTRIBUTE_RESPONSE_CODE_DETAILS).unwrap_or_default());
        let ended_ms = self.ex.obs.end_ms(state::now_ms);
        self.ex.count_relayed();
        self.report(s, ended_ms);
        self.release_tenant(ended_ms);
    }

    /// The call-log line (as filter state, when an access log prints it) and the request-end stats
    /// (as `host::observe::report`).
    fn report(&self, s: Stream, ended_ms: u64) {
        let obs = &self.ex.obs;
        let config = &self.rt.config;
        let served = obs.attempts.last().filter(|(_, status, _)| (200..300).contains(status)).map(|(m, _, _)| *m);
        let shown = served.or(obs.attempts.last().map(|(m, _, _)| *m));
        let usage = self.ex.answer.usage();
        let tokens = served.map(|_| usage.unwrap_or(obs.estimate));
        let cost = served.zip(tokens).and_then(|(m, t)| {
            let prices = config.member(m)?.prices();
            prices.priced().then(|| prices.cost(t))
        });
        let plan = self.ex.plan.as_ref();
        let tenant = self.ex.tenant.as_ref().map(|t| t.index);
        let labels = Labels {
            pool: shown.map(|m| m.pool).or(plan.map(Plan::primary_pool)).unwrap_or(Labels::NONE),
            member: shown.map_or(Labels::NONE, |m| m.member),
            tenant: tenant.unwrap_or(Labels::NONE),
        };
        let metrics = &self.rt.metrics;
        let outcome = Outcome::of(obs.status, obs.error, obs.exhausted);
        metrics.count(Family::Requests(outcome), labels, 1);
        if let Some(t) = tokens {
            metrics.count(Family::InputTokens, labels, t.prompt);
            metrics.count(Family::OutputTokens, labels, t.completion);
            // Parts of the input above (not added to it); most answers have none.
            for (family, n) in [(Family::CacheReadTokens, t.cached), (Family::CacheWriteTokens, t.cache_write)] {
                if let Some(n) = n.filter(|n| *n > 0) {
                    metrics.count(family, labels, n);
                }
            }
            metrics.count(Family::UsageEstimated, labels, u64::from(usage.is_none()));
            metrics.count(Family::CostMicroUsd, labels, cost.unwrap_or(0));
        }
        if !obs.attempts.is_empty() {
            metrics.record(Family::Duration(outcome), labels, ended_ms.saturating_sub(obs.start_ms));
        }
        if served.is_some() && self.ex.shape.stream && obs.first_event_ms > 0 {
            metrics.record(Family::FirstToken, labels, obs.first_event_ms.saturating_sub(obs.start_ms));
        }
        if !config.call_log {
            return;
        }
        let pool = shown.map(|m| m.pool).or(plan.map(Plan::primary_pool));
        let (router, rule) = plan.and_then(|p| p.router_headers(config)).unzip();
        let first_byte =
            if self.ex.shape.stream && obs.first_event_ms > 0 { obs.first_event_ms } else { obs.first_byte_ms };
        let attempts: Vec<switchboard::observe::AttemptLog<'_>> = obs
            .attempts
            .iter()
            .map(|(m, status, ms)| switchboard::observe::AttemptLog {
                member: config.member(*m).map_or("?", |mm| mm.id.as_str()),
                status: *status,
                ms: *ms,
            })
            .collect();
        let record = CallRecord {
            start_ms: obs.start_ms,
            end_ms: ended_ms,
            request_id: &self.ex.request_id,
            tenant: self.ex.tenant.as_ref().and_then(|t| Some(config.tenants.as_ref()?.get(t.index)?.name.as_str())),
            model: obs.model.as_deref(),
            pool: pool.and_then(|p| config.pool_at(p)).map(|p| p.name.as_str()),
            router,
            rule,
            member: shown.and_then(|m| config.member(m)).map(|m| m.id.as_str()),
            status: obs.status,
            error: obs.error.map(ErrorCode::as_str),
            stream: self.ex.shape.stream,
            attempts,
            tokens,
            usage_estimated: usage.is_none(),
            cost_micro_usd: cost,
            first_byte_ms: (first_byte > 0).then(|| first_byte.saturating_sub(obs.start_ms)),
            duration_ms: ended_ms.saturating_sub(obs.start_ms),
            limits: obs.limits,
            cut: obs.cut,
            feedback_id: obs.feedback_id.as_deref(),
            prompt: obs.prompt.as_deref(),
            feedback: obs.feedback.as_ref().map(|(id, score)| (id.as_str(), score.as_str())),
        };
        s.set_filter_state(CALL_LOG_KEY, &record.json());
    }

    /// The tenant's request ended: the exchange's settlement, told to the
    /// store that admitted it.
    fn release_tenant(&mut self, ended_ms: u64) {
        let rt = self.rt.clone();
        let Some((index, lease, end)) = self.ex.settlement(&*rt) else { return };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(index)) else { return };
        match (lease, &rt.config.shared_state) {
            (Some(_), Some(shared)) => {
                if let Some(path) = fleet_mode::release(&state::Data, shared, tenant, &end, ended_ms) {
                    Fleet::tell(&rt, path);
                }
            }
            _ => state::settle_tenant(tenant, ended_ms / 1000, &end),
        }
    }
}

fn cluster_of(rt: &Runtime, member: MemberRef) -> Option<&str> {
    rt.config.resolve(member).map(|(_, _, provider)| provider.cluster.as_str())
}

/// What a rewrite of the paused request needs of its filter (borrowed apart
/// from the exchange, which a replay's `start_next` holds).
struct Target<'a> {
    s: Stream,
    rt: &'a Runtime,
    ex: &'a Exchange,
    client_headers: &'a [(String, String)],
    body_buffered: bool,
}

impl Target<'_> {
    /// Points the held request at `member`: body, then the headers the gateway sets
    /// (client headers off the allow-list removed), then the route is chosen again.
    fn rewrite(
        &self,
        member: MemberRef,
        upstream: &UpstreamRequest,
        (timeout_ms, first_byte_ms): (u64, Option<u64>),
        original_len: usize,
    ) {
        let (s, rt) = (self.s, self.rt);
        let extra = self.ex.native_headers(rt, member);
        let own_body = !(upstream.body.is_empty() && original_len == 0);
        if own_body && self.body_buffered {
            s.replace_body(abi::BUFFERED_REQUEST_BODY, &upstream.body);
        } else if own_body {
            s.drain_body(abi::BUFFERED_REQUEST_BODY);
            s.replace_body(abi::RECEIVED_REQUEST_BODY, &upstream.body);
        }
        let cluster = cluster_of(rt, member).unwrap_or_default();
        let content_length = upstream.body.len().to_string();
        let timeout = timeout_ms.to_string();
        let first_byte = first_byte_ms.map(|ms| ms.to_string());
        let tenant = self.ex.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index));
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
        if let Some(t) = tenant {
            ours.push((TENANT_HEADER, &t.name));
        }
        let sets = |name: &str| ours.iter().any(|(n, _)| *n == name);
        let mut client_path = "";
        let mut json = false;
        for (k, v) in self.client_headers {
            match k.as_str() {
                ":path" => client_path = v,
                "content-type" => json = v == "application/json",
                ":method" | ":scheme" | ":authority" => {}
                _ if forwarded(k.as_bytes(), true, extra) || sets(k) => {}
                _ => {
                    s.remove_header(REQ, k);
                }
            }
        }
        if upstream.path != client_path {
            ours.push((":path", &upstream.path));
        }
        if !json && !ours.iter().any(|(n, _)| *n == "content-type") {
            ours.push(("content-type", "application/json"));
        }
        for (k, v) in ours {
            s.set_header(REQ, k, v);
        }
        s.clear_route_cache();
    }
}
