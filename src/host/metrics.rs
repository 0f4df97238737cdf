//! Envoy stats defined by the filter (every VM defines the same names; Envoy
//! shares the stat). Names embed the pool and member; the Envoy configs in
//! `envoy/` extract them as `pool` and `member` tags for Prometheus.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;

use crate::config::Config;

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
    pending: RefCell<HashMap<u32, i64>>,
}

const LOCAL_ERROR_CODES: [&str; 29] = [
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

/// Stat-name-safe form of a pool or member name (dots separate stat segments).
pub fn stat_segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/') { c } else { '_' }).collect()
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
        Metrics {
            pools,
            local_errors,
            host_errors: counter("switchboard.host_errors".to_string()),
            pending: RefCell::new(HashMap::default()),
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
