//! Parsing client request bodies and rewriting them for an upstream.
//!
//! The body is parsed shallowly: top-level keys with their raw JSON values.
//! Only the routing fields are decoded; everything else is copied through
//! byte for byte. When the body carries no gateway field besides `model`, the
//! OpenAI rewrite splices the new model name into the original bytes.
//!
//! What routing needs beyond the top level (prompt size, images, user text)
//! is read from the borrowed `messages`/`prompt` value on first use
//! ([`ParsedRequest::content`]), so requests routed by weight alone never pay for it.

use super::ErrorCode;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::tokens::{TokenCounter, IMAGE_TOKENS, MESSAGE_OVERHEAD_TOKENS};
use super::{ApiError, Endpoint};
use crate::text::{PhraseScan, PhraseSet};

/// Request fields that address the gateway, not the model: never sent upstream.
const GATEWAY_FIELDS: [&str; 5] = ["model", "provider", "fallback", "fallback_models", "load_balance_group"];

/// Deepest JSON nesting accepted. Real requests (tool schemas included) stay far below.
pub const MAX_NESTING: usize = 64;

/// `[` and `{` in `body`, eight bytes at a time without a branch per byte (the
/// compiler does not vectorize at the size-first opt-level): `b | 0x20` is `{`
/// for those two bytes only.
fn opening_brackets(body: &[u8]) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Per-byte counters; summed before any of the eight could make the sum pass 255.
    let sum = |lanes: u64| (lanes.wrapping_mul(0x0101_0101_0101_0101) >> 56) as usize;
    let mut chunks = body.chunks_exact(8);
    let (mut total, mut lanes, mut counted) = (0usize, 0u64, 0u32);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let t = (x | 0x2020_2020_2020_2020) ^ 0x7b7b_7b7b_7b7b_7b7b;
        // 0x80 in exactly the bytes of `t` that are zero (no carry crosses a byte).
        let zero = !(((t & LOW7) + LOW7) | t | LOW7);
        lanes += zero >> 7;
        counted += 1;
        if counted == 31 {
            (total, lanes, counted) = (total + sum(lanes), 0, 0);
        }
    }
    total + sum(lanes) + chunks.remainder().iter().filter(|&&b| b | 0x20 == b'{').count()
}

/// True when arrays/objects nest deeper than `max` (brackets inside strings ignored).
fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    // Fast path: too few opening brackets to nest that deep at all (typical requests).
    if opening_brackets(body) <= max {
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
    body: &'a str,
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Byte range of the `model` value in `body`, when the rewrite may splice
    /// (exactly one `model` key and no other gateway field).
    splice: Option<Range<usize>>,
    /// The pool or model to route to (`model`, else `load_balance_group.group_id`).
    pub target: String,
    /// `provider` when it names something other than "pool": restricts members to it.
    pub provider: Option<String>,
    pub stream: bool,
    /// Models or pools to try, in order, once the target's members are exhausted.
    pub fallback: Vec<String>,
    /// Requested output tokens: `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u32>,
    /// `tools` or `functions` given (and not empty).
    pub has_tools: bool,
    /// `response_format.type == "json_schema"`.
    pub json_schema: bool,
    /// String entries of the `metadata` object (other values are ignored).
    pub metadata: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Bits of the parameters set to something other than their default (`api::params`).
    pub params: u64,
    /// The first parameter `api::params` does not list (its `OTHER` bit).
    pub other_param: Option<Cow<'a, str>>,
    /// `messages` (chat), `prompt` (completions) or `input` (embeddings).
    payload: Option<&'a RawValue>,
    /// Tool definitions, counted in the prompt estimate.
    tools: Option<&'a RawValue>,
    /// The endpoint whose payload is read; `None` for a body read for its top-level fields only.
    endpoint: Option<Endpoint>,
    content: OnceCell<Content<'a>>,
    /// The user's text read alone (no estimate), when only that was asked for.
    user_text: OnceCell<Vec<&'a str>>,
    /// A `"cache_control"` key is somewhere in the body (a prompt-caching mark).
    pub cache_marks: bool,
}

/// What the request's messages hold, for routing: read once, on first use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content<'a> {
    /// Estimated prompt tokens: text, tool calls and definitions, message
    /// framing and a fixed [`IMAGE_TOKENS`] per image.
    pub prompt_tokens: u32,
    /// Image parts (`image_url`, `input_image`, `image`).
    pub images: u32,
    /// The user's text: bodies of JSON string literals (escapes not decoded;
    /// read them with [`crate::text::json_string_chars`]). User messages for
    /// chat, the prompt for completions, the input for embeddings.
    pub user_text: Vec<&'a str>,
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

/// The string `model` of a JSON object body, if it has one: what a request
/// refused before its body was parsed asked for (the call log's `model`).
pub fn model_of(body: &[u8]) -> Option<String> {
    let TopLevel(fields) = serde_json::from_slice(body).ok()?;
    let (_, value) = fields.iter().find(|(key, _)| key == "model")?;
    serde_json::from_str(value.get()).ok()
}

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

fn field_error(name: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_request(ErrorCode::InvalidType, format!("`{name}` must be {expected}.")).with_param(name)
}

fn json_kind(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

impl<'a> ParsedRequest<'a> {
    /// A request to `endpoint`: its payload field (`messages`, `prompt`, `input`) is required.
    pub fn parse(body: &'a [u8], endpoint: Endpoint) -> Result<ParsedRequest<'a>, ApiError> {
        Self::parse_for(body, Some(endpoint))
    }

    /// A body read for its top-level fields only (a front door's own body sent
    /// on as it is): no payload field is required, and the content is empty.
    pub fn parse_fields(body: &'a [u8]) -> Result<ParsedRequest<'a>, ApiError> {
        Self::parse_for(body, None)
    }

    fn parse_for(body: &'a [u8], endpoint: Option<Endpoint>) -> Result<ParsedRequest<'a>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_request(
                ErrorCode::InvalidJson,
                "Request body is empty; expected a JSON object.",
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::invalid_request(ErrorCode::InvalidJson, "Request body is not valid UTF-8."))?;
        let escapes = Escapes::of(text);
        if let Some(at) = escapes.lone_surrogate {
            return Err(ApiError::invalid_request(
                ErrorCode::InvalidJson,
                format!(
                    "Request body is not valid JSON: a lone UTF-16 surrogate escape at byte {at} encodes no character."
                ),
            ));
        }
        if nesting_exceeds(body, MAX_NESTING) {
            return Err(ApiError::invalid_request(
                ErrorCode::InvalidJson,
                format!("Request body nests deeper than {MAX_NESTING} levels."),
            ));
        }
        let TopLevel(fields) = serde_json::from_str(text).map_err(|e| {
            let what =
                if e.is_data() { "Request body must be a JSON object" } else { "Request body is not valid JSON" };
            ApiError::invalid_request(ErrorCode::InvalidJson, format!("{what}: {e}."))
        })?;

        let mut model = None;
        let mut group = None;
        let mut provider = None;
        let mut stream = false;
        let mut fallback = Vec::new();
        let mut has_payload = false;
        let mut payload = None;
        let (mut max_completion_tokens, mut max_tokens) = (None, None);
        let mut tools = None;
        let mut json_schema = false;
        let mut metadata = Vec::new();
        let (mut params, mut other_param) = (0u64, None);
        // The parameter table is the chat body's: other endpoints pass through or are refused whole.
        let chat = endpoint == Some(Endpoint::ChatCompletions);
        let (mut model_keys, mut gateway_keys, mut model_span) = (0usize, 0usize, None);
        let payload_field = match endpoint {
            Some(Endpoint::ChatCompletions) => ("messages", b'['),
            Some(Endpoint::Completions) => ("prompt", 0),
            Some(Endpoint::Embeddings) => ("input", 0),
            None => ("", 0),
        };
        for (key, value) in &fields {
            match key.as_ref() {
                "model" => {
                    model = Some(
                        serde_json::from_str::<String>(value.get()).map_err(|_| field_error("model", "a string"))?,
                    );
                    model_keys += 1;
                    model_span = span_in(text, value);
                }
                "provider" => {
                    gateway_keys += 1;
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
                    gateway_keys += 1;
                    fallback = match serde_json::from_str::<StringOrList>(value.get()) {
                        Ok(StringOrList::One(s)) => vec![s],
                        Ok(StringOrList::Many(v)) => v,
                        Err(_) => {
                            let name = if key.as_ref() == "fallback" { "fallback" } else { "fallback_models" };
                            return Err(field_error(name, "a list of model or pool names"));
                        }
                    }
                }
                "load_balance_group" => {
                    gateway_keys += 1;
                    let g = serde_json::from_str::<Group>(value.get())
                        .map_err(|_| field_error("load_balance_group", "an object with a string `group_id`"))?;
                    group = Some(g.group_id);
                }
                name if name == payload_field.0 => {
                    if payload_field.1 != 0 && json_kind(value) != payload_field.1 {
                        return Err(field_error(payload_field.0, "an array"));
                    }
                    if value.get() == "null" {
                        return Err(field_error(payload_field.0, "present and not null"));
                    }
                    if payload_field.1 == b'[' {
                        check_messages(value)?;
                    }
                    has_payload = true;
                    payload = Some(*value);
                }
                // Size, capability and metadata hints: read leniently, the model judges their validity.
                // Token limits are exact: they size a tenant's reservation (a 400, never a default).
                "max_completion_tokens" => {
                    max_completion_tokens = token_limit("max_completion_tokens", value.get())
                        .map_err(|e| e.to_api_error("max_completion_tokens"))?
                }
                "max_tokens" => {
                    max_tokens = token_limit("max_tokens", value.get()).map_err(|e| e.to_api_error("max_tokens"))?
                }
                "tools" | "functions" if !matches!(value.get(), "null" | "[]") => {
                    if json_kind(value) != b'[' {
                        let name = if key.as_ref() == "tools" { "tools" } else { "functions" };
                        return Err(field_error(name, "an array"));
                    }
                    if key.as_ref() == "functions" {
                        params |= const { super::params::named("functions") };
                    }
                    tools = Some(*value)
                }
                "response_format" => {
                    json_schema = serde_json::from_str::<ResponseFormat<'_>>(value.get())
                        .is_ok_and(|f| f.kind.as_deref() == Some("json_schema"))
                }
                "metadata" => metadata = string_entries(value),
                _ if !chat => {}
                name => {
                    let bit = super::params::bit(name, value.get());
                    if bit == super::params::OTHER && other_param.is_none() {
                        other_param = Some(key.clone());
                    }
                    params |= bit;
                }
            }
        }
        // `model` wins over a load-balancing group when both are given.
        let target =
            match (model, group) {
                (Some(m), _) if !m.is_empty() => m,
                (None, Some(g)) if !g.is_empty() => g,
                _ => return Err(ApiError::invalid_request(
                    ErrorCode::MissingModel,
                    "You must provide a `model` (a pool or model name, see GET /v1/models) or a `load_balance_group`.",
                )
                .with_param("model")),
            };
        if !has_payload && !payload_field.0.is_empty() {
            return Err(ApiError::invalid_request(
                ErrorCode::MissingRequiredParameter,
                format!("Missing required parameter: `{}`.", payload_field.0),
            )
            .with_param(payload_field.0));
        }
        let splice = model_span.filter(|_| model_keys == 1 && gateway_keys == 0);
        Ok(ParsedRequest {
            body: text,
            fields,
            splice,
            target,
            provider,
            stream,
            fallback,
            max_output_tokens: max_completion_tokens.or(max_tokens),
            has_tools: tools.is_some(),
            json_schema,
            metadata,
            params,
            other_param,
            payload,
            tools,
            endpoint,
            content: OnceCell::new(),
            user_text: OnceCell::new(),
            cache_marks: escapes.cache_marks,
        })
    }

    /// Prompt size, images and user text, read from the payload on first call.
    pub fn content(&self) -> &Content<'a> {
        self.content.get_or_init(|| read_content(self.endpoint, self.payload, self.tools, Reading::Estimate(None)))
    }

    /// [`Content::user_text`] alone (what a learned router reads): from the
    /// content when it was read, else from a pass that skips the estimate.
    pub fn user_text(&self) -> &[&'a str] {
        if let Some(content) = self.content.get() {
            return &content.user_text;
        }
        self.user_text.get_or_init(|| read_content(self.endpoint, self.payload, None, Reading::UserText).user_text)
    }

    /// [`ParsedRequest::content`], and which of `phrases` occur in the user's
    /// text (bits in `found`, as [`PhraseSet::find`] sets them). When the content
    /// is not read yet, both come from one pass over the messages.
    pub fn content_and_phrases(&self, phrases: &PhraseSet, found: &mut [u64]) -> &Content<'a> {
        if let Some(content) = self.content.get() {
            phrases.find(content.user_text.iter().copied(), found);
            return content;
        }
        let mut scan = PhraseScan::new(phrases, found);
        let content = read_content(self.endpoint, self.payload, self.tools, Reading::Estimate(Some(&mut scan)));
        self.content.get_or_init(|| content)
    }

    /// The value of a `metadata` entry, when it is a string.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
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
    /// Without gateway fields this is the client's body with the model name's bytes replaced.
    pub fn openai_body(&self, model: &str) -> Vec<u8> {
        self.openai_body_for(model, false)
    }

    /// [`ParsedRequest::openai_body`]; with `ask_usage` a stream also asks for
    /// its usage (`stream_options.include_usage: true`, the client's other
    /// stream options kept), spliced into the bytes like the model name.
    pub fn openai_body_for(&self, model: &str, ask_usage: bool) -> Vec<u8> {
        self.openai_body_without(model, ask_usage, 0, b"")
    }

    /// [`ParsedRequest::openai_body_for`] without the parameters in `drop`
    /// (`api::params` bits), and with `add` (`,"key":value` pairs) at the end.
    pub fn openai_body_without(&self, model: &str, ask_usage: bool, drop: u64, add: &[u8]) -> Vec<u8> {
        let options = if ask_usage && self.stream { usage_stream_options(self.field("stream_options")) } else { None };
        let dropped = |key: &str| drop != 0 && drop & super::params::named(key) != 0;
        if let Some(model_at) = self.splice.clone().filter(|_| drop == 0) {
            let mut model_json = Vec::with_capacity(model.len() + 2);
            push_json_string(&mut model_json, model);
            let options = options.map(|value| match self.field("stream_options").and_then(|v| span_in(self.body, v)) {
                Some(at) => (at, value),
                // A new last field, before the object's closing brace.
                None => {
                    let close = self.body.rfind('}').unwrap_or(self.body.len());
                    (close..close, [&b",\"stream_options\":"[..], &value].concat())
                }
            });
            let model_edit = (model_at, model_json);
            let edits = match options {
                Some(o) if o.0.start < model_edit.0.start => [Some(o), Some(model_edit)],
                o => [Some(model_edit), o],
            };
            let mut out = Vec::with_capacity(self.body.len() + model.len() + 48);
            let mut from = 0;
            for (at, value) in edits.iter().flatten() {
                out.extend_from_slice(self.body.get(from..at.start).unwrap_or_default().as_bytes());
                out.extend_from_slice(value);
                from = at.end;
            }
            out.extend_from_slice(self.body.get(from..).unwrap_or_default().as_bytes());
            return out;
        }
        let mut out = Vec::with_capacity(
            self.fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + model.len() + 16,
        );
        out.extend_from_slice(b"{\"model\":");
        push_json_string(&mut out, model);
        for (key, value) in self.model_fields().filter(|(k, _)| !dropped(k)) {
            out.push(b',');
            push_json_string(&mut out, key);
            out.push(b':');
            match (&options, key) {
                (Some(options), "stream_options") => out.extend_from_slice(options),
                _ => out.extend_from_slice(value.get().as_bytes()),
            }
        }
        if let Some(options) = options.filter(|_| self.field("stream_options").is_none()) {
            out.extend_from_slice(b",\"stream_options\":");
            out.extend_from_slice(&options);
        }
        out.extend_from_slice(add);
        out.push(b'}');
        out
    }
}

/// `stream_options` asking for the stream's usage, or `None` when `current`
/// already does (or is not an object: the provider names that error).
fn usage_stream_options(current: Option<&RawValue>) -> Option<Vec<u8>> {
    let mut out = b"{\"include_usage\":true".to_vec();
    if let Some(current) = current.filter(|v| v.get() != "null") {
        let TopLevel(fields) = serde_json::from_str::<TopLevel<'_>>(current.get()).ok()?;
        for (key, value) in fields {
            match key.as_ref() {
                "include_usage" if value.get() == "true" => return None,
                "include_usage" => {}
                _ => {
                    out.push(b',');
                    push_json_string(&mut out, &key);
                    out.push(b':');
                    out.extend_from_slice(value.get().as_bytes());
                }
            }
        }
    }
    out.push(b'}');
    Some(out)
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

/// Where a borrowed value sits in the text it was parsed from.
fn span_in(text: &str, value: &RawValue) -> Option<Range<usize>> {
    let start = (value.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(value.get().len())?;
    (end <= text.len()).then_some(start..end)
}

/// Why a token limit (`max_tokens`, `max_completion_tokens`, a door's
/// `max_output_tokens`) was refused: `invalid_type` (not an integer: a string,
/// `1.5`, `1e3`, `1e400`) or `invalid_value` (an integer below 1 or above
/// `u32::MAX`), with OpenAI's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTokenLimit {
    pub code: ErrorCode,
    pub message: String,
}

impl BadTokenLimit {
    pub fn to_api_error(&self, field: &'static str) -> ApiError {
        ApiError::invalid_request(self.code, self.message.clone()).with_param(field)
    }
}

/// Each message of a chat request must be an object: the first one that is not
/// is named (`messages[1]`). No allocation: the array is walked, not collected.
fn check_messages(messages: &RawValue) -> Result<(), ApiError> {
    struct Objects;
    impl<'de> Visitor<'de> for Objects {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut index = 0;
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if json_kind(item) != b'{' {
                    while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                    return Ok(Some(index));
                }
                index += 1;
            }
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_str(messages.get());
    match de.deserialize_seq(Objects) {
        Ok(None) => Ok(()),
        Ok(Some(index)) => {
            let mut e = field_error("messages", "an array of message objects");
            e.message = format!("`messages[{index}]` must be a message object (with a `role`).");
            Err(e)
        }
        Err(_) => Err(field_error("messages", "an array")),
    }
}

/// What one pass over a body's backslashes and underscores finds.
struct Escapes {
    /// Byte offset of the first `\uD800`-`\uDFFF` escape that is not half of
    /// a surrogate pair: JSON no provider can decode (serde_json reads past it
    /// when it only skips a value).
    lone_surrogate: Option<usize>,
    /// A `"cache_control"` key is in the body (found from its `_`).
    cache_marks: bool,
}

impl Escapes {
    /// Candidates are the backslashes followed by `u` (memchr's byte search:
    /// its substring search costs more to set up than a prompt's other escapes
    /// cost to skip); one after an odd run of backslashes is an escaped `\`
    /// followed by a plain `u`.
    fn of(text: &str) -> Escapes {
        const CACHE_CONTROL: &[u8] = b"\"cache_control\"";
        let bytes = text.as_bytes();
        let unit = |at: usize| -> Option<u16> {
            (bytes.get(at + 1) == Some(&b'u')).then_some(())?;
            u16::from_str_radix(std::str::from_utf8(bytes.get(at + 2..at + 6)?).ok()?, 16).ok()
        };
        let mut found = Escapes { lone_surrogate: None, cache_marks: false };
        let mut skip_to = 0;
        for at in memchr::memchr2_iter(b'\\', b'_', bytes) {
            if bytes.get(at) == Some(&b'_') {
                found.cache_marks |= at >= 6 && bytes.get(at - 6..at - 6 + CACHE_CONTROL.len()) == Some(CACHE_CONTROL);
                continue;
            }
            // Linear: the runs before two candidates never overlap (each ends at its candidate).
            if bytes.get(at + 1) != Some(&b'u') || at < skip_to || crate::text::escaped_at(bytes, at) {
                continue;
            }
            match unit(at) {
                Some(0xD800..=0xDBFF) if matches!(unit(at + 6), Some(0xDC00..=0xDFFF)) => skip_to = at + 12,
                Some(0xD800..=0xDFFF) => {
                    found.lone_surrogate = Some(at);
                    return found;
                }
                _ => {}
            }
        }
        found
    }
}

/// A token limit from its raw JSON text: `Ok(None)` for `null`, else an
/// integer in `1..=u32::MAX`, read exactly (no saturation, no default).
pub fn token_limit(field: &str, raw: &str) -> Result<Option<u32>, BadTokenLimit> {
    let raw = raw.trim();
    let shown = if raw.len() <= 24 { raw.to_string() } else { format!("a {}-character number", raw.len()) };
    let got = match raw.as_bytes().first() {
        _ if raw == "null" => return Ok(None),
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b'-' | b'0'..=b'9') => {
            let (negative, digits) = match raw.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, raw),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                "a decimal number"
            } else if negative || digits.bytes().all(|b| b == b'0') {
                return Err(BadTokenLimit {
                    code: ErrorCode::InvalidValue,
                    message: format!(
                        "Invalid '{field}': integer below minimum value. Expected a value >= 1, but got {shown} instead."
                    ),
                });
            } else {
                return match digits.parse::<u32>() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => Err(BadTokenLimit {
                        code: ErrorCode::InvalidValue,
                        message: format!(
                            "Invalid '{field}': integer above maximum value. Expected a value <= {}, but got {shown} instead.",
                            u32::MAX
                        ),
                    }),
                };
            }
        }
        _ => "an unknown value",
    };
    Err(BadTokenLimit {
        code: ErrorCode::InvalidType,
        message: format!("Invalid type for '{field}': expected an integer, but got {got} instead."),
    })
}

/// The first of `fields` at the top level of `body` whose token limit is
/// invalid, with why: for the doors, whose own parse cannot tell `2^70` from
/// `1.5` or read `1e400` at all. `None` when they are fine or the body is no object.
pub fn bad_token_limit<'f>(body: &[u8], fields: &[&'f str]) -> Option<(&'f str, BadTokenLimit)> {
    let TopLevel(top) = serde_json::from_slice::<TopLevel<'_>>(body).ok()?;
    top.iter().find_map(|(key, value)| {
        let field = *fields.iter().find(|f| **f == key.as_ref())?;
        token_limit(field, value.get()).err().map(|e| (field, e))
    })
}

fn string_entries<'a>(value: &'a RawValue) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    let Ok(TopLevel(entries)) = serde_json::from_str::<TopLevel<'a>>(value.get()) else { return Vec::new() };
    entries.into_iter().filter_map(|(k, v)| Some((k, serde_json::from_str::<Key<'a>>(v.get()).ok()?.0))).collect()
}

/// The body of a JSON string literal, when `raw` is one.
fn string_body(raw: &RawValue) -> Option<&str> {
    raw.get().strip_prefix('"')?.strip_suffix('"')
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// One payload being read: the running estimate, what was found, and the
/// phrase scan that hears the user's words (when a router matches keywords).
struct ContentReader<'a, 'r, 's, 'f> {
    counter: TokenCounter,
    content: Content<'a>,
    reading: Reading<'r, 's, 'f>,
}

/// What a pass over the payload computes besides the user's text.
enum Reading<'r, 's, 'f> {
    /// The estimate (and, with a scan, the keywords in the same loop).
    Estimate(Option<&'r mut PhraseScan<'s, 'f>>),
    /// Nothing else: the estimate is left at 0.
    UserText,
}

impl<'a> ContentReader<'a, '_, '_, '_> {
    fn text(&mut self, body: &'a str, user: bool) {
        match (user, &mut self.reading) {
            (true, Reading::Estimate(Some(scan))) => self.counter.add_json_string_scanning(body, scan),
            (_, Reading::Estimate(_)) => self.counter.add_json_string(body),
            (_, Reading::UserText) => {}
        }
        if user {
            self.content.user_text.push(body);
        }
    }
}

/// Best effort: a payload of an unexpected shape yields what could be read
/// (the provider reports the real error).
fn read_content<'a>(
    endpoint: Option<Endpoint>,
    payload: Option<&'a RawValue>,
    tools: Option<&'a RawValue>,
    reading: Reading<'_, '_, '_>,
) -> Content<'a> {
    let mut reader = ContentReader { counter: TokenCounter::new(), content: Content::default(), reading };
    if let Some(tools) = tools {
        reader.counter.add_text(tools.get());
    }
    let Some(payload) = payload else { return reader.content };
    match endpoint {
        Some(Endpoint::ChatCompletions) => {
            let messages: Vec<Message<'a>> = serde_json::from_str(payload.get()).unwrap_or_default();
            // Reply priming, as in OpenAI's counting guide.
            reader.counter.add_tokens(3);
            for message in &messages {
                reader.counter.add_tokens(MESSAGE_OVERHEAD_TOKENS);
                let user = message.role.as_deref() == Some("user");
                if let Some(raw) = message.content {
                    read_message_content(raw, user, &mut reader);
                }
                if let Reading::Estimate(_) = reader.reading {
                    for calls in [message.tool_calls, message.function_call].into_iter().flatten() {
                        reader.counter.add_text(calls.get());
                    }
                }
            }
        }
        Some(Endpoint::Completions | Endpoint::Embeddings) => {
            let texts: Vec<&'a RawValue> = if payload.get().starts_with('[') {
                serde_json::from_str(payload.get()).unwrap_or_default()
            } else {
                vec![payload]
            };
            for text in texts.into_iter().filter_map(string_body) {
                reader.text(text, true);
            }
        }
        None => {}
    }
    reader.content.prompt_tokens = reader.counter.tokens();
    reader.content
}

fn read_message_content<'a>(raw: &'a RawValue, user: bool, reader: &mut ContentReader<'a, '_, '_, '_>) {
    if let Some(body) = string_body(raw) {
        reader.text(body, user);
        return;
    }
    if !raw.get().starts_with('[') {
        return;
    }
    let parts: Vec<Part<'a>> = serde_json::from_str(raw.get()).unwrap_or_default();
    let mut images = 0;
    for part in &parts {
        match part.kind.as_deref() {
            Some("text" | "input_text") => {
                if let Some(body) = part.text.and_then(string_body) {
                    reader.text(body, user);
                }
            }
            Some("image_url" | "input_image" | "image") => images += 1,
            _ => {}
        }
    }
    reader.content.images += images;
    reader.counter.add_tokens(images * IMAGE_TOKENS);
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

    use super::*;
    use serde_json::{json, Value};

    fn parse(body: &str) -> Result<ParsedRequest<'_>, ApiError> {
        ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions)
    }

    #[test]
    fn model_of_reads_only_a_string_model_of_an_object() {
        assert_eq!(model_of(br#"{"messages": [], "model": "gpt-4.1"}"#).as_deref(), Some("gpt-4.1"));
        assert_eq!(model_of(br#"{"model": 4}"#), None);
        assert_eq!(model_of(br#"{"model": "#), None);
        assert_eq!(model_of(br#"["model"]"#), None);
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
        // What a provider would refuse with no code of its own: refused here, code and field named.
        let cases = [
            (r#"{"model":"x","messages":[1,2]}"#, "invalid_type", Some("messages"), "messages[0]"),
            (r#"{"model":"x","messages":[{"role":"user"},"hi"]}"#, "invalid_type", Some("messages"), "messages[1]"),
            (r#"{"model":"x","messages":[],"tools":{}}"#, "invalid_type", Some("tools"), "array"),
            (r#"{"model":"x","messages":[],"functions":"f"}"#, "invalid_type", Some("functions"), "array"),
            (r#"{"model":"x","messages":[],"max_tokens":1e400}"#, "invalid_type", Some("max_tokens"), "integer"),
            (r#"{"model":"x","messages":[],"max_tokens":1.5}"#, "invalid_type", Some("max_tokens"), "integer"),
            (r#"{"model":"x","messages":[],"max_tokens":"10"}"#, "invalid_type", Some("max_tokens"), "integer"),
            (
                r#"{"model":"x","messages":[],"max_completion_tokens":-1}"#,
                "invalid_value",
                Some("max_completion_tokens"),
                ">= 1",
            ),
            (r#"{"model":"x","messages":[{"role":"user","content":"\ud800"}]}"#, "invalid_json", None, "surrogate"),
            (r#"{"model":"x","messages":[{"role":"user","content":"a\udc00"}]}"#, "invalid_json", None, "surrogate"),
            (
                r#"{"model":"x","messages":[{"role":"user","content":"\ud800\ud800"}]}"#,
                "invalid_json",
                None,
                "surrogate",
            ),
            (r#"{"model":"x","messages":[{"role":"user","content":"\ud800"#, "invalid_json", None, "surrogate"),
        ];
        for (body, code, param, says) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!((e.status, e.code.as_str(), e.param), (400, code, param), "{body}: {}", e.message);
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        // Pairs, escaped backslashes and nulls pass.
        for body in [
            r#"{"model":"x","messages":[{"role":"user","content":"\ud83d\ude00 \\ud800 \\\\"}],"max_tokens":null,"tools":null}"#,
            r#"{"model":"x","messages":[],"max_tokens":1,"max_completion_tokens":4294967295}"#,
        ] {
            parse(body).unwrap_or_else(|e| panic!("{body}: {}", e.message));
        }
        let e = ParsedRequest::parse(b"{\"model\":\"\xff\"}", Endpoint::ChatCompletions).unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn cache_marks_are_noticed_anywhere_in_the_body() {
        let marked = r#"{"model":"x","messages":[{"role":"user","content":[{"type":"text","text":"a_b","cache_control":{"type":"ephemeral"}}]}]}"#;
        assert!(parse(marked).unwrap().cache_marks);
        for plain in [
            r#"{"model":"x","messages":[{"role":"user","content":"cache_control _cache_control\u00e9"}]}"#,
            r#"{"model":"x","messages":[]}"#,
        ] {
            assert!(!parse(plain).unwrap().cache_marks, "{plain}");
        }
    }

    #[test]
    fn opening_brackets_are_counted_exactly() {
        let text: String = (0..3000u32).map(|i| char::from(b" [{]}a{[\"x:,;Z[{"[(i * 7 % 16) as usize])).collect();
        for len in [0, 1, 7, 8, 9, 63, 247, 248, 249, 255, 256, 1000, 3000] {
            let bytes = &text.as_bytes()[..len];
            let naive = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
            assert_eq!(opening_brackets(bytes), naive, "{len} bytes");
        }
        assert_eq!(opening_brackets(&[b'{'; 4096]), 4096);
        // Only `{` and `[` become `{` with bit 0x20 set: not `;`, ESC, or bytes >= 0x80.
        assert_eq!(opening_brackets(&[0x7b, 0x5b, 0xfb, 0xdb, 0x3b, 0x1b, 0x7b, 0x5b, 0xfb]), 4);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let nested =
            |n: usize| format!("{{\"model\":\"x\",\"messages\":[{{\"c\":{}{}}}]}}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&nested(61)).is_ok());
        assert_eq!(parse(&nested(98)).unwrap_err().code, "invalid_json");
        let in_string = format!("{{\"model\":\"x\",\"messages\":[{{\"c\":\"{}\\\"\"}}]}}", "[".repeat(100));
        assert!(parse(&in_string).is_ok(), "brackets inside strings do not count");
        let deeper = format!("{{\"model\":\"x\",\"messages\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(parse(&deeper).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn endpoint_payload_fields() {
        assert!(ParsedRequest::parse(br#"{"model":"e","input":"x"}"#, Endpoint::Embeddings).is_ok());
        assert!(ParsedRequest::parse(br#"{"model":"e","prompt":"x"}"#, Endpoint::Completions).is_ok());
        assert!(ParsedRequest::parse(br#"{"model":"e","prompt":"x"}"#, Endpoint::Embeddings).is_err());
        // Top-level fields only: no payload is required, and none is read.
        let fields = ParsedRequest::parse_fields(br#"{"model":"e","input":"hello there","previous_response_id":"r"}"#);
        let fields = fields.unwrap();
        assert_eq!(fields.target, "e");
        assert!(fields.field("previous_response_id").is_some());
        assert_eq!(fields.content().prompt_tokens, 0);
        assert!(ParsedRequest::parse_fields(br#"{"input":"x"}"#).is_err(), "the model is still required");
    }

    #[test]
    fn rewrite_without_gateway_fields_splices_the_model_into_the_original_bytes() {
        let body = "{ \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}],\n  \"model\" : \"pool\", \"n\": 1 }";
        let req = parse(body).unwrap();
        let out = String::from_utf8(req.openai_body("gpt-\"4o")).unwrap();
        assert_eq!(out, body.replace("\"pool\"", "\"gpt-\\\"4o\""));
        // With a gateway field the body is rebuilt without it.
        let req = parse(r#"{"model":"pool","provider":"pool","messages":[]}"#).unwrap();
        assert_eq!(String::from_utf8(req.openai_body("m")).unwrap(), r#"{"model":"m","messages":[]}"#);
        // A repeated `model` key is never half-replaced.
        let req = parse(r#"{"model":"a","messages":[],"model":"b"}"#).unwrap();
        assert_eq!(req.target, "b");
        assert_eq!(String::from_utf8(req.openai_body("m")).unwrap(), r#"{"model":"m","messages":[]}"#);
    }

    #[test]
    fn streams_ask_for_usage_keeping_the_clients_other_stream_options() {
        let body = |b: &str, ask: bool| String::from_utf8(parse(b).unwrap().openai_body_for("m", ask)).unwrap();
        // Spliced: a new last field, or the client's options rewritten in place.
        assert_eq!(
            body(r#"{ "model": "p", "stream": true, "messages": [] }"#, true),
            r#"{ "model": "m", "stream": true, "messages": [] ,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            body(
                r#"{"stream_options":{"include_obfuscation":false,"include_usage":false},"model":"p","stream":true,"messages":[]}"#,
                true
            ),
            r#"{"stream_options":{"include_usage":true,"include_obfuscation":false},"model":"m","stream":true,"messages":[]}"#
        );
        assert_eq!(
            body(r#"{"model":"p","stream":true,"stream_options":null,"messages":[]}"#, true),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        );
        // Rebuilt (a gateway field is dropped): the same fields.
        assert_eq!(
            body(r#"{"model":"p","provider":"pool","stream":true,"messages":[]}"#, true),
            r#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            body(r#"{"model":"p","fallback":["x"],"stream":true,"stream_options":{},"messages":[]}"#, true),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        );
        // Already asked, not a stream, or not asked to: only the model changes.
        for b in [
            r#"{"model":"p","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            r#"{"model":"p","stream":false,"messages":[]}"#,
        ] {
            assert_eq!(body(b, true), b.replace("\"p\"", "\"m\""));
        }
        let b = r#"{"model":"p","stream":true,"messages":[]}"#;
        assert_eq!(body(b, false), b.replace("\"p\"", "\"m\""));
        for b in [
            body(b, true),
            body(
                r#"{"model":"p","provider":"x","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#,
                true,
            ),
        ] {
            let v: Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{b}");
        }
    }

    #[test]
    fn summary_reads_output_tokens_tools_schema_and_metadata() {
        let req = parse(
            r#"{"model":"m","messages":[],"max_tokens":100,"max_completion_tokens":50,"tools":[{"type":"function"}],
               "response_format":{"type":"json_schema","json_schema":{}},"metadata":{"team":"ml","n":3,"x\u0041":"y"}}"#,
        )
        .unwrap();
        assert_eq!(req.max_output_tokens, Some(50));
        assert!(req.has_tools);
        assert!(req.json_schema);
        assert_eq!(req.metadata_value("team"), Some("ml"));
        assert_eq!(req.metadata_value("n"), None, "non-string values are ignored");
        assert_eq!(req.metadata_value("xA"), Some("y"));

        let req = parse(r#"{"model":"m","messages":[],"max_tokens":7,"tools":[],"response_format":{"type":"json_object"},"metadata":"x"}"#)
            .unwrap();
        assert_eq!(req.max_output_tokens, Some(7));
        assert!(!req.has_tools, "an empty tool list needs no tool support");
        assert!(!req.json_schema);
        assert!(req.metadata.is_empty());
        let req = parse(r#"{"model":"m","messages":[],"functions":[{"name":"f"}],"max_tokens":null}"#).unwrap();
        assert!(req.has_tools);
        assert_eq!(req.max_output_tokens, None);
    }

    #[test]
    fn token_limits_are_exact_or_a_400_naming_the_field() {
        let cases = [
            ("\"10\"", "invalid_type"),
            ("1.5", "invalid_type"),
            ("1e400", "invalid_type"),
            ("1e3", "invalid_type"),
            ("true", "invalid_type"),
            ("[1]", "invalid_type"),
            ("-5", "invalid_value"),
            ("0", "invalid_value"),
            ("1180591620717411303424", "invalid_value"),
            ("4294967296", "invalid_value"),
        ];
        for field in ["max_tokens", "max_completion_tokens"] {
            for (raw, code) in cases {
                let body = format!(r#"{{"model":"m","messages":[],"{field}":{raw}}}"#);
                let e = parse(&body).unwrap_err();
                assert_eq!((e.status, e.code.as_str(), e.param), (400, code, Some(field)), "{body}: {}", e.message);
            }
        }
        let ok = parse(r#"{"model":"m","messages":[],"max_tokens":4294967295}"#).unwrap();
        assert_eq!(ok.max_output_tokens, Some(u32::MAX));
        assert_eq!(token_limit("max_tokens", "1000000"), Ok(Some(1_000_000)));
        let long = token_limit("max_tokens", &"9".repeat(400)).unwrap_err();
        assert!(long.message.contains("400-character"), "{}", long.message);
        let bad = bad_token_limit(br#"{"a":1,"max_output_tokens":1e400}"#, &["max_output_tokens"]);
        assert_eq!(bad.map(|(f, e)| (f, e.code.as_str())), Some(("max_output_tokens", "invalid_type")));
        assert_eq!(bad_token_limit(br#"{"max_output_tokens":5}"#, &["max_output_tokens"]), None);
    }

    #[test]
    fn content_counts_images_and_collects_user_text() {
        let req = parse(
            r#"{"model":"m","messages":[
                {"role":"system","content":"You are terse."},
                {"role":"user","content":[{"type":"text","text":"What is in\nthis picture?"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                    {"type":"image_url","image_url":{"url":"https://x/y.png"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"1","function":{"name":"f","arguments":"{}"}}]},
                {"role":"user","content":"Explain the stack trace"}]}"#,
        )
        .unwrap();
        let content = req.content();
        assert_eq!(content.images, 2);
        assert_eq!(content.user_text, vec!["What is in\\nthis picture?", "Explain the stack trace"]);
        assert!(content.prompt_tokens > 2 * IMAGE_TOKENS, "{}", content.prompt_tokens);
        assert!(content.prompt_tokens < 2 * IMAGE_TOKENS + 60, "{}", content.prompt_tokens);
    }

    #[test]
    fn content_and_phrases_equals_content_then_find_whether_or_not_content_was_read() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"python sql"},
            {"role":"user","content":[{"type":"text","text":"Fix my PYTHON\nscript: caf\u00e9 \u00c9T\u00c9"},
                                      {"type":"image_url","image_url":{"url":"u"}}]},
            {"role":"user","content":"HTTPServer abc123 stack"},
            {"role":"user","content":"trace"}]}"#;
        let phrases = ["python", "sql", "stack trace", "café", "été", "httpserver", "abc123", "abc"];
        let set = PhraseSet::new(phrases);
        let fused = parse(body).unwrap();
        let mut fused_bits = [0u64; 1];
        let content = fused.content_and_phrases(&set, &mut fused_bits).clone();
        let separate = parse(body).unwrap();
        let mut separate_bits = [0u64; 1];
        set.find(separate.content().user_text.iter().copied(), &mut separate_bits);
        assert_eq!(&content, separate.content());
        assert_eq!(fused_bits, separate_bits);
        // python, café, été, httpserver, abc123; not sql (system text), not abc (inside a word),
        // not "stack trace" (its words are in two messages).
        assert_eq!(fused_bits[0], 0b0111_1001);
        // Content read already: the phrases are found from its user text.
        let mut again = [0u64; 1];
        assert_eq!(fused.content_and_phrases(&set, &mut again), &content);
        assert_eq!(again, fused_bits);
    }

    #[test]
    fn prompt_estimate_grows_with_the_prompt_and_counts_tools() {
        let short = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let text = "word ".repeat(1000);
        let long = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let long = parse(&long).unwrap();
        assert!(short.content().prompt_tokens < 12);
        let n = long.content().prompt_tokens;
        assert!((950..1100).contains(&n), "{n}");
        let tools = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#).unwrap();
        assert!(tools.content().prompt_tokens > short.content().prompt_tokens + 5);
    }

    #[test]
    fn user_text_alone_equals_the_contents_whether_or_not_the_content_was_read() {
        let body = br#"{"model": "m", "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "What is\nthis?"}, {"type": "image_url"}]},
            {"role": "assistant", "content": "a cat"}, {"role": "user", "content": "and that?"}]}"#;
        let alone = ParsedRequest::parse(body, Endpoint::ChatCompletions).unwrap();
        assert_eq!(alone.user_text(), ["What is\\nthis?", "and that?"]);
        let read = ParsedRequest::parse(body, Endpoint::ChatCompletions).unwrap();
        let content = read.content().clone();
        assert_eq!(read.user_text(), content.user_text.as_slice());
        assert_eq!(alone.content(), &content, "the content read after the user text is complete");
    }

    #[test]
    fn completions_prompt_is_user_text() {
        let req = ParsedRequest::parse(br#"{"model":"m","prompt":["one","two"]}"#, Endpoint::Completions).unwrap();
        assert_eq!(req.content().user_text, vec!["one", "two"]);
        let req = ParsedRequest::parse(br#"{"model":"m","prompt":"solo"}"#, Endpoint::Completions).unwrap();
        assert_eq!(req.content().user_text, vec!["solo"]);
    }

    #[test]
    fn unexpected_message_shapes_are_read_best_effort() {
        let req =
            parse(r#"{"model":"m","messages":[{"role":"user"},{"content":[1]},{"role":"user","content":5}]}"#).unwrap();
        assert_eq!(req.content().images, 0);
        assert!(req.content().user_text.is_empty());
    }

    #[test]
    fn provider_other_than_pool_is_kept_as_restriction() {
        let req = parse(r#"{"model":"m","provider":"beta","messages":[]}"#).unwrap();
        assert_eq!(req.provider.as_deref(), Some("beta"));
        assert!(!String::from_utf8(req.openai_body("m")).unwrap().contains("provider"));
    }
}
