//! What the gateway decides about a tenant's request: what its admission
//! asks of the tenant's store (the host's shared data, or a fleet's state
//! service) and holds, how a refusal reads, and what the request's end
//! settles; also a feedback body.

use crate::api::request::ParsedRequest;
use crate::api::usage::Tokens;
use crate::api::{ApiError, ErrorCode};
use crate::config::{Config, Member};
use crate::routing::Plan;
use crate::tenant::limits::{rate_headers, Refusal, Settlement, TenantState, Window, WINDOW_S};
use crate::tenant::reserve::{Prices, Reservation};

use super::{Exchange, Shared, Step};

/// What a tenant's admission asks of its store: `reserve` tokens in this
/// minute's window, and the budget's worst case (`budget.micro_usd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantAsk {
    pub index: usize,
    pub reserve: u64,
    pub budget: Reservation,
}

/// The store's verdict: admitted (`Some`: with the state it now holds;
/// `None`: the store could not be written, admitted without holding), or refused.
pub type Verdict = Result<Option<TenantState>, Refusal>;

fn prices(m: &Member) -> Prices {
    m.prices()
}

/// What a request `plan` routes holds against its tenant's budget: the
/// dearest worst case among the members it may try (see `tenant::reserve`).
pub fn budget_reservation(config: &Config, plan: &Plan, prompt_tokens: u64, requested: Option<u32>) -> Reservation {
    Reservation::dearest(plan.members_it_may_try(config).map(prices), prompt_tokens, requested)
}

impl Exchange {
    /// The calling tenant may use what it asked for (its allow list), and
    /// what its limits' store must decide: budget, then requests in flight,
    /// then this minute's requests and tokens (reserved now, corrected with
    /// the real usage at the end). The budget holds the worst case on the
    /// dearest member `plan` may try. `Ok(None)`: no tenant, or one without limits.
    pub fn tenant_ask(
        &mut self,
        sh: &dyn Shared,
        parsed: &ParsedRequest<'_>,
        plan: &Plan,
        body_len: usize,
    ) -> Result<Option<TenantAsk>, ApiError> {
        let config = sh.config();
        let Some(admission) = self.tenant.as_mut() else { return Ok(None) };
        let Some(tenant) = config.tenants.as_ref().and_then(|t| t.get(admission.index)) else { return Ok(None) };
        if let Some(name) = std::iter::once(&parsed.target).chain(&parsed.fallback).find(|n| !tenant.allows(n)) {
            return Err(crate::tenant::not_allowed(tenant, name));
        }
        if !tenant.has_limits() {
            return Ok(None);
        }
        let Tokens { prompt: prompt_estimate, completion: expected_output, .. } = expected_tokens(parsed, body_len);
        let budget = match &tenant.budget {
            Some(_) => {
                let prompt = u64::from(parsed.content().prompt_tokens).max(prompt_estimate);
                budget_reservation(config, plan, prompt, parsed.max_output_tokens)
            }
            None => Reservation::default(),
        };
        // Nothing held until the store says so (it fails open when it cannot be written).
        admission.budget = Reservation { micro_usd: 0, ..budget };
        Ok(Some(TenantAsk { index: admission.index, reserve: prompt_estimate.saturating_add(expected_output), budget }))
    }

    /// The store's `verdict` on `ask`: what the admission holds and the rate
    /// headers the client gets, or the refusal (counted) as the client reads it.
    pub fn tenant_verdict(
        &mut self,
        sh: &dyn Shared,
        ask: &TenantAsk,
        verdict: Verdict,
        now: u64,
    ) -> Result<(), ApiError> {
        let Some(tenant) = sh.config().tenants.as_ref().and_then(|t| t.get(ask.index)) else { return Ok(()) };
        let Some(admission) = self.tenant.as_mut() else { return Ok(()) };
        let now_s = now / 1000;
        match verdict {
            Ok(state) => {
                if let Some(state) = state {
                    admission.budget = ask.budget;
                    admission.parallel_held = tenant.max_parallel.is_some();
                    admission.reserved = ask.reserve;
                    admission.window_start_s = state.window.start_s;
                    admission.rate_headers = rate_headers(tenant.rpm, tenant.tpm, &state.window, now_s);
                }
                if tenant.tpm.is_some() || tenant.budget.is_some() {
                    self.answer.tail = Some(crate::api::usage::Tail::default());
                }
                Ok(())
            }
            Err(r) => {
                admission.lease = None;
                if let Refusal::Requests { retry_after_s } | Refusal::Tokens { retry_after_s } = r {
                    // What was exhausted reads 0 remaining, until the window turns.
                    let full = Window {
                        start_s: (now_s + retry_after_s).saturating_sub(WINDOW_S),
                        requests: if matches!(r, Refusal::Requests { .. }) { tenant.rpm.unwrap_or(0) } else { 0 },
                        tokens: if matches!(r, Refusal::Tokens { .. }) { tenant.tpm.unwrap_or(0) } else { 0 },
                    };
                    admission.rate_headers = rate_headers(tenant.rpm, tenant.tpm, &full, now_s);
                }
                sh.count(super::Count::TenantRefused { tenant: ask.index, budget: matches!(r, Refusal::Budget(_)) });
                Err(refusal_error(tenant, r))
            }
        }
    }

    /// The tenant's request ended: what its store settles (its parallel slot
    /// freed, its token reservation become the real usage, kept as reserved
    /// when the answer reported none; its spend: the serving member's prices
    /// times the usage, else its worst case there). Takes the admission:
    /// `None` when there is none, or nothing to settle without a lease.
    pub fn settlement(&mut self, sh: &dyn Shared) -> Option<(usize, Option<u64>, Settlement)> {
        let admission = self.tenant.take()?;
        let config = sh.config();
        let tenant = config.tenants.as_ref().and_then(|t| t.get(admission.index))?;
        let mut end = Settlement {
            parallel_held: admission.parallel_held,
            budget_reserved_micro_usd: admission.budget.micro_usd,
            ..Settlement::default()
        };
        let usage = self.answer.usage();
        // A stream without usage is charged what was relayed of it (`count_relayed`).
        let relayed = self.answer.stream_end.as_ref().map(|_| self.obs.estimate);
        if tenant.tpm.is_some() || tenant.budget.is_some() {
            match usage.or(relayed) {
                Some(Tokens { prompt, completion, .. }) => {
                    if usage.is_none() {
                        log::info!(
                            "switchboard[{}]: no usage in the stream; tenant {} is charged {prompt} + {completion} tokens relayed",
                            self.request_id,
                            tenant.name,
                        );
                    }
                    end.tokens =
                        Some((admission.window_start_s, admission.reserved, prompt.saturating_add(completion)));
                }
                None => log::info!(
                    "switchboard[{}]: no usage in the answer; tenant {} keeps its estimate of {} tokens",
                    self.request_id,
                    tenant.name,
                    admission.reserved
                ),
            }
        }
        let served = self.plan.as_ref().and_then(|p| p.attempts.last()).filter(|a| (200..300).contains(&a.status));
        if let (Some(served), Some(_)) = (served, &tenant.budget) {
            let member = config.member(served.at());
            end.spend_micro_usd = member.map_or(0, |m| admission.budget.spent_on(prices(m), usage.or(relayed)));
        }
        if admission.lease.is_none() && end == Settlement::default() {
            return None;
        }
        Some((admission.index, admission.lease, end))
    }
}

/// Tokens to reserve for a request before it runs: its prompt (about 4 bytes
/// a token) and the output it asked for (`max_completion_tokens`,
/// `max_tokens`), else `DEFAULT_EXPECTED_OUTPUT`.
pub fn expected_tokens(parsed: &ParsedRequest<'_>, body_len: usize) -> Tokens {
    const DEFAULT_EXPECTED_OUTPUT: u64 = 1024;
    let requested = parsed.max_output_tokens.map(u64::from);
    Tokens::new(body_len as u64 / 4, requested.unwrap_or(DEFAULT_EXPECTED_OUTPUT))
}

/// A tenant's refusal as its client reads it: a 429 naming the limit, with when to retry.
pub fn refusal_error(tenant: &crate::tenant::Tenant, refusal: Refusal) -> ApiError {
    let name = &tenant.name;
    match refusal {
        Refusal::Requests { retry_after_s } => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!("Rate limit reached for tenant `{name}`: {} requests per minute.", tenant.rpm.unwrap_or(0)),
        )
        .with_retry_after(retry_after_s),
        Refusal::Tokens { retry_after_s } => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!("Rate limit reached for tenant `{name}`: {} tokens per minute.", tenant.tpm.unwrap_or(0)),
        )
        .with_retry_after(retry_after_s),
        Refusal::Parallel => ApiError::new(
            429,
            ErrorCode::RateLimitExceeded,
            format!(
                "Tenant `{name}` has {} requests in flight, its max_parallel; retry when one ends.",
                tenant.max_parallel.unwrap_or(0)
            ),
        )
        .with_retry_after(1),
        Refusal::Budget(short) => {
            ApiError::new(429, ErrorCode::InsufficientQuota, short.message(name)).with_retry_after(short.retry_after_s)
        }
    }
}

/// A feedback body: the request id and a score in [0, 1].
pub fn feedback_body(body: &[u8]) -> Result<(String, f64), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(ErrorCode::InvalidJson, format!("Feedback must be a JSON object: {e}."))
    })?;
    let field = |name: &'static str| {
        value.get(name).ok_or_else(|| {
            ApiError::invalid_request(
                ErrorCode::MissingRequiredParameter,
                format!("Missing required parameter: `{name}`."),
            )
            .with_param(name)
        })
    };
    let request_id = field("request_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(ErrorCode::InvalidType, "`request_id` must be a non-empty string.")
                .with_param("request_id")
        })?
        .to_string();
    let score = field("score")?.as_f64().ok_or_else(|| {
        ApiError::invalid_request(ErrorCode::InvalidType, "`score` must be a number.").with_param("score")
    })?;
    if !(0.0..=1.0).contains(&score) {
        return Err(
            ApiError::invalid_request(ErrorCode::InvalidValue, "`score` must be between 0 and 1.").with_param("score")
        );
    }
    Ok((request_id, score))
}

/// How a score was taken by the store of remembered answers (`L`: the
/// label a weak-pool answer's score becomes, the store's own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feedback<L> {
    /// Accepted; a label when it scored a weak-pool answer.
    Accepted(Option<L>),
    Unknown,
    /// Not found yet: the host may wait for other workers to publish, then ask again.
    NotYet,
    AlreadyScored,
    /// The owner gave this router `limit` scores this minute already.
    TooMany {
        limit: u32,
        retry_after_s: u64,
    },
}

impl Exchange {
    /// The answer to `POST /v1/feedback` for `request_id` once the store
    /// took its score as `taken`: 204, or 404/409/429 in OpenAI's error shape
    /// (`ttl_ms`: how long an answer can be scored).
    pub fn feedback_reply<L>(&mut self, sh: &dyn Shared, request_id: &str, taken: &Feedback<L>, ttl_ms: u64) -> Step {
        let error = match taken {
            Feedback::Accepted(_) => {
                let headers = vec![("x-switchboard-request-id", self.request_id.clone())];
                return self.reply(sh, 204, headers, Vec::new());
            }
            Feedback::Unknown | Feedback::NotYet => ApiError::new(
                404,
                ErrorCode::RequestNotFound,
                format!(
                    "No recent answer of yours has the feedback id `{request_id}` (x-switchboard-feedback-id; kept for {} minutes).",
                    ttl_ms / 60_000
                ),
            )
            .with_param("request_id"),
            Feedback::AlreadyScored => {
                ApiError::new(409, ErrorCode::FeedbackAlreadyRecorded, format!("Request `{request_id}` was already scored."))
                    .with_param("request_id")
            }
            Feedback::TooMany { limit, retry_after_s } => ApiError::new(
                429,
                ErrorCode::RateLimitExceeded,
                format!("Feedback limit reached: {limit} scores per minute for this router."),
            )
            .with_retry_after(*retry_after_s),
        };
        self.error_reply(sh, &error)
    }
}
