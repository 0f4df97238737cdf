//! Active health checks: one VM, holding a lease in shared data, sends a
//! cheap request to each ejected member of pools that enable `probe`, and
//! restores the member when it answers 2xx.

use std::collections::HashMap;
use std::time::Duration;

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::providers::{build_request, BuildContext};
use crate::routing::{Availability, Rng, Transition};

use super::runtime::Runtime;
use super::{abi, health_store};
use crate::config::MemberRef;

/// The cheap request sent to an ejected member to see if it is back.
const PROBE_BODY: &[u8] = br#"{"model":"probe","messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#;

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
        let due: Vec<usize> = rt
            .config
            .pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let every = p.probe.as_ref()?.interval_ms;
                let due = self.last_probe_ms.get(&i).is_none_or(|last| now.saturating_sub(*last) >= every);
                due.then_some(i)
            })
            .collect();
        if due.is_empty() || !health_store::lease("probe", self.vm_token, now, 3_000) {
            return;
        }
        for pool_index in due {
            self.last_probe_ms.insert(pool_index, now);
            let Some(pool) = rt.config.pool_at(pool_index) else { continue };
            let Some(policy) = &pool.probe else { continue };
            for (member_index, member) in pool.members.iter().enumerate() {
                let target = MemberRef::new(pool_index, member_index);
                if health_store::availability(&member.id, now) == Availability::Healthy
                    || self.in_flight.values().any(|r| *r == target)
                {
                    continue;
                }
                let Some(provider) = rt.config.provider(member.provider) else { continue };
                let Ok(parsed) = ParsedRequest::parse(PROBE_BODY, Endpoint::ChatCompletions) else { continue };
                let ctx = BuildContext { now_unix_s: now / 1000, max_response_tokens: Some(1) };
                let Ok(upstream) = build_request(provider, member, Endpoint::ChatCompletions, &parsed, &ctx) else {
                    continue;
                };
                match proxy_wasm::hostcalls::dispatch_http_call(
                    &provider.cluster,
                    upstream.call_headers(&[]),
                    Some(&upstream.body),
                    vec![],
                    Duration::from_millis(policy.timeout_ms),
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
