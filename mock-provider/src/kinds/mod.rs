//! Provider kinds: shared helpers, auth, native error shapes and dispatch.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod cache;
pub mod gemini;
pub mod openai;
pub mod responses;
pub mod schema;

use crate::body::MockBody;
pub use crate::body::StreamOpts;
pub use crate::listener::Kind;
use crate::listener::Listener;
use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything a kind handler needs.
pub struct Ctx<'a> {
    pub l: &'a Listener,
    pub parts: &'a Parts,
    pub body: &'a Bytes,
    pub opts: StreamOpts,
}

impl Ctx<'_> {
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }
    pub fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Query parameter value (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
    }
    /// Rough token count of the request: body bytes / 4, at least 1.
    pub fn prompt_tokens(&self) -> u64 {
        (self.body.len() as u64 / 4).max(1)
    }
    /// Parse the body as a JSON object.
    pub fn json_object(&self) -> Result<serde_json::Map<String, Value>, String> {
        if self.body.is_empty() {
            return Err("request body is empty; expected a JSON object".into());
        }
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("request body must be a JSON object".into()),
            Err(e) => Err(format!("request body is not valid JSON: {e}")),
        }
    }
    /// The answer's text: the `reply` fault's, else `mock reply from <listener> to <model>`.
    /// A request continuing a partial answer of that text (its messages end
    /// with an assistant message, a prefill, or with one followed by a user
    /// message asking to continue) gets the rest of it, after the last
    /// `continuation_overlap_words` words of the partial answer.
    pub fn reply_text(&self, model: &str) -> String {
        let full = self.opts.reply.clone().unwrap_or_else(|| format!("mock reply from {} to {}", self.l.name, model));
        let Some(partial) = serde_json::from_slice::<Value>(self.body).ok().as_ref().and_then(continued_text) else {
            return full;
        };
        let partial = partial.trim_end();
        match full.strip_prefix(partial).filter(|_| !partial.is_empty()) {
            Some(rest) => {
                let words: Vec<&str> = partial.split_whitespace().collect();
                let repeated = words[words.len().saturating_sub(self.opts.overlap_words)..].join(" ");
                format!("{repeated}{rest}")
            }
            None => full,
        }
    }
}

/// The partial answer a request asks to continue, in any kind's message
/// shape (`messages` with string or block content, Gemini's `contents` with `parts`).
fn continued_text(body: &Value) -> Option<String> {
    let messages = body.get("messages").or_else(|| body.get("contents"))?.as_array()?;
    let text = |m: &Value| -> String {
        match m.get("content").or_else(|| m.get("parts")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
            _ => String::new(),
        }
    };
    let assistant = |m: &Value| matches!(m.get("role").and_then(Value::as_str), Some("assistant" | "model"));
    let last = messages.last()?;
    if assistant(last) {
        return Some(text(last));
    }
    let before = messages.get(messages.len().checked_sub(2)?)?;
    (assistant(before) && text(last).to_ascii_lowercase().contains("continue")).then(|| text(before))
}

/// Whether a stream event carries answer content (any kind's shape).
fn is_content_delta(event: &[u8]) -> bool {
    const MARKERS: [&[u8]; 4] = [b"\"delta\":{\"content\":", b"\"text_delta\"", b"{\"text\":", b"output_text.delta"];
    let has = |m: &[u8]| event.windows(m.len()).any(|w| w == m);
    // Anthropic's block start holds an empty text.
    !has(b"content_block_start") && MARKERS.iter().any(|m| has(m))
}

/// The kind's native mid-stream error event (fault `stream_error_after`).
fn stream_error_event(kind: Kind, sse: bool) -> Bytes {
    match kind {
        Kind::OpenAi | Kind::Azure => sse_data(
            r#"{"error":{"message":"mock fault: the model stopped","type":"server_error","param":null,"code":null}}"#,
        ),
        Kind::Anthropic => Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ),
        Kind::Gemini => {
            let error = r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
            Bytes::from(if sse { format!("data: {error}\r\n\r\n") } else { format!(",\r\n{error}]") })
        }
        Kind::Bedrock => Bytes::from(crate::eventstream::encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "modelStreamErrorException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"mock fault: the model stopped"}"#,
        )),
    }
}

/// A Responses stream's failure, as OpenAI sends it: `error`, then
/// `response.failed` (`sequence`: the next sequence number).
fn responses_error_events(sequence: usize) -> Bytes {
    let error = serde_json::json!({"type": "error", "code": "server_error",
        "message": "mock fault: the model stopped", "param": null, "sequence_number": sequence});
    let failed = serde_json::json!({"type": "response.failed", "sequence_number": sequence + 1, "response": {
        "id": "resp_failed", "object": "response", "status": "failed", "output": [],
        "error": {"code": "server_error", "message": "mock fault: the model stopped"}}});
    Bytes::from(format!("event: error\ndata: {error}\n\nevent: response.failed\ndata: {failed}\n\n"))
}

/// Faults `stream_cut_after` / `stream_error_after`: the events up to the
/// n-th content delta, then nothing or the kind's error event.
fn broken_stream(mut events: Vec<Bytes>, sse: bool, opts: &StreamOpts) -> Vec<Bytes> {
    let Some(n) = opts.error_after.or(opts.cut_after) else { return events };
    let mut seen = 0;
    let keep = events
        .iter()
        .position(|e| {
            if seen == n {
                return true;
            }
            seen += usize::from(is_content_delta(e));
            false
        })
        .unwrap_or(events.len());
    let responses = events.first().is_some_and(|e| e.starts_with(b"event: response."));
    events.truncate(keep);
    if opts.error_after.is_some() {
        events.push(if responses { responses_error_events(keep) } else { stream_error_event(opts.kind, sse) });
    }
    events
}

/// Anthropic's Claude 4.6 and later (on the Messages API and Bedrock) refuse
/// a conversation that ends with an assistant message (a prefill).
pub const PREFILL_REFUSED: &str =
    "This model does not support assistant message prefill. The conversation must end with a user message.";

/// Whether `model` names a Claude of version 4.6 or later (its first one- or
/// two-digit numbers after `claude-`: major, minor).
pub fn refuses_prefill(model: &str) -> bool {
    let lower = model.to_ascii_lowercase();
    let Some(at) = lower.find("claude-") else { return false };
    let versions: Vec<u32> = lower
        .get(at + 7..)
        .unwrap_or_default()
        .split(['-', '.', '@', ':'])
        .filter(|t| (1..=2).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|t| t.parse().ok())
        .take(2)
        .collect();
    matches!(versions.as_slice(), [major, minor] if (*major, *minor) >= (4, 6))
        || matches!(versions.as_slice(), [major] if *major >= 5)
}

/// Claude Opus 4.7 and later refuse sampling parameters and a thinking budget
/// (Anthropic's Messages body, or the fields Bedrock's Converse passes on).
pub fn claude_refusal(model: &str, sampling: &[(&str, bool)], thinking: Option<&Value>) -> Result<(), String> {
    let lower = model.to_ascii_lowercase();
    if !lower.contains("opus") || claude_version(&lower).is_none_or(|v| v < (4, 7)) {
        return Ok(());
    }
    if let Some((name, _)) = sampling.iter().find(|(_, present)| *present) {
        return Err(format!("`{name}` is deprecated for this model."));
    }
    if thinking.and_then(|t| t.get("type")).and_then(Value::as_str) == Some("enabled") {
        return Err("\"thinking.type.enabled\" is not supported for this model. Use \"thinking.type.adaptive\" and \"output_config.effort\" to control thinking behavior.".into());
    }
    Ok(())
}

/// OpenAI's reasoning models: no `max_tokens`; `o1`/`o3`/`o4` and `gpt-5` take sampling only at its default.
pub fn openai_refusal(model: &str, obj: &Map<String, Value>) -> Result<(), String> {
    let b = model.as_bytes();
    let o_series =
        b.first() == Some(&b'o') && b.get(1).is_some_and(u8::is_ascii_digit) && b.get(2).is_none_or(|c| *c == b'-');
    if !(o_series || model.starts_with("gpt-5")) {
        return Ok(());
    }
    if obj.contains_key("max_tokens") {
        return Err("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into());
    }
    let fixed = o_series || model == "gpt-5" || (model.starts_with("gpt-5-") && !model.starts_with("gpt-5-chat"));
    match obj.get("temperature").and_then(Value::as_f64) {
        Some(t) if fixed && t != 1.0 => Err(format!(
            "Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."
        )),
        _ => Ok(()),
    }
}

/// Major and minor of a Claude name (`claude-opus-4-7`): its first one- or two-digit numbers after `claude-`.
fn claude_version(lower: &str) -> Option<(u32, u32)> {
    let at = lower.find("claude-")?;
    let mut numbers = lower
        .get(at + 7..)
        .unwrap_or_default()
        .split(['-', '.', '@', ':'])
        .filter(|t| (1..=2).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|t| t.parse().ok());
    let major = numbers.next()?;
    Some((major, numbers.next().unwrap_or(0)))
}

/// Whether the last of `msgs` is an assistant message.
pub fn ends_with_assistant(msgs: &[Value]) -> bool {
    msgs.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant")
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Word count used as completion token count.
pub fn word_tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

/// Split `text` into exactly `n` (>= 1) stream pieces that concatenate to the
/// streamed text: words are distributed over the pieces; if there are fewer
/// words than pieces, filler words " ok" are appended first. Returns the
/// pieces and the full streamed text.
pub fn stream_pieces(text: &str, n: usize) -> (Vec<String>, String) {
    let n = n.max(1);
    let mut words: Vec<String> = text.split(' ').map(str::to_string).collect();
    while words.len() < n {
        words.push("ok".into());
    }
    let full = words.join(" ");
    let per = words.len() / n;
    let extra = words.len() % n;
    let mut pieces = Vec::with_capacity(n);
    let mut idx = 0;
    for i in 0..n {
        let take = per + usize::from(i < extra);
        let mut s = String::new();
        for w in words.iter().skip(idx).take(take) {
            if idx > 0 {
                s.push(' ');
            }
            s.push_str(w);
            idx += 1;
        }
        pieces.push(s);
    }
    (pieces, full)
}

/// Split a string into `n` (>= 1) pieces of about equal length (by chars).
pub fn split_even(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = n.max(1).min(chars.len().max(1));
    let per = chars.len() / n;
    let extra = chars.len() % n;
    let mut out = Vec::with_capacity(n);
    let mut idx = 0;
    for i in 0..n {
        let take = per + usize::from(i < extra);
        out.push(chars.iter().skip(idx).take(take).collect());
        idx += take;
    }
    out
}

pub fn mentions_weather(text: &str) -> bool {
    text.to_ascii_lowercase().contains("weather")
}

/// Arguments of the weather tool call.
pub const WEATHER_ARGS: &str = r#"{"location":"Paris"}"#;

/// A tool the request declares: its name and input schema.
pub struct DeclaredTool {
    pub name: String,
    pub schema: Value,
}

/// How the request lets the model use its tools.
pub enum ToolChoice {
    Auto,
    None,
    Any,
    Tool(String),
}

/// The tool call the mock answers, as a model would: a forced tool (or,
/// with "any tool", the first one) gets arguments built from its schema,
/// unless the weather rule applies (first tool, `{"location":"Paris"}`).
/// `Err` when the choice names a tool that is not declared.
pub fn tool_call(
    tools: &[DeclaredTool],
    choice: &ToolChoice,
    last_user: &str,
) -> Result<Option<(String, String)>, String> {
    let weather = |t: &DeclaredTool| (t.name.clone(), WEATHER_ARGS.to_string());
    // Tool inputs are objects, whatever the schema says.
    let from_schema = |t: &DeclaredTool| {
        let input = Some(schema::sample(&t.schema)).filter(Value::is_object).unwrap_or_else(|| serde_json::json!({}));
        (t.name.clone(), input.to_string())
    };
    Ok(match choice {
        ToolChoice::None => None,
        ToolChoice::Tool(name) => {
            let tool = tools.iter().find(|t| &t.name == name);
            Some(from_schema(tool.ok_or_else(|| format!("tool_choice: tool '{name}' is not in tools"))?))
        }
        ToolChoice::Any if mentions_weather(last_user) => tools.first().map(weather),
        ToolChoice::Any => tools.first().map(from_schema),
        ToolChoice::Auto => tools.first().filter(|_| mentions_weather(last_user)).map(weather),
    })
}

/// JSON-encode a string (with quotes).
pub fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn json_value(status: StatusCode, v: &Value) -> Response<MockBody> {
    json_response(status, serde_json::to_vec(v).unwrap_or_default())
}

/// Streaming response: each event is its own frame.
pub fn stream_response(content_type: &'static str, events: Vec<Bytes>, opts: &StreamOpts) -> Response<MockBody> {
    let events = broken_stream(events, content_type == "text/event-stream", opts);
    let mut r = Response::new(MockBody::events(events, opts));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// Tells tests what usage the answer reports: `x-mock-usage: <prompt> <completion>`.
pub fn with_usage(mut r: Response<MockBody>, prompt: u64, completion: u64) -> Response<MockBody> {
    if let Ok(v) = HeaderValue::from_str(&format!("{prompt} {completion}")) {
        r.headers_mut().insert("x-mock-usage", v);
    }
    r
}

pub fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// The provider's native error JSON for `status`.
pub fn error(kind: Kind, status: StatusCode, msg: &str) -> Response<MockBody> {
    let code = status.as_u16();
    match kind {
        Kind::OpenAi | Kind::Azure => {
            let (ty, c) = match code {
                400 => ("invalid_request_error", Value::Null),
                401 => ("invalid_request_error", Value::from("invalid_api_key")),
                403 => ("permission_error", Value::Null),
                404 => ("invalid_request_error", Value::from("not_found")),
                429 => ("rate_limit_exceeded", Value::from("rate_limit_exceeded")),
                500..=599 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json_value(status, &serde_json::json!({"error": {"message": msg, "type": ty, "param": null, "code": c}}))
        }
        Kind::Anthropic => {
            let ty = match code {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json_value(status, &serde_json::json!({"type": "error", "error": {"type": ty, "message": msg}}))
        }
        Kind::Gemini => {
            let st = match code {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ if code >= 500 => "INTERNAL",
                _ => "FAILED_PRECONDITION",
            };
            json_value(status, &serde_json::json!({"error": {"code": code, "message": msg, "status": st}}))
        }
        Kind::Bedrock => {
            let ty = match code {
                400 => "ValidationException",
                401 | 403 => "UnrecognizedClientException",
                404 => "ResourceNotFoundException",
                408 => "ModelTimeoutException",
                424 => "ModelErrorException",
                429 => "ThrottlingException",
                503 => "ServiceUnavailableException",
                _ if code >= 500 => "InternalServerException",
                _ => "ValidationException",
            };
            let mut r = json_value(status, &serde_json::json!({"message": msg}));
            r.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static(ty));
            r
        }
    }
}

/// Check the listener's credential. Err: message for a 401.
pub fn check_auth(ctx: &Ctx) -> Result<(), String> {
    let Some(key) = ctx.l.key.as_deref() else { return Ok(()) };
    match ctx.l.kind {
        Kind::OpenAi => match ctx.header("authorization") {
            Some(v) if v.strip_prefix("Bearer ") == Some(key) => Ok(()),
            Some(_) => Err("Incorrect API key provided.".into()),
            None => Err("You didn't provide an API key. You need to provide your API key in an \
                         Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into()),
        },
        Kind::Azure => match ctx.header("api-key") {
            Some(v) if v == key => Ok(()),
            Some(_) => Err("Access denied due to invalid subscription key or wrong API endpoint. \
                            Make sure to provide a valid key for an active subscription and use a \
                            correct regional API endpoint for your resource."
                .into()),
            None => Err("Access denied due to missing subscription key. Make sure to include \
                         subscription key when making requests to an API."
                .into()),
        },
        Kind::Anthropic => match ctx.header("x-api-key") {
            Some(v) if v == key => Ok(()),
            Some(_) => Err("invalid x-api-key".into()),
            None => Err("x-api-key header is required".into()),
        },
        Kind::Gemini => {
            let got = ctx.header("x-goog-api-key").or_else(|| ctx.query_param("key"));
            match got {
                Some(v) if v == key => Ok(()),
                Some(_) => Err("API key not valid. Please pass a valid API key.".into()),
                None => Err("Method doesn't allow unregistered callers (callers without established \
                             identity). Please use API Key or other form of API consumer identity to \
                             call this API."
                    .into()),
            }
        }
        Kind::Bedrock => {
            let secret = ctx.l.secret.as_deref().unwrap_or("");
            let req = crate::sigv4::SignedRequest {
                method: ctx.parts.method.as_str(),
                path: ctx.path(),
                query: ctx.query(),
                headers: &ctx.parts.headers,
                authority: ctx.parts.uri.authority().map(|a| a.as_str()),
                body: ctx.body,
            };
            crate::sigv4::verify(&req, key, secret, "bedrock").map(|_| ())
        }
    }
}

pub fn dispatch(ctx: &Ctx) -> Response<MockBody> {
    match ctx.l.kind {
        Kind::OpenAi => openai::handle(ctx),
        Kind::Azure => azure::handle(ctx),
        Kind::Anthropic => anthropic::handle(ctx),
        Kind::Gemini => gemini::handle(ctx),
        Kind::Bedrock => bedrock::handle(ctx),
    }
}

pub fn not_found(ctx: &Ctx) -> Response<MockBody> {
    error(
        ctx.l.kind,
        StatusCode::NOT_FOUND,
        &format!("mock {} provider: no route for {} {}", ctx.l.kind.as_str(), ctx.parts.method, ctx.path()),
    )
}

pub fn bad_request(ctx: &Ctx, msg: &str) -> Response<MockBody> {
    error(ctx.l.kind, StatusCode::BAD_REQUEST, msg)
}

pub fn method_not_allowed(ctx: &Ctx) -> Response<MockBody> {
    error(
        ctx.l.kind,
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {} not allowed for {}", ctx.parts.method, ctx.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pieces_concatenate() {
        let (p, full) = stream_pieces("mock reply from a to b", 3);
        assert_eq!(p.len(), 3);
        assert_eq!(p.concat(), full);
        assert_eq!(full, "mock reply from a to b");
        let (p, full) = stream_pieces("one two", 5);
        assert_eq!(p.len(), 5);
        assert_eq!(p.concat(), full);
        assert_eq!(full, "one two ok ok ok");
        let (p, _) = stream_pieces("x", 0);
        assert_eq!(p, vec!["x".to_string()]);
    }

    #[test]
    fn tool_calls_follow_the_tool_choice() {
        let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let tools = [
            DeclaredTool { name: "get_weather".into(), schema: Value::Null },
            DeclaredTool { name: "answer".into(), schema },
        ];
        let call = |choice, text| tool_call(&tools, &choice, text).unwrap();
        assert_eq!(call(ToolChoice::Tool("answer".into()), "hi"), Some(("answer".into(), r#"{"n":1}"#.into())));
        assert_eq!(call(ToolChoice::Any, "weather?"), Some(("get_weather".into(), WEATHER_ARGS.into())));
        assert_eq!(call(ToolChoice::Any, "hi"), Some(("get_weather".into(), "{}".into())));
        assert_eq!(call(ToolChoice::Auto, "hi"), None);
        assert_eq!(call(ToolChoice::Auto, "weather?"), Some(("get_weather".into(), WEATHER_ARGS.into())));
        assert_eq!(call(ToolChoice::None, "weather?"), None);
        assert!(tool_call(&tools, &ToolChoice::Tool("nope".into()), "hi").is_err());
    }

    #[test]
    fn continuations_are_recognised_in_every_message_shape() {
        let prefill =
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one two"}]});
        assert_eq!(continued_text(&prefill).as_deref(), Some("one two"));
        let asked = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "one two"}]},
            {"role": "user", "content": "Continue exactly where you stopped."}]});
        assert_eq!(continued_text(&asked).as_deref(), Some("one two"));
        let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "one"}]}]});
        assert_eq!(continued_text(&gemini).as_deref(), Some("one"));
        assert_eq!(continued_text(&json!({"messages": [{"role": "user", "content": "hi"}]})), None);
    }

    #[test]
    fn broken_streams_keep_n_content_deltas() {
        let ev = |s: &'static str| Bytes::from_static(s.as_bytes());
        let events = vec![
            ev(r#"data: {"delta":{"role":"assistant","content":""}}"#),
            ev(r#"data: {"delta":{"content":"a"}}"#),
            ev(r#"data: {"delta":{"content":"b"}}"#),
            ev(r#"data: {"delta":{},"finish_reason":"stop"}"#),
            ev("data: [DONE]"),
        ];
        let opts = |cut, error| StreamOpts {
            chunks: 2,
            delay: std::time::Duration::ZERO,
            reset_after_first: None,
            cut_after: cut,
            error_after: error,
            reply: None,
            overlap_words: 0,
            kind: Kind::OpenAi,
        };
        assert_eq!(broken_stream(events.clone(), true, &opts(Some(1), None)), events[..2].to_vec());
        let errored = broken_stream(events.clone(), true, &opts(None, Some(2)));
        assert_eq!(errored.len(), 4);
        assert!(String::from_utf8_lossy(&errored[3]).contains("\"error\""));
        assert_eq!(broken_stream(events.clone(), true, &opts(None, None)), events);
    }

    #[test]
    fn split_even_works() {
        assert_eq!(split_even("abcdefg", 3).concat(), "abcdefg");
        assert_eq!(split_even("ab", 5).len(), 2);
        assert_eq!(split_even("", 3), vec![String::new()]);
    }
}
