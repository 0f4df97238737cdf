//! Provider adapters: how a routed request is presented to each kind of
//! provider (path, host, credentials, body), and how answers come back in
//! OpenAI's shape. No proxy-wasm calls.

mod openai;
mod response;

pub use response::ResponseAdapter;

use crate::api::request::ParsedRequest;
use crate::api::{ApiError, Endpoint};
use crate::config::{Member, Provider, ProviderKind};

/// Client headers that carry credentials. Always removed before a request
/// goes upstream, so a client's own key never reaches a provider.
pub const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// What the gateway needs to know about the request being sent.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext {
    /// Seconds since the Unix epoch (request signing).
    pub now_unix_s: u64,
    /// Default `max_tokens` for providers that require one (the pool's `max_response_tokens`).
    pub max_response_tokens: Option<u32>,
}

/// A request ready for a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub path: String,
    pub authority: String,
    /// Headers to set, after the client's credential headers are removed.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Builds the upstream request for `member` of `provider`.
pub fn build_request(
    provider: &Provider,
    member: &Member,
    endpoint: Endpoint,
    request: &ParsedRequest<'_>,
    ctx: &BuildContext,
) -> Result<UpstreamRequest, ApiError> {
    let _ = ctx;
    match provider.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => {
            Ok(openai::build(provider, member, endpoint, request))
        }
        ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Bedrock => Err(ApiError::new(
            501,
            "invalid_request_error",
            "unsupported_provider",
            format!("provider kind {} is not supported yet", provider.kind.as_str()),
        )),
    }
}
