//! Streaming failover by internal redirect (the words it uses are
//! `routing::redirect`; the upstream half is a few lines of Lua in the
//! router's `upstream_http_filters`, `envoy/render.py`):
//!
//! 1. `tag_try`: a routed stream tells the upstream filter which statuses
//!    fail over and where to replay it, with a fresh token.
//! 2. The attempt fails before its first byte: the upstream filter answers
//!    the router with a 307, Envoy recreates the stream, and this request's
//!    old filter instance parks its state under the token (`hand_over`, from
//!    `on_log` or `on_done`, which Envoy runs before it replays the request).
//! 3. The replay's new instance takes the state back and records the failed
//!    attempt (`resume`), then, once the replayed body is in, points the
//!    request at the next member (`replay_body`); that member's answer
//!    streams to the client directly.
//!
//! Also here: a translated stream held until its first event (`prime`), so
//! that one that cannot be read fails over before the client got anything.

use crate::api::ErrorCode;
use proxy_wasm::types::Action;

use crate::api::request::ParsedRequest;
use crate::api::ApiError;
use crate::config::MemberRef;
use crate::routing::redirect;

use super::super::abi;
use super::super::parked;
use super::super::runtime::Runtime;
use super::{build_upstream, header_value, Attempt, Filter, State, REQ};

impl Filter {
    /// Tags the routed attempt of a stream so the upstream filter can turn
    /// its failure into a redirect (when the configuration says that filter runs).
    pub(super) fn tag_try(&mut self, member: MemberRef) {
        let Some(rt) = self.rt.clone() else { return };
        if !rt.config.stream_failover || !self.ex.shape.stream {
            return;
        }
        let Some(retry_on) = rt.config.pool_at(member.pool).map(|p| p.retry.retry_on.as_slice()) else { return };
        let Some(token) = redirect::new_token() else { return };
        let h = &self.client_headers;
        let url = redirect::location(
            header_value(h, ":scheme").unwrap_or("http"),
            header_value(h, ":authority").unwrap_or_default(),
            header_value(h, ":path").unwrap_or("/"),
            &token,
        );
        if let Err(s) = abi::set_header(REQ, redirect::TRY_HEADER, &redirect::try_header(retry_on, &url)) {
            return self.host_error("set try header", s);
        }
        self.try_token = Some(token);
    }

    /// Envoy is replaying the request after its routed attempt failed (the
    /// upstream filter's redirect was followed): the request's state is parked
    /// for the replay, which records the failure. False when the request simply ended.
    pub(super) fn hand_over(&mut self) -> bool {
        if self.try_token.is_none() || !matches!(self.ex.state, State::Routed(_)) {
            return false;
        }
        let details = abi::property(&["response", "code_details"]).ok().flatten();
        if details.as_deref() != Some(b"internal_redirect".as_slice()) {
            return false;
        }
        let Some(token) = self.try_token.take() else { return false };
        let blank = Filter::new(0, self.rt.clone());
        parked::park(token, Box::new(std::mem::replace(self, blank)))
    }

    /// A request whose path carries a failover token: the replay of a parked
    /// request, or a client's forgery, which gets nothing but a 400.
    pub(super) fn resume(&mut self, token: &str, replayed: Vec<u8>, end_of_stream: bool) -> Action {
        let Some(parked) = parked::unpark(token) else {
            return self.answer_error(
                &ApiError::invalid_request(
                    ErrorCode::InvalidValue,
                    format!("`{}` is the gateway's own failover parameter.", redirect::TOKEN_PARAM),
                )
                .with_param(redirect::TOKEN_PARAM),
            );
        };
        let (context_id, me) = (self.context_id, std::mem::take(&mut self.me));
        *self = *parked;
        // The replay is another HTTP context: its own id and timer handle. The
        // parked request's hedge and idle watch died with its context.
        self.context_id = context_id;
        self.me = me;
        self.hedge = None;
        self.idle = None;
        let path = header_value(&replayed, ":path").unwrap_or_default();
        let (status, retry_after) = redirect::failure_in(path);
        if let (State::Routed(attempt), Some(rt)) =
            (std::mem::replace(&mut self.ex.state, State::Passing), self.rt.clone())
        {
            // The failed attempt, recorded once: health, metrics, the plan.
            let now = self.now_ms();
            self.ex.finish(&*rt, &attempt, status, retry_after.as_deref(), now);
            log::info!(
                "switchboard[{}]: {} answered {status}; the request is replayed for the next member",
                self.ex.request_id,
                rt.member_id(attempt.picked.member)
            );
        }
        if end_of_stream {
            return self.answer_error(&ApiError::internal("The replayed request lost its body."));
        }
        self.ex.state = State::Replayed { headers: replayed };
        Action::Pause
    }

    /// The replayed body is in: the request goes to the next member (or
    /// answers that every attempt failed).
    pub(super) fn replay_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        let State::Replayed { headers } = std::mem::replace(&mut self.ex.state, State::Passing) else {
            return Action::Continue;
        };
        let now = self.now_ms();
        let routed = |f: &mut Self, member| f.point_at(&rt, member, body_size, &headers, now);
        match self.start_next(&rt, now, "replay", routed) {
            Ok((attempt, ())) => {
                let member = attempt.picked.member;
                self.ex.state = State::Routed(attempt);
                self.tag_try(member);
                Action::Continue
            }
            Err(exhausted) => exhausted,
        }
    }

    /// Rewrites the replayed request (body of `body_size` bytes, header map
    /// `present`) for `member`, from the client's saved body.
    fn point_at(
        &self,
        rt: &Runtime,
        member: MemberRef,
        body_size: usize,
        present: &[u8],
        now: u64,
    ) -> Result<(), ApiError> {
        let parsed = ParsedRequest::parse(&self.ex.body, self.ex.endpoint)?;
        let upstream = build_upstream(rt, self.ex.endpoint, &parsed, member, now, self.ex.native_body())?;
        let timeouts = self.ex.timeouts_ms(rt, member.pool, now, self.ex.shape.stream);
        self.rewrite_request(rt, member, &upstream, timeouts, body_size, present).map_err(|(what, s)| {
            self.host_error(what, s);
            ApiError::internal("The gateway could not rewrite the request.")
        })
    }

    /// The next body bytes of a held translated stream. Until its first
    /// event nothing has reached the client: a stream that fails before it
    /// (unreadable, an error event, ended empty) is the member's 502 and
    /// fails over (when the pool fails over on 502; else the client gets the
    /// error event, as before). `Ok`: what replaces the buffered body; `Err`: the action.
    pub(super) fn prime(
        &mut self,
        rt: &Runtime,
        mut attempt: Attempt,
        status: u16,
        chunk: &[u8],
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Vec<u8>, Action> {
        let Some(adapter) = attempt.adapter.as_mut() else { return Ok(chunk.to_vec()) };
        let out = adapter.translate_stream(chunk, end_of_stream);
        if adapter.stream_failed_before_output() && rt.is_failure(attempt.picked.member, 502) {
            rt.metrics.local_error(ErrorCode::InvalidUpstreamResponse);
            log::warn!(
                "switchboard[{}]: unreadable stream from {} before its first event",
                self.ex.request_id,
                rt.member_id(attempt.picked.member)
            );
            let now = self.now_ms();
            self.ex.finish(rt, &attempt, 502, None, now);
            return Err(self.fail_over(rt, now));
        }
        if let Some(watch) = self.ex.answer.stream_end.as_mut() {
            watch.feed(&out);
        }
        if out.is_empty() && !end_of_stream {
            self.ex.state = State::Priming { attempt, status, fed: body_size };
            return Err(Action::Pause);
        }
        let out = self.resume_feed(&out, end_of_stream).unwrap_or(out);
        if end_of_stream && self.resume_due() {
            self.ex.answer.note(&out);
            let out = match self.ex.answer.door.as_mut() {
                Some(door) => door.feed(&out, false),
                None => out,
            };
            return Err(self.continue_stream(rt, attempt, body_size, out));
        }
        if end_of_stream {
            self.ex.answer.note_adapter_usage(attempt.adapter.as_ref());
            self.ex.stream_ended(rt, &attempt, status);
        } else {
            self.ex.state = State::Relaying { attempt, status };
        }
        self.ex.answer.note(&out);
        Ok(match self.ex.answer.door.as_mut() {
            Some(door) => door.feed(&out, end_of_stream),
            None => out,
        })
    }
}
