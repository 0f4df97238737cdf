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

use super::abi;

/// What the tick does to a request it wakes. The `Filter` implements it (in
/// `root.rs`): a trait, so that this module stays below the filter that
/// registers here.
pub trait Woken {
    fn context_id(&self) -> u32;
    /// A deadline registered with [`at`] has passed.
    fn on_timer(&mut self, now: u64);
    /// The answer of a call registered with [`own_call`].
    fn on_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, num_trailers: usize);
}

/// A request as the registry knows it: gone once Envoy drops it.
#[derive(Clone, Default)]
pub struct Handle(Option<Weak<RefCell<dyn Woken>>>);

impl Handle {
    /// A handle that wakes nothing, until the real one is set.
    pub fn new() -> Self {
        Handle(None)
    }

    pub fn of<W: Woken + 'static>(me: &Rc<RefCell<W>>) -> Self {
        let me: Weak<RefCell<W>> = Rc::downgrade(me);
        Handle(Some(me))
    }

    fn upgrade(&self) -> Option<Rc<RefCell<dyn Woken>>> {
        self.0.as_ref()?.upgrade()
    }

    fn alive(&self) -> bool {
        self.0.as_ref().is_some_and(|me| me.strong_count() > 0)
    }
}

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

/// Wakes `me` (through [`Woken::on_timer`]) on the first tick after `deadline_ms`.
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
    let due: Vec<Rc<RefCell<dyn Woken>>> = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let mut due = Vec::new();
        r.timers.retain(|(deadline, me)| {
            if *deadline > now {
                return me.alive();
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
        on_behalf_of(root_id, &filter, |f| f.on_call_response(token, num_headers, body_size, num_trailers));
    }
    true
}

fn on_behalf_of(root_id: u32, filter: &Rc<RefCell<dyn Woken>>, run: impl FnOnce(&mut dyn Woken)) {
    // Never nested in the filter's own callbacks (the VM runs one at a time), so the borrow is free.
    let Ok(mut f) = filter.try_borrow_mut() else { return };
    if let Err(s) = abi::set_effective_context(f.context_id()) {
        log::warn!("switchboard: set_effective_context failed (status {s})");
        return;
    }
    run(&mut *f);
    drop(f);
    if let Err(s) = abi::set_effective_context(root_id) {
        log::warn!("switchboard: set_effective_context back to the root failed (status {s})");
    }
}
