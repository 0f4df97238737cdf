//! The upstream half of streaming failover: the same `.wasm` loaded a second
//! time as an upstream HTTP filter of the router (root id
//! [`UPSTREAM_ROOT_ID`]), in the same VM as the downstream filter.
//!
//! A routed stream is tagged with a token ([`register`]); when its attempt
//! answers a status its pool fails over on, this filter turns the answer
//! into a 307 to the token's location, so Envoy's internal redirect replays
//! the request through the downstream filter, which routes the next member
//! (see `filter/replay.rs`). Both halves run on the worker thread of the
//! client's connection, so the registry is the VM's own memory: nothing a
//! client sends can reach it except a token, which only opens a parked
//! request during the replay itself.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::config::MemberRef;
use crate::routing::redirect::{TRY_HEADER, UNTAGGED};

use super::abi;
use super::filter::Filter;
use super::runtime::Runtime;

/// `root_id` of the upstream filter's plugin configuration.
pub const UPSTREAM_ROOT_ID: &str = "switchboard_upstream";
/// Tries waiting for their answer, at most (beyond that streams fail over buffered).
const MAX_TRIES: usize = 4_096;

/// The failed answer the upstream filter turned into a redirect.
#[derive(Debug, Clone)]
pub struct Failed {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// Slots by token.
type Tries = Vec<(String, Slot)>;

enum Slot {
    /// A routed attempt, until its answer's headers (or its request's end).
    Tagged { rt: Rc<Runtime>, member: MemberRef, location: String, failed: Option<Failed> },
    /// The request's state, parked by its old filter instance while Envoy replays it.
    Parked(Box<Filter>),
}

thread_local! {
    static PRESENT: Cell<bool> = const { Cell::new(false) };
    /// Tries in flight on this worker, by token (a few, so a list: a map would cost the `.wasm` 4 KB).
    static TRIES: RefCell<Tries> = const { RefCell::new(Vec::new()) };
}

/// The upstream filter was configured in this VM.
pub fn mark_present() {
    PRESENT.with(|p| p.set(true));
}

/// Whether streams can fail over by redirect here (else the buffered call path).
pub fn present() -> bool {
    PRESENT.with(Cell::get)
}

/// Every use of the registry goes through here: one closure type keeps the `.wasm` small.
fn tries(f: &mut dyn FnMut(&mut Tries)) {
    TRIES.with(|t| f(&mut t.borrow_mut()));
}

fn put(token: String, slot: Slot) -> bool {
    let mut entry = Some((token, slot));
    tries(&mut |t| {
        if t.len() < MAX_TRIES {
            t.extend(entry.take());
        }
    });
    entry.is_none()
}

/// Removes the slot of `token` if it is `parked` (else any).
fn take(token: &str, parked: bool) -> Option<Slot> {
    let mut out = None;
    tries(&mut |t| {
        let at = t.iter().position(|(k, s)| k == token && (!parked || matches!(s, Slot::Parked(_))));
        out = at.map(|at| t.swap_remove(at).1);
    });
    out
}

/// Tags an attempt of `member` under `token`; false when the registry is full.
pub fn register(token: String, rt: Rc<Runtime>, member: MemberRef, location: String) -> bool {
    put(token, Slot::Tagged { rt, member, location, failed: None })
}

/// Ends a tagged attempt: what the upstream filter turned into a redirect, if anything.
pub fn settle(token: &str) -> Option<Failed> {
    match take(token, false) {
        Some(Slot::Tagged { failed, .. }) => failed,
        _ => None,
    }
}

/// Parks a request being replayed, for its next filter instance.
pub fn park(token: String, filter: Box<Filter>) {
    put(token, Slot::Parked(filter));
}

/// The parked request of `token`; anything else (unknown, or an attempt
/// still in flight) is not handed out.
pub fn unpark(token: &str) -> Option<Box<Filter>> {
    match take(token, true) {
        Some(Slot::Parked(filter)) => Some(filter),
        _ => None,
    }
}

/// The upstream filter's side of one try, run by a `Filter` in
/// `State::UpstreamTry` (a second `HttpContext` type would add 12 KB of SDK
/// default methods to the `.wasm`). Request headers: takes the token off
/// the request, so it never reaches the provider.
pub fn on_try_request_headers() -> Option<String> {
    let token = abi::header_str(abi::MAP_REQUEST_HEADERS, TRY_HEADER).ok().flatten()?;
    if let Err(s) = abi::remove_header(abi::MAP_REQUEST_HEADERS, TRY_HEADER) {
        log::warn!("switchboard: upstream filter cannot remove {TRY_HEADER} (status {s})");
    }
    Some(token)
}

/// Response headers of a try: a failure its pool fails over on becomes a
/// 307 to the token's location, which Envoy's router follows internally.
pub fn on_try_response_headers(token: Option<String>) {
    const RESP: u32 = abi::MAP_RESPONSE_HEADERS;
    // Requests of other routes are left alone.
    let Some(token) = token else { return };
    let status = abi::header_str(RESP, ":status").ok().flatten().and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    // Only this filter's redirects are replayed: a provider's own is passed on, not followed.
    if (300..400).contains(&status) {
        let _ = abi::remove_header(RESP, "location");
    }
    if token == UNTAGGED {
        return;
    }
    let mut location = None;
    tries(&mut |t| {
        let Some((_, Slot::Tagged { rt, member, location: to, failed })) = t.iter_mut().find(|(k, _)| *k == token)
        else {
            return;
        };
        if failed.is_none() && rt.is_failure(*member, status) {
            let retry_after = abi::header_str(RESP, "retry-after").ok().flatten();
            *failed = Some(Failed { status, retry_after });
            location = Some(to.clone());
        }
    });
    if let Some(location) = location {
        for (name, value) in [(":status", "307"), ("location", location.as_str())] {
            if let Err(s) = abi::set_header(RESP, name, value) {
                log::warn!("switchboard: upstream filter cannot set {name} (status {s})");
            }
        }
    }
}
