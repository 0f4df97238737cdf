//! The stats of `switchboard::stats`'s catalog (the names the wasm build
//! uses, `switchboard.pool.requests;pool=...`), defined on the filter
//! configuration when it loads and counted from any worker.

use std::collections::HashMap;

use switchboard::api::ErrorCode;
use switchboard::config::{Config, MemberRef};
use switchboard::exchange::fleet::{self, FleetEvent};
use switchboard::stats::{
    request_series, request_stat_name, stat_key, Catalog, HostServes, MemberStats, PoolStats, StatKind, TenantStats,
};
pub use switchboard::stats::{Family, Labels};

use switchboard::tenant::limits::cost_micro_usd;

use crate::abi::{self, EnvoyFilterConfig, MetricKind};

fn kind_of(kind: StatKind) -> MetricKind {
    match kind {
        StatKind::Counter => MetricKind::Counter,
        StatKind::Gauge => MetricKind::Gauge,
        StatKind::Histogram => MetricKind::Histogram,
    }
}

pub type PoolMetrics = PoolStats<usize>;
pub type MemberMetrics = MemberStats<usize>;

/// Counter ids on one filter configuration (`None`: Envoy refused the name).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Envoy's configuration object, as an address: it outlives every filter of the configuration.
    config: usize,
    pub pools: Vec<PoolMetrics>,
    /// By `ErrorCode as usize`.
    local_errors: Vec<Option<usize>>,
    /// Per tenant (configuration order).
    pub tenants: Vec<TenantStats<usize>>,
    /// Request-end stats by `stat_key`, every series a request can reach, defined at load.
    request_stats: HashMap<u64, usize>,
    /// Fleet mode's decisions and the state service's latency (fleet mode only).
    fleet: Option<FleetStats>,
}

#[derive(Debug, Clone, Copy)]
struct FleetStats {
    shared: Option<usize>,
    local: Option<usize>,
    denied: Option<usize>,
    latency_ms: Option<usize>,
}

impl Metrics {
    pub fn define(envoy_config: EnvoyFilterConfig, config: &Config) -> Metrics {
        let serves = HostServes { gauges: true, shadow: true };
        let Catalog { pools, local_errors, tenants } =
            Catalog::define(config, serves, |name, kind| abi::define_metric(envoy_config, name, kind_of(kind)));
        for (tenant, stats) in config.tenants.iter().flatten().zip(&tenants) {
            if let (Some(budget), Some(id)) = (&tenant.budget, stats.budget_limit) {
                // A million tokens at limit_usd per million: the limit in micro-USD.
                abi::config_set_gauge(envoy_config, id, cost_micro_usd(1_000_000, 0, budget.limit_usd, 0.0));
            }
        }
        let request_stats = request_series(config)
            .into_iter()
            .filter_map(|(family, labels)| {
                let (name, kind) = request_stat_name(config, family, labels);
                Some((stat_key(family, labels), abi::define_metric(envoy_config, &name, kind_of(kind))?))
            })
            .collect();
        let fleet = config.shared_state.as_ref().map(|_| {
            let define = |name, kind| abi::define_metric(envoy_config, name, kind);
            FleetStats {
                shared: define(fleet::STAT_SHARED, MetricKind::Counter),
                local: define(fleet::STAT_LOCAL, MetricKind::Counter),
                denied: define(fleet::STAT_DENIED, MetricKind::Counter),
                latency_ms: define(fleet::STAT_LATENCY_MS, MetricKind::Histogram),
            }
        });
        Metrics { config: envoy_config as usize, pools, local_errors, tenants, request_stats, fleet }
    }

    /// Sets a gauge (the configuration's tick).
    pub fn set_gauge(&self, id: Option<usize>, value: u64) {
        if let Some(id) = id {
            abi::config_set_gauge(self.config as EnvoyFilterConfig, id, value);
        }
    }

    fn inc(&self, id: Option<usize>) {
        if let Some(id) = id {
            abi::config_increment_counter(self.config as EnvoyFilterConfig, id, 1);
        }
    }

    pub fn pool(&self, pool: usize, which: impl Fn(&PoolMetrics) -> Option<usize>) {
        self.inc(self.pools.get(pool).and_then(which));
    }

    /// Adds `n` to a pool's counter.
    pub fn pool_add(&self, pool: usize, which: impl Fn(&PoolMetrics) -> Option<usize>, n: u64) {
        if let Some(id) = self.pools.get(pool).and_then(which) {
            abi::config_increment_counter(self.config as EnvoyFilterConfig, id, n);
        }
    }

    /// Records a value in a pool's histogram.
    pub fn pool_record(&self, pool: usize, which: impl Fn(&PoolMetrics) -> Option<usize>, value: u64) {
        if let Some(id) = self.pools.get(pool).and_then(which) {
            abi::config_record_histogram(self.config as EnvoyFilterConfig, id, value);
        }
    }

    pub fn member(&self, at: MemberRef, which: impl Fn(&MemberMetrics) -> Option<usize>) {
        self.inc(self.pools.get(at.pool).and_then(|p| p.members.get(at.member)).and_then(which));
    }

    /// Adds `n` to a request-end counter.
    pub fn count(&self, family: Family, labels: Labels, n: u64) {
        if let Some(id) = self.request_stats.get(&stat_key(family, labels)) {
            abi::config_increment_counter(self.config as EnvoyFilterConfig, *id, n);
        }
    }

    /// Records a request-end histogram value (ms).
    pub fn record(&self, family: Family, labels: Labels, value: u64) {
        if let Some(id) = self.request_stats.get(&stat_key(family, labels)) {
            abi::config_record_histogram(self.config as EnvoyFilterConfig, *id, value);
        }
    }

    /// A tenant's request refused by its limits (`budget`: by its budget).
    pub fn tenant_refused(&self, tenant: usize, budget: bool) {
        let stats = self.tenants.get(tenant);
        self.inc(stats.and_then(|t| if budget { t.budget_refused } else { t.rate_limited }));
    }

    /// What fleet mode counts.
    pub fn fleet(&self, event: FleetEvent) {
        let Some(stats) = self.fleet else { return };
        match event {
            FleetEvent::Shared => self.inc(stats.shared),
            FleetEvent::LocalFallback => self.inc(stats.local),
            FleetEvent::DeniedUnavailable => self.inc(stats.denied),
            FleetEvent::Latency(ms) => {
                if let Some(id) = stats.latency_ms {
                    abi::config_record_histogram(self.config as EnvoyFilterConfig, id, ms);
                }
            }
        }
    }

    pub fn local_error(&self, code: ErrorCode) {
        self.inc(self.local_errors.get(code as usize).copied().flatten());
    }
}
