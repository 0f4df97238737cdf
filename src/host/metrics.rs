//! Envoy stats defined by the filter (every VM defines the same names; Envoy
//! shares the stat). Names embed the pool, member and tenant; the Envoy
//! configs in `envoy/` extract them as tags for Prometheus. Request-end stats
//! (`crate::observe`) are defined at configuration load for every label
//! combination a request can reach (`request_series`), so they exist at 0.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;

use crate::api::ErrorCode;
use crate::config::{Config, MemberRef};
use crate::observe::{self, request_stat, Outcome, NO_LABEL};
use crate::tenant::limits::cost_micro_usd;

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
    /// Local answers by OpenAI error code, indexed by `ErrorCode as usize`.
    local_errors: Vec<Option<u32>>,
    /// Host calls that failed.
    pub host_errors: Option<u32>,
    /// Per tenant (configuration order): requests refused by its rpm, tpm or
    /// max_parallel, and by its budget.
    tenant_refusals: Vec<(Option<u32>, Option<u32>)>,
    /// Per tenant (configuration order), tenants with a `budget_usd` only: the
    /// gauges of its spend in the current period and of its limit (micro-USD).
    pub tenant_budgets: Vec<Option<BudgetGauges>>,
    /// Request-end stats by `stat_key`, defined at load (`request_series`); sorted by key.
    request_stats: RefCell<Vec<(u64, Option<u32>)>>,
    pending: RefCell<HashMap<u32, i64>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BudgetGauges {
    pub spent: Option<u32>,
    pub limit: Option<u32>,
}

/// A request-end stat family (see `crate::observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    InputTokens,
    OutputTokens,
    /// Client requests by what they came to.
    Requests(Outcome),
    CostMicroUsd,
    UsageEstimated,
    /// Histograms (ms): the duration by how the request ended (`error.type`:
    /// the outcome, absent for `ok`), the first token of successful streams.
    Duration(Outcome),
    FirstToken,
}

/// Labels of a request-end stat, as configuration indexes (`Labels::NONE`: `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        Family::FirstToken => 6,
        Family::Requests(outcome) => 16 + outcome as u64,
        Family::Duration(outcome) => 32 + outcome as u64,
    };
    let index = |i: usize| if i == Labels::NONE { 0xffff } else { (i as u64) & 0xffff };
    code | index(labels.pool) << 16 | index(labels.member) << 32 | index(labels.tenant) << 48
}

use observe::labelled;

/// How a request that reached a member can end, as the duration's `error.type`
/// (`quota`, a tenant's budget, is refused before any member).
const DURATION_OUTCOMES: [Outcome; 6] = [
    Outcome::Ok,
    Outcome::ClientError,
    Outcome::RateLimited,
    Outcome::UpstreamError,
    Outcome::Exhausted,
    Outcome::Cancelled,
];

/// Every request-end series a request can reach, so that each is defined at
/// 0 on configuration load and the first request of each kind is counted by
/// `rate()`/`increase()` (a series born with its first value shows no
/// increase). For every pool, member and tenant (`-` without tenants):
/// requests by outcome, tokens, cost, estimated usage, the durations by
/// `error.type` and the time to first token;
/// requests by outcome also for a pool before a member was tried, and before
/// a pool was chosen (per tenant, and `-`: unauthenticated).
pub fn request_series(config: &Config) -> Vec<(Family, Labels)> {
    let tenants: Vec<usize> = match config.tenants.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => (0..t.len()).collect(),
        None => vec![Labels::NONE],
    };
    let mut out = Vec::new();
    let outcomes = |out: &mut Vec<(Family, Labels)>, labels: Labels| {
        out.extend(Outcome::ALL.iter().map(|o| (Family::Requests(*o), labels)));
    };
    for (p, pool) in config.pools.iter().enumerate() {
        for &tenant in &tenants {
            for m in 0..pool.members.len() {
                let labels = Labels { pool: p, member: m, tenant };
                outcomes(&mut out, labels);
                out.extend(
                    [
                        Family::InputTokens,
                        Family::OutputTokens,
                        Family::CostMicroUsd,
                        Family::UsageEstimated,
                        Family::FirstToken,
                    ]
                    .map(|f| (f, labels)),
                );
                out.extend(DURATION_OUTCOMES.map(|o| (Family::Duration(o), labels)));
            }
            outcomes(&mut out, Labels { pool: p, member: Labels::NONE, tenant });
        }
    }
    let unauthenticated = config.tenants.is_some().then_some(Labels::NONE);
    for tenant in tenants.into_iter().chain(unauthenticated) {
        outcomes(&mut out, Labels { pool: Labels::NONE, member: Labels::NONE, tenant });
    }
    out
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
                let p = [("pool", pool.name.as_str())];
                let counter = |name: &str| counter(labelled(&format!("switchboard.pool.{name}"), &p));
                let shadow = |name: &str, kind: u32| {
                    pool.shadow
                        .as_ref()
                        .and_then(|_| define(kind, &labelled(&format!("switchboard.pool.shadow_{name}"), &p)))
                };
                PoolMetrics {
                    shadow_requests: shadow("requests", abi::METRIC_COUNTER),
                    shadow_failures: shadow("failures", abi::METRIC_COUNTER),
                    shadow_prompt_tokens: shadow("prompt_tokens", abi::METRIC_COUNTER),
                    shadow_completion_tokens: shadow("completion_tokens", abi::METRIC_COUNTER),
                    shadow_latency_ms: shadow("latency_ms", abi::METRIC_HISTOGRAM),
                    requests: counter("requests"),
                    failovers: counter("failovers"),
                    exhausted: counter("exhausted"),
                    hedged: counter("hedged"),
                    hedge_wins: counter("hedge_wins"),
                    stream_idle_timeouts: counter("stream_idle_timeouts"),
                    resumed_streams: pool.retry.resume_streams.then(|| counter("resumed_streams")).flatten(),
                    healthy_members: define(abi::METRIC_GAUGE, &labelled("switchboard.pool.healthy_members", &p)),
                    members: pool
                        .members
                        .iter()
                        .map(|m| {
                            let labels = [("pool", pool.name.as_str()), ("member", m.id.as_str())];
                            let counter = |name: &str| {
                                define(abi::METRIC_COUNTER, &labelled(&format!("switchboard.member.{name}"), &labels))
                            };
                            MemberMetrics {
                                requests: counter("requests"),
                                attempts: counter("attempts"),
                                failures: counter("failures"),
                                failovers: counter("failovers"),
                                ejections: counter("ejections"),
                                restorations: counter("restorations"),
                                cut_answers: counter("cut_answers"),
                                canary_rollbacks: m.canary.as_ref().and_then(|_| counter("canary_rollbacks")),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let local_errors = ErrorCode::ALL
            .iter()
            .map(|code| counter(labelled("switchboard.local_errors", &[("code", code.as_str())])))
            .collect();
        let tenant_refusals = config
            .tenants
            .iter()
            .flatten()
            .map(|t| {
                let tenant = [("tenant", t.name.as_str())];
                (
                    counter(labelled("switchboard.tenant.rate_limited", &tenant)),
                    counter(labelled("switchboard.tenant.budget_refused", &tenant)),
                )
            })
            .collect();
        let tenant_budgets = config
            .tenants
            .iter()
            .flatten()
            .map(|t| {
                let budget = t.budget.as_ref()?;
                let tenant = [("tenant", t.name.as_str())];
                let gauges = BudgetGauges {
                    spent: define(abi::METRIC_GAUGE, &labelled("switchboard.tenant.budget_spent_micro_usd", &tenant)),
                    limit: define(abi::METRIC_GAUGE, &labelled("switchboard.tenant.budget_limit_micro_usd", &tenant)),
                };
                // A million tokens at limit_usd per million: the limit in micro-USD.
                set_gauge(gauges.limit, cost_micro_usd(1_000_000, 0, budget.limit_usd, 0.0));
                Some(gauges)
            })
            .collect();
        let metrics = Metrics {
            tenant_budgets,
            pools,
            local_errors,
            host_errors: counter("switchboard.host_errors".to_string()),
            tenant_refusals,
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
        let ids = self.tenant_refusals.get(tenant);
        self.inc(ids.and_then(|(limit, spent)| if budget { *spent } else { *limit }));
    }

    /// The id of a request-end stat, defined if it is not yet (one host call
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
        let (kind, base, last) = match family {
            Family::InputTokens => (abi::METRIC_COUNTER, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "input"))),
            Family::OutputTokens => (abi::METRIC_COUNTER, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "output"))),
            Family::Requests(outcome) => (abi::METRIC_COUNTER, observe::REQUESTS, Some(("outcome", outcome.as_str()))),
            Family::CostMicroUsd => (abi::METRIC_COUNTER, observe::COST, None),
            Family::UsageEstimated => (abi::METRIC_COUNTER, observe::USAGE_ESTIMATED, None),
            // The spec's `error.type`: set only when the request did not end well.
            Family::Duration(outcome) => (
                abi::METRIC_HISTOGRAM,
                observe::REQUEST_DURATION,
                (outcome != Outcome::Ok).then(|| ("error.type", outcome.as_str())),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{sample_config, ENV};

    fn series_of(json: &str) -> (Config, Vec<(Family, Labels)>) {
        let config = Config::parse(json.as_bytes(), &ENV).unwrap();
        let series = request_series(&config);
        (config, series)
    }

    fn has(series: &[(Family, Labels)], family: Family, pool: usize, member: usize, tenant: usize) -> bool {
        series.contains(&(family, Labels { pool, member, tenant }))
    }

    #[test]
    fn every_outcome_of_every_pool_member_and_tenant_exists_from_load() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let tenants = format!(r#"{{"team-a": {{"keys_sha256": ["{a}"]}}, "team-b": {{"keys_sha256": ["{b}"]}}}}"#);
        let json = sample_config().replacen(r#""pools": {"#, &format!(r#""tenants": {tenants}, "pools": {{"#), 1);
        let (config, series) = series_of(&json);
        let none = Labels::NONE;
        for (p, pool) in config.pools.iter().enumerate() {
            for t in 0..2 {
                for o in Outcome::ALL {
                    // Served or failed by a member, refused or exhausted before one.
                    for m in 0..pool.members.len() {
                        assert!(has(&series, Family::Requests(o), p, m, t), "{} {m} {t} {o:?}", pool.name);
                    }
                    assert!(has(&series, Family::Requests(o), p, none, t), "{} {t} {o:?}", pool.name);
                    // Before a pool was chosen (bad JSON, unknown model).
                    assert!(has(&series, Family::Requests(o), none, none, t));
                }
                for m in 0..pool.members.len() {
                    for f in [Family::InputTokens, Family::OutputTokens, Family::CostMicroUsd, Family::FirstToken] {
                        assert!(has(&series, f, p, m, t), "{f:?}");
                    }
                    for f in DURATION_OUTCOMES.map(Family::Duration) {
                        assert!(has(&series, f, p, m, t), "{f:?}");
                    }
                }
            }
        }
        // Unauthenticated (401): no tenant, no pool.
        for o in Outcome::ALL {
            assert!(has(&series, Family::Requests(o), none, none, none));
        }
        // With tenants configured no routed request is without one.
        assert!(!series.iter().any(|(_, l)| l.pool != none && l.tenant == none));
        // Each series once: one define per series and VM.
        let mut keys: Vec<u64> = series.iter().map(|(f, l)| stat_key(*f, *l)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), series.len());
    }

    #[test]
    fn without_tenants_the_tenant_label_is_dash() {
        let (config, series) = series_of(&sample_config());
        assert!(!config.pools.is_empty());
        assert!(series.iter().all(|(_, l)| l.tenant == Labels::NONE));
        assert!(has(&series, Family::Requests(Outcome::ClientError), Labels::NONE, Labels::NONE, Labels::NONE));
        assert!(has(&series, Family::Requests(Outcome::Exhausted), 0, Labels::NONE, Labels::NONE));
    }

    #[test]
    fn every_local_error_code_has_its_own_counter_slot() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert!(
            names.iter().all(|n| labelled("x", &[("code", n)]) == format!("x;code={n}")),
            "codes are labels as they are"
        );
    }
}
