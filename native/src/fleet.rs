//! Fleet mode in the dynamic module: `exchange::fleet`'s steps over the
//! process memory (`state::Data`) and HTTP callouts. A request's admission
//! asks the state service with its own callout (the request stopped until
//! the answer, then continued); what a request tells the fleet once it is
//! over, and the fleet's poll, leave from Envoy's main thread as the
//! configuration's callouts (woken through its scheduler, as shadow copies),
//! so they outlive the request.

use std::sync::Mutex;

use switchboard::config::SharedState;
use switchboard::exchange::fleet::{self, FleetCalls, FleetEvent, Sync};

use crate::abi::{self, EnvoyFilterConfig, Stream};
use crate::metrics::Metrics;
use crate::state::{self, lock, Data, Runtime};

/// The scheduler's event that sends the queued tells.
pub const TELL_EVENT: u64 = 3;
/// Tells waiting for the main thread beyond this are dropped (leases expire by themselves).
const MAX_QUEUED: usize = 4096;

/// A configuration's fleet-mode state.
#[derive(Default)]
pub struct Fleet {
    /// Paths to tell the service, waiting for the main thread.
    tells: Mutex<Vec<String>>,
    /// The poll of the fleet (main thread).
    sync: Mutex<Sync>,
}

/// A request's calls: HTTP callouts of its stream.
pub struct StreamCalls<'a> {
    pub s: Stream,
    pub metrics: &'a Metrics,
}

impl FleetCalls for StreamCalls<'_> {
    fn call(&mut self, shared: &SharedState, path: &str, timeout_ms: u64) -> Result<u64, u32> {
        self.s.callout(&shared.cluster, &fleet::call_headers(path), &[], timeout_ms)
    }

    fn note(&self, event: FleetEvent) {
        self.metrics.fleet(event);
    }
}

/// The configuration's calls, on the main thread.
struct ConfigCalls<'a> {
    envoy_config: EnvoyFilterConfig,
    metrics: &'a Metrics,
}

impl FleetCalls for ConfigCalls<'_> {
    fn call(&mut self, shared: &SharedState, path: &str, timeout_ms: u64) -> Result<u64, u32> {
        abi::config_callout(self.envoy_config, &shared.cluster, &fleet::call_headers(path), &[], timeout_ms)
    }

    fn note(&self, event: FleetEvent) {
        self.metrics.fleet(event);
    }
}

/// The body of a callout's answer when it is a 200 (a failed callout has no headers).
pub fn answer_body(headers: &[(String, String)], body: Vec<u8>) -> Option<Vec<u8>> {
    let status = headers.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.as_bytes());
    fleet::ok_body(status, || Some(body))
}

impl Fleet {
    /// A worker's tell, queued for the main thread (woken when the queue was empty).
    pub fn tell(rt: &Runtime, path: String) {
        let mut tells = lock(&rt.fleet.tells);
        if tells.len() >= MAX_QUEUED {
            log::warn!("switchboard: telling the state service {path} dropped: the main thread is behind");
            return;
        }
        tells.push(path);
        if tells.len() == 1 {
            drop(tells);
            if let Some(scheduler) = &rt.scheduler {
                scheduler.commit(TELL_EVENT);
            }
        }
    }

    /// Main thread: sends the queued tells.
    pub fn send_tells(rt: &Runtime, envoy_config: EnvoyFilterConfig) {
        let Some(shared) = &rt.config.shared_state else { return };
        let tells = std::mem::take(&mut *lock(&rt.fleet.tells));
        let mut calls = ConfigCalls { envoy_config, metrics: &rt.metrics };
        for path in tells {
            // The lease expires by itself if this is lost; a slow service gets a second or so.
            if let Err(status) = calls.call(shared, &path, shared.timeout_ms.max(1000)) {
                log::warn!("switchboard: telling the state service {path} failed (status {status})");
            }
        }
    }

    /// Main thread, on the configuration's tick: tells the canaries rolled
    /// back here, and polls the fleet's rollbacks and scores every `sync_ms`.
    pub fn sync(rt: &Runtime, envoy_config: EnvoyFilterConfig) {
        let Some(shared) = &rt.config.shared_state else { return };
        let mut calls = ConfigCalls { envoy_config, metrics: &rt.metrics };
        let rolled_back = || rt.rolled_back();
        lock(&rt.fleet.sync).tick(&Data, &mut calls, shared, rt.canary_generation, rolled_back, state::now_ms());
    }

    /// Main thread: the poll's answer, if callout `id` is it (`false`: another call's).
    pub fn answered(rt: &Runtime, id: u64, headers: &[(String, String)], body: &[u8]) -> bool {
        let answer = || answer_body(headers, body.to_vec());
        let Some(news) = lock(&rt.fleet.sync).answered(&Data, id, answer) else { return false };
        for member in &news.rolled_back {
            if rt.roll_back(member) {
                log::warn!("switchboard: canary {member} rolled back by another proxy of the fleet");
            }
        }
        fleet::learn_scores(&Data, &rt.config, &rt.learned_models, &news.scores, |index| rt.learning.forget(index));
        true
    }
}
