//! Plugin configuration: the JSON schema (`raw`), validation into the runtime
//! form (`Config`), and lookups used on every request. No proxy-wasm calls.

mod raw;

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// Where a secret comes from. Injected so tests need not touch the process
/// environment; the filter passes `std::env::var`.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A configuration error naming the offending field, e.g.
/// `pools.gpt4o_16k.members[1].provider: unknown provider "gama"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: {}: {}", self.field, self.message)
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

/// A credential read from the environment. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Credentials of a provider, by how they are presented upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    ApiKey(Secret),
    Aws { access_key_id: Secret, secret_access_key: Secret, session_token: Option<Secret> },
}

/// How a provider is spoken to (wire format and authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[default]
    Openai,
    OpenaiCompatible,
    Azure,
    Anthropic,
    Gemini,
    Bedrock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Envoy cluster that reaches this provider.
    pub cluster: String,
    /// Value for `:authority` upstream.
    pub host: String,
    /// Path prefix the provider's API lives under, without trailing slash.
    pub base_path: String,
    pub credentials: Credentials,
    /// Azure `api-version` query parameter.
    pub api_version: String,
    /// AWS region for Bedrock signing.
    pub region: String,
    /// Anthropic `anthropic-version` header.
    pub anthropic_version: String,
}

#[derive(Debug, Clone)]
pub struct Member {
    /// Index into `Config::providers`.
    pub provider: usize,
    pub model: String,
    /// Azure deployment name (defaults to the model name).
    pub deployment: String,
    pub weight: u32,
    /// Stable identity `provider/model`, used for health keys, metrics and headers.
    pub id: String,
}

/// A member of a pool, by position: `config.pools[pool].members[member]`.
/// The same deployment listed in two pools has two references (and one `Member::id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberRef {
    pub pool: usize,
    pub member: usize,
}

impl MemberRef {
    pub fn new(pool: usize, member: usize) -> Self {
        MemberRef { pool, member }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upstream statuses that trigger failover to another member.
    pub retry_on: Vec<u16>,
    pub max_attempts: u32,
    pub per_try_timeout_ms: u64,
    /// Overall deadline for one client request across all attempts.
    pub timeout_ms: u64,
}

impl RetryPolicy {
    pub fn should_retry(&self, status: u16) -> bool {
        self.retry_on.contains(&status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub consecutive_failures: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub description: String,
    pub max_response_tokens: Option<u32>,
    pub members: Vec<Member>,
    pub retry: RetryPolicy,
    pub health: HealthPolicy,
    pub probe: Option<ProbePolicy>,
    /// Indexes of pools tried, in order, once this pool is exhausted.
    pub fallback_pools: Vec<usize>,
    /// False for the implicit single-member pools that serve direct model names.
    pub listed: bool,
}

impl Pool {
    pub fn total_weight(&self) -> u64 {
        self.members.iter().map(|m| u64::from(m.weight)).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_header: String,
    pub max_body_bytes: usize,
    pub providers: Vec<Provider>,
    pub pools: Vec<Pool>,
    pool_by_name: HashMap<String, usize>,
}

pub const DEFAULT_CLUSTER_HEADER: &str = "x-switchboard-cluster";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// 529 is Anthropic's "overloaded".
pub const DEFAULT_RETRY_ON: [u16; 7] = [408, 429, 500, 502, 503, 504, 529];

impl Config {
    /// Parses and validates plugin configuration. Secrets are resolved through `env`.
    pub fn parse(json: &[u8], env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let raw = raw::parse(json)?;
        raw::validate(raw, env)
    }

    pub fn pool(&self, name: &str) -> Option<(usize, &Pool)> {
        let index = *self.pool_by_name.get(name)?;
        self.pools.get(index).map(|pool| (index, pool))
    }

    pub fn pool_at(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index)
    }

    pub fn provider(&self, index: usize) -> Option<&Provider> {
        self.providers.get(index)
    }

    /// The pool, member and provider a reference points at, in one lookup.
    pub fn resolve(&self, at: MemberRef) -> Option<(&Pool, &Member, &Provider)> {
        let pool = self.pools.get(at.pool)?;
        let member = pool.members.get(at.member)?;
        let provider = self.providers.get(member.provider)?;
        Some((pool, member, provider))
    }

    /// The member a reference points at.
    pub fn member(&self, at: MemberRef) -> Option<&Member> {
        self.pools.get(at.pool)?.members.get(at.member)
    }

    /// Every member of a pool with its reference.
    pub fn members_of(&self, pool: usize) -> impl Iterator<Item = (MemberRef, &Member)> {
        self.pools
            .get(pool)
            .into_iter()
            .flat_map(move |p| p.members.iter().enumerate().map(move |(i, m)| (MemberRef::new(pool, i), m)))
    }

    /// Pools a client may address, listed pools first, in name order.
    pub fn listed_pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().filter(|p| p.listed)
    }

    /// The implicit pools that serve a direct model name.
    pub fn direct_models(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().filter(|p| !p.listed)
    }
}

#[cfg(test)]
pub(crate) mod tests;
