//! Which adapter serves a provider kind, and building the upstream request.

use crate::api::request::ParsedRequest;
use crate::api::ErrorCode;
use crate::api::{ApiError, Endpoint};
use crate::config::{Member, Provider, ProviderKind};

use super::adapter::Adapter;
use super::anthropic::{self, Anthropic};
use super::bedrock::Bedrock;
use super::chat;
use super::gemini::Gemini;
use super::openai;
use super::upstream::{BuildContext, UpstreamRequest};

/// The adapter of a translated kind; `None` for the OpenAI-wire kinds,
/// whose requests and answers pass through.
pub(super) fn translated(kind: ProviderKind) -> Option<&'static dyn Adapter> {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => None,
        ProviderKind::Anthropic => Some(&Anthropic),
        ProviderKind::Gemini => Some(&Gemini),
        ProviderKind::Bedrock => Some(&Bedrock),
    }
}

/// A client API some provider kinds serve as they are: a request in it is
/// passed through to them with only `model` rewritten, and their answer
/// comes back untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeApi {
    /// Anthropic's Messages API, native to `anthropic`.
    Messages,
    /// OpenAI's Responses API, native to `openai` and `azure`.
    Responses,
}

impl NativeApi {
    pub fn served_by(self, kind: ProviderKind) -> bool {
        match self {
            NativeApi::Messages => kind == ProviderKind::Anthropic,
            NativeApi::Responses => matches!(kind, ProviderKind::Openai | ProviderKind::Azure),
        }
    }

    /// The kinds serving it, as `api::params::kind_bit`s.
    pub fn kind_bits(self) -> u8 {
        use crate::api::params::kind_bit;
        match self {
            NativeApi::Messages => kind_bit(ProviderKind::Anthropic),
            NativeApi::Responses => kind_bit(ProviderKind::Openai) | kind_bit(ProviderKind::Azure),
        }
    }

    /// The kinds serving it, as a 400 names them.
    pub fn kinds(self) -> &'static str {
        match self {
            NativeApi::Messages => "anthropic",
            NativeApi::Responses => "openai or azure",
        }
    }

    /// Client headers forwarded besides the common allow-list (feature flags of this API).
    pub fn forwarded_headers(self) -> &'static [&'static str] {
        match self {
            NativeApi::Messages => &["anthropic-beta"],
            NativeApi::Responses => &[],
        }
    }
}

/// The pass-through request of a client `body` in `api` to `member` of
/// `provider` (whose kind serves `api`): only `model` is rewritten, in place
/// when the body has no gateway field (`fallback`, `provider`, ...; those are dropped).
pub fn build_native(
    provider: &Provider,
    member: &Member,
    api: NativeApi,
    body: &[u8],
) -> Result<UpstreamRequest, ApiError> {
    let request = ParsedRequest::parse_fields(body)?;
    Ok(match api {
        NativeApi::Messages => anthropic::messages_request(provider, request.openai_body(&member.model)),
        NativeApi::Responses => openai::responses(provider, member, &request),
    })
}

/// Builds the upstream request for `member` of `provider`.
pub fn build_request(
    provider: &Provider,
    member: &Member,
    endpoint: Endpoint,
    request: &ParsedRequest<'_>,
    ctx: &BuildContext,
) -> Result<UpstreamRequest, ApiError> {
    let Some(adapter) = translated(provider.kind) else {
        return Ok(openai::build(provider, member, endpoint, request));
    };
    if endpoint != Endpoint::ChatCompletions {
        return Err(ApiError::invalid_request(
            ErrorCode::UnsupportedEndpoint,
            format!(
                "Model `{}` is served by a provider of kind {}, which only supports /v1/chat/completions.",
                member.model,
                provider.kind.as_str()
            ),
        ));
    }
    let chat = chat::parse(request)?;
    adapter.build(provider, member, &chat, ctx)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::providers::test_support::{member, provider};

    fn build(kind: ProviderKind, endpoint: Endpoint, body: &str) -> UpstreamRequest {
        let req = ParsedRequest::parse(body.as_bytes(), endpoint).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        build_request(&provider(kind), &member("gpt-4o"), endpoint, &req, &ctx).unwrap()
    }

    #[test]
    fn openai_paths_and_auth() {
        let up = build(ProviderKind::Openai, Endpoint::ChatCompletions, r#"{"model":"pool","messages":[]}"#);
        assert_eq!(up.path, "/v1/chat/completions");
        assert_eq!(up.headers, vec![("authorization", "Bearer sk-test".to_string())]);
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "gpt-4o");
        let up = build(ProviderKind::Openai, Endpoint::Embeddings, r#"{"model":"pool","input":"x"}"#);
        assert_eq!(up.path, "/v1/embeddings");

        let mut p = provider(ProviderKind::OpenaiCompatible);
        p.credentials = crate::config::Credentials::None;
        let req = ParsedRequest::parse(br#"{"model":"x","prompt":"hi"}"#, Endpoint::Completions).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        let up = build_request(&p, &member("m"), Endpoint::Completions, &req, &ctx).unwrap();
        assert_eq!(up.path, "/v1/completions");
        assert!(up.headers.is_empty());
    }

    #[test]
    fn openai_wire_streams_ask_for_usage() {
        for kind in [ProviderKind::Openai, ProviderKind::OpenaiCompatible, ProviderKind::Azure] {
            for (endpoint, body) in [
                (Endpoint::ChatCompletions, r#"{"model":"pool","stream":true,"messages":[]}"#),
                (Endpoint::Completions, r#"{"model":"pool","stream":true,"prompt":"p"}"#),
            ] {
                let body: serde_json::Value = serde_json::from_slice(&build(kind, endpoint, body).body).unwrap();
                assert_eq!(body["stream_options"], serde_json::json!({"include_usage": true}), "{kind:?} {endpoint:?}");
            }
            let plain = build(kind, Endpoint::ChatCompletions, r#"{"model":"pool","messages":[]}"#);
            assert!(!String::from_utf8(plain.body).unwrap().contains("stream_options"));
        }
        // Older Azure api-versions refuse the field: those streams are estimated instead.
        let mut old_azure = provider(ProviderKind::Azure);
        old_azure.api_version = "2024-06-01".to_string();
        let req =
            ParsedRequest::parse(br#"{"model":"x","stream":true,"messages":[]}"#, Endpoint::ChatCompletions).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        let up = build_request(&old_azure, &member("m"), Endpoint::ChatCompletions, &req, &ctx).unwrap();
        assert!(!String::from_utf8(up.body).unwrap().contains("stream_options"));
    }

    #[test]
    fn azure_paths_for_every_endpoint() {
        for (endpoint, body, suffix) in [
            (Endpoint::ChatCompletions, r#"{"model":"x","messages":[]}"#, "chat/completions"),
            (Endpoint::Completions, r#"{"model":"x","prompt":"p"}"#, "completions"),
            (Endpoint::Embeddings, r#"{"model":"x","input":"i"}"#, "embeddings"),
        ] {
            let up = build(ProviderKind::Azure, endpoint, body);
            assert_eq!(up.path, format!("/openai/deployments/gpt-4o-dep/{suffix}?api-version=2024-10-21"));
            assert_eq!(up.headers, vec![("api-key", "sk-test".to_string())]);
        }
    }

    #[test]
    fn native_requests_keep_the_clients_body_with_only_the_model_rewritten() {
        let body =
            br#"{"model":"pool","max_tokens":9,"thinking":{"type":"enabled","budget_tokens":1024},"messages":[]}"#;
        let up =
            build_native(&provider(ProviderKind::Anthropic), &member("claude"), NativeApi::Messages, body).unwrap();
        assert_eq!(up.path, "/v1/messages");
        assert_eq!(
            up.body,
            br#"{"model":"claude","max_tokens":9,"thinking":{"type":"enabled","budget_tokens":1024},"messages":[]}"#
        );
        assert!(up.headers.contains(&("x-api-key", "sk-test".to_string())));
        assert!(up.headers.iter().any(|(k, _)| *k == "anthropic-version"));

        let body = br#"{"model":"pool","input":"hi","previous_response_id":"resp_1","fallback":["other"]}"#;
        let up = build_native(&provider(ProviderKind::Openai), &member("gpt-4o"), NativeApi::Responses, body).unwrap();
        assert_eq!((up.path.as_str(), up.headers[0].0), ("/v1/responses", "authorization"));
        let sent: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(sent, serde_json::json!({"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1"}));
        let up = build_native(&provider(ProviderKind::Azure), &member("gpt-4o"), NativeApi::Responses, body).unwrap();
        assert_eq!((up.path.as_str(), up.headers[0].0), ("/openai/v1/responses", "api-key"));
        assert!(up.body.starts_with(br#"{"model":"gpt-4o-dep""#), "Azure's v1 API names the deployment");
    }

    #[test]
    fn native_apis_name_the_kinds_serving_them() {
        let kinds =
            [ProviderKind::Openai, ProviderKind::OpenaiCompatible, ProviderKind::Azure, ProviderKind::Anthropic];
        let served = |api: NativeApi| kinds.iter().filter(|k| api.served_by(**k)).count();
        assert_eq!((served(NativeApi::Messages), served(NativeApi::Responses)), (1, 2));
        assert_eq!(NativeApi::Messages.forwarded_headers(), &["anthropic-beta"]);
    }

    #[test]
    fn translated_kinds_refuse_other_endpoints() {
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            for (endpoint, body) in [
                (Endpoint::Embeddings, r#"{"model":"x","input":"i"}"#),
                (Endpoint::Completions, r#"{"model":"x","prompt":"p"}"#),
            ] {
                let req = ParsedRequest::parse(body.as_bytes(), endpoint).unwrap();
                let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
                let e = build_request(&provider(kind), &member("m"), endpoint, &req, &ctx).unwrap_err();
                assert_eq!((e.status, e.code.as_str()), (400, "unsupported_endpoint"), "{kind:?} {endpoint:?}");
                assert!(e.message.contains(kind.as_str()));
            }
        }
    }

    #[test]
    fn bad_messages_are_400_for_translated_kinds() {
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            let req = ParsedRequest::parse(
                br#"{"model":"x","messages":[{"role":"user","content":7}]}"#,
                Endpoint::ChatCompletions,
            )
            .unwrap();
            let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
            let e = build_request(&provider(kind), &member("m"), Endpoint::ChatCompletions, &req, &ctx).unwrap_err();
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn anthropic_betas_reach_anthropic_as_the_header_and_bedrock_claude_as_anthropic_beta() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "anthropic-beta": ["context-1m-2025-08-07", "b2"]}"#;
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        let to = |kind, model| build_request(&provider(kind), &member(model), Endpoint::ChatCompletions, &req, &ctx);
        let up = to(ProviderKind::Anthropic, "claude-sonnet-4").unwrap();
        assert!(up.headers.contains(&("anthropic-beta", "context-1m-2025-08-07,b2".to_string())));
        assert!(!String::from_utf8_lossy(&up.body).contains("anthropic-beta"));
        let up = to(ProviderKind::Bedrock, "us.anthropic.claude-sonnet-4-v1:0").unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            sent["additionalModelRequestFields"]["anthropic_beta"],
            serde_json::json!(["context-1m-2025-08-07", "b2"])
        );
        let e = to(ProviderKind::Bedrock, "amazon.nova-pro-v1:0").unwrap_err();
        assert_eq!((e.code.as_str(), e.param()), ("unsupported_parameter", Some("anthropic-beta")));
    }

    #[test]
    fn a_native_responses_body_reaches_openai_without_cache_marks() {
        let body = br#"{"model": "p", "input": [{"role": "user", "content": [{"type": "input_text", "text": "rules", "cache_control": {"type": "ephemeral"}}]}], "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"cache_control": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}}]}"#;
        for kind in [ProviderKind::Openai, ProviderKind::Azure] {
            let up = build_native(&provider(kind), &member("gpt-4o"), NativeApi::Responses, body).unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
            assert_eq!(sent["input"][0]["content"][0], serde_json::json!({"type": "input_text", "text": "rules"}));
            assert!(sent["tools"][0].get("cache_control").is_none());
            assert!(
                sent["tools"][0]["parameters"]["properties"].get("cache_control").is_some(),
                "a schema's own property stays"
            );
        }
        let plain = br#"{"model": "p", "input": "hi"}"#;
        let up = build_native(&provider(ProviderKind::Openai), &member("gpt-4o"), NativeApi::Responses, plain).unwrap();
        assert_eq!(up.body, br#"{"model": "gpt-4o", "input": "hi"}"#.to_vec(), "untouched without marks");
    }

    /// A chat request with cache breakpoints on a system part, a user part, a
    /// tool message, a tool, and the request itself (automatic caching).
    const CACHED: &str = r#"{"model": "m", "cache_control": {"type": "ephemeral"}, "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}, {"type": "text", "text": "More."}]},
        {"role": "user", "content": [{"type": "text", "text": "Read this.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Now answer."}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": {"type": "ephemeral"}}]}"#;

    fn built(kind: ProviderKind, model: &str, body: &str) -> serde_json::Value {
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        let mut m = member(model);
        m.refuses = crate::api::model_rules::refused_by_model(kind, model);
        serde_json::from_slice(&build_request(&provider(kind), &m, Endpoint::ChatCompletions, &req, &ctx).unwrap().body)
            .unwrap()
    }

    #[test]
    fn openai_reasoning_models_get_max_completion_tokens_for_max_tokens() {
        let asked = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}"#;
        let b = built(ProviderKind::Openai, "o3-mini", asked);
        assert_eq!((b.get("max_tokens"), &b["max_completion_tokens"]), (None, &serde_json::json!(50)));
        // Both given: the client's max_completion_tokens stands.
        let both = r#"{"model": "m", "messages": [], "max_tokens": 50, "max_completion_tokens": 70}"#;
        let b = built(ProviderKind::Azure, "gpt-5-mini", both);
        assert_eq!((b.get("max_tokens"), &b["max_completion_tokens"]), (None, &serde_json::json!(70)));
        assert_eq!(built(ProviderKind::Openai, "gpt-4o", asked)["max_tokens"], 50);
        // Sampling a reasoning model refuses is dropped when routing let it be (its pool's drop_params).
        let hot = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3}"#;
        assert_eq!(built(ProviderKind::Openai, "o4-mini", hot).get("temperature"), None);
    }

    #[test]
    fn claude_opus_4_7_thinks_adaptively_and_gets_no_sampling() {
        let asked = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
            "top_p": 0.9, "reasoning_effort": "high"}"#;
        for kind in [ProviderKind::Anthropic, ProviderKind::Bedrock] {
            let b = built(kind, "claude-opus-4-7", asked);
            let fields = if kind == ProviderKind::Bedrock { &b["additionalModelRequestFields"] } else { &b };
            assert_eq!(
                fields["thinking"],
                serde_json::json!({"type": "adaptive", "display": "summarized"}),
                "{kind:?}"
            );
            assert_eq!(fields["output_config"], serde_json::json!({"effort": "high"}), "{kind:?}");
            let text = b.to_string();
            assert!(!text.contains("temperature") && !text.contains("top_p") && !text.contains("topP"), "{text}");
        }
        // An older Claude gets the budget and the sampling.
        let b = built(ProviderKind::Anthropic, "claude-opus-4-6", asked);
        assert_eq!(b["thinking"], serde_json::json!({"type": "enabled", "budget_tokens": 24576}));
        assert_eq!((&b["temperature"], &b["top_p"]), (&serde_json::json!(0.3), &serde_json::json!(0.9)));
        // Adaptive thinking asked (a Messages client's): as asked from 4.6 on, a budget before.
        let adaptive = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
            "thinking": {"type": "adaptive"}}"#;
        assert_eq!(built(ProviderKind::Anthropic, "claude-sonnet-4-6", adaptive)["thinking"]["type"], "adaptive");
        assert_eq!(built(ProviderKind::Anthropic, "claude-sonnet-4-5", adaptive)["thinking"]["budget_tokens"], 8192);
        assert_eq!(built(ProviderKind::Openai, "o3", adaptive).get("thinking"), None);
    }

    fn body(kind: ProviderKind) -> serde_json::Value {
        serde_json::from_slice(&build(kind, Endpoint::ChatCompletions, CACHED).body).unwrap()
    }

    #[test]
    fn cache_breakpoints_reach_anthropic_as_cache_control_on_the_same_blocks() {
        let b = body(ProviderKind::Anthropic);
        let eph = serde_json::json!({"type": "ephemeral"});
        assert_eq!(b["cache_control"], eph);
        assert_eq!(
            b["system"],
            serde_json::json!([{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}, {"type": "text", "text": "More."}])
        );
        assert_eq!(b["messages"][0]["content"][0]["cache_control"], eph);
        assert!(b["messages"][0]["content"][1].get("cache_control").is_none());
        // On the tool result itself: Anthropic refuses one inside its content.
        assert_eq!(b["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(b["messages"][2]["content"][0]["cache_control"], eph);
        assert_eq!(b["tools"][0]["cache_control"], eph);
    }

    #[test]
    fn cache_breakpoints_reach_bedrock_as_cache_points_after_the_same_blocks() {
        let b = body(ProviderKind::Bedrock);
        let point = serde_json::json!({"cachePoint": {"type": "default"}});
        assert_eq!(b["system"], serde_json::json!([{"text": "Long rules."}, point, {"text": "More."}]));
        assert_eq!(
            b["messages"][0]["content"],
            serde_json::json!([{"text": "Read this."}, point, {"text": "Now answer."}])
        );
        // The tool result's, then the request's own after the last block.
        let last = &b["messages"][2]["content"];
        assert_eq!(
            (last[1].clone(), last[2].clone(), last.as_array().unwrap().len()),
            (point.clone(), point.clone(), 3)
        );
        assert_eq!(b["toolConfig"]["tools"][1], point);
        assert!(!b.to_string().contains("cache_control"));
    }

    #[test]
    fn cache_breakpoints_are_not_sent_where_caching_is_automatic() {
        for kind in [ProviderKind::Openai, ProviderKind::Azure, ProviderKind::Gemini] {
            let b = body(kind);
            assert!(!b.to_string().contains("cache_control"), "{kind:?}: {b}");
            assert!(b.to_string().contains("Read this."), "{kind:?}: the content stays");
        }
        let openai = body(ProviderKind::Openai);
        assert_eq!(openai["messages"][1]["content"][0], serde_json::json!({"type": "text", "text": "Read this."}));
        assert_eq!(openai["tools"][0]["function"]["name"], "f");
        // Compatible servers get them (some pass them on to Anthropic models).
        let compatible = body(ProviderKind::OpenaiCompatible);
        assert_eq!(compatible["messages"][1]["content"][0]["cache_control"], serde_json::json!({"type": "ephemeral"}));
        let bad = r#"{"model": "m", "messages": [{"role": "user", "content": "x", "cache_control": "yes"}]}"#;
        let req = ParsedRequest::parse(bad.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
        let e = build_request(&provider(ProviderKind::Anthropic), &member("m"), Endpoint::ChatCompletions, &req, &ctx);
        assert!(e.unwrap_err().message.contains("messages[0].cache_control"));
    }
}
