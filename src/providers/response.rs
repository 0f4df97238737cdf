//! Turning a provider's answer into OpenAI's shape. OpenAI-wire providers
//! pass through untouched (no adapter); other kinds translate bodies and
//! streams as they arrive.

use serde_json::{json, Map, Value};

use crate::api::Endpoint;
use crate::config::ProviderKind;

use super::{anthropic, bedrock, gemini};

/// Token counts in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Usage {
    /// All input tokens, cached ones included.
    pub prompt: u64,
    pub completion: u64,
    pub total: Option<u64>,
    pub cached: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Usage {
    pub fn to_json(self) -> Value {
        let mut u = json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total.unwrap_or(self.prompt + self.completion),
        });
        if let (Some(cached), Some(obj)) = (self.cached, u.as_object_mut()) {
            obj.insert("prompt_tokens_details".into(), json!({ "cached_tokens": cached }));
        }
        if let (Some(reasoning), Some(obj)) = (self.reasoning, u.as_object_mut()) {
            obj.insert("completion_tokens_details".into(), json!({ "reasoning_tokens": reasoning }));
        }
        u
    }
}

/// A tool call of a complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

/// One choice of a complete answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Choice {
    pub index: u32,
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(super::sigv4::hex(&bytes))
}

/// A fresh `chatcmpl-…` id for answers whose provider gives none.
pub(super) fn new_id() -> String {
    format!("chatcmpl-{}", random_hex().unwrap_or_else(|| "switchboard".to_string()))
}

/// A fresh tool-call id for providers that give none.
pub(super) fn new_call_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match random_hex() {
        Some(h) => format!("call_{h}"),
        None => format!("call_{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
    }
}

/// The id, creation time and model written into every answer.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// A complete `chat.completion` body.
    pub fn completion(&self, choices: &[Choice], usage: Option<Usage>) -> Vec<u8> {
        let choices: Vec<Value> = choices
            .iter()
            .map(|c| {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let content = if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) };
                message.insert("content".into(), content);
                if !c.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), json!(c.reasoning));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .iter()
                        .map(|t| json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}))
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                message.insert("refusal".into(), Value::Null);
                json!({"index": c.index, "message": message, "logprobs": null, "finish_reason": c.finish_reason})
            })
            .collect();
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
            obj.insert("usage".into(), u.to_json());
        }
        to_vec(&body)
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(super) fn error_json(message: &str, kind: &str, code: &str) -> Vec<u8> {
    to_vec(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// OpenAI error `type` for an HTTP status.
pub(super) fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if (400..500).contains(&s) => "invalid_request_error",
        _ => "server_error",
    }
}

/// A generic `code` for an HTTP status, for errors that carry none.
pub(super) fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        500 => "internal_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        s if (400..500).contains(&s) => "invalid_request",
        _ => "upstream_error",
    }
}

/// An error body that is not in the provider's error format (for example
/// an Envoy "upstream connect error" text): its text becomes the message.
pub(super) fn fallback_error(status: u16, body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("The provider answered HTTP {status}.")
    } else {
        let mut t: String = text.chars().take(1000).collect();
        if t.len() < text.len() {
            t.push('…');
        }
        format!("The provider answered HTTP {status}: {t}")
    };
    let status = if status < 400 { 502 } else { status };
    error_json(&message, type_for_status(status), code_for_status(status))
}

/// A successful-status body that could not be read.
pub(super) fn invalid_answer(provider: &str, detail: &str) -> Vec<u8> {
    error_json(
        &format!("The {provider} answer could not be translated: {detail}"),
        "server_error",
        "invalid_upstream_response",
    )
}

/// Writes OpenAI `chat.completion.chunk` SSE events, tracking what was sent
/// so every stream starts with the assistant role and ends exactly once.
#[derive(Debug)]
pub(super) struct Emitter {
    pub meta: Meta,
    /// Choice indexes whose first (role) chunk was sent.
    started: Vec<u32>,
    /// Choice indexes whose finish chunk was sent.
    finished: Vec<u32>,
    errored: bool,
    done: bool,
}

impl Emitter {
    pub fn new(meta: Meta) -> Self {
        Emitter { meta, started: Vec::new(), finished: Vec::new(), errored: false, done: false }
    }

    /// True once the stream ended or failed: later upstream events are ignored.
    pub fn closed(&self) -> bool {
        self.errored || self.done
    }

    /// True while choice `index` may still receive content.
    fn open(&self, index: u32) -> bool {
        !self.closed() && !self.finished.contains(&index)
    }

    pub fn finished_count(&self) -> usize {
        self.finished.len()
    }

    fn write(&self, out: &mut Vec<u8>, body: &Value) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&to_vec(body));
        out.extend_from_slice(b"\n\n");
    }

    fn chunk(&self, out: &mut Vec<u8>, index: u32, delta: Value, finish: Option<&str>, usage: Option<Usage>) {
        let mut body = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
            obj.insert("usage".into(), u.to_json());
        }
        self.write(out, &body);
    }

    /// Sends the role chunk of choice `index` unless already sent.
    pub fn start(&mut self, out: &mut Vec<u8>, index: u32) {
        if self.closed() || self.started.contains(&index) {
            return;
        }
        self.started.push(index);
        self.chunk(out, index, json!({"role": "assistant", "content": ""}), None, None);
    }

    pub fn text(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "content": text }), None, None);
    }

    pub fn reasoning(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "reasoning_content": text }), None, None);
    }

    /// The first delta of tool call `tool_index`: id, name and any arguments known.
    pub fn tool_start(
        &mut self,
        out: &mut Vec<u8>,
        index: u32,
        tool_index: u32,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        if !self.open(index) {
            return;
        }
        self.start(out, index);
        let call = json!({"index": tool_index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None, None);
    }

    /// A fragment of the arguments of tool call `tool_index`.
    pub fn tool_arguments(&mut self, out: &mut Vec<u8>, index: u32, tool_index: u32, fragment: &str) {
        if fragment.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        let call = json!({"index": tool_index, "function": {"arguments": fragment}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None, None);
    }

    /// The last chunk of choice `index`, with usage when known.
    pub fn finish(&mut self, out: &mut Vec<u8>, index: u32, reason: &str, usage: Option<Usage>) {
        if !self.open(index) {
            return;
        }
        self.start(out, index);
        self.finished.push(index);
        self.chunk(out, index, json!({}), Some(reason), usage);
    }

    /// An error event (`data: {"error":{...}}`), as OpenAI sends mid-stream.
    pub fn error(&mut self, out: &mut Vec<u8>, message: &str, kind: &str, code: &str) {
        if self.closed() {
            return;
        }
        self.errored = true;
        self.write(out, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}));
    }

    /// Ends the stream with `data: [DONE]`; a stream that never finished
    /// gets an error event first, so truncation is not mistaken for an answer.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.errored && self.finished.is_empty() {
            self.error(
                out,
                "The provider's stream ended before the answer was complete.",
                "server_error",
                "incomplete_stream",
            );
        }
        self.done = true;
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

#[derive(Debug)]
enum Inner {
    Anthropic(anthropic::StreamState),
    Gemini(gemini::StreamState),
    Bedrock(bedrock::StreamState),
}

/// Translates one upstream response (non-streaming body, error body, or a
/// stream delivered in arbitrary chunks) into OpenAI's format.
#[derive(Debug)]
pub struct ResponseAdapter {
    stream: bool,
    emitter: Emitter,
    inner: Inner,
    failed: bool,
}

impl ResponseAdapter {
    /// `None` when the provider already speaks OpenAI's format.
    pub fn new(kind: ProviderKind, endpoint: Endpoint, stream: bool, model: &str) -> Option<ResponseAdapter> {
        let _ = endpoint;
        let inner = match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => return None,
            ProviderKind::Anthropic => Inner::Anthropic(anthropic::StreamState::default()),
            ProviderKind::Gemini => Inner::Gemini(gemini::StreamState::default()),
            ProviderKind::Bedrock => Inner::Bedrock(bedrock::StreamState::default()),
        };
        let meta = Meta { id: new_id(), created: 0, model: model.to_string() };
        Some(ResponseAdapter { stream, emitter: Emitter::new(meta), inner, failed: false })
    }

    /// Sets `created` (seconds since the Unix epoch) in translated answers.
    pub fn with_created(mut self, unix_s: u64) -> Self {
        self.emitter.meta.created = unix_s;
        self
    }

    /// Content type of a successful translated answer.
    pub fn content_type(&self) -> &'static str {
        if self.stream {
            "text/event-stream"
        } else {
            "application/json"
        }
    }

    /// A complete body: a non-streaming answer, or any error answer
    /// (`status` >= 400), into OpenAI JSON. A successful streamed answer
    /// given whole is translated as a stream.
    pub fn translate_body(&mut self, status: u16, body: &[u8]) -> Vec<u8> {
        if status >= 400 {
            return match &self.inner {
                Inner::Anthropic(_) => anthropic::error_body(status, body),
                Inner::Gemini(_) => gemini::error_body(status, body),
                Inner::Bedrock(_) => bedrock::error_body(status, body),
            };
        }
        if self.stream {
            return self.translate_stream(body, true);
        }
        let meta = &self.emitter.meta;
        let translated = match &self.inner {
            Inner::Anthropic(_) => anthropic::completion_body(meta, body),
            Inner::Gemini(_) => gemini::completion_body(meta, body),
            Inner::Bedrock(_) => bedrock::completion_body(meta, body),
        };
        translated.unwrap_or_else(|error| {
            self.failed = true;
            error
        })
    }

    /// True when `translate_body` was given a successful status but returned
    /// an OpenAI error body (the answer was an error in disguise or could not
    /// be read): the host should then answer 502 rather than 200.
    pub fn translation_failed(&self) -> bool {
        self.failed
    }

    /// The next piece of a successful stream into OpenAI `chat.completion.chunk`
    /// SSE events. Events split across chunks are held until complete; the
    /// call with `end_of_stream` flushes and ends with `data: [DONE]`.
    pub fn translate_stream(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        match &mut self.inner {
            Inner::Anthropic(s) => s.feed(&mut self.emitter, chunk, end_of_stream, &mut out),
            Inner::Gemini(s) => s.feed(&mut self.emitter, chunk, end_of_stream, &mut out),
            Inner::Bedrock(s) => s.feed(&mut self.emitter, chunk, end_of_stream, &mut out),
        }
        if end_of_stream {
            self.emitter.end(&mut out);
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Parses translated SSE output into its JSON events; `[DONE]` as a string.
    pub(crate) fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("output is UTF-8");
        assert!(text.is_empty() || text.ends_with("\n\n"), "output ends on an event boundary: {text:?}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}"));
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).unwrap_or_else(|err| panic!("bad JSON {data:?}: {err}"))
                }
            })
            .collect()
    }

    /// Concatenated `delta.content` of choice 0.
    pub(crate) fn streamed_text(events: &[Value]) -> String {
        events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect()
    }

    /// Feeds `input` to a fresh adapter in two pieces cut at `cut`.
    pub(crate) fn run_split(adapter: &mut ResponseAdapter, input: &[u8], cut: usize) -> Vec<u8> {
        let mut out = adapter.translate_stream(&input[..cut], false);
        out.extend(adapter.translate_stream(&input[cut..], false));
        out.extend(adapter.translate_stream(b"", true));
        out
    }

    /// Checks that a stream translates identically however it is cut in two,
    /// fed byte by byte, or given whole; returns the whole translation.
    pub(crate) fn assert_split_invariant(kind: ProviderKind, input: &[u8]) -> Vec<u8> {
        let new = || ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").unwrap();
        let mut whole = new();
        let reference = whole.translate_stream(input, true);
        let normalise = |out: &[u8]| {
            let mut evs = events(out);
            for e in &mut evs {
                if let Some(o) = e.as_object_mut() {
                    o.remove("id");
                }
            }
            evs
        };
        let want = normalise(&reference);
        for cut in 0..=input.len() {
            let got = run_split(&mut new(), input, cut);
            assert_eq!(normalise(&got), want, "cut at byte {cut}");
        }
        let mut bytewise = new();
        let mut out = Vec::new();
        for b in input {
            out.extend(bytewise.translate_stream(std::slice::from_ref(b), false));
        }
        out.extend(bytewise.translate_stream(b"", true));
        assert_eq!(normalise(&out), want, "byte by byte");
        reference
    }

    #[test]
    fn openai_wire_kinds_pass_through() {
        for kind in [ProviderKind::Openai, ProviderKind::OpenaiCompatible, ProviderKind::Azure] {
            assert!(ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").is_none());
        }
        let a = ResponseAdapter::new(ProviderKind::Gemini, Endpoint::ChatCompletions, true, "m").unwrap();
        assert_eq!(a.content_type(), "text/event-stream");
        let a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m").unwrap();
        assert_eq!(a.content_type(), "application/json");
    }

    #[test]
    fn with_created_and_ids() {
        let mut a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m")
            .unwrap()
            .with_created(1_700_000_000);
        let v: Value = serde_json::from_slice(&a.translate_body(
            200,
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"x"}]}},"stopReason":"end_turn"}"#,
        ))
        .unwrap();
        assert_eq!(v["created"], 1_700_000_000);
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn translation_failure_is_reported() {
        let new = |kind| ResponseAdapter::new(kind, Endpoint::ChatCompletions, false, "m").unwrap();
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            let mut a = new(kind);
            let v: Value = serde_json::from_slice(&a.translate_body(200, b"{}")).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response", "{kind:?}");
            assert!(a.translation_failed());
            let mut a = new(kind);
            a.translate_body(503, b"{}");
            assert!(!a.translation_failed(), "error statuses are expected errors");
        }
        let mut a = new(ProviderKind::Anthropic);
        let v: Value = serde_json::from_slice(&a.translate_body(
            200,
            br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], "api_error");
        assert!(a.translation_failed());
    }

    #[test]
    fn emitter_sequence() {
        let mut e = Emitter::new(Meta { id: "x".into(), created: 5, model: "m".into() });
        let mut out = Vec::new();
        e.text(&mut out, 0, "hi");
        e.tool_start(&mut out, 0, 0, "c1", "f", "");
        e.tool_arguments(&mut out, 0, 0, "{}");
        e.finish(
            &mut out,
            0,
            "tool_calls",
            Some(Usage { prompt: 3, completion: 4, total: None, cached: Some(1), reasoning: None }),
        );
        e.finish(&mut out, 0, "stop", None);
        e.text(&mut out, 0, "ignored");
        e.end(&mut out);
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev.len(), 6);
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(ev[0]["object"], "chat.completion.chunk");
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(
            ev[2]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(ev[3]["choices"][0]["delta"]["tool_calls"][0], json!({"index": 0, "function": {"arguments": "{}"}}));
        assert_eq!(ev[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}})
        );
        assert_eq!(ev[5], "[DONE]");
    }

    #[test]
    fn truncated_stream_ends_with_an_error() {
        let mut e = Emitter::new(Meta { id: "x".into(), created: 0, model: "m".into() });
        let mut out = Vec::new();
        e.text(&mut out, 0, "partial");
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev[2]["error"]["code"], "incomplete_stream");
        assert_eq!(ev[3], "[DONE]");
    }

    #[test]
    fn fallback_errors() {
        let v: Value =
            serde_json::from_slice(&fallback_error(503, b"upstream connect error or disconnect/reset before headers"))
                .unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], "service_unavailable");
        assert!(v["error"]["message"].as_str().unwrap().contains("upstream connect error"));
        let v: Value = serde_json::from_slice(&fallback_error(429, b"")).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let long = "x".repeat(5000);
        let v: Value = serde_json::from_slice(&fallback_error(500, long.as_bytes())).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() < 1100);
    }
}
