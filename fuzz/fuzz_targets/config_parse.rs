//! Plugin configuration: arbitrary bytes must give a Config or a ConfigError,
//! never a panic; a valid Config must list its models and build requests.
#![no_main]

use fuzz_common::{check_error, is_json, NOW_MS};
use libfuzzer_sys::fuzz_target;
use switchboard::api::models::ModelListing;
use switchboard::api::request::ParsedRequest;
use switchboard::api::Endpoint;
use switchboard::config::Config;
use switchboard::providers::{build_request, BuildContext};

/// Any variable is set except `MISSING*`; `EMPTY*` is set but empty.
fn env(name: &str) -> Option<String> {
    if name.starts_with("MISSING") {
        None
    } else if name.starts_with("EMPTY") {
        Some(String::new())
    } else {
        Some(format!("secret-{name}"))
    }
}

const BODY: &[u8] = br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#;

fuzz_target!(|data: &[u8]| {
    let cfg = match Config::parse(data, &env) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(!cfg.providers.is_empty());
    assert!(cfg.max_body_bytes >= 1024);
    for (i, pool) in cfg.pools.iter().enumerate() {
        assert!(!pool.members.is_empty(), "pool {} without members", pool.name);
        assert!(pool.total_weight() > 0 || !pool.listed, "listed pool {} with zero weight", pool.name);
        assert_eq!(cfg.pool(&pool.name).map(|(index, _)| index), Some(i), "pool {} not found by name", pool.name);
        for t in [pool.retry.per_try_timeout_ms, pool.retry.first_byte_timeout_ms].into_iter().flatten() {
            assert!(t > 0 && pool.retry.timeout_ms >= t, "pool {}: timeout {t} out of bounds", pool.name);
        }
        for f in &pool.fallback_pools {
            assert!(cfg.pool_at(*f).is_some() && *f != i, "bad fallback pool index");
        }
        for m in &pool.members {
            assert!(cfg.provider(m.provider).is_some(), "member {} without provider", m.id);
        }
    }
    let listing = ModelListing::build(&cfg);
    for query in ["", "subtype=pool", "subtype=model"] {
        let body = listing.body(query);
        assert!(is_json(body), "model listing ({query}) is not JSON: {:?}", String::from_utf8_lossy(body));
    }
    // A fixed request through every member of the fuzzed configuration.
    let Ok(req) = ParsedRequest::parse(BODY, Endpoint::ChatCompletions) else { return };
    for pool in cfg.pools.iter().take(8) {
        let ctx = BuildContext { now_unix_s: NOW_MS / 1000, max_response_tokens: pool.max_response_tokens };
        for member in pool.members.iter().take(8) {
            let Some(provider) = cfg.provider(member.provider) else { continue };
            match build_request(provider, member, Endpoint::ChatCompletions, &req, &ctx) {
                // Paths and hosts come from the (trusted) configuration here, so only the body is checked.
                Ok(up) => assert!(is_json(&up.body), "upstream body is not JSON"),
                Err(e) => check_error(&e),
            }
        }
    }
});
