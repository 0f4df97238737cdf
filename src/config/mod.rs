//! Plugin configuration: the JSON schema (`raw`), validation into the runtime
//! form (`Config`), and lookups used on every request. No proxy-wasm calls.

mod raw;
mod tenants;

use std::collections::HashMap;
use std::fmt;

use crate::api::error::ApiError;
use crate::tenant::reserve::Prices;

pub use switchboard_schema::{Capability, ProviderKind, Strategy};

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

/// A set of capabilities, as bits. The default is all of them (nothing declared, nothing ruled out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::ALL
    }
}

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);
    pub const ALL: Capabilities = Capabilities(7);

    pub fn with(self, c: Capability) -> Capabilities {
        Capabilities(self.0 | c.bit())
    }

    pub fn has(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }

    /// The first capability in `needed` this set lacks.
    pub fn missing(self, needed: Capabilities) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| needed.has(*c) && !self.has(*c))
    }
}

/// Tags as bits over `Config::tags` (at most 64 distinct tags per configuration).
pub type TagMask = u64;

/// A member's `canary` settings (judged by `routing::canary`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryPolicy {
    /// How much higher than the other members' error rate the canary's may be (0..1).
    pub max_error_rate: f64,
    /// Canary attempts in the window before it is judged.
    pub min_requests: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Member {
    /// Index into `Config::providers`.
    pub provider: usize,
    pub model: String,
    /// Azure deployment name (defaults to the model name).
    pub deployment: String,
    pub weight: u32,
    /// Stable identity `provider/model`, used for health keys, metrics and headers.
    pub id: String,
    /// Prompt + completion tokens the model accepts.
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
    pub capabilities: Capabilities,
    /// USD per million tokens.
    pub input_cost_per_mtok: Option<f64>,
    pub output_cost_per_mtok: Option<f64>,
    /// USD per million input tokens read from / written to the provider's cache.
    pub cached_input_cost_per_mtok: Option<f64>,
    pub cache_write_cost_per_mtok: Option<f64>,
    /// How a broken stream is continued on it (`routing::resume::prefills`).
    pub prefill: Option<bool>,
    /// Lower is preferred by the `priority` strategy.
    pub priority: i32,
    pub tags: Vec<String>,
    pub tag_mask: TagMask,
    /// Bits of the chat parameters its provider's kind cannot take (`api::params`).
    pub refuses: u64,
    /// Its provider's kind as a bit (`api::params::kind_bit`).
    pub kind_bit: u8,
    /// Rolled back (weight 0) when it fails much more than the pool's other members.
    pub canary: Option<CanaryPolicy>,
}

impl Member {
    /// A member with no declared facts (every capability, no limits, no price).
    pub fn new(provider: usize, provider_name: &str, model: &str) -> Member {
        Member {
            provider,
            model: model.to_string(),
            deployment: model.to_string(),
            weight: 1,
            id: format!("{provider_name}/{model}"),
            ..Member::default()
        }
    }

    /// What it charges (USD per million tokens) and how much it can write.
    pub fn prices(&self) -> Prices {
        Prices {
            input_per_mtok: self.input_cost_per_mtok,
            output_per_mtok: self.output_cost_per_mtok,
            cached_input_per_mtok: self.cached_input_cost_per_mtok,
            cache_write_per_mtok: self.cache_write_cost_per_mtok,
            max_output_tokens: self.max_output_tokens,
        }
    }
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
    /// Cut an attempt that has not finished by then (non-streaming) or not
    /// started answering (streams). Unset by default: cutting a generation the
    /// provider has accepted bills it and then runs it again elsewhere.
    pub per_try_timeout_ms: Option<u64>,
    /// No response headers by then: the member fails and the request fails
    /// over. Streams default to `DEFAULT_STREAM_FIRST_BYTE_MS`, since every
    /// provider sends a stream's headers at once; a non-streamed answer's
    /// headers come with the whole answer, so it has no default.
    pub first_byte_timeout_ms: Option<u64>,
    /// No response headers by then: a second member starts alongside the
    /// first, and the first good answer wins.
    pub hedge_after_ms: Option<u64>,
    /// A stream silent this long after its first byte is the member's failure.
    pub stream_idle_timeout_ms: Option<u64>,
    /// A stream that breaks after its first byte (an error event, or an end
    /// without a finish) is continued once on another member, spliced into
    /// the same client stream.
    pub resume_streams: bool,
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
    pub strategy: Strategy,
    /// Share of `lowest_latency` picks that go to a member other than the fastest.
    pub explore: f64,
    /// A member that gets a copy of a share of the requests; its answers are only measured.
    pub shadow: Option<Shadow>,
    /// Bits of the parameters its members drop rather than refuse (`drop_params`).
    pub drop_params: u64,
}

#[derive(Debug, Clone)]
pub struct Shadow {
    pub member: Member,
    /// Share of the pool's requests copied (0..1].
    pub sample: f64,
}

impl Pool {
    pub fn total_weight(&self) -> u64 {
        self.members.iter().map(|m| u64::from(m.weight)).sum()
    }
}

/// A router: picks a pool per request by rules (first match wins), else its default.
#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
    /// Pool index when no rule matches (and no learned scorer decides).
    pub default: Option<usize>,
    /// Strong/weak split by a learned scorer, consulted when no rule matches.
    pub learned: Option<Learned>,
    /// Keywords of every rule, matched in one pass over the user's text.
    pub keywords: Keywords,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub when: Conditions,
    pub pool: usize,
}

/// Conditions of a rule; all that are set must hold. None set: always matches.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub header: Option<HeaderCondition>,
    pub has_images: Option<bool>,
    pub has_tools: Option<bool>,
    pub stream: Option<bool>,
    pub min_prompt_tokens: Option<u32>,
    pub max_prompt_tokens: Option<u32>,
    /// Indexes into the router's `keywords`; any one present matches.
    pub any_keywords: Vec<usize>,
    /// Entries the request's `metadata` must have, with these string values.
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    /// Lower case.
    pub name: String,
    pub test: HeaderTest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    Equals(String),
    Present(bool),
}

/// A router's keywords and phrases, compiled for one pass over the user's text.
#[derive(Debug, Clone, Default)]
pub struct Keywords {
    pub set: crate::text::PhraseSet,
    /// As written in the configuration, for explanations.
    pub text: Vec<String>,
}

/// A learned router's configuration; the scorer itself is supplied by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    pub strong: usize,
    pub weak: usize,
    pub cutoff: Cutoff,
    /// Which trained scorer to use, when the host has several.
    pub model: Option<String>,
    /// Share of would-be-strong prompts sent to weak so that scores of weak answers keep coming.
    pub explore: f64,
    /// Feedback scores one tenant (or, without tenants, everyone) may give this router per minute.
    pub feedback_per_minute: u32,
    /// Changing it starts the router's learning from feedback again.
    pub learning_epoch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cutoff {
    /// Requests scoring at least this go to `strong`.
    Threshold(f64),
    /// The share of traffic meant for `strong`; the scorer calibrates its threshold.
    StrongShare(f64),
}

/// What a requested model name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Pool(usize),
    Router(usize),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_header: String,
    pub max_body_bytes: usize,
    /// Streams fail over by internal redirect (Envoy runs the upstream filter that asks for it).
    pub stream_failover: bool,
    /// Each request's call-log line is written as filter state for Envoy's access log.
    pub call_log: bool,
    /// Call-log lines of learned-routed requests carry the text the router scored.
    pub call_log_prompts: bool,
    pub providers: Vec<Provider>,
    pub pools: Vec<Pool>,
    pub routers: Vec<Router>,
    /// Every tag some member carries; a member's `tag_mask` bit `i` is `tags[i]`.
    pub tags: Vec<String>,
    pool_by_name: HashMap<String, usize>,
    router_by_name: HashMap<String, usize>,
    /// Model names served by several members (and no pool): their member ids.
    ambiguous: HashMap<String, Vec<String>>,
    facts: MemberFacts,
    /// `None`: no tenants configured, requests need no key.
    pub tenants: Option<Vec<crate::tenant::Tenant>>,
    /// Fleet mode (`shared_state`); `None`: every count stays in this Envoy's shared data.
    pub shared_state: Option<SharedState>,
}

/// Where fleet mode's state service is, and what to do without it (docs/fleet.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedState {
    /// The Envoy cluster every proxy reaches the state service through.
    pub cluster: String,
    /// How long a request's admission waits for the service before `on_unavailable` decides.
    pub timeout_ms: u64,
    /// Without an answer in time: count in this proxy's shared data (`true`), or refuse with a 503.
    pub fallback_local: bool,
    /// A crashed proxy's slots and budget holds are freed after this long.
    pub lease_ttl_s: u64,
    /// How often each proxy fetches the fleet's feedback and canary rollbacks.
    pub sync_ms: u64,
}

/// What the configured members declare, so requests skip reading what no filter uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberFacts {
    /// Some member lacks `vision`: count image parts.
    pub vision_limited: bool,
    /// Some member has a `context_window`, or a pool picks by cost: estimate the prompt.
    pub size_limited: bool,
}

pub const DEFAULT_CLUSTER_HEADER: &str = "x-switchboard-cluster";
/// 64 MiB: what the providers accept for requests with images. OpenAI takes up
/// to 50 MB of image bytes per request (about 67 MB as the base64 of a JSON body),
/// Anthropic's Messages API 32 MB; `envoy/render.py` sizes Envoy's buffers from it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// 529 is Anthropic's "overloaded".
pub const DEFAULT_RETRY_ON: [u16; 7] = [408, 429, 500, 502, 503, 504, 529];

impl Config {
    /// Parses and validates plugin configuration. Secrets are resolved through `env`.
    pub fn parse(json: &[u8], env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        Config::parse_all(json, env)
            .map_err(|errors| errors.into_iter().next().unwrap_or_else(|| err("", "invalid configuration")))
    }

    /// As [`Config::parse`], with every error found (never an empty list).
    /// Errors in the JSON shape (syntax, unknown fields, types) stop at the first.
    pub fn parse_all(json: &[u8], env: EnvLookup<'_>) -> Result<Config, Vec<ConfigError>> {
        let raw = raw::parse(json).map_err(|e| vec![e])?;
        raw::validate(raw, env)
    }

    pub fn pool(&self, name: &str) -> Option<(usize, &Pool)> {
        let index = *self.pool_by_name.get(name)?;
        self.pools.get(index).map(|pool| (index, pool))
    }

    /// Resolves a requested model name: a router, a pool or a direct model.
    pub fn target(&self, name: &str) -> Option<Target> {
        if let Some(&r) = self.router_by_name.get(name) {
            return Some(Target::Router(r));
        }
        self.pool_by_name.get(name).map(|&p| Target::Pool(p))
    }

    /// The 404 for a name that resolves to nothing: ambiguous (with the member
    /// ids that address each deployment) or unknown. `param`: the field that named it.
    pub fn unknown_target(&self, name: &str, param: &'static str) -> ApiError {
        match self.ambiguous.get(name) {
            Some(ids) => ApiError::ambiguous_model(name, ids),
            None => ApiError::model_not_found(name),
        }
        .with_param(param)
    }

    pub fn member_facts(&self) -> MemberFacts {
        self.facts
    }

    pub fn router_at(&self, index: usize) -> Option<&Router> {
        self.routers.get(index)
    }

    /// The bits of the named tags; `None` when some tag is carried by no member.
    pub fn tag_mask<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Option<TagMask> {
        let mut mask = 0;
        for name in names {
            let bit = self.tags.iter().position(|t| t == name)?;
            mask |= 1u64 << bit;
        }
        Some(mask)
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
