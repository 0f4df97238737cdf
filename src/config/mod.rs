//! Plugin configuration: the JSON schema (`raw`), validation into the runtime
//! form (`Config`), and lookups used on every request. No proxy-wasm calls.

mod raw;
mod tenants;

use std::collections::HashMap;
use std::fmt;

pub use raw::ProviderKind;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upstream statuses that trigger failover to another member.
    pub retry_on: Vec<u16>,
    pub max_attempts: u32,
    /// Cut an attempt that has not finished by then (non-streaming) or not
    /// started answering (streams). Unset by default: cutting a generation the
    /// provider has accepted bills it and then runs it again elsewhere.
    pub per_try_timeout_ms: Option<u64>,
    /// No response headers by then: the member fails and the request fails
    /// over. Streams default to `DEFAULT_STREAM_FIRST_BYTE_MS`, since every
    /// provider sends a stream's headers at once; a non-streamed answer's
    /// headers come with the whole answer, so it has no default.
    pub first_byte_timeout_ms: Option<u64>,
    /// Overall deadline for one client request across all attempts.
    pub timeout_ms: u64,
}

/// Time to first byte a stream gets unless the pool says otherwise.
pub const DEFAULT_STREAM_FIRST_BYTE_MS: u64 = 30_000;
/// Overall deadline unless the pool says otherwise: long, so a healthy slow
/// generation (reasoning models, long answers) finishes, as with peer gateways.
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;

impl RetryPolicy {
    pub fn should_retry(&self, status: u16) -> bool {
        self.retry_on.contains(&status)
    }

    /// For an attempt with `remaining_ms` of the request's deadline left: how
    /// long the whole attempt may take, and how long it may wait for its
    /// response headers (Envoy's upstream timeout and per-try timeout; the
    /// latter stops counting once the response has started).
    pub fn attempt_timeouts(&self, remaining_ms: u64, stream: bool) -> (u64, Option<u64>) {
        let remaining = remaining_ms.max(1);
        if stream {
            let first_byte =
                self.first_byte_timeout_ms.or(self.per_try_timeout_ms).unwrap_or(DEFAULT_STREAM_FIRST_BYTE_MS);
            (remaining, Some(first_byte.clamp(1, remaining)))
        } else {
            let attempt = self.per_try_timeout_ms.map_or(remaining, |t| t.clamp(1, remaining));
            (attempt, self.first_byte_timeout_ms.map(|t| t.clamp(1, attempt)))
        }
    }

    /// How long a half-open trial request may take before another may try.
    pub fn trial_hold_ms(&self) -> u64 {
        self.per_try_timeout_ms.or(self.first_byte_timeout_ms).unwrap_or(DEFAULT_STREAM_FIRST_BYTE_MS)
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
    /// `None`: no tenants configured, requests need no key.
    pub tenants: Option<Vec<crate::tenant::Tenant>>,
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
