//! OpenAI and OpenAI-wire-compatible providers (including Azure OpenAI):
//! the body only has its `model` replaced, and a stream asks for its usage
//! (`stream_options.include_usage`) so that every stream can be accounted.

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::config::{Credentials, Member, Provider, ProviderKind};

use super::chat::effort_of;
use super::UpstreamRequest;
use crate::api::model_rules::completion_tokens_only;
use crate::api::params::named;

pub(super) fn build(
    provider: &Provider,
    member: &Member,
    endpoint: Endpoint,
    request: &ParsedRequest<'_>,
) -> UpstreamRequest {
    let path = if provider.kind == ProviderKind::Azure {
        format!(
            "{}/openai/deployments/{}{}?api-version={}",
            provider.base_path,
            member.deployment,
            endpoint.suffix(),
            provider.api_version
        )
    } else {
        format!("{}{}", provider.base_path, endpoint.suffix())
    };
    // Azure refuses `stream_options` before api-version 2024-08-01(-preview).
    let ask_usage = matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
        && (provider.kind != ProviderKind::Azure || provider.api_version.as_str() >= "2024-08-01");
    // What routing let this member drop (the parameters its kind cannot take).
    let mut drop = request.params & member.refuses;
    // Anthropic's `thinking` (a Messages door's) is OpenAI's `reasoning_effort`.
    let mut add = Vec::new();
    let thinking = const { named("thinking") };
    if request.params & thinking != 0 && provider.kind != ProviderKind::OpenaiCompatible {
        drop |= thinking;
        let budget = request.field("thinking").and_then(|t| serde_json::from_str::<serde_json::Value>(t.get()).ok());
        let budget = budget.and_then(|t| t.get("budget_tokens")?.as_u64());
        if let (Some(b), None) = (budget, request.field("reasoning_effort")) {
            add = format!(",\"reasoning_effort\":\"{}\"", effort_of(b.min(u64::from(u32::MAX)) as u32)).into_bytes();
        }
    }
    // OpenAI's reasoning models refuse `max_tokens` for `max_completion_tokens`.
    const MAX_TOKENS: u64 = named("max_tokens");
    if let Some(raw) = request.field("max_tokens").filter(|_| completion_tokens_only(provider.kind, &member.model)) {
        drop |= MAX_TOKENS;
        if request.field("max_completion_tokens").is_none() {
            add.extend_from_slice(b",\"max_completion_tokens\":");
            add.extend_from_slice(raw.get().as_bytes());
        }
    }
    const CACHE_CONTROL: u64 = named("cache_control");
    if provider.kind != ProviderKind::OpenaiCompatible && request.params & CACHE_CONTROL != 0 {
        drop |= CACHE_CONTROL;
    }
    if provider.kind != ProviderKind::OpenaiCompatible && request.cache_marks {
        without_cache_marks(request, &mut drop, &mut add);
    }
    UpstreamRequest {
        path,
        authority: provider.host.clone(),
        headers: auth(provider),
        body: request.openai_body_without(&member.model, ask_usage, drop, &add),
    }
}

/// OpenAI and Azure cache prompts by themselves and know no `cache_control`:
/// the marks on content parts, messages and tools are taken out (a no-op for
/// the answer). `openai_compatible` servers get them: some pass them on to
/// Anthropic models.
fn without_cache_marks(request: &ParsedRequest<'_>, drop: &mut u64, add: &mut Vec<u8>) {
    for name in ["messages", "tools"] {
        let Some(raw) = request.field(name).filter(|raw| raw.get().contains("\"cache_control\"")) else { continue };
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(raw.get()) else { continue };
        strip(&mut value);
        *drop |= named(name);
        for piece in [",\"", name, "\":", &super::json_text(&value)] {
            add.extend_from_slice(piece.as_bytes());
        }
    }
}

/// The `cache_control` marks of a list of items, parts and tools taken out
/// (the lists they hold included, not the objects: a tool's schema keeps its own).
fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        serde_json::Value::Object(map) => {
            map.remove("cache_control");
            map.values_mut().filter(|v| v.is_array()).for_each(strip);
        }
        _ => {}
    }
}

/// `POST /responses` as the client sent it, `model` replaced: OpenAI's
/// `{base_path}/responses`, or Azure's v1 API (`/openai/v1/responses`, the
/// deployment as the model, no `api-version`).
pub(super) fn responses(provider: &Provider, member: &Member, request: &ParsedRequest<'_>) -> UpstreamRequest {
    let (path, model) = if provider.kind == ProviderKind::Azure {
        (format!("{}/openai/v1/responses", provider.base_path), &member.deployment)
    } else {
        (format!("{}/responses", provider.base_path), &member.model)
    };
    let mut body = request.openai_body(model);
    // Cache marks (the Responses door's, for Anthropic members) mean nothing to
    // OpenAI, which caches prefixes by itself and refuses the unknown field.
    if request.cache_marks {
        if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(&body) {
            map.remove("cache_control");
            for name in ["input", "tools"] {
                map.get_mut(name).into_iter().for_each(strip);
            }
            body = super::json_text(&serde_json::Value::Object(map)).into_bytes();
        }
    }
    UpstreamRequest { path, authority: provider.host.clone(), headers: auth(provider), body }
}

/// A follow-up on a stored response (`rest`: the response id and what follows
/// it in the client's path, query included), to the provider that holds it.
/// No body: the client's, if any, passes as it is.
pub fn responses_followup(provider: &Provider, rest: &str) -> UpstreamRequest {
    let path = if provider.kind == ProviderKind::Azure {
        format!("{}/openai/v1/responses/{rest}", provider.base_path)
    } else {
        format!("{}/responses/{rest}", provider.base_path)
    };
    UpstreamRequest { path, authority: provider.host.clone(), headers: auth(provider), body: Vec::new() }
}

fn auth(provider: &Provider) -> Vec<(&'static str, String)> {
    match &provider.credentials {
        Credentials::ApiKey(key) if provider.kind == ProviderKind::Azure => vec![("api-key", key.expose().to_string())],
        Credentials::ApiKey(key) => vec![("authorization", format!("Bearer {}", key.expose()))],
        _ => Vec::new(),
    }
}
