//! Envoy stats defined by the filter (every VM defines the same names; Envoy
//! shares the stat). Names embed the pool, member and tenant; the Envoy
//! configs in `envoy/` extract them as tags for Prometheus. Request-end stats
//! (`crate::observe`) are defined on first use of each label combination.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;

use crate::config::{Config, MemberRef};
use crate::observe::{self, request_stat, NO_LABEL};

use super::abi;

#[derive(Debug, Default, Clone, Copy)]
pub struct MemberMetrics {
    pub requests: Option<u32>,
    pub attempts: Option<u32>,
    pub failures: Option<u32>,
    pub failovers: Option<u32>,
    pub ejections: Option<u32>,
    pub restorations: Option<u32>,
    pub canary_rollbacks: Option<u32>,
    /// Answers that broke after their headers went out (cut by the member, or silent past the idle limit).
    pub cut_answers: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct PoolMetrics {
    pub requests: Option<u32>,
    pub failovers: Option<u32>,
    pub exhausted: Option<u32>,
    /// Requests that got a second member by `hedge_after_ms`, and those the second member answered.
    pub hedged: Option<u32>,
    pub hedge_wins: Option<u32>,
    /// Streams ended by `stream_idle_timeout_ms`.
    pub stream_idle_timeouts: Option<u32>,
    /// Streams that broke after their first byte and were continued on another member (`resume_streams`).
    pub resumed_streams: Option<u32>,
    /// Pools with a `shadow` only: its answers (failures: not 2xx), tokens and latency (histogram).
    pub shadow_requests: Option<u32>,
    pub shadow_failures: Option<u32>,
    pub shadow_prompt_tokens: Option<u32>,
    pub shadow_completion_tokens: Option<u32>,
    pub shadow_latency_ms: Option<u32>,
    pub healthy_members: Option<u32>,
    pub members: Vec<MemberMetrics>,
}

/// Counter increments are kept per VM and handed to Envoy on each tick
/// (every second): one host call per counter per second instead of several
/// per request.
#[derive(Debug, Default)]
pub struct Metrics {
    pub pools: Vec<PoolMetrics>,
    /// Local answers by OpenAI error code.
    local_errors: Vec<(&'static str, Option<u32>)>,
    /// Host calls that failed.
    pub host_errors: Option<u32>,
    /// Per tenant (configuration order): requests refused by its rpm, tpm or
    /// max_parallel, and by its budget.
    tenant_refusals: Vec<(Option<u32>, Option<u32>)>,
    /// Request-end stats by `stat_key`, defined on first use; sorted by key.
    request_stats: RefCell<Vec<(u64, Option<u32>)>>,
    pending: RefCell<HashMap<u32, i64>>,
}

/// A request-end stat family (see `crate::observe`).
#[derive(Debug, Clone, Copy)]
pub enum Family {
    InputTokens,
    OutputTokens,
    /// Client requests by the status they got.
    Requests(u16),
    CostMicroUsd,
    UsageEstimated,
    /// Histograms (ms).
    Duration,
    FirstToken,
}

/// Labels of a request-end stat, as configuration indexes (`Labels::NONE`: `-`).
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    pub pool: usize,
    pub member: usize,
    pub tenant: usize,
}

impl Labels {
    pub const NONE: usize = usize::MAX;
}

/// One number per family and labels: 16 bits each (configurations stay far below).
fn stat_key(family: Family, labels: Labels) -> u64 {
    let code = match family {
        Family::InputTokens => 1,
        Family::OutputTokens => 2,
        Family::CostMicroUsd => 3,
        Family::UsageEstimated => 4,
        Family::Duration => 5,
        Family::FirstToken => 6,
        Family::Requests(status) => 16 + u64::from(status),
    };
    let index = |i: usize| if i == Labels::NONE { 0xffff } else { (i as u64) & 0xffff };
    code | index(labels.pool) << 16 | index(labels.member) << 32 | index(labels.tenant) << 48
}

const LOCAL_ERROR_CODES: [&str; 31] = [
    "overloaded",
    "ambiguous_model",
    "invalid_json",
    "invalid_type",
    "missing_model",
    "missing_required_parameter",
    "invalid_provider",
    "model_not_found",
    "not_found",
    "method_not_allowed",
    "request_too_large",
    "unsupported_content_encoding",
    "no_healthy_upstream",
    "rate_limit_exceeded",
    "unsupported_provider",
    "unsupported_endpoint",
    "invalid_upstream_response",
    "invalid_value",
    "unsupported_value",
    "context_length_exceeded",
    "unsupported_parameter",
    "no_member_with_tags",
    "invalid_api_key",
    "model_not_allowed",
    "insufficient_quota",
    "unsupported_feature",
    "invalid_request",
    "request_not_found",
    "feedback_already_recorded",
    "other",
    "internal_error",
];

use observe::stat_segment;

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
        let counter = |name: String| define(abi::METRIC_COUNTER, &name);
        let pools = config
            .pools
            .iter()
            .map(|pool| {
                let p = stat_segment(&pool.name);
                let shadow = |name: &str, kind: u32| {
                    pool.shadow.as_ref().and_then(|_| define(kind, &format!("switchboard.pool.{p}.shadow_{name}")))
                };
                PoolMetrics {
                    shadow_requests: shadow("requests", abi::METRIC_COUNTER),
                    shadow_failures: shadow("failures", abi::METRIC_COUNTER),
                    shadow_prompt_tokens: shadow("prompt_tokens", abi::METRIC_COUNTER),
                    shadow_completion_tokens: shadow("completion_tokens", abi::METRIC_COUNTER),
                    shadow_latency_ms: shadow("latency_ms", abi::METRIC_HISTOGRAM),
                    requests: counter(format!("switchboard.pool.{p}.requests")),
                    failovers: counter(format!("switchboard.pool.{p}.failovers")),
                    exhausted: counter(format!("switchboard.pool.{p}.exhausted")),
                    hedged: counter(format!("switchboard.pool.{p}.hedged")),
                    hedge_wins: counter(format!("switchboard.pool.{p}.hedge_wins")),
                    stream_idle_timeouts: counter(format!("switchboard.pool.{p}.stream_idle_timeouts")),
                    resumed_streams: pool
                        .retry
                        .resume_streams
                        .then(|| counter(format!("switchboard.pool.{p}.resumed_streams")))
                        .flatten(),
                    healthy_members: define(abi::METRIC_GAUGE, &format!("switchboard.pool.{p}.healthy_members")),
                    members: pool
                        .members
                        .iter()
                        .map(|m| {
                            let base = format!("switchboard.member.{p}.{}", stat_segment(&m.id));
                            MemberMetrics {
                                requests: counter(format!("{base}.requests")),
                                attempts: counter(format!("{base}.attempts")),
                                failures: counter(format!("{base}.failures")),
                                failovers: counter(format!("{base}.failovers")),
                                ejections: counter(format!("{base}.ejections")),
                                restorations: counter(format!("{base}.restorations")),
                                cut_answers: counter(format!("{base}.cut_answers")),
                                canary_rollbacks: if m.canary.is_some() {
                                    counter(format!("{base}.canary_rollbacks"))
                                } else {
                                    None
                                },
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let local_errors =
            LOCAL_ERROR_CODES.iter().map(|code| (*code, counter(format!("switchboard.local_errors.{code}")))).collect();
        let tenant_refusals = config
            .tenants
            .iter()
            .flatten()
            .map(|t| {
                let base = format!("switchboard.tenant.{}", stat_segment(&t.name));
                (counter(format!("{base}.rate_limited")), counter(format!("{base}.budget_refused")))
            })
            .collect();
        Metrics {
            pools,
            local_errors,
            host_errors: counter("switchboard.host_errors".to_string()),
            tenant_refusals,
            request_stats: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::default()),
        }
    }

    /// A tenant's request refused by its limits (`budget`: by its budget).
    pub fn tenant_refused(&self, tenant: usize, budget: bool) {
        let ids = self.tenant_refusals.get(tenant);
        self.inc(ids.and_then(|(limit, spent)| if budget { *spent } else { *limit }));
    }

    /// The id of a request-end stat, defined on its first use (one host call
    /// per label combination and VM).
    fn request_stat(&self, config: &Config, family: Family, labels: Labels) -> Option<u32> {
        let key = stat_key(family, labels);
        let at = match self.request_stats.borrow().binary_search_by_key(&key, |(k, _)| *k) {
            Ok(found) => return self.request_stats.borrow().get(found).and_then(|(_, id)| *id),
            Err(at) => at,
        };
        let pool = config.pool_at(labels.pool).map_or(NO_LABEL, |p| p.name.as_str());
        let member = config.member(MemberRef::new(labels.pool, labels.member)).map_or(NO_LABEL, |m| m.id.as_str());
        let tenant = config.tenants.as_ref().and_then(|t| t.get(labels.tenant)).map_or(NO_LABEL, |t| t.name.as_str());
        let status;
        let (kind, base, last) = match family {
            Family::InputTokens => (abi::METRIC_COUNTER, observe::TOKEN_USAGE, Some("input")),
            Family::OutputTokens => (abi::METRIC_COUNTER, observe::TOKEN_USAGE, Some("output")),
            Family::Requests(code) => {
                status = code.to_string();
                (abi::METRIC_COUNTER, observe::REQUESTS, Some(status.as_str()))
            }
            Family::CostMicroUsd => (abi::METRIC_COUNTER, observe::COST, None),
            Family::UsageEstimated => (abi::METRIC_COUNTER, observe::USAGE_ESTIMATED, None),
            Family::Duration => (abi::METRIC_HISTOGRAM, observe::REQUEST_DURATION, None),
            Family::FirstToken => (abi::METRIC_HISTOGRAM, observe::TIME_TO_FIRST_TOKEN, None),
        };
        let id = define(kind, &request_stat(base, pool, member, tenant, last));
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

    pub fn local_error(&self, code: &str) {
        let id = self
            .local_errors
            .iter()
            .find(|(c, _)| *c == code)
            .or_else(|| self.local_errors.iter().find(|(c, _)| *c == "other"))
            .and_then(|(_, id)| *id);
        self.inc(id);
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
