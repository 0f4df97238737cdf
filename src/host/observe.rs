//! A request's end, reported once (from `on_log`): its call-log line as
//! filter state (`wasm.switchboard.call`, which Envoy's access log prints with
//! `%FILTER_STATE(wasm.switchboard.call:PLAIN)%`) and its request-end stats.

use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use crate::config::MemberRef;
use crate::observe::{AttemptLog, CallRecord, Outcome};
use crate::routing::Plan;

use super::abi;
use super::metrics::{Family, Labels};
use super::runtime::Runtime;

/// The filter-state name of the call-log line (Envoy prefixes `wasm.`).
const CALL_LOG_PROPERTY: &str = "switchboard.call";

pub use crate::exchange::Observed;

/// The rest of what the report needs, from the filter.
pub struct End<'a> {
    pub request_id: &'a str,
    pub tenant: Option<usize>,
    pub plan: Option<&'a Plan>,
    pub stream: bool,
    /// The tokens the answer reported.
    pub usage: Option<Tokens>,
    pub now_ms: u64,
}

/// The cost of `tokens` at `member`'s prices; `None` when it has none.
pub fn member_cost(rt: &Runtime, member: MemberRef, tokens: Tokens) -> Option<u64> {
    let prices = rt.config.member(member)?.prices();
    prices.priced().then(|| prices.cost(tokens))
}

/// Writes the call-log line and records the request-end stats.
pub fn report(rt: &Runtime, obs: &Observed, end: &End<'_>) {
    let since_start = |t: u64| t.saturating_sub(obs.start_ms);
    let served = obs.attempts.last().filter(|(_, status, _)| (200..300).contains(status)).map(|(m, _, _)| *m);
    let shown = served.or(obs.attempts.last().map(|(m, _, _)| *m));
    let tokens = served.map(|_| end.usage.unwrap_or(obs.estimate));
    let usage_estimated = end.usage.is_none();
    let cost = served.zip(tokens).and_then(|(m, t)| member_cost(rt, m, t));
    let config = &rt.config;
    let pool = shown.map(|m| m.pool).or(end.plan.map(Plan::primary_pool));
    let (router, rule) = end.plan.and_then(|p| p.router_headers(config)).unzip();
    let first_byte = if end.stream && obs.first_event_ms > 0 { obs.first_event_ms } else { obs.first_byte_ms };
    let duration_ms = since_start(end.now_ms);
    // Building the line costs about 2 us: only when an access log prints it.
    let record = config.call_log.then(|| CallRecord {
        start_ms: obs.start_ms,
        end_ms: end.now_ms,
        request_id: end.request_id,
        tenant: end.tenant.and_then(|t| Some(config.tenants.as_ref()?.get(t)?.name.as_str())),
        model: obs.model.as_deref(),
        router,
        rule,
        pool: pool.and_then(|p| Some(config.pool_at(p)?.name.as_str())),
        member: shown.and_then(|m| Some(config.member(m)?.id.as_str())),
        attempts: obs
            .attempts
            .iter()
            .map(|(m, status, ms)| AttemptLog { member: rt.member_id(*m), status: *status, ms: *ms })
            .collect(),
        status: obs.status,
        cut: obs.cut,
        error: obs.error.map(ErrorCode::as_str),
        limits: obs.limits,
        stream: end.stream,
        tokens,
        usage_estimated,
        cost_micro_usd: cost,
        first_byte_ms: (first_byte > 0).then(|| since_start(first_byte)),
        duration_ms,
        feedback_id: obs.feedback_id.as_deref(),
        prompt: obs.prompt.as_deref(),
        feedback: obs.feedback.as_ref().map(|(id, score)| (id.as_str(), score.as_str())),
    });
    if let Err(status) = record.map_or(Ok(()), |r| abi::set_property(CALL_LOG_PROPERTY, &r.json())) {
        log::debug!("switchboard[{}]: set_property failed (status {status})", end.request_id);
    }

    let metrics = &rt.metrics;
    let labels = Labels {
        pool: pool.unwrap_or(Labels::NONE),
        member: shown.map_or(Labels::NONE, |m| m.member),
        tenant: end.tenant.unwrap_or(Labels::NONE),
    };
    let outcome = Outcome::of(obs.status, obs.error, obs.exhausted);
    metrics.count(config, Family::Requests(outcome), labels, 1);
    if let Some(t) = tokens {
        metrics.count(config, Family::InputTokens, labels, t.prompt);
        metrics.count(config, Family::OutputTokens, labels, t.completion);
        // Parts of the input above (not added to it); most answers have none.
        for (family, n) in [(Family::CacheReadTokens, t.cached), (Family::CacheWriteTokens, t.cache_write)] {
            if let Some(n) = n.filter(|n| *n > 0) {
                metrics.count(config, family, labels, n);
            }
        }
        metrics.count(config, Family::UsageEstimated, labels, u64::from(usage_estimated));
        metrics.count(config, Family::CostMicroUsd, labels, cost.unwrap_or(0));
    }
    if !obs.attempts.is_empty() {
        metrics.record(config, Family::Duration(outcome), labels, duration_ms);
    }
    if served.is_some() && end.stream && obs.first_event_ms > 0 {
        metrics.record(config, Family::FirstToken, labels, since_start(obs.first_event_ms));
    }
}
