//! The filter's counters as Envoy stats, under the names the wasm build
//! uses (`switchboard.pool.requests;pool=...`), defined on the filter
//! configuration when it loads and counted from any worker.

use switchboard::api::ErrorCode;
use switchboard::config::{Config, MemberRef};
use switchboard::observe::labelled;

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
        Metrics { config: envoy_config as usize, pools, local_errors }
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

    pub fn local_error(&self, code: ErrorCode) {
        self.inc(self.local_errors.get(code as usize).copied().flatten());
    }
}
