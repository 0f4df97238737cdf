//! The configuration JSON as written by users, and its validation.
//! Unknown fields are refused so a typo never silently does nothing.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{
    err, Config, ConfigError, Credentials, EnvLookup, HealthPolicy, Member, Pool, ProbePolicy, Provider, ProviderKind,
    RetryPolicy, Secret, DEFAULT_CLUSTER_HEADER, DEFAULT_MAX_BODY_BYTES, DEFAULT_RETRY_ON,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    cluster_header: Option<String>,
    max_body_bytes: Option<usize>,
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    /// Defaults applied to every pool that does not set its own.
    #[serde(default)]
    defaults: RawPoolPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[serde(default)]
    kind: ProviderKind,
    cluster: String,
    host: String,
    base_path: Option<String>,
    api_key_env: Option<String>,
    api_version: Option<String>,
    region: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key_env: Option<String>,
    session_token_env: Option<String>,
    anthropic_version: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    consecutive_failures: Option<u32>,
    cooldown_ms: Option<u64>,
    max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPoolPolicy {
    retry_on: Option<Vec<u16>>,
    max_attempts: Option<u32>,
    per_try_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    health: Option<RawHealth>,
    probe: Option<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    description: String,
    max_response_tokens: Option<u32>,
    members: Vec<RawMember>,
    #[serde(default)]
    fallback_pools: Vec<String>,
    #[serde(flatten)]
    policy: RawPoolPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    provider: String,
    model: String,
    #[serde(default = "default_weight")]
    weight: u32,
    deployment: Option<String>,
}

fn default_weight() -> u32 {
    1
}

pub(super) fn parse(json: &[u8]) -> Result<RawConfig, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(err("", "configuration is empty; expected a JSON object with \"providers\" and \"pools\""));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        err(field, e.into_inner().to_string())
    })
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
    let per_try_timeout_ms = pool.per_try_timeout_ms.or(defaults.per_try_timeout_ms).unwrap_or(30_000);
    let timeout_ms = pool.timeout_ms.or(defaults.timeout_ms).unwrap_or(120_000);
    if per_try_timeout_ms == 0 {
        return Err(err(format!("{field}.per_try_timeout_ms"), "must be > 0"));
    }
    if timeout_ms < per_try_timeout_ms {
        return Err(err(format!("{field}.timeout_ms"), "must be >= per_try_timeout_ms"));
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
    Ok((RetryPolicy { retry_on, max_attempts, per_try_timeout_ms, timeout_ms }, health, probe))
}

pub(super) fn validate(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let cluster_header = raw.cluster_header.unwrap_or_else(|| DEFAULT_CLUSTER_HEADER.to_string());
    if !is_header_name(&cluster_header) {
        return Err(err("cluster_header", "must be a lowercase HTTP header name"));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes < 1024 {
        return Err(err("max_body_bytes", "must be at least 1024"));
    }
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut provider_index = HashMap::new();
    for (name, p) in raw.providers {
        provider_index.insert(name.clone(), providers.len());
        providers.push(validate_provider(&name, p, env)?);
    }
    // Fail on defaults that are wrong even when every pool overrides them.
    policies("defaults", &raw.defaults, &RawPoolPolicy::default())?;

    let pool_names: HashMap<String, usize> = raw.pools.keys().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut pools = Vec::with_capacity(raw.pools.len());
    for (name, p) in raw.pools {
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
            members.push(Member {
                provider,
                deployment: m.deployment.unwrap_or_else(|| m.model.clone()),
                model: m.model,
                weight: m.weight,
                id,
            });
        }
        if members.iter().all(|m| m.weight == 0) {
            return Err(err(format!("{field}.members"), "total weight is zero; give at least one member a weight > 0"));
        }
        let mut fallback_pools = Vec::with_capacity(p.fallback_pools.len());
        for (i, f) in p.fallback_pools.iter().enumerate() {
            match pool_names.get(f) {
                Some(&idx) if f != &name => fallback_pools.push(idx),
                Some(_) => {
                    return Err(err(format!("{field}.fallback_pools[{i}]"), "a pool cannot fall back to itself"))
                }
                None => return Err(err(format!("{field}.fallback_pools[{i}]"), format!("unknown pool \"{f}\""))),
            }
        }
        let (retry, health, probe) = policies(&field, &p.policy, &raw.defaults)?;
        pools.push(Pool {
            name,
            description: p.description,
            max_response_tokens: p.max_response_tokens,
            members,
            retry,
            health,
            probe,
            fallback_pools,
            listed: true,
        });
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
    let (retry, health, probe) = policies("defaults", &raw.defaults, &RawPoolPolicy::default())?;
    let mut pool_by_name: HashMap<String, usize> = pools.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
    for (model, members) in served {
        if members.len() != 1 || pool_by_name.contains_key(&model) {
            continue;
        }
        let mut members = members;
        for m in &mut members {
            m.weight = 1;
        }
        pool_by_name.insert(model.clone(), pools.len());
        pools.push(Pool {
            name: model,
            description: String::new(),
            max_response_tokens: None,
            members,
            retry: retry.clone(),
            health: health.clone(),
            probe: probe.clone(),
            fallback_pools: Vec::new(),
            listed: false,
        });
    }

    Ok(Config { cluster_header, max_body_bytes, providers, pools, pool_by_name })
}
