//! The stats of `crate::stats`'s catalog defined through proxy-wasm (every
//! VM defines the same names; Envoy shares the stat), counted per VM and
//! handed to Envoy once a second.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;

use crate::api::ErrorCode;
use crate::config::Config;
use crate::stats::{
    request_series, request_stat_name, stat_key, Catalog, HostServes, MemberStats, PoolStats, StatKind, TenantStats,
};
pub use crate::stats::{Family, Labels};
use crate::tenant::limits::cost_micro_usd;

use super::abi;

pub type PoolMetrics = PoolStats<u32>;
pub type MemberMetrics = MemberStats<u32>;

/// Counter increments are kept per VM and handed to Envoy on each tick
/// (every second): one host call per counter per second instead of several
/// per request.
#[derive(Default)]
pub struct Metrics {
    pub pools: Vec<PoolMetrics>,
    /// Local answers by OpenAI error code, indexed by `ErrorCode as usize`.
    local_errors: Vec<Option<u32>>,
    /// Host calls that failed.
    pub host_errors: Option<u32>,
    /// Per tenant (configuration order).
    pub tenants: Vec<TenantStats<u32>>,
    /// Request-end stats by `stat_key`, defined at load (`request_series`); sorted by key.
    request_stats: RefCell<Vec<(u64, Option<u32>)>>,
    pending: RefCell<HashMap<u32, i64>>,
}

fn define(kind: u32, name: &str) -> Option<u32> {
    match abi::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("switchboard: defining metric {name} failed (status {status})");
            None
        }
    }
}

impl Metrics {
    pub fn define(config: &Config) -> Metrics {
        let kind = |k: StatKind| match k {
            StatKind::Counter => abi::METRIC_COUNTER,
            StatKind::Gauge => abi::METRIC_GAUGE,
            StatKind::Histogram => abi::METRIC_HISTOGRAM,
        };
        let Catalog { pools, local_errors, tenants } =
            Catalog::define(config, HostServes { gauges: true, shadow: true }, |name, k| define(kind(k), name));
        for (tenant, stats) in config.tenants.iter().flatten().zip(&tenants) {
            if let Some(budget) = &tenant.budget {
                // A million tokens at limit_usd per million: the limit in micro-USD.
                set_gauge(stats.budget_limit, cost_micro_usd(1_000_000, 0, budget.limit_usd, 0.0));
            }
        }
        let metrics = Metrics {
            pools,
            local_errors,
            host_errors: define(abi::METRIC_COUNTER, "switchboard.host_errors"),
            tenants,
            request_stats: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::default()),
        };
        metrics.define_request_stats(config);
        metrics
    }

    /// Defines every request-end series a request can reach, at 0 (see `request_series`).
    fn define_request_stats(&self, config: &Config) {
        for (family, labels) in request_series(config) {
            self.request_stat(config, family, labels);
        }
    }

    /// A tenant's request refused by its limits (`budget`: by its budget).
    pub fn tenant_refused(&self, tenant: usize, budget: bool) {
        let stats = self.tenants.get(tenant);
        self.inc(stats.and_then(|t| if budget { t.budget_refused } else { t.rate_limited }));
    }

    /// The id of a request-end stat, defined if it is not yet (one host call
    /// per label combination and VM).
    fn request_stat(&self, config: &Config, family: Family, labels: Labels) -> Option<u32> {
        let key = stat_key(family, labels);
        let at = match self.request_stats.borrow().binary_search_by_key(&key, |(k, _)| *k) {
            Ok(found) => return self.request_stats.borrow().get(found).and_then(|(_, id)| *id),
            Err(at) => at,
        };
        let (name, kind) = request_stat_name(config, family, labels);
        let kind = if kind == StatKind::Histogram { abi::METRIC_HISTOGRAM } else { abi::METRIC_COUNTER };
        let id = define(kind, &name);
        self.request_stats.borrow_mut().insert(at, (key, id));
        id
    }

    /// Adds `n` to a request-end counter (handed to Envoy on the next tick);
    /// with 0 the stat still comes to exist, so a dashboard sees a zero.
    pub fn count(&self, config: &Config, family: Family, labels: Labels, n: u64) {
        let id = self.request_stat(config, family, labels);
        if n > 0 {
            self.add(id, n);
        }
    }

    /// Records a histogram value: one host call each (histograms cannot be batched).
    pub fn record(&self, config: &Config, family: Family, labels: Labels, value: u64) {
        if let Some(id) = self.request_stat(config, family, labels) {
            if let Err(status) = abi::record_metric(id, value) {
                log::debug!("switchboard: record_metric failed (status {status})");
            }
        }
    }

    pub fn pool(&self, index: usize) -> Option<&PoolMetrics> {
        self.pools.get(index)
    }

    pub fn member(&self, pool: usize, member: usize) -> Option<&MemberMetrics> {
        self.pools.get(pool)?.members.get(member)
    }

    /// An answer the gateway gave itself, by its error code.
    pub fn local_error(&self, code: ErrorCode) {
        self.inc(self.local_errors.get(code as usize).copied().flatten());
    }

    pub fn inc(&self, id: Option<u32>) {
        self.add(id, 1);
    }

    pub fn add(&self, id: Option<u32>, n: u64) {
        if let Some(id) = id {
            *self.pending.borrow_mut().entry(id).or_insert(0) += i64::try_from(n).unwrap_or(i64::MAX);
        }
    }

    /// Hands the counted increments to Envoy.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (id, delta) in pending {
            if let Err(status) = abi::increment_metric(id, delta) {
                log::debug!("switchboard: increment_metric failed (status {status})");
            }
        }
    }
}

pub fn set_gauge(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        if let Err(status) = abi::record_metric(id, value) {
            log::debug!("switchboard: record_metric failed (status {status})");
        }
    }
}
