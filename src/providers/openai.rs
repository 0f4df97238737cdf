//! OpenAI and OpenAI-wire-compatible providers (including Azure OpenAI):
//! the body only has its `model` replaced, and a stream asks for its usage
//! (`stream_options.include_usage`) so that every stream can be accounted.

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::config::{Credentials, Member, Provider, ProviderKind};

use super::UpstreamRequest;

pub(super) fn build(
    provider: &Provider,
    member: &Member,
    endpoint: Endpoint,
    request: &ParsedRequest<'_>,
) -> UpstreamRequest {
    let mut headers = Vec::with_capacity(1);
    let path = if provider.kind == ProviderKind::Azure {
        if let Credentials::ApiKey(key) = &provider.credentials {
            headers.push(("api-key", key.expose().to_string()));
        }
        format!(
            "{}/openai/deployments/{}{}?api-version={}",
            provider.base_path,
            member.deployment,
            endpoint.suffix(),
            provider.api_version
        )
    } else {
        if let Credentials::ApiKey(key) = &provider.credentials {
            headers.push(("authorization", format!("Bearer {}", key.expose())));
        }
        format!("{}{}", provider.base_path, endpoint.suffix())
    };
    // Azure refuses `stream_options` before api-version 2024-08-01(-preview).
    let ask_usage = matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
        && (provider.kind != ProviderKind::Azure || provider.api_version.as_str() >= "2024-08-01");
    UpstreamRequest {
        path,
        authority: provider.host.clone(),
        headers,
        body: request.openai_body_for(&member.model, ask_usage),
    }
}
