//! Time in the dynamic module. Envoy's schedulers run an event on a given
//! thread as soon as they can, with no delay, so one thread of the module
//! keeps the deadlines and commits each event when it is due: a request's
//! wake-up (its hedge, its stream's idle limit) on the request's worker
//! through the stream's scheduler, and each configuration's tick (once a
//! second: gauges, probes) on Envoy's main thread through the configuration's
//! scheduler, as the wasm build's root context ticks.
//!
//! Nothing is armed on the plain path: a request gets a scheduler only when
//! its pool hedges or watches stream idleness, and the thread starts with the
//! first deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::abi::{self, FilterScheduler};
use crate::state::{lock, now_ms, Runtime};

/// The event of a request's wake-up and of a configuration's tick.
pub const WAKE_EVENT: u64 = 1;
pub const TICK_EVENT: u64 = 2;
/// A configuration ticks once a second (gauges, probes), or as often as fleet mode syncs.
pub const TICK_MS: u64 = 1_000;

/// A request's way back to its worker; `alive` goes false when Envoy destroys the request.
pub struct Waker {
    scheduler: FilterScheduler,
    alive: AtomicBool,
}

impl Waker {
    pub fn new(scheduler: FilterScheduler) -> Arc<Waker> {
        Arc::new(Waker { scheduler, alive: AtomicBool::new(true) })
    }

    /// The request is gone: its deadlines commit nothing more. Taken under the
    /// deadlines' lock, which a commit holds: once this returns no commit is under
    /// way (Envoy's scheduler briefly holds the stream while it commits, and the
    /// stream must never end on this module's thread).
    pub fn forget(&self) {
        let _commits = lock(&timers().0);
        self.alive.store(false, Ordering::Release);
    }
}

enum Due {
    Request(Arc<Waker>),
    Tick(Weak<Runtime>),
}

#[derive(Default)]
struct Deadlines {
    /// (deadline ms, sequence) of each entry of `due`, earliest first.
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    due: HashMap<u64, Due>,
    next: u64,
    started: bool,
}

fn timers() -> &'static (Mutex<Deadlines>, Condvar) {
    static TIMERS: OnceLock<(Mutex<Deadlines>, Condvar)> = OnceLock::new();
    TIMERS.get_or_init(|| (Mutex::new(Deadlines::default()), Condvar::new()))
}

fn add(at_ms: u64, due: Due) {
    let (deadlines, wake) = timers();
    let mut d = lock(deadlines);
    let earliest = d.heap.peek().is_none_or(|Reverse((first, _))| at_ms < *first);
    let seq = d.next;
    d.next = d.next.wrapping_add(1);
    d.heap.push(Reverse((at_ms, seq)));
    d.due.insert(seq, due);
    if !d.started {
        d.started = start();
    }
    if earliest {
        wake.notify_one();
    }
}

/// Wakes the request of `waker` on its worker at `at_ms` (`on_http_filter_scheduled`).
pub fn wake_request(at_ms: u64, waker: &Arc<Waker>) {
    add(at_ms, Due::Request(waker.clone()));
}

/// Ticks the configuration on Envoy's main thread every `tick_ms` while it lives.
pub fn tick(rt: &Arc<Runtime>) {
    add(now_ms().saturating_add(rt.tick_ms), Due::Tick(Arc::downgrade(rt)));
}

/// Envoy destroys the configuration: its ticks end, and no commit is under way
/// once this returns (as [`Waker::forget`] for a request).
pub fn stop_ticks(rt: &Runtime) {
    let _commits = lock(&timers().0);
    rt.ticking.store(false, Ordering::Release);
}

/// Starts the thread that commits the due events; false if it could not.
fn start() -> bool {
    if !abi::pin_module() {
        log::warn!("switchboard: could not pin libswitchboard_native.so in memory: timers are off");
        return false;
    }
    let started = std::thread::Builder::new().name("switchboard-timers".to_string()).spawn(|| {
        // A panic here would end the timers, never Envoy: caught and logged.
        if std::panic::catch_unwind(run).is_err() {
            log::error!("switchboard: the timer thread panicked; hedges, idle limits and ticks stop");
        }
    });
    if let Err(e) = &started {
        log::error!("switchboard: cannot start the timer thread ({e}): hedges, idle limits and ticks are off");
    }
    started.is_ok()
}

fn run() {
    let (deadlines, wake) = timers();
    let mut d = lock(deadlines);
    loop {
        let now = now_ms();
        match d.heap.peek().copied() {
            None => d = wake.wait(d).unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(Reverse((at, _))) if at > now => {
                let wait = Duration::from_millis(at - now);
                d = wake.wait_timeout(d, wait).map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
            Some(Reverse((_, seq))) => {
                d.heap.pop();
                match d.due.remove(&seq) {
                    Some(Due::Request(waker)) if waker.alive.load(Ordering::Acquire) => {
                        waker.scheduler.commit(WAKE_EVENT);
                    }
                    Some(Due::Tick(rt)) => {
                        // The configuration is gone once nothing holds it: its ticks end.
                        if let Some(alive) = rt.upgrade().filter(|rt| rt.ticking.load(Ordering::Acquire)) {
                            if let Some(scheduler) = &alive.scheduler {
                                scheduler.commit(TICK_EVENT);
                            }
                            let seq = d.next;
                            d.next = d.next.wrapping_add(1);
                            d.heap.push(Reverse((now.saturating_add(alive.tick_ms), seq)));
                            d.due.insert(seq, Due::Tick(rt));
                            // The last holder may drop the configuration here: not under the lock.
                            drop(d);
                            drop(alive);
                            d = lock(deadlines);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
