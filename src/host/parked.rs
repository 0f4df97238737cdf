//! Requests parked while Envoy replays them (streaming failover by internal
//! redirect, see `filter/replay.rs`): the old filter instance leaves the
//! request's state here under its token, the replay's instance takes it back.
//! Envoy does both on the worker thread of the client's connection, one right
//! after the other, so this is the VM's own memory: no shared data, nothing a
//! client can write, and a token opens nothing outside that moment.

use std::cell::RefCell;

use super::filter::Filter;

/// Parked requests at most (a replay finds its own at once; this only bounds a leak).
const MAX_PARKED: usize = 1_024;

thread_local! {
    static PARKED: RefCell<Vec<(String, Box<Filter>)>> = const { RefCell::new(Vec::new()) };
}

/// Parks a request being replayed, for its next filter instance; false when full.
pub fn park(token: String, filter: Box<Filter>) -> bool {
    PARKED.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= MAX_PARKED {
            return false;
        }
        p.push((token, filter));
        true
    })
}

/// The request parked under `token`, once.
pub fn unpark(token: &str) -> Option<Box<Filter>> {
    PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let at = p.iter().position(|(k, _)| k == token)?;
        Some(p.swap_remove(at).1)
    })
}
