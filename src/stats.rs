//! The catalog of the filter's Envoy stats, host-free: every name, its kind
//! and when it exists, for both hosts (the proxy-wasm filter and the dynamic
//! module define the same stats through their own host calls, `T` being the
//! host's stat id). Names embed the pool, member and tenant; the Envoy
//! configs in `envoy/` extract them as tags for Prometheus. Request-end stats
//! (`crate::observe`) are defined at configuration load for every label
//! combination a request can reach (`request_series`), so they exist at 0.

use crate::api::ErrorCode;
use crate::config::{Config, MemberRef};
use crate::observe::{self, labelled, request_stat, Outcome, NO_LABEL};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy)]
pub struct MemberStats<T> {
    pub requests: Option<T>,
    pub attempts: Option<T>,
    pub failures: Option<T>,
    pub failovers: Option<T>,
    pub ejections: Option<T>,
    pub restorations: Option<T>,
    /// Members with a `canary` only.
    pub canary_rollbacks: Option<T>,
    /// Answers that broke after their headers went out (cut by the member, or silent past the idle limit).
    pub cut_answers: Option<T>,
}

#[derive(Debug, Clone)]
pub struct PoolStats<T> {
    pub requests: Option<T>,
    pub failovers: Option<T>,
    pub exhausted: Option<T>,
    /// Requests that got a second member by `hedge_after_ms`, and those the second member answered.
    pub hedged: Option<T>,
    pub hedge_wins: Option<T>,
    /// Streams ended by `stream_idle_timeout_ms`.
    pub stream_idle_timeouts: Option<T>,
    /// Streams that broke after their first byte and were continued on another member (`resume_streams` only).
    pub resumed_streams: Option<T>,
    /// Pools with a `shadow` only: its answers (failures: not 2xx), tokens and latency (histogram).
    pub shadow_requests: Option<T>,
    pub shadow_failures: Option<T>,
    pub shadow_prompt_tokens: Option<T>,
    pub shadow_completion_tokens: Option<T>,
    pub shadow_latency_ms: Option<T>,
    /// Gauge, set by a host that has timers.
    pub healthy_members: Option<T>,
    pub members: Vec<MemberStats<T>>,
}

/// A tenant's stats: requests refused by its rpm, tpm or max_parallel, and
/// by its budget; with a `budget_usd`, the gauges of its spend in the
/// current period and of its limit (micro-USD).
#[derive(Debug, Clone, Copy)]
pub struct TenantStats<T> {
    pub rate_limited: Option<T>,
    pub budget_refused: Option<T>,
    pub budget_spent: Option<T>,
    pub budget_limit: Option<T>,
}

/// What a host does that some stats need: a stat the host would never move
/// is not defined (a healthy-members gauge stuck at 0 would page someone).
#[derive(Debug, Clone, Copy)]
pub struct HostServes {
    /// Gauges set on a timer: healthy members, tenants' budget spend and limit.
    pub gauges: bool,
    /// Shadow copies (`pools.<name>.shadow`).
    pub shadow: bool,
}

/// The per-pool, per-member and per-tenant stats of `config`, and the local
/// errors by `ErrorCode as usize`, each defined by `define(name, kind)`
/// (`None`: the host refused it, and it is then never counted).
pub struct Catalog<T> {
    pub pools: Vec<PoolStats<T>>,
    pub local_errors: Vec<Option<T>>,
    pub tenants: Vec<TenantStats<T>>,
}

impl<T> Catalog<T> {
    pub fn define(
        config: &Config,
        serves: HostServes,
        mut define: impl FnMut(&str, StatKind) -> Option<T>,
    ) -> Catalog<T> {
        let define = &mut define;
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            let p = [("pool", pool.name.as_str())];
            let mut at = |name: &str, kind: StatKind| define(&labelled(&format!("switchboard.pool.{name}"), &p), kind);
            let counter = StatKind::Counter;
            let shadow = serves.shadow && pool.shadow.is_some();
            let mut shadow_stat = |name: &str, kind| if shadow { at(name, kind) } else { None };
            let (shadow_requests, shadow_failures, shadow_prompt_tokens, shadow_completion_tokens, shadow_latency_ms) = (
                shadow_stat("shadow_requests", counter),
                shadow_stat("shadow_failures", counter),
                shadow_stat("shadow_prompt_tokens", counter),
                shadow_stat("shadow_completion_tokens", counter),
                shadow_stat("shadow_latency_ms", StatKind::Histogram),
            );
            let mut stats = PoolStats {
                shadow_requests,
                shadow_failures,
                shadow_prompt_tokens,
                shadow_completion_tokens,
                shadow_latency_ms,
                requests: at("requests", counter),
                failovers: at("failovers", counter),
                exhausted: at("exhausted", counter),
                hedged: at("hedged", counter),
                hedge_wins: at("hedge_wins", counter),
                stream_idle_timeouts: at("stream_idle_timeouts", counter),
                resumed_streams: if pool.retry.resume_streams { at("resumed_streams", counter) } else { None },
                healthy_members: if serves.gauges { at("healthy_members", StatKind::Gauge) } else { None },
                members: Vec::with_capacity(pool.members.len()),
            };
            for m in &pool.members {
                let labels = [("pool", pool.name.as_str()), ("member", m.id.as_str())];
                let mut counter =
                    |name: &str| define(&labelled(&format!("switchboard.member.{name}"), &labels), counter);
                stats.members.push(MemberStats {
                    requests: counter("requests"),
                    attempts: counter("attempts"),
                    failures: counter("failures"),
                    failovers: counter("failovers"),
                    ejections: counter("ejections"),
                    restorations: counter("restorations"),
                    cut_answers: counter("cut_answers"),
                    canary_rollbacks: if m.canary.is_some() { counter("canary_rollbacks") } else { None },
                });
            }
            pools.push(stats);
        }
        let local_errors = ErrorCode::ALL
            .iter()
            .map(|code| define(&labelled("switchboard.local_errors", &[("code", code.as_str())]), StatKind::Counter))
            .collect();
        let mut tenants = Vec::new();
        for t in config.tenants.iter().flatten() {
            let tenant = [("tenant", t.name.as_str())];
            let mut at = |name: &str, kind| define(&labelled(&format!("switchboard.tenant.{name}"), &tenant), kind);
            let budget = serves.gauges && t.budget.is_some();
            tenants.push(TenantStats {
                rate_limited: at("rate_limited", StatKind::Counter),
                budget_refused: at("budget_refused", StatKind::Counter),
                budget_spent: if budget { at("budget_spent_micro_usd", StatKind::Gauge) } else { None },
                budget_limit: if budget { at("budget_limit_micro_usd", StatKind::Gauge) } else { None },
            });
        }
        Catalog { pools, local_errors, tenants }
    }
}

/// A request-end stat family (see `crate::observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Every input token, cache reads and writes included (OpenTelemetry's `input`).
    InputTokens,
    OutputTokens,
    /// Input tokens read from and written to the provider's prompt cache: parts
    /// of `InputTokens`, never added to it (`gen_ai.token.type` `cache_read`,
    /// `cache_write`, after the GenAI conventions' cache token counters).
    CacheReadTokens,
    CacheWriteTokens,
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
pub fn stat_key(family: Family, labels: Labels) -> u64 {
    let code = match family {
        Family::InputTokens => 1,
        Family::OutputTokens => 2,
        Family::CostMicroUsd => 3,
        Family::UsageEstimated => 4,
        Family::FirstToken => 6,
        Family::CacheReadTokens => 7,
        Family::CacheWriteTokens => 8,
        Family::Requests(outcome) => 16 + outcome as u64,
        Family::Duration(outcome) => 32 + outcome as u64,
    };
    let index = |i: usize| if i == Labels::NONE { 0xffff } else { (i as u64) & 0xffff };
    code | index(labels.pool) << 16 | index(labels.member) << 32 | index(labels.tenant) << 48
}

/// How a request that reached a member can end, as the duration's `error.type`
/// (`quota`, a tenant's budget, is refused before any member).
pub const DURATION_OUTCOMES: [Outcome; 6] = [
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
                        Family::CacheReadTokens,
                        Family::CacheWriteTokens,
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

/// A request-end stat's name and kind.
pub fn request_stat_name(config: &Config, family: Family, labels: Labels) -> (String, StatKind) {
    let pool = config.pool_at(labels.pool).map_or(NO_LABEL, |p| p.name.as_str());
    let member = config.member(MemberRef::new(labels.pool, labels.member)).map_or(NO_LABEL, |m| m.id.as_str());
    let tenant = config.tenants.as_ref().and_then(|t| t.get(labels.tenant)).map_or(NO_LABEL, |t| t.name.as_str());
    let counter = StatKind::Counter;
    let (kind, base, last) = match family {
        Family::InputTokens => (counter, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "input"))),
        Family::OutputTokens => (counter, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "output"))),
        Family::CacheReadTokens => (counter, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "cache_read"))),
        Family::CacheWriteTokens => (counter, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "cache_write"))),
        Family::Requests(outcome) => (counter, observe::REQUESTS, Some(("outcome", outcome.as_str()))),
        Family::CostMicroUsd => (counter, observe::COST, None),
        Family::UsageEstimated => (counter, observe::USAGE_ESTIMATED, None),
        // The spec's `error.type`: set only when the request did not end well.
        Family::Duration(outcome) => (
            StatKind::Histogram,
            observe::REQUEST_DURATION,
            (outcome != Outcome::Ok).then(|| ("error.type", outcome.as_str())),
        ),
        Family::FirstToken => (StatKind::Histogram, observe::TIME_TO_FIRST_TOKEN, None),
    };
    (request_stat(base, pool, member, tenant, last), kind)
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
                    for f in [
                        Family::InputTokens,
                        Family::OutputTokens,
                        Family::CacheReadTokens,
                        Family::CacheWriteTokens,
                        Family::CostMicroUsd,
                        Family::FirstToken,
                    ] {
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

    #[test]
    fn the_catalog_names_each_pool_member_and_tenant_stat_once_and_only_what_exists() {
        let config = Config::parse(sample_config().as_bytes(), &ENV).unwrap();
        let mut names = Vec::new();
        let catalog = Catalog::define(&config, HostServes { gauges: true, shadow: true }, |name, kind| {
            names.push((name.to_string(), kind));
            Some(names.len())
        });
        assert_eq!(catalog.pools.len(), config.pools.len());
        assert_eq!(catalog.local_errors.len(), ErrorCode::ALL.len());
        let first = &config.pools[0];
        let requests = format!("switchboard.pool.requests;pool={}", first.name);
        assert!(names.contains(&(requests, StatKind::Counter)));
        let member = format!("switchboard.member.attempts;pool={};member={}", first.name, first.members[0].id);
        assert!(names.contains(&(member, StatKind::Counter)));
        // No shadow, canary or resumed streams configured: none of their stats.
        assert!(!names.iter().any(|(n, _)| n.contains("shadow_") || n.contains("canary_") || n.contains("resumed_")));
        let mut unique: Vec<&String> = names.iter().map(|(n, _)| n).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}
