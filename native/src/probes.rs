//! Active health probes in the dynamic module: on the configuration's tick
//! (Envoy's main thread, one per process: no lease needed, unlike the wasm
//! build's workers) each ejected member of a pool with `probe` gets the
//! probe `exchange::probe` builds, as the configuration's own HTTP call; a
//! 2xx restores it for every worker.

use std::collections::HashMap;
use std::sync::Mutex;

use switchboard::config::MemberRef;
use switchboard::exchange::probe::{due_pools, probe_call};
use switchboard::routing::{Availability, MemberHealth, Transition};

use crate::abi::{self, EnvoyFilterConfig};
use crate::state::{self, lock, Runtime};

#[derive(Default)]
pub struct Prober {
    /// Per pool: when its members were last probed (ms).
    last_probe_ms: Mutex<HashMap<usize, u64>>,
    /// Probe calls in flight, by callout id.
    in_flight: Mutex<HashMap<u64, MemberRef>>,
}

impl Prober {
    /// The tick: probes the members out of rotation of every pool whose interval has passed.
    pub fn tick(rt: &Runtime, envoy_config: EnvoyFilterConfig, now: u64) {
        let prober = &rt.prober;
        let due = due_pools(&rt.config, &lock(&prober.last_probe_ms), now);
        for pool_index in due {
            lock(&prober.last_probe_ms).insert(pool_index, now);
            let Some(pool) = rt.config.pool_at(pool_index) else { continue };
            for (member_index, member) in pool.members.iter().enumerate() {
                let target = MemberRef::new(pool_index, member_index);
                if state::health(&member.id).availability(now) == Availability::Healthy
                    || lock(&prober.in_flight).values().any(|r| *r == target)
                {
                    continue;
                }
                let Some(call) = probe_call(&rt.config, target, now) else { continue };
                let headers = call.upstream.call_headers(&[]);
                match abi::config_callout(envoy_config, call.cluster, &headers, &call.upstream.body, call.timeout_ms) {
                    Ok(id) => {
                        lock(&prober.in_flight).insert(id, target);
                    }
                    Err(r) => log::warn!("switchboard: probe of {} not sent ({r})", member.id),
                }
            }
        }
    }

    /// A configuration call's answer: false when `id` is not a probe.
    pub fn answered(rt: &Runtime, id: u64, headers: &[(String, String)]) -> bool {
        let Some(target) = lock(&rt.prober.in_flight).remove(&id) else { return false };
        let Some(member) = rt.config.member(target) else { return true };
        let status: u16 = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        if (200..300).contains(&status) {
            let now = state::now_ms();
            if state::update_health(&member.id, |h: &mut MemberHealth| h.record_probe_success(now))
                == Transition::Restored
            {
                log::info!("switchboard: probe restored member {}", member.id);
                rt.metrics.member(target, |m| m.restorations);
            }
        } else {
            log::debug!("switchboard: probe of {} answered {status}", member.id);
        }
        true
    }
}
