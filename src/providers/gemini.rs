//! Google Gemini API (`POST {base_path}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse`): request translation, and answers back
//! into OpenAI's shape.

use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use serde_json::{json, Map, Value};

use crate::api::error::ErrorType;
use crate::api::ApiError;
use crate::config::Credentials;

use super::adapter::{Adapter, SseEvents, SseStream, StreamState, Target};
use super::chat::{max_with_thinking, Block, Chat, ResponseFormat, Role, Source, Tool, ToolChoice, Turn};
use super::emit::Emitter;
use super::json_text;
use super::openai_out::{new_call_id, Answer, Choice, Meta, ToolCall};
use super::structured::inline_refs;
use super::upstream::{BuildContext, UpstreamRequest};
use super::upstream_error::{invalid_answer, parse_answer, NO_MESSAGE, NO_STREAM_MESSAGE};

/// The Gemini generateContent adapter.
#[derive(Debug)]
pub(super) struct Gemini;

/// Documented placeholder for a function call whose thought signature is
/// unknown (OpenAI clients do not keep Gemini's signatures).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Schema keywords Gemini's function-declaration schema (an OpenAPI subset) accepts.
const SCHEMA_KEYS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// A JSON schema reduced to what Gemini accepts: unknown keywords dropped,
/// `type: [T, "null"]` as `nullable`, `const` as `enum`, `oneOf` as `anyOf`.
pub(super) fn schema(v: &Value) -> Value {
    let Value::Object(obj) = v else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in obj {
        match k.as_str() {
            "type" => match val {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    if let [only] = non_null.as_slice() {
                        out.insert("type".into(), (*only).clone());
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "properties" => {
                if let Value::Object(props) = val {
                    if !props.is_empty() {
                        // Inserts, not `collect`: a map's collect sorts, a stable sort's code per call site.
                        let mut converted = Map::new();
                        for (name, s) in props {
                            converted.insert(name.clone(), schema(s));
                        }
                        out.insert("properties".into(), Value::Object(converted));
                    }
                }
            }
            "items" => {
                out.insert("items".into(), schema(val));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(options) = val {
                    out.insert("anyOf".into(), Value::Array(options.iter().map(schema).collect()));
                }
            }
            "const" => {
                out.insert("enum".into(), json!([val]));
            }
            key if SCHEMA_KEYS.contains(&key) => {
                out.insert(k.clone(), val.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// Gemini 3 and later require thought signatures on replayed function calls.
fn requires_signatures(model: &str) -> bool {
    let Some(at) = model.find("gemini-") else {
        return false;
    };
    let digits: String = model.get(at + 7..).unwrap_or_default().chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u32>().is_ok_and(|major| major >= 3)
}

fn media_part(source: &Source, default_mime: &str) -> Value {
    match source {
        Source::Base64 { mime, data } => json!({"inlineData": {"mimeType": mime, "data": data}}),
        Source::Url(url) => {
            let mime = match super::chat::mime_from_name(url) {
                "application/octet-stream" => default_mime,
                m => m,
            };
            json!({"fileData": {"mimeType": mime, "fileUri": url}})
        }
    }
}

fn function_response(name: &str, content: &[Block]) -> (Value, Vec<Value>) {
    let text: Vec<&str> = content
        .iter()
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let text = text.join("\n");
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    let media = content
        .iter()
        .filter_map(|b| match b {
            Block::Image(s) => Some(media_part(s, "image/jpeg")),
            _ => None,
        })
        .collect();
    (json!({"functionResponse": {"name": name, "response": response}}), media)
}

/// One turn as a Gemini `content`. With `signatures`, the turn's first
/// function call carries the placeholder thought signature.
fn content(turn: &Turn, signatures: bool) -> Result<Value, ApiError> {
    let mut parts = Vec::with_capacity(turn.blocks.len());
    let mut signed = false;
    for block in &turn.blocks {
        match block {
            Block::Text(t) => parts.push(json!({ "text": t })),
            Block::Image(s) => parts.push(media_part(s, "image/jpeg")),
            Block::File { source, .. } => parts.push(media_part(source, "application/pdf")),
            Block::ToolCall { name, input, .. } => {
                let mut call = json!({"functionCall": {"name": name, "args": input}});
                if signatures && !signed {
                    signed = true;
                    if let Some(obj) = call.as_object_mut() {
                        obj.insert("thoughtSignature".into(), json!(SKIP_SIGNATURE));
                    }
                }
                parts.push(call);
            }
            // Gemini's thoughts are its own: another provider's thinking is not replayed.
            // Gemini caches repeated prefixes by itself: a breakpoint asks nothing of it.
            Block::Thinking { .. } | Block::RedactedThinking(_) | Block::CachePoint(_) => {}
            Block::ToolResult { id, name, content } => {
                let name = name.as_deref().ok_or_else(|| {
                    ApiError::invalid_request(
                        ErrorCode::InvalidValue,
                        format!("The tool message with `tool_call_id` `{id}` answers no earlier assistant tool call; Gemini needs the function's name."),
                    )
                })?;
                let (part, media) = function_response(name, content);
                parts.push(part);
                parts.extend(media);
            }
        }
    }
    let role = match turn.role {
        Role::User => "user",
        Role::Assistant => "model",
    };
    Ok(json!({"role": role, "parts": parts}))
}

/// `generationConfig`: sampling, limits and the response format.
fn generation_config(chat: &Chat, ctx: &BuildContext) -> Map<String, Value> {
    let stop = (!chat.stop.is_empty()).then(|| json!(chat.stop));
    let settings = [
        (
            "maxOutputTokens",
            chat.max_tokens.or(ctx.max_response_tokens).map(|m| max_with_thinking(m, chat.thinking_budget).into()),
        ),
        ("temperature", chat.temperature.map(Value::from)),
        ("topP", chat.top_p.map(Value::from)),
        ("topK", chat.top_k.map(Value::from)),
        ("stopSequences", stop),
        ("candidateCount", chat.n.map(Value::from)),
        ("seed", chat.seed.map(Value::from)),
        ("presencePenalty", chat.presence_penalty.map(Value::from)),
        ("frequencyPenalty", chat.frequency_penalty.map(Value::from)),
        ("thinkingConfig", chat.thinking_budget.map(|b| json!({"thinkingBudget": b, "includeThoughts": true}))),
    ];
    let mut config = Map::new();
    for (key, value) in settings {
        if let Some(value) = value {
            config.insert(key.to_string(), value);
        }
    }
    let (mime, schema) = match &chat.response_format {
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        // Gemini's schema dialect has no references: pydantic's `$defs` are inlined.
        Some(ResponseFormat::JsonSchema(format)) => {
            (Some("application/json"), Some(schema(&inline_refs(&format.schema))))
        }
        None => (None, None),
    };
    if let Some(mime) = mime {
        config.insert("responseMimeType".into(), json!(mime));
    }
    if let Some(schema) = schema {
        config.insert("responseSchema".into(), schema);
    }
    config
}

fn function_declaration(tool: &Tool) -> Value {
    let mut d = Map::new();
    d.insert("name".into(), json!(tool.name));
    if let Some(desc) = &tool.description {
        d.insert("description".into(), json!(desc));
    }
    let params = schema(&tool.parameters);
    // Gemini refuses an object schema without properties: omit it.
    if params.get("properties").is_some() {
        d.insert("parameters".into(), params);
    }
    Value::Object(d)
}

fn function_calling_config(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    }
}

fn finish_reason(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE" => {
            "content_filter"
        }
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn usage_of(u: &Value) -> Tokens {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let thoughts = n("thoughtsTokenCount");
    let prompt = n("promptTokenCount").unwrap_or(0) + n("toolUsePromptTokenCount").unwrap_or(0);
    Tokens {
        prompt,
        completion: n("candidatesTokenCount").unwrap_or(0) + thoughts.unwrap_or(0),
        total: n("totalTokenCount"),
        cached: n("cachedContentTokenCount").filter(|c| *c > 0),
        cache_write: None,
        reasoning: thoughts.filter(|t| *t > 0),
    }
}

fn candidate_index(c: &Value, position: usize) -> u32 {
    c.get("index").and_then(Value::as_u64).map_or(position as u32, |i| i as u32)
}

/// A function call's id: Gemini's own when it sends one.
fn call_id(call: &Value) -> String {
    match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => new_call_id(),
    }
}

fn blocked(v: &Value) -> bool {
    v.get("promptFeedback").and_then(|f| f.get("blockReason")).is_some()
}

/// What an answer's part carries that OpenAI's shape keeps.
enum Part<'a> {
    Text(&'a str),
    Thought(&'a str),
    Call(ToolCall),
}

/// The parts of candidate `c`, in order.
fn parts(c: &Value) -> impl Iterator<Item = Part<'_>> {
    let parts = c.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array);
    parts.map(Vec::as_slice).unwrap_or_default().iter().filter_map(|part| {
        if let Some(call) = part.get("functionCall") {
            return Some(Part::Call(ToolCall {
                id: call_id(call),
                name: call.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                arguments: call.get("args").map_or_else(|| "{}".to_string(), json_text),
            }));
        }
        let text = part.get("text").and_then(Value::as_str)?;
        Some(if part.get("thought").and_then(Value::as_bool) == Some(true) {
            Part::Thought(text)
        } else {
            Part::Text(text)
        })
    })
}

fn candidates(v: &Value) -> &[Value] {
    v.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The `error` object of a Gemini error body (possibly wrapped in an array).
fn error_object(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    }
    .filter(|e| e.is_object())
}

impl Adapter for Gemini {
    /// The generateContent body for `chat`.
    fn body(&self, chat: &Chat, model: &str, ctx: &BuildContext) -> Result<Value, ApiError> {
        let signatures = requires_signatures(model);
        let contents = chat.turns.iter().map(|turn| content(turn, signatures)).collect::<Result<Vec<_>, _>>()?;
        let mut out = Map::new();
        out.insert("contents".into(), Value::Array(contents));
        if !chat.system.is_empty() {
            out.insert("systemInstruction".into(), json!({"parts": [{"text": chat.system.join("\n\n")}]}));
        }
        let config = generation_config(chat, ctx);
        if !config.is_empty() {
            out.insert("generationConfig".into(), Value::Object(config));
        }
        if !chat.tools.is_empty() {
            let declarations: Vec<Value> = chat.tools.iter().map(function_declaration).collect();
            out.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
            if let Some(c) = chat.tool_choice.as_ref().map(function_calling_config) {
                out.insert("toolConfig".into(), json!({ "functionCallingConfig": c }));
            }
        }
        Ok(Value::Object(out))
    }

    fn request(&self, to: &Target<'_>, body: Vec<u8>) -> Result<UpstreamRequest, ApiError> {
        let (provider, member, chat) = (to.provider, to.member, to.chat);
        let model = member.model.strip_prefix("models/").unwrap_or(&member.model);
        // Tuned models are addressed as `tunedModels/{id}`.
        let resource = if model.contains('/') { model.to_string() } else { format!("models/{model}") };
        let action = if chat.stream { ":streamGenerateContent?alt=sse" } else { ":generateContent" };
        let mut headers =
            vec![("content-type", "application/json".to_string()), ("accept-encoding", "identity".to_string())];
        if let Credentials::ApiKey(key) = &provider.credentials {
            headers.push(("x-goog-api-key", key.expose().to_string()));
        }
        let path = format!("{}/{resource}{action}", provider.base_path);
        Ok(UpstreamRequest { path, authority: provider.host.clone(), headers, body })
    }

    /// A complete generateContent answer; `Err` holds an OpenAI error body
    /// when the answer is an error or cannot be read.
    fn completion(&self, body: &[u8]) -> Result<Answer, Vec<u8>> {
        let v = parse_answer("Gemini", body)?;
        if v.get("error").is_some() {
            return Err(self.error_body(500, body));
        }
        let mut choices = Vec::with_capacity(candidates(&v).len().max(1));
        for (position, c) in candidates(&v).iter().enumerate() {
            let mut choice = Choice { index: candidate_index(c, position), ..Choice::default() };
            for part in parts(c) {
                match part {
                    Part::Call(call) => choice.tool_calls.push(call),
                    Part::Thought(text) => choice.reasoning.push_str(text),
                    Part::Text(text) => choice.text.push_str(text),
                }
            }
            let reason = c.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
            choice.finish_reason = finish_reason(reason, !choice.tool_calls.is_empty());
            choices.push(choice);
        }
        if choices.is_empty() {
            if !blocked(&v) {
                return Err(invalid_answer("Gemini", "no candidates"));
            }
            choices.push(Choice { index: 0, finish_reason: "content_filter", ..Choice::default() });
        }
        Ok(Answer {
            id: v.get("responseId").and_then(Value::as_str).map(str::to_string),
            choices,
            usage: v.get("usageMetadata").map(usage_of),
        })
    }

    /// The status name and message of `{"error":{"code","message","status"}}`.
    fn find_error<'v>(&self, v: &'v Value) -> Option<(&'v str, &'v str)> {
        let err = error_object(v)?;
        let name = err.get("status").and_then(Value::as_str).unwrap_or_default();
        Some((name, err.get("message").and_then(Value::as_str).unwrap_or(NO_MESSAGE)))
    }

    /// OpenAI error `type` for a Google RPC status.
    fn error_type(&self, status_name: &str, status: u16) -> ErrorType {
        match status_name {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" | "NOT_FOUND" | "ALREADY_EXISTS" => {
                ErrorType::InvalidRequest
            }
            "UNAUTHENTICATED" => ErrorType::Authentication,
            "PERMISSION_DENIED" => ErrorType::Permission,
            "RESOURCE_EXHAUSTED" => ErrorType::RateLimit,
            "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" | "ABORTED" | "DATA_LOSS" => ErrorType::Server,
            _ => ErrorType::for_status(status),
        }
    }

    fn stream(&self, meta: Meta, include_usage: bool) -> Box<dyn StreamState> {
        Box::new(SseStream::new(meta, include_usage, Events::default()))
    }
}

/// Translation state of one Gemini SSE stream.
#[derive(Debug, Default)]
struct Events {
    id_set: bool,
    /// Per choice index: tool calls sent so far.
    tool_counts: Vec<(u32, u32)>,
}

impl Events {
    /// The next tool-call index of choice `index`.
    fn next_tool_index(&mut self, index: u32) -> u32 {
        if let Some((_, n)) = self.tool_counts.iter_mut().find(|(i, _)| *i == index) {
            let next = *n;
            *n += 1;
            return next;
        }
        self.tool_counts.push((index, 1));
        0
    }

    /// The chunks of candidate `c` (at `position` in its event).
    fn candidate(&mut self, em: &mut Emitter, c: &Value, position: usize, out: &mut Vec<u8>) {
        let index = candidate_index(c, position);
        em.start(out, index);
        for part in parts(c) {
            match part {
                Part::Call(call) => {
                    let tool_index = self.next_tool_index(index);
                    em.tool_start(out, index, tool_index, &call.id, &call.name, &call.arguments);
                }
                Part::Thought(text) => em.reasoning(out, index, text),
                Part::Text(text) => em.text(out, index, text),
            }
        }
        if let Some(reason) = c.get("finishReason").and_then(Value::as_str) {
            let has_tools = self.tool_counts.iter().any(|(i, n)| *i == index && *n > 0);
            em.finish(out, index, finish_reason(reason, has_tools));
        }
    }
}

impl SseEvents for Events {
    fn event(&mut self, em: &mut Emitter, v: &Value, out: &mut Vec<u8>) {
        if let Some(err) = error_object(v) {
            let name = err.get("status").and_then(Value::as_str).unwrap_or("INTERNAL");
            let message = err.get("message").and_then(Value::as_str).unwrap_or(NO_STREAM_MESSAGE);
            em.error(out, message, Gemini.error_type(name, 500), name);
            return;
        }
        if !self.id_set {
            self.id_set = true;
            if let Some(id) = v.get("responseId").and_then(Value::as_str) {
                em.meta.id = id.to_string();
            }
        }
        // Every chunk may carry usage so far; the last one is final.
        if let Some(u) = v.get("usageMetadata") {
            em.usage = Some(usage_of(u));
        }
        if candidates(v).is_empty() && blocked(v) {
            em.finish(out, 0, "content_filter");
            return;
        }
        for (position, c) in candidates(v).iter().enumerate() {
            self.candidate(em, c, position, out);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::ProviderKind;
    use crate::providers::test_support::{assert_split_invariant, events, final_usage, streamed_text};
    use crate::providers::test_support::{build_for, provider};
    use crate::providers::ResponseAdapter;

    const REQUEST: &str = include_str!("../../tests/fixtures/providers/gemini/request.json");
    const REQUEST_EXPECTED: &str = include_str!("../../tests/fixtures/providers/gemini/request.expected.json");
    const RESPONSE: &str = include_str!("../../tests/fixtures/providers/gemini/response.json");
    const RESPONSE_CALLS: &str = include_str!("../../tests/fixtures/providers/gemini/response_function_call.json");
    const RESPONSE_BLOCKED: &str = include_str!("../../tests/fixtures/providers/gemini/response_blocked.json");
    const STREAM: &str = include_str!("../../tests/fixtures/providers/gemini/stream.txt");
    const STREAM_CALLS: &str = include_str!("../../tests/fixtures/providers/gemini/stream_function_call.txt");

    fn adapter(stream: bool) -> ResponseAdapter {
        ResponseAdapter::new(ProviderKind::Gemini, Endpoint::ChatCompletions, stream, "gemini-x").unwrap()
    }

    fn body_of(model: &str, req: &str) -> Value {
        serde_json::from_slice(&build_for(&provider(ProviderKind::Gemini), model, req, None).unwrap().body).unwrap()
    }

    #[test]
    fn request_translation_matches_fixture() {
        let p = provider(ProviderKind::Gemini);
        let up = build_for(&p, "gemini-2.5-flash", REQUEST, Some(2048)).unwrap();
        assert_eq!(up.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert!(up.headers.contains(&("x-goog-api-key", "sk-test".to_string())));
        assert!(up.headers.iter().all(|(k, _)| *k != "authorization"));
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        let want: Value = serde_json::from_str(REQUEST_EXPECTED).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn streaming_path_and_model_forms() {
        let p = provider(ProviderKind::Gemini);
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        assert_eq!(
            build_for(&p, "gemini-2.0-flash", req, None).unwrap().path,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            build_for(&p, "models/gemini-pro", req, None).unwrap().path,
            "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            build_for(&p, "tunedModels/my-1", req, None).unwrap().path,
            "/v1beta/tunedModels/my-1:streamGenerateContent?alt=sse"
        );
        let v = body_of("g", req);
        assert!(v.get("generationConfig").is_none(), "no defaults invented: {v}");
        assert_eq!(
            build_for(&p, "g", req, Some(64))
                .map(|u| serde_json::from_slice::<Value>(&u.body).unwrap()["generationConfig"]["maxOutputTokens"]
                    .clone())
                .unwrap(),
            64
        );
    }

    #[test]
    fn thought_signatures_for_gemini_3() {
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"a","content":"1"},{"role":"tool","tool_call_id":"b","content":"2"}]}"#;
        let v = body_of("gemini-3-pro-preview", req);
        assert_eq!(v["contents"][1]["parts"][0]["thoughtSignature"], SKIP_SIGNATURE);
        assert!(v["contents"][1]["parts"][1].get("thoughtSignature").is_none());
        let v = body_of("gemini-2.5-pro", req);
        assert!(v["contents"][1]["parts"][0].get("thoughtSignature").is_none());
        assert!(requires_signatures("gemini-3-flash"));
        assert!(requires_signatures("gemini-10-ultra"));
        assert!(!requires_signatures("gemini-2.5-flash"));
        assert!(!requires_signatures("gemini-exp-1206"));
    }

    #[test]
    fn tool_result_without_a_call_is_a_400() {
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"},{"role":"tool","tool_call_id":"zz","content":"1"}]}"#;
        let e = build_for(&provider(ProviderKind::Gemini), "g", req, None).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("zz"));
    }

    #[test]
    fn response_format_and_tool_choice() {
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"r","strict":true,"schema":{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":false}}},"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#;
        let v = body_of("g", req);
        assert_eq!(v["generationConfig"]["responseMimeType"], "application/json");
        assert_eq!(
            v["generationConfig"]["responseSchema"],
            json!({"type": "object", "properties": {"a": {"type": "string"}}})
        );
        assert_eq!(v["toolConfig"], json!({"functionCallingConfig": {"mode": "NONE"}}));
        assert_eq!(v["tools"][0]["functionDeclarations"][0], json!({"name": "f"}));
    }

    #[test]
    fn pydantic_schema_with_defs_is_inlined() {
        // What `client.chat.completions.parse(response_format=Model)` sends for a nested model.
        let req = r##"{"model":"x","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"Trip","strict":true,"schema":{"$defs":{"Stop":{"properties":{"city":{"title":"City","type":"string"}},"required":["city"],"title":"Stop","type":"object","additionalProperties":false}},"properties":{"stops":{"items":{"$ref":"#/$defs/Stop"},"title":"Stops","type":"array"},"note":{"anyOf":[{"type":"string"},{"type":"null"}],"title":"Note"}},"required":["stops","note"],"title":"Trip","type":"object","additionalProperties":false}}}}"##;
        let v = body_of("g", req);
        assert_eq!(
            v["generationConfig"]["responseSchema"],
            json!({
                "properties": {
                    "stops": {"items": {"properties": {"city": {"title": "City", "type": "string"}}, "required": ["city"], "title": "Stop", "type": "object"}, "title": "Stops", "type": "array"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Note"}
                },
                "required": ["stops", "note"],
                "title": "Trip",
                "type": "object"
            })
        );
    }

    #[test]
    fn response_translation() {
        let v: Value =
            serde_json::from_slice(&adapter(false).with_created(9).translate_body(200, RESPONSE.as_bytes())).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "mJb0aJ6yK8-5qtsPhL-R0Qk",
                "object": "chat.completion",
                "created": 9,
                "model": "gemini-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is 15 degrees and foggy in San Francisco.", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 31, "completion_tokens": 31, "total_tokens": 62, "completion_tokens_details": {"reasoning_tokens": 20}}
            })
        );
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, RESPONSE_CALLS.as_bytes())).unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"], json!({"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}));
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        let v: Value =
            serde_json::from_slice(&adapter(false).translate_body(200, RESPONSE_BLOCKED.as_bytes())).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["usage"]["prompt_tokens"], 8);
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason("MAX_TOKENS", false), "length");
        assert_eq!(finish_reason("SAFETY", true), "content_filter");
        assert_eq!(finish_reason("RECITATION", false), "content_filter");
        assert_eq!(finish_reason("STOP", true), "tool_calls");
        assert_eq!(finish_reason("OTHER", false), "stop");
    }

    #[test]
    fn errors_become_openai_errors() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(429, body)).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Resource has been exhausted (e.g. check quota).", "type": "rate_limit_error", "param": null, "code": "RESOURCE_EXHAUSTED"}})
        );
        let body = br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        let v: Value = serde_json::from_slice(&adapter(true).translate_body(400, body)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(503, b"")).unwrap();
        assert_eq!(v["error"]["code"], "service_unavailable");
    }

    #[test]
    fn stream_translation_at_every_split() {
        let out = assert_split_invariant(ProviderKind::Gemini, STREAM.as_bytes());
        let ev = events(&out);
        assert_eq!(ev[0]["id"], "resp-123");
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(streamed_text(&ev), "Bonjour, ça va? 日本語 🎉");
        let finish = &ev[ev.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(final_usage(&ev), &json!({"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}));
        assert_eq!(ev[ev.len() - 1], "[DONE]");
    }

    #[test]
    fn stream_with_function_calls() {
        let out = adapter(true).translate_stream(STREAM_CALLS.as_bytes(), true);
        let ev = events(&out);
        assert_eq!(streamed_text(&ev), "Checking.");
        let calls: Vec<&Value> = ev.iter().filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0)).collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[1]["index"], 1);
        assert_eq!(calls[0]["function"], json!({"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}));
        assert_eq!(calls[1]["function"], json!({"name": "get_time", "arguments": "{}"}));
        assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
        assert!(ev.iter().all(|e| e.get("usage").is_none()), "no usage unless asked");
    }

    #[test]
    fn stream_with_two_candidates_reports_usage_once() {
        let s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}]},\"index\":0},{\"content\":{\"parts\":[{\"text\":\"B\"}]},\"index\":1}]}\n\n\
                 data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\",\"index\":0},{\"content\":{\"parts\":[{\"text\":\"?\"}]},\"finishReason\":\"MAX_TOKENS\",\"index\":1}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":4,\"totalTokenCount\":6}}\n\n";
        let mut a = adapter(true).with_include_usage(true);
        let ev = events(&a.translate_stream(s.as_bytes(), true));
        let finishes: Vec<&Value> = ev.iter().filter(|e| !e["choices"][0]["finish_reason"].is_null()).collect();
        assert_eq!(finishes.len(), 2);
        assert_eq!(finishes[0]["choices"][0]["index"], 0);
        assert_eq!(finishes[1]["choices"][0]["finish_reason"], "length");
        assert!(finishes.iter().all(|f| f["usage"].is_null()));
        assert_eq!(final_usage(&ev)["total_tokens"], 6);
        assert_eq!(ev.iter().filter(|e| e["usage"].is_object()).count(), 1);
        assert_eq!(a.usage().map(|u| u.total_tokens()), Some(6));
    }

    #[test]
    fn stream_error_event_and_garbage() {
        let s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}]},\"index\":0}]}\r\n\r\ndata: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        let ev = events(&adapter(true).translate_stream(s.as_bytes(), true));
        assert_eq!(
            ev[ev.len() - 2]["error"],
            json!({"message": "The model is overloaded.", "type": "server_error", "param": null, "code": "UNAVAILABLE"})
        );
        for input in [&b"data: [1,2\n\n"[..], b"\xf0\x9f", b"data: {}\n\n"] {
            let ev = events(&adapter(true).translate_stream(input, true));
            assert!(ev.iter().any(|e| e.get("error").is_some()), "{input:?}");
            assert_eq!(ev.last().unwrap(), "[DONE]");
        }
    }

    #[test]
    fn schema_sanitising() {
        let s = json!({"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "null"}], "$ref": "#/x"}}, "$defs": {}, "title": "T"});
        assert_eq!(
            schema(&s),
            json!({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "title": "T"})
        );
    }
}
