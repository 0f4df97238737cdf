//! Timers for HTTP contexts, which proxy-wasm does not give them: a request
//! that needs one (a hedge deadline, a stream's idle limit) registers here,
//! and the root context's tick wakes it on its behalf
//! (`set_effective_context`, so its local replies and header changes apply
//! to its own stream). A call dispatched from the tick belongs to the root
//! context (the SDK routes an answer to the context that was running when
//! the call started); the root hands its answer to the request that asked.
//! Everything here is per VM (one per worker): no shared data.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::abi;
use super::filter::Filter;

pub type Handle = Weak<RefCell<Filter>>;

#[derive(Default)]
struct Registry {
    /// (deadline ms, request): woken once the deadline has passed.
    timers: Vec<(u64, Handle)>,
    /// (call token, request) for calls dispatched from the tick.
    calls: Vec<(u32, Handle)>,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// Wakes `me` (through [`Filter::on_timer`]) on the first tick after `deadline_ms`.
pub fn at(deadline_ms: u64, me: &Handle) {
    REGISTRY.with(|r| r.borrow_mut().timers.push((deadline_ms, me.clone())));
}

/// Hands the answer of call `token` (dispatched from the tick) to `me`.
pub fn own_call(token: u32, me: &Handle) {
    REGISTRY.with(|r| r.borrow_mut().calls.push((token, me.clone())));
}

/// Root tick: wakes every request whose deadline has passed; requests
/// already gone are dropped.
pub fn tick(root_id: u32, now: u64) {
    let due: Vec<Rc<RefCell<Filter>>> = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let mut due = Vec::new();
        r.timers.retain(|(deadline, me)| {
            if *deadline > now {
                return me.strong_count() > 0;
            }
            due.extend(me.upgrade());
            false
        });
        due
    });
    for filter in due {
        on_behalf_of(root_id, &filter, |f| f.on_timer(now));
    }
}

/// Root: the answer of a call dispatched from the tick goes to the request
/// that asked for it. Returns whether the token was one of these calls.
pub fn call_answered(root_id: u32, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) -> bool {
    let owner = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let at = r.calls.iter().position(|(t, _)| *t == token)?;
        Some(r.calls.swap_remove(at).1)
    });
    let Some(owner) = owner else { return false };
    // A request that ended meanwhile abandoned its call: the late answer is dropped.
    if let Some(filter) = owner.upgrade() {
        on_behalf_of(root_id, &filter, |f| f.on_http_call_response(token, num_headers, body_size, num_trailers));
    }
    true
}

fn on_behalf_of(root_id: u32, filter: &Rc<RefCell<Filter>>, run: impl FnOnce(&mut Filter)) {
    // Never nested in the filter's own callbacks (the VM runs one at a time), so the borrow is free.
    let Ok(mut f) = filter.try_borrow_mut() else { return };
    if let Err(s) = abi::set_effective_context(f.context_id()) {
        log::warn!("switchboard: set_effective_context failed (status {s})");
        return;
    }
    run(&mut f);
    drop(f);
    if let Err(s) = abi::set_effective_context(root_id) {
        log::warn!("switchboard: set_effective_context back to the root failed (status {s})");
    }
}

/// The HTTP context Envoy holds: the filter behind an `Rc`, so the root
/// context can reach it for timers and answers.
pub struct Shared(pub Rc<RefCell<Filter>>);

impl Shared {
    fn with<T>(&self, fallback: T, run: impl FnOnce(&mut Filter) -> T) -> T {
        match self.0.try_borrow_mut() {
            Ok(mut f) => run(&mut f),
            Err(_) => fallback,
        }
    }
}

impl Context for Shared {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        self.with((), |f| f.on_http_call_response(token_id, num_headers, body_size, num_trailers));
    }
}

impl HttpContext for Shared {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_headers(num_headers, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_response_headers(num_headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_response_body(body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.with((), HttpContext::on_log);
    }
}
