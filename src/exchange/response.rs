//! The routed attempt's answer as Envoy's router relays it: its headers
//! judged (a failure fails over, a good answer gets the gateway's headers
//! and its readers), then its body read through the answer chain, as the
//! answer's passage says (as it is, event by event, or held whole).

use crate::api::ErrorCode;
use crate::routing::redirect;
use crate::routing::resume::StreamWatch;
use crate::routing::router::HeaderLookup;

use super::{Attempt, Calls, Count, Exchange, Passage, Relayed, Shared, State, Step};

/// What the host does with the routed answer's headers.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadersStep {
    /// Continue, pause (a failover or hedge call answers instead) or reply (none left).
    Step(Step),
    /// A good answer: set `set` and remove `drop` on the response headers,
    /// then go on, or hold them (`hold`: the body decides whether the answer
    /// stands). `wake_at`: when to wake the request for its stream's idle limit.
    Answer { set: Vec<(&'static str, String)>, drop: &'static [&'static str], hold: bool, wake_at: Option<u64> },
}

/// What of the response body the host reads (see [`Exchange::body_read`]).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRead {
    /// Nothing: go on, or hold the body (`Pause`).
    Skip(Step),
    /// The body's bytes from this offset (a primed stream's earlier bytes were read already).
    From(usize),
}

/// What the host does after a body chunk was read.
#[derive(Debug, PartialEq, Eq)]
pub struct BodyStep {
    /// Replaces the body Envoy holds (`None`: the chunk goes on as it is).
    pub body: Option<Vec<u8>>,
    /// The status the client gets instead of the upstream's (a door's, or the member's 502).
    pub status: Option<u16>,
    pub step: Step,
}

impl BodyStep {
    fn step(step: Step) -> BodyStep {
        BodyStep { body: None, status: None, step }
    }

    fn out(body: Vec<u8>) -> BodyStep {
        BodyStep { body: Some(body), status: None, step: Step::Continue }
    }
}

const TRANSLATED: &[&str] = &["content-length"];

/// What a host can do with an answer its proxy relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relays {
    /// Hold a translated stream's headers until its first event (else it is relayed at once).
    pub prime: bool,
    /// Hold a broken stream's end while a continuation call is out, and write a new end.
    pub resume: bool,
}

impl Exchange {
    /// The routed attempt's answer headers came. A failure (its status, or
    /// the upstream filter's redirect Envoy did not follow) fails over; a
    /// good answer gets the gateway's headers and the readers its passage
    /// needs, as far as the host `can`.
    pub fn response_headers(
        &mut self,
        sh: &dyn Shared,
        headers: &impl HeaderLookup,
        end_of_stream: bool,
        can: Relays,
        calls: &mut dyn Calls,
    ) -> HeadersStep {
        // Anything but a routed request (our own local reply, say) passes through.
        let mut attempt = match std::mem::replace(&mut self.state, State::Passing) {
            State::Routed(attempt) => attempt,
            // A routed answer coming while a hedge's or failover's answer is awaited waits too.
            other @ State::Failover { .. } => {
                self.state = other;
                return HeadersStep::Step(Step::Pause);
            }
            other => {
                self.state = other;
                return HeadersStep::Step(Step::Continue);
            }
        };
        let status = headers.header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        // A failure the upstream filter made a redirect that Envoy did not follow: fail over here.
        let redirected = self.try_token.take().filter(|_| status == 307).and(headers.header("location"));
        let (status, retry_after) = match redirected.map(redirect::failure_in) {
            Some((failed, retry_after)) => (failed, retry_after),
            None => (status, headers.header("retry-after").map(str::to_string)),
        };
        let member = attempt.picked.member;
        let failed = sh.is_failure(member, status);
        // The time of the first byte is for failover (health, deadline), latency
        // pools and the call log; a plain success needs no clock here.
        let now = if failed || attempt.started_ms > 0 || sh.config().call_log { sh.now_ms() } else { 0 };
        if attempt.started_ms > 0 {
            attempt.first_byte_ms = now;
        }
        if failed {
            self.finish(sh, &attempt, status, retry_after.as_deref(), now);
            if self.settle_hedge(sh, true) {
                return HeadersStep::Step(Step::Pause);
            }
            return HeadersStep::Step(self.fail_over(sh, now, calls));
        }
        self.settle_hedge(sh, false);
        self.answer.resume = (can.resume && self.watches_resume(sh, &attempt, status)).then(StreamWatch::default);
        self.answer.start(&attempt, status);
        let mut set = self.result_headers(sh, member);
        // The provider's request id under another name (Envoy sets `x-request-id` to the gateway's).
        if let Some(id) = headers.header("x-request-id") {
            set.push(("x-upstream-request-id", id.to_string()));
        }
        let drop = match self.answer.passage(&attempt, status) {
            Passage::AsIs => {
                self.obs.answered(status, now);
                &[][..]
            }
            Passage::Stream { primed } => {
                self.obs.answered(status, now);
                set.push(("content-type", "text/event-stream".to_string()));
                if primed && can.prime && !end_of_stream {
                    self.state = State::Priming { attempt, status, fed: 0 };
                    return HeadersStep::Answer { set, drop: TRANSLATED, hold: true, wake_at: None };
                }
                TRANSLATED
            }
            Passage::Whole => {
                set.push(("content-type", "application/json".to_string()));
                if end_of_stream {
                    self.obs.answered(status, now);
                    self.finish_success(sh, &attempt, status);
                    return HeadersStep::Answer { set, drop: TRANSLATED, hold: false, wake_at: None };
                }
                // A whole translated body is only known good once read: hold the
                // headers so an unreadable answer can still fail over.
                self.state = State::Holding { attempt, status };
                return HeadersStep::Answer { set, drop: TRANSLATED, hold: true, wake_at: None };
            }
        };
        // A successful answer goes on; it is recorded when its body ends.
        let wake_at = if end_of_stream {
            self.finish_success(sh, &attempt, status);
            None
        } else {
            let wake_at = self.watch_idle(sh, member.pool, status);
            self.state = State::Relaying { attempt, status };
            wake_at
        };
        HeadersStep::Answer { set, drop, hold: false, wake_at }
    }

    /// A response body callback (`body_size` bytes buffered): whether and
    /// from where the host reads it. A relayed answer no reader needs passes
    /// untouched (recorded at its end).
    pub fn body_read(&mut self, sh: &dyn Shared, body_size: usize, end_of_stream: bool) -> BodyRead {
        self.alive(sh);
        match &self.state {
            // Hold the failed upstream's body back until the local answer replaces it.
            State::Failover { .. } | State::Resuming { .. } => BodyRead::Skip(Step::Pause),
            State::Holding { .. } if !end_of_stream => BodyRead::Skip(Step::Pause),
            State::Holding { .. } => BodyRead::From(0),
            // A primed stream's body is buffered by Envoy while held: only the new bytes are read.
            State::Priming { fed, .. } => BodyRead::From((*fed).min(body_size)),
            State::Relaying { attempt, .. } if self.answer.reads(attempt) => BodyRead::From(0),
            State::Relaying { .. } if end_of_stream => {
                if let State::Relaying { attempt, status } = std::mem::replace(&mut self.state, State::Passing) {
                    self.finish_success(sh, &attempt, status);
                }
                BodyRead::Skip(Step::Continue)
            }
            _ => BodyRead::Skip(Step::Continue),
        }
    }

    /// The response body's new bytes `chunk` (of `body_size` buffered), as
    /// [`Exchange::body_read`] asked, through the answer chain.
    pub fn response_body(
        &mut self,
        sh: &dyn Shared,
        chunk: Vec<u8>,
        body_size: usize,
        end_of_stream: bool,
        calls: &mut dyn Calls,
    ) -> BodyStep {
        match std::mem::replace(&mut self.state, State::Passing) {
            State::Priming { attempt, status, .. } => {
                self.prime(sh, attempt, status, &chunk, body_size, end_of_stream, calls)
            }
            State::Relaying { mut attempt, status } => {
                if self.shape.stream && self.obs.first_event_ms == 0 && body_size > 0 {
                    self.obs.first_event_ms = sh.now_ms();
                }
                let relayed = self.answer.relay(&mut attempt, &chunk, end_of_stream);
                self.note_response_id(sh, attempt.picked.member, attempt.native, status);
                let out = match relayed {
                    Relayed::Broken(out) => return self.continue_stream(sh, attempt, body_size, out, calls),
                    Relayed::Out(out) => out,
                };
                if end_of_stream {
                    self.stream_ended(sh, &attempt, status);
                } else {
                    self.state = State::Relaying { attempt, status };
                }
                // A pass-through answer read only for its usage stays as it is.
                BodyStep { body: out, status: None, step: Step::Continue }
            }
            State::Holding { mut attempt, status } => {
                let (out, door_status, unreadable) = self.answer.hold(&mut attempt, status, chunk);
                if unreadable {
                    sh.count(Count::LocalError(ErrorCode::InvalidUpstreamResponse));
                    log::warn!(
                        "switchboard[{}]: unreadable {status} answer from {}",
                        self.request_id,
                        sh.member_id(attempt.picked.member)
                    );
                    // The headers are still held: an unreadable answer is the member's 502.
                    let now = sh.now_ms();
                    if self.finish(sh, &attempt, 502, None, now) {
                        return BodyStep::step(self.fail_over(sh, now, calls));
                    }
                } else {
                    self.finish_success(sh, &attempt, status);
                }
                let now = sh.now_ms();
                self.obs.answered(door_status, now);
                BodyStep { body: Some(out), status: Some(door_status).filter(|s| *s != status), step: Step::Continue }
            }
            other => {
                self.state = other;
                BodyStep::step(Step::Continue)
            }
        }
    }

    /// The next body bytes of a held translated stream. Until its first
    /// event nothing has reached the client: a stream that fails before it
    /// (unreadable, an error event, ended empty) is the member's 502 and
    /// fails over (when the pool fails over on 502; else the client gets the
    /// error event, as before).
    #[allow(clippy::too_many_arguments)]
    fn prime(
        &mut self,
        sh: &dyn Shared,
        mut attempt: Attempt,
        status: u16,
        chunk: &[u8],
        body_size: usize,
        end_of_stream: bool,
        calls: &mut dyn Calls,
    ) -> BodyStep {
        let Some(adapter) = attempt.adapter.as_mut() else {
            self.first_event(sh, chunk);
            return BodyStep::out(chunk.to_vec());
        };
        let out = adapter.translate_stream(chunk, end_of_stream);
        let member = attempt.picked.member;
        if adapter.stream_failed_before_output() && sh.is_failure(member, 502) {
            sh.count(Count::LocalError(ErrorCode::InvalidUpstreamResponse));
            log::warn!(
                "switchboard[{}]: unreadable stream from {} before its first event",
                self.request_id,
                sh.member_id(member)
            );
            let now = sh.now_ms();
            self.finish(sh, &attempt, 502, None, now);
            return BodyStep::step(self.fail_over(sh, now, calls));
        }
        if out.is_empty() && !end_of_stream {
            self.state = State::Priming { attempt, status, fed: body_size };
            return BodyStep::step(Step::Pause);
        }
        match self.answer.primed(&attempt, out, end_of_stream) {
            Relayed::Broken(out) => self.continue_stream(sh, attempt, body_size, out, calls),
            Relayed::Out(out) => {
                self.first_event(sh, out.as_deref().unwrap_or_default());
                if end_of_stream {
                    self.stream_ended(sh, &attempt, status);
                } else {
                    self.state = State::Relaying { attempt, status };
                }
                BodyStep { body: out, status: None, step: Step::Continue }
            }
        }
    }

    /// A primed stream's first event leaves (for the call log and the first-token stats).
    fn first_event(&mut self, sh: &dyn Shared, out: &[u8]) {
        if self.obs.first_event_ms == 0 && !out.is_empty() {
            self.obs.first_event_ms = sh.now_ms();
        }
    }
}
