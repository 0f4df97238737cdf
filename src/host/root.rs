//! Root context: loads configuration (refusing invalid configuration at load),
//! defines metrics, and on each tick refreshes health gauges.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::api::models::ModelListing;
use crate::config::Config;
use crate::routing::{Availability, Rng};

use super::filter::Filter;
use super::metrics::{set_gauge, Metrics};
use super::{abi, health_store};

/// Everything a request needs, shared by the VM's HTTP contexts.
pub struct Runtime {
    pub config: Config,
    pub listing: ModelListing,
    pub metrics: Metrics,
    pub rng: RefCell<Rng>,
}

pub struct Root {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root { context_id, runtime: None }
    }
}

impl Context for Root {}

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
                self.runtime = Some(Rc::new(Runtime { config, listing, metrics, rng: RefCell::new(Rng::from_entropy()) }));
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
        for (index, pool) in rt.config.pools.iter().enumerate() {
            let healthy = pool
                .members
                .iter()
                .filter(|m| health_store::availability(&m.id, now) == Availability::Healthy)
                .count();
            if let Some(pm) = rt.metrics.pool(index) {
                set_gauge(pm.healthy_members, healthy as u64);
            }
        }
        let _ = self.context_id;
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy refuses the plugin, so this is a fallback only.
        Some(Box::new(Filter::new(context_id, self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
