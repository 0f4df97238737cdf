//! Stream continuation (`resume_streams`; the watch, request and splice are
//! `routing::resume`): a chat stream of such a pool is watched as it is
//! relayed (the answer chain's continuation watch); when it breaks after its
//! first byte (the provider's error event, or an end without a finish), the
//! break is held back, the end of the body is paused (the client's stream
//! stays open), and one non-streaming call asks the next member for the rest
//! of the answer. Its answer is written as the last chunks of the paused body
//! (the buffered end, replaced), and the response resumes. (Verified in Envoy
//! 1.40: a body callback that returns `Pause` at `end_of_stream` keeps its
//! data buffered, and `set_buffer_bytes` + `continue_stream` from the call's
//! answer send the new end.) A reset or a silent upstream gives no body
//! callback to pause, so those are not continued (see `timers`).

use crate::api::request::ParsedRequest;
use crate::api::usage::Tokens;
use crate::api::Endpoint;
use crate::providers::{ResponseAdapter, UpstreamRequest};
use crate::routing::resume::{continuation_body, prefills, read_answer, Continued};

use super::{build_upstream, Attempt, BodyStep, Calls, Count, Exchange, Picked, Shared, State, Step};

/// The paused end of a broken stream, while its continuation call is in flight.
#[derive(Debug)]
pub struct Held {
    /// What Envoy buffered of the last piece (replaced when the stream ends).
    pub size: usize,
    /// What of that piece goes out before the continuation (in the door's shape).
    pub out: Vec<u8>,
    /// The tokens the broken attempt reported.
    pub first: Option<Tokens>,
}

impl Exchange {
    /// Whether an answer of `status` to `attempt` is watched for a break: a
    /// successful stream of a continuing pool, in OpenAI's shape (not a
    /// door's native one), with one choice.
    pub fn watches_resume(&self, sh: &dyn Shared, attempt: &Attempt, status: u16) -> bool {
        let pool = sh.config().pool_at(attempt.picked.member.pool);
        let continues = pool.is_some_and(|p| p.retry.resume_streams)
            && self.shape.stream
            && self.endpoint == Endpoint::ChatCompletions
            && (200..300).contains(&status)
            && !attempt.native;
        continues
            && ParsedRequest::parse(&self.body, self.endpoint)
                .is_ok_and(|p| p.field("n").is_none_or(|n| n.get() == "1"))
    }

    /// The call that asks `picked` for the rest of an answer whose text so
    /// far is `text` (one non-streaming request, prefilled where the
    /// member takes it), with the adapter that reads its answer set on
    /// `next`. `None`: the member cannot be asked.
    pub fn continuation(
        &self,
        sh: &dyn Shared,
        picked: Picked,
        next: &mut Attempt,
        text: &str,
        now: u64,
    ) -> Option<UpstreamRequest> {
        let (kind, member) = sh.config().resolve(picked.member).map(|(_, m, p)| (p.kind, m))?;
        next.adapter = ResponseAdapter::new(kind, self.endpoint, false, &member.model);
        let chat = ParsedRequest::parse(&self.body, self.endpoint).ok()?;
        let body = continuation_body(&chat, text, prefills(kind, &member.model, member.prefill))?;
        let parsed = ParsedRequest::parse(&body, self.endpoint).ok()?;
        build_upstream(sh, self.endpoint, &parsed, picked.member, now, None).ok()
    }
}

impl Exchange {
    /// The watched stream ended broken (`out`: what of its last piece goes to
    /// the client, `body_size`: what Envoy buffered of it): the broken attempt
    /// is its member's failure and the next member is asked for the rest. The
    /// end stays paused until it answers; without a member to ask, the stream
    /// ends as it would have.
    pub fn continue_stream(
        &mut self,
        sh: &dyn Shared,
        attempt: Attempt,
        body_size: usize,
        out: Vec<u8>,
        calls: &mut dyn Calls,
    ) -> BodyStep {
        let now = sh.now_ms();
        self.answer.note_adapter_usage(attempt.adapter.as_ref());
        let first = attempt.adapter.as_ref().and_then(ResponseAdapter::usage);
        let first = first.or_else(|| self.answer.resume.as_ref()?.usage());
        log::warn!(
            "switchboard[{}]: stream from {} broke after its first byte: continuing it on another member",
            self.request_id,
            sh.member_id(attempt.picked.member)
        );
        // Status 0, as for any answer cut short: its member's failure whatever `retry_on` says.
        self.finish(sh, &attempt, 0, None, now);
        let Some(text) = self.answer.resume.as_ref().map(|w| w.text().to_string()) else {
            return BodyStep { body: None, status: None, step: Step::Continue };
        };
        while let Some(picked) = self.pick_next(sh, now) {
            let mut next = self.begin(sh, picked, now);
            let started = self
                .continuation(sh, picked, &mut next, &text, now)
                .and_then(|upstream| calls.send(self, picked.member, &upstream, false, now).ok());
            match started {
                Some(call) => {
                    let held = Held { size: body_size, out, first };
                    self.state = State::Resuming { attempt: next, call, held };
                    return BodyStep { body: None, status: None, step: Step::Pause };
                }
                None => {
                    log::warn!(
                        "switchboard[{}]: continuation call to {} failed to start",
                        self.request_id,
                        sh.member_id(picked.member)
                    );
                    self.finish(sh, &next, 0, None, now);
                }
            }
        }
        let end = self.answer.resume.take().map(|mut w| w.failed_end()).unwrap_or_default();
        let body = self.end_stream(out, &end, now);
        BodyStep { body: Some(body), status: None, step: Step::Continue }
    }

    /// The continuation call answered with `status` (its body read by
    /// `body` only when good): its text ends the client's stream, or (a
    /// failed call, an answer that cannot be read) the stream ends as it
    /// would have without it. What replaces the paused end (of `size` bytes).
    pub fn resume_answered(
        &mut self,
        sh: &dyn Shared,
        mut attempt: Attempt,
        held: Held,
        status: u16,
        body: impl FnOnce() -> Vec<u8>,
    ) -> (usize, Vec<u8>) {
        let Held { size, out, first } = held;
        let now = sh.now_ms();
        self.state = State::Passing;
        let Some(answer) = continued(&mut attempt, status, body) else {
            log::warn!(
                "switchboard[{}]: continuation from {} failed ({status})",
                self.request_id,
                sh.member_id(attempt.picked.member)
            );
            self.finish(sh, &attempt, if status < 300 { 502 } else { status }, None, now);
            let end = self.answer.resume.take().map(|mut w| w.failed_end()).unwrap_or_default();
            return (size, self.end_stream(out, &end, now));
        };
        self.finish(sh, &attempt, status, None, now);
        sh.count(Count::ResumedStream(attempt.picked.member.pool));
        // The continuation's answer as the stream's last OpenAI chunks; the
        // request's usage becomes the sum of both attempts.
        let end = match self.answer.resume.take() {
            Some(watch) => {
                let (tail, usage) = watch.tail(&answer, self.shape.include_usage, first);
                self.answer.adapter_usage = Some(usage);
                tail
            }
            None => Vec::new(),
        };
        (size, self.end_stream(out, &end, now))
    }

    /// `out` and the stream's OpenAI end `end` (in the client's door's shape):
    /// what replaces the paused end of the body.
    fn end_stream(&mut self, mut out: Vec<u8>, end: &[u8], now: u64) -> Vec<u8> {
        out.extend_from_slice(&self.answer.end_with(end));
        self.obs.ended_ms = now;
        out
    }
}

/// The continuation call's answer (`status`, its body read by `body` only
/// for a success) as the rest of the stream; `None`: a failure, or an answer
/// that cannot be read.
pub fn continued(attempt: &mut Attempt, status: u16, body: impl FnOnce() -> Vec<u8>) -> Option<Continued> {
    if !(200..300).contains(&status) {
        return None;
    }
    let body = body();
    let body = match attempt.adapter.as_mut() {
        Some(adapter) => Some(adapter.translate_body(status, &body)).filter(|_| !adapter.translation_failed())?,
        None => body,
    };
    read_answer(&body)
}
