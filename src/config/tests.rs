#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

fn test_env(name: &str) -> Option<String> {
    match name {
        "ALPHA_KEY" => Some("sk-alpha".into()),
        "BETA_KEY" => Some("sk-beta".into()),
        "EMPTY_KEY" => Some(String::new()),
        "AWS_AK" => Some("AKIDEXAMPLE".into()),
        "AWS_SK" => Some("secret".into()),
        _ => None,
    }
}

pub(crate) static ENV: fn(&str) -> Option<String> = test_env;

pub(crate) fn sample_config() -> String {
    r#"{
      "cluster_header": "x-switchboard-cluster",
      "providers": {
        "alpha": {"kind": "openai", "cluster": "alpha", "host": "api.alpha.example", "api_key_env": "ALPHA_KEY"},
        "beta":  {"kind": "openai", "cluster": "beta",  "host": "api.beta.example",  "api_key_env": "BETA_KEY"}
      },
      "pools": {
        "gpt4o_16k": {
          "description": "GPT-4o class models",
          "max_response_tokens": 16384,
          "members": [
            {"provider": "alpha", "model": "gpt-4o", "weight": 3},
            {"provider": "beta",  "model": "gpt-4o-2024-08-06", "weight": 1}
          ]
        }
      }
    }"#
    .to_string()
}

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes(), &ENV)
}

fn error_for(json: &str) -> ConfigError {
    parse(json).unwrap_err()
}

#[test]
fn sample_parses_with_defaults() {
    let cfg = parse(&sample_config()).unwrap();
    assert_eq!(cfg.cluster_header, "x-switchboard-cluster");
    let (_, pool) = cfg.pool("gpt4o_16k").unwrap();
    assert_eq!(pool.members.len(), 2);
    assert_eq!(pool.total_weight(), 4);
    assert_eq!(pool.retry.retry_on, DEFAULT_RETRY_ON.to_vec());
    assert_eq!(pool.retry.max_attempts, 3);
    assert_eq!(pool.health.consecutive_failures, 3);
    let provider = cfg.provider(pool.members[0].provider).unwrap();
    assert_eq!(provider.credentials, Credentials::ApiKey(Secret::new("sk-alpha")));
    assert_eq!(provider.base_path, "/v1");
}

#[test]
fn models_served_by_one_member_are_direct() {
    let cfg = parse(&sample_config()).unwrap();
    let (_, direct) = cfg.pool("gpt-4o").unwrap();
    assert!(!direct.listed);
    assert_eq!(direct.members.len(), 1);
    assert_eq!(direct.members[0].id, "alpha/gpt-4o");
    assert_eq!(cfg.listed_pools().count(), 1);
}

#[test]
fn model_served_by_two_providers_is_not_direct() {
    let json = sample_config().replace("gpt-4o-2024-08-06", "gpt-4o");
    let cfg = parse(&json).unwrap();
    assert!(cfg.pool("gpt-4o").is_none());
}

#[test]
fn secrets_are_not_printed() {
    let cfg = parse(&sample_config()).unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("sk-alpha"));
    assert!(debug.contains("redacted"));
}

#[test]
fn cluster_header_defaults() {
    let json = sample_config().replace(r#""cluster_header": "x-switchboard-cluster","#, "");
    assert_eq!(parse(&json).unwrap().cluster_header, DEFAULT_CLUSTER_HEADER);
}

#[test]
fn errors_name_the_offending_field() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            sample_config().replace(r#""provider": "beta""#, r#""provider": "gamma""#),
            "pools.gpt4o_16k.members[1].provider",
            "gamma",
        ),
        (
            sample_config().replace(r#""weight": 3"#, r#""weight": 0"#).replace(r#""weight": 1"#, r#""weight": 0"#),
            "pools.gpt4o_16k.members",
            "zero",
        ),
        (sample_config().replace("BETA_KEY", "MISSING_KEY"), "providers.beta.api_key_env", "MISSING_KEY"),
        (sample_config().replace("BETA_KEY", "EMPTY_KEY"), "providers.beta.api_key_env", "empty"),
        (sample_config().replace(r#""weight": 3"#, r#""wieght": 3"#), "pools.gpt4o_16k.members[0].wieght", "wieght"),
        (
            sample_config().replace(r#""weight": 3"#, r#""weight": -3"#),
            "pools.gpt4o_16k.members[0].weight",
            "invalid value",
        ),
        (
            sample_config()
                .replace(r#""kind": "openai", "cluster": "alpha""#, r#""kind": "openia", "cluster": "alpha""#),
            "providers.alpha.kind",
            "openia",
        ),
        (sample_config().replace(r#""cluster": "beta","#, ""), "providers.beta", "cluster"),
        (sample_config().replace("x-switchboard-cluster", "X Bad"), "cluster_header", "header"),
        (
            sample_config()
                .replace(r#""max_response_tokens": 16384,"#, r#""max_response_tokens": 16384, "max_attempts": 0,"#),
            "pools.gpt4o_16k.max_attempts",
            "between",
        ),
        (
            sample_config()
                .replace(r#""max_response_tokens": 16384,"#, r#""max_response_tokens": 16384, "retry_on": [200],"#),
            "pools.gpt4o_16k.retry_on[0]",
            "200",
        ),
        (
            sample_config().replace(
                r#""max_response_tokens": 16384,"#,
                r#""max_response_tokens": 16384, "fallback_pools": ["nope"],"#,
            ),
            "pools.gpt4o_16k.fallback_pools[0]",
            "nope",
        ),
        (
            sample_config().replace(r#""members": ["#, r#""members": [], "x": ["#),
            "pools.gpt4o_16k",
            "unknown field `x`",
        ),
    ];
    for (json, field, needle) in cases {
        let e = error_for(&json);
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(needle), "{e} should mention {needle}");
    }
}

#[test]
fn bad_json_is_refused() {
    let e = error_for("{\"providers\": ");
    assert!(e.to_string().contains("EOF"), "{e}");
    let e = error_for("");
    assert!(e.to_string().contains("empty"), "{e}");
    let e = error_for(r#"{"pools": {}}"#);
    assert!(e.to_string().contains("providers"), "{e}");
}

#[test]
fn bedrock_needs_aws_keys() {
    let json = r#"{"providers": {"b": {"kind": "bedrock", "cluster": "b", "host": "bedrock-runtime.us-east-1.amazonaws.com", "region": "us-east-1", "access_key_id_env": "AWS_AK"}}, "pools": {}}"#;
    let e = error_for(json);
    assert_eq!(e.field, "providers.b.secret_access_key_env");
    let json = json.replace(
        r#""access_key_id_env": "AWS_AK""#,
        r#""access_key_id_env": "AWS_AK", "secret_access_key_env": "AWS_SK""#,
    );
    let cfg = parse(&json).unwrap();
    assert!(matches!(cfg.providers[0].credentials, Credentials::Aws { .. }));
}

#[test]
fn openai_compatible_key_is_optional() {
    let json = r#"{"providers": {"local": {"kind": "openai_compatible", "cluster": "vllm", "host": "vllm:8000"}}, "pools": {"p": {"members": [{"provider": "local", "model": "llama"}]}}}"#;
    let cfg = parse(json).unwrap();
    assert_eq!(cfg.providers[0].credentials, Credentials::None);
    assert_eq!(cfg.pool("p").unwrap().1.members[0].weight, 1);
}

#[test]
fn timeouts_default_to_letting_a_slow_generation_finish() {
    let cfg = parse(&sample_config()).unwrap();
    let retry = &cfg.pool("gpt4o_16k").unwrap().1.retry;
    assert_eq!(retry.timeout_ms, 600_000);
    assert_eq!((retry.per_try_timeout_ms, retry.first_byte_timeout_ms), (None, None));
    // A non-streaming attempt may use the whole deadline; a stream waits 30 s for its headers.
    assert_eq!(retry.attempt_timeouts(600_000, false), (600_000, None));
    assert_eq!(retry.attempt_timeouts(600_000, true), (600_000, Some(30_000)));
    // Later attempts get what is left.
    assert_eq!(retry.attempt_timeouts(10_000, true), (10_000, Some(10_000)));
}

#[test]
fn explicit_timeouts_bound_attempts_and_first_bytes() {
    let json = sample_config().replace(
        r#""max_response_tokens": 16384,"#,
        r#""max_response_tokens": 16384, "per_try_timeout_ms": 20000, "first_byte_timeout_ms": 5000,"#,
    );
    let cfg = parse(&json).unwrap();
    let retry = &cfg.pool("gpt4o_16k").unwrap().1.retry;
    assert_eq!(retry.attempt_timeouts(600_000, false), (20_000, Some(5_000)));
    assert_eq!(retry.attempt_timeouts(600_000, true), (600_000, Some(5_000)));
    assert_eq!(retry.attempt_timeouts(3_000, false), (3_000, Some(3_000)));
    let bad = sample_config()
        .replace(r#""max_response_tokens": 16384,"#, r#""max_response_tokens": 16384, "first_byte_timeout_ms": 0,"#);
    assert_eq!(error_for(&bad).field, "pools.gpt4o_16k.first_byte_timeout_ms");
    let bad = sample_config().replace(
        r#""max_response_tokens": 16384,"#,
        r#""max_response_tokens": 16384, "per_try_timeout_ms": 9000, "timeout_ms": 5000,"#,
    );
    assert_eq!(error_for(&bad).field, "pools.gpt4o_16k.timeout_ms");
}

fn with_tenants(tenants: &str) -> String {
    sample_config().replacen(r#""pools": {"#, &format!(r#""tenants": {tenants}, "pools": {{"#), 1)
}

const KEY_A_SHA256: &str = "8ccb5e3e1f2fc0b4e6a4da7a6a3c0c1ee9ea6e4bd8fbbdf7c35b0e9b4c0d1a2f";

#[test]
fn tenants_are_validated_naming_the_field() {
    let ok = with_tenants(&format!(
        r#"{{"team-a": {{"keys_sha256": ["{KEY_A_SHA256}"], "allow": ["gpt4o_16k", "gpt-4o"], "rpm": 600, "tpm": 200000, "max_parallel": 20, "budget_usd": {{"per": "day", "limit": 50}}}}}}"#
    ));
    let cfg = parse(&ok).unwrap();
    let tenants = cfg.tenants.as_ref().unwrap();
    assert_eq!(tenants[0].name, "team-a");
    assert_eq!(tenants[0].rpm, Some(600));
    assert!(tenants[0].allows("gpt-4o") && !tenants[0].allows("gpt-4o-2024-08-06"));
    assert!(parse(&sample_config()).unwrap().tenants.is_none());
    let cases = [
        (r#"{"t": {"keys_sha256": ["sk-plain-key"]}}"#.to_string(), "tenants.t.keys_sha256[0]"),
        (r#"{"t": {"keys_sha256": []}}"#.to_string(), "tenants.t.keys_sha256"),
        (format!(r#"{{"t": {{"keys_sha256": ["{KEY_A_SHA256}"], "allow": ["nope"]}}}}"#), "tenants.t.allow[0]"),
        (format!(r#"{{"t": {{"keys_sha256": ["{KEY_A_SHA256}"], "rpm": 0}}}}"#), "tenants.t.rpm"),
        (
            format!(r#"{{"t": {{"keys_sha256": ["{KEY_A_SHA256}"], "budget_usd": {{"per": "day", "limit": -1}}}}}}"#),
            "tenants.t.budget_usd.limit",
        ),
        (format!(r#"{{"t": {{"keys_sha256": ["{KEY_A_SHA256}"], "rmp": 5}}}}"#), "tenants.t"),
        (
            format!(r#"{{"a": {{"keys_sha256": ["{KEY_A_SHA256}"]}}, "b": {{"keys_sha256": ["{KEY_A_SHA256}"]}}}}"#),
            "tenants.b.keys_sha256[0]",
        ),
        ("{}".to_string(), "tenants"),
    ];
    for (tenants, field) in cases {
        let e = error_for(&with_tenants(&tenants));
        assert!(e.field.starts_with(field), "{tenants}: {e}");
    }
}
