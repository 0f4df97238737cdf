//! Fleet mode in the proxy-wasm host: `exchange::fleet`'s steps over
//! Envoy's shared data and `dispatch_http_call` to the configured cluster.
//! What a request tells the fleet once it is over is sent on behalf of the
//! root context, so the call outlives the request; the root context polls.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::config::SharedState;
use crate::exchange::fleet::{
    self, FleetCalls, FleetEvent, Sync, STAT_DENIED, STAT_LATENCY_MS, STAT_LOCAL, STAT_SHARED,
};

use super::abi;
use super::runtime::Runtime;

/// The stats of fleet mode, defined on first use (fleet mode only).
#[derive(Clone, Copy)]
struct Stats {
    shared: Option<u32>,
    local: Option<u32>,
    denied: Option<u32>,
    latency_ms: Option<u32>,
}

thread_local! {
    static ROOT_ID: Cell<u32> = const { Cell::new(0) };
    static STATS: Cell<Option<Stats>> = const { Cell::new(None) };
    /// This VM's poll of the fleet.
    static SYNC: RefCell<Sync> = RefCell::new(Sync::default());
}

/// The root context of this VM: end-of-request calls are made on its behalf.
pub fn set_root(id: u32) {
    ROOT_ID.with(|r| r.set(id));
}

fn stats() -> Stats {
    STATS.with(|s| {
        s.get().unwrap_or_else(|| {
            let define = |kind, name: &str| abi::define_metric(kind, name).ok();
            let stats = Stats {
                shared: define(abi::METRIC_COUNTER, STAT_SHARED),
                local: define(abi::METRIC_COUNTER, STAT_LOCAL),
                denied: define(abi::METRIC_COUNTER, STAT_DENIED),
                latency_ms: define(abi::METRIC_HISTOGRAM, STAT_LATENCY_MS),
            };
            s.set(Some(stats));
            stats
        })
    })
}

/// Calls through `dispatch_http_call`, answered in `on_http_call_response`.
pub struct Calls;

impl FleetCalls for Calls {
    fn call(&mut self, shared: &SharedState, path: &str, timeout_ms: u64) -> Result<u64, u32> {
        let headers = fleet::call_headers(path).to_vec();
        proxy_wasm::hostcalls::dispatch_http_call(
            &shared.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map(u64::from)
        .map_err(|s| s as u32)
    }

    fn note(&self, event: FleetEvent) {
        let stats = stats();
        let _ = match event {
            FleetEvent::Shared => stats.shared.map(|id| abi::increment_metric(id, 1)),
            FleetEvent::LocalFallback => stats.local.map(|id| abi::increment_metric(id, 1)),
            FleetEvent::DeniedUnavailable => stats.denied.map(|id| abi::increment_metric(id, 1)),
            FleetEvent::Latency(ms) => stats.latency_ms.map(|id| abi::record_metric(id, ms)),
        };
    }
}

/// The body of a call's answer when it is a 200 (a failed call has no headers).
pub fn answer_body(num_headers: usize, body_size: usize) -> Option<Vec<u8>> {
    if num_headers == 0 {
        return None;
    }
    let status = abi::header(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status").ok()?;
    fleet::ok_body(status.as_deref(), || abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).ok())
}

/// Tells the service `path`, on behalf of the root context: the request's
/// own calls end with it.
pub fn tell(shared: &SharedState, path: &str, context_id: u32) {
    let root = ROOT_ID.with(Cell::get);
    let switched = root != 0 && abi::set_effective_context(root).is_ok();
    // The lease expires by itself if this is lost; a slow service gets a second or so.
    if let Err(status) = Calls.call(shared, path, shared.timeout_ms.max(1000)) {
        log::warn!("switchboard: telling the state service {path} failed (status {status})");
    }
    if switched {
        let _ = abi::set_effective_context(context_id);
    }
}

/// Root tick, every `sync_ms` in fleet mode: tells the fleet the canaries
/// this VM saw rolled back, and polls the fleet's rollbacks and scores.
pub fn sync(rt: &Runtime, now_ms: u64) {
    let Some(shared) = &rt.config.shared_state else { return };
    SYNC.with(|s| {
        s.borrow_mut().tick(&abi::Data, &mut Calls, shared, rt.canary_generation, || rt.rolled_back(), now_ms)
    });
}

/// The fleet poll's answer, if `token` is it (`false`: another call's).
/// Rollbacks apply on every VM; scores are learned by the VM whose poll
/// moves the proxy's cursor, so each once per proxy.
pub fn sync_answered(rt: &Runtime, token: u32, num_headers: usize, body_size: usize) -> bool {
    let answer = || answer_body(num_headers, body_size);
    let Some(news) = SYNC.with(|s| s.borrow_mut().answered(&abi::Data, u64::from(token), answer)) else {
        return false;
    };
    for id in &news.rolled_back {
        if rt.roll_back(id) {
            log::warn!("switchboard: canary {id} rolled back by another proxy of the fleet");
        }
    }
    fleet::learn_scores(&abi::Data, &rt.config, &rt.learned_models, &news.scores, |index| {
        rt.learned_learning.forget(index);
    });
    true
}
