//! Candidate filters: what a request needs from a member (size, capabilities,
//! tags), checked before any strategy. A member filtered out is not an attempt
//! and not a health failure.

use crate::api::ErrorCode;
use std::fmt;

use crate::api::params;
use crate::api::request::ParsedRequest;
use crate::api::ApiError;
use crate::config::{Capabilities, Capability, Config, Member, Pool, ProviderKind, TagMask};

/// What one request needs from a member. Built once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Estimated prompt tokens; `None` until some filter or rule needs it
    /// (the estimate reads every message).
    pub prompt_tokens: Option<u32>,
    /// `max_completion_tokens`, else `max_tokens` (else the pool's `max_response_tokens`).
    pub output_tokens: Option<u32>,
    pub capabilities: Capabilities,
    /// Tags every member must carry (`x-switchboard-require-tags`).
    pub tags: TagMask,
    /// A required tag that no member in the configuration carries.
    pub unknown_tag: Option<String>,
    /// Set when the request uses a feature only some providers serve.
    pub native_only: Option<NativeOnly>,
    /// Bits of the parameters the request sets (`api::params`).
    pub params: u64,
    /// The first parameter the table does not list, when the request sets one.
    pub other_param: Option<String>,
    /// Parameters the request lets members drop (`x-switchboard-drop-params`).
    pub drop: u64,
    /// Kinds that get the front door's own body and so take every parameter.
    pub native_kinds: u8,
}

/// A feature of the request (in a front door's API) that only providers of
/// some kinds serve, as they are; members of other providers are unfit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOnly {
    /// What needs them, for the 400 (the door translator's refusal).
    pub feature: String,
    /// The kinds that serve it, as the 400 names them (`anthropic`).
    pub kinds: &'static str,
    /// Indexes of the providers of those kinds.
    pub providers: Vec<usize>,
}

impl Needs {
    /// `require_tags` is the `x-switchboard-require-tags` header value, if any.
    pub fn of(config: &Config, request: &ParsedRequest<'_>, require_tags: Option<&str>) -> Needs {
        let mut capabilities = Capabilities::NONE;
        if request.has_tools {
            capabilities = capabilities.with(Capability::Tools);
        }
        if request.json_schema {
            capabilities = capabilities.with(Capability::JsonSchema);
        }
        let mut needs = Needs {
            prompt_tokens: None,
            output_tokens: request.max_output_tokens,
            capabilities,
            tags: 0,
            unknown_tag: None,
            native_only: None,
            params: request.params,
            other_param: request.other_param.as_deref().map(str::to_string),
            drop: 0,
            native_kinds: 0,
        };
        for tag in require_tags.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match config.tag_mask([tag]) {
                Some(bit) => needs.tags |= bit,
                None => {
                    needs.unknown_tag.get_or_insert_with(|| tag.to_string());
                }
            }
        }
        // Images and the prompt size need the messages read: only when some member can refuse them.
        let facts = config.member_facts();
        if facts.vision_limited && request.content().images > 0 {
            needs.capabilities = needs.capabilities.with(Capability::Vision);
        }
        if facts.size_limited {
            needs.prompt_tokens = Some(request.content().prompt_tokens);
        }
        needs
    }

    /// Parameters `member` of `pool` drops: those it cannot take (routing let it serve).
    pub fn dropped(&self, member: &Member) -> u64 {
        if member.kind_bit & self.native_kinds != 0 {
            return 0;
        }
        self.params & member.refuses
    }

    /// Output tokens to plan for in `pool`.
    pub fn output_in(&self, pool: &Pool) -> u32 {
        self.output_tokens.or(pool.max_response_tokens).unwrap_or(0)
    }
}

impl NativeOnly {
    /// Served by the providers whose kind `serves`.
    pub fn new(config: &Config, feature: String, kinds: &'static str, serves: impl Fn(ProviderKind) -> bool) -> Self {
        let providers = config.providers.iter().enumerate().filter(|(_, p)| serves(p.kind)).map(|(i, _)| i).collect();
        NativeOnly { feature, kinds, providers }
    }
}

/// Why a member cannot serve a request, in the order the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// Its provider does not serve a feature of the request (`Needs::native_only`).
    Native,
    /// Lacks a tag the request requires.
    Tags,
    Capability(Capability),
    /// Its kind cannot take these parameters (bits), and they may not be dropped.
    Param(u64),
    /// Requested output above the member's `max_output_tokens`.
    Output {
        requested: u32,
        max: u32,
    },
    /// Prompt estimate + output above the member's `context_window`.
    Context {
        needed: u32,
        window: u32,
    },
}

impl Unfit {
    /// The OpenAI error code when no member of any stage fits for this reason.
    pub fn code(self) -> ErrorCode {
        match self {
            Unfit::Native => ErrorCode::UnsupportedFeature,
            Unfit::Tags => ErrorCode::NoMemberWithTags,
            Unfit::Capability(_) | Unfit::Param(_) => ErrorCode::UnsupportedParameter,
            Unfit::Output { .. } | Unfit::Context { .. } => ErrorCode::ContextLengthExceeded,
        }
    }
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::Native => f.write_str("its provider kind cannot serve the request as it is"),
            Unfit::Tags => f.write_str("lacks a required tag"),
            Unfit::Capability(c) => write!(f, "no {} capability", c.as_str()),
            Unfit::Param(bits) => {
                write!(f, "its provider kind cannot take `{}`", params::names(*bits, "other parameters"))
            }
            Unfit::Output { requested, max } => write!(f, "max_output_tokens {max} < {requested} requested"),
            Unfit::Context { needed, window } => write!(f, "context_window {window} < {needed} tokens needed"),
        }
    }
}

/// Whether `member` of `pool` can serve a request with these needs.
pub fn check(member: &Member, pool: &Pool, needs: &Needs) -> Result<(), Unfit> {
    if needs.native_only.as_ref().is_some_and(|n| !n.providers.contains(&member.provider)) {
        return Err(Unfit::Native);
    }
    if needs.unknown_tag.is_some() || member.tag_mask & needs.tags != needs.tags {
        return Err(Unfit::Tags);
    }
    if let Some(c) = member.capabilities.missing(needs.capabilities) {
        return Err(Unfit::Capability(c));
    }
    let refused = needs.dropped(member) & !(pool.drop_params | needs.drop);
    if refused != 0 {
        return Err(Unfit::Param(refused));
    }
    // Only an output the client asked for rules a member out; the pool's default
    // is capped at what the member can produce.
    if let (Some(max), Some(requested)) = (member.max_output_tokens, needs.output_tokens) {
        if requested > max {
            return Err(Unfit::Output { requested, max });
        }
    }
    let mut output = needs.output_in(pool);
    if let Some(max) = member.max_output_tokens {
        output = output.min(max);
    }
    if let (Some(window), Some(prompt)) = (member.context_window, needs.prompt_tokens) {
        let needed = prompt.saturating_add(output);
        if needed > window {
            return Err(Unfit::Context { needed, window });
        }
    }
    Ok(())
}

/// The 400 answer when no member of any stage fits: the code of the member
/// that came closest (passed the most filters), each reason in the message.
pub fn no_fit_error(target: &str, needs: &Needs, unfit: &[(&str, Unfit)]) -> ApiError {
    let closest = unfit.iter().map(|(_, u)| *u).max().unwrap_or(Unfit::Tags);
    let mut reasons: Vec<String> = unfit.iter().take(8).map(|(id, u)| format!("{id}: {u}")).collect();
    if unfit.len() > reasons.len() {
        reasons.push(format!("and {} more", unfit.len() - reasons.len()));
    }
    let what = match closest {
        Unfit::Native => match &needs.native_only {
            Some(n) => format!("{}; only {} members serve it", n.feature, n.kinds),
            None => "no member's provider serves it".to_string(),
        },
        Unfit::Tags => match &needs.unknown_tag {
            Some(tag) => format!("no member carries the tag `{tag}` required by x-switchboard-require-tags"),
            None => "no member carries every tag required by x-switchboard-require-tags".to_string(),
        },
        Unfit::Capability(c) => format!("no member supports {}", describe(c)),
        Unfit::Param(bits) => {
            let name = params::first_name(bits, needs.other_param.as_deref().unwrap_or_default());
            let why = format!("`{name}`: no member of `{target}` takes this parameter (a pool's `drop_params` or the header `x-switchboard-drop-params: {name}` lets it be dropped)");
            let e =
                ApiError::invalid_request(ErrorCode::UnsupportedParameter, format!("{why}. {}.", reasons.join("; ")));
            return e.with_param(ApiError::PARAM_IN_MESSAGE);
        }
        Unfit::Output { .. } | Unfit::Context { .. } => {
            let prompt = needs.prompt_tokens.map_or(String::new(), |p| format!(" (about {p} prompt tokens)"));
            format!("the request is too large for every member{prompt}")
        }
    };
    ApiError::invalid_request(
        closest.code(),
        format!("`{target}` cannot serve this request: {what}. {}.", reasons.join("; ")),
    )
}

fn describe(c: Capability) -> &'static str {
    match c {
        Capability::Vision => "image inputs (vision)",
        Capability::Tools => "tools",
        Capability::JsonSchema => "response_format json_schema",
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::tests::ENV;

    fn config() -> Config {
        let json = r#"{
          "providers": {"a": {"cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}},
          "pools": {
            "p": {"max_response_tokens": 100, "members": [
              {"provider": "a", "model": "small", "context_window": 1000, "max_output_tokens": 500, "capabilities": ["tools"], "tags": ["eu"]},
              {"provider": "a", "model": "big", "context_window": 100000, "tags": ["eu", "zero_retention"]}
            ]}
          }
        }"#;
        Config::parse(json.as_bytes(), &ENV).unwrap()
    }

    fn needs(cfg: &Config, body: &str, tags: Option<&str>) -> Needs {
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
        Needs::of(cfg, &req, tags)
    }

    fn verdicts(cfg: &Config, n: &Needs) -> Vec<Result<(), Unfit>> {
        let (_, pool) = cfg.pool("p").unwrap();
        pool.members.iter().map(|m| check(m, pool, n)).collect()
    }

    #[test]
    fn context_filter_counts_prompt_and_output() {
        let cfg = config();
        let long = "word ".repeat(2000);
        let n = needs(&cfg, &format!(r#"{{"model":"p","messages":[{{"role":"user","content":"{long}"}}]}}"#), None);
        let v = verdicts(&cfg, &n);
        assert!(matches!(v[0], Err(Unfit::Context { window: 1000, .. })), "{v:?}");
        assert_eq!(v[1], Ok(()));
        // The pool's max_response_tokens stands in for a missing max_tokens.
        let short = needs(&cfg, r#"{"model":"p","messages":[{"role":"user","content":"hi"}]}"#, None);
        assert_eq!(short.output_in(cfg.pool("p").unwrap().1), 100);
        assert_eq!(verdicts(&cfg, &short), vec![Ok(()), Ok(())]);
    }

    #[test]
    fn requested_output_above_max_output_tokens_is_unfit() {
        let cfg = config();
        let n = needs(&cfg, r#"{"model":"p","messages":[],"max_completion_tokens":600}"#, None);
        assert_eq!(verdicts(&cfg, &n)[0], Err(Unfit::Output { requested: 600, max: 500 }));
    }

    #[test]
    fn the_pools_default_output_never_rules_a_member_out_by_itself() {
        let json = r#"{
          "providers": {"a": {"cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}},
          "pools": {"p": {"max_response_tokens": 16384, "members": [
              {"provider": "a", "model": "m", "context_window": 10000, "max_output_tokens": 4096}]}}
        }"#;
        let cfg = Config::parse(json.as_bytes(), &ENV).unwrap();
        let short = needs(&cfg, r#"{"model":"p","messages":[{"role":"user","content":"hi"}]}"#, None);
        assert_eq!(verdicts(&cfg, &short), vec![Ok(())], "16384 default capped at the member's 4096");
        let long = format!(r#"{{"model":"p","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(7000));
        assert!(matches!(verdicts(&cfg, &needs(&cfg, &long, None))[0], Err(Unfit::Context { window: 10000, .. })));
    }

    #[test]
    fn capability_filter_covers_vision_tools_and_json_schema() {
        let cfg = config();
        let image =
            r#"{"model":"p","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(verdicts(&cfg, &needs(&cfg, image, None))[0], Err(Unfit::Capability(Capability::Vision)));
        let tools = r#"{"model":"p","messages":[],"tools":[{"type":"function"}]}"#;
        assert_eq!(verdicts(&cfg, &needs(&cfg, tools, None)), vec![Ok(()), Ok(())]);
        let schema = r#"{"model":"p","messages":[],"response_format":{"type":"json_schema"}}"#;
        let v = verdicts(&cfg, &needs(&cfg, schema, None));
        assert_eq!(v, vec![Err(Unfit::Capability(Capability::JsonSchema)), Ok(())]);
    }

    #[test]
    fn tags_only_narrow() {
        let cfg = config();
        let body = r#"{"model":"p","messages":[]}"#;
        assert_eq!(verdicts(&cfg, &needs(&cfg, body, Some("eu"))), vec![Ok(()), Ok(())]);
        assert_eq!(verdicts(&cfg, &needs(&cfg, body, Some(" eu , zero_retention"))), vec![Err(Unfit::Tags), Ok(())]);
        let unknown = needs(&cfg, body, Some("eu,onprem"));
        assert_eq!(unknown.unknown_tag.as_deref(), Some("onprem"));
        assert_eq!(verdicts(&cfg, &unknown), vec![Err(Unfit::Tags), Err(Unfit::Tags)]);
        assert_eq!(verdicts(&cfg, &needs(&cfg, body, Some(" , "))), vec![Ok(()), Ok(())], "empty list: no restriction");
    }

    #[test]
    fn prompt_is_not_read_when_no_member_declares_a_size() {
        let cfg = Config::parse(crate::config::tests::sample_config().as_bytes(), &ENV).unwrap();
        let n = needs(&cfg, r#"{"model":"gpt4o_16k","messages":[{"role":"user","content":"hi"}]}"#, None);
        assert_eq!(n.prompt_tokens, None);
    }

    #[test]
    fn native_only_features_keep_the_request_on_their_kinds_members() {
        let json = r#"{
          "providers": {"o": {"cluster": "o", "host": "o", "api_key_env": "ALPHA_KEY"},
                        "a": {"kind": "anthropic", "cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}},
          "pools": {"p": {"members": [{"provider": "o", "model": "x"}, {"provider": "a", "model": "y"}]}}
        }"#;
        let cfg = Config::parse(json.as_bytes(), &ENV).unwrap();
        let mut n = needs(&cfg, r#"{"model":"p","messages":[]}"#, None);
        let feature = "thinking".to_string();
        n.native_only = Some(NativeOnly::new(&cfg, feature, "anthropic", |k| k == ProviderKind::Anthropic));
        assert_eq!(verdicts(&cfg, &n), vec![Err(Unfit::Native), Ok(())]);
        let e = no_fit_error("p", &n, &[("o/x", Unfit::Native)]);
        assert_eq!((e.status, e.code.as_str()), (400, "unsupported_feature"));
        assert!(e.message.contains("thinking; only anthropic members serve it"), "{}", e.message);
    }

    #[test]
    fn no_fit_error_uses_the_closest_members_reason() {
        let n = Needs {
            prompt_tokens: Some(5000),
            output_tokens: None,
            capabilities: Capabilities::NONE,
            tags: 0,
            unknown_tag: None,
            native_only: None,
            params: 0,
            other_param: None,
            drop: 0,
            native_kinds: 0,
        };
        let e = no_fit_error("p", &n, &[("a/x", Unfit::Tags), ("a/y", Unfit::Context { needed: 5100, window: 4096 })]);
        assert_eq!((e.status, e.code.as_str()), (400, "context_length_exceeded"));
        assert!(e.message.contains("a/y: context_window 4096 < 5100"), "{}", e.message);
        let e = no_fit_error("p", &n, &[("a/x", Unfit::Tags), ("a/y", Unfit::Capability(Capability::Vision))]);
        assert_eq!(e.code, "unsupported_parameter");
        assert_eq!(no_fit_error("p", &n, &[("a/x", Unfit::Tags)]).code, "no_member_with_tags");
    }
}
