//! The HTTP context: one client request. It reads headers and bodies, hands
//! them to the request's host-free `exchange::Exchange`, and applies what it
//! returns through `abi`: steps (go on, hold, reply), the rewrite that points
//! the request at a member, the calls it sends on its own (`Caller`), the
//! response headers and bodies it writes, and its timers (`wake`).
//!
//! A stream's failed attempt is replayed by Envoy (internal redirect,
//! `exchange/replay.rs`): the request's filter is parked for the replay
//! (`parked.rs`), which takes it back.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::api::request::{model_of, ParsedRequest};
use crate::api::ApiError;
use crate::config::MemberRef;
use crate::doors::messages;
use crate::exchange::{
    build_upstream, feedback_body, BodyFor, BodyRead, BodyStep, CallStep, Calls, ChatBody, Exchange, HeadersStep,
    Opening, Relays, State, Step, Timer, REFUSED_BODY_PEEK_BYTES,
};
use crate::providers::UpstreamRequest;
use crate::routing::router::HeaderLookup;
use crate::routing::{redirect, Plan};
use crate::tenant::limits::Settlement;

use super::fleet;
use super::observe;
use super::runtime::Runtime;
use super::{abi, parked, shadow, tenant_store, wake};
use crate::exchange::fleet::{self as fleet_mode, Ask};
use crate::exchange::learning::{self, Feedback, Scorer};

const REQ: u32 = abi::MAP_REQUEST_HEADERS;
const RESP: u32 = abi::MAP_RESPONSE_HEADERS;

pub struct Filter {
    rt: Option<Rc<Runtime>>,
    /// The request itself: its state, what it asked, what it tried.
    ex: Exchange,
    context_id: u32,
    /// This filter, for the root context to wake (see `wake`).
    me: wake::Handle,
    /// The client's request headers, serialized as the host gave them.
    client_headers: Vec<u8>,
    /// A refusal at the headers that waits for a small body (see `REFUSED_BODY_PEEK_BYTES`).
    refused: Option<ApiError>,
    /// Fleet mode: the tenant's admission asked of the state service.
    fleet: Ask,
    /// A score (feedback id, score) that found nothing and waits for other
    /// workers to publish their decisions (`learning::FEEDBACK_WAIT_MS`).
    waiting_score: Option<(String, f64)>,
}

/// The calls a request sends on its own, through Envoy's HTTP call API,
/// with the client's allow-listed headers.
struct Caller<'a> {
    rt: &'a Runtime,
    client_headers: &'a [u8],
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
        let present = abi::pairs(self.client_headers);
        let call = ex
            .dispatch(self.rt, member, now, upstream, stream, present)
            .ok_or_else(|| ApiError::internal("member without cluster"))?;
        let timeout = Duration::from_millis(call.timeout_ms);
        proxy_wasm::hostcalls::dispatch_http_call(call.cluster, call.headers(), Some(call.body()), vec![], timeout)
            .map(u64::from)
            .map_err(|s| ApiError::internal(format!("dispatch_http_call to cluster {} failed: {s:?}", call.cluster)))
    }
}

impl Filter {
    pub fn new(context_id: u32, rt: Option<Rc<Runtime>>) -> Self {
        Filter {
            rt,
            ex: Exchange::default(),
            context_id,
            me: wake::Handle::new(),
            client_headers: Vec::new(),
            refused: None,
            fleet: Ask::Idle,
            waiting_score: None,
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
        let Some(rt) = self.rt.clone() else { return };
        if let Some((request_id, score)) = self.waiting_score.take() {
            let step = self.take_feedback(&rt, &request_id, score, true);
            self.apply(step);
            return;
        }
        let mut caller = Caller { rt: &rt, client_headers: &self.client_headers };
        match self.ex.on_timer(&*rt, now, &mut caller) {
            Timer::Nothing => {}
            Timer::WakeAt(at) => wake::at(at, &self.me),
            Timer::HedgeSent(call) => wake::own_call(u32::try_from(call).unwrap_or_default(), &self.me),
            Timer::Reset => {
                if let Err(s) = abi::reset_response() {
                    self.host_error("reset the response", s);
                }
            }
        }
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
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
                if let Err(s) = abi::send_local_response(status, &headers, &body) {
                    self.host_error("send_local_response", s);
                }
                Action::Pause
            }
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

    /// A complete request body: answered here (token counting, feedback) or routed.
    fn serve(&mut self, rt: &Runtime, body: Vec<u8>) -> Action {
        let step = match self.ex.body_for {
            BodyFor::Routing => return self.route(rt, body),
            BodyFor::Feedback => match feedback_body(&body) {
                Ok((request_id, score)) => self.take_feedback(rt, &request_id, score, false),
                Err(e) => self.ex.error_reply(rt, &e),
            },
            BodyFor::CountTokens => match messages::count_tokens(&body) {
                Ok(count) => self.ex.json_reply(rt, count),
                Err(e) => self.ex.refuse_door_request(rt, &e),
            },
        };
        self.apply(step)
    }

    /// `POST /v1/feedback`: the score taken by the store of remembered
    /// answers, learned from when it labels a weak-pool answer.
    /// `waited`: after [`learning::FEEDBACK_WAIT_MS`] for other workers' decisions.
    fn take_feedback(&mut self, rt: &Runtime, request_id: &str, score: f64, waited: bool) -> Step {
        let owner = self.ex.tenant_name(rt).to_string();
        let now = self.now_ms();
        let taken = learning::take_feedback(&abi::Data, &rt.config, &rt.journal, (&owner, request_id), waited, now);
        if matches!(taken, Feedback::NotYet) {
            self.waiting_score = Some((request_id.to_string(), score));
            wake::at(now + learning::FEEDBACK_WAIT_MS, &self.me);
            return Step::Pause;
        }
        if rt.config.call_log && matches!(taken, Feedback::Accepted(_)) {
            let score_text = serde_json::to_string(&score).unwrap_or_default();
            self.ex.obs.feedback = Some((request_id.to_string(), score_text));
        }
        // Only a weak-pool answer's score is a label.
        if let Feedback::Accepted(Some(label)) = taken {
            let learned = rt.config.routers.get(label.router).and_then(|router| {
                Some((router, rt.learned_models.get(label.router)?.as_ref()?, router.learned.as_ref()?))
            });
            if let Some((router, model, learned)) = learned {
                let key = learning::learning_key(&router.name, model, learned);
                if let Some(shared) = &rt.config.shared_state {
                    let path = fleet_mode::learned_path(&key, &label.inputs, label.logit, score as f32);
                    fleet::tell(shared, &path, self.context_id);
                } else {
                    learning::learn(&abi::Data, &key, &label.inputs, label.logit, score as f32);
                    rt.learned_learning.forget(label.router);
                }
            }
        }
        self.ex.feedback_reply(rt, request_id, &taken, learning::FEEDBACK_TTL_MS)
    }

    fn route(&mut self, rt: &Runtime, client_body: Vec<u8>) -> Action {
        let client_len = client_body.len();
        // Fleet mode: the body is routed again once the state service has answered.
        let asks = rt.config.shared_state.is_some() && self.ex.tenant.is_some() && matches!(self.fleet, Ask::Idle);
        let kept = asks.then(|| client_body.clone());
        let ChatBody { body, native_only } = match self.ex.to_chat(client_body) {
            Ok(chat) => chat,
            Err(e) => {
                let step = self.ex.refuse_door_request(rt, &e);
                return self.apply(step);
            }
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
            let scorer = Scorer::new(&rt.config, &abi::Data, &rt.learned_models, &rt.learned_learning, now);
            let mut plan = match self.ex.plan(rt, &parsed, &headers, Some(&scorer), native_only, now) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            if let Err(e) = self.ex.hold_remembered(rt, &mut plan, &parsed.target) {
                return self.answer_error(&e);
            }
            let learned = scorer.decided.get();
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
                let step = self.ex.exhausted(rt);
                return self.apply(step);
            };
            let upstream =
                match build_upstream(rt, self.ex.endpoint, &parsed, picked.member, now, self.ex.native_body()) {
                    Ok(u) => u,
                    Err(e) => return self.answer_error(&e),
                };
            // Scorable only once actually routed (not refused by limits), by its owner.
            if let Some(decided) = learned {
                if let Some(id) = rt.journal.remember(&abi::Data, self.ex.tenant_name(rt), &decided, now, rt.random()) {
                    self.ex.remembered(decided.score, id, scorer.prompt.take());
                }
            }
            self.ex.routed(&parsed, body.len(), now);
            (plan, picked, upstream)
        };
        self.ex.plan = Some(plan);
        if let Err(e) = point_at(&self.ex, rt, picked.member, &upstream, client_len, &self.client_headers, now) {
            return self.answer_error(&e);
        }
        shadow::sample(rt, picked.member.pool, self.ex.endpoint, &body, &self.client_headers);
        self.ex.body = body;
        self.ex.state = State::Routed(self.ex.begin(rt, picked, now));
        if let Some(at) = self.ex.arm_hedge(rt, picked.member.pool, now) {
            wake::at(at, &self.me);
        }
        self.tag_try(rt, picked.member);
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
        let local = || tenant_store::admit(tenant, now_s, reserve, worst);
        let verdict = match &rt.config.shared_state {
            Some(shared) => {
                let (data, calls, lease) = (&abi::Data, &mut fleet::Calls, || rt.random());
                let fleet_verdict = self.ex.fleet_verdict(
                    &mut self.fleet,
                    data,
                    calls,
                    shared,
                    tenant,
                    now,
                    (reserve, worst),
                    lease,
                    local,
                );
                match fleet_verdict? {
                    Some(verdict) => verdict,
                    None => return Ok(false),
                }
            }
            None => local(),
        };
        self.ex.tenant_verdict(rt, &ask, verdict, now).map(|()| true)
    }

    /// Tags the routed attempt of a stream so the upstream filter can turn
    /// its failure into a redirect (when the configuration says that filter runs).
    fn tag_try(&mut self, rt: &Runtime, member: MemberRef) {
        let Some(tag) = self.ex.try_tag(rt, member, &RequestHeaders(&self.client_headers)) else { return };
        if let Err(s) = abi::set_header(REQ, redirect::TRY_HEADER, &tag) {
            self.ex.try_token = None;
            self.host_error("set try header", s);
        }
    }

    /// Envoy is replaying the request after its routed attempt failed (the
    /// upstream filter's redirect was followed): the request is parked for
    /// the replay, which records the failure. False when the request simply ended.
    fn hand_over(&mut self) -> bool {
        let details = || abi::property(&["response", "code_details"]).ok().flatten();
        let Some(token) = self.ex.replaying(details) else { return false };
        let blank = Filter::new(0, self.rt.clone());
        parked::park(token, Box::new(std::mem::replace(self, blank)))
    }

    /// A request whose path carries a failover token: the replay of a parked
    /// request, or a client's forgery, which gets nothing but a 400.
    fn replay(&mut self, token: &str, replayed: Vec<u8>, end_of_stream: bool) -> Action {
        let Some(parked) = parked::unpark(token).and_then(|p| p.downcast::<Filter>().ok()) else {
            return self.answer_error(&crate::exchange::forged_token());
        };
        // The replay is another HTTP context: its own id and timer handle.
        let (context_id, me) = (self.context_id, std::mem::take(&mut self.me));
        *self = *parked;
        (self.context_id, self.me) = (context_id, me);
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        let path = header_value(&replayed, ":path").unwrap_or_default().to_string();
        let step = self.ex.replayed(&*rt, replayed, &path, end_of_stream);
        self.apply(step)
    }

    /// The replayed body is in: the request goes to the next member (or
    /// answers that every attempt failed).
    fn replay_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        let State::Replayed { headers } = std::mem::replace(&mut self.ex.state, State::Passing) else {
            return Action::Continue;
        };
        let now = self.now_ms();
        let rewrite = |ex: &Exchange, member, upstream: &UpstreamRequest| {
            point_at(ex, &rt, member, upstream, body_size, &headers, now)
        };
        match self.ex.start_next(&*rt, now, "replay", rewrite) {
            Ok((attempt, ())) => {
                let member = attempt.picked.member;
                self.ex.state = State::Routed(attempt);
                self.tag_try(&rt, member);
                Action::Continue
            }
            Err(exhausted) => self.apply(exhausted),
        }
    }

    /// A follow-up on a stored response: passed through as it is to the
    /// provider that holds the response, or refused.
    fn serve_followup(&mut self, rt: &Runtime) -> Action {
        let h = &self.client_headers;
        let (method, path) =
            (header_value(h, ":method").unwrap_or_default(), header_value(h, ":path").unwrap_or_default());
        let (member, upstream) = match self.ex.followup(rt, method, path) {
            Ok(to) => to,
            Err(e) => return self.answer_error(&e),
        };
        let now = self.now_ms();
        if let Err(e) = point_at(&self.ex, rt, member, &upstream, 0, &self.client_headers, now) {
            return self.answer_error(&e);
        }
        // The answer, whatever it is, passes as it is.
        self.ex.state = State::Passing;
        Action::Continue
    }

    /// The routed answer's headers: the exchange's verdict, written.
    fn answer_headers(&mut self, rt: &Runtime, end_of_stream: bool) -> Action {
        let headers = abi::headers_raw(RESP).unwrap_or_else(|s| {
            self.host_error("get response headers", s);
            Vec::new()
        });
        let mut caller = Caller { rt, client_headers: &self.client_headers };
        let can = Relays { prime: true, resume: true };
        let step = self.ex.response_headers(rt, &RequestHeaders(&headers), end_of_stream, can, &mut caller);
        let HeadersStep::Answer { set, drop, hold, wake_at } = step else {
            let HeadersStep::Step(step) = step else { return Action::Continue };
            return self.apply(step);
        };
        // Only what changes is written: the headers the gateway adds, the
        // provider's request id under another name, and the framing a translation changes.
        for (name, value) in &set {
            if let Err(s) = abi::set_header(RESP, name, value) {
                self.host_error("set response header", s);
            }
        }
        for name in drop {
            if let Err(s) = abi::remove_header(RESP, name) {
                self.host_error("remove response header", s);
            }
        }
        if let Some(at) = wake_at {
            wake::at(at, &self.me);
        }
        if hold {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// The routed answer's body, read through the answer chain as far as the exchange asks.
    fn answer_body(&mut self, rt: &Runtime, body_size: usize, end_of_stream: bool) -> Action {
        let start = match self.ex.body_read(rt, body_size, end_of_stream) {
            BodyRead::Skip(step) => return self.apply(step),
            BodyRead::From(start) => start,
        };
        // Envoy ends a relayed answer with an empty callback: nothing to read.
        let chunk = match body_size.saturating_sub(start) {
            0 => Vec::new(),
            new => match abi::buffer(abi::BUFFER_RESPONSE_BODY, start, new) {
                Ok(chunk) => chunk,
                Err(s) => {
                    self.host_error("get response body", s);
                    return Action::Continue;
                }
            },
        };
        let mut caller = Caller { rt, client_headers: &self.client_headers };
        let BodyStep { body, status, step } = self.ex.response_body(rt, chunk, body_size, end_of_stream, &mut caller);
        if let Some(status) = status {
            if let Err(s) = abi::set_header(RESP, ":status", &status.to_string()) {
                self.host_error("set response status", s);
            }
        }
        if let Some(body) = body {
            if let Err(s) = abi::set_buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size, &body) {
                self.host_error("set response body", s);
            }
        }
        self.apply(step)
    }

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
            (Some(_), Some(shared)) => {
                if let Some(path) = fleet_mode::release(&abi::Data, shared, tenant, &end, ended_ms) {
                    fleet::tell(shared, &path, self.context_id);
                }
            }
            _ if end != Settlement::default() => tenant_store::settle(tenant, now_s, &end),
            _ => {}
        }
    }

    /// The state service answered the tenant's admission (or did not, in
    /// time): the request is routed again with its verdict, and resumed.
    fn admission_answered(&mut self, num_headers: usize, body_size: usize) {
        let Some(rt) = self.rt.clone() else { return };
        let now = self.now_ms();
        let answer = fleet::answer_body(num_headers, body_size);
        let body = fleet_mode::answered(&mut self.fleet, &fleet::Calls, now, answer);
        if self.route(&rt, body) == Action::Continue {
            if let Err(s) = abi::resume_request() {
                self.host_error("resume request", s);
            }
        }
    }
}

/// Points the paused request (body of `body_len` bytes, header map
/// `present`) at `member` as the exchange's `Rewrite` says.
fn point_at(
    ex: &Exchange,
    rt: &Runtime,
    member: MemberRef,
    upstream: &UpstreamRequest,
    body_len: usize,
    present: &[u8],
    now: u64,
) -> Result<(), ApiError> {
    let timeouts = ex.timeouts_ms(rt, member.pool, now, ex.shape.stream);
    let applied = match ex.rewrite(rt, member, upstream, timeouts, body_len, abi::pairs(present)) {
        Err(_) => Err(("remove request header", abi::NOT_FOUND)),
        Ok(rewrite) => {
            let body = rewrite.body.map_or(Ok(()), |body| {
                abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, body_len, body).map_err(|s| ("set request body", s))
            });
            body.and_then(|()| {
                rewrite.headers.iter().try_for_each(|(name, value)| match value {
                    Some(v) => abi::set_header(REQ, name, v).map_err(|s| ("set request header", s)),
                    None => abi::remove_header(REQ, name).map_err(|s| ("remove request header", s)),
                })
            })
        }
    };
    applied.map_err(|(what, s)| {
        host_error(rt, &ex.request_id, what, s);
        ApiError::internal("The gateway could not rewrite the request.")
    })
}

fn host_error(rt: &Runtime, request_id: &str, what: &str, status: abi::Status) {
    log::warn!("switchboard[{request_id}]: host call failed: {what} (status {status})");
    rt.metrics.inc(rt.metrics.host_errors);
}

/// Headers as the host serialized them, for routing rules and the exchange.
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
        if self.fleet.waits_for(u64::from(token_id)) {
            return self.admission_answered(num_headers, body_size);
        }
        let Some(rt) = self.rt.clone() else { return };
        // A call that failed (reset, refused, timed out) arrives with no headers.
        let raw = match num_headers {
            0 => Vec::new(),
            _ => abi::headers_raw(abi::MAP_HTTP_CALL_RESPONSE_HEADERS).unwrap_or_else(|s| {
                self.host_error("get call response headers", s);
                Vec::new()
            }),
        };
        let headers: Vec<(&str, &str)> = abi::pairs(&raw)
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
            .collect();
        let request_id = self.ex.request_id.clone();
        let body = || {
            abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_else(|s| {
                host_error(&rt, &request_id, "get call response body", s);
                Vec::new()
            })
        };
        let mut caller = Caller { rt: &rt, client_headers: &self.client_headers };
        match self.ex.call_answered(&*rt, u64::from(token_id), &headers, body, &mut caller) {
            CallStep::Nothing => {}
            CallStep::Step(step) => {
                self.apply(step);
            }
            CallStep::EndStream { size, body } => {
                if let Err(s) = abi::set_buffer(abi::BUFFER_RESPONSE_BODY, 0, size, &body) {
                    self.host_error("set response body", s);
                }
                if let Err(s) = abi::resume_response() {
                    self.host_error("resume the response", s);
                }
            }
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
        let opening = self.ex.request_headers(&*rt, &RequestHeaders(&raw), end_of_stream, true, || rt.random());
        // The client's headers never reach the provider as they are: the
        // rewrite replaces the whole map (a client can never pick a cluster).
        match opening {
            Opening::Replay(token) => self.replay(&token, raw, end_of_stream),
            Opening::RefuseAfterBody(e) => {
                self.refused = Some(e);
                Action::Pause
            }
            Opening::Followup => {
                self.client_headers = raw;
                self.serve_followup(&rt)
            }
            Opening::Step(step) => {
                self.client_headers = raw;
                self.apply(step)
            }
        }
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
        match (&self.ex.state, self.rt.clone()) {
            (State::Routed(_), Some(rt)) => self.answer_headers(&rt, end_of_stream),
            // A routed answer coming while a hedge's or failover's answer is awaited waits too.
            (State::Failover { .. }, _) => Action::Pause,
            // Anything else (our own local reply, say) passes through.
            _ => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.rt.clone() {
            Some(rt) => self.answer_body(&rt, body_size, end_of_stream),
            None => Action::Continue,
        }
    }

    /// The request is over, however it ended: settle the attempt still open
    /// and the tenant's admission.
    fn on_log(&mut self) {
        if self.hand_over() {
            return;
        }
        let Some(rt) = self.rt.clone() else { return };
        self.ex.settle_hedge(&*rt, false);
        // The request ended with an attempt still open: the exchange judges it,
        // from how the response ended (Envoy's details, read only when it asks).
        self.ex.end_unfinished(&*rt, || {
            let details = abi::property(&["response", "code_details"]).ok().flatten().unwrap_or_default();
            String::from_utf8_lossy(&details).into_owned()
        });
        // A relayed answer ended when its last byte was read: no clock needed.
        let ended_ms = self.ex.obs.end_ms(|| self.now_ms());
        self.ex.count_relayed();
        self.report(&rt, ended_ms);
        self.release_tenant(&rt, ended_ms);
    }
}
