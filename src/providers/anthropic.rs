//! Anthropic Messages API (`POST {base_path}/messages`): request
//! translation, and answers (JSON or SSE) back into OpenAI's shape.

use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use serde_json::{json, Map, Value};

use crate::api::error::ErrorType;
use crate::api::model_rules::{claude_adaptive_only, claude_version};
use crate::api::ApiError;
use crate::config::{Credentials, Provider, ProviderKind};

use super::adapter::{Adapter, SseEvents, SseStream, StreamState, Target};
use super::chat::{effort_of, max_with_thinking, Block, Chat, Role, Source, ToolChoice};
use super::emit::Emitter;
use super::json_text;
use super::openai_out::{Answer, Choice, Meta, ToolCall};
use super::structured::STRUCTURED_OUTPUT_TOOL;
use super::upstream::{BuildContext, UpstreamRequest};
use super::upstream_error::{invalid_answer, parse_answer, NO_MESSAGE, NO_STREAM_MESSAGE};

/// The Anthropic Messages API adapter.
#[derive(Debug)]
pub(super) struct Anthropic;

/// `max_tokens` when neither the request nor the pool sets one (Anthropic requires it).
pub(super) const DEFAULT_MAX_TOKENS: u32 = 4096;

fn source_json(source: &Source) -> Value {
    match source {
        Source::Base64 { mime, data } => json!({"type": "base64", "media_type": mime, "data": data}),
        Source::Url(url) => json!({"type": "url", "url": url}),
    }
}

fn block_json(block: &Block, at: &str) -> Result<Value, ApiError> {
    Ok(match block {
        Block::Text(text) => json!({"type": "text", "text": text}),
        Block::Image(source) => json!({"type": "image", "source": source_json(source)}),
        Block::File { source, .. } => match source {
            Source::Base64 { mime, .. } if mime != "application/pdf" => {
                return Err(ApiError::invalid_request(
                    ErrorCode::UnsupportedValue,
                    format!("{at}: files of type {mime} are not supported by Anthropic; send PDF files or text."),
                ))
            }
            _ => json!({"type": "document", "source": source_json(source)}),
        },
        Block::ToolCall { id, name, input } => json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        Block::Thinking { text, signature } => json!({"type": "thinking", "thinking": text, "signature": signature}),
        Block::RedactedThinking(data) => json!({"type": "redacted_thinking", "data": data}),
        // Set on the block before it by `blocks_json`.
        Block::CachePoint(_) => Value::Null,
        Block::ToolResult { id, content, .. } => {
            let content: Value = match content.as_slice() {
                [] => json!(""),
                [Block::Text(t)] => json!(t),
                blocks => Value::Array(blocks.iter().map(|b| block_json(b, at)).collect::<Result<_, _>>()?),
            };
            json!({"type": "tool_result", "tool_use_id": id, "content": content})
        }
    })
}

/// A turn's blocks, each cache breakpoint as the `cache_control` of the block before it.
fn blocks_json(blocks: &[Block], at: &str) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::with_capacity(blocks.len());
    for block in blocks {
        match (block, out.last_mut()) {
            (Block::CachePoint(c), Some(Value::Object(last))) => {
                last.insert("cache_control".into(), c.clone());
            }
            (Block::CachePoint(_), _) => {}
            _ => out.push(block_json(block, at)?),
        }
    }
    Ok(out)
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn usage_of(u: &Value) -> Tokens {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cache_read_input_tokens"), n("cache_creation_input_tokens"));
    let tokens = Tokens::new(n("input_tokens") + read + write, n("output_tokens"));
    Tokens { cached: Some(read), cache_write: Some(write), ..tokens }.without_zero_cache()
}

/// Claude's `thinking` for what `chat` asks, and the `output_config.effort`
/// it needs: adaptive thinking as asked on Claude 4.6 and later (at the
/// client's `reasoning_effort`, if any); on a model that thinks adaptively
/// only (`adaptive_only`: Opus 4.7 and later), adaptive thinking at the
/// budget's effort level, its text summarized (it is omitted there by
/// default, which would leave `reasoning_content` empty); else a budget.
pub(super) fn claude_thinking(
    adaptive_only: bool,
    model: &str,
    chat: &Chat,
    budget: u32,
) -> (Value, Option<&'static str>) {
    let effort = |level: &'static str| if level == "minimal" { "low" } else { level };
    if chat.thinking_adaptive && (adaptive_only || claude_version(model).is_some_and(|v| v >= (4, 6))) {
        return (json!({"type": "adaptive"}), chat.reasoning_effort.map(effort));
    }
    if !adaptive_only {
        return (json!({"type": "enabled", "budget_tokens": budget}), None);
    }
    (json!({"type": "adaptive", "display": "summarized"}), Some(effort(effort_of(budget))))
}

/// The sampling a Claude model takes: none on one that refuses it
/// (`adaptive_only`: routing let it be dropped), else the client's
/// temperature, top_p and top_k.
pub(super) fn claude_sampling(adaptive_only: bool, chat: &Chat) -> (Option<f64>, Option<f64>, Option<u32>) {
    if adaptive_only {
        (None, None, None)
    } else {
        (chat.temperature, chat.top_p, chat.top_k)
    }
}

/// Claude's `output_config`: the client's, with the thinking's effort unless it set one.
pub(super) fn claude_output_config(chat: &Chat, effort: Option<&str>) -> Option<Value> {
    let mut config = chat.output_config.clone().unwrap_or_default();
    if let Some(e) = effort {
        config.entry("effort").or_insert_with(|| json!(e));
    }
    (!config.is_empty()).then_some(Value::Object(config))
}

/// `POST {base_path}/messages` with the gateway's key and `anthropic-version`;
/// an uncompressed answer, since the gateway reads it (translation, usage).
pub(super) fn messages_request(provider: &Provider, body: Vec<u8>) -> UpstreamRequest {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("anthropic-version", provider.anthropic_version.clone()),
        ("accept-encoding", "identity".to_string()),
    ];
    if let Credentials::ApiKey(key) = &provider.credentials {
        headers.push(("x-api-key", key.expose().to_string()));
    }
    UpstreamRequest {
        path: format!("{}/messages", provider.base_path),
        authority: provider.host.clone(),
        headers,
        body,
    }
}

impl Adapter for Anthropic {
    /// The Messages API body for `chat`.
    fn body(&self, chat: &Chat, model: &str, ctx: &BuildContext) -> Result<Value, ApiError> {
        let mut messages = Vec::with_capacity(chat.turns.len());
        for (i, turn) in chat.turns.iter().enumerate() {
            let at = format!("messages (turn {i})");
            let content = blocks_json(&turn.blocks, &at)?;
            let role = match turn.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": content}));
        }
        let mut out = Map::new();
        out.insert("model".into(), json!(model));
        out.insert("messages".into(), Value::Array(messages));
        let max_tokens = chat.max_tokens.or(ctx.max_response_tokens).unwrap_or(DEFAULT_MAX_TOKENS);
        out.insert("max_tokens".into(), json!(max_with_thinking(max_tokens, chat.thinking_budget)));
        let adaptive = claude_adaptive_only(ProviderKind::Anthropic, model);
        let mut effort = None;
        if let Some(budget) = chat.thinking_budget {
            let thinking;
            (thinking, effort) = claude_thinking(adaptive, model, chat, budget);
            out.insert("thinking".into(), thinking);
        }
        if let Some(c) = claude_output_config(chat, effort) {
            out.insert("output_config".into(), c);
        }
        let system = chat.system_with_json_instruction();
        if !chat.system_cache.is_empty() {
            // Text blocks, to carry the client's cache breakpoints.
            let mut blocks = Vec::with_capacity(system.len());
            for (i, text) in system.iter().enumerate() {
                let mut block = Map::new();
                block.insert("type".into(), json!("text"));
                block.insert("text".into(), json!(text));
                if let Some((_, c)) = chat.system_cache.iter().find(|(at, _)| *at == i) {
                    block.insert("cache_control".into(), c.clone());
                }
                blocks.push(Value::Object(block));
            }
            out.insert("system".into(), Value::Array(blocks));
        } else if !system.is_empty() {
            out.insert("system".into(), json!(system.join("\n\n")));
        }
        if let Some(c) = &chat.cache_control {
            out.insert("cache_control".into(), c.clone());
        }
        let (temperature, top_p, top_k) = claude_sampling(adaptive, chat);
        // Anthropic's range is 0..=1 (OpenAI's 0..=2).
        if let Some(t) = temperature {
            out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
        // Recent Claude models refuse temperature and top_p together; a neutral
        // top_p of 1 is dropped when a temperature is set.
        if let Some(p) = top_p {
            if !(temperature.is_some() && p >= 1.0) {
                out.insert("top_p".into(), json!(p));
            }
        }
        if let Some(k) = top_k {
            out.insert("top_k".into(), json!(k));
        }
        if !chat.stop.is_empty() {
            out.insert("stop_sequences".into(), json!(chat.stop));
        }
        if chat.stream {
            out.insert("stream".into(), json!(true));
        }
        if let Some(user) = &chat.user {
            out.insert("metadata".into(), json!({ "user_id": user }));
        }
        // A json_schema format is one more tool, forced by the tool choice.
        let structured = chat.structured_output_tool();
        let (extra_tool, forced) = structured.map_or((None, None), |(tool, choice)| (Some(tool), Some(choice)));
        let tool_choice = forced.as_ref().or(chat.tool_choice.as_ref());
        if !chat.tools.is_empty() || extra_tool.is_some() {
            let tools: Vec<Value> = chat
                .tools
                .iter()
                .chain(extra_tool.as_ref())
                .map(|t| {
                    let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                    if let Some(obj) = tool.as_object_mut() {
                        if let Some(d) = &t.description {
                            obj.insert("description".into(), json!(d));
                        }
                        if let Some(c) = &t.cache {
                            obj.insert("cache_control".into(), c.clone());
                        }
                    }
                    tool
                })
                .collect();
            out.insert("tools".into(), Value::Array(tools));
            let mut choice = match tool_choice {
                None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
                Some(ToolChoice::None) => json!({"type": "none"}),
                Some(ToolChoice::Required) => json!({"type": "any"}),
                Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
            };
            // One answer: the forced schema tool is called once.
            let forced_schema = matches!(tool_choice, Some(ToolChoice::Function(n)) if n == STRUCTURED_OUTPUT_TOOL);
            let serial = chat.parallel_tool_calls == Some(false) || forced_schema;
            if serial && tool_choice != Some(&ToolChoice::None) {
                if let Some(obj) = choice.as_object_mut() {
                    obj.insert("disable_parallel_tool_use".into(), json!(true));
                }
            }
            if tool_choice.is_some() || serial {
                out.insert("tool_choice".into(), choice);
            }
        }
        Ok(Value::Object(out))
    }

    fn request(&self, to: &Target<'_>, body: Vec<u8>) -> Result<UpstreamRequest, ApiError> {
        let mut request = messages_request(to.provider, body);
        if let Some(Value::Array(betas)) = &to.chat.anthropic_beta {
            let mut header = String::new();
            for beta in betas.iter().filter_map(Value::as_str) {
                if !header.is_empty() {
                    header.push(',');
                }
                header.push_str(beta);
            }
            request.headers.push(("anthropic-beta", header));
        }
        Ok(request)
    }

    /// A complete Messages API answer; `Err` holds an OpenAI error body when
    /// the answer is an error or cannot be read.
    fn completion(&self, body: &[u8]) -> Result<Answer, Vec<u8>> {
        let v = parse_answer("Anthropic", body)?;
        if v.get("type").and_then(Value::as_str) == Some("error") {
            return Err(self.error_body(500, body));
        }
        let Some(blocks) = v.get("content").and_then(Value::as_array) else {
            return Err(invalid_answer("Anthropic", "no `content` array"));
        };
        let mut choice = Choice { index: 0, finish_reason: "stop", ..Choice::default() };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => choice.text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("thinking") => {
                    choice.reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or_default());
                    choice.thinking_blocks.push(block.clone());
                }
                Some("redacted_thinking") => choice.thinking_blocks.push(block.clone()),
                Some("tool_use") => choice.tool_calls.push(ToolCall {
                    id: block.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                    name: block.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    arguments: block.get("input").map(json_text).unwrap_or_else(|| "{}".to_string()),
                }),
                _ => {}
            }
        }
        choice.finish_reason = v.get("stop_reason").and_then(Value::as_str).map(finish_reason).unwrap_or("stop");
        Ok(Answer {
            id: v.get("id").and_then(Value::as_str).map(str::to_string),
            choices: vec![choice],
            usage: v.get("usage").map(usage_of),
        })
    }

    /// The `error` of `{"type":"error","error":{"type","message"}}`.
    fn find_error<'v>(&self, v: &'v Value) -> Option<(&'v str, &'v str)> {
        let err = v.get("error").filter(|e| e.is_object())?;
        let kind = err.get("type").and_then(Value::as_str).unwrap_or_default();
        Some((kind, err.get("message").and_then(Value::as_str).unwrap_or(NO_MESSAGE)))
    }

    /// OpenAI error `type` for an Anthropic error `type`.
    fn error_type(&self, kind: &str, status: u16) -> ErrorType {
        match kind {
            "invalid_request_error" | "not_found_error" | "request_too_large" => ErrorType::InvalidRequest,
            "authentication_error" => ErrorType::Authentication,
            "permission_error" => ErrorType::Permission,
            "rate_limit_error" => ErrorType::RateLimit,
            "api_error" | "overloaded_error" | "timeout_error" => ErrorType::Server,
            _ => ErrorType::for_status(status),
        }
    }

    fn stream(&self, meta: Meta, include_usage: bool) -> Box<dyn StreamState> {
        Box::new(SseStream::new(meta, include_usage, Events::default()))
    }
}

/// Translation state of one Anthropic SSE stream.
#[derive(Debug, Default)]
struct Events {
    /// Content-block index → OpenAI tool-call index, for tool_use blocks.
    tool_blocks: Vec<(u64, u32)>,
    usage: Tokens,
}

impl SseEvents for Events {
    fn event(&mut self, em: &mut Emitter, v: &Value, out: &mut Vec<u8>) {
        let index = |v: &Value| v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let message = v.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    em.meta.id = id.to_string();
                }
                if let Some(u) = message.get("usage") {
                    self.usage = usage_of(u);
                    em.usage = Some(self.usage);
                }
                em.start(out, 0);
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => em.text(out, 0, block.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("tool_use") => {
                        let tool_index = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((index(v), tool_index));
                        let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                        let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                        // `input` is `{}` here; the arguments follow as input_json_delta.
                        em.tool_start(out, 0, tool_index, id, name, "");
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let text = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => em.text(out, 0, text("text")),
                    Some("thinking_delta") => em.reasoning(out, 0, text("thinking")),
                    Some("input_json_delta") => {
                        let block = index(v);
                        if let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|(b, _)| *b == block) {
                            em.tool_arguments(out, 0, tool_index, text("partial_json"));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    let later = usage_of(u);
                    // message_delta carries cumulative output (and sometimes input) counts.
                    self.usage.completion = later.completion;
                    if later.prompt > 0 {
                        self.usage.prompt = later.prompt;
                        self.usage.cached = later.cached.or(self.usage.cached);
                        self.usage.cache_write = later.cache_write.or(self.usage.cache_write);
                    }
                    em.usage = Some(self.usage);
                }
                if let Some(reason) = v.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
                    em.finish(out, 0, finish_reason(reason));
                }
            }
            "message_stop" => em.finish(out, 0, "stop"),
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                let kind = err.get("type").and_then(Value::as_str).unwrap_or("api_error");
                let message = err.get("message").and_then(Value::as_str).unwrap_or(NO_STREAM_MESSAGE);
                em.error(out, message, Anthropic.error_type(kind, 500), kind);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::ProviderKind;
    use crate::providers::structured::JSON_OBJECT_INSTRUCTION;
    use crate::providers::test_support::{assert_split_invariant, events, final_usage, streamed_text};
    use crate::providers::test_support::{build_for, provider};
    use crate::providers::ResponseAdapter;

    const REQUEST: &str = include_str!("../../tests/fixtures/providers/anthropic/request.json");
    const REQUEST_EXPECTED: &str = include_str!("../../tests/fixtures/providers/anthropic/request.expected.json");
    const RESPONSE: &str = include_str!("../../tests/fixtures/providers/anthropic/response.json");
    const RESPONSE_TOOLS: &str = include_str!("../../tests/fixtures/providers/anthropic/response_tool_use.json");
    const STREAM: &str = include_str!("../../tests/fixtures/providers/anthropic/stream.txt");
    const STREAM_TOOLS: &str = include_str!("../../tests/fixtures/providers/anthropic/stream_tool_use.txt");

    fn adapter(stream: bool) -> ResponseAdapter {
        ResponseAdapter::new(ProviderKind::Anthropic, Endpoint::ChatCompletions, stream, "claude-x").unwrap()
    }

    #[test]
    fn request_translation_matches_fixture() {
        let p = provider(ProviderKind::Anthropic);
        let up = build_for(&p, "claude-sonnet-4-5", REQUEST, Some(2048)).unwrap();
        assert_eq!(up.path, "/v1/messages");
        assert_eq!(up.authority, "api.example.com");
        assert!(up.headers.contains(&("x-api-key", "sk-test".to_string())));
        assert!(up.headers.contains(&("anthropic-version", "2023-06-01".to_string())));
        assert!(up.headers.contains(&("content-type", "application/json".to_string())));
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        let want: Value = serde_json::from_str(REQUEST_EXPECTED).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn max_tokens_defaults_and_sampling_rules() {
        let p = provider(ProviderKind::Anthropic);
        let body = |req: &str, pool: Option<u32>| -> Value {
            serde_json::from_slice(&build_for(&p, "c", req, pool).unwrap().body).unwrap()
        };
        let req = r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":1.7,"top_p":1}"#;
        let v = body(req, None);
        assert_eq!(v["max_tokens"], 4096);
        assert_eq!(v["temperature"], 1.0);
        assert!(v.get("top_p").is_none());
        assert!(v.get("tool_choice").is_none());
        assert_eq!(body(req, Some(100))["max_tokens"], 100);
        let req =
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":9,"top_p":0.5,"stream":true}"#;
        let v = body(req, Some(100));
        assert_eq!(v["max_tokens"], 9);
        assert_eq!(v["top_p"], 0.5);
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn tool_choice_mapping() {
        let p = provider(ProviderKind::Anthropic);
        let choice = |tc: &str, parallel: &str| -> Value {
            let req = format!(
                r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object"}}}}}}],"tool_choice":{tc}{parallel}}}"#
            );
            let v: Value = serde_json::from_slice(&build_for(&p, "c", &req, None).unwrap().body).unwrap();
            v["tool_choice"].clone()
        };
        assert_eq!(choice("\"auto\"", ""), json!({"type": "auto"}));
        assert_eq!(choice("\"none\"", ""), json!({"type": "none"}));
        assert_eq!(choice("\"required\"", ""), json!({"type": "any"}));
        assert_eq!(choice(r#"{"type":"function","function":{"name":"f"}}"#, ""), json!({"type": "tool", "name": "f"}));
        assert_eq!(
            choice("\"auto\"", r#","parallel_tool_calls":false"#),
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
    }

    const SCHEMA_FORMAT: &str = r#""response_format":{"type":"json_schema","json_schema":{"name":"Person","description":"Who it is.","strict":true,"schema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],"additionalProperties":false}}}"#;

    fn anthropic_body(req: &str) -> Value {
        serde_json::from_slice(&build_for(&provider(ProviderKind::Anthropic), "c", req, None).unwrap().body).unwrap()
    }

    #[test]
    fn json_schema_format_is_a_forced_tool() {
        let v = anthropic_body(&format!(
            r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{SCHEMA_FORMAT}}}"#
        ));
        assert_eq!(
            v["tools"],
            json!([{
                "name": STRUCTURED_OUTPUT_TOOL,
                "description": "Give your final answer by calling this tool: its input is the answer, a `Person` object. Who it is.",
                "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}
            }])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL, "disable_parallel_tool_use": true})
        );
        assert!(v.get("system").is_none());
    }

    #[test]
    fn json_schema_format_with_client_tools() {
        let tools = r#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#;
        let with = |choice: &str| {
            anthropic_body(&format!(
                r#"{{"model":"x","messages":[{{"role":"user","content":"hi"}}],{tools},{SCHEMA_FORMAT}{choice}}}"#
            ))
        };
        let names = |v: &Value| -> Vec<String> {
            v["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
        };
        // The model may call the client's tools or answer through the schema tool.
        let v = with("");
        assert_eq!(names(&v), ["f", STRUCTURED_OUTPUT_TOOL]);
        assert_eq!(v["tool_choice"], json!({"type": "any"}));
        let v = with(r#","tool_choice":"none""#);
        assert_eq!(names(&v), ["f", STRUCTURED_OUTPUT_TOOL]);
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL, "disable_parallel_tool_use": true})
        );
        // A call of the client's tools is required: that call is the answer.
        let v = with(r#","tool_choice":"required""#);
        assert_eq!(names(&v), ["f"]);
        assert_eq!(v["tool_choice"], json!({"type": "any"}));
        let v = with(r#","tool_choice":{"type":"function","function":{"name":"f"}}"#);
        assert_eq!(names(&v), ["f"]);
    }

    #[test]
    fn json_object_format_is_a_system_instruction() {
        let v = anthropic_body(
            r#"{"model":"x","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
        );
        assert_eq!(v["system"], format!("Be brief.\n\n{JSON_OBJECT_INSTRUCTION}"));
        assert!(v.get("tools").is_none());
    }

    #[test]
    fn structured_output_answer_is_content() {
        let body = format!(
            r#"{{"id":"msg_1","type":"message","role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"{STRUCTURED_OUTPUT_TOOL}","input":{{"name":"Ada"}}}}],"stop_reason":"tool_use","usage":{{"input_tokens":5,"output_tokens":7}}}}"#
        );
        let mut a = adapter(false);
        let v: Value = serde_json::from_slice(&a.translate_body(200, body.as_bytes())).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], r#"{"name":"Ada"}"#);
        assert!(message.get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(a.usage().map(|u| (u.prompt, u.completion, u.total_tokens())), Some((5, 7, 12)));
    }

    #[test]
    fn structured_output_stream_is_content() {
        let name = STRUCTURED_OUTPUT_TOOL;
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"usage\":{{\"input_tokens\":5,\"output_tokens\":1}}}}}}\n\n\
             event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"{name}\",\"input\":{{}}}}}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{{\\\"name\\\": \"}}}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Ada\\\"}}\"}}}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"tool_use\"}},\"usage\":{{\"output_tokens\":7}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let out = assert_split_invariant(ProviderKind::Anthropic, stream.as_bytes());
        let ev = events(&out);
        assert_eq!(streamed_text(&ev), r#"{"name": "Ada"}"#);
        assert!(ev.iter().all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()), "{ev:?}");
        assert_eq!(ev[ev.len() - 3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(final_usage(&ev)["total_tokens"], 12);
    }

    #[test]
    fn response_translation() {
        let v: Value =
            serde_json::from_slice(&adapter(false).with_created(7).translate_body(200, RESPONSE.as_bytes())).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "object": "chat.completion",
                "created": 7,
                "model": "claude-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2095, "completion_tokens": 12, "total_tokens": 2107, "prompt_tokens_details": {"cached_tokens": 2000}}
            })
        );
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, RESPONSE_TOOLS.as_bytes())).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], "I'll check the weather.");
        assert_eq!(
            message["tool_calls"],
            json!([{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"}}])
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn errors_become_openai_errors() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(529, body)).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
        );
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let v: Value = serde_json::from_slice(&adapter(true).translate_body(429, body)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v: Value =
            serde_json::from_slice(&adapter(false).translate_body(502, b"<html>bad gateway</html>")).unwrap();
        assert_eq!(v["error"]["code"], "bad_gateway");
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, b"{\"nope\":1}")).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
        let v: Value = serde_json::from_slice(&adapter(false).translate_body(200, b"\xff\xfe")).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
    }

    #[test]
    fn stream_translation_at_every_split() {
        let out = assert_split_invariant(ProviderKind::Anthropic, STREAM.as_bytes());
        let ev = events(&out);
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(ev[0]["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(streamed_text(&ev), "Hello, wörld! 🌍");
        let finish = &ev[ev.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(final_usage(&ev), &json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}));
        assert_eq!(ev[ev.len() - 1], "[DONE]");
        assert!(ev.iter().all(|e| e.get("error").is_none()));
    }

    #[test]
    fn stream_with_tool_use() {
        let out = assert_split_invariant(ProviderKind::Anthropic, STREAM_TOOLS.as_bytes());
        let ev = events(&out);
        assert_eq!(streamed_text(&ev), "Okay, let's check the weather for San Francisco, CA:");
        let calls: Vec<&Value> = ev.iter().filter_map(|e| e["choices"][0]["delta"].get("tool_calls")).collect();
        assert_eq!(
            calls[0][0],
            json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
        );
        let args: String = calls[1..].iter().map(|c| c[0]["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(args, "{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}");
        assert!(calls[1..].iter().all(|c| c[0]["index"] == 0 && c[0].get("id").is_none()));
        let finish = &ev[ev.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(final_usage(&ev)["completion_tokens"], 89);
    }

    #[test]
    fn stream_error_event() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let out = adapter(true).translate_stream(stream.as_bytes(), true);
        let ev = events(&out);
        assert_eq!(
            ev[ev.len() - 2],
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
        );
        assert_eq!(ev[ev.len() - 1], "[DONE]");
        assert_eq!(ev.iter().filter(|e| e.get("error").is_some()).count(), 1);
    }

    #[test]
    fn garbage_stream_is_an_error_not_a_panic() {
        for input in
            [&b"data: {not json\n\n"[..], b"\xff\xfe\x00garbage", b"", b"event: ping\ndata: {\"type\":\"ping\"}\n\n"]
        {
            let out = adapter(true).translate_stream(input, true);
            let ev = events(&out);
            assert!(ev[0].get("error").is_some(), "{input:?}");
            assert_eq!(ev.last().unwrap(), "[DONE]");
        }
    }
}
