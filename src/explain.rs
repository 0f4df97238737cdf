//! Offline tools for operators (`switchboard check`, `switchboard explain`):
//! the filter's own validation and decision code, rendered as text.

use std::cell::RefCell;
use std::fmt::Write;

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::config::{Config, ConfigError, Member, Strategy, Target};
use crate::routing::plan::REQUIRE_TAGS_HEADER;
use crate::routing::router::Via;
use crate::routing::{Availability, Plan, RouteInput, StageReport, Verdict};

/// Validates a configuration as the filter does at load. Secrets are taken
/// from `env` when set there; a variable missing here is reported in the
/// summary (the filter reads them from the VM's environment), not an error.
pub fn check(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<(Config, String), Vec<ConfigError>> {
    let missing = RefCell::new(Vec::<String>::new());
    let lookup = |name: &str| {
        env(name).or_else(|| {
            missing.borrow_mut().push(name.to_string());
            Some("placeholder".to_string())
        })
    };
    let config = Config::parse_all(json, &lookup)?;
    let mut out = format!(
        "ok: {} providers, {} pools, {} routers, {} direct models\n",
        config.providers.len(),
        config.listed_pools().count(),
        config.routers.len(),
        config.direct_models().count()
    );
    let mut missing = missing.into_inner();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let _ = writeln!(out, "note: not set here (the filter needs them at load): {}", missing.join(", "));
    }
    Ok((config, out))
}

/// Offline: every member healthy, nothing in flight, no latency data.
fn offline(_: &Member) -> Availability {
    Availability::Healthy
}

/// The decision for one request body, as the filter would make it with no
/// live data. `Err` carries the error the client would get, explained.
pub fn explain(
    config: &Config,
    body: &[u8],
    endpoint: Endpoint,
    headers: &[(String, String)],
) -> Result<String, String> {
    let mut out = String::new();
    let request =
        ParsedRequest::parse(body, endpoint).map_err(|e| format!("{} {}: {}", e.status, e.code, e.message))?;
    let content = request.content();
    let _ = writeln!(
        out,
        "request: model {:?}, stream {}, about {} prompt tokens (estimate), {} image(s), tools {}, json_schema {}{}",
        request.target,
        request.stream,
        content.prompt_tokens,
        content.images,
        yes_no(request.has_tools),
        yes_no(request.json_schema),
        request.max_output_tokens.map_or(String::new(), |n| format!(", max output {n}"))
    );
    let mut misses = Vec::new();
    let input = RouteInput { request: &request, headers: &headers.to_vec(), scorer: None, native_kinds: 0 };
    let result = Plan::build(config, input, 0, |router, rule, why| misses.push((router, rule, why)));
    if let Some(Target::Router(r)) = config.target(&request.target) {
        if let Some(router) = config.router_at(r) {
            let _ = writeln!(out, "router {}:", router.name);
            for (_, rule, why) in &misses {
                let name = router.rules.get(*rule).map_or("?", |x| x.name.as_str());
                let _ = writeln!(out, "  rule {name:?}: no match ({why})");
            }
        }
    }
    let plan = match result {
        Ok(plan) => plan,
        Err(e) => {
            let _ = writeln!(out, "answer: {} {}: {}", e.status, e.code, e.message);
            return Err(out);
        }
    };
    if let (Some(choice), Some((_, rule))) = (plan.route, plan.router_headers(config)) {
        let pool = config.pool_at(choice.pool).map_or("?", |p| p.name.as_str());
        match choice.via {
            Via::Rule(_) => _ = writeln!(out, "  rule {rule:?}: matched -> pool {pool}"),
            Via::Default => _ = writeln!(out, "  no rule matched -> default pool {pool}"),
            Via::Learned { .. } => {
                _ = writeln!(out, "  no rule matched -> learned split: no scorer offline, strong pool {pool}")
            }
        }
    }
    if let Some(tags) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(REQUIRE_TAGS_HEADER)) {
        let _ = writeln!(out, "required tags: {}", tags.1);
    }
    for (i, stage) in plan.explain(config, &offline).iter().enumerate() {
        render_stage(config, &mut out, i, stage);
    }
    out.push_str("note: health, requests in flight and live latency are unknown offline; every member is assumed healthy with no data.\n");
    Ok(out)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn render_stage(config: &Config, out: &mut String, index: usize, stage: &StageReport) {
    let Some(pool) = config.pool_at(stage.pool) else { return };
    let role = if index == 0 { "pool" } else { "then fallback pool" };
    let _ = writeln!(
        out,
        "{role} {} (strategy {}, max_attempts {}):",
        pool.name,
        pool.strategy.as_str(),
        pool.retry.max_attempts
    );
    for (member, verdict) in &stage.verdicts {
        let Some(m) = pool.members.get(*member) else { continue };
        let mark = if *verdict == Verdict::Candidate { "kept   " } else { "dropped" };
        let why = match verdict {
            Verdict::Candidate => facts(m, pool.strategy),
            other => other.to_string().trim_start_matches("dropped: ").to_string(),
        };
        let _ = writeln!(out, "  {mark} {}  {why}", m.id);
    }
    let ranked: Vec<&str> = stage.ranking.iter().filter_map(|i| pool.members.get(*i)).map(|m| m.id.as_str()).collect();
    if ranked.is_empty() {
        let _ = writeln!(out, "  ranking: no candidate");
    } else {
        let how = match pool.strategy {
            Strategy::Weighted => "random by weight",
            Strategy::LeastBusy => "fewest in flight, then by weight",
            Strategy::LowestLatency => "no latency data first (all, offline), then fastest",
            Strategy::LowestCost => "cheapest expected cost, weighted among equals",
            Strategy::Priority => "best priority tier, weighted within",
        };
        let _ = writeln!(out, "  ranking ({how}): {}", ranked.join(", "));
    }
}

fn facts(m: &Member, strategy: Strategy) -> String {
    let mut parts = vec![format!("weight {}", m.weight)];
    if strategy == Strategy::Priority || m.priority != 0 {
        parts.push(format!("priority {}", m.priority));
    }
    if let Some(w) = m.context_window {
        parts.push(format!("context {w}"));
    }
    if let (Some(i), Some(o)) = (m.input_cost_per_mtok, m.output_cost_per_mtok) {
        parts.push(format!("${i}/${o} per Mtok"));
    }
    for (what, price) in [("cache reads", m.cached_input_cost_per_mtok), ("cache writes", m.cache_write_cost_per_mtok)]
    {
        if let Some(p) = price {
            parts.push(format!("{what} ${p} per Mtok"));
        }
    }
    if !m.tags.is_empty() {
        parts.push(format!("tags {}", m.tags.join(",")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {

    use super::*;

    const CONFIG: &str = r#"{
      "providers": {
        "a": {"cluster": "a", "host": "a", "api_key_env": "SB_TEST_A"},
        "b": {"kind": "anthropic", "cluster": "b", "host": "b", "api_key_env": "SB_TEST_B"}
      },
      "pools": {
        "vision": {"members": [
            {"provider": "a", "model": "see", "capabilities": ["vision"], "context_window": 128000},
            {"provider": "b", "model": "blind", "capabilities": [], "context_window": 200000}
          ]},
        "small": {"strategy": "priority", "members": [{"provider": "a", "model": "s", "context_window": 4000}], "fallback_pools": ["vision"]}
      },
      "routers": {"auto": {"rules": [
          {"name": "confidential", "when": {"header": {"name": "x-data-class", "equals": "confidential"}}, "pool": "small"},
          {"name": "images", "when": {"has_images": true}, "pool": "vision"}
        ], "default": "small"}}
    }"#;

    fn env(name: &str) -> Option<String> {
        (name == "SB_TEST_A").then(|| "sk".to_string())
    }

    #[test]
    fn check_summarises_and_names_unset_variables() {
        let (_, summary) = check(CONFIG.as_bytes(), &env).unwrap();
        assert!(summary.starts_with("ok: 2 providers, 2 pools, 1 routers"), "{summary}");
        assert!(summary.contains("not set here") && summary.contains("SB_TEST_B"), "{summary}");
        let e = check(CONFIG.replace("\"small\"}}", "\"nope\"}}").as_bytes(), &env).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "routers.auto.default");
    }

    #[test]
    fn check_reports_every_error_of_independent_parts() {
        let broken = CONFIG
            .replace(r#""host": "b","#, r#""host": "b/x","#)
            .replace(r#""context_window": 4000"#, r#""context_window": 0"#)
            .replace("\"small\"}}", "\"nope\"}}");
        let fields: Vec<String> = check(broken.as_bytes(), &env).unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["providers.b.host", "pools.small.members[0].context_window", "routers.auto.default"]);
    }

    #[test]
    fn explain_shows_rules_members_and_ranking() {
        let (cfg, _) = check(CONFIG.as_bytes(), &env).unwrap();
        let body = br#"{"model":"auto","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        let out = explain(&cfg, body, Endpoint::ChatCompletions, &[]).unwrap();
        assert!(out.contains("rule \"confidential\": no match (header x-data-class absent)"), "{out}");
        assert!(out.contains("rule \"images\": matched -> pool vision"), "{out}");
        assert!(out.contains("kept    a/see"), "{out}");
        assert!(out.contains("dropped b/blind  no vision capability"), "{out}");
        assert!(out.contains("ranking (random by weight): a/see"), "{out}");
        assert!(out.contains("unknown offline"), "{out}");
    }

    #[test]
    fn explain_with_headers_and_fallback_stages() {
        let (cfg, _) = check(CONFIG.as_bytes(), &env).unwrap();
        let long = format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(5000));
        let headers = vec![("x-data-class".to_string(), "confidential".to_string())];
        let out = explain(&cfg, long.as_bytes(), Endpoint::ChatCompletions, &headers).unwrap();
        assert!(out.contains("rule \"confidential\": matched -> pool small"), "{out}");
        assert!(out.contains("dropped a/s  context_window 4000 <"), "{out}");
        assert!(out.contains("then fallback pool vision"), "{out}");
    }

    #[test]
    fn explain_reports_the_clients_error() {
        let (cfg, _) = check(CONFIG.as_bytes(), &env).unwrap();
        let out = explain(&cfg, br#"{"model":"nope","messages":[]}"#, Endpoint::ChatCompletions, &[]).unwrap_err();
        assert!(out.contains("404 model_not_found"), "{out}");
        let out = explain(&cfg, b"{", Endpoint::ChatCompletions, &[]).unwrap_err();
        assert!(out.contains("invalid_json"), "{out}");
    }

    #[test]
    fn every_example_configuration_is_valid() {
        for (name, json) in [
            ("demo", include_str!("../examples/demo/switchboard.json")),
            ("real-providers", include_str!("../examples/real-providers/switchboard.json")),
            ("routing", include_str!("../examples/routing/switchboard.json")),
        ] {
            if let Err(e) = check(json.as_bytes(), &|_| None) {
                panic!("examples/{name}/switchboard.json: {e:?}");
            }
        }
    }
}
