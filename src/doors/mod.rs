//! Front doors other than Chat Completions: pure translators between a door's
//! API and the OpenAI Chat Completions shape the pipeline speaks.
//!
//! The host turns a door request into a chat body (`to_chat`), sends it through
//! the unchanged pipeline (routing, adapters, failover), and turns the OpenAI
//! answer back into the door's shape: a whole body (`from_chat_completion`),
//! an SSE stream (`MessagesStream`, `ResponsesStream`) or an error body.
//! Members whose kind serves the door's API (`Door::native_api`) get the
//! client's body as it is instead (model rewritten) and their answers pass
//! through; a feature the translator refuses keeps the request on them.
//!
//! - `messages`: Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).
//! - `responses`: OpenAI Responses API (`POST /v1/responses`), stateless subset translated.

pub mod messages;
pub mod responses;

// Both read files from disk: native only (see the files).
#[cfg(test)]
mod param_table;
#[cfg(test)]
mod sdk_fixtures;

use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use serde_json::{Map, Value};

use crate::encoding::random_hex;
use crate::providers::NativeApi;
use crate::sse;

/// The API a client speaks. Every door's requests run through the pipeline
/// as chat completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Door {
    #[default]
    Chat,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`, answered by the gateway itself.
    CountTokens,
    /// `POST /v1/responses`
    Responses,
}

impl Door {
    /// The door whose error shape answers at `path` before (or without) routing:
    /// every path of the Messages API (`/v1/messages...`) is Anthropic's, so an
    /// Anthropic client reads a refused key or an unknown path as it reads Anthropic's.
    pub fn error_shape_of(path: &str) -> Door {
        let clean = path.split('?').next().unwrap_or("");
        match clean.trim_end_matches('/') {
            "/v1/messages/count_tokens" => Door::CountTokens,
            "/v1/responses" => Door::Responses,
            p if p == "/v1/messages" || clean.starts_with("/v1/messages/") => Door::Messages,
            _ => Door::Chat,
        }
    }

    /// The API some provider kinds serve as it is: requests to their members
    /// pass through (model rewritten), their answers come back untouched.
    pub fn native_api(self) -> Option<NativeApi> {
        match self {
            Door::Messages => Some(NativeApi::Messages),
            Door::Responses => Some(NativeApi::Responses),
            Door::Chat | Door::CountTokens => None,
        }
    }

    /// The client's request as the pipeline routes it (`None` for the chat
    /// door). `beta`: the Messages door's `anthropic-beta` header, if any.
    pub fn to_chat(self, body: &[u8], beta: Option<&str>) -> Result<Option<Routed>, DoorError> {
        let translated = match self {
            Door::Chat | Door::CountTokens => return Ok(None),
            Door::Messages => messages::to_chat(body, beta),
            Door::Responses => responses::to_chat(body),
        };
        match translated {
            Ok(chat) => Ok(Some(Routed { chat, native_only: None })),
            // What the translation cannot express, the door's native kinds serve as it is.
            Err(e) if e.kind == DoorErrorKind::NativeOnly => {
                Ok(Some(Routed { chat: routing_stand_in(body), native_only: Some(e) }))
            }
            Err(e) => Err(self.precise_token_limit_error(body, e)),
        }
    }

    /// The door's own token limit field (it sizes a tenant's reservation).
    fn token_limit_field(self) -> Option<&'static str> {
        match self {
            Door::Messages => Some("max_tokens"),
            Door::Responses => Some("max_output_tokens"),
            Door::Chat | Door::CountTokens => None,
        }
    }

    /// A refused token limit (or a body the JSON parser refused, e.g. for
    /// `1e400`) said precisely: `invalid_type` or `invalid_value`, naming the
    /// field. Read from the raw body, on this error path only.
    fn precise_token_limit_error(self, body: &[u8], e: DoorError) -> DoorError {
        let Some(field) = self.token_limit_field() else { return e };
        if e.param.as_deref() != Some(field) && e.code != ErrorCode::InvalidJson {
            return e;
        }
        match crate::api::request::bad_token_limit(body, &[field]) {
            Some((field, bad)) => {
                let message = format!("{field}: {}", bad.message);
                DoorError { kind: DoorErrorKind::Invalid, code: bad.code, message, param: Some(field.into()) }
            }
            None => e,
        }
    }

    /// An OpenAI error body (the gateway's own or a provider's) in this door's shape.
    pub fn error_body(self, status: u16, openai_error_json: Vec<u8>) -> Vec<u8> {
        match self {
            Door::Messages | Door::CountTokens => messages::error_body(status, &openai_error_json),
            Door::Chat | Door::Responses => openai_error_json,
        }
    }

    /// A refused door request in this door's error shape.
    pub fn refusal_body(self, e: &DoorError) -> Vec<u8> {
        match self {
            Door::Messages | Door::CountTokens => e.to_anthropic_json(),
            Door::Chat | Door::Responses => e.to_openai_json(),
        }
    }
}

/// A door request as the pipeline takes it.
#[derive(Debug)]
pub struct Routed {
    /// The Chat Completions body that routing reads and translated members are sent.
    pub chat: Vec<u8>,
    /// The translator's refusal of a feature only the door's native kinds
    /// serve: the request must stay on their members.
    pub native_only: Option<DoorError>,
}

/// A refused request as a chat body for routing: the client's own fields with
/// an empty `messages` in front (a Messages body's own `messages`, later, wins:
/// ParsedRequest reads the last). Routing reads `model`, `stream`, `tools` and a
/// Messages body's `max_tokens` and prompt; nothing else is read of it.
fn routing_stand_in(body: &[u8]) -> Vec<u8> {
    let start = body.iter().position(|b| *b == b'{').map_or(body.len(), |i| i + 1);
    let (open, rest) = body.split_at(start);
    [open, b"\"messages\":[],", rest].concat()
}

/// Turns the pipeline's OpenAI-shaped answer into a door's.
pub enum DoorAnswer {
    Messages { model: String, stream: Option<messages::MessagesStream> },
    Responses { model: String, stream: Option<responses::ResponsesStream> },
}

impl DoorAnswer {
    /// `None` for the chat door, whose answers are already in shape.
    pub fn new(door: Door, model: &str, stream: bool, created_at: u64) -> Option<DoorAnswer> {
        match door {
            Door::Chat | Door::CountTokens => None,
            Door::Messages => Some(DoorAnswer::Messages {
                model: model.to_string(),
                stream: stream.then(|| messages::MessagesStream::new(model)),
            }),
            Door::Responses => Some(DoorAnswer::Responses {
                model: model.to_string(),
                stream: stream.then(|| responses::ResponsesStream::new(model, created_at)),
            }),
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, DoorAnswer::Messages { stream: Some(_), .. } | DoorAnswer::Responses { stream: Some(_), .. })
    }

    /// A whole answer of HTTP `status`. Returns the body and the status to send:
    /// an unreadable successful answer becomes the door's 502.
    pub fn body(&self, status: u16, openai: &[u8]) -> (u16, Vec<u8>) {
        let ok = (200..300).contains(&status);
        let (door, model) = match self {
            DoorAnswer::Messages { model, .. } => (Door::Messages, model),
            DoorAnswer::Responses { model, .. } => (Door::Responses, model),
        };
        if !ok {
            return (status, door.error_body(status, openai.to_vec()));
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(openai).is_err() {
            return (502, door.error_body(502, upstream_unreadable()));
        }
        let body = match door {
            Door::Messages => messages::from_chat_completion(openai, model),
            _ => responses::from_chat_completion(openai, model),
        };
        (status, body)
    }

    /// The next piece of an OpenAI SSE stream, as the door's events.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        match self {
            DoorAnswer::Messages { stream: Some(s), .. } => s.feed(chunk, end_of_stream),
            DoorAnswer::Responses { stream: Some(s), .. } => s.feed(chunk, end_of_stream),
            _ => chunk.to_vec(),
        }
    }
}

/// The model a door's answer names: the one the member's (OpenAI-shaped)
/// answer names, as on every door and as natively served answers do; else
/// `fallback` (the name the client asked for).
pub(crate) fn served_model<'a>(answer: &'a Value, fallback: &'a str) -> &'a str {
    answer.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(fallback)
}

fn upstream_unreadable() -> Vec<u8> {
    let mut out = Vec::new();
    crate::api::error::write_json(
        &mut out,
        "The provider's answer could not be read.",
        crate::api::error::ErrorType::Server,
        None,
        "invalid_upstream_response",
    );
    out
}

/// Why a door's translator refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorErrorKind {
    /// The request is wrong: refused in the door's shape.
    Invalid,
    /// A feature chat completions cannot express: the request stays on the
    /// members whose kind serves the door's API as it is (refused when none can).
    NativeOnly,
}

/// An answer message's thinking as Anthropic blocks: its `thinking_blocks`
/// (with their signatures), else its `reasoning_content` unsigned.
pub(crate) fn thinking_of(message: Option<&Value>) -> Vec<Value> {
    let blocks = message.and_then(|m| m.get("thinking_blocks")).and_then(Value::as_array);
    if let Some(blocks) = blocks.filter(|b| !b.is_empty()) {
        return blocks.clone();
    }
    let text = message.and_then(|m| m.get("reasoning_content")).and_then(Value::as_str).filter(|t| !t.is_empty());
    text.map(|t| vec![obj! {"type": "thinking", "thinking": t, "signature": ""}]).unwrap_or_default()
}

/// A door's top-level parameters and what the chat body carries for each:
/// the chat parameter its translator writes, [`SAME`] (copied under its own
/// name, `api::params` then rules), or [`NATIVE`] (only the door's native
/// kinds take it). A parameter not listed counts as [`NATIVE`].
pub type DoorParams = [(&'static str, &'static str)];
pub const SAME: &str = "=";
pub const NATIVE: &str = "";

pub static MESSAGES_PARAMS: &DoorParams = &[
    ("model", "model"),
    ("messages", "messages"),
    ("system", "messages"),
    ("max_tokens", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("stop_sequences", "stop"),
    ("stream", "stream"),
    ("tools", "tools"),
    ("tool_choice", "tool_choice"),
    ("metadata", "user"),
    ("top_k", SAME),
    ("thinking", SAME),
    ("service_tier", SAME),
    ("cache_control", SAME),
    ("output_config", "output_config"),
    ("container", NATIVE),
    ("mcp_servers", NATIVE),
    ("context_management", NATIVE),
];

pub static RESPONSES_PARAMS: &DoorParams = &[
    ("model", "model"),
    ("input", "messages"),
    ("instructions", "messages"),
    ("max_output_tokens", "max_completion_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("stream", "stream"),
    ("stream_options", "stream_options"),
    ("tools", "tools"),
    ("tool_choice", "tool_choice"),
    ("parallel_tool_calls", "parallel_tool_calls"),
    ("text", "response_format"),
    ("reasoning", "reasoning_effort"),
    ("user", "user"),
    ("metadata", SAME),
    ("service_tier", SAME),
    ("top_logprobs", SAME),
    ("prompt_cache_key", SAME),
    ("safety_identifier", SAME),
    ("store", NATIVE),
    ("previous_response_id", NATIVE),
    ("conversation", NATIVE),
    ("background", NATIVE),
    ("prompt", NATIVE),
    ("include", NATIVE),
    ("truncation", NATIVE),
    ("max_tool_calls", NATIVE),
];

/// Carries the door parameters of `req` its translator does not write into
/// `out`: [`SAME`] ones copied, a [`NATIVE`] or unknown one set to something
/// other than its default refused (`unsupported_parameter`: the request then
/// stays on the door's native kinds).
pub(crate) fn carry(
    req: &Map<String, Value>,
    table: &DoorParams,
    out: &mut Map<String, Value>,
) -> Result<(), DoorError> {
    for (key, value) in req.iter().filter(|(_, v)| !v.is_null()) {
        match table.iter().find(|(door, _)| door == key).map_or(NATIVE, |(_, chat)| *chat) {
            SAME if !out.contains_key(key) => {
                out.insert(key.clone(), value.clone());
            }
            NATIVE if !crate::api::params::neutral(key, &value.to_string()) => {
                return Err(DoorError {
                    kind: DoorErrorKind::NativeOnly,
                    code: ErrorCode::UnsupportedParameter,
                    message: format!("{key}: this parameter is taken only by the API's own providers"),
                    param: Some(key.clone()),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A door request the translator refuses: always HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorError {
    pub kind: DoorErrorKind,
    /// Precise machine-readable reason, e.g. `invalid_request`, `unsupported_feature`.
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (a path such as `messages[2].content[0].type`).
    pub param: Option<String>,
}

impl DoorError {
    pub const STATUS: u16 = 400;

    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        DoorError {
            kind: DoorErrorKind::Invalid,
            code: ErrorCode::InvalidRequest,
            message: format!("{param}: {}", message.into()),
            param: Some(param),
        }
    }

    pub(crate) fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = format!("{param}: {}", message.into());
        DoorError { kind: DoorErrorKind::NativeOnly, code: ErrorCode::UnsupportedFeature, message, param: Some(param) }
    }

    pub(crate) fn not_json(detail: impl std::fmt::Display) -> Self {
        DoorError {
            kind: DoorErrorKind::Invalid,
            code: ErrorCode::InvalidJson,
            message: format!("Request body is not valid JSON: {detail}"),
            param: None,
        }
    }

    pub fn status(&self) -> u16 {
        Self::STATUS
    }

    /// Anthropic's error shape, for the Messages door.
    pub fn to_anthropic_json(&self) -> Vec<u8> {
        messages::anthropic_error("invalid_request_error", &self.message)
    }

    /// OpenAI's error shape, for the Responses door.
    pub fn to_openai_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 96);
        crate::api::error::write_json(
            &mut out,
            &self.message,
            crate::api::error::ErrorType::InvalidRequest,
            self.param.as_deref(),
            self.code.as_str(),
        );
        out
    }
}

impl std::fmt::Display for DoorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Parses a request body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DoorError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DoorError {
            kind: DoorErrorKind::Invalid,
            code: ErrorCode::InvalidRequest,
            message: "Request body must be a JSON object.".into(),
            param: None,
        }),
        Err(e) => Err(DoorError::not_json(e)),
    }
}

/// `obj! {"key": value, ...}`: a JSON object built by [`object`], each value
/// through `Value::from` (so taken by value: borrow with `.as_str()` or
/// `.clone()`). The doors write many small objects: `json!` expands to an
/// insert per key at each of them, which costs the .wasm about 20 kB more.
macro_rules! obj {
    ($($key:literal: $value:expr),* $(,)?) => {
        $crate::doors::object([$(($key, serde_json::Value::from($value))),*])
    };
}
pub(crate) use obj;

/// `part` with the `cache_control` of `from`, when it has one: the chat
/// field of the Anthropic-compatible ecosystem (content parts, messages, tools).
pub(crate) fn with_cache_control(from: &Map<String, Value>, mut part: Value) -> Value {
    if let (Some(c), Some(obj)) = (from.get("cache_control").filter(|c| !c.is_null()), part.as_object_mut()) {
        obj.insert("cache_control".into(), c.clone());
    }
    part
}

/// A JSON object of these fields, in one small loop.
pub(crate) fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut map = Map::new();
    for (key, value) in fields {
        map.insert(key.to_string(), value);
    }
    Value::Object(map)
}

pub(crate) fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a Value into a Vec cannot fail; an empty object keeps the body JSON regardless.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// Copies a number field (`temperature`, `top_p`, ...) after checking it is a number.
pub(crate) fn copy_number(
    src: &Map<String, Value>,
    from: &str,
    out: &mut Map<String, Value>,
    to: &str,
) -> Result<(), DoorError> {
    match src.get(from) {
        None | Some(Value::Null) => Ok(()),
        Some(v @ Value::Number(_)) => {
            out.insert(to.into(), v.clone());
            Ok(())
        }
        Some(_) => Err(DoorError::invalid(from, "must be a number")),
    }
}

/// Sets `stream` and asks for the final usage chunk the door's end events need.
pub(crate) fn copy_stream(src: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<bool, DoorError> {
    match src.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
            Ok(true)
        }
        Some(_) => Err(DoorError::invalid("stream", "must be a boolean")),
    }
}

/// A door id (`msg_...`, `resp_...`) from the upstream answer's id, so logs can
/// join the two; random when the answer has none.
pub(crate) fn door_id(prefix: &str, upstream_id: Option<&str>) -> String {
    let base: String = upstream_id
        .map(|id| {
            let id = id.strip_prefix("chatcmpl-").or_else(|| id.strip_prefix("msg_")).unwrap_or(id);
            id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
        })
        .unwrap_or_default();
    if !base.is_empty() {
        return format!("{prefix}{base}");
    }
    match random_hex::<12>() {
        Some(hex) => format!("{prefix}{hex}"),
        None => format!("{prefix}gateway"),
    }
}

/// The first choice of an OpenAI answer or chunk.
pub(crate) fn first_choice(answer: &Value) -> Option<&Map<String, Value>> {
    answer.get("choices")?.as_array()?.first()?.as_object()
}

/// One thing an OpenAI `chat.completion.chunk` stream said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamPart {
    /// The first chunk's id and model.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    Text(String),
    /// A tool call's first delta (OpenAI `index`, `id`, `function.name`).
    ToolStart {
        index: u64,
        id: Option<String>,
        name: String,
    },
    ToolArgs {
        index: u64,
        arguments: String,
    },
    /// `finish_reason`, and the matched stop string when the server says it (vLLM's `stop_reason`).
    Finish {
        reason: String,
        stop_string: Option<String>,
    },
    Usage(Tokens),
    /// An OpenAI error event (`data: {"error":{...}}`): its message and type.
    Error {
        message: String,
        kind: String,
    },
    /// `data: [DONE]`.
    Done,
}

/// A door's stream translator: what it does with each decoded piece of the
/// OpenAI stream and with its end. `translate` is the loop both doors share.
/// What every door's stream translation tracks the same way.
#[derive(Debug, Default)]
pub(crate) struct StreamProgress {
    decoder: ChatStreamDecoder,
    /// The door's stream is closed (answer completed or failed).
    pub(crate) finished: bool,
    /// The upstream's `finish_reason` and the stop string that ended it: its end completes the answer.
    pub(crate) finish: Option<(String, Option<String>)>,
}

pub(crate) trait DoorStream {
    fn progress(&mut self) -> &mut StreamProgress;
    /// Every part but the upstream's finish and end, which `translate` keeps.
    fn part(&mut self, part: StreamPart, out: &mut Vec<u8>);
    /// Closes the answer and marks the progress finished.
    fn complete(&mut self, out: &mut Vec<u8>);
    /// The upstream stream ended before its `finish_reason`.
    fn fail_incomplete(&mut self, out: &mut Vec<u8>);

    fn translate(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for part in self.progress().decoder.feed(chunk, end_of_stream) {
            if self.progress().finished {
                break;
            }
            match part {
                StreamPart::Finish { reason, stop_string } => self.progress().finish = Some((reason, stop_string)),
                StreamPart::Done => {
                    self.progress().finish.get_or_insert_with(|| ("stop".into(), None));
                    self.complete(&mut out);
                }
                part => self.part(part, &mut out),
            }
        }
        if end_of_stream && !self.progress().finished {
            if self.progress().finish.is_some() {
                self.complete(&mut out);
            } else {
                self.fail_incomplete(&mut out);
            }
        }
        out
    }
}

/// Splits an OpenAI SSE byte stream into events (which may arrive split across
/// chunks) and decodes each into `StreamPart`s.
#[derive(Debug, Default)]
pub(crate) struct ChatStreamDecoder {
    framer: sse::Framer,
    started: bool,
}

impl ChatStreamDecoder {
    pub(crate) fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<StreamPart> {
        let mut parts = Vec::new();
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(chunk, end_of_stream, &mut |event| self.decode_event(event, &mut parts));
        self.framer = framer;
        parts
    }

    fn decode_event(&mut self, event: &[u8], parts: &mut Vec<StreamPart>) {
        let Some(data) = sse::data(event) else { return };
        let data = String::from_utf8_lossy(&data);
        let data = data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            parts.push(StreamPart::Done);
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            parts.push(StreamPart::Error {
                message: "The upstream stream sent an unreadable event.".into(),
                kind: "server_error".into(),
            });
            return;
        };
        if let Some(error) = value.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("upstream error").to_string();
            let kind = error.get("type").and_then(Value::as_str).unwrap_or("server_error").to_string();
            parts.push(StreamPart::Error { message, kind });
            return;
        }
        if !self.started {
            self.started = true;
            let text = |key: &str| value.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_string);
            parts.push(StreamPart::Start { id: text("id"), model: text("model") });
        }
        if let Some(choice) = first_choice(&value) {
            decode_choice(choice, parts);
        }
        if let Some(usage) = Tokens::from_json(value.get("usage")) {
            parts.push(StreamPart::Usage(usage));
        }
    }
}

fn decode_choice(choice: &Map<String, Value>, parts: &mut Vec<StreamPart>) {
    if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            parts.push(StreamPart::Text(text.to_string()));
        }
        if let Some(text) = delta.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            parts.push(StreamPart::Text(text.to_string()));
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function");
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
            let id = call.get("id").and_then(Value::as_str);
            if name.is_some() || id.is_some() {
                parts.push(StreamPart::ToolStart {
                    index,
                    id: id.map(str::to_string),
                    name: name.unwrap_or_default().to_string(),
                });
            }
            if let Some(args) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                if !args.is_empty() {
                    parts.push(StreamPart::ToolArgs { index, arguments: args.to_string() });
                }
            }
        }
    }
    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
        let stop_string = choice.get("stop_reason").and_then(Value::as_str).map(str::to_string);
        parts.push(StreamPart::Finish { reason: reason.to_string(), stop_string });
    }
}

/// Appends one SSE event `event: <name>\ndata: <json>\n\n`.
pub(crate) fn push_sse(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&to_bytes(data));
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_token_limits_are_a_400_naming_the_field_in_each_door() {
        let cases = [
            ("1180591620717411303424", "invalid_value"),
            ("\"10\"", "invalid_type"),
            ("-5", "invalid_value"),
            ("1.5", "invalid_type"),
            ("1e400", "invalid_type"),
            ("4294967296", "invalid_value"),
        ];
        let messages = r#"[{"role":"user","content":"hi"}]"#;
        for (door, field, rest) in [
            (Door::Messages, "max_tokens", format!(r#""messages":{messages}"#)),
            (Door::Responses, "max_output_tokens", r#""input":"hi""#.to_string()),
            // A feature only native members serve does not skip the check.
            (Door::Responses, "max_output_tokens", r#""input":"hi","previous_response_id":"r1""#.to_string()),
            (
                Door::Messages,
                "max_tokens",
                format!(r#""messages":{messages},"tools":[{{"type":"web_search_20250305","name":"web_search"}}]"#),
            ),
        ] {
            for (raw, code) in cases {
                let body = format!(r#"{{"model":"m",{rest},"{field}":{raw}}}"#);
                let e = door.to_chat(body.as_bytes(), None).unwrap_err();
                assert_eq!((e.code.as_str(), e.param.as_deref()), (code, Some(field)), "{body}: {}", e.message);
                assert!(e.message.starts_with(field), "{}", e.message);
                let shape: Value = serde_json::from_slice(&door.refusal_body(&e)).unwrap();
                match door {
                    Door::Responses => {
                        assert_eq!(
                            (shape["error"]["param"].as_str(), shape["error"]["code"].as_str()),
                            (Some(field), Some(code))
                        )
                    }
                    _ => assert_eq!(shape["error"]["type"], "invalid_request_error"),
                }
            }
            let fine = format!(r#"{{"model":"m",{rest},"{field}":4294967295}}"#);
            assert!(door.to_chat(fine.as_bytes(), None).is_ok(), "{fine}");
        }
        // Other unreadable bodies stay what they were.
        let e = Door::Responses.to_chat(br#"{"model":"m","input":"hi","temperature":1e400}"#, None).unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn every_messages_api_path_answers_in_anthropic_shape() {
        assert_eq!(Door::error_shape_of("/v1/messages?beta=true"), Door::Messages);
        assert_eq!(Door::error_shape_of("/v1/messages/count_tokens"), Door::CountTokens);
        assert_eq!(Door::error_shape_of("/v1/messages/batches"), Door::Messages);
        assert_eq!(Door::error_shape_of("/v1/responses"), Door::Responses);
        assert_eq!(Door::error_shape_of("/v1/chat/completions"), Door::Chat);
        assert_eq!(Door::error_shape_of("/v1/messagesx"), Door::Chat);
    }

    #[test]
    fn decoder_joins_events_split_across_chunks_and_crlf() {
        let mut d = ChatStreamDecoder::default();
        let stream = b"data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let mut parts = Vec::new();
        for piece in stream.chunks(7) {
            parts.extend(d.feed(piece, false));
        }
        parts.extend(d.feed(b"", true));
        assert_eq!(
            parts,
            vec![
                StreamPart::Start { id: Some("chatcmpl-1".into()), model: None },
                StreamPart::Text("Hel".into()),
                StreamPart::Text("lo".into()),
                StreamPart::Finish { reason: "stop".into(), stop_string: None },
                StreamPart::Done,
            ]
        );
    }

    #[test]
    fn decoder_reads_usage_only_chunk_error_event_and_unterminated_tail() {
        let mut d = ChatStreamDecoder::default();
        let parts = d.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\ndata: {\"error\":{\"message\":\"busy\",\"type\":\"server_error\"}}",
            true,
        );
        assert_eq!(
            parts,
            vec![
                StreamPart::Start { id: None, model: None },
                StreamPart::Usage(Tokens { cached: Some(1), ..Tokens::new(5, 2) }),
                StreamPart::Error { message: "busy".into(), kind: "server_error".into() },
            ]
        );
    }

    #[test]
    fn door_ids_follow_the_upstream_id_or_are_random() {
        assert_eq!(door_id("msg_", Some("chatcmpl-abc123")), "msg_abc123");
        assert_eq!(door_id("resp_", Some("msg_01X")), "resp_01X");
        let random = door_id("msg_", None);
        assert!(random.starts_with("msg_") && random.len() == 28, "{random}");
    }

    #[test]
    fn refused_features_route_on_a_stand_in_and_name_the_feature() {
        use crate::api::{request::ParsedRequest, Endpoint};
        let body = br#"{"model":"p","max_tokens":7,"stream":true,"messages":[{"role":"user","content":[{"type":"document"}]}],"tools":[{"type":"web_search_20250305","name":"w"}]}"#;
        let routed = Door::Messages.to_chat(body, None).unwrap().unwrap();
        let refused = routed.native_only.unwrap();
        assert_eq!((refused.kind, refused.code), (DoorErrorKind::NativeOnly, ErrorCode::UnsupportedFeature));
        let chat = ParsedRequest::parse(&routed.chat, Endpoint::ChatCompletions).unwrap();
        assert_eq!(
            (chat.target.as_str(), chat.stream, chat.max_output_tokens, chat.has_tools),
            ("p", true, Some(7), true)
        );
        assert!(chat.content().prompt_tokens > 0, "the Messages body's own messages are estimated");
        let routed = Door::Responses
            .to_chat(br#" {"model":"p","input":"x","previous_response_id":"r"}"#, None)
            .unwrap()
            .unwrap();
        assert!(routed.native_only.unwrap().message.contains("previous_response_id"));
        let chat = ParsedRequest::parse(&routed.chat, Endpoint::ChatCompletions).unwrap();
        assert_eq!((chat.target.as_str(), chat.stream, chat.has_tools), ("p", false, false));
        let plain = Door::Responses.to_chat(br#"{"model":"p","input":"x"}"#, None).unwrap().unwrap();
        assert!(plain.native_only.is_none());
        let invalid = Door::Messages.to_chat(br#"{"model":"p","messages":[]}"#, None).unwrap_err();
        assert_eq!((invalid.kind, invalid.code), (DoorErrorKind::Invalid, ErrorCode::InvalidRequest));
        assert!(Door::Chat.to_chat(b"{}", None).unwrap().is_none());
    }

    #[test]
    fn door_errors_in_both_shapes() {
        let e = DoorError::unsupported("previous_response_id", "needs provider-side state");
        let openai: Value = serde_json::from_slice(&e.to_openai_json()).unwrap();
        assert_eq!(openai["error"]["code"], "unsupported_feature");
        assert_eq!(openai["error"]["param"], "previous_response_id");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        let anthropic: Value = serde_json::from_slice(&e.to_anthropic_json()).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "invalid_request_error");
        assert!(anthropic["error"]["message"].as_str().unwrap().starts_with("previous_response_id: "));
    }
}
