//! Active health checks: one VM, holding a lease in shared data, sends a
//! cheap request to each ejected member of pools that enable `probe`, and
//! restores the member when it answers 2xx.

use std::collections::HashMap;
use std::time::Duration;

use crate::exchange::probe::{due_pools, probe_call};
use crate::routing::{Availability, Rng, Transition};

use super::runtime::Runtime;
use super::{abi, health_store};
use crate::config::MemberRef;

pub struct Prober {
    /// Identifies this VM in the probe leader lease.
    vm_token: u64,
    /// Per pool: when its members were last probed (ms).
    last_probe_ms: HashMap<usize, u64>,
    /// Probe calls in flight, by call token.
    in_flight: HashMap<u32, MemberRef>,
}

impl Prober {
    pub fn new() -> Prober {
        Prober {
            vm_token: Rng::from_entropy().next_u64() | 1,
            last_probe_ms: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Probes the ejected members of every pool whose probe interval has passed.
    pub fn tick(&mut self, rt: &Runtime, now: u64) {
        let due = due_pools(&rt.config, &self.last_probe_ms, now);
        if due.is_empty() || !health_store::lease("probe", self.vm_token, now, 3_000) {
            return;
        }
        for pool_index in due {
            self.last_probe_ms.insert(pool_index, now);
            let Some(pool) = rt.config.pool_at(pool_index) else { continue };
            for (member_index, member) in pool.members.iter().enumerate() {
                let target = MemberRef::new(pool_index, member_index);
                if health_store::availability(&member.id, now) == Availability::Healthy
                    || self.in_flight.values().any(|r| *r == target)
                {
                    continue;
                }
                let Some(call) = probe_call(&rt.config, target, now) else { continue };
                match proxy_wasm::hostcalls::dispatch_http_call(
                    call.cluster,
                    call.upstream.call_headers(&[]),
                    Some(&call.upstream.body),
                    vec![],
                    Duration::from_millis(call.timeout_ms),
                ) {
                    Ok(token) => {
                        self.in_flight.insert(token, target);
                    }
                    Err(status) => log::warn!("switchboard: probe of {} not sent: {status:?}", member.id),
                }
            }
        }
    }

    /// A probe's answer. False when `token` is not a probe of this VM.
    pub fn on_response(&mut self, rt: &Runtime, token: u32, num_headers: usize) -> bool {
        let Some(target) = self.in_flight.remove(&token) else { return false };
        let Some(member) = rt.config.member(target) else {
            return true;
        };
        let status = if num_headers == 0 {
            0
        } else {
            abi::header_str(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0)
        };
        if (200..300).contains(&status) {
            let now = abi::now_ms().unwrap_or(0);
            if health_store::update(&member.id, |h| h.record_probe_success(now)) == Transition::Restored {
                log::info!("switchboard: probe restored member {}", member.id);
                rt.metrics.inc(rt.metrics.member(target.pool, target.member).and_then(|m| m.restorations));
            }
        } else {
            log::debug!("switchboard: probe of {} answered {status}", member.id);
        }
        true
    }
}
