//! Root context: loads configuration (refusing invalid configuration at load),
//! defines metrics, and on each tick refreshes health gauges.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::api::models::ModelListing;
use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::config::Config;
use crate::providers::{build_request, BuildContext};
use crate::routing::{Availability, Rng, Transition};

use super::filter::Filter;
use super::metrics::{set_gauge, Metrics};
use super::{abi, health_store};

/// Everything a request needs, shared by the VM's HTTP contexts.
pub struct Runtime {
    pub config: Config,
    pub listing: ModelListing,
    pub metrics: Metrics,
    pub rng: RefCell<Rng>,
    /// Successes of healthy members not yet added to shared data (flushed on tick).
    pending_successes: RefCell<HashMap<String, u64>>,
    pub health: RefCell<health_store::HealthCache>,
}

impl Runtime {
    pub fn note_success(&self, member_id: &str) {
        let mut pending = self.pending_successes.borrow_mut();
        match pending.get_mut(member_id) {
            Some(n) => *n += 1,
            None => {
                pending.insert(member_id.to_string(), 1);
            }
        }
    }

    fn flush_successes(&self) {
        let pending = std::mem::take(&mut *self.pending_successes.borrow_mut());
        for (member_id, count) in pending {
            health_store::update(&member_id, |h| {
                h.successes = h.successes.saturating_add(count);
                Transition::None
            });
        }
    }
}

/// The cheap request sent to an ejected member to see if it is back.
const PROBE_BODY: &[u8] = br#"{"model":"probe","messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#;

pub struct Root {
    runtime: Option<Rc<Runtime>>,
    /// Identifies this VM in the probe leader lease.
    vm_token: u64,
    /// Per pool: when its members were last probed (ms).
    last_probe_ms: HashMap<usize, u64>,
    /// Probe calls in flight: token -> (pool, member).
    probes: HashMap<u32, (usize, usize)>,
}

impl Root {
    pub fn new(_context_id: u32) -> Self {
        let vm_token = Rng::from_entropy().next_u64() | 1;
        Root { runtime: None, vm_token, last_probe_ms: HashMap::new(), probes: HashMap::new() }
    }

    /// Active health checks: one VM (holding the lease) probes each ejected
    /// member of pools that enable `probe`, and restores it on success.
    fn probe(&mut self, rt: &Runtime, now: u64) {
        let probing: Vec<usize> = rt
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
        if probing.is_empty() || !health_store::lease("probe", self.vm_token, now, 3_000) {
            return;
        }
        for pool_index in probing {
            self.last_probe_ms.insert(pool_index, now);
            let Some(pool) = rt.config.pool_at(pool_index) else { continue };
            let Some(policy) = &pool.probe else { continue };
            for (member_index, member) in pool.members.iter().enumerate() {
                if matches!(health_store::availability(&member.id, now), Availability::Healthy) {
                    continue;
                }
                if self.probes.values().any(|(p, m)| *p == pool_index && *m == member_index) {
                    continue;
                }
                let Some(provider) = rt.config.provider(member.provider) else { continue };
                let Ok(parsed) = ParsedRequest::parse(PROBE_BODY, Endpoint::ChatCompletions) else { continue };
                let ctx = BuildContext { now_unix_s: now / 1000, max_response_tokens: Some(1) };
                let Ok(upstream) = build_request(provider, member, Endpoint::ChatCompletions, &parsed, &ctx) else {
                    continue;
                };
                let headers = upstream.call_headers(&[]);
                let timeout = Duration::from_millis(policy.timeout_ms);
                match proxy_wasm::hostcalls::dispatch_http_call(
                    &provider.cluster,
                    headers,
                    Some(&upstream.body),
                    vec![],
                    timeout,
                ) {
                    Ok(token) => {
                        self.probes.insert(token, (pool_index, member_index));
                    }
                    Err(status) => log::warn!("switchboard: probe of {} not sent: {status:?}", member.id),
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let Some((pool_index, member_index)) = self.probes.remove(&token_id) else { return };
        let Some(rt) = self.runtime.clone() else { return };
        let Some(member) = rt.config.pool_at(pool_index).and_then(|p| p.members.get(member_index)) else { return };
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
            if health_store::update(&member.id, |h| h.record_success()) == Transition::Restored {
                log::info!("switchboard: probe restored member {}", member.id);
                rt.metrics.inc(rt.metrics.member(pool_index, member_index).and_then(|m| m.restorations));
            }
        } else {
            log::debug!("switchboard: probe of {} answered {status}", member.id);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("switchboard: cannot read plugin configuration (status {status})");
                return false;
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        match Config::parse(&raw, &env) {
            Ok(config) => {
                let listing = ModelListing::build(&config);
                let metrics = Metrics::define(&config);
                log::info!(
                    "switchboard: configured {} pools ({} direct models), {} providers",
                    config.listed_pools().count(),
                    config.direct_models().count(),
                    config.providers.len()
                );
                self.runtime = Some(Rc::new(Runtime {
                    config,
                    listing,
                    metrics,
                    rng: RefCell::new(Rng::from_entropy()),
                    pending_successes: RefCell::new(HashMap::new()),
                    health: RefCell::new(health_store::HealthCache::default()),
                }));
                if let Err(status) = abi::set_tick_period_ms(1_000) {
                    log::warn!("switchboard: cannot set tick period (status {status}); health gauges will not refresh");
                }
                true
            }
            Err(e) => {
                log::error!("switchboard: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(rt) = &self.runtime else { return };
        let Ok(now) = abi::now_ms() else { return };
        rt.flush_successes();
        rt.metrics.flush();
        for (index, pool) in rt.config.pools.iter().enumerate() {
            let healthy =
                pool.members.iter().filter(|m| health_store::availability(&m.id, now) == Availability::Healthy).count();
            if let Some(pm) = rt.metrics.pool(index) {
                set_gauge(pm.healthy_members, healthy as u64);
            }
        }
        let rt = Rc::clone(rt);
        self.probe(&rt, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy refuses the plugin, so this is a fallback only.
        Some(Box::new(Filter::new(context_id, self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
