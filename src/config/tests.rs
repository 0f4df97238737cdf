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
    // Naming it is a 404 that lists the member ids that address each deployment.
    let e = cfg.unknown_target("gpt-4o", "model");
    assert_eq!((e.status, e.code.as_str(), e.param), (404, "ambiguous_model", Some("model")));
    assert!(e.message.contains("alpha/gpt-4o, beta/gpt-4o"), "{}", e.message);
    assert!(cfg.pool("alpha/gpt-4o").is_some() && cfg.pool("beta/gpt-4o").is_some());
    assert_eq!(cfg.unknown_target("nope", "fallback").code, "model_not_found");
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
fn call_log_is_written_only_when_the_configuration_asks() {
    assert!(!parse(&sample_config()).unwrap().call_log);
    assert!(parse(&sample_config().replacen('{', r#"{"call_log": true,"#, 1)).unwrap().call_log);
    let wrong = sample_config().replacen('{', r#"{"call_log": 1,"#, 1);
    assert!(parse(&wrong).unwrap_err().to_string().contains("call_log"));
    // Prompts only when asked.
    assert!(!parse(&sample_config()).unwrap().call_log_prompts);
    assert!(parse(&sample_config().replacen('{', r#"{"call_log_prompts": true,"#, 1)).unwrap().call_log_prompts);
    let wrong = sample_config().replacen('{', r#"{"call_log_prompts": "yes","#, 1);
    assert!(parse(&wrong).unwrap_err().to_string().contains("call_log_prompts"));
}

#[test]
fn stream_failover_is_off_unless_the_configuration_says_the_upstream_filter_runs() {
    assert!(!parse(&sample_config()).unwrap().stream_failover);
    let on = sample_config().replacen('{', r#"{"stream_failover": true,"#, 1);
    assert!(parse(&on).unwrap().stream_failover);
    let wrong = sample_config().replacen('{', r#"{"stream_failover": "yes","#, 1);
    assert!(parse(&wrong).unwrap_err().to_string().contains("stream_failover"));
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
            "pools.gpt4o_16k.x",
            "unknown field `x`",
        ),
        (
            sample_config().replace(r#""members": ["#, r#""max_attempts": "3", "members": ["#),
            "pools.gpt4o_16k.max_attempts",
            "invalid type",
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

fn with_member_fields(fields: &str) -> String {
    sample_config()
        .replace(r#""model": "gpt-4o", "weight": 3"#, &format!(r#""model": "gpt-4o", "weight": 3, {fields}"#))
}

fn with_pool_fields(fields: &str) -> String {
    sample_config().replace(r#""max_response_tokens": 16384,"#, &format!(r#""max_response_tokens": 16384, {fields},"#))
}

fn with_routers(routers: &str) -> String {
    sample_config().replacen("\"pools\": {", &format!("\"routers\": {routers}, \"pools\": {{"), 1)
}

#[test]
fn member_facts_parse_with_defaults() {
    let cfg = parse(&with_member_fields(
        r#""context_window": 128000, "max_output_tokens": 16384, "capabilities": ["vision", "tools"],
           "input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10, "priority": -1, "tags": ["eu", "zero_retention"]"#,
    ))
    .unwrap();
    let (_, pool) = cfg.pool("gpt4o_16k").unwrap();
    let (m, plain) = (&pool.members[0], &pool.members[1]);
    assert_eq!((m.context_window, m.max_output_tokens, m.priority), (Some(128000), Some(16384), -1));
    assert!(m.capabilities.has(Capability::Vision) && !m.capabilities.has(Capability::JsonSchema));
    assert_eq!((m.input_cost_per_mtok, m.output_cost_per_mtok), (Some(2.5), Some(10.0)));
    assert_eq!(cfg.tags, vec!["eu", "zero_retention"]);
    assert_eq!(m.tag_mask, 0b11);
    assert_eq!(cfg.tag_mask(["zero_retention"]), Some(0b10));
    assert_eq!(cfg.tag_mask(["onprem"]), None);
    assert_eq!(plain.capabilities, Capabilities::ALL, "absent capabilities: all");
    assert_eq!((plain.priority, plain.tag_mask, plain.context_window), (0, 0, None));
    assert_eq!(pool.strategy, Strategy::Weighted);
    assert!(!cfg.member_facts().vision_limited, "both members have vision");
    assert!(cfg.member_facts().size_limited);
    // The facts follow the member into its direct-model pool.
    assert_eq!(cfg.pool("gpt-4o").unwrap().1.members[0].context_window, Some(128000));
}

#[test]
fn pool_strategies_parse() {
    for s in ["weighted", "least_busy", "lowest_latency", "priority"] {
        let cfg = parse(&with_pool_fields(&format!(r#""strategy": "{s}""#))).unwrap();
        assert_eq!(cfg.pool("gpt4o_16k").unwrap().1.strategy.as_str(), s);
    }
    let cfg = parse(&with_pool_fields(r#""strategy": "lowest_latency", "explore": 0.2"#)).unwrap();
    assert_eq!(cfg.pool("gpt4o_16k").unwrap().1.explore, 0.2);
    assert_eq!(parse(&sample_config()).unwrap().pool("gpt4o_16k").unwrap().1.explore, 0.05);
}

#[test]
fn routers_parse_and_resolve_by_name() {
    let cfg = parse(&with_routers(
        r#"{"auto": {"description": "by content", "rules": [
            {"name": "code", "when": {"any_keywords": ["python", "stack trace"], "stream": false}, "pool": "gpt4o_16k"},
            {"name": "meta", "when": {"metadata": {"team": "ml"}, "header": {"name": "X-Tier", "present": true}}, "pool": "gpt-4o"}
          ], "default": "gpt4o_16k"}}"#,
    ))
    .unwrap();
    let Some(Target::Router(r)) = cfg.target("auto") else { panic!("auto is a router") };
    let router = cfg.router_at(r).unwrap();
    assert_eq!(router.rules.len(), 2);
    assert_eq!(router.keywords.text, vec!["python", "stack trace"]);
    assert_eq!(router.rules[1].when.header.as_ref().unwrap().name, "x-tier");
    assert_eq!(router.rules[1].pool, cfg.pool("gpt-4o").unwrap().0, "rules may name direct models");
    assert_eq!(cfg.target("gpt4o_16k"), Some(Target::Pool(cfg.pool("gpt4o_16k").unwrap().0)));
    assert_eq!(cfg.target("nope"), None);
    let cfg = parse(&with_routers(
        r#"{"l": {"learned": {"strong": "gpt4o_16k", "weak": "gpt-4o", "strong_share": 0.3, "model": "mf"}}}"#,
    ))
    .unwrap();
    let learned = cfg.routers[0].learned.as_ref().unwrap();
    assert_eq!((learned.cutoff, learned.model.as_deref()), (Cutoff::StrongShare(0.3), Some("mf")));
    assert_eq!((learned.explore, learned.feedback_per_minute, learned.learning_epoch), (0.05, 600, 0));
}

#[test]
fn routing_fields_are_validated_naming_the_field() {
    let m = "pools.gpt4o_16k.members[0]";
    let cases: Vec<(String, String, &str)> = vec![
        (with_member_fields(r#""context_window": 0"#), format!("{m}.context_window"), "> 0"),
        (
            with_member_fields(r#""context_window": 100, "max_output_tokens": 200"#),
            format!("{m}.max_output_tokens"),
            "exceed",
        ),
        (with_member_fields(r#""capabilities": ["telepathy"]"#), format!("{m}.capabilities[0]"), "telepathy"),
        (with_member_fields(r#""input_cost_per_mtok": -1"#), format!("{m}.input_cost_per_mtok"), ">= 0"),
        (
            with_member_fields(r#""cached_input_cost_per_mtok": -0.3"#),
            format!("{m}.cached_input_cost_per_mtok"),
            ">= 0",
        ),
        (with_member_fields(r#""cache_write_cost_per_mtok": -1"#), format!("{m}.cache_write_cost_per_mtok"), ">= 0"),
        (with_member_fields(r#""tags": ["a,b"]"#), format!("{m}.tags[0]"), "commas"),
        (with_member_fields(r#""colour": "red""#), format!("{m}.colour"), "unknown field"),
        (with_pool_fields(r#""strategy": "fastest""#), "pools.gpt4o_16k.strategy".into(), "fastest"),
        (
            with_pool_fields(r#""strategy": "lowest_latency", "explore": 1.5"#),
            "pools.gpt4o_16k.explore".into(),
            "between",
        ),
        (with_pool_fields(r#""explore": 0.1"#), "pools.gpt4o_16k.explore".into(), "lowest_latency"),
        (with_pool_fields(r#""strategy": "lowest_cost""#), format!("{m}.input_cost_per_mtok"), "lowest_cost"),
        (with_routers(r#"{"gpt4o_16k": {"default": "gpt4o_16k"}}"#), "routers.gpt4o_16k".into(), "pool"),
        (with_routers(r#"{"gpt-4o": {"default": "gpt4o_16k"}}"#), "routers.gpt-4o".into(), "directly served model"),
        (with_routers(r#"{"r": {"rules": []}}"#), "routers.r.default".into(), "required"),
        (with_routers(r#"{"r": {"default": "nope"}}"#), "routers.r.default".into(), "nope"),
        (
            with_routers(r#"{"r": {"rules": [{"name": "x", "pool": "nope"}], "default": "gpt4o_16k"}}"#),
            "routers.r.rules[0].pool".into(),
            "nope",
        ),
        (
            with_routers(
                r#"{"r": {"rules": [{"name": "x", "pool": "gpt4o_16k"}, {"name": "x", "pool": "gpt4o_16k"}], "default": "gpt4o_16k"}}"#,
            ),
            "routers.r.rules[1].name".into(),
            "twice",
        ),
        (
            with_routers(
                r#"{"r": {"rules": [{"name": "x", "when": {"has_image": true}, "pool": "gpt4o_16k"}], "default": "gpt4o_16k"}}"#,
            ),
            "routers.r.rules[0].when.has_image".into(),
            "unknown field",
        ),
        (
            with_routers(
                r#"{"r": {"rules": [{"name": "x", "when": {"header": {"name": "x-a"}}, "pool": "gpt4o_16k"}], "default": "gpt4o_16k"}}"#,
            ),
            "routers.r.rules[0].when.header".into(),
            "exactly one",
        ),
        (
            with_routers(
                r#"{"r": {"rules": [{"name": "x", "when": {"any_keywords": ["  "]}, "pool": "gpt4o_16k"}], "default": "gpt4o_16k"}}"#,
            ),
            "routers.r.rules[0].when.any_keywords[0]".into(),
            "letter",
        ),
        (
            with_routers(
                r#"{"r": {"rules": [{"name": "x", "when": {"min_prompt_tokens": 10, "max_prompt_tokens": 5}, "pool": "gpt4o_16k"}], "default": "gpt4o_16k"}}"#,
            ),
            "routers.r.rules[0].when.max_prompt_tokens".into(),
            "min_prompt_tokens",
        ),
        (
            with_routers(r#"{"r": {"learned": {"strong": "gpt4o_16k", "weak": "gpt-4o"}}}"#),
            "routers.r.learned".into(),
            "threshold",
        ),
        (
            with_routers(r#"{"r": {"learned": {"strong": "gpt4o_16k", "weak": "gpt-4o", "threshold": 2}}}"#),
            "routers.r.learned.threshold".into(),
            "between",
        ),
        (
            with_routers(
                r#"{"r": {"learned": {"strong": "gpt4o_16k", "weak": "gpt-4o", "threshold": 0.5, "explore": 0.9}}}"#,
            ),
            "routers.r.learned.explore".into(),
            "between",
        ),
    ];
    for (json, field, needle) in cases {
        let e = error_for(&json);
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(needle), "{e} should mention {needle}");
    }
}

#[test]
fn more_than_64_distinct_tags_are_refused() {
    let tags: Vec<String> = (0..65).map(|i| format!("\"t{i}\"")).collect();
    let e = error_for(&with_member_fields(&format!(r#""tags": [{}]"#, tags.join(","))));
    assert_eq!(e.field, "pools.gpt4o_16k.members[0].tags[64]");
}

#[test]
fn hedge_and_stream_idle_timeouts_parse_and_are_validated_naming_the_field() {
    let cfg = parse(&with_pool_fields(r#""hedge_after_ms": 200, "stream_idle_timeout_ms": 5000"#)).unwrap();
    let retry = &cfg.pool("gpt4o_16k").unwrap().1.retry;
    assert_eq!((retry.hedge_after_ms, retry.stream_idle_timeout_ms), (Some(200), Some(5000)));
    assert_eq!(parse(&sample_config()).unwrap().pool("gpt4o_16k").unwrap().1.retry.hedge_after_ms, None);
    assert!(!retry.resume_streams, "continuation is opt-in");
    let cfg = parse(&with_pool_fields(r#""resume_streams": true"#)).unwrap();
    assert!(cfg.pool("gpt4o_16k").unwrap().1.retry.resume_streams);
    let with_defaults =
        sample_config().replacen("\"pools\": {", "\"defaults\": {\"resume_streams\": true}, \"pools\": {", 1);
    assert!(parse(&with_defaults).unwrap().pool("gpt4o_16k").unwrap().1.retry.resume_streams, "from defaults");
    let cases = [
        (r#""hedge_after_ms": 0"#, "pools.gpt4o_16k.hedge_after_ms"),
        (r#""stream_idle_timeout_ms": 0"#, "pools.gpt4o_16k.stream_idle_timeout_ms"),
        (r#""hedge_after_ms": 9000, "timeout_ms": 5000"#, "pools.gpt4o_16k.timeout_ms"),
        (r#""hedge_after_ms": 100, "max_attempts": 1"#, "pools.gpt4o_16k.hedge_after_ms"),
        (r#""hedge_after": 100"#, "pools.gpt4o_16k"),
        (r#""resume_streams": true, "max_attempts": 1"#, "pools.gpt4o_16k.resume_streams"),
        (r#""resume_streams": "yes""#, "pools.gpt4o_16k"),
    ];
    for (fields, field) in cases {
        let e = error_for(&with_pool_fields(fields));
        assert!(e.field.starts_with(field), "{fields}: {e}");
    }
}

#[test]
fn canary_members_parse_and_are_validated_naming_the_field() {
    let cfg = parse(&with_member_fields(r#""canary": {"max_error_rate": 0.2, "min_requests": 50}"#)).unwrap();
    let members = &cfg.pool("gpt4o_16k").unwrap().1.members;
    assert_eq!(members[0].canary, Some(crate::config::CanaryPolicy { max_error_rate: 0.2, min_requests: 50 }));
    assert_eq!(members[1].canary, None);
    let cases = [
        (
            r#""canary": {"max_error_rate": 1.5, "min_requests": 50}"#,
            "pools.gpt4o_16k.members[0].canary.max_error_rate",
        ),
        (r#""canary": {"max_error_rate": 0.2, "min_requests": 0}"#, "pools.gpt4o_16k.members[0].canary.min_requests"),
        (r#""canary": {"max_error_rate": 0.2}"#, "pools.gpt4o_16k.members[0]"),
        (r#""canary": {"max_error_rate": 0.2, "min_requests": 5, "window": 3}"#, "pools.gpt4o_16k.members[0]"),
    ];
    for (fields, field) in cases {
        let e = error_for(&with_member_fields(fields));
        assert!(e.field.starts_with(field), "{fields}: {e}");
    }
}

#[test]
fn shadow_parses_and_is_validated_naming_the_field() {
    let cfg =
        parse(&with_pool_fields(r#""shadow": {"provider": "beta", "model": "gpt-4o-next", "sample": 0.1}"#)).unwrap();
    let shadow = cfg.pool("gpt4o_16k").unwrap().1.shadow.as_ref().unwrap();
    assert_eq!((shadow.member.id.as_str(), shadow.sample), ("beta/gpt-4o-next", 0.1));
    let cases = [
        (r#""shadow": {"provider": "nope", "model": "m", "sample": 0.1}"#, "pools.gpt4o_16k.shadow.provider"),
        (r#""shadow": {"provider": "beta", "model": " ", "sample": 0.1}"#, "pools.gpt4o_16k.shadow.model"),
        (r#""shadow": {"provider": "beta", "model": "m", "sample": 0}"#, "pools.gpt4o_16k.shadow.sample"),
        (r#""shadow": {"provider": "beta", "model": "m", "sample": 1.5}"#, "pools.gpt4o_16k.shadow.sample"),
        (r#""shadow": {"provider": "beta", "model": "m"}"#, "pools.gpt4o_16k"),
        (r#""shadow": {"provider": "beta", "model": "m", "sample": 0.1, "share": 1}"#, "pools.gpt4o_16k"),
    ];
    for (fields, field) in cases {
        let e = error_for(&with_pool_fields(fields));
        assert!(e.field.starts_with(field), "{fields}: {e}");
    }
}

#[test]
fn a_name_given_twice_is_refused() {
    let json =
        r#"{"providers": {"p": {"cluster": "p", "host": "p"}, "p": {"cluster": "q", "host": "q"}}, "pools": {}}"#;
    let e = error_for(json);
    assert_eq!(e.field, "providers", "{e}");
    assert!(e.to_string().contains("`p` is given twice"), "{e}");
}

#[test]
fn shared_state_takes_defaults_and_refuses_bad_fields_by_name() {
    assert_eq!(parse(&sample_config()).unwrap().shared_state, None);
    let with = |section: &str| sample_config().replacen('{', &format!(r#"{{"shared_state": {section},"#), 1);
    let s = parse(&with(r#"{"cluster": "state"}"#)).unwrap().shared_state.unwrap();
    assert_eq!((s.cluster.as_str(), s.timeout_ms, s.fallback_local, s.lease_ttl_s), ("state", 50, true, 600));
    let deny = parse(&with(r#"{"cluster": "state", "on_unavailable": "deny", "timeout_ms": 20}"#)).unwrap();
    assert_eq!(deny.shared_state.map(|s| (s.fallback_local, s.timeout_ms)), Some((false, 20)));
    for (section, field) in [
        (r#"{}"#, "shared_state.cluster"),
        (r#"{"cluster": " "}"#, "shared_state.cluster"),
        (r#"{"cluster": "s", "timeout_ms": 0}"#, "shared_state.timeout_ms"),
        (r#"{"cluster": "s", "timeout_ms": "50"}"#, "shared_state.timeout_ms"),
        (r#"{"cluster": "s", "on_unavailable": "open"}"#, "shared_state.on_unavailable"),
        (r#"{"cluster": "s", "lease_ttl": 5}"#, "shared_state.lease_ttl"),
        (r#""state""#, "shared_state"),
    ] {
        assert_eq!(error_for(&with(section)).field, field, "{section}");
    }
}

#[test]
fn drop_params_parse_and_unknown_names_are_refused_naming_the_field() {
    let cfg = parse(&with_pool_fields(r#""drop_params": ["seed", "top_k"]"#)).unwrap();
    let pool = &cfg.pools[cfg.pool_by_name["gpt4o_16k"]];
    let bit = crate::api::params::named;
    assert_eq!(pool.drop_params, bit("seed") | bit("top_k"));
    let all = parse(&with_pool_fields(r#""drop_params": ["all"]"#)).unwrap();
    assert_eq!(all.pools[all.pool_by_name["gpt4o_16k"]].drop_params, u64::MAX);
    let e = error_for(&with_pool_fields(r#""drop_params": ["sead"]"#));
    assert_eq!(e.field, "pools.gpt4o_16k.drop_params");
    assert!(e.message.contains("sead"), "{e}");
    // Members know what their kind refuses.
    let openai = &pool.members[0];
    assert_eq!((openai.refuses & bit("top_k") != 0, openai.refuses & bit("seed")), (true, 0));
}
