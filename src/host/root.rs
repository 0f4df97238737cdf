//! Root context: loads configuration (refusing invalid configuration at load),
//! creates one HTTP context per request, and on each tick hands counters to
//! Envoy, refreshes health gauges and runs the active probes.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::config::Config;
use crate::routing::Availability;

use super::filter::Filter;
use super::metrics::set_gauge;
use super::probes::Prober;
use super::runtime::Runtime;
use super::{abi, health_store};

pub struct Root {
    runtime: Option<Rc<Runtime>>,
    prober: Prober,
}

impl Root {
    pub fn new(_context_id: u32) -> Self {
        Root { runtime: None, prober: Prober::new() }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        if let Some(rt) = &self.runtime {
            self.prober.on_response(rt, token_id, num_headers);
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
                log::info!(
                    "switchboard: configured {} pools ({} direct models), {} providers",
                    config.listed_pools().count(),
                    config.direct_models().count(),
                    config.providers.len()
                );
                match Runtime::new(config) {
                    Ok(rt) => self.runtime = Some(Rc::new(rt)),
                    Err(e) => {
                        log::error!("switchboard: {e}");
                        return false;
                    }
                }
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
        self.prober.tick(rt, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy refuses the plugin, so this is a fallback only.
        Some(Box::new(Filter::new(context_id, self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
