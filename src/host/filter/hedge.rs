//! Hedging (`hedge_after_ms`): a routed attempt with no response headers by
//! then gets a second member alongside, dispatched from the root's tick
//! (see `wake`). The first good answer wins: the hedge's answer replaces
//! the routed one (a local reply: Envoy resets the routed attempt), or the
//! routed answer's headers come first and the hedge is abandoned. An
//! abandoned attempt is nobody's failure; a failed hedge is its member's
//! failure while the routed attempt goes on. A hedge's answer is a whole
//! body (HTTP callouts are buffered): a hedged stream that the hedge wins
//! reaches the client in one piece.

use proxy_wasm::types::Action;

use super::{Filter, State};
use crate::exchange::{hedge_at, Count, Hedge, Shared};
use crate::host::runtime::Runtime;
use crate::host::{abi, wake};

impl Filter {
    /// After the request was routed to `pool`: a hedging pool asks to be woken at its deadline.
    pub(super) fn arm_hedge(&mut self, rt: &Runtime, pool: usize, now: u64) {
        let Some(at) = hedge_at(&rt.config, pool, now) else { return };
        self.hedge = Some(Hedge::Armed);
        wake::at(at, &self.me);
    }

    /// Woken by the root's tick: a routed attempt still without headers gets
    /// its hedge (another member the plan allows, as a failover would pick).
    pub(super) fn hedge_due(&mut self, now: u64) {
        let Some(rt) = self.rt.clone() else { return };
        let (State::Routed(routed), Some(Hedge::Armed)) = (&self.ex.state, &self.hedge) else { return };
        let routed = routed.picked.member;
        self.hedge = None;
        let Some(picked) = self.ex.hedge_pick(&*rt, routed, now) else { return };
        let attempt = self.ex.begin(&*rt, picked, now);
        match self.dispatch(&rt, picked.member, now) {
            Ok(call) => {
                wake::own_call(call, &self.me);
                rt.count(Count::Hedged(routed.pool));
                log::debug!(
                    "switchboard[{}]: no answer from {} yet: hedging with {}",
                    self.ex.request_id,
                    rt.member_id(routed),
                    rt.member_id(picked.member)
                );
                self.hedge = Some(Hedge::Sent { attempt: Box::new(attempt), call });
            }
            Err(e) => {
                log::warn!("switchboard[{}]: hedge call failed to start: {}", self.ex.request_id, e.message);
                self.ex.abandon(&*rt, &attempt);
            }
        }
    }

    /// The routed attempt answered: a hedge not yet sent is not needed, one
    /// in flight is abandoned, unless the routed attempt failed: then the
    /// hedge is already the next attempt and the response waits for it
    /// (`Some(Pause)`).
    pub(super) fn settle_hedge(&mut self, rt: &Runtime, routed_failed: bool) -> Option<Action> {
        match self.hedge.take()? {
            Hedge::Sent { attempt, call } if routed_failed => {
                self.ex.state = State::Failover { attempt: *attempt, call };
                Some(Action::Pause)
            }
            Hedge::Sent { attempt, .. } => {
                self.ex.abandon_hedged(rt, &attempt);
                None
            }
            Hedge::Armed => None,
        }
    }

    /// An answer to call `token`: when it is the hedge's, a good one wins
    /// (the routed attempt is abandoned and the answer goes out as a failover
    /// answer does: returns true); a failed one is its member's failure and
    /// the routed attempt goes on (returns false). Other calls: true.
    pub(super) fn hedge_answered(&mut self, token: u32, num_headers: usize) -> bool {
        let Some(Hedge::Sent { call, .. }) = &self.hedge else { return true };
        let Some(rt) = self.rt.clone() else { return true };
        if *call != token {
            return true;
        }
        let Some(Hedge::Sent { attempt, call }) = self.hedge.take() else { return true };
        let header = |name| abi::header_str(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, name).ok().flatten();
        let status = if num_headers == 0 { 0 } else { header(":status").and_then(|s| s.parse().ok()).unwrap_or(0) };
        if rt.is_failure(attempt.picked.member, status) {
            let now = self.now_ms();
            let retry_after = header("retry-after");
            self.ex.finish(&*rt, &attempt, status, retry_after.as_deref(), now);
            return false;
        }
        let hedged = attempt.picked.member;
        match std::mem::replace(&mut self.ex.state, State::Failover { attempt: *attempt, call }) {
            State::Routed(routed) => {
                self.ex.abandon_hedged(&*rt, &routed);
                rt.count(Count::HedgeWin(routed.picked.member.pool));
                log::debug!(
                    "switchboard[{}]: hedge {} answered before {}",
                    self.ex.request_id,
                    rt.member_id(hedged),
                    rt.member_id(routed.picked.member)
                );
            }
            other => self.ex.state = other,
        }
        true
    }
}
