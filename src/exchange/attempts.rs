//! The bookkeeping of attempts: begin, finish (once, whatever ended it),
//! the next member after a failure, and the answer when none is left.

use crate::api::request::ParsedRequest;
use crate::api::stream_end::StreamEnd;
use crate::api::{ApiError, Endpoint, ErrorCode};
use crate::config::{MemberRef, Strategy};
use crate::doors::Door;
use crate::providers::{build_native, build_request, BuildContext, NativeApi, ResponseAdapter, UpstreamRequest};
use crate::routing::exhausted;
use crate::routing::stats::latency_sample;

use super::{AnswerShape, Count, Exchange, Picked, Shared, State, Step, CUT_STATUS};

/// One upstream attempt in flight.
pub struct Attempt {
    pub picked: Picked,
    /// Set when the member's provider does not speak OpenAI's format.
    pub adapter: Option<ResponseAdapter>,
    /// Counted in the member's requests in flight (`least_busy`): released when it ends.
    pub in_flight: bool,
    /// The member serves the client's door API as it is: the client's body
    /// goes upstream (model rewritten) and the answer comes back untouched.
    pub native: bool,
    /// When it started and when its response headers came (ms; 0: not measured).
    /// Measured for `lowest_latency` pools only.
    pub started_ms: u64,
    pub first_byte_ms: u64,
    /// When it started, for the call log.
    pub began_ms: u64,
}

impl Exchange {
    /// Starts an attempt on `picked` at `now`, with what its pool's strategy measures.
    pub fn begin(&mut self, sh: &dyn Shared, picked: Picked, now: u64) -> Attempt {
        sh.count(Count::Attempt(picked.member));
        let strategy = sh.config().pool_at(picked.member.pool).map(|p| p.strategy);
        let in_flight = strategy == Some(Strategy::LeastBusy);
        if in_flight {
            sh.begin_in_flight(picked.member);
        }
        let timed = strategy == Some(Strategy::LowestLatency);
        let native = self.serves_natively(sh, picked.member);
        Attempt {
            picked,
            adapter: if native { None } else { adapter_for(sh, self.endpoint, self.shape, picked.member) },
            in_flight,
            native,
            started_ms: if timed { now.max(1) } else { 0 },
            first_byte_ms: 0,
            began_ms: now,
        }
    }

    /// Whether `member` serves the client's door API as it is.
    pub fn serves_natively(&self, sh: &dyn Shared, member: MemberRef) -> bool {
        let kind = sh.config().resolve(member).map(|(_, _, p)| p.kind);
        self.door.native_api().zip(kind).is_some_and(|(api, kind)| api.served_by(kind))
    }

    /// The door's API and body, for building a pass-through request.
    pub fn native_body(&self) -> Option<(NativeApi, &[u8])> {
        self.door.native_api().map(|api| (api, self.door_body.as_slice()))
    }

    /// Client headers forwarded to `member` besides the allow-list (`anthropic-beta` when native).
    pub fn native_headers(&self, sh: &dyn Shared, member: MemberRef) -> &'static [&'static str] {
        match self.door.native_api() {
            Some(api) if self.serves_natively(sh, member) => api.forwarded_headers(),
            _ => &[],
        }
    }

    /// An attempt that ends without a verdict (the client left): only what it holds is released.
    pub fn abandon(&mut self, sh: &dyn Shared, attempt: &Attempt) {
        if attempt.in_flight {
            sh.end_in_flight(attempt.picked.member);
        }
    }

    /// Records how `attempt` ended. Returns whether it failed (fail over next).
    pub fn finish(
        &mut self,
        sh: &dyn Shared,
        attempt: &Attempt,
        status: u16,
        retry_after: Option<&str>,
        now: u64,
    ) -> bool {
        self.abandon(sh, attempt);
        self.obs.attempts.push((attempt.picked.member, status, now.saturating_sub(attempt.began_ms)));
        let Some(plan) = self.plan.as_mut() else { return false };
        let MemberRef { pool, member } = attempt.picked.member;
        plan.record(sh.config(), pool, member, status);
        let failed = sh.is_failure(attempt.picked.member, status);
        sh.record(attempt.picked, status, failed, retry_after, now, &self.request_id);
        if !failed && now > 0 {
            sh.note_answered(attempt.picked.member, now, now.saturating_sub(attempt.began_ms));
        }
        if !failed && attempt.started_ms > 0 {
            let total = now.saturating_sub(attempt.started_ms);
            let first_byte = if attempt.first_byte_ms > 0 {
                attempt.first_byte_ms.saturating_sub(attempt.started_ms)
            } else {
                total
            };
            let output = self.answer.usage().map_or(1, |used| u32::try_from(used.completion).unwrap_or(u32::MAX));
            let (kind, sample) = latency_sample(self.shape.stream, first_byte, total, output);
            sh.observe_latency(attempt.picked.member, kind, sample);
        }
        failed
    }

    /// Records a successful attempt; its answer has ended (the request's end, for the report).
    pub fn finish_success(&mut self, sh: &dyn Shared, attempt: &Attempt, status: u16) {
        let now = sh.now_ms();
        self.obs.ended_ms = now;
        self.finish(sh, attempt, status, None, now);
    }

    /// A relayed stream's body ended: a success, unless it ended failed (the
    /// provider's error event, or cut short before its API's end, which the
    /// client was then given): that is its member's failure, as an answer
    /// cut off after its headers (status 0, whatever `retry_on` says).
    pub fn stream_ended(&mut self, sh: &dyn Shared, attempt: &Attempt, status: u16) {
        let failed = attempt.adapter.as_ref().is_some_and(ResponseAdapter::stream_failed)
            || self.answer.stream_end.as_ref().is_some_and(StreamEnd::failed);
        if !failed {
            return self.finish_success(sh, attempt, status);
        }
        log::warn!(
            "switchboard[{}]: stream from {} ended before its answer was complete",
            self.request_id,
            sh.member_id(attempt.picked.member)
        );
        let now = sh.now_ms();
        self.obs.ended_ms = now;
        self.finish(sh, attempt, 0, None, now);
    }

    /// The member to fail over to (counted as a failover of the last one),
    /// or none: no member left, or the deadline passed.
    pub fn pick_next(&mut self, sh: &dyn Shared, now: u64) -> Option<Picked> {
        let plan = self.plan.as_mut().filter(|p| now < p.deadline_ms)?;
        let failed_from = plan.attempts.last().map(|a| MemberRef::new(a.pool, a.member));
        let picked = sh.pick(plan, now)?;
        if let Some(from) = failed_from {
            sh.count(Count::Failover(from));
        }
        Some(picked)
    }

    /// After a failed attempt: the next one, begun (`None`: none left, answer [`Exchange::exhausted`]).
    pub fn next_attempt(&mut self, sh: &dyn Shared, now: u64) -> Option<Attempt> {
        let picked = self.pick_next(sh, now)?;
        Some(self.begin(sh, picked, now))
    }

    /// `attempt` could not be started (`what`: the call it was): a failed attempt.
    pub fn start_failed(&mut self, sh: &dyn Shared, attempt: &Attempt, what: &str, error: &ApiError, now: u64) {
        log::warn!(
            "switchboard[{}]: {what} to {} failed to start: {}",
            self.request_id,
            sh.member_id(attempt.picked.member),
            error.message
        );
        self.finish(sh, attempt, 0, None, now);
    }

    /// The pool's attempt and first-byte timeouts within the request's remaining deadline.
    pub fn timeouts_ms(&self, sh: &dyn Shared, pool: usize, now: u64, stream: bool) -> (u64, Option<u64>) {
        let Some(policy) = sh.config().pool_at(pool).map(|p| &p.retry) else { return (1, None) };
        let remaining = self.plan.as_ref().map_or(policy.timeout_ms, |p| p.deadline_ms.saturating_sub(now));
        policy.attempt_timeouts(remaining, stream)
    }

    /// Every attempt failed (or every member is ejected): 503 listing them
    /// (429 when all were rate limited, 529 on the Messages door when all
    /// were overloaded), with the `Retry-After` and `x-should-retry` that tell
    /// the client truthfully when trying again can help: `Retry-After` is when
    /// the gateway itself next tries a member.
    pub fn exhausted(&mut self, sh: &dyn Shared) -> Step {
        let now = sh.now_ms();
        let error = match &self.plan {
            Some(plan) => {
                sh.count(Count::Exhausted(plan.primary_pool()));
                self.obs.exhausted = true;
                let target = sh.config().pool_at(plan.primary_pool()).map_or("", |p| p.name.as_str());
                let statuses: Vec<u16> = plan.attempts.iter().map(|a| a.status).collect();
                let tried = plan.attempts.iter().map(|a| sh.next_try_ms(&a.member_id, now));
                let passed_over: Vec<_> =
                    plan.passed_over.iter().map(|m| sh.passed_over(sh.member_id(*m), now)).collect();
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
        self.error_reply(sh, &error)
    }

    /// The headers every routed answer carries: which pool and member served
    /// it, after how many attempts (counting `serving`, recorded or not), the
    /// learned router's score and the id to score its answer by, and the request id.
    pub fn result_headers(&self, sh: &dyn Shared, serving: MemberRef) -> Vec<(&'static str, String)> {
        let recorded = self.plan.as_ref().map_or(0, |p| p.attempts.len());
        let serving_recorded = self
            .plan
            .as_ref()
            .and_then(|p| p.attempts.last())
            .is_some_and(|a| (a.pool, a.member) == (serving.pool, serving.member));
        let attempts = if serving_recorded { recorded } else { recorded + 1 };
        let config = sh.config();
        let mut out = Vec::with_capacity(4);
        if let Some(pool) = config.pool_at(serving.pool) {
            out.push(("x-switchboard-pool", pool.name.clone()));
        }
        out.push(("x-switchboard-member", sh.member_id(serving).to_string()));
        out.push(("x-switchboard-attempts", attempts.to_string()));
        if let Some((router, rule)) = self.plan.as_ref().and_then(|p| p.router_headers(config)) {
            out.push(("x-switchboard-router", router.to_string()));
            out.push(("x-switchboard-rule", rule.to_string()));
        }
        if let Some((score, feedback_id)) = &self.score {
            out.push(("x-switchboard-route-score", format!("{score:.3}")));
            if !feedback_id.is_empty() {
                out.push(("x-switchboard-feedback-id", feedback_id.to_string()));
            }
        }
        out.push(("x-switchboard-request-id", self.request_id.clone()));
        if let (Some(plan), Some((_, m, _))) = (&self.plan, config.resolve(serving)) {
            let (dropped, needs) = (plan.needs().dropped(m), plan.needs());
            if dropped != 0 {
                let other = needs.other_param.as_deref().unwrap_or_default();
                out.push(("x-switchboard-dropped-params", crate::api::params::names(dropped, other)));
            }
        }
        if let Some(t) = &self.tenant {
            out.extend(t.rate_headers.iter().cloned());
        }
        out
    }

    /// A stream whose answer reported no usage (the client left before its
    /// end, or a server that sends none) is counted from what was relayed:
    /// its output from the text, arguments and reasoning its events carried,
    /// its prompt from the body (4 bytes a token both), not from the output
    /// expected at admission.
    pub fn count_relayed(&mut self) {
        if self.answer.usage().is_some() {
            return;
        }
        if let Some(watch) = &self.answer.stream_end {
            self.obs.estimate.completion = watch.output_tokens();
        }
    }

    /// `attempt` ends without a verdict on its member (the client left, or a
    /// hedge won): the call log lists it with `status` (0: no answer yet).
    pub fn unjudged(&mut self, sh: &dyn Shared, attempt: &Attempt, status: u16) {
        let now = sh.now_ms();
        self.obs.attempts.push((attempt.picked.member, status, now.saturating_sub(attempt.began_ms)));
        self.abandon(sh, attempt);
    }

    /// The client left before `attempt`'s member answered at all: nothing to
    /// judge the member by, unless the pool's other members have been
    /// answering much faster (a hung member, `routing::silence`).
    pub fn left_unanswered(&mut self, sh: &dyn Shared, attempt: &Attempt) {
        let now = sh.now_ms();
        let waited = now.saturating_sub(attempt.began_ms);
        if now == 0 || !sh.abort_is_failure(attempt.picked.member, waited, now) {
            return self.unjudged(sh, attempt, 0);
        }
        log::warn!(
            "switchboard[{}]: client left after {waited} ms without an answer from {}, while the pool's other \
             members answered much faster: counted as its failure",
            self.request_id,
            sh.member_id(attempt.picked.member)
        );
        self.finish(sh, attempt, 0, None, now);
    }

    /// The request ended with an attempt still open. Not answered yet: the
    /// client left (`left_unanswered`). An answer still being relayed never
    /// reached its end: cut off by the client (nobody's failure) or by the
    /// upstream (the member's, `cut_answer`), as `details` (Envoy's response
    /// code details, read only here) tell.
    pub fn end_unfinished(&mut self, sh: &dyn Shared, details: impl FnOnce() -> String) {
        let (attempt, status) = match std::mem::replace(&mut self.state, State::Passing) {
            State::Relaying { attempt, status }
            | State::Holding { attempt, status }
            | State::Priming { attempt, status, .. } => (attempt, status),
            State::Routed(attempt) | State::Failover { attempt, .. } => return self.left_unanswered(sh, &attempt),
            State::Resuming { attempt, .. } => return self.unjudged(sh, &attempt, 0),
            _ => return,
        };
        let details = details();
        if Cutoff::of(&details) == Cutoff::ByClient {
            log::info!("switchboard[{}]: client left before the answer ended ({details})", self.request_id);
            return self.unjudged(sh, &attempt, status);
        }
        log::warn!(
            "switchboard[{}]: answer from {} ended early ({details})",
            self.request_id,
            sh.member_id(attempt.picked.member)
        );
        let now = sh.now_ms();
        self.cut_answer(sh, &attempt, now);
    }

    /// An answer broken after its headers went out (the upstream cut it, or it
    /// fell silent past `stream_idle_timeout_ms`): the member's failure, and for
    /// the call log and the request stats what the client got, a broken answer,
    /// 502 rather than the 200 its headers said (`"cut": true` in the call log).
    pub fn cut_answer(&mut self, sh: &dyn Shared, attempt: &Attempt, now: u64) {
        self.obs.status = CUT_STATUS;
        self.obs.cut = true;
        sh.count(Count::CutAnswer(attempt.picked.member));
        self.finish(sh, attempt, 0, None, now);
    }
}

/// Every attempt answered 529 (Anthropic's "overloaded").
fn all_overloaded(statuses: &[u16]) -> bool {
    !statuses.is_empty() && statuses.iter().all(|s| *s == 529)
}

/// A stream answer the adapter translates event by event.
pub fn translates_stream(adapter: &ResponseAdapter, status: u16) -> bool {
    status < 400 && adapter.is_stream()
}

/// The response adapter for a member, if its provider needs one.
pub fn adapter_for(
    sh: &dyn Shared,
    endpoint: Endpoint,
    shape: AnswerShape,
    member: MemberRef,
) -> Option<ResponseAdapter> {
    let (_, m, provider) = sh.config().resolve(member)?;
    let adapter = ResponseAdapter::new(provider.kind, endpoint, shape.stream, &m.model)?;
    Some(adapter.with_created(sh.now_ms() / 1000).with_include_usage(shape.include_usage))
}

/// The request for `member`: the door's own body (`native`) to a member whose
/// kind serves its API, else the chat body `parsed` through the provider's adapter.
pub fn build_upstream(
    sh: &dyn Shared,
    endpoint: Endpoint,
    parsed: &ParsedRequest<'_>,
    member: MemberRef,
    now_ms: u64,
    native: Option<(NativeApi, &[u8])>,
) -> Result<UpstreamRequest, ApiError> {
    let (p, m, provider) = sh.config().resolve(member).ok_or_else(|| ApiError::internal("unknown member"))?;
    if let Some((api, body)) = native.filter(|(api, _)| api.served_by(provider.kind)) {
        return build_native(provider, m, api, body);
    }
    let ctx = BuildContext { now_unix_s: now_ms / 1000, max_response_tokens: p.max_response_tokens };
    build_request(provider, m, endpoint, parsed, &ctx)
}

/// Who cut an answer off while it was relayed, as Envoy's response code
/// details say (`downstream_remote_disconnect`, `upstream_reset_after_response_started{...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// The client left: nobody's failure.
    ByClient,
    /// The upstream (or anything else): the member's failure.
    ByUpstream,
}

impl Cutoff {
    pub fn of(details: &str) -> Cutoff {
        if details.contains("downstream") {
            Cutoff::ByClient
        } else {
            Cutoff::ByUpstream
        }
    }
}
