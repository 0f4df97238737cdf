//! Provider adapters: how a routed request is presented to each kind of
//! provider (path, host, credentials, body), and how answers come back in
//! OpenAI's shape. No proxy-wasm calls.
//!
//! OpenAI-wire kinds (`openai`, `openai_compatible`, `azure`) only get their
//! `model` replaced. `anthropic`, `gemini` and `bedrock` serve chat
//! completions only: the request is decoded once (`chat`) and rendered per
//! kind; answers are translated by `ResponseAdapter`.

mod anthropic;
mod bedrock;
mod chat;
mod encoding;
mod eventstream;
mod gemini;
mod openai;
mod response;
mod sigv4;
mod sse;

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

impl UpstreamRequest {
    /// Headers for sending this request with Envoy's HTTP call API: pseudo
    /// headers, a JSON content type, then `extra` (client headers), then the
    /// provider's own. A name the provider sets is sent once, its value winning.
    pub fn call_headers<'a>(&'a self, extra: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
        let set_here = |name: &str| self.headers.iter().any(|(n, _)| *n == name);
        let mut out: Vec<(&str, &str)> = Vec::with_capacity(extra.len() + self.headers.len() + 4);
        out.push((":method", "POST"));
        out.push((":path", &self.path));
        out.push((":authority", &self.authority));
        if !set_here("content-type") {
            out.push(("content-type", "application/json"));
        }
        out.extend(extra.iter().filter(|(k, _)| !set_here(k)).map(|(k, v)| (k.as_str(), v.as_str())));
        out.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        out
    }
}

/// Builds the upstream request for `member` of `provider`.
pub fn build_request(
    provider: &Provider,
    member: &Member,
    endpoint: Endpoint,
    request: &ParsedRequest<'_>,
    ctx: &BuildContext,
) -> Result<UpstreamRequest, ApiError> {
    let translate = match provider.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => {
            return Ok(openai::build(provider, member, endpoint, request))
        }
        ProviderKind::Anthropic => anthropic::build,
        ProviderKind::Gemini => gemini::build,
        ProviderKind::Bedrock => bedrock::build,
    };
    if endpoint != Endpoint::ChatCompletions {
        return Err(ApiError::invalid_request(
            "unsupported_endpoint",
            format!(
                "Model `{}` is served by a provider of kind {}, which only supports /v1/chat/completions.",
                member.model,
                provider.kind.as_str()
            ),
        ));
    }
    let chat = chat::parse(request)?;
    translate(provider, member, &chat, ctx)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::{Credentials, Secret};

    pub(crate) fn provider(kind: ProviderKind) -> Provider {
        let (base_path, credentials) = match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Anthropic => {
                ("/v1", Credentials::ApiKey(Secret::new("sk-test")))
            }
            ProviderKind::Gemini => ("/v1beta", Credentials::ApiKey(Secret::new("sk-test"))),
            ProviderKind::Azure => ("", Credentials::ApiKey(Secret::new("sk-test"))),
            ProviderKind::Bedrock => (
                "",
                Credentials::Aws {
                    access_key_id: Secret::new("AKIDEXAMPLE"),
                    secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                    session_token: None,
                },
            ),
        };
        Provider {
            name: "p".into(),
            kind,
            cluster: "c".into(),
            host: "api.example.com".into(),
            base_path: base_path.into(),
            credentials,
            api_version: "2024-10-21".into(),
            region: "us-east-1".into(),
            anthropic_version: "2023-06-01".into(),
        }
    }

    pub(crate) fn member(model: &str) -> Member {
        Member {
            provider: 0,
            model: model.into(),
            deployment: format!("{model}-dep"),
            weight: 1,
            id: format!("p/{model}"),
            ..Member::default()
        }
    }

    /// Builds the chat-completions request `body` for `model` of `provider`.
    pub(crate) fn build_for(
        provider: &Provider,
        model: &str,
        body: &str,
        pool_max: Option<u32>,
    ) -> Result<UpstreamRequest, ApiError> {
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).expect("fixture parses");
        let ctx = BuildContext { now_unix_s: 1_440_938_160, max_response_tokens: pool_max };
        build_request(provider, &member(model), Endpoint::ChatCompletions, &req, &ctx)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::test_support::{member, provider};
    use super::*;

    #[test]
    fn call_headers_send_each_name_once_provider_values_winning() {
        let up = UpstreamRequest {
            path: "/v1/messages".into(),
            authority: "api.example".into(),
            headers: vec![("content-type", "application/json; charset=utf-8".into()), ("x-api-key", "k".into())],
            body: Vec::new(),
        };
        let client =
            vec![("x-api-key".to_string(), "client".to_string()), ("x-request-id".to_string(), "r1".to_string())];
        assert_eq!(
            up.call_headers(&client),
            vec![
                (":method", "POST"),
                (":path", "/v1/messages"),
                (":authority", "api.example"),
                ("x-request-id", "r1"),
                ("content-type", "application/json; charset=utf-8"),
                ("x-api-key", "k"),
            ]
        );
        let plain = UpstreamRequest { headers: Vec::new(), ..up };
        assert!(plain.call_headers(&[]).contains(&("content-type", "application/json")));
    }

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
    fn translated_kinds_refuse_other_endpoints() {
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            for (endpoint, body) in [
                (Endpoint::Embeddings, r#"{"model":"x","input":"i"}"#),
                (Endpoint::Completions, r#"{"model":"x","prompt":"p"}"#),
            ] {
                let req = ParsedRequest::parse(body.as_bytes(), endpoint).unwrap();
                let ctx = BuildContext { now_unix_s: 0, max_response_tokens: None };
                let e = build_request(&provider(kind), &member("m"), endpoint, &req, &ctx).unwrap_err();
                assert_eq!((e.status, e.code), (400, "unsupported_endpoint"), "{kind:?} {endpoint:?}");
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
}
