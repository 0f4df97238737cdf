//! The configuration JSON as users write it: plain types that serde reads,
//! with unknown fields refused so a typo never silently does nothing. Their
//! validation into the filter's `Config` is in the `switchboard` crate.
//!
//! A crate of its own so it can be compiled for size while the request path
//! is compiled for speed: the deserializers generated here (with
//! `serde_path_to_error`'s field paths) run once per configuration load and
//! are most of the module's code.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

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
    #[inline]
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

/// Request features a member may lack (`capabilities`; absent = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Image parts in messages.
    Vision,
    /// `tools` / `functions`.
    Tools,
    /// `response_format: {"type": "json_schema"}`.
    JsonSchema,
}

impl Capability {
    pub const ALL: [Capability; 3] = [Capability::Vision, Capability::Tools, Capability::JsonSchema];

    #[inline]
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Vision => "vision",
            Capability::Tools => "tools",
            Capability::JsonSchema => "json_schema",
        }
    }

    #[inline]
    pub fn bit(self) -> u8 {
        match self {
            Capability::Vision => 1,
            Capability::Tools => 2,
            Capability::JsonSchema => 4,
        }
    }
}

/// How a pool chooses among the members a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Random by `weight`.
    #[default]
    Weighted,
    /// Fewest requests in flight, ties by weight.
    LeastBusy,
    /// Lowest moving-average latency; members without data first; `explore` share elsewhere.
    LowestLatency,
    /// Cheapest expected cost of this request, weighted among equals.
    LowestCost,
    /// Best (lowest) `priority` tier with a usable member, weighted within.
    Priority,
}

impl Strategy {
    #[inline]
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::LeastBusy => "least_busy",
            Strategy::LowestLatency => "lowest_latency",
            Strategy::LowestCost => "lowest_cost",
            Strategy::Priority => "priority",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawConfig {
    pub cluster_header: Option<String>,
    pub max_body_bytes: Option<usize>,
    /// The router runs the stream-failover upstream filter (`envoy/render.py`).
    pub stream_failover: Option<bool>,
    /// An access log prints the call log (`%FILTER_STATE(wasm.switchboard.call:PLAIN)%`).
    pub call_log: Option<bool>,
    /// The call log also carries the text a learned router scored (`prompt`), for
    /// `switchboard training-data`: off unless asked (docs/learned-router.md, privacy).
    pub call_log_prompts: Option<bool>,
    pub providers: Named<RawProvider>,
    #[serde(default)]
    pub pools: Named<RawPool>,
    #[serde(default)]
    pub routers: Named<RawRouter>,
    /// Defaults applied to every pool that does not set its own.
    #[serde(default)]
    pub defaults: RawPoolPolicy,
    /// When present, every request needs a tenant's key.
    pub tenants: Option<Named<RawTenant>>,
    /// Fleet mode (docs/fleet.md): read as plain JSON and checked field by
    /// field (`config::raw`), which takes less code than a derived reader.
    pub shared_state: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawProvider {
    #[serde(default)]
    pub kind: ProviderKind,
    pub cluster: String,
    pub host: String,
    pub base_path: Option<String>,
    pub api_key_env: Option<String>,
    pub api_version: Option<String>,
    pub region: Option<String>,
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub session_token_env: Option<String>,
    pub anthropic_version: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawHealth {
    pub consecutive_failures: Option<u32>,
    pub cooldown_ms: Option<u64>,
    pub max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawProbe {
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawPoolPolicy {
    pub retry_on: Option<Vec<u16>>,
    pub max_attempts: Option<u32>,
    pub per_try_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub hedge_after_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub resume_streams: Option<bool>,
    pub timeout_ms: Option<u64>,
    pub health: Option<RawHealth>,
    pub probe: Option<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(from = "PoolFields")]
pub struct RawPool {
    pub description: String,
    pub max_response_tokens: Option<u32>,
    pub members: Vec<RawMember>,
    pub fallback_pools: Vec<String>,
    pub strategy: Strategy,
    pub explore: Option<f64>,
    pub shadow: Option<RawShadow>,
    /// Parameters its members may drop rather than refuse: their names, or `all`.
    pub drop_params: Vec<String>,
    /// The pool's own policy fields (written beside the others).
    pub policy: RawPoolPolicy,
}

/// A pool as written: the policy fields inline, read by the same derived
/// deserializer as the rest, so an error in one of them names that field
/// (`pools.p.max_attempts`). `#[serde(flatten)]` would buffer the pool and
/// report such errors at the pool's end, naming only `pools.p`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
struct PoolFields {
    #[serde(default)]
    description: String,
    max_response_tokens: Option<u32>,
    members: Vec<RawMember>,
    #[serde(default)]
    fallback_pools: Vec<String>,
    #[serde(default)]
    strategy: Strategy,
    explore: Option<f64>,
    shadow: Option<RawShadow>,
    #[serde(default)]
    drop_params: Vec<String>,
    retry_on: Option<Vec<u16>>,
    max_attempts: Option<u32>,
    per_try_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    hedge_after_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    resume_streams: Option<bool>,
    timeout_ms: Option<u64>,
    health: Option<RawHealth>,
    probe: Option<RawProbe>,
}

impl From<PoolFields> for RawPool {
    fn from(p: PoolFields) -> RawPool {
        RawPool {
            description: p.description,
            max_response_tokens: p.max_response_tokens,
            members: p.members,
            fallback_pools: p.fallback_pools,
            strategy: p.strategy,
            explore: p.explore,
            shadow: p.shadow,
            drop_params: p.drop_params,
            policy: RawPoolPolicy {
                retry_on: p.retry_on,
                max_attempts: p.max_attempts,
                per_try_timeout_ms: p.per_try_timeout_ms,
                first_byte_timeout_ms: p.first_byte_timeout_ms,
                hedge_after_ms: p.hedge_after_ms,
                stream_idle_timeout_ms: p.stream_idle_timeout_ms,
                resume_streams: p.resume_streams,
                timeout_ms: p.timeout_ms,
                health: p.health,
                probe: p.probe,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawShadow {
    pub provider: String,
    pub model: String,
    pub sample: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawMember {
    pub provider: String,
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub deployment: Option<String>,
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
    pub capabilities: Option<Vec<Capability>>,
    pub input_cost_per_mtok: Option<f64>,
    pub output_cost_per_mtok: Option<f64>,
    /// Input read from the provider's prompt cache (the input price when unset).
    pub cached_input_cost_per_mtok: Option<f64>,
    /// Input written to the provider's prompt cache (the input price when unset).
    pub cache_write_cost_per_mtok: Option<f64>,
    /// A broken stream is continued on this member by an assistant prefill
    /// (true) or by an instruction after the partial answer (false); unset:
    /// prefill only for Claude before 4.6 on anthropic and bedrock members.
    pub prefill: Option<bool>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub tags: Vec<String>,
    pub canary: Option<RawCanary>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawCanary {
    pub max_error_rate: f64,
    pub min_requests: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawRouter {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub default: Option<String>,
    pub learned: Option<RawLearned>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub when: RawConditions,
    pub pool: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawConditions {
    pub header: Option<RawHeader>,
    pub has_images: Option<bool>,
    pub has_tools: Option<bool>,
    pub stream: Option<bool>,
    pub min_prompt_tokens: Option<u32>,
    pub max_prompt_tokens: Option<u32>,
    pub any_keywords: Option<Vec<String>>,
    pub metadata: Option<Named<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawHeader {
    pub name: String,
    pub equals: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawLearned {
    pub strong: String,
    pub weak: String,
    pub threshold: Option<f64>,
    pub strong_share: Option<f64>,
    pub model: Option<String>,
    pub explore: Option<f64>,
    pub feedback_per_minute: Option<u32>,
    pub learning_epoch: Option<u32>,
}

pub fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawTenant {
    pub keys_sha256: Vec<String>,
    pub allow: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    pub budget_usd: Option<RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RawBudget {
    pub per: RawPeriod,
    pub limit: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawPeriod {
    Day,
    Month,
}

/// The deserializer a configuration object is read through: a struct is read
/// as a JSON object only. serde_json also reads a struct from an array of its
/// fields in order, a second reader per struct (~20 KB of the module) for a
/// form no configuration uses; an array is refused as any other non-object
/// is ("invalid type: sequence, expected struct RawMember"). Each struct's
/// derived reader (`remote = "Self"`) is called through it.
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

macro_rules! read_as_object {
    ($($name:ident),*) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $name::deserialize(ObjectOnly(deserializer))
            }
        }
    )*};
}

read_as_object!(
    RawConfig,
    RawProvider,
    RawHealth,
    RawProbe,
    RawPoolPolicy,
    PoolFields,
    RawShadow,
    RawMember,
    RawCanary,
    RawRouter,
    RawRule,
    RawConditions,
    RawHeader,
    RawLearned,
    RawTenant,
    RawBudget
);

/// A JSON object of named entries (providers, pools, ...), in name order. A
/// plain `Vec` rather than a `BTreeMap`: the configuration is only walked in
/// order, and a map's code per entry type is most of what it would add to the
/// module. A name given twice is refused (JSON leaves it undefined).
#[derive(Debug)]
pub struct Named<T>(Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<T> Named<T> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(name, _)| name)
    }
}

impl<T> IntoIterator for Named<T> {
    type Item = (String, T);
    type IntoIter = std::vec::IntoIter<(String, T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                // Kept in order as read (a binary search and an insert rather
                // than a sort afterwards: a slice sort's code per entry type
                // is several KB of the module). The error, for the first name
                // in order given twice, is raised once the object is read.
                let mut entries: Vec<(String, T)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
                let mut twice: Option<String> = None;
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    match entries.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
                        Ok(_) => {
                            if twice.as_ref().is_none_or(|t| name < *t) {
                                twice = Some(name);
                            }
                        }
                        Err(at) => entries.insert(at, (name, value)),
                    }
                }
                match twice {
                    Some(name) => Err(de::Error::custom(format!("`{name}` is given twice"))),
                    None => Ok(Named(entries)),
                }
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

/// A configuration refused by its shape: the field path (empty for the
/// document itself) and serde's message.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    pub field: String,
    pub message: String,
}

/// Reads the configuration document. An empty one is refused with a hint.
pub fn parse(json: &[u8]) -> Result<RawConfig, SchemaError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(SchemaError {
            field: String::new(),
            message: "configuration is empty; expected a JSON object with \"providers\" and \"pools\"".into(),
        });
    }
    serde_json::from_slice(json).map_err(|e| {
        let at = offset_of(json, e.line(), e.column());
        SchemaError { field: path_at(json, at), message: e.to_string() }
    })
}

/// The byte offset of serde_json's error position (1-based line, column in bytes).
fn offset_of(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(line - 2).map_or(json.len(), |(i, _)| i + 1)
    };
    line_start.saturating_add(column).min(json.len())
}

/// Where in the document is byte `at`: `pools.x.members[1].weight`. serde_json
/// reports a refused key or value just after it, and an object's own error (a
/// missing field) just after its closing `}`. One pass over the bytes
/// before `at`, keeping the open objects' current keys and the arrays' indices;
/// serde's errors then need no wrapper around every deserializer (which would
/// be most of this crate's code).
fn path_at(json: &[u8], at: usize) -> String {
    enum Frame {
        Object { key: Option<String>, want_key: bool },
        Array { index: usize },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let head = json.get(..at).unwrap_or(json);
    let mut i = 0;
    while let Some(&b) = head.get(i) {
        match b {
            b'{' => stack.push(Frame::Object { key: None, want_key: true }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { want_key, .. }) => *want_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                let end = string_end(head, i);
                if let Some(Frame::Object { key, want_key: want_key @ true }) = stack.last_mut() {
                    // Decoded by serde_json, escapes and all, as serde named the field.
                    let raw = head.get(i..=end).unwrap_or_default();
                    *key =
                        Some(serde_json::from_slice(raw).unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()));
                    *want_key = false;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => break,
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// The index of the quote that closes the string opening at `open` (or the last byte).
fn string_end(json: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    json.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str) -> String {
        match parse(json.as_bytes()) {
            Err(e) => e.field,
            Ok(_) => String::from("(parsed)"),
        }
    }

    #[test]
    fn paths_follow_keys_and_indices_past_strings_that_look_like_json() {
        let json = r#"{"providers": {"a\"{,\u00e9": {"cluster": "[,]{", "host": "h", "colour": 1}}}"#;
        assert_eq!(field_of(json), "providers.a\"{,\u{e9}.colour");
        let json = r#"{"providers": {}, "pools": {"p": {"members": [{"provider": "a", "model": "m"},
            {"provider": "a", "model": "m", "weight": "heavy"}]}}}"#;
        assert_eq!(field_of(json), "pools.p.members[1].weight");
    }

    #[test]
    fn a_pools_policy_fields_are_named_themselves() {
        let pool = |fields: &str| {
            format!(
                r#"{{"providers": {{}}, "pools": {{"p": {{"members": [{{"provider": "a", "model": "m"}}], {fields}}}}}}}"#
            )
        };
        assert_eq!(field_of(&pool(r#""max_attempts": "3""#)), "pools.p.max_attempts");
        assert_eq!(field_of(&pool(r#""timeout_ms": -1, "strategy": "weighted""#)), "pools.p.timeout_ms");
        assert_eq!(field_of(&pool(r#""health": {"cooldown_ms": "x"}"#)), "pools.p.health.cooldown_ms");
        assert_eq!(field_of(&pool(r#""retry_on": [429, "503"]"#)), "pools.p.retry_on[1]");
        assert_eq!(field_of(&pool(r#""max_atempts": 3"#)), "pools.p.max_atempts");
        let parsed = parse(pool(r#""max_attempts": 4, "health": {"consecutive_failures": 2}"#).as_bytes());
        let pools = parsed.map(|c| c.pools.into_iter().collect::<Vec<_>>()).unwrap_or_default();
        let policy = pools.first().map(|(_, p)| (p.policy.max_attempts, p.policy.health.clone()));
        assert_eq!(policy.map(|(a, h)| (a, h.and_then(|h| h.consecutive_failures))), Some((Some(4), Some(2))));
    }

    #[test]
    fn a_struct_is_read_from_an_object_only() {
        let refused = |json: &str| parse(json.as_bytes()).err().map(|e| (e.field, e.message));
        let (field, message) = refused(r#"{"providers": {"a": "x"}}"#).unwrap_or_default();
        assert_eq!(field, "providers.a");
        assert!(message.starts_with("invalid type: string \"x\", expected struct RawProvider"), "{message}");
        // serde_json would read a struct from an array of its fields in order; not here.
        let (field, message) = refused(r#"{"providers": {"a": ["openai", "c", "h"]}}"#).unwrap_or_default();
        assert_eq!(field, "providers.a");
        assert!(message.starts_with("invalid type: sequence, expected struct RawProvider"), "{message}");
    }

    #[test]
    fn an_object_missing_a_field_is_named_itself() {
        assert_eq!(field_of(r#"{"providers": {"a": {"host": "h"}}}"#), "providers.a");
        assert_eq!(field_of(r#"{"pools": {}}"#), "");
    }
}
