//! Stream continuation (`resume_streams`, the plain part in
//! `routing::resume`): a chat stream of such a pool is watched as it is
//! relayed; when it breaks after its first byte (the provider's error event,
//! or an end without a finish), the break is held back, the end of the body
//! is paused (the client's stream stays open), and one non-streaming call
//! asks the next member for the rest of the answer. Its answer is written as
//! the last chunks of the paused body (the buffered end, replaced), and the
//! response resumes. Verified in Envoy 1.40: a body callback that returns
//! `Pause` at `end_of_stream` keeps its data buffered, and
//! `set_buffer_bytes` + `continue_stream` from the call's answer send the new
//! end. A reset or a silent upstream gives no body callback to pause, so those
//! are not continued (see `stream_idle`).

use proxy_wasm::types::Action;

use crate::api::usage::Tokens;
use crate::exchange::continued;
use crate::providers::ResponseAdapter;
use crate::routing::resume::{Continued, StreamWatch};

use super::{header_value, Attempt, Filter, State};
use crate::host::abi;
use crate::host::runtime::Runtime;

/// A watched stream, and once it broke, what the continuation needs.
pub(super) struct Resume {
    pub(super) watch: StreamWatch,
    held: Option<Held>,
}

/// The paused end of a broken stream.
struct Held {
    /// What Envoy buffered of the last piece (replaced when the stream ends).
    size: usize,
    /// What of that piece goes out before the continuation (in the door's shape).
    out: Vec<u8>,
    /// The tokens the broken attempt reported.
    first: Option<Tokens>,
}

impl Filter {
    /// The answer's headers came: a stream of a continuing pool, in OpenAI's
    /// shape (not a door's native one), with one choice, is watched.
    pub(super) fn watch_resume(&mut self, rt: &Runtime, attempt: &Attempt, status: u16) {
        self.resume = self
            .ex
            .watches_resume(rt, attempt, status)
            .then(|| Box::new(Resume { watch: StreamWatch::default(), held: None }));
    }

    /// The next OpenAI-shaped piece of a watched stream: `Some` replaces it
    /// (the break is held back). `None` for streams not watched.
    pub(super) fn resume_feed(&mut self, out: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        self.resume.as_mut()?.watch.feed(out, end_of_stream)
    }

    /// Whether the stream, now ended, broke and is to be continued.
    pub(super) fn resume_due(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| r.watch.broken())
    }

    /// The watched stream ended broken (`out`: what of its last piece goes to
    /// the client, `body_size`: what Envoy buffered of it): the broken attempt
    /// is its member's failure and the next member is asked for the rest. The
    /// end stays paused until it answers; without a member to ask, the stream
    /// ends as it would have.
    pub(super) fn continue_stream(&mut self, rt: &Runtime, attempt: Attempt, body_size: usize, out: Vec<u8>) -> Action {
        let now = self.now_ms();
        self.ex.answer.note_adapter_usage(attempt.adapter.as_ref());
        let first = attempt.adapter.as_ref().and_then(ResponseAdapter::usage);
        let first = first.or_else(|| self.resume.as_ref()?.watch.usage());
        log::warn!(
            "switchboard[{}]: stream from {} broke after its first byte: continuing it on another member",
            self.ex.request_id,
            rt.member_id(attempt.picked.member)
        );
        // Status 0, as for any answer cut short: its member's failure whatever `retry_on` says.
        self.ex.finish(rt, &attempt, 0, None, now);
        let Some(text) = self.resume.as_ref().map(|r| r.watch.text().to_string()) else { return Action::Continue };
        while let Some(picked) = self.ex.pick_next(rt, now) {
            let mut next = self.ex.begin(rt, picked, now);
            let started = self
                .ex
                .continuation(rt, picked, &mut next, &text, now)
                .and_then(|upstream| self.dispatch_upstream(rt, picked.member, now, &upstream, false).ok());
            match started {
                Some(call) => {
                    if let Some(r) = self.resume.as_mut() {
                        r.held = Some(Held { size: body_size, out, first });
                    }
                    self.ex.state = State::Resuming { attempt: next, call };
                    return Action::Pause;
                }
                None => {
                    log::warn!(
                        "switchboard[{}]: continuation call to {} failed to start",
                        self.ex.request_id,
                        rt.member_id(picked.member)
                    );
                    self.ex.finish(rt, &next, 0, None, now);
                }
            }
        }
        let end = self.resume_failed_end();
        self.end_stream(body_size, out, &end, now)
    }

    /// The continuation call answered: its text ends the client's stream, or
    /// (a failed call, an answer that cannot be read) the stream ends as it
    /// would have without it.
    pub(super) fn resume_answered(&mut self, rt: &Runtime, token: u32, num_headers: usize, body_size: usize) {
        let State::Resuming { call, .. } = &self.ex.state else { return };
        if *call != token {
            return;
        }
        let State::Resuming { mut attempt, .. } = std::mem::replace(&mut self.ex.state, State::Passing) else { return };
        let Some(Held { size, out, first }) = self.resume.as_mut().and_then(|r| r.held.take()) else { return };
        let now = self.now_ms();
        let status = if num_headers == 0 {
            0
        } else {
            abi::headers_raw(abi::MAP_HTTP_CALL_RESPONSE_HEADERS)
                .ok()
                .and_then(|h| header_value(&h, ":status").and_then(|s| s.parse::<u16>().ok()))
                .unwrap_or(0)
        };
        let answer = continued(&mut attempt, status, || {
            abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_default()
        });
        let Some(answer) = answer else {
            log::warn!(
                "switchboard[{}]: continuation from {} failed ({status})",
                self.ex.request_id,
                rt.member_id(attempt.picked.member)
            );
            self.ex.finish(rt, &attempt, if status < 300 { 502 } else { status }, None, now);
            let end = self.resume_failed_end();
            self.end_stream(size, out, &end, now);
            return self.resume_response();
        };
        self.ex.finish(rt, &attempt, status, None, now);
        rt.metrics.inc(rt.metrics.pool(attempt.picked.member.pool).and_then(|p| p.resumed_streams));
        let end = self.resume_tail(&answer, first);
        self.end_stream(size, out, &end, now);
        self.resume_response();
    }

    /// The continuation's answer as the stream's last OpenAI chunks; the
    /// request's usage becomes the sum of both attempts.
    fn resume_tail(&mut self, answer: &Continued, first: Option<Tokens>) -> Vec<u8> {
        let include_usage = self.ex.shape.include_usage;
        let Some(r) = self.resume.take() else { return Vec::new() };
        let (tail, usage) = r.watch.tail(answer, include_usage, first);
        self.ex.answer.adapter_usage = Some(usage);
        tail
    }

    fn resume_failed_end(&mut self) -> Vec<u8> {
        self.resume.take().map(|mut r| r.watch.failed_end()).unwrap_or_default()
    }

    /// Replaces the paused end of the body (`size` bytes) with `out` and the
    /// stream's OpenAI end `end` (in the client's door's shape).
    fn end_stream(&mut self, size: usize, mut out: Vec<u8>, end: &[u8], now: u64) -> Action {
        out.extend_from_slice(&self.ex.answer.end_with(end));
        self.ex.obs.ended_ms = now;
        if let Err(s) = abi::set_buffer(abi::BUFFER_RESPONSE_BODY, 0, size, &out) {
            self.host_error("set response body", s);
        }
        Action::Continue
    }

    fn resume_response(&self) {
        if let Err(s) = abi::resume_response() {
            self.host_error("resume the response", s);
        }
    }
}
