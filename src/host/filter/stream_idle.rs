//! Stream idle timeout (`stream_idle_timeout_ms`): a stream being relayed
//! that stays silent that long after its first byte is its member's
//! failure, and the client's stream is reset. proxy-wasm in Envoy 1.40 lets
//! a filter add response data only inside a body callback, and a silent
//! upstream gives none: the error event and `data: [DONE]` cannot be
//! written, so the client sees its stream broken (the HTTP/1.1 connection
//! closed before the last chunk, an HTTP/2 stream reset) instead of
//! waiting for the overall timeout. Over HTTP/1.1 Envoy closes the
//! connection after its `delayed_close_timeout` (1 s by default).

use super::{Filter, State};
use crate::host::{abi, wake};

/// A relayed stream's last sign of life.
pub(super) struct IdleWatch {
    limit_ms: u64,
    last_ms: u64,
}

impl Filter {
    /// A stream starts being relayed: a pool with an idle limit watches it.
    pub(super) fn watch_stream_idle(&mut self, pool: usize, status: u16) {
        let Some(limit_ms) = self.rt.as_ref().and_then(|rt| rt.config.pool_at(pool)?.retry.stream_idle_timeout_ms)
        else {
            return;
        };
        if !self.shape.stream || status >= 300 {
            return;
        }
        let now = self.now_ms();
        self.idle = Some(IdleWatch { limit_ms, last_ms: now });
        wake::at(now.saturating_add(limit_ms), &self.me);
    }

    /// A body chunk came: the stream is alive.
    pub(super) fn stream_alive(&mut self) {
        if self.idle.is_some() {
            let now = self.now_ms();
            if let Some(idle) = self.idle.as_mut() {
                idle.last_ms = now;
            }
        }
    }

    /// Woken by the root's tick: silent past the limit ends the stream,
    /// otherwise the watch goes on from its last chunk.
    pub(super) fn stream_idle_due(&mut self, now: u64) {
        let Some(IdleWatch { limit_ms, last_ms }) = self.idle else { return };
        if !matches!(self.state, State::Relaying { .. }) {
            self.idle = None;
            return;
        }
        if now.saturating_sub(last_ms) < limit_ms {
            wake::at(last_ms.saturating_add(limit_ms), &self.me);
            return;
        }
        self.idle = None;
        let (State::Relaying { attempt, .. }, Some(rt)) =
            (std::mem::replace(&mut self.state, State::Passing), self.rt.clone())
        else {
            return;
        };
        log::warn!(
            "switchboard[{}]: stream from {} silent for {} ms (stream_idle_timeout_ms {limit_ms}): \
             reset as the member's failure",
            self.request_id,
            rt.member_id(attempt.picked.member),
            now.saturating_sub(last_ms)
        );
        rt.metrics.inc(rt.metrics.pool(attempt.picked.member.pool).and_then(|p| p.stream_idle_timeouts));
        self.cut_answer(&rt, &attempt, now);
        if let Err(s) = abi::reset_response() {
            self.host_error("reset the response", s);
        }
    }
}
