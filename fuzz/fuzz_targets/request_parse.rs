//! Client request bodies: parsing for every endpoint, the OpenAI rewrite,
//! routing (plan, fallbacks, failover order) and the upstream request built
//! for every member of every provider kind.
#![no_main]

use fuzz_common::{check_error, check_upstream, config, json_object, mix, ENDPOINTS, NOW_MS};
use libfuzzer_sys::fuzz_target;
use switchboard::api::request::ParsedRequest;
use switchboard::exchange::Route;
use switchboard::providers::{build_request, BuildContext};
use switchboard::routing::{Availability, Plan};

/// Model names the rewrite must embed safely, including ones needing escapes.
const MODELS: [&str; 2] = ["gpt-4o", "we\"ird\\model\n\u{1}é"];

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Route::parse("POST", text);
    }
    for endpoint in ENDPOINTS {
        let req = match ParsedRequest::parse(data, endpoint) {
            Ok(req) => req,
            Err(e) => {
                assert_eq!(e.status, 400, "parse errors are client errors: {e:?}");
                check_error(&e);
                continue;
            }
        };
        assert!(!req.target.is_empty(), "a parsed request always has a target");

        // The OpenAI rewrite: a JSON object, `model` replaced, gateway fields gone.
        for model in MODELS {
            let body = req.openai_body(model);
            let fields = json_object(&body)
                .unwrap_or_else(|| panic!("openai_body is not a JSON object: {:?}", String::from_utf8_lossy(&body)));
            let got: Option<String> = fields.get("model").and_then(|v| serde_json::from_str(v.get()).ok());
            assert_eq!(got.as_deref(), Some(model), "model not replaced");
            for gateway in ["provider", "fallback", "fallback_models", "load_balance_group"] {
                assert!(!fields.contains_key(gateway), "gateway field {gateway} sent upstream");
            }
        }
        let _ = req.field("messages");

        // Routing as the filter does it: the plan, then failover until exhausted.
        match Plan::new(cfg, &req, NOW_MS) {
            Ok(mut plan) => {
                for step in 0..16u64 {
                    let r = mix(data, step);
                    let availability = |m: &switchboard::config::Member| match mix(m.id.as_bytes(), r) % 4 {
                        0 => Availability::Unavailable { until_ms: NOW_MS + (r % 10_000) },
                        1 => Availability::Trial,
                        _ => Availability::Healthy,
                    };
                    let Some((pool, member)) = plan.next(cfg, availability, r) else { break };
                    let m = cfg.pool_at(pool).and_then(|p| p.members.get(member));
                    assert!(m.is_some(), "plan picked a member that does not exist: {pool}/{member}");
                    assert!(
                        !plan.attempts.iter().any(|a| a.pool == pool && a.member == member),
                        "plan re-picked member {pool}/{member} in one request"
                    );
                    let status = [0u16, 429, 500, 502, 503][(r % 5) as usize];
                    plan.record(cfg, pool, member, status);
                }
                check_error(&plan.exhausted_error(&req.target));
            }
            Err(e) => check_error(&e),
        }

        // The upstream request for every member, every provider kind.
        for pool in cfg.listed_pools() {
            let ctx = BuildContext { now_unix_s: NOW_MS / 1000, max_response_tokens: pool.max_response_tokens };
            for member in &pool.members {
                let Some(provider) = cfg.provider(member.provider) else { continue };
                match build_request(provider, member, endpoint, &req, &ctx) {
                    Ok(up) => check_upstream(&up),
                    Err(e) => check_error(&e),
                }
            }
        }
    }
});
