//! The decisions a request's timers make (the host wakes the request, see
//! `host::wake`): a hedge at its pool's `hedge_after_ms`, and the idle
//! limit of a relayed stream (`stream_idle_timeout_ms`).

//!
//! Hedging (`hedge_after_ms`): a routed attempt with no response headers by
//! then gets a second member alongside, sent as a call of its own. The first
//! good answer wins: the hedge's answer replaces the routed one (a local
//! reply: Envoy resets the routed attempt), or the routed answer's headers
//! come first and the hedge is abandoned. An abandoned attempt is nobody's
//! failure; a failed hedge is its member's failure while the routed attempt
//! goes on. A hedge's answer is a whole body (HTTP callouts are buffered): a
//! hedged stream that the hedge wins reaches the client in one piece.
//!
//! The idle limit (`stream_idle_timeout_ms`): a stream being relayed that
//! stays silent that long after its first byte is its member's failure, and
//! the client's stream is reset (proxy-wasm lets a filter add response data
//! only inside a body callback, and a silent upstream gives none).

use crate::config::{Config, MemberRef};

use super::{Attempt, Calls, Count, Exchange, Picked, Shared, State};

/// What a woken request's timer asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Nothing (the timer is not due, or no longer matters).
    Nothing,
    /// Wake the request again at this time.
    WakeAt(u64),
    /// A hedge call was sent: its answer is this request's.
    HedgeSent(u64),
    /// The relayed stream fell silent past its limit: reset it.
    Reset,
}

/// A hedging request's second attempt.
pub enum Hedge {
    /// Waiting for the deadline.
    Armed,
    /// The second member's call is in flight.
    Sent { attempt: Box<Attempt>, call: u64 },
}

/// When a request routed to `pool` at `now` is hedged (`None`: its pool does not hedge).
pub fn hedge_at(config: &Config, pool: usize, now: u64) -> Option<u64> {
    let after = config.pool_at(pool)?.retry.hedge_after_ms?;
    Some(now.saturating_add(after))
}

impl Exchange {
    /// The member a hedge goes to at `now`: another one the plan allows, as a
    /// failover would pick (the routed member counts as tried for this pick
    /// only; its own record comes when it ends). `None`: none, or past the deadline.
    pub fn hedge_pick(&mut self, sh: &dyn Shared, routed: MemberRef, now: u64) -> Option<Picked> {
        let plan = self.plan.as_mut().filter(|p| now < p.deadline_ms)?;
        plan.record_attempt(sh.config(), routed, 0);
        let picked = sh.pick(plan, now);
        plan.attempts.pop();
        picked
    }

    /// The request was routed to `pool` at `now`: when a hedging pool's
    /// request is to be woken for its hedge.
    pub fn arm_hedge(&mut self, sh: &dyn Shared, pool: usize, now: u64) -> Option<u64> {
        let at = hedge_at(sh.config(), pool, now)?;
        self.hedge = Some(Hedge::Armed);
        Some(at)
    }

    /// Woken at `now`: a routed attempt still without headers gets its hedge
    /// (another member the plan allows, as a failover would pick), then a
    /// stream being relayed is looked at for its idle limit.
    pub fn on_timer(&mut self, sh: &dyn Shared, now: u64, calls: &mut dyn Calls) -> Timer {
        match self.hedge_due(sh, now, calls) {
            Timer::Nothing => self.idle_due(sh, now),
            sent => sent,
        }
    }

    fn hedge_due(&mut self, sh: &dyn Shared, now: u64, calls: &mut dyn Calls) -> Timer {
        let (State::Routed(routed), Some(Hedge::Armed)) = (&self.state, &self.hedge) else { return Timer::Nothing };
        let routed = routed.picked.member;
        self.hedge = None;
        let Some(picked) = self.hedge_pick(sh, routed, now) else { return Timer::Nothing };
        let attempt = self.begin(sh, picked, now);
        let stream = self.shape.stream;
        let sent = self
            .upstream_for(sh, picked.member, now)
            .and_then(|upstream| calls.send(self, picked.member, &upstream, stream, now));
        match sent {
            Ok(call) => {
                sh.count(Count::Hedged(routed.pool));
                log::debug!(
                    "switchboard[{}]: no answer from {} yet: hedging with {}",
                    self.request_id,
                    sh.member_id(routed),
                    sh.member_id(picked.member)
                );
                self.hedge = Some(Hedge::Sent { attempt: Box::new(attempt), call });
                Timer::HedgeSent(call)
            }
            Err(e) => {
                log::warn!("switchboard[{}]: hedge call failed to start: {}", self.request_id, e.message);
                self.abandon(sh, &attempt);
                Timer::Nothing
            }
        }
    }

    /// The routed attempt answered: a hedge not yet sent is not needed, one
    /// in flight is abandoned, unless the routed attempt failed: then the
    /// hedge is already the next attempt and the response waits for it (true).
    pub fn settle_hedge(&mut self, sh: &dyn Shared, routed_failed: bool) -> bool {
        match self.hedge.take() {
            Some(Hedge::Sent { attempt, call }) if routed_failed => {
                self.state = State::Failover { attempt: *attempt, call };
                true
            }
            Some(Hedge::Sent { attempt, .. }) => {
                self.abandon_hedged(sh, &attempt);
                false
            }
            Some(Hedge::Armed) | None => false,
        }
    }

    /// An answer of `status` to call `call`: when it is the hedge's, a good
    /// one wins (the routed attempt is abandoned and the answer goes out as
    /// a failover answer does: true); a failed one is its member's failure
    /// and the routed attempt goes on (false). Other calls: true.
    pub fn hedge_answered(&mut self, sh: &dyn Shared, call: u64, status: u16, retry_after: Option<&str>) -> bool {
        match &self.hedge {
            Some(Hedge::Sent { call: c, .. }) if *c == call => {}
            _ => return true,
        }
        let Some(Hedge::Sent { attempt, call }) = self.hedge.take() else { return true };
        if sh.is_failure(attempt.picked.member, status) {
            let now = sh.now_ms();
            self.finish(sh, &attempt, status, retry_after, now);
            return false;
        }
        let hedged = attempt.picked.member;
        match std::mem::replace(&mut self.state, State::Failover { attempt: *attempt, call }) {
            State::Routed(routed) => {
                self.abandon_hedged(sh, &routed);
                sh.count(Count::HedgeWin(routed.picked.member.pool));
                log::debug!(
                    "switchboard[{}]: hedge {} answered before {}",
                    self.request_id,
                    sh.member_id(hedged),
                    sh.member_id(routed.picked.member)
                );
            }
            other => self.state = other,
        }
        true
    }

    /// A successful answer of `status` starts being relayed from `pool`: a
    /// stream of a pool with an idle limit is watched (when to wake it).
    pub fn watch_idle(&mut self, sh: &dyn Shared, pool: usize, status: u16) -> Option<u64> {
        let watch = IdleWatch::start(sh.config(), pool, self.shape.stream, status, 0)?;
        let watch = IdleWatch { last_ms: sh.now_ms(), ..watch };
        self.idle = Some(watch);
        Some(watch.due_at())
    }

    /// A body chunk came: the stream is alive.
    pub fn alive(&mut self, sh: &dyn Shared) {
        if let Some(idle) = self.idle.as_mut() {
            idle.last_ms = sh.now_ms();
        }
    }

    /// Woken at `now`: silent past the limit ends the stream as its member's
    /// failure, otherwise the watch goes on from its last chunk.
    fn idle_due(&mut self, sh: &dyn Shared, now: u64) -> Timer {
        let Some(idle) = self.idle else { return Timer::Nothing };
        if !matches!(self.state, State::Relaying { .. }) {
            self.idle = None;
            return Timer::Nothing;
        }
        let silent = match idle.check(now) {
            Idle::WakeAt(at) => return Timer::WakeAt(at),
            Idle::Silent(ms) => ms,
        };
        self.idle = None;
        let State::Relaying { attempt, .. } = std::mem::replace(&mut self.state, State::Passing) else {
            return Timer::Nothing;
        };
        log::warn!(
            "switchboard[{}]: stream from {} silent for {silent} ms (stream_idle_timeout_ms {}): \
             reset as the member's failure",
            self.request_id,
            sh.member_id(attempt.picked.member),
            idle.limit_ms
        );
        sh.count(Count::StreamIdleTimeout(attempt.picked.member.pool));
        self.cut_answer(sh, &attempt, now);
        Timer::Reset
    }

    /// The losing attempt of a hedged request: released, and listed in the
    /// plan as unanswered (`x-switchboard-attempts` counts it) without
    /// touching its member's health.
    pub fn abandon_hedged(&mut self, sh: &dyn Shared, attempt: &Attempt) {
        self.unjudged(sh, attempt, 0);
        if let Some(plan) = self.plan.as_mut() {
            plan.record_attempt(sh.config(), attempt.picked.member, 0);
        }
    }
}

/// A relayed stream's last sign of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleWatch {
    pub limit_ms: u64,
    pub last_ms: u64,
}

/// What a stream's idle watch says when woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Alive: look again at this time.
    WakeAt(u64),
    /// Silent past the limit for this long: the member's failure.
    Silent(u64),
}

impl IdleWatch {
    /// A successful stream of `pool` starts being relayed at `now`: watched
    /// when the pool has an idle limit.
    pub fn start(config: &Config, pool: usize, stream: bool, status: u16, now: u64) -> Option<IdleWatch> {
        let limit_ms = config.pool_at(pool)?.retry.stream_idle_timeout_ms?;
        (stream && status < 300).then_some(IdleWatch { limit_ms, last_ms: now })
    }

    /// When it is first due.
    pub fn due_at(&self) -> u64 {
        self.last_ms.saturating_add(self.limit_ms)
    }

    /// Woken at `now`.
    pub fn check(&self, now: u64) -> Idle {
        let silent = now.saturating_sub(self.last_ms);
        if silent < self.limit_ms {
            Idle::WakeAt(self.due_at())
        } else {
            Idle::Silent(silent)
        }
    }
}
