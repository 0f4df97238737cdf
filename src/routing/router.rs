//! Routers: pick a pool per request by rules (first match wins), else the
//! router's default, or a learned scorer's strong/weak split.

use std::cell::OnceCell;
use std::fmt;

use crate::api::request::{Content, ParsedRequest};
use crate::config::{Conditions, Cutoff, HeaderTest, Learned, Router};
use crate::text::PhraseSet;

/// Request headers the routing stage reads (rule `header` conditions,
/// `x-switchboard-require-tags`), looked up by lower-case name.
pub trait HeaderLookup {
    fn header(&self, name: &str) -> Option<&str>;
}

/// No headers (tests, probes, offline explanations).
pub struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}

fn find<'v, K: AsRef<str>, V: AsRef<str>>(pairs: &'v [(K, V)], name: &str) -> Option<&'v str> {
    pairs.iter().find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for &[(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        find(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> HeaderLookup for [(K, V); N] {
    fn header(&self, name: &str) -> Option<&str> {
        find(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for Vec<(K, V)> {
    fn header(&self, name: &str) -> Option<&str> {
        find(self, name)
    }
}

pub type Headers<'h> = &'h dyn HeaderLookup;

/// A learned scorer for `learned` routers, supplied by the host. Not
/// implemented here: without one, the router's `default` (else `strong`) is used.
pub trait LearnedScorer {
    /// How much the request needs the strong pool, in [0, 1]; `None` when it cannot score.
    fn score(&self, learned: &Learned, request: &ParsedRequest<'_>) -> Option<f64>;
    /// For `strong_share`: the score at or above which a request goes to `strong`.
    fn threshold_for_share(&self, _learned: &Learned, _share: f64) -> Option<f64> {
        None
    }
}

/// How a router chose its pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    /// Index of the first rule that matched.
    Rule(usize),
    Default,
    /// The learned scorer's score (`None`: no scorer) and whether it chose `strong`.
    Learned {
        score: Option<f64>,
        strong: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteChoice {
    pub router: usize,
    pub via: Via,
    pub pool: usize,
}

impl RouteChoice {
    /// The rule name for answer headers: the rule's `name`, `default` or `learned`.
    pub fn rule_name<'c>(&self, router: &'c Router) -> &'c str {
        match self.via {
            Via::Rule(i) => router.rules.get(i).map_or("default", |r| r.name.as_str()),
            Via::Default => "default",
            Via::Learned { .. } => "learned",
        }
    }
}

/// The first condition of a rule that did not hold, borrowing the rule's and
/// the request's text (made for every rule passed over: no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss<'r> {
    Header { name: &'r str, value: Option<&'r str> },
    HasImages { images: u32 },
    HasTools { has_tools: bool },
    Stream { stream: bool },
    MinPromptTokens { min: u32, estimate: u32 },
    MaxPromptTokens { max: u32, estimate: u32 },
    Keywords,
    Metadata { key: &'r str, value: Option<&'r str> },
}

impl fmt::Display for Miss<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Header { name, value: None } => write!(f, "header {name} absent"),
            Miss::Header { name, value: Some(v) } => write!(f, "header {name} is {v:?}"),
            Miss::HasImages { images } => write!(f, "request has {images} image part(s)"),
            Miss::HasTools { has_tools } => write!(f, "has_tools is {has_tools}"),
            Miss::Stream { stream } => write!(f, "stream is {stream}"),
            Miss::MinPromptTokens { min, estimate } => write!(f, "about {estimate} prompt tokens < {min}"),
            Miss::MaxPromptTokens { max, estimate } => write!(f, "about {estimate} prompt tokens > {max}"),
            Miss::Keywords => f.write_str("none of the keywords in the user's text"),
            Miss::Metadata { key, value: None } => write!(f, "metadata.{key} absent"),
            Miss::Metadata { key, value: Some(v) } => write!(f, "metadata.{key} is {v:?}"),
        }
    }
}

/// Chooses the router's pool for a request. `missed(rule, why)` is called
/// for every rule before the one chosen (explanations; a no-op in the filter).
pub fn route<'r>(
    router_index: usize,
    router: &'r Router,
    request: &'r ParsedRequest<'_>,
    headers: Headers<'r>,
    scorer: Option<&dyn LearnedScorer>,
    mut missed: impl FnMut(usize, Miss<'r>),
) -> RouteChoice {
    let messages = Messages { request, phrases: &router.keywords.set, found: OnceCell::new() };
    for (i, rule) in router.rules.iter().enumerate() {
        match first_miss(&rule.when, request, headers, &messages) {
            None => return RouteChoice { router: router_index, via: Via::Rule(i), pool: rule.pool },
            Some(miss) => missed(i, miss),
        }
    }
    let fallback = |learned: &Learned| router.default.unwrap_or(learned.strong);
    match (&router.learned, router.default) {
        (Some(learned), default) => {
            let score = scorer.and_then(|s| s.score(learned, request));
            let threshold = match learned.cutoff {
                Cutoff::Threshold(t) => Some(t),
                Cutoff::StrongShare(share) => scorer.and_then(|s| s.threshold_for_share(learned, share)),
            };
            match (score, threshold) {
                (Some(score), Some(threshold)) => {
                    let strong = score >= threshold;
                    let pool = if strong { learned.strong } else { learned.weak };
                    RouteChoice { router: router_index, via: Via::Learned { score: Some(score), strong }, pool }
                }
                _ => match default {
                    Some(pool) => RouteChoice { router: router_index, via: Via::Default, pool },
                    None => RouteChoice {
                        router: router_index,
                        via: Via::Learned { score: None, strong: true },
                        pool: fallback(learned),
                    },
                },
            }
        }
        (None, default) => RouteChoice { router: router_index, via: Via::Default, pool: default.unwrap_or(0) },
    }
}

/// What rules read from the request's messages, read on first use. With
/// keyword rules, the prompt estimate and the keywords come from one pass.
struct Messages<'r, 'a> {
    request: &'r ParsedRequest<'a>,
    phrases: &'r PhraseSet,
    found: OnceCell<Vec<u64>>,
}

impl<'a> Messages<'_, 'a> {
    fn content(&self) -> &Content<'a> {
        if !self.phrases.is_empty() {
            self.keywords();
        }
        self.request.content()
    }

    /// Which of the router's keywords occur, as bits (see [`PhraseSet::find`]).
    fn keywords(&self) -> &[u64] {
        self.found.get_or_init(|| {
            let mut bits = vec![0u64; self.phrases.len().div_ceil(64)];
            self.request.content_and_phrases(self.phrases, &mut bits);
            bits
        })
    }
}

fn first_miss<'r>(
    when: &'r Conditions,
    request: &'r ParsedRequest<'_>,
    headers: Headers<'r>,
    messages: &Messages<'_, '_>,
) -> Option<Miss<'r>> {
    if let Some(h) = &when.header {
        let value = headers.header(&h.name);
        let holds = match &h.test {
            HeaderTest::Equals(expected) => value == Some(expected.as_str()),
            HeaderTest::Present(present) => value.is_some() == *present,
        };
        if !holds {
            return Some(Miss::Header { name: &h.name, value });
        }
    }
    if let Some(want) = when.stream {
        if request.stream != want {
            return Some(Miss::Stream { stream: request.stream });
        }
    }
    if let Some(want) = when.has_tools {
        if request.has_tools != want {
            return Some(Miss::HasTools { has_tools: request.has_tools });
        }
    }
    for (key, expected) in &when.metadata {
        let value = request.metadata_value(key);
        if value != Some(expected.as_str()) {
            return Some(Miss::Metadata { key, value });
        }
    }
    // Conditions that read the messages come last, so cheap ones can rule first.
    if let Some(want) = when.has_images {
        let images = messages.content().images;
        if (images > 0) != want {
            return Some(Miss::HasImages { images });
        }
    }
    if let Some(min) = when.min_prompt_tokens {
        let estimate = messages.content().prompt_tokens;
        if estimate < min {
            return Some(Miss::MinPromptTokens { min, estimate });
        }
    }
    if let Some(max) = when.max_prompt_tokens {
        let estimate = messages.content().prompt_tokens;
        if estimate > max {
            return Some(Miss::MaxPromptTokens { max, estimate });
        }
    }
    if !when.any_keywords.is_empty() {
        let found = messages.keywords();
        let any = when.any_keywords.iter().any(|&k| found.get(k / 64).is_some_and(|bits| bits & (1 << (k % 64)) != 0));
        if !any {
            return Some(Miss::Keywords);
        }
    }
    None
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::tests::ENV;
    use crate::config::{Config, Target};

    fn config(router: &str) -> Config {
        let json = format!(
            r#"{{
              "providers": {{"a": {{"cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}}}},
              "pools": {{
                "general": {{"members": [{{"provider": "a", "model": "g"}}]}},
                "special": {{"members": [{{"provider": "a", "model": "s"}}]}}
              }},
              "routers": {{"auto": {router}}}
            }}"#
        );
        Config::parse(json.as_bytes(), &ENV).unwrap()
    }

    fn one_rule(when: &str) -> Config {
        config(&format!(r#"{{"rules": [{{"name": "r", "when": {when}, "pool": "special"}}], "default": "general"}}"#))
    }

    /// Whether the single rule matches the request, and why not (the request
    /// is leaked so the miss can borrow from it).
    fn matches<'t>(cfg: &'t Config, body: &str, headers: &'t [(&'t str, &'t str)]) -> Result<(), Miss<'t>> {
        let Some(Target::Router(r)) = cfg.target("auto") else { panic!("no router") };
        let router = cfg.router_at(r).unwrap();
        let body: &'static str = Box::leak(body.to_string().into_boxed_str());
        let req = Box::leak(Box::new(ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap()));
        let mut misses = Vec::new();
        let headers: &'t &'t [(&'t str, &'t str)] = Box::leak(Box::new(headers));
        let choice = route(r, router, req, headers, None, |_, m| misses.push(m));
        match choice.via {
            Via::Rule(0) => {
                assert_eq!(choice.pool, cfg.pool("special").unwrap().0);
                Ok(())
            }
            _ => {
                assert_eq!(choice.pool, cfg.pool("general").unwrap().0);
                assert_eq!(choice.rule_name(router), "default");
                Err(misses.pop().unwrap())
            }
        }
    }

    const PLAIN: &str = r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#;

    #[test]
    fn header_equals_and_present() {
        let cfg = one_rule(r#"{"header": {"name": "X-Data-Class", "equals": "confidential"}}"#);
        assert_eq!(matches(&cfg, PLAIN, &[("x-data-class", "confidential")]), Ok(()));
        assert_eq!(
            matches(&cfg, PLAIN, &[("x-data-class", "public")]),
            Err(Miss::Header { name: "x-data-class", value: Some("public") })
        );
        let cfg = one_rule(r#"{"header": {"name": "x-beta", "present": true}}"#);
        assert_eq!(matches(&cfg, PLAIN, &[("x-beta", "")]), Ok(()));
        assert!(matches(&cfg, PLAIN, &[]).is_err());
        let cfg = one_rule(r#"{"header": {"name": "x-beta", "present": false}}"#);
        assert_eq!(matches(&cfg, PLAIN, &[]), Ok(()));
    }

    #[test]
    fn has_images_has_tools_and_stream() {
        let cfg = one_rule(r#"{"has_images": true}"#);
        let image =
            r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        assert_eq!(matches(&cfg, image, &[]), Ok(()));
        assert_eq!(matches(&cfg, PLAIN, &[]), Err(Miss::HasImages { images: 0 }));
        let cfg = one_rule(r#"{"has_tools": true}"#);
        assert_eq!(matches(&cfg, r#"{"model":"auto","messages":[],"tools":[{"type":"function"}]}"#, &[]), Ok(()));
        assert_eq!(matches(&cfg, PLAIN, &[]), Err(Miss::HasTools { has_tools: false }));
        let cfg = one_rule(r#"{"stream": true}"#);
        assert_eq!(matches(&cfg, r#"{"model":"auto","messages":[],"stream":true}"#, &[]), Ok(()));
        assert_eq!(matches(&cfg, PLAIN, &[]), Err(Miss::Stream { stream: false }));
    }

    #[test]
    fn prompt_token_bounds() {
        let long = format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(500));
        let cfg = one_rule(r#"{"min_prompt_tokens": 400}"#);
        assert_eq!(matches(&cfg, &long, &[]), Ok(()));
        assert!(matches!(matches(&cfg, PLAIN, &[]), Err(Miss::MinPromptTokens { min: 400, .. })));
        let cfg = one_rule(r#"{"max_prompt_tokens": 100}"#);
        assert_eq!(matches(&cfg, PLAIN, &[]), Ok(()));
        assert!(matches!(matches(&cfg, &long, &[]), Err(Miss::MaxPromptTokens { max: 100, .. })));
    }

    #[test]
    fn keywords_are_whole_words_in_user_text_only() {
        let cfg = one_rule(r#"{"any_keywords": ["python", "stack trace"]}"#);
        let user = |text: &str| format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"{text}"}}]}}"#);
        assert_eq!(matches(&cfg, &user("Fix my Python script"), &[]), Ok(()));
        assert_eq!(matches(&cfg, &user("here is a STACK TRACE:"), &[]), Ok(()));
        assert_eq!(matches(&cfg, &user("pythons are snakes"), &[]), Err(Miss::Keywords));
        let system =
            r#"{"model":"auto","messages":[{"role":"system","content":"python"},{"role":"user","content":"hi"}]}"#;
        assert_eq!(matches(&cfg, system, &[]), Err(Miss::Keywords), "system text is not the user's");
    }

    #[test]
    fn metadata_entries_must_equal() {
        let cfg = one_rule(r#"{"metadata": {"team": "ml"}}"#);
        assert_eq!(matches(&cfg, r#"{"model":"auto","messages":[],"metadata":{"team":"ml","x":"y"}}"#, &[]), Ok(()));
        assert_eq!(
            matches(&cfg, r#"{"model":"auto","messages":[],"metadata":{"team":"web"}}"#, &[]),
            Err(Miss::Metadata { key: "team", value: Some("web") })
        );
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold_and_the_first_matching_rule_wins() {
        let cfg = config(
            r#"{"rules": [
                {"name": "both", "when": {"stream": true, "has_tools": true}, "pool": "special"},
                {"name": "any", "when": {}, "pool": "general"}
            ], "default": "special"}"#,
        );
        let Some(Target::Router(r)) = cfg.target("auto") else { panic!() };
        let router = cfg.router_at(r).unwrap();
        let req = ParsedRequest::parse(br#"{"model":"auto","messages":[],"stream":true}"#, Endpoint::ChatCompletions)
            .unwrap();
        let mut misses = Vec::new();
        let choice = route(r, router, &req, &NoHeaders, None, |i, m| misses.push((i, m)));
        assert_eq!(choice.via, Via::Rule(1));
        assert_eq!(choice.rule_name(router), "any");
        assert_eq!(misses, vec![(0, Miss::HasTools { has_tools: false })]);
    }

    struct Fixed(f64);
    impl LearnedScorer for Fixed {
        fn score(&self, _: &Learned, _: &ParsedRequest<'_>) -> Option<f64> {
            Some(self.0)
        }
    }

    #[test]
    fn learned_router_uses_the_scorer_or_falls_back() {
        let cfg = config(r#"{"learned": {"strong": "special", "weak": "general", "threshold": 0.5}}"#);
        let Some(Target::Router(r)) = cfg.target("auto") else { panic!() };
        let router = cfg.router_at(r).unwrap();
        let req = ParsedRequest::parse(PLAIN.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let special = cfg.pool("special").unwrap().0;
        let general = cfg.pool("general").unwrap().0;
        let pick = |s: Option<&dyn LearnedScorer>| route(r, router, &req, &NoHeaders, s, |_, _| {});
        assert_eq!(pick(Some(&Fixed(0.7))).pool, special);
        assert_eq!(pick(Some(&Fixed(0.2))).pool, general);
        let none = pick(None);
        assert_eq!((none.pool, none.via), (special, Via::Learned { score: None, strong: true }));
        assert_eq!(none.rule_name(router), "learned");
    }
}
