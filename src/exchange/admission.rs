//! What the gateway decides about a request before routing it, from its
//! body alone: what a tenant's admission reserves, how a refusal reads, and
//! a feedback body.

use crate::api::request::ParsedRequest;
use crate::api::usage::Tokens;
use crate::api::{ApiError, ErrorCode};
use crate::tenant::limits::Refusal;

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
