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
use crate::exchange::{Count, Idle, IdleWatch, Shared};
use crate::host::{abi, wake};

impl Filter {
    /// A stream starts being relayed: a pool with an idle limit watches it.
    pub(super) fn watch_stream_idle(&mut self, pool: usize, status: u16) {
        let stream = self.ex.shape.stream;
        let Some(watch) = self.rt.as_ref().and_then(|rt| IdleWatch::start(&rt.config, pool, stream, status, 0)) else {
            return;
        };
        let watch = IdleWatch { last_ms: self.now_ms(), ..watch };
        wake::at(watch.due_at(), &self.me);
        self.idle = Some(watch);
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
        let Some(idle) = self.idle else { return };
        if !matches!(self.ex.state, State::Relaying { .. }) {
            self.idle = None;
            return;
        }
        let silent = match idle.check(now) {
            Idle::WakeAt(at) => return wake::at(at, &self.me),
            Idle::Silent(ms) => ms,
        };
        self.idle = None;
        let (State::Relaying { attempt, .. }, Some(rt)) =
            (std::mem::replace(&mut self.ex.state, State::Passing), self.rt.clone())
        else {
            return;
        };
        log::warn!(
            "switchboard[{}]: stream from {} silent for {silent} ms (stream_idle_timeout_ms {}): \
             reset as the member's failure",
            self.ex.request_id,
            rt.member_id(attempt.picked.member),
            idle.limit_ms
        );
        rt.count(Count::StreamIdleTimeout(attempt.picked.member.pool));
        self.ex.cut_answer(&*rt, &attempt, now);
        if let Err(s) = abi::reset_response() {
            self.host_error("reset the response", s);
        }
    }
}
