//! The decisions a request's timers make (the host wakes the request, see
//! `host::wake`): a hedge at its pool's `hedge_after_ms`, and the idle
//! limit of a relayed stream (`stream_idle_timeout_ms`).

use crate::config::{Config, MemberRef};

use super::{Attempt, Exchange, Picked, Shared};

/// A hedging request's second attempt.
pub enum Hedge {
    /// Waiting for the deadline.
    Armed,
    /// The second member's call is in flight.
    Sent { attempt: Box<Attempt>, call: u32 },
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
