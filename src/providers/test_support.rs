//! Test helpers of the provider adapters: providers and members of every
//! kind, building requests from JSON, and reading translated streams.

use serde_json::Value;

use crate::api::request::ParsedRequest;
use crate::api::{ApiError, Endpoint};
use crate::config::{Credentials, Member, Provider, ProviderKind, Secret};

use super::dispatch::build_request;
use super::response::ResponseAdapter;
use super::upstream::{BuildContext, UpstreamRequest};

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

/// Parses translated SSE output into its JSON events; `[DONE]` as a string.
pub(crate) fn events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("output is UTF-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "output ends on an event boundary: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}"));
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).unwrap_or_else(|err| panic!("bad JSON {data:?}: {err}"))
            }
        })
        .collect()
}

/// Concatenated `delta.content` of choice 0.
pub(crate) fn streamed_text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect()
}

/// Feeds `input` to a fresh adapter in two pieces cut at `cut`.
pub(crate) fn run_split(adapter: &mut ResponseAdapter, input: &[u8], cut: usize) -> Vec<u8> {
    let mut out = adapter.translate_stream(&input[..cut], false);
    out.extend(adapter.translate_stream(&input[cut..], false));
    out.extend(adapter.translate_stream(b"", true));
    out
}

/// The usage of a translated stream's last event before `[DONE]`, checked
/// to be a usage-only chunk (no choices), as OpenAI sends with `include_usage`.
pub(crate) fn final_usage(events: &[Value]) -> &Value {
    assert_eq!(events.last().and_then(Value::as_str), Some("[DONE]"));
    let chunk = &events[events.len() - 2];
    assert_eq!(chunk["choices"], serde_json::json!([]), "usage chunk: {chunk}");
    assert_eq!(chunk["object"], "chat.completion.chunk");
    &chunk["usage"]
}

/// Checks that a stream translated with `include_usage` translates
/// identically however it is cut in two, fed byte by byte, or given whole,
/// and that without `include_usage` it is the same less any usage; returns
/// the whole translation with usage.
pub(crate) fn assert_split_invariant(kind: ProviderKind, input: &[u8]) -> Vec<u8> {
    let new = || ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").unwrap().with_include_usage(true);
    let mut whole = new();
    let reference = whole.translate_stream(input, true);
    let normalise = |out: &[u8]| {
        let mut evs = events(out);
        for e in &mut evs {
            if let Some(o) = e.as_object_mut() {
                o.remove("id");
            }
        }
        evs
    };
    let want = normalise(&reference);
    for cut in 0..=input.len() {
        let got = run_split(&mut new(), input, cut);
        assert_eq!(normalise(&got), want, "cut at byte {cut}");
    }
    let mut bytewise = new();
    let mut out = Vec::new();
    for b in input {
        out.extend(bytewise.translate_stream(std::slice::from_ref(b), false));
    }
    out.extend(bytewise.translate_stream(b"", true));
    assert_eq!(normalise(&out), want, "byte by byte");

    let mut without = ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").unwrap();
    let plain = normalise(&without.translate_stream(input, true));
    assert!(plain.iter().all(|e| e.get("usage").is_none()), "usage sent unasked: {plain:?}");
    assert_eq!(without.usage(), whole.usage(), "usage known to the host either way");
    let mut expected = want.clone();
    expected.retain(|e| e.get("choices") != Some(&serde_json::json!([])));
    for e in &mut expected {
        if let Some(o) = e.as_object_mut().filter(|o| o.contains_key("choices")) {
            assert_eq!(o.remove("usage"), Some(Value::Null), "every other chunk has `usage: null`");
        }
    }
    assert_eq!(plain, expected, "with include_usage: the same events plus usage");
    reference
}
