//! Requests parked while Envoy replays them (streaming failover by internal
//! redirect, see `exchange/replay.rs`): the old filter instance leaves the
//! request's state here under its token, the replay's instance takes it back.
//! Envoy does both on the worker thread of the client's connection, one right
//! after the other, so this is the VM's own memory: no shared data, nothing a
//! client can write, and a token opens nothing outside that moment.

use std::any::Any;
use std::cell::RefCell;

use crate::exchange::Parking;

/// A request's filter, as the filter parks it (this module, below the filter, knows nothing of it).
pub type Parked = Box<dyn Any>;

thread_local! {
    static PARKED: RefCell<Parking<Parked>> = const { RefCell::new(Parking::new()) };
}

/// Parks a request being replayed, for its next filter instance; false when full.
pub fn park(token: String, filter: Parked) -> bool {
    PARKED.with(|p| p.borrow_mut().park(token, filter))
}

/// The request parked under `token`, once.
pub fn unpark(token: &str) -> Option<Parked> {
    PARKED.with(|p| p.borrow_mut().unpark(token))
}
