//! One request's life without the host: its state, the attempts it makes
//! and the answers it gives. `host::filter` reads headers and bodies, calls
//! in here and applies the [`Step`]s it gets back; what requests share
//! (health, load, counters, the clock) comes through [`Shared`]. Nothing here
//! imports proxy-wasm, so all of it is tested natively and under V8.
//!
//! Every attempt, routed or dispatched, ends in [`Exchange::finish`]
//! (recorded once in the plan, shared health and the counters); a failed one
//! goes on with [`Exchange::next_attempt`] or ends in [`Exchange::exhausted`].
//! An answer, whichever attempt gives it, passes through one [`AnswerChain`];
//! the request's timers (hedge, stream idle) decide in `timers`.
//!
//! A host drives it in this order: [`Route::parse`] at the request headers;
//! with the body, [`Exchange::to_chat`], [`Exchange::plan`], the tenant's
//! admission ([`Exchange::tenant_ask`], asked of the host's store, then
//! [`Exchange::tenant_verdict`]), [`Exchange::pick_first`], [`build_upstream`],
//! [`Exchange::routed`] and [`Exchange::rewrite`], whose [`Rewrite`] it writes
//! to the request. The answer's headers go to [`Exchange::response_headers`]
//! ([`HeadersStep`]), its body to [`Exchange::body_read`] and
//! [`Exchange::response_body`] ([`BodyStep`]), the answers of the calls it
//! sent to [`Exchange::call_answered`] ([`CallStep`]), its wake-ups to
//! [`Exchange::on_timer`] ([`Timer`]); a call the exchange sends on its own
//! (failover, hedge, continuation) goes through the host's [`Calls`] as the
//! [`Exchange::dispatch`] it describes. At the end the host settles what
//! [`Exchange::settlement`] says. Headers come in as name/value pairs and
//! bodies as bytes: nothing here knows proxy-wasm's header map or calls a
//! host, so an Envoy dynamic module drives the same API with its own `Shared`.

mod admission;
mod answer;
mod attempts;
mod failover;
pub mod fleet;
mod followup;
pub mod learning;
pub mod probe;
mod replay;
mod request;
mod response;
mod resume;
mod rewrite;
mod route;
mod routed;
pub mod shadow;
mod shared;
mod timers;

pub use admission::{budget_reservation, expected_tokens, feedback_body, refusal_error, Feedback, TenantAsk, Verdict};
pub use answer::{AnswerChain, Passage, Relayed, Whole};
pub use attempts::{adapter_for, build_upstream, translates_stream, Attempt};
pub use failover::{CallStep, Calls};
pub use followup::{native_member_of, remember_holder, response_holder, unknown_response};
pub use replay::{forged_token, Parking};
pub use request::{Opening, REFUSED_BODY_PEEK_BYTES};
pub use response::{BodyRead, BodyStep, HeadersStep, Relays};
pub use resume::{continued, Held};
pub use rewrite::{Dispatch, Rewrite, Unnamed, TENANT_HEADER};
pub use route::{BodyFor, Route};
pub use routed::ChatBody;
pub use shared::{Count, DataError, Picked, Shared, SharedData};
pub use timers::{hedge_at, Hedge, Idle, IdleWatch, Timer};

use std::borrow::Cow;

use crate::api::usage::Tokens;
use crate::api::{ApiError, Endpoint, ErrorCode};
use crate::config::MemberRef;
use crate::doors::{Door, DoorError};
use crate::routing::Plan;
use crate::tenant::reserve::Reservation;

/// What the host does next for the exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Let the request or response go on.
    Continue,
    /// Hold it (a body still coming, a call in flight).
    Pause,
    /// Answer the client from the gateway.
    Reply { status: u16, headers: Vec<(Cow<'static, str>, String)>, body: Vec<u8> },
}

/// Where the request is.
pub enum State {
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
    Failover { attempt: Attempt, call: u64 },
    /// A broken stream's end is paused while its continuation call is in flight (`resume`).
    Resuming { attempt: Attempt, call: u64, held: Held },
    /// The filter answered itself (error, model list, or failover result).
    Answered,
}

/// What the client asked its answer to look like.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerShape {
    pub stream: bool,
    /// `stream_options.include_usage`: a final usage chunk in the stream.
    pub include_usage: bool,
    /// `n`: the choices a stream must finish.
    pub choices: u32,
}

/// A tenant's admission: released and corrected when the request ends.
#[derive(Debug, Default)]
pub struct Admission {
    pub index: usize,
    pub parallel_held: bool,
    /// Tokens reserved (prompt estimate + expected output), in the window starting at `window_start_s`.
    pub reserved: u64,
    pub window_start_s: u64,
    /// The worst-case cost held against the budget (see `tenant::reserve`).
    pub budget: Reservation,
    pub rate_headers: Vec<(&'static str, String)>,
    /// Fleet mode: the lease the state service may hold for this request (released at its end).
    pub lease: Option<u64>,
}

/// What the call log and the request-end stats report, gathered while the
/// request runs (times in ms since the epoch, 0: not yet).
#[derive(Debug, Default)]
pub struct Observed {
    pub start_ms: u64,
    /// Every attempt in order: member, status (0: no answer), duration.
    pub attempts: Vec<(MemberRef, u16, u64)>,
    /// What the client got (502 for an answer broken after its headers).
    pub status: u16,
    /// The answer broke after its headers went out.
    pub cut: bool,
    /// The answer's headers left for the client; a stream's first event did.
    pub first_byte_ms: u64,
    pub first_event_ms: u64,
    /// A successful answer's last byte was read.
    pub ended_ms: u64,
    /// Tokens expected: stand in for an answer that reports none.
    pub estimate: Tokens,
    /// The name the client asked for.
    pub model: Option<String>,
    /// The gateway's own error code, when it refused or failed the request itself.
    pub error: Option<ErrorCode>,
    /// Every member of the pool failed or was passed over.
    pub exhausted: bool,
    /// Fleet mode: `shared` or `local`, who decided the tenant's limits (call log).
    pub limits: Option<&'static str>,
    /// A learned-routed request: its feedback id (`x-switchboard-feedback-id`),
    /// and the text the router scored when `call_log_prompts` is on.
    pub feedback_id: Option<String>,
    pub prompt: Option<String>,
    /// A feedback request the router took: the id it scored and the score as sent.
    pub feedback: Option<(String, String)>,
}

impl Observed {
    /// The gateway answers (or fails) the request with its own error `code`: counted, and kept for the call log.
    pub fn local_error(&mut self, sh: &dyn Shared, code: ErrorCode) {
        sh.count(Count::LocalError(code));
        self.error = Some(code);
    }

    /// When the request ended: the answer's last byte read (`ended_ms`,
    /// else `now_ms`), but never before its first byte left (a translated
    /// answer's headers leave after its whole body was read).
    pub fn end_ms(&self, now_ms: impl FnOnce() -> u64) -> u64 {
        let read = if self.ended_ms > 0 { self.ended_ms } else { now_ms() };
        read.max(self.first_byte_ms).max(self.first_event_ms)
    }

    pub fn answered(&mut self, status: u16, now_ms: u64) {
        self.status = status;
        if self.first_byte_ms == 0 {
            self.first_byte_ms = now_ms;
        }
    }
}

/// One request: what it asked, where it is, what it tried.
pub struct Exchange {
    pub state: State,
    /// Envoy's `x-request-id` (or one made up): in every log line and answer.
    pub request_id: String,
    pub endpoint: Endpoint,
    /// What the request body is for (its `Route`).
    pub body_for: BodyFor,
    /// The client's body, kept for failover calls (as chat completions for a door).
    pub body: Vec<u8>,
    /// A door request's own body, for members serving its API natively.
    pub door_body: Vec<u8>,
    /// The Messages door's `anthropic-beta` header: what translated members must honour.
    pub anthropic_beta: Option<String>,
    pub shape: AnswerShape,
    /// The API the client speaks, and how its answers are put back in that shape.
    pub door: Door,
    pub plan: Option<Plan>,
    /// The calling tenant (when tenants are configured) and what it holds.
    pub tenant: Option<Admission>,
    /// The readers of the answer, whichever attempt gives it.
    pub answer: AnswerChain,
    /// What the call log and the request-end stats report.
    pub obs: Observed,
    /// A hedging pool's second attempt, armed or sent.
    pub hedge: Option<Hedge>,
    /// A relayed stream's idle watch.
    pub idle: Option<IdleWatch>,
    /// The token of the routed attempt, when it can fail over by internal redirect (`replay`).
    pub try_token: Option<String>,
    /// A learned router's score of the pick, and the id its owner scores the answer with.
    pub score: Option<(f64, String)>,
    /// The id of a natively served Responses answer was handed to the host to remember.
    pub response_noted: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            state: State::Reading,
            request_id: String::new(),
            endpoint: Endpoint::ChatCompletions,
            body_for: BodyFor::Routing,
            body: Vec::new(),
            door_body: Vec::new(),
            anthropic_beta: None,
            shape: AnswerShape::default(),
            door: Door::Chat,
            plan: None,
            tenant: None,
            answer: AnswerChain::default(),
            obs: Observed::default(),
            hedge: None,
            idle: None,
            try_token: None,
            score: None,
            response_noted: false,
        }
    }
}

impl Exchange {
    /// The gateway answers the request itself.
    pub fn reply(&mut self, sh: &dyn Shared, status: u16, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> Step {
        let headers = headers.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect();
        self.reply_with(sh, status, headers, body)
    }

    /// [`Exchange::reply`] with header names not known before (a provider's, relayed).
    pub fn reply_with(
        &mut self,
        sh: &dyn Shared,
        status: u16,
        headers: Vec<(Cow<'static, str>, String)>,
        body: Vec<u8>,
    ) -> Step {
        self.state = State::Answered;
        self.obs.answered(status, sh.now_ms());
        Step::Reply { status, headers, body }
    }

    /// An OpenAI-style error, in the client's door's shape.
    pub fn error_reply(&mut self, sh: &dyn Shared, error: &ApiError) -> Step {
        self.obs.local_error(sh, error.code);
        let attempts = self.plan.as_ref().map_or(0, |p| p.attempts.len());
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-switchboard-attempts", attempts.to_string()),
            ("x-switchboard-request-id", self.request_id.clone()),
        ];
        if let Some(s) = error.retry_after_s {
            headers.push(("retry-after", s.to_string()));
        }
        if let Some(retry) = error.should_retry {
            headers.push(("x-should-retry", if retry { "true" } else { "false" }.to_string()));
        }
        if let Some(t) = &self.tenant {
            headers.extend(t.rate_headers.iter().cloned());
        }
        let body = self.door.error_body(error.status, error.to_json());
        self.reply(sh, error.status, headers, body)
    }

    /// Refuses a door request its translator cannot take (always a 400).
    pub fn refuse_door_request(&mut self, sh: &dyn Shared, e: &DoorError) -> Step {
        self.obs.local_error(sh, e.code);
        let body = self.door.refusal_body(e);
        let headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-switchboard-request-id", self.request_id.clone()),
        ];
        self.reply(sh, e.status(), headers, body)
    }

    /// A 200 JSON body the gateway wrote itself (model listings, token counts).
    pub fn json_reply(&mut self, sh: &dyn Shared, body: Vec<u8>) -> Step {
        let headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-switchboard-request-id", self.request_id.clone()),
        ];
        self.reply(sh, 200, headers, body)
    }
}

/// How a request whose answer broke after its headers is counted and logged.
pub const CUT_STATUS: u16 = 502;

#[cfg(test)]
mod tests;
