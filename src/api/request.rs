//! Parsing client request bodies and rewriting them for an upstream.
//!
//! The body is parsed shallowly: top-level keys with their raw JSON values.
//! Only the routing fields are decoded; everything else is copied through
//! byte for byte, so a rewrite costs one pass and one allocation.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ApiError, Endpoint};

/// Request fields that address the gateway, not the model: never sent upstream.
const GATEWAY_FIELDS: [&str; 5] = ["model", "provider", "fallback", "fallback_models", "load_balance_group"];

/// Deepest JSON nesting accepted. Real requests (tool schemas included) stay far below.
pub const MAX_NESTING: usize = 64;

/// True when arrays/objects nest deeper than `max` (brackets inside strings ignored).
fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    // Fast path: too few opening brackets to nest that deep at all (typical requests).
    if body.iter().filter(|&&b| b == b'[' || b == b'{').count() <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A parsed client request: borrowed top-level fields plus the decoded routing fields.
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The pool or model to route to (`model`, else `load_balance_group.group_id`).
    pub target: String,
    /// `provider` when it names something other than "pool": restricts members to it.
    pub provider: Option<String>,
    pub stream: bool,
    /// Models or pools to try, in order, once the target's members are exhausted.
    pub fallback: Vec<String>,
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((key.0, value));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

fn field_error(name: &str, expected: &str) -> ApiError {
    ApiError::invalid_request("invalid_type", format!("`{name}` must be {expected}."))
}

fn json_kind(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

impl<'a> ParsedRequest<'a> {
    pub fn parse(body: &'a [u8], endpoint: Endpoint) -> Result<ParsedRequest<'a>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_request("invalid_json", "Request body is empty; expected a JSON object."));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::invalid_request("invalid_json", "Request body is not valid UTF-8."))?;
        if nesting_exceeds(body, MAX_NESTING) {
            return Err(ApiError::invalid_request(
                "invalid_json",
                format!("Request body nests deeper than {MAX_NESTING} levels."),
            ));
        }
        let TopLevel(fields) = serde_json::from_str(text).map_err(|e| {
            let what =
                if e.is_data() { "Request body must be a JSON object" } else { "Request body is not valid JSON" };
            ApiError::invalid_request("invalid_json", format!("{what}: {e}."))
        })?;

        let mut model = None;
        let mut group = None;
        let mut provider = None;
        let mut stream = false;
        let mut fallback = Vec::new();
        let mut has_payload = false;
        let payload_field = match endpoint {
            Endpoint::ChatCompletions => ("messages", b'['),
            Endpoint::Completions => ("prompt", 0),
            Endpoint::Embeddings => ("input", 0),
            Endpoint::Models => ("", 0),
        };
        for (key, value) in &fields {
            match key.as_ref() {
                "model" => {
                    model = Some(
                        serde_json::from_str::<String>(value.get()).map_err(|_| field_error("model", "a string"))?,
                    )
                }
                "provider" => {
                    let p =
                        serde_json::from_str::<String>(value.get()).map_err(|_| field_error("provider", "a string"))?;
                    provider = (p != "pool").then_some(p);
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(value.get())
                        .map_err(|_| field_error("stream", "a boolean"))?
                        .unwrap_or(false)
                }
                "fallback" | "fallback_models" => {
                    fallback = match serde_json::from_str::<StringOrList>(value.get()) {
                        Ok(StringOrList::One(s)) => vec![s],
                        Ok(StringOrList::Many(v)) => v,
                        Err(_) => return Err(field_error(key, "a list of model or pool names")),
                    }
                }
                "load_balance_group" => {
                    let g = serde_json::from_str::<Group>(value.get())
                        .map_err(|_| field_error("load_balance_group", "an object with a string `group_id`"))?;
                    group = Some(g.group_id);
                }
                name if name == payload_field.0 => {
                    if payload_field.1 != 0 && json_kind(value) != payload_field.1 {
                        return Err(field_error(name, "an array"));
                    }
                    if value.get() == "null" {
                        return Err(field_error(name, "present and not null"));
                    }
                    has_payload = true;
                }
                _ => {}
            }
        }
        // `model` wins over a load-balancing group when both are given.
        let target =
            match (model, group) {
                (Some(m), _) if !m.is_empty() => m,
                (None, Some(g)) if !g.is_empty() => g,
                _ => return Err(ApiError::invalid_request(
                    "missing_model",
                    "You must provide a `model` (a pool or model name, see GET /v1/models) or a `load_balance_group`.",
                )),
            };
        if !has_payload && !payload_field.0.is_empty() {
            return Err(ApiError::invalid_request(
                "missing_required_parameter",
                format!("Missing required parameter: `{}`.", payload_field.0),
            ));
        }
        Ok(ParsedRequest { fields, target, provider, stream, fallback })
    }

    /// Top-level fields other than the gateway's own, as raw JSON.
    pub fn model_fields(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.fields.iter().filter(|(k, _)| !GATEWAY_FIELDS.contains(&k.as_ref())).map(|(k, v)| (k.as_ref(), *v))
    }

    /// Looks up a top-level field that is sent to the model.
    pub fn field(&self, name: &str) -> Option<&RawValue> {
        self.model_fields().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The body for an OpenAI-shaped upstream: `model` replaced, gateway fields dropped.
    pub fn openai_body(&self, model: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + model.len() + 16,
        );
        out.extend_from_slice(b"{\"model\":");
        push_json_string(&mut out, model);
        for (key, value) in self.model_fields() {
            out.push(b',');
            push_json_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Group {
    group_id: String,
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::{json, Value};

    fn parse(body: &str) -> Result<ParsedRequest<'_>, ApiError> {
        ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions)
    }

    #[test]
    fn rewrites_model_and_strips_gateway_fields() {
        let body = r#"{"messages":[{"role":"user","content":"hi \"there\""}],"provider":"pool","model":"gpt4o_16k","temperature":0.2,"fallback":["x"],"stream":true}"#;
        let req = parse(body).unwrap();
        assert_eq!(req.target, "gpt4o_16k");
        assert_eq!(req.provider, None);
        assert!(req.stream);
        assert_eq!(req.fallback, vec!["x".to_string()]);
        let out: Value = serde_json::from_slice(&req.openai_body("gpt-4o")).unwrap();
        assert_eq!(
            out,
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi \"there\""}],"temperature":0.2,"stream":true})
        );
    }

    #[test]
    fn escaped_keys_and_model_names_survive() {
        let req = parse(r#"{"model":"a\u0041","messages":[],"we\"ird":1}"#).unwrap();
        assert_eq!(req.target, "aA");
        let out: Value = serde_json::from_slice(&req.openai_body("m\"x")).unwrap();
        assert_eq!(out["model"], "m\"x");
        assert_eq!(out["we\"ird"], 1);
    }

    #[test]
    fn load_balance_group_selects_pool_unless_model_given() {
        let req = parse(r#"{"load_balance_group":{"group_id":"g1"},"messages":[]}"#).unwrap();
        assert_eq!(req.target, "g1");
        let req = parse(r#"{"model":"m","load_balance_group":{"group_id":"g1"},"messages":[]}"#).unwrap();
        assert_eq!(req.target, "m");
    }

    #[test]
    fn bad_inputs_are_400_with_clear_codes() {
        let cases = [
            ("", "invalid_json"),
            ("   ", "invalid_json"),
            ("{", "invalid_json"),
            (r#"{"model":"x","messages":[}"#, "invalid_json"),
            ("[1,2]", "invalid_json"),
            ("\"str\"", "invalid_json"),
            (r#"{"model":5,"messages":[]}"#, "invalid_type"),
            (r#"{"model":"x","messages":{}}"#, "invalid_type"),
            (r#"{"model":"x","messages":null}"#, "invalid_type"),
            (r#"{"model":"x","messages":[],"stream":"yes"}"#, "invalid_type"),
            (r#"{"model":"x","messages":[],"fallback":[1]}"#, "invalid_type"),
            (r#"{"messages":[]}"#, "missing_model"),
            (r#"{"model":"","messages":[]}"#, "missing_model"),
            (r#"{"model":"x"}"#, "missing_required_parameter"),
        ];
        for (body, code) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.code, code, "{body}: {}", e.message);
        }
        let e = ParsedRequest::parse(b"{\"model\":\"\xff\"}", Endpoint::ChatCompletions).unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let ok = format!("{{\"model\":\"x\",\"messages\":{}{}}}", "[".repeat(63), "]".repeat(63));
        assert!(parse(&ok).is_ok());
        let deep = format!("{{\"model\":\"x\",\"messages\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(&deep).unwrap_err().code, "invalid_json");
        let in_string = format!("{{\"model\":\"x\",\"messages\":[\"{}\\\"\"]}}", "[".repeat(100));
        assert!(parse(&in_string).is_ok(), "brackets inside strings do not count");
        let deeper = format!("{{\"model\":\"x\",\"messages\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(parse(&deeper).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn endpoint_payload_fields() {
        assert!(ParsedRequest::parse(br#"{"model":"e","input":"x"}"#, Endpoint::Embeddings).is_ok());
        assert!(ParsedRequest::parse(br#"{"model":"e","prompt":"x"}"#, Endpoint::Completions).is_ok());
        assert!(ParsedRequest::parse(br#"{"model":"e","prompt":"x"}"#, Endpoint::Embeddings).is_err());
    }

    #[test]
    fn provider_other_than_pool_is_kept_as_restriction() {
        let req = parse(r#"{"model":"m","provider":"beta","messages":[]}"#).unwrap();
        assert_eq!(req.provider.as_deref(), Some("beta"));
        assert!(!String::from_utf8(req.openai_body("m")).unwrap().contains("provider"));
    }
}
