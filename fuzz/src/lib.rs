//! Shared fixtures and invariant checks for the fuzz targets.
//!
//! Invariants checked here are contracts of the filter, not implementation
//! details: a violation is a bug even when nothing panics (e.g. an upstream
//! body that is not JSON, a header value that would let a request smuggle a
//! second header line).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::value::RawValue;
use switchboard::api::{ApiError, Endpoint};
use switchboard::config::Config;
use switchboard::providers::UpstreamRequest;

pub const ENDPOINTS: [Endpoint; 3] = [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings];

/// A fixed "now" (2023-11-14T22:13:20Z) so runs are reproducible.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// Secrets for the fixed configuration (no process environment involved).
pub fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_KEY" => Some("sk-openai".into()),
        "AZURE_KEY" => Some("az-key".into()),
        "ANTHROPIC_KEY" => Some("sk-ant".into()),
        "GEMINI_KEY" => Some("gm-key".into()),
        "AWS_AK" => Some("AKIDEXAMPLE".into()),
        "AWS_SK" => Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        "AWS_ST" => Some("session-token".into()),
        _ => None,
    }
}

/// One provider of every kind, pools mixing them, fallbacks and a direct model.
pub const CONFIG_JSON: &str = r#"{
  "cluster_header": "x-switchboard-cluster",
  "max_body_bytes": 65536,
  "providers": {
    "oa":    {"kind": "openai", "cluster": "oa", "host": "api.openai.com", "api_key_env": "OPENAI_KEY"},
    "local": {"kind": "openai_compatible", "cluster": "vllm", "host": "vllm:8000", "base_path": "/api/v1/"},
    "az":    {"kind": "azure", "cluster": "az", "host": "res.openai.azure.com", "api_key_env": "AZURE_KEY", "api_version": "2024-10-21"},
    "an":    {"kind": "anthropic", "cluster": "an", "host": "api.anthropic.com", "api_key_env": "ANTHROPIC_KEY"},
    "ge":    {"kind": "gemini", "cluster": "ge", "host": "generativelanguage.googleapis.com", "api_key_env": "GEMINI_KEY"},
    "br":    {"kind": "bedrock", "cluster": "br", "host": "bedrock-runtime.us-east-1.amazonaws.com", "region": "us-east-1",
              "access_key_id_env": "AWS_AK", "secret_access_key_env": "AWS_SK", "session_token_env": "AWS_ST"}
  },
  "defaults": {"per_try_timeout_ms": 1000, "timeout_ms": 5000},
  "pools": {
    "chat": {
      "description": "every kind",
      "max_response_tokens": 4096,
      "max_attempts": 10,
      "fallback_pools": ["backup"],
      "members": [
        {"provider": "oa", "model": "gpt-4o", "weight": 3},
        {"provider": "local", "model": "llama-3.1-8b", "weight": 1},
        {"provider": "az", "model": "gpt-4o", "deployment": "gpt4o-prod", "weight": 1},
        {"provider": "an", "model": "claude-3-5-sonnet-20241022", "weight": 1},
        {"provider": "ge", "model": "gemini-1.5-pro", "weight": 1},
        {"provider": "br", "model": "anthropic.claude-3-5-sonnet-20241022-v2:0", "weight": 1},
        {"provider": "oa", "model": "gpt-4o-mini", "weight": 0}
      ]
    },
    "backup": {
      "members": [
        {"provider": "an", "model": "claude-3-haiku-20240307"},
        {"provider": "ge", "model": "gemini-1.5-flash"}
      ]
    },
    "emb": {
      "members": [
        {"provider": "oa", "model": "text-embedding-3-small"},
        {"provider": "az", "model": "text-embedding-3-large"}
      ]
    }
  }
}"#;

/// The fixed configuration, parsed once.
pub fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| match Config::parse(CONFIG_JSON.as_bytes(), &env) {
        Ok(c) => c,
        Err(e) => panic!("fixture configuration is invalid: {e}"),
    })
}

/// Checks of the translated answers' shape (not just "no panic"); on unless
/// `SWITCHBOARD_FUZZ_STRICT=0`.
pub fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var("SWITCHBOARD_FUZZ_STRICT").map_or(true, |v| v != "0"))
}

/// A cheap deterministic 64-bit mix of the input (for input-derived choices).
pub fn mix(data: &[u8], salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 33)
}

/// `bytes` is syntactically valid JSON (any value). Numbers out of f64 range
/// are still valid JSON, so the value is skipped, not decoded.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// `bytes` is a JSON object; returns its top-level fields (last duplicate wins).
pub fn json_object(bytes: &[u8]) -> Option<BTreeMap<String, Box<RawValue>>> {
    serde_json::from_slice(bytes).ok()
}

/// A value that can be put on an HTTP/1 or HTTP/2 header line as is.
pub fn header_value_ok(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

pub fn check_error(e: &ApiError) {
    assert!((400..600).contains(&e.status), "error status {} out of range: {e:?}", e.status);
    let body = e.to_json();
    let fields = json_object(&body)
        .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", String::from_utf8_lossy(&body)));
    assert!(fields.contains_key("error"), "error body without `error`");
}

/// What every built upstream request must satisfy, whatever the client sent.
pub fn check_upstream(up: &UpstreamRequest) {
    assert!(up.path.starts_with('/'), "path must start with '/': {:?}", up.path);
    assert!(
        !up.path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#'),
        "path has whitespace, control characters or a fragment: {:?}",
        up.path
    );
    assert!(!up.authority.is_empty() && header_value_ok(&up.authority), "bad authority {:?}", up.authority);
    for (name, value) in &up.headers {
        assert!(
            !name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase() || b <= b' '),
            "bad header name {name:?}"
        );
        assert!(header_value_ok(value), "header {name} has CR/LF/NUL: {value:?}");
    }
    assert!(is_json(&up.body), "upstream body is not JSON: {:?}", String::from_utf8_lossy(&up.body));
}
