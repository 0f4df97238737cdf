//! Failing over: the next member started (routed again, or sent as a call
//! of its own through the host's [`Calls`]), and the answers of the calls a
//! request sent (a failover's, a hedge's, a continuation's) read.

use std::borrow::Cow;

use crate::api::forward::relayed_response_header;
use crate::api::request::ParsedRequest;
use crate::api::{ApiError, ErrorCode};
use crate::config::MemberRef;
use crate::providers::UpstreamRequest;
use crate::routing::router::HeaderLookup;

use super::{build_upstream, Attempt, Exchange, Shared, State, Step, Whole};

/// The host's HTTP calls: a request sent on its own (a failover, hedge or
/// continuation call), as [`Exchange::dispatch`] describes it.
pub trait Calls {
    /// Sends `upstream` to `member` (`stream`: the timeouts of a stream);
    /// the call's id, or why it did not start.
    fn send(
        &mut self,
        ex: &Exchange,
        member: MemberRef,
        upstream: &UpstreamRequest,
        stream: bool,
        now: u64,
    ) -> Result<u64, ApiError>;
}

/// What the host does with the answer of a call (see [`Exchange::call_answered`]).
#[derive(Debug, PartialEq, Eq)]
pub enum CallStep {
    /// Not a call of this request's, or nothing for the host to do.
    Nothing,
    /// Apply it (the failover's answer as a reply; a pause while the next call is in flight).
    Step(Step),
    /// The paused end of a continued stream (`size` bytes buffered) is
    /// replaced by `body`, and the response resumes.
    EndStream { size: usize, body: Vec<u8> },
}

impl Exchange {
    /// Starts the next member the plan allows with `start`, given the
    /// request as that member takes it; a member that cannot be started is
    /// a failed attempt and the next one is tried. `Err`: none left, the
    /// exhausted answer.
    pub fn start_next<T>(
        &mut self,
        sh: &dyn Shared,
        now: u64,
        what: &str,
        mut start: impl FnMut(&Exchange, MemberRef, &UpstreamRequest) -> Result<T, ApiError>,
    ) -> Result<(Attempt, T), Step> {
        loop {
            let Some(attempt) = self.next_attempt(sh, now) else { return Err(self.exhausted(sh)) };
            let member = attempt.picked.member;
            match self.upstream_for(sh, member, now).and_then(|upstream| start(self, member, &upstream)) {
                Ok(started) => return Ok((attempt, started)),
                Err(e) => self.start_failed(sh, &attempt, what, &e, now),
            }
        }
    }

    /// The saved request as `member` takes it.
    pub fn upstream_for(&self, sh: &dyn Shared, member: MemberRef, now: u64) -> Result<UpstreamRequest, ApiError> {
        let parsed = ParsedRequest::parse(&self.body, self.endpoint)?;
        build_upstream(sh, self.endpoint, &parsed, member, now, self.native_body())
    }

    /// After a failed attempt: the request sent to the next member as a call
    /// (the response paused until it answers), or the answer that every
    /// attempt failed (none left, or the deadline passed).
    pub fn fail_over(&mut self, sh: &dyn Shared, now: u64, calls: &mut dyn Calls) -> Step {
        let stream = self.shape.stream;
        let send = |ex: &Exchange, member, upstream: &UpstreamRequest| calls.send(ex, member, upstream, stream, now);
        match self.start_next(sh, now, "failover call", send) {
            Ok((attempt, call)) => {
                self.state = State::Failover { attempt, call };
                Step::Pause
            }
            Err(exhausted) => exhausted,
        }
    }

    /// A call of this request answered (`headers`: none when it failed:
    /// reset, refused, timed out; `body`: read only when needed). A hedge's
    /// good answer wins over the routed attempt, a failed one is its member's
    /// failure while the routed attempt goes on; a failover's (or the
    /// winning hedge's) good answer is the client's, a failed one fails over
    /// again; a continuation's ends the paused stream.
    pub fn call_answered(
        &mut self,
        sh: &dyn Shared,
        call: u64,
        headers: &[(&str, &str)],
        body: impl FnOnce() -> Vec<u8>,
        calls: &mut dyn Calls,
    ) -> CallStep {
        let status = headers.header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if !self.hedge_answered(sh, call, status, headers.header("retry-after")) {
            return CallStep::Nothing;
        }
        match &self.state {
            State::Resuming { call: c, .. } if *c == call => {}
            State::Failover { call: c, .. } if *c == call => {}
            _ => return CallStep::Nothing,
        }
        match std::mem::replace(&mut self.state, State::Answered) {
            State::Resuming { attempt, held, .. } => {
                let (size, body) = self.resume_answered(sh, attempt, held, status, body);
                CallStep::EndStream { size, body }
            }
            State::Failover { attempt, .. } => {
                CallStep::Step(self.failover_answered(sh, attempt, status, headers, body, calls))
            }
            other => {
                self.state = other;
                CallStep::Nothing
            }
        }
    }

    /// A failover call's answer: the client's when good (in the client's
    /// shape, with the gateway's headers and the provider's relayed ones),
    /// else the next member.
    fn failover_answered(
        &mut self,
        sh: &dyn Shared,
        mut attempt: Attempt,
        status: u16,
        headers: &[(&str, &str)],
        body: impl FnOnce() -> Vec<u8>,
        calls: &mut dyn Calls,
    ) -> Step {
        let now = sh.now_ms();
        let member = attempt.picked.member;
        if sh.is_failure(member, status) {
            self.finish(sh, &attempt, status, headers.header("retry-after"), now);
            return self.fail_over(sh, now, calls);
        }
        // A stream given whole that ended short of its end (or with an error
        // event) has reached no one yet: it fails over as its member's 502.
        // (Else, when the pool does not fail over on 502, it is relayed with its end.)
        let fails_over = sh.is_failure(member, 502);
        let Whole { verdict, content_type, body } =
            self.answer.whole(&mut attempt, status, headers.header("content-type"), body(), fails_over);
        if verdict != status {
            sh.count(super::Count::LocalError(ErrorCode::InvalidUpstreamResponse));
            log::warn!(
                "switchboard[{}]: unreadable or incomplete {status} answer from {}",
                self.request_id,
                sh.member_id(member)
            );
        }
        if self.finish(sh, &attempt, verdict, None, now) {
            return self.fail_over(sh, now, calls);
        }
        self.answer.note(&body);
        self.answer.note_adapter_usage(attempt.adapter.as_ref());
        self.note_response_id(sh, member, attempt.native, verdict);
        let mut out = vec![(Cow::Borrowed("content-type"), content_type)];
        out.extend(self.result_headers(sh, member).into_iter().map(|(k, v)| (Cow::Borrowed(k), v)));
        let relayed =
            headers.iter().filter_map(|(k, v)| Some((relayed_response_header(k)?.to_string(), v.to_string())));
        out.extend(relayed.map(|(k, v)| (Cow::Owned(k), v)));
        let step = self.reply_with(sh, verdict, out, body);
        if self.shape.stream {
            // A failed-over stream reaches the client whole: its first event leaves now.
            self.obs.first_event_ms = self.obs.first_byte_ms;
        }
        step
    }
}
