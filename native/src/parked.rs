//! Requests parked while Envoy replays them (streaming failover by internal
//! redirect, see `switchboard::exchange` `replay.rs`): the old stream's filter
//! leaves its exchange here under the redirect's token when it completes, the
//! replay's filter takes it back, with the client's headers as they came. Envoy does both on the worker thread of the
//! client's connection, one right after the other, so this is the worker's
//! own memory: nothing a client can write, and a token opens nothing outside
//! that moment.

use std::cell::RefCell;

use switchboard::exchange::{Exchange, Parking};

/// A request's exchange and its client's headers.
type Parked = (Exchange, Vec<(String, String)>);

thread_local! {
    static PARKED: RefCell<Parking<Parked>> = const { RefCell::new(Parking::new()) };
}

/// Parks a request being replayed, for the replay's filter; false when full.
pub fn park(token: String, ex: Exchange, client_headers: Vec<(String, String)>) -> bool {
    PARKED.with(|p| p.borrow_mut().park(token, (ex, client_headers)))
}

/// The request parked under `token`, once.
pub fn unpark(token: &str) -> Option<Parked> {
    PARKED.with(|p| p.borrow_mut().unpark(token))
}
