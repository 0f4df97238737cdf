//! The configuration JSON as written by users, and its validation.
//! Unknown fields are refused so a typo never silently does nothing.

use std::collections::{BTreeMap, HashMap};

use switchboard_schema::{RawConditions, RawConfig, RawMember, RawPool, RawPoolPolicy, RawProvider, RawRouter};

use super::{
    err, CanaryPolicy, Capabilities, Capability, Conditions, Config, ConfigError, Credentials, Cutoff, EnvLookup,
    HeaderCondition, HeaderTest, HealthPolicy, Keywords, Learned, Member, MemberFacts, Pool, ProbePolicy, Provider,
    ProviderKind, RetryPolicy, Router, Rule, Secret, Shadow, Strategy, DEFAULT_CLUSTER_HEADER, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RETRY_ON, DEFAULT_TIMEOUT_MS,
};
use crate::text::PhraseSet;

/// Distinct member tags a configuration may use (they are bits of a `u64`).
const MAX_TAGS: usize = 64;
const DEFAULT_EXPLORE: f64 = 0.05;

pub(super) fn parse(json: &[u8]) -> Result<RawConfig, ConfigError> {
    switchboard_schema::parse(json).map_err(|e| err(e.field, e.message))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn secret(env: EnvLookup<'_>, field: &str, var: &str) -> Result<Secret, ConfigError> {
    if var.is_empty() {
        return Err(err(field, "environment variable name is empty"));
    }
    match env(var) {
        Some(value) if !value.is_empty() => Ok(Secret::new(value)),
        Some(_) => Err(err(field, format!("environment variable {var} is empty"))),
        None => Err(err(
            field,
            format!("environment variable {var} is not set (list it in vm_config.environment_variables)"),
        )),
    }
}

fn validate_provider(name: &str, raw: RawProvider, env: EnvLookup<'_>) -> Result<Provider, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    if raw.cluster.trim().is_empty() {
        return Err(err(field("cluster"), "must name an Envoy cluster"));
    }
    if raw.host.trim().is_empty() || raw.host.contains(['/', ' ']) {
        return Err(err(field("host"), "must be a host name (with optional :port), no scheme or path"));
    }
    let kind = raw.kind;
    let credentials = match kind {
        ProviderKind::Bedrock => {
            if raw.api_key_env.is_some() {
                return Err(err(field("api_key_env"), "bedrock uses access_key_id_env and secret_access_key_env"));
            }
            let access = raw
                .access_key_id_env
                .as_deref()
                .ok_or_else(|| err(field("access_key_id_env"), "required for kind bedrock"))?;
            let secret_key = raw
                .secret_access_key_env
                .as_deref()
                .ok_or_else(|| err(field("secret_access_key_env"), "required for kind bedrock"))?;
            let session_token = match raw.session_token_env.as_deref() {
                Some(var) => Some(secret(env, &field("session_token_env"), var)?),
                None => None,
            };
            Credentials::Aws {
                access_key_id: secret(env, &field("access_key_id_env"), access)?,
                secret_access_key: secret(env, &field("secret_access_key_env"), secret_key)?,
                session_token,
            }
        }
        _ => {
            for (f, present) in [
                ("access_key_id_env", raw.access_key_id_env.is_some()),
                ("secret_access_key_env", raw.secret_access_key_env.is_some()),
                ("session_token_env", raw.session_token_env.is_some()),
            ] {
                if present {
                    return Err(err(field(f), "only valid for kind bedrock"));
                }
            }
            match raw.api_key_env.as_deref() {
                Some(var) => Credentials::ApiKey(secret(env, &field("api_key_env"), var)?),
                None if kind == ProviderKind::OpenaiCompatible => Credentials::None,
                None => {
                    return Err(err(
                        field("api_key_env"),
                        format!("required for kind {} (name the environment variable holding the key)", kind.as_str()),
                    ))
                }
            }
        }
    };
    if raw.api_version.is_some() && kind != ProviderKind::Azure {
        return Err(err(field("api_version"), "only valid for kind azure"));
    }
    if raw.region.is_some() && kind != ProviderKind::Bedrock {
        return Err(err(field("region"), "only valid for kind bedrock"));
    }
    if raw.anthropic_version.is_some() && kind != ProviderKind::Anthropic {
        return Err(err(field("anthropic_version"), "only valid for kind anthropic"));
    }
    let default_base = match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => "/v1",
        ProviderKind::Anthropic => "/v1",
        ProviderKind::Gemini => "/v1beta",
        ProviderKind::Azure | ProviderKind::Bedrock => "",
    };
    let base_path = match raw.base_path {
        Some(p) if !p.is_empty() && !p.starts_with('/') => {
            return Err(err(field("base_path"), "must start with '/'"));
        }
        Some(p) => p.trim_end_matches('/').to_string(),
        None => default_base.to_string(),
    };
    Ok(Provider {
        name: name.to_string(),
        kind,
        cluster: raw.cluster,
        host: raw.host,
        base_path,
        credentials,
        api_version: raw.api_version.unwrap_or_else(|| "2024-10-21".to_string()),
        region: raw.region.unwrap_or_else(|| "us-east-1".to_string()),
        anthropic_version: raw.anthropic_version.unwrap_or_else(|| "2023-06-01".to_string()),
    })
}

fn policies(
    field: &str,
    pool: &RawPoolPolicy,
    defaults: &RawPoolPolicy,
) -> Result<(RetryPolicy, HealthPolicy, Option<ProbePolicy>), ConfigError> {
    let retry_on =
        pool.retry_on.clone().or_else(|| defaults.retry_on.clone()).unwrap_or_else(|| DEFAULT_RETRY_ON.to_vec());
    for (i, status) in retry_on.iter().enumerate() {
        if !(400..=599).contains(status) {
            return Err(err(format!("{field}.retry_on[{i}]"), format!("{status} is not a 4xx or 5xx status")));
        }
    }
    let max_attempts = pool.max_attempts.or(defaults.max_attempts).unwrap_or(3);
    if !(1..=10).contains(&max_attempts) {
        return Err(err(format!("{field}.max_attempts"), "must be between 1 and 10"));
    }
    let per_try_timeout_ms = pool.per_try_timeout_ms.or(defaults.per_try_timeout_ms);
    let first_byte_timeout_ms = pool.first_byte_timeout_ms.or(defaults.first_byte_timeout_ms);
    let timeout_ms = pool.timeout_ms.or(defaults.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS);
    let hedge_after_ms = pool.hedge_after_ms.or(defaults.hedge_after_ms);
    let stream_idle_timeout_ms = pool.stream_idle_timeout_ms.or(defaults.stream_idle_timeout_ms);
    for (name, value) in [
        ("per_try_timeout_ms", per_try_timeout_ms),
        ("first_byte_timeout_ms", first_byte_timeout_ms),
        ("hedge_after_ms", hedge_after_ms),
        ("stream_idle_timeout_ms", stream_idle_timeout_ms),
    ] {
        match value {
            Some(0) => return Err(err(format!("{field}.{name}"), "must be > 0")),
            Some(t) if t > timeout_ms => {
                return Err(err(format!("{field}.timeout_ms"), format!("must be >= {name} ({t})")))
            }
            _ => {}
        }
    }
    let resume_streams = pool.resume_streams.or(defaults.resume_streams).unwrap_or(false);
    if resume_streams && max_attempts < 2 {
        return Err(err(
            format!("{field}.resume_streams"),
            "a continuation is a second attempt: needs max_attempts >= 2",
        ));
    }
    if hedge_after_ms.is_some() && max_attempts < 2 {
        return Err(err(format!("{field}.hedge_after_ms"), "a hedge is a second attempt: needs max_attempts >= 2"));
    }
    let health = pool.health.clone().or_else(|| defaults.health.clone()).unwrap_or_default();
    let health = HealthPolicy {
        consecutive_failures: health.consecutive_failures.unwrap_or(3),
        cooldown_ms: health.cooldown_ms.unwrap_or(5_000),
        max_cooldown_ms: health.max_cooldown_ms.unwrap_or(300_000),
    };
    if health.consecutive_failures == 0 {
        return Err(err(format!("{field}.health.consecutive_failures"), "must be >= 1"));
    }
    if health.max_cooldown_ms < health.cooldown_ms {
        return Err(err(format!("{field}.health.max_cooldown_ms"), "must be >= cooldown_ms"));
    }
    let probe = pool.probe.clone().or_else(|| defaults.probe.clone()).map(|p| ProbePolicy {
        interval_ms: p.interval_ms.unwrap_or(5_000),
        timeout_ms: p.timeout_ms.unwrap_or(5_000),
    });
    if let Some(p) = &probe {
        if p.interval_ms < 100 {
            return Err(err(format!("{field}.probe.interval_ms"), "must be >= 100"));
        }
    }
    let retry = RetryPolicy {
        retry_on,
        max_attempts,
        per_try_timeout_ms,
        first_byte_timeout_ms,
        hedge_after_ms,
        stream_idle_timeout_ms,
        resume_streams,
        timeout_ms,
    };
    Ok((retry, health, probe))
}

pub(super) fn validate(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, Vec<ConfigError>> {
    // Independent parts (providers, pools, routers) are all checked, so one run reports every error.
    let mut errors = Vec::new();
    let cluster_header = raw.cluster_header.unwrap_or_else(|| DEFAULT_CLUSTER_HEADER.to_string());
    if !is_header_name(&cluster_header) {
        errors.push(err("cluster_header", "must be a lowercase HTTP header name"));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes < 1024 {
        errors.push(err("max_body_bytes", "must be at least 1024"));
    }
    if raw.providers.is_empty() {
        errors.push(err("providers", "at least one provider is required"));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut provider_index = HashMap::new();
    for (name, p) in raw.providers {
        provider_index.insert(name.clone(), providers.len());
        match validate_provider(&name, p, env) {
            Ok(p) => providers.push(p),
            Err(e) => {
                errors.push(e);
                providers.push(placeholder_provider(name));
            }
        }
    }
    // Fail on defaults that are wrong even when every pool overrides them.
    let defaults = policies("defaults", &raw.defaults, &RawPoolPolicy::default());
    if let Err(e) = &defaults {
        errors.push(e.clone());
    }

    let pool_names: HashMap<String, usize> = raw.pools.keys().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut pools = Vec::with_capacity(raw.pools.len());
    let mut tags: Vec<String> = Vec::new();
    for (name, p) in raw.pools {
        match validate_pool(name.clone(), p, &provider_index, &pool_names, &raw.defaults, &mut tags) {
            Ok(pool) => pools.push(pool),
            Err(e) => {
                errors.push(e);
                // Keeps pool indexes aligned with `pool_names` for the checks that follow.
                pools.push(placeholder_pool(name));
            }
        }
    }

    // A model name served by exactly one deployment (provider + model) is
    // addressable directly, as an implicit single-member pool.
    let mut served: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for member in pools.iter().flat_map(|p| p.members.iter()) {
        let entry = served.entry(member.model.clone()).or_default();
        if !entry.iter().any(|m| m.id == member.id) {
            entry.push(member.clone());
        }
    }
    let (retry, health, probe) = defaults.unwrap_or_else(|_| placeholder_policies());
    let mut pool_by_name: HashMap<String, usize> = pools.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
    // A name two deployments serve addresses neither: requests naming it are told which ids to use.
    let mut ambiguous: HashMap<String, Vec<String>> = HashMap::new();
    for (model, members) in served {
        if pool_by_name.contains_key(&model) {
            continue;
        }
        if members.len() != 1 {
            ambiguous.insert(model, members.into_iter().map(|m| m.id).collect());
            continue;
        }
        let mut members = members;
        for m in &mut members {
            m.weight = 1;
        }
        pool_by_name.insert(model.clone(), pools.len());
        pools.push(implicit_pool(model, members, (&retry, &health, &probe)));
    }
    // A member's id (`provider/model`, as answers name it in `x-switchboard-member`)
    // addresses that member alone: the direct pool of its model when there is one,
    // else an implicit single-member pool of its own.
    let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
    for member in pools.iter().filter(|p| p.listed).flat_map(|p| p.members.iter()) {
        by_id.entry(member.id.clone()).or_insert_with(|| member.clone());
    }
    for (id, mut member) in by_id {
        if pool_by_name.contains_key(&id) {
            continue;
        }
        if let Some(&direct) = pool_by_name.get(&member.model) {
            if pools.get(direct).is_some_and(|p| !p.listed && p.members.iter().any(|m| m.id == id)) {
                pool_by_name.insert(id, direct);
                continue;
            }
        }
        member.weight = 1;
        pool_by_name.insert(id.clone(), pools.len());
        pools.push(implicit_pool(id, vec![member], (&retry, &health, &probe)));
    }

    let mut routers = Vec::with_capacity(raw.routers.len());
    let mut router_by_name = HashMap::new();
    for (name, r) in raw.routers {
        let field = format!("routers.{name}");
        if name.is_empty() {
            errors.push(err("routers", "router names must not be empty"));
            continue;
        }
        if let Some(&p) = pool_by_name.get(&name) {
            let what = if pools.get(p).is_some_and(|p| p.listed) { "pool" } else { "directly served model" };
            errors.push(err(field, format!("the name is already used by a {what}")));
            continue;
        }
        match validate_router(&field, name.clone(), r, &pool_by_name) {
            Ok(router) => {
                router_by_name.insert(name, routers.len());
                routers.push(router);
            }
            Err(e) => errors.push(e),
        }
    }
    let shared_state = raw.shared_state.and_then(|s| match shared_state(s) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(e);
            None
        }
    });
    let tenants = match raw.tenants {
        Some(t) if t.is_empty() => {
            errors.push(err("tenants", "list at least one tenant, or leave `tenants` out"));
            None
        }
        Some(t) => {
            let known = |name: &str| pool_by_name.contains_key(name) || router_by_name.contains_key(name);
            match super::tenants::validate(t, known) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
        None => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    for m in pools.iter_mut().flat_map(|p| p.members.iter_mut()) {
        if let Some(p) = providers.get(m.provider) {
            let refuses =
                crate::api::params::refused_by(p.kind) | crate::api::model_rules::refused_by_model(p.kind, &m.model);
            (m.refuses, m.kind_bit) = (refuses, crate::api::params::kind_bit(p.kind));
        }
    }
    let members = || pools.iter().flat_map(|p| p.members.iter());
    let facts = MemberFacts {
        vision_limited: members().any(|m| !m.capabilities.has(Capability::Vision)),
        size_limited: members().any(|m| m.context_window.is_some())
            || pools.iter().any(|p| p.strategy == Strategy::LowestCost),
    };
    Ok(Config {
        cluster_header,
        max_body_bytes,
        stream_failover: raw.stream_failover.unwrap_or(false),
        call_log: raw.call_log.unwrap_or(false),
        call_log_prompts: raw.call_log_prompts.unwrap_or(false),
        providers,
        pools,
        routers,
        tags,
        pool_by_name,
        router_by_name,
        ambiguous,
        facts,
        tenants,
        shared_state,
    })
}

/// The `shared_state` section (fleet mode).
fn shared_state(raw: serde_json::Value) -> Result<super::SharedState, ConfigError> {
    const FIELDS: [&str; 5] = ["cluster", "timeout_ms", "on_unavailable", "lease_ttl_s", "sync_ms"];
    let serde_json::Value::Object(map) = raw else { return Err(err("shared_state", "must be an object")) };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            format!("shared_state.{unknown}"),
            format!("unknown field; expected one of {}", FIELDS.join(", ")),
        ));
    }
    let cluster = map.get("cluster").and_then(|c| c.as_str()).filter(|c| !c.trim().is_empty());
    let cluster = cluster.ok_or_else(|| err("shared_state.cluster", "name the Envoy cluster of the state service"))?;
    let within = |field: &str, default: u64, max: u64| match map.get(field) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(|| err(format!("shared_state.{field}"), format!("must be a whole number from 1 to {max}"))),
    };
    let fallback_local = match map.get("on_unavailable").map(|v| v.as_str()) {
        None | Some(Some("local")) => true,
        Some(Some("deny")) => false,
        Some(_) => return Err(err("shared_state.on_unavailable", "must be \"local\" or \"deny\"")),
    };
    Ok(super::SharedState {
        cluster: cluster.to_string(),
        timeout_ms: within("timeout_ms", 50, 10_000)?,
        fallback_local,
        lease_ttl_s: within("lease_ttl_s", 600, 86_400)?,
        sync_ms: within("sync_ms", 200, 60_000)?,
    })
}

fn validate_pool(
    name: String,
    p: RawPool,
    provider_index: &HashMap<String, usize>,
    pool_names: &HashMap<String, usize>,
    defaults: &RawPoolPolicy,
    tags: &mut Vec<String>,
) -> Result<Pool, ConfigError> {
    let field = format!("pools.{name}");
    if name.is_empty() {
        return Err(err("pools", "pool names must not be empty"));
    }
    if p.members.is_empty() {
        return Err(err(format!("{field}.members"), "a pool needs at least one member"));
    }
    let mut members = Vec::with_capacity(p.members.len());
    for (i, m) in p.members.into_iter().enumerate() {
        let mfield = format!("{field}.members[{i}]");
        let provider = *provider_index
            .get(&m.provider)
            .ok_or_else(|| err(format!("{mfield}.provider"), format!("unknown provider \"{}\"", m.provider)))?;
        if m.model.trim().is_empty() {
            return Err(err(format!("{mfield}.model"), "must not be empty"));
        }
        let id = format!("{}/{}", m.provider, m.model);
        if members.iter().any(|x: &Member| x.id == id) {
            return Err(err(mfield, format!("duplicate member {id}")));
        }
        members.push(validate_member(&mfield, m, provider, id, p.strategy, tags)?);
    }
    if let Some(i) =
        members.iter().position(|m| m.canary.is_some()).filter(|_| members.iter().all(|m| m.canary.is_some()))
    {
        return Err(err(
            format!("{field}.members[{i}].canary"),
            "a canary needs another member in its pool to compare with",
        ));
    }
    if members.iter().all(|m| m.weight == 0) {
        return Err(err(format!("{field}.members"), "total weight is zero; give at least one member a weight > 0"));
    }
    let mut fallback_pools = Vec::with_capacity(p.fallback_pools.len());
    for (i, f) in p.fallback_pools.iter().enumerate() {
        match pool_names.get(f) {
            Some(&idx) if f != &name => fallback_pools.push(idx),
            Some(_) => return Err(err(format!("{field}.fallback_pools[{i}]"), "a pool cannot fall back to itself")),
            None => return Err(err(format!("{field}.fallback_pools[{i}]"), format!("unknown pool \"{f}\""))),
        }
    }
    let (retry, health, probe) = policies(&field, &p.policy, defaults)?;
    let explore = p.explore.unwrap_or(DEFAULT_EXPLORE);
    if !(0.0..=1.0).contains(&explore) {
        return Err(err(format!("{field}.explore"), "must be between 0 and 1"));
    }
    if p.explore.is_some() && p.strategy != Strategy::LowestLatency {
        return Err(err(format!("{field}.explore"), "only used by strategy lowest_latency"));
    }
    let shadow = match p.shadow {
        None => None,
        Some(s) => {
            let provider = *provider_index.get(&s.provider).ok_or_else(|| {
                err(format!("{field}.shadow.provider"), format!("unknown provider \"{}\"", s.provider))
            })?;
            if s.model.trim().is_empty() {
                return Err(err(format!("{field}.shadow.model"), "must not be empty"));
            }
            if !(s.sample > 0.0 && s.sample <= 1.0) {
                return Err(err(format!("{field}.shadow.sample"), "must be a share in (0, 1]"));
            }
            Some(Shadow { member: Member::new(provider, &s.provider, &s.model), sample: s.sample })
        }
    };
    let drop_params = crate::api::params::drop_mask(&mut p.drop_params.iter().map(String::as_str))
        .map_err(|n| err(format!("{field}.drop_params"), format!("unknown parameter \"{n}\"")))?;
    Ok(Pool {
        drop_params,
        name,
        description: p.description,
        max_response_tokens: p.max_response_tokens,
        members,
        retry,
        health,
        probe,
        fallback_pools,
        listed: true,
        strategy: p.strategy,
        explore,
        shadow,
    })
}

/// An unlisted single-member pool serving a direct model name or a member id, with the default policies.
fn implicit_pool(
    name: String,
    members: Vec<Member>,
    (retry, health, probe): (&RetryPolicy, &HealthPolicy, &Option<ProbePolicy>),
) -> Pool {
    Pool {
        name,
        description: String::new(),
        max_response_tokens: None,
        members,
        retry: retry.clone(),
        health: health.clone(),
        probe: probe.clone(),
        fallback_pools: Vec::new(),
        listed: false,
        strategy: Strategy::Weighted,
        explore: DEFAULT_EXPLORE,
        shadow: None,
        drop_params: 0,
    }
}

fn placeholder_provider(name: String) -> Provider {
    Provider {
        name,
        kind: ProviderKind::default(),
        cluster: String::new(),
        host: String::new(),
        base_path: String::new(),
        credentials: Credentials::None,
        api_version: String::new(),
        region: String::new(),
        anthropic_version: String::new(),
    }
}

fn placeholder_policies() -> (RetryPolicy, HealthPolicy, Option<ProbePolicy>) {
    let retry = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_vec(),
        max_attempts: 1,
        per_try_timeout_ms: None,
        first_byte_timeout_ms: None,
        hedge_after_ms: None,
        stream_idle_timeout_ms: None,
        resume_streams: false,
        timeout_ms: 1,
    };
    (retry, HealthPolicy { consecutive_failures: 1, cooldown_ms: 0, max_cooldown_ms: 0 }, None)
}

fn placeholder_pool(name: String) -> Pool {
    let (retry, health, probe) = placeholder_policies();
    Pool {
        name,
        description: String::new(),
        max_response_tokens: None,
        members: Vec::new(),
        retry,
        health,
        probe,
        fallback_pools: Vec::new(),
        listed: true,
        strategy: Strategy::Weighted,
        explore: DEFAULT_EXPLORE,
        shadow: None,
        drop_params: 0,
    }
}

fn validate_member(
    field: &str,
    m: RawMember,
    provider: usize,
    id: String,
    strategy: Strategy,
    tags: &mut Vec<String>,
) -> Result<Member, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    if m.context_window == Some(0) {
        return Err(err(f("context_window"), "must be > 0"));
    }
    if m.max_output_tokens == Some(0) {
        return Err(err(f("max_output_tokens"), "must be > 0"));
    }
    if let (Some(window), Some(out)) = (m.context_window, m.max_output_tokens) {
        if out > window {
            return Err(err(f("max_output_tokens"), format!("must not exceed context_window ({window})")));
        }
    }
    for (name, cost) in [
        ("input_cost_per_mtok", m.input_cost_per_mtok),
        ("output_cost_per_mtok", m.output_cost_per_mtok),
        ("cached_input_cost_per_mtok", m.cached_input_cost_per_mtok),
        ("cache_write_cost_per_mtok", m.cache_write_cost_per_mtok),
    ] {
        match cost {
            Some(c) if !(c.is_finite() && c >= 0.0) => return Err(err(f(name), "must be a price >= 0 (USD)")),
            _ if name.starts_with("cache") => {}
            None if strategy == Strategy::LowestCost => {
                return Err(err(f(name), "required: the pool's strategy is lowest_cost"))
            }
            _ => {}
        }
    }
    let canary = match &m.canary {
        None => None,
        Some(c) if !(0.0..=1.0).contains(&c.max_error_rate) => {
            return Err(err(f("canary.max_error_rate"), "must be between 0 and 1"))
        }
        Some(c) if c.min_requests == 0 => return Err(err(f("canary.min_requests"), "must be >= 1")),
        Some(c) => Some(CanaryPolicy { max_error_rate: c.max_error_rate, min_requests: c.min_requests }),
    };
    let capabilities = match &m.capabilities {
        None => Capabilities::ALL,
        Some(list) => list.iter().fold(Capabilities::NONE, |set, c| set.with(*c)),
    };
    let mut tag_mask = 0u64;
    for (i, tag) in m.tags.iter().enumerate() {
        if tag.is_empty() || tag.contains(|c: char| c == ',' || c.is_whitespace()) {
            return Err(err(format!("{field}.tags[{i}]"), "must be a non-empty tag without commas or spaces"));
        }
        let bit = match tags.iter().position(|t| t == tag) {
            Some(bit) => bit,
            None if tags.len() < MAX_TAGS => {
                tags.push(tag.clone());
                tags.len() - 1
            }
            None => return Err(err(format!("{field}.tags[{i}]"), format!("more than {MAX_TAGS} distinct tags"))),
        };
        tag_mask |= 1u64 << bit;
    }
    Ok(Member {
        provider,
        deployment: m.deployment.unwrap_or_else(|| m.model.clone()),
        model: m.model,
        weight: m.weight,
        id,
        context_window: m.context_window,
        max_output_tokens: m.max_output_tokens,
        capabilities,
        input_cost_per_mtok: m.input_cost_per_mtok,
        output_cost_per_mtok: m.output_cost_per_mtok,
        cached_input_cost_per_mtok: m.cached_input_cost_per_mtok,
        cache_write_cost_per_mtok: m.cache_write_cost_per_mtok,
        prefill: m.prefill,
        priority: m.priority,
        tags: m.tags,
        tag_mask,
        refuses: 0,
        kind_bit: 0,
        canary,
    })
}

fn validate_router(
    field: &str,
    name: String,
    raw: RawRouter,
    pools: &HashMap<String, usize>,
) -> Result<Router, ConfigError> {
    let pool = |f: String, target: &str| {
        pools.get(target).copied().ok_or_else(|| err(f, format!("unknown pool or model \"{target}\"")))
    };
    let mut keyword_text: Vec<String> = Vec::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        let rfield = format!("{field}.rules[{i}]");
        if r.name.is_empty() || r.name.contains(|c: char| c.is_control()) {
            return Err(err(format!("{rfield}.name"), "must be a non-empty name"));
        }
        if r.name == "default" || rules.iter().any(|x: &Rule| x.name == r.name) {
            return Err(err(
                format!("{rfield}.name"),
                format!("\"{}\" is used twice (\"default\" is reserved)", r.name),
            ));
        }
        let when = validate_conditions(&format!("{rfield}.when"), r.when, &mut keyword_text)?;
        rules.push(Rule { name: r.name, when, pool: pool(format!("{rfield}.pool"), &r.pool)? });
    }
    let default = match &raw.default {
        Some(d) => Some(pool(format!("{field}.default"), d)?),
        None if raw.learned.is_none() => {
            return Err(err(format!("{field}.default"), "required: the pool used when no rule matches"))
        }
        None => None,
    };
    const DEFAULT_EXPLORE: f64 = 0.05;
    const DEFAULT_FEEDBACK_PER_MINUTE: u32 = 600;
    let learned = match raw.learned {
        None => None,
        Some(l) => {
            let lfield = format!("{field}.learned");
            let cutoff = match (l.threshold, l.strong_share) {
                (Some(t), None) if (0.0..=1.0).contains(&t) => Cutoff::Threshold(t),
                (None, Some(s)) if (0.0..=1.0).contains(&s) => Cutoff::StrongShare(s),
                (Some(_), None) => return Err(err(format!("{lfield}.threshold"), "must be between 0 and 1")),
                (None, Some(_)) => return Err(err(format!("{lfield}.strong_share"), "must be between 0 and 1")),
                _ => return Err(err(lfield, "set exactly one of threshold and strong_share")),
            };
            if l.model.as_deref().is_some_and(str::is_empty) {
                return Err(err(format!("{lfield}.model"), "must not be empty"));
            }
            Some(Learned {
                strong: pool(format!("{lfield}.strong"), &l.strong)?,
                weak: pool(format!("{lfield}.weak"), &l.weak)?,
                cutoff,
                model: l.model,
                explore: match l.explore {
                    None => DEFAULT_EXPLORE,
                    Some(e) if (0.0..=0.5).contains(&e) => e,
                    Some(_) => return Err(err(format!("{lfield}.explore"), "must be between 0 and 0.5")),
                },
                feedback_per_minute: l.feedback_per_minute.unwrap_or(DEFAULT_FEEDBACK_PER_MINUTE),
                learning_epoch: l.learning_epoch.unwrap_or(0),
            })
        }
    };
    let keywords = Keywords { set: PhraseSet::new(keyword_text.iter().map(String::as_str)), text: keyword_text };
    Ok(Router { name, description: raw.description, rules, default, learned, keywords })
}

fn validate_conditions(
    field: &str,
    raw: RawConditions,
    keyword_text: &mut Vec<String>,
) -> Result<Conditions, ConfigError> {
    let header = match raw.header {
        None => None,
        Some(h) => {
            let name = h.name.to_ascii_lowercase();
            if !is_header_name(&name) {
                return Err(err(format!("{field}.header.name"), "must be an HTTP header name"));
            }
            let test = match (h.equals, h.present) {
                (Some(v), None) => HeaderTest::Equals(v),
                (None, Some(p)) => HeaderTest::Present(p),
                _ => return Err(err(format!("{field}.header"), "set exactly one of equals and present")),
            };
            Some(HeaderCondition { name, test })
        }
    };
    if let (Some(min), Some(max)) = (raw.min_prompt_tokens, raw.max_prompt_tokens) {
        if min > max {
            return Err(err(format!("{field}.max_prompt_tokens"), "must be >= min_prompt_tokens"));
        }
    }
    let mut any_keywords = Vec::new();
    if let Some(list) = raw.any_keywords {
        if list.is_empty() {
            return Err(err(format!("{field}.any_keywords"), "list at least one keyword"));
        }
        for (i, k) in list.into_iter().enumerate() {
            if crate::text::phrase_hashes(&k).is_empty() {
                return Err(err(format!("{field}.any_keywords[{i}]"), "must contain a letter or digit"));
            }
            let index = match keyword_text.iter().position(|t| *t == k) {
                Some(index) => index,
                None => {
                    keyword_text.push(k);
                    keyword_text.len() - 1
                }
            };
            any_keywords.push(index);
        }
    }
    Ok(Conditions {
        header,
        has_images: raw.has_images,
        has_tools: raw.has_tools,
        stream: raw.stream,
        min_prompt_tokens: raw.min_prompt_tokens,
        max_prompt_tokens: raw.max_prompt_tokens,
        any_keywords,
        metadata: raw.metadata.unwrap_or_default().into_iter().collect(),
    })
}
