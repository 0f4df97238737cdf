//! Amazon Bedrock Converse API (`POST /model/{modelId}/converse` and
//! `/converse-stream`), signed with AWS SigV4: request translation, and
//! answers (JSON or binary event stream) back into OpenAI's shape.

use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use serde_json::{json, Map, Value};

use crate::api::error::ErrorType;
use crate::api::model_rules::claude_adaptive_only;
use crate::api::ApiError;
use crate::config::{Credentials, ProviderKind};

use super::adapter::{Adapter, StreamState, Target};
use super::anthropic::{claude_output_config, claude_sampling, claude_thinking};
use super::chat::{max_with_thinking, Block, Chat, Role, Source, ToolChoice};
use super::emit::Emitter;
use super::eventstream;
use super::json_text;
use super::openai_out::{Answer, Choice, Meta, ToolCall};
use super::sigv4;
use super::upstream::{BuildContext, UpstreamRequest};
use super::upstream_error::{invalid_answer, parse_answer, NO_STREAM_MESSAGE};

/// The Bedrock Converse adapter.
#[derive(Debug)]
pub(super) struct Bedrock;

/// SigV4 service name of the Bedrock runtime.
const SERVICE: &str = "bedrock";

fn unsupported(message: String) -> ApiError {
    ApiError::invalid_request(ErrorCode::UnsupportedValue, message)
}

fn image_format(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn document_format(mime: &str) -> Option<&'static str> {
    match mime {
        "application/pdf" => Some("pdf"),
        "text/csv" => Some("csv"),
        "application/msword" => Some("doc"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "application/vnd.ms-excel" => Some("xls"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => Some("xlsx"),
        "text/html" => Some("html"),
        "text/plain" => Some("txt"),
        "text/markdown" => Some("md"),
        _ => None,
    }
}

/// A document name as Bedrock allows: letters, digits, single spaces,
/// hyphens, parentheses and square brackets.
fn document_name(filename: Option<&str>, n: usize) -> String {
    let stem = filename.map(|f| f.rsplit_once('.').map_or(f, |(s, _)| s)).unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') { c } else { ' ' })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        format!("document-{n}")
    } else {
        cleaned
    }
}

fn image_json(source: &Source, at: &str) -> Result<Value, ApiError> {
    match source {
        Source::Base64 { mime, data } => {
            let format = image_format(mime).ok_or_else(|| {
                unsupported(format!(
                    "{at}: images of type {mime} are not supported by Bedrock; use PNG, JPEG, GIF or WebP."
                ))
            })?;
            Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
        }
        Source::Url(_) => {
            Err(unsupported(format!("{at}: Bedrock cannot fetch image URLs; send the image inline as a `data:` URL.")))
        }
    }
}

fn block_json(block: &Block, at: &str, documents: &mut usize) -> Result<Value, ApiError> {
    Ok(match block {
        Block::Text(text) => json!({ "text": text }),
        Block::Image(source) => image_json(source, at)?,
        Block::File { source, filename } => match source {
            Source::Base64 { mime, data } => {
                let format = document_format(mime)
                    .ok_or_else(|| unsupported(format!("{at}: files of type {mime} are not supported by Bedrock.")))?;
                *documents += 1;
                json!({"document": {"format": format, "name": document_name(filename.as_deref(), *documents), "source": {"bytes": data}}})
            }
            Source::Url(_) => {
                return Err(unsupported(format!("{at}: Bedrock cannot fetch file URLs; send `file_data`.")))
            }
        },
        Block::ToolCall { id, name, input } => json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
        Block::Thinking { text, signature } => {
            json!({"reasoningContent": {"reasoningText": {"text": text, "signature": signature}}})
        }
        Block::RedactedThinking(data) => json!({"reasoningContent": {"redactedContent": data}}),
        Block::CachePoint(_) => cache_point(),
        Block::ToolResult { id, content, .. } => {
            let content = content.iter().map(|b| block_json(b, at, documents)).collect::<Result<Vec<_>, _>>()?;
            json!({"toolResult": {"toolUseId": id, "content": content, "status": "success"}})
        }
    })
}

/// Converse's cache breakpoint (it has one kind: Anthropic's `cache_control` type and ttl do not carry).
fn cache_point() -> Value {
    // Parsed: smaller in the .wasm than the object built in place.
    serde_json::from_str(r#"{"cachePoint":{"type":"default"}}"#).unwrap_or_default()
}

fn tool_spec(name: &str, description: Option<&str>, schema: &Value) -> Value {
    let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
    if let (Some(d), Some(obj)) = (description, spec.as_object_mut()) {
        obj.insert("description".into(), json!(d));
    }
    json!({ "toolSpec": spec })
}

/// The Converse request around `body`, signed with SigV4.
fn signed_request(to: &Target<'_>, body: Vec<u8>) -> Result<UpstreamRequest, ApiError> {
    let (provider, member, chat, ctx) = (to.provider, to.member, to.chat, to.ctx);
    let Credentials::Aws { access_key_id, secret_access_key, session_token } = &provider.credentials else {
        return Err(ApiError::internal(format!("provider {} has no AWS credentials", provider.name)));
    };
    let operation = if chat.stream { "converse-stream" } else { "converse" };
    let path = format!("{}/model/{}/{operation}", provider.base_path, sigv4::uri_encode(&member.model, false));
    let amz_date = sigv4::amz_date(ctx.now_unix_s);
    let payload_sha256 = sigv4::sha256_hex(&body);
    let mut signed: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("host", &provider.host),
        ("x-amz-content-sha256", &payload_sha256),
        ("x-amz-date", &amz_date),
    ];
    if let Some(token) = session_token {
        signed.push(("x-amz-security-token", token.expose()));
    }
    let request =
        sigv4::Request { method: "POST", path: &path, query: "", headers: &signed, payload_sha256: &payload_sha256 };
    let scope = sigv4::Scope { amz_date: &amz_date, region: &provider.region, service: SERVICE };
    let authorization = sigv4::authorization(&request, &scope, access_key_id.expose(), secret_access_key.expose());
    let accept = if chat.stream { "application/vnd.amazon.eventstream" } else { "application/json" };
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("accept", accept.to_string()),
        ("accept-encoding", "identity".to_string()),
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", payload_sha256.clone()),
    ];
    if let Some(token) = session_token {
        headers.push(("x-amz-security-token", token.expose().to_string()));
    }
    headers.push(("authorization", authorization));
    Ok(UpstreamRequest { path, authority: provider.host.clone(), headers, body })
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        _ => "stop",
    }
}

fn usage_of(u: &Value) -> Tokens {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    let tokens = Tokens {
        total: u.get("totalTokens").and_then(Value::as_u64),
        ..Tokens::new(n("inputTokens") + read + write, n("outputTokens"))
    };
    Tokens { cached: Some(read), cache_write: Some(write), ..tokens }.without_zero_cache()
}

impl Adapter for Bedrock {
    /// The Converse body for `chat`.
    fn body(&self, chat: &Chat, model: &str, ctx: &BuildContext) -> Result<Value, ApiError> {
        // Anthropic's betas reach Claude models only (`anthropic_beta`); another model has none.
        if chat.anthropic_beta.is_some() && !model.contains("anthropic.") && !model.contains("claude") {
            return Err(ApiError::invalid_request(
                ErrorCode::UnsupportedParameter,
                "`anthropic-beta`: only Claude models on Bedrock take Anthropic betas.",
            )
            .with_param("anthropic-beta"));
        }
        let mut documents = 0;
        let mut messages = Vec::with_capacity(chat.turns.len());
        for (i, turn) in chat.turns.iter().enumerate() {
            let at = format!("messages (turn {i})");
            let content =
                turn.blocks.iter().map(|b| block_json(b, &at, &mut documents)).collect::<Result<Vec<_>, _>>()?;
            let role = match turn.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": content}));
        }
        // The request's own `cache_control` (Anthropic's automatic caching): a breakpoint after the last block.
        let last = messages.last_mut().and_then(|m| m.get_mut("content")).and_then(Value::as_array_mut);
        if let (Some(_), Some(content)) = (&chat.cache_control, last) {
            content.push(cache_point());
        }
        let mut out = Map::new();
        out.insert("messages".into(), Value::Array(messages));
        let system = chat.system_with_json_instruction();
        if !system.is_empty() {
            let mut blocks = Vec::with_capacity(system.len() + chat.system_cache.len());
            for (i, s) in system.iter().enumerate() {
                blocks.push(json!({ "text": s }));
                if chat.system_cache.iter().any(|(at, _)| *at == i) {
                    blocks.push(cache_point());
                }
            }
            out.insert("system".into(), Value::Array(blocks));
        }
        let mut inference = Map::new();
        if let Some(n) = chat.max_tokens.or(ctx.max_response_tokens) {
            inference.insert("maxTokens".into(), json!(max_with_thinking(n, chat.thinking_budget)));
        }
        let adaptive = claude_adaptive_only(ProviderKind::Bedrock, model);
        let (temperature, top_p, top_k) = claude_sampling(adaptive, chat);
        // Bedrock models take temperatures in 0..=1 (OpenAI's range is 0..=2).
        if let Some(t) = temperature {
            inference.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
        if let Some(p) = top_p {
            inference.insert("topP".into(), json!(p));
        }
        if !chat.stop.is_empty() {
            inference.insert("stopSequences".into(), json!(chat.stop));
        }
        if !inference.is_empty() {
            out.insert("inferenceConfig".into(), Value::Object(inference));
        }
        // Model-specific fields: Claude's on Bedrock.
        let mut extra = Map::new();
        if let Some(k) = top_k {
            extra.insert("top_k".into(), json!(k));
        }
        let mut effort = None;
        if let Some(budget) = chat.thinking_budget {
            let thinking;
            (thinking, effort) = claude_thinking(adaptive, model, chat, budget);
            extra.insert("thinking".into(), thinking);
        }
        if let Some(c) = claude_output_config(chat, effort) {
            extra.insert("output_config".into(), c);
        }
        if let Some(betas) = &chat.anthropic_beta {
            extra.insert("anthropic_beta".into(), betas.clone());
        }
        if !extra.is_empty() {
            out.insert("additionalModelRequestFields".into(), Value::Object(extra));
        }
        let history_tools = chat.has_tool_blocks();
        // Converse has no tool choice `none`: such tools are not declared.
        let wants_tools = !chat.tools.is_empty() && chat.tool_choice != Some(ToolChoice::None);
        // A json_schema format is one more tool, forced by the tool choice.
        let structured = chat.structured_output_tool();
        if wants_tools || history_tools || structured.is_some() {
            let declared_tools = if wants_tools { chat.tools.as_slice() } else { &[] };
            let mut tools = Vec::with_capacity(declared_tools.len());
            for t in declared_tools {
                tools.push(tool_spec(&t.name, t.description.as_deref(), &t.parameters));
                if t.cache.is_some() {
                    tools.push(cache_point());
                }
            }
            // Bedrock refuses toolUse/toolResult blocks unless their tools are
            // declared: declare the ones the history uses but `tools` lacks.
            let mut declared: Vec<&str> = declared_tools.iter().map(|t| t.name.as_str()).collect();
            for block in chat.turns.iter().flat_map(|t| t.blocks.iter()) {
                if let Block::ToolCall { name, .. } = block {
                    if !declared.contains(&name.as_str()) {
                        declared.push(name);
                        tools.push(tool_spec(name, None, &json!({"type": "object", "properties": {}})));
                    }
                }
            }
            let tool_choice = match &structured {
                Some((tool, choice)) => {
                    tools.push(tool_spec(&tool.name, tool.description.as_deref(), &tool.parameters));
                    Some(choice)
                }
                None => chat.tool_choice.as_ref(),
            };
            if !tools.is_empty() {
                let mut config = Map::new();
                config.insert("tools".into(), Value::Array(tools));
                match tool_choice {
                    Some(ToolChoice::Required) => {
                        config.insert("toolChoice".into(), json!({"any": {}}));
                    }
                    Some(ToolChoice::Function(name)) => {
                        config.insert("toolChoice".into(), json!({"tool": {"name": name}}));
                    }
                    _ => {}
                }
                out.insert("toolConfig".into(), Value::Object(config));
            }
        }
        Ok(Value::Object(out))
    }

    fn request(&self, to: &Target<'_>, body: Vec<u8>) -> Result<UpstreamRequest, ApiError> {
        signed_request(to, body)
    }

    /// A complete Converse answer; `Err` holds an OpenAI error body when the
    /// answer is an error or cannot be read.
    fn completion(&self, body: &[u8]) -> Result<Answer, Vec<u8>> {
        let v = parse_answer("Bedrock", body)?;
        let Some(blocks) =
            v.get("output").and_then(|o| o.get("message")).and_then(|m| m.get("content")).and_then(Value::as_array)
        else {
            if v.get("message").is_some() || v.get("Message").is_some() {
                return Err(self.error_body(500, body));
            }
            return Err(invalid_answer("Bedrock", "no `output.message.content`"));
        };
        let mut choice = Choice { index: 0, ..Choice::default() };
        for block in blocks {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                choice.text.push_str(text);
            } else if let Some(tool) = block.get("toolUse") {
                choice.tool_calls.push(ToolCall {
                    id: tool.get("toolUseId").and_then(Value::as_str).unwrap_or_default().to_string(),
                    name: tool.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    arguments: tool.get("input").map_or_else(|| "{}".to_string(), json_text),
                });
            } else if let Some(r) = block.get("reasoningContent") {
                let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                if let Some(t) = r.get("reasoningText") {
                    choice.reasoning.push_str(&field(t, "text"));
                    choice.thinking_blocks.push(
                        json!({"type": "thinking", "thinking": field(t, "text"), "signature": field(t, "signature")}),
                    );
                } else if r.get("redactedContent").is_some() {
                    choice
                        .thinking_blocks
                        .push(json!({"type": "redacted_thinking", "data": field(r, "redactedContent")}));
                }
            }
        }
        choice.finish_reason = v.get("stopReason").and_then(Value::as_str).map_or("stop", finish_reason);
        Ok(Answer { id: None, choices: vec![choice], usage: v.get("usage").map(usage_of) })
    }

    /// The message of `{"message": ...}` (the error name travels in a header we
    /// do not see), and the name some AWS errors give in `__type`, as
    /// `namespace#Name`.
    fn find_error<'v>(&self, v: &'v Value) -> Option<(&'v str, &'v str)> {
        let message = v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str)?;
        let name =
            v.get("__type").and_then(Value::as_str).map(|t| t.rsplit('#').next().unwrap_or(t)).unwrap_or_default();
        Some((name, message))
    }

    /// OpenAI error `type` for an AWS exception name (either case convention).
    fn error_type(&self, exception: &str, status: u16) -> ErrorType {
        let e = exception.to_ascii_lowercase();
        match e.as_str() {
            "throttlingexception" | "servicequotaexceededexception" | "toomanyrequestsexception" => {
                ErrorType::RateLimit
            }
            "validationexception" | "resourcenotfoundexception" | "serializationexception" => ErrorType::InvalidRequest,
            "accessdeniedexception" => ErrorType::Permission,
            "unrecognizedclientexception"
            | "invalidsignatureexception"
            | "expiredtokenexception"
            | "incompletesignatureexception"
            | "missingauthenticationtokenexception" => ErrorType::Authentication,
            "internalserverexception"
            | "serviceunavailableexception"
            | "modeltimeoutexception"
            | "modelerrorexception"
            | "modelnotreadyexception"
            | "modelstreamerrorexception" => ErrorType::Server,
            _ => ErrorType::for_status(status),
        }
    }

    fn stream(&self, meta: Meta, include_usage: bool) -> Box<dyn StreamState> {
        Box::new(Stream::new(meta, include_usage))
    }
}

/// One Bedrock event stream being translated.
#[derive(Debug)]
struct Stream {
    emitter: Emitter,
    frames: Frames,
}

impl Stream {
    fn new(meta: Meta, include_usage: bool) -> Self {
        Stream { emitter: Emitter::new(meta, include_usage), frames: Frames::default() }
    }
}

impl StreamState for Stream {
    fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.frames.decode(&mut self.emitter, chunk, &mut out);
        if end_of_stream {
            self.emitter.end(&mut out);
        }
        out
    }

    fn emitter(&self) -> &Emitter {
        &self.emitter
    }
}

/// Decoding state of one Bedrock event stream.
#[derive(Debug, Default)]
struct Frames {
    decoder: eventstream::Decoder,
    /// Content-block index → OpenAI tool-call index, for toolUse blocks.
    tool_blocks: Vec<(u64, u32)>,
}

impl Frames {
    fn decode(&mut self, em: &mut Emitter, chunk: &[u8], out: &mut Vec<u8>) {
        if em.closed() {
            return;
        }
        self.decoder.push(chunk);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.frame(em, &frame, out),
                Ok(None) => break,
                Err(e) => {
                    self.decoder = eventstream::Decoder::default();
                    em.unreadable(out, &format!("The provider's event stream is corrupt: {e}."));
                    return;
                }
            }
        }
    }

    fn frame(&mut self, em: &mut Emitter, frame: &eventstream::Frame, out: &mut Vec<u8>) {
        if em.closed() {
            return;
        }
        let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        match frame.header(":message-type").unwrap_or("event") {
            "exception" => {
                let name = frame.header(":exception-type").unwrap_or("internalServerException");
                let message = payload
                    .get("message")
                    .or_else(|| payload.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or(NO_STREAM_MESSAGE);
                em.error(out, message, Bedrock.error_type(name, 500), name);
                return;
            }
            "error" => {
                let code = frame.header(":error-code").unwrap_or("InternalError");
                let message = frame.header(":error-message").unwrap_or(NO_STREAM_MESSAGE);
                em.error(out, message, Bedrock.error_type(code, 500), code);
                return;
            }
            _ => {}
        }
        let block_index = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match frame.header(":event-type").unwrap_or_default() {
            "messageStart" => em.start(out, 0),
            "contentBlockStart" => {
                if let Some(tool) = payload.get("start").and_then(|s| s.get("toolUse")) {
                    let tool_index = self.tool_blocks.len() as u32;
                    self.tool_blocks.push((block_index, tool_index));
                    let id = tool.get("toolUseId").and_then(Value::as_str).unwrap_or_default();
                    let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                    em.tool_start(out, 0, tool_index, id, name, "");
                }
            }
            "contentBlockDelta" => {
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    em.text(out, 0, text);
                } else if let Some(input) = delta.get("toolUse").and_then(|t| t.get("input")).and_then(Value::as_str) {
                    if let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|(b, _)| *b == block_index) {
                        em.tool_arguments(out, 0, tool_index, input);
                    }
                } else if let Some(text) =
                    delta.get("reasoningContent").and_then(|r| r.get("text")).and_then(Value::as_str)
                {
                    em.reasoning(out, 0, text);
                }
            }
            "messageStop" => {
                let reason = payload.get("stopReason").and_then(Value::as_str).map_or("stop", finish_reason);
                em.finish(out, 0, reason);
            }
            // Usage follows messageStop; the emitter sends it at the end.
            "metadata" => {
                if let Some(u) = payload.get("usage") {
                    em.usage = Some(usage_of(u));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::{Provider, ProviderKind, Secret};
    use crate::providers::eventstream::{encode, event};
    use crate::providers::structured::{JSON_OBJECT_INSTRUCTION, STRUCTURED_OUTPUT_TOOL};
    use crate::providers::test_support::{assert_split_invariant, events, final_usage, streamed_text};
    use crate::providers::test_support::{build_for, provider};
    use crate::providers::ResponseAdapter;

    const REQUEST: &str = include_str!("../../tests/fixtures/providers/bedrock/request.json");
    const REQUEST_EXPECTED: &str = include_str!("../../tests/fixtures/providers/bedrock/request.expected.json");
    const RESPONSE: &str = include_str!("../../tests/fixtures/providers/bedrock/response.json");
    const RESPONSE_TOOLS: &str = include_str!("../../tests/fixtures/providers/bedrock/response_tool_use.json");
    const STREAM: &[u8] = include_bytes!("../../tests/fixtures/providers/bedrock/stream.bin");
    const STREAM_TOOLS: &[u8] = include_bytes!("../../tests/fixtures/providers/bedrock/stream_tool_use.bin");
    const STREAM_EXCEPTION: &[u8] = include_bytes!("../../tests/fixtures/providers/bedrock/stream_exception.bin");

    const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

    fn adapter(stream: bool) -> ResponseAdapter {
        ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, stream, MODEL).unwrap()
    }

    fn bedrock_provider(token: Option<&str>) -> Provider {
        let mut p = provider(ProviderKind::Bedrock);
        p.host = "bedrock-runtime.us-east-1.amazonaws.com".into();
        if let Credentials::Aws { session_token, .. } = &mut p.credentials {
            *session_token = token.map(Secret::new);
        }
        p
    }

    fn header<'a>(up: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
        up.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn request_translation_matches_fixture() {
        let up = build_for(&bedrock_provider(None), MODEL, REQUEST, Some(4000)).unwrap();
        assert_eq!(up.path, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        let want: Value = serde_json::from_str(REQUEST_EXPECTED).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn signed_request_matches_an_independent_signer() {
        // Expected values computed with Python's hmac/hashlib and
        // urllib.parse.quote(path, safe="/~") (botocore's canonical path).
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
        let up = build_for(&bedrock_provider(None), MODEL, req, None).unwrap();
        assert_eq!(up.body, br#"{"messages":[{"content":[{"text":"hi"}],"role":"user"}]}"#);
        assert_eq!(up.authority, "bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(header(&up, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&up, "x-amz-content-sha256"),
            Some("1ffd67ef22187fd0e1b5e809a0117c372166d2067cec3c1ff94027e956974a03")
        );
        assert_eq!(header(&up, "content-type"), Some("application/json"));
        assert_eq!(header(&up, "accept"), Some("application/json"));
        assert_eq!(header(&up, "x-amz-security-token"), None);
        assert_eq!(
            header(&up, "authorization"),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature=310cacd8926b9a88a3066f63a73a89e829569bea0739341ee068399f8050a642")
        );
        let up = build_for(&bedrock_provider(Some("FQoGZXIvYXdzEXAMPLETOKEN")), MODEL, req, None).unwrap();
        assert_eq!(header(&up, "x-amz-security-token"), Some("FQoGZXIvYXdzEXAMPLETOKEN"));
        assert_eq!(
            header(&up, "authorization"),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=f138dc5eacfa8b5dfd47918bdd5b2e567a0e0473c07ffbe09c3364a1595c669a")
        );
    }

    #[test]
    fn streaming_path_and_arn_model_ids() {
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let arn =
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0";
        let up = build_for(&bedrock_provider(None), arn, req, None).unwrap();
        assert_eq!(
            up.path,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream"
        );
        assert_eq!(header(&up, "accept"), Some("application/vnd.amazon.eventstream"));
    }

    #[test]
    fn tool_config_rules() {
        let p = bedrock_provider(None);
        let body =
            |req: &str| -> Value { serde_json::from_slice(&build_for(&p, MODEL, req, None).unwrap().body).unwrap() };
        let tools = r#""tools":[{"type":"function","function":{"name":"f"}}]"#;
        let v = body(&format!(
            r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools},"tool_choice":"none"}}"#
        ));
        assert!(v.get("toolConfig").is_none());
        let v = body(&format!(r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools}}}"#));
        assert_eq!(
            v["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]})
        );
        let v = body(&format!(
            r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools},"tool_choice":{{"type":"function","function":{{"name":"f"}}}}}}"#
        ));
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"tool": {"name": "f"}}));
        // Tool history without `tools`: the used tools are declared anyway.
        let v = body(
            r#"{"model":"x","messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"id":"t1","type":"function","function":{"name":"g","arguments":"{}"}}]},{"role":"tool","tool_call_id":"t1","content":"ok"}]}"#,
        );
        assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], "g");
        assert!(v.get("inferenceConfig").is_none());
    }

    #[test]
    fn unsupported_media_is_a_400() {
        let p = bedrock_provider(None);
        for content in [
            r#"[{"type":"image_url","image_url":{"url":"https://x/cat.png"}}]"#,
            r#"[{"type":"image_url","image_url":{"url":"data:image/tiff;base64,AAAA"}}]"#,
            r#"[{"type":"file","file":{"file_data":"data:application/zip;base64,AAAA"}}]"#,
        ] {
            let req = format!(r#"{{"model":"x","messages":[{{"role":"user","content":{content}}}]}}"#);
            let e = build_for(&p, MODEL, &req, None).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "unsupported_value"), "{content}");
        }
    }

    #[test]
    fn document_names() {
        assert_eq!(document_name(Some("a  b__c.final.pdf"), 1), "a b c final");
        assert_eq!(document_name(Some("..."), 2), "document-2");
        assert_eq!(document_name(None, 3), "document-3");
    }

    #[test]
    fn response_translation() {
        let v: Value =
            serde_json::from_slice(&adapter(false).with_created(3).translate_body(200, RESPONSE.as_bytes())).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 3);
        assert_eq!(v["model"], MODEL);
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?", "reasoning_content": "The user wants a greeting.", "refusal": null,
                "thinking_blocks": [{"type": "thinking", "thinking": "The user wants a greeting.", "signature": "EqoBCkgIARABGAIiQ"}]}, "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 512, "completion_tokens": 9, "total_tokens": 521, "prompt_tokens_details": {"cached_tokens": 500}})
        );
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, RESPONSE_TOOLS.as_bytes())).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"],
            json!([{"id": "tooluse_hizU3y7ySmWLnyDOgQrvNQ", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Seattle\",\"unit\":\"celsius\"}"}}])
        );
    }

    #[test]
    fn stop_reasons() {
        for (bedrock, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("content_filtered", "content_filter"),
            ("guardrail_intervened", "content_filter"),
        ] {
            assert_eq!(finish_reason(bedrock), openai);
        }
    }

    #[test]
    fn errors_become_openai_errors() {
        let v: Value = serde_json::from_slice(
            &adapter(false)
                .translate_body(429, br#"{"message":"Too many requests, please wait before trying again."}"#),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        let v: Value = serde_json::from_slice(&adapter(true).translate_body(
            403,
            br#"{"Message":"User is not authorized","__type":"com.amazon.coral#AccessDeniedException"}"#,
        ))
        .unwrap();
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["code"], "AccessDeniedException");
        let v: Value = serde_json::from_slice(
            &adapter(false).translate_body(400, br#"{"message":"The provided model identifier is invalid."}"#),
        )
        .unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, br#"{"message":"odd"}"#)).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn stream_translation_at_every_split() {
        let out = assert_split_invariant(ProviderKind::Bedrock, STREAM);
        let ev = events(&out);
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(streamed_text(&ev), "Hello, wörld! 👋");
        let finish = &ev[ev.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(final_usage(&ev), &json!({"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}));
        assert_eq!(ev[ev.len() - 1], "[DONE]");
        assert!(ev.iter().all(|e| e.get("error").is_none()));
    }

    #[test]
    fn stream_with_tool_use() {
        let out = assert_split_invariant(ProviderKind::Bedrock, STREAM_TOOLS);
        let ev = events(&out);
        assert_eq!(streamed_text(&ev), "Let me check.");
        let calls: Vec<&Value> = ev.iter().filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0)).collect();
        assert_eq!(
            calls[0],
            &json!({"index": 0, "id": "tooluse_Yz1", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
        );
        let args: String = calls[1..].iter().map(|c| c["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(args, "{\"city\": \"Seattle\"}");
        assert_eq!(ev[ev.len() - 3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(final_usage(&ev)["total_tokens"], 450);
    }

    #[test]
    fn stream_exception_becomes_an_error_event() {
        let ev = events(&adapter(true).translate_stream(STREAM_EXCEPTION, true));
        assert_eq!(streamed_text(&ev), "Hi");
        assert_eq!(
            ev[ev.len() - 2],
            json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "rate_limit_error", "param": null, "code": "throttlingException"}})
        );
        assert_eq!(ev[ev.len() - 1], "[DONE]");
    }

    #[test]
    fn json_schema_format_is_a_forced_tool() {
        let body = |req: &str| -> Value {
            serde_json::from_slice(&build_for(&bedrock_provider(None), MODEL, req, None).unwrap().body).unwrap()
        };
        let format = r#""response_format":{"type":"json_schema","json_schema":{"name":"Person","schema":{"type":"object","properties":{"name":{"type":"string"}}}}}"#;
        let v = body(&format!(r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{format}}}"#));
        let spec = &v["toolConfig"]["tools"][0]["toolSpec"];
        assert_eq!(spec["name"], STRUCTURED_OUTPUT_TOOL);
        assert_eq!(spec["inputSchema"]["json"], json!({"type": "object", "properties": {"name": {"type": "string"}}}));
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"tool": {"name": STRUCTURED_OUTPUT_TOOL}}));
        // Client tools stay callable: any tool, the schema tool last.
        let tools = r#""tools":[{"type":"function","function":{"name":"f"}}]"#;
        let v = body(&format!(r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools},{format}}}"#));
        assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
        assert_eq!(v["toolConfig"]["tools"][1]["toolSpec"]["name"], STRUCTURED_OUTPUT_TOOL);
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"any": {}}));
        // tool_choice none: the client's tools are not declared (Converse has no `none`).
        let v = body(&format!(
            r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools},"tool_choice":"none",{format}}}"#
        ));
        assert_eq!(v["toolConfig"]["tools"].as_array().unwrap().len(), 1);
        let v = body(
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
        );
        assert_eq!(v["system"], json!([{ "text": JSON_OBJECT_INSTRUCTION }]));
        assert!(v.get("toolConfig").is_none());
    }

    #[test]
    fn structured_output_answer_and_stream_are_content() {
        let answer = format!(
            r#"{{"output":{{"message":{{"role":"assistant","content":[{{"toolUse":{{"toolUseId":"t1","name":"{STRUCTURED_OUTPUT_TOOL}","input":{{"name":"Ada"}}}}}}]}}}},"stopReason":"tool_use","usage":{{"inputTokens":3,"outputTokens":4,"totalTokens":7}}}}"#
        );
        let mut a = adapter(false);
        let v: Value = serde_json::from_slice(&a.translate_body(200, answer.as_bytes())).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"name":"Ada"}"#);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(a.usage().map(|u| u.total_tokens()), Some(7));

        let mut s = event("messageStart", r#"{"role":"assistant"}"#);
        let start = format!(
            r#"{{"contentBlockIndex":0,"start":{{"toolUse":{{"toolUseId":"t1","name":"{STRUCTURED_OUTPUT_TOOL}"}}}}}}"#
        );
        s.extend(event("contentBlockStart", &start));
        s.extend(event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"name\":"}}}"#));
        s.extend(event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"\"Ada\"}"}}}"#));
        s.extend(event("contentBlockStop", r#"{"contentBlockIndex":0}"#));
        s.extend(event("messageStop", r#"{"stopReason":"tool_use"}"#));
        s.extend(event("metadata", r#"{"usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}"#));
        let ev = events(&assert_split_invariant(ProviderKind::Bedrock, &s));
        assert_eq!(streamed_text(&ev), r#"{"name":"Ada"}"#);
        assert!(ev.iter().all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()));
        assert_eq!(ev[ev.len() - 3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(final_usage(&ev)["total_tokens"], 7);
    }

    #[test]
    fn stream_without_metadata_still_finishes() {
        let mut s = event("messageStart", r#"{"role":"assistant"}"#);
        s.extend(event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#));
        s.extend(event("messageStop", r#"{"stopReason":"max_tokens"}"#));
        let mut a = adapter(true).with_include_usage(true);
        let ev = events(&a.translate_stream(&s, true));
        assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "length");
        assert!(ev[ev.len() - 2]["usage"].is_null(), "no usage chunk when the provider gave none");
        assert_eq!(a.usage(), None);
        let error =
            encode(&[(":message-type", "error"), (":error-code", "InternalFailure"), (":error-message", "boom")], b"");
        let ev = events(&adapter(true).translate_stream(&error, true));
        assert_eq!(ev[0]["error"]["message"], "boom");
    }

    #[test]
    fn corrupt_or_truncated_streams_end_with_an_error() {
        let mut bad = STREAM.to_vec();
        let n = bad.len();
        bad[n - 20] ^= 0xff;
        let ev = events(&adapter(true).translate_stream(&bad, true));
        assert!(ev.iter().any(|e| e["error"]["code"] == "invalid_upstream_response"));
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let ev = events(&adapter(true).translate_stream(&STREAM[..STREAM.len() / 2], true));
        assert!(ev.iter().any(|e| e["error"]["code"] == "incomplete_stream"));
        let ev = events(&adapter(true).translate_stream(b"<html>not an event stream</html>", true));
        assert!(ev.iter().any(|e| e.get("error").is_some()));
    }
}
