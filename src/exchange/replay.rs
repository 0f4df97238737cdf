//! Streaming failover by internal redirect (the words it uses are
//! `routing::redirect`; the upstream half is a few lines of Lua in the
//! router's `upstream_http_filters`, `envoy/render.py`):
//!
//! 1. [`Exchange::try_tag`]: a routed stream tells the upstream filter which
//!    statuses fail over and where to replay it, with a fresh token.
//! 2. The attempt fails before its first byte: the upstream filter answers
//!    the router with a 307, Envoy recreates the stream, and the host parks
//!    the request's exchange under the token.
//! 3. The replay takes it back and records the failed attempt
//!    ([`Exchange::replayed`]), then, once the replayed body is in, points the
//!    request at the next member ([`Exchange::start_next`]); that member's
//!    answer streams to the client directly.

use crate::api::{ApiError, ErrorCode};
use crate::config::MemberRef;
use crate::routing::redirect;
use crate::routing::router::HeaderLookup;

use super::{Exchange, Shared, State, Step};

impl Exchange {
    /// The try header of the routed attempt of a stream to `member`, when
    /// the configuration says the upstream filter runs, for a request whose
    /// URL its `headers` give (`:scheme`, `:authority`, `:path`); its token
    /// is kept for the replay.
    pub fn try_tag(&mut self, sh: &dyn Shared, member: MemberRef, headers: &impl HeaderLookup) -> Option<String> {
        let config = sh.config();
        if !config.stream_failover || !self.shape.stream {
            return None;
        }
        let retry_on = config.pool_at(member.pool)?.retry.retry_on.as_slice();
        let token = redirect::new_token()?;
        let url = redirect::location(
            headers.header(":scheme").unwrap_or("http"),
            headers.header(":authority").unwrap_or_default(),
            headers.header(":path").unwrap_or("/"),
            &token,
        );
        self.try_token = Some(token);
        Some(redirect::try_header(retry_on, &url))
    }

    /// Whether the request is to be parked for Envoy's replay (its routed
    /// attempt was tagged and Envoy followed the redirect: `details`, the
    /// response code details, read only when it may be); its token.
    pub fn replaying(&mut self, details: impl FnOnce() -> Option<Vec<u8>>) -> Option<String> {
        if self.try_token.is_none() || !matches!(self.state, State::Routed(_)) {
            return None;
        }
        if details().as_deref() != Some(b"internal_redirect".as_slice()) {
            return None;
        }
        self.try_token.take()
    }

    /// The replay of this parked request came, at `path` (its failure in the
    /// redirect's parameters): the failed attempt is recorded once (health,
    /// metrics, the plan), and the request waits for its body (`headers`:
    /// the replay's header map). The parked request's timers died with its context.
    pub fn replayed(&mut self, sh: &dyn Shared, headers: Vec<u8>, path: &str, end_of_stream: bool) -> Step {
        self.hedge = None;
        self.idle = None;
        let (status, retry_after) = redirect::failure_in(path);
        if let State::Routed(attempt) = std::mem::replace(&mut self.state, State::Passing) {
            let now = sh.now_ms();
            self.finish(sh, &attempt, status, retry_after.as_deref(), now);
            log::info!(
                "switchboard[{}]: {} answered {status}; the request is replayed for the next member",
                self.request_id,
                sh.member_id(attempt.picked.member)
            );
        }
        if end_of_stream {
            return self.error_reply(sh, &ApiError::internal("The replayed request lost its body."));
        }
        self.state = State::Replayed { headers };
        Step::Pause
    }
}

/// A request carrying a failover token no parked request has: a client's forgery.
pub fn forged_token() -> ApiError {
    ApiError::invalid_request(
        ErrorCode::InvalidValue,
        format!("`{}` is the gateway's own failover parameter.", redirect::TOKEN_PARAM),
    )
    .with_param(redirect::TOKEN_PARAM)
}

/// Requests parked while Envoy replays them (step 2 above), by token: each
/// host keeps one per worker thread, where Envoy parks and replays a request
/// one right after the other. Bounded, so a replay that never comes cannot
/// grow it without end.
#[derive(Debug)]
pub struct Parking<T> {
    parked: Vec<(String, T)>,
}

impl<T> Parking<T> {
    /// Parked requests at most (a replay finds its own at once; this only bounds a leak).
    const MAX: usize = 1_024;

    pub const fn new() -> Parking<T> {
        Parking { parked: Vec::new() }
    }

    /// Parks `request` under `token`; false when full.
    pub fn park(&mut self, token: String, request: T) -> bool {
        if self.parked.len() >= Self::MAX {
            return false;
        }
        self.parked.push((token, request));
        true
    }

    /// The request parked under `token`, once.
    pub fn unpark(&mut self, token: &str) -> Option<T> {
        let at = self.parked.iter().position(|(k, _)| k == token)?;
        Some(self.parked.swap_remove(at).1)
    }
}

impl<T> Default for Parking<T> {
    fn default() -> Self {
        Parking::new()
    }
}

#[cfg(test)]
mod parking_tests {
    use super::Parking;

    #[test]
    fn a_parked_request_is_taken_back_once_and_parking_is_bounded() {
        let mut lot = Parking::new();
        assert!(lot.park("a".into(), 1) && lot.park("b".into(), 2));
        assert_eq!((lot.unpark("b"), lot.unpark("b"), lot.unpark("a")), (Some(2), None, Some(1)));
        for i in 0..Parking::<u32>::MAX {
            assert!(lot.park(i.to_string(), 0));
        }
        assert!(!lot.park("one more".into(), 0), "full: the request is not parked");
    }
}
