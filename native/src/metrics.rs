//! The filter's counters as Envoy stats, under the names the wasm build
//! uses (`switchboard.pool.requests;pool=...`), defined on the filter
//! configuration when it loads and counted from any worker.

use std::collections::HashMap;

use switchboard::api::ErrorCode;
use switchboard::config::{Config, MemberRef};
use switchboard::observe::{self, labelled, request_stat, Outcome, NO_LABEL};

use crate::abi::{self, EnvoyFilterConfig};

#[derive(Debug, Default, Clone, Copy)]
pub struct MemberMetrics {
    pub requests: Option<usize>,
    pub attempts: Option<usize>,
    pub failures: Option<usize>,
    pub failovers: Option<usize>,
    pub ejections: Option<usize>,
    pub restorations: Option<usize>,
    pub cut_answers: Option<usize>,
    pub canary_rollbacks: Option<usize>,
}

#[derive(Debug, Default, Clone)]
pub struct PoolMetrics {
    pub requests: Option<usize>,
    pub failovers: Option<usize>,
    pub exhausted: Option<usize>,
    pub hedged: Option<usize>,
    pub hedge_wins: Option<usize>,
    pub stream_idle_timeouts: Option<usize>,
    pub resumed_streams: Option<usize>,
    pub members: Vec<MemberMetrics>,
}

/// Counter ids on one filter configuration (`None`: Envoy refused the name).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Envoy's configuration object, as an address: it outlives every filter of the configuration.
    config: usize,
    pools: Vec<PoolMetrics>,
    /// By `ErrorCode as usize`.
    local_errors: Vec<Option<usize>>,
    /// Per tenant (configuration order): requests refused by its limits, and by its budget.
    tenant_refusals: Vec<(Option<usize>, Option<usize>)>,
    /// Request-end stats by `stat_key`, every series a request can reach, defined at load.
    request_stats: HashMap<u64, usize>,
}

/// A request-end stat family (as `host::metrics::Family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    InputTokens,
    OutputTokens,
    Requests(Outcome),
    CostMicroUsd,
    UsageEstimated,
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

/// How a request that reached a member can end, as the duration's `error.type`.
const DURATION_OUTCOMES: [Outcome; 6] = [
    Outcome::Ok,
    Outcome::ClientError,
    Outcome::RateLimited,
    Outcome::UpstreamError,
    Outcome::Exhausted,
    Outcome::Cancelled,
];

/// Every request-end series a request can reach, defined at 0 on load (as `host::metrics::request_series`).
fn request_series(config: &Config) -> Vec<(Family, Labels)> {
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

/// The stat's name and whether it is a histogram.
fn request_stat_name(config: &Config, family: Family, labels: Labels) -> (String, bool) {
    let pool = config.pool_at(labels.pool).map_or(NO_LABEL, |p| p.name.as_str());
    let member = config.member(MemberRef::new(labels.pool, labels.member)).map_or(NO_LABEL, |m| m.id.as_str());
    let tenant = config.tenants.as_ref().and_then(|t| t.get(labels.tenant)).map_or(NO_LABEL, |t| t.name.as_str());
    let (histogram, base, last) = match family {
        Family::InputTokens => (false, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "input"))),
        Family::OutputTokens => (false, observe::TOKEN_USAGE, Some(("gen_ai.token.type", "output"))),
        Family::Requests(outcome) => (false, observe::REQUESTS, Some(("outcome", outcome.as_str()))),
        Family::CostMicroUsd => (false, observe::COST, None),
        Family::UsageEstimated => (false, observe::USAGE_ESTIMATED, None),
        Family::Duration(outcome) => {
            (true, observe::REQUEST_DURATION, (outcome != Outcome::Ok).then(|| ("error.type", outcome.as_str())))
        }
        Family::FirstToken => (true, observe::TIME_TO_FIRST_TOKEN, None),
    };
    (request_stat(base, pool, member, tenant, last), histogram)
}

impl Metrics {
    pub fn define(envoy_config: EnvoyFilterConfig, config: &Config) -> Metrics {
        let counter = |name: String| abi::define_metric(envoy_config, &name, false);
        let pools = config
            .pools
            .iter()
            .map(|pool| {
                let p = [("pool", pool.name.as_str())];
                let counter = |name: &str| counter(labelled(&format!("switchboard.pool.{name}"), &p));
                PoolMetrics {
                    requests: counter("requests"),
                    failovers: counter("failovers"),
                    exhausted: counter("exhausted"),
                    hedged: counter("hedged"),
                    hedge_wins: counter("hedge_wins"),
                    stream_idle_timeouts: counter("stream_idle_timeouts"),
                    resumed_streams: pool.retry.resume_streams.then(|| counter("resumed_streams")).flatten(),
                    members: pool
                        .members
                        .iter()
                        .map(|m| {
                            let labels = [("pool", pool.name.as_str()), ("member", m.id.as_str())];
                            let counter = |name: &str| {
                                abi::define_metric(
                                    envoy_config,
                                    &labelled(&format!("switchboard.member.{name}"), &labels),
                                    false,
                                )
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
        let request_stats = request_series(config)
            .into_iter()
            .filter_map(|(family, labels)| {
                let (name, histogram) = request_stat_name(config, family, labels);
                Some((stat_key(family, labels), abi::define_metric(envoy_config, &name, histogram)?))
            })
            .collect();
        Metrics { config: envoy_config as usize, pools, local_errors, tenant_refusals, request_stats }
    }

    fn inc(&self, id: Option<usize>) {
        if let Some(id) = id {
            abi::config_increment_counter(self.config as EnvoyFilterConfig, id, 1);
        }
    }

    pub fn pool(&self, pool: usize, which: impl Fn(&PoolMetrics) -> Option<usize>) {
        self.inc(self.pools.get(pool).and_then(which));
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
        let ids = self.tenant_refusals.get(tenant);
        self.inc(ids.and_then(|(limit, spent)| if budget { *spent } else { *limit }));
    }

    pub fn local_error(&self, code: ErrorCode) {
        self.inc(self.local_errors.get(code as usize).copied().flatten());
    }
}
