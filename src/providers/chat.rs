//! An OpenAI chat-completions request decoded into a provider-neutral form,
//! which the Anthropic, Gemini and Bedrock adapters render. Decoding checks
//! what they rely on and answers a 400 naming the offending field otherwise.

use crate::api::ErrorCode;
use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::request::ParsedRequest;
use crate::api::ApiError;

use super::structured::{JSON_OBJECT_INSTRUCTION, STRUCTURED_OUTPUT_TOOL};
use crate::encoding::{base64, percent_decode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    User,
    Assistant,
}

/// Where an image or file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// From a `data:` URL, always base64 here.
    Base64 { mime: String, data: String },
    /// An `http(s)` (or other) URL, passed by reference.
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Block {
    Text(String),
    Image(Source),
    File {
        source: Source,
        filename: Option<String>,
    },
    /// `input` is the decoded `arguments` (always a JSON object).
    ToolCall {
        id: String,
        name: String,
        input: Value,
    },
    /// An assistant's thinking, with the provider's signature of it.
    Thinking {
        text: String,
        signature: String,
    },
    /// Thinking the provider keeps encrypted.
    RedactedThinking(String),
    /// A prompt-cache breakpoint after the block before it: the client's
    /// `cache_control` (Anthropic's, as the Anthropic-compatible chat
    /// ecosystem carries it on a content part, a message or a tool).
    CachePoint(Value),
    /// `name` is the function named by the matching earlier tool call.
    /// `content` holds only `Text` and `Image` blocks.
    ToolResult {
        id: String,
        name: Option<String>,
        content: Vec<Block>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Turn {
    pub role: Role,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema; `{}` when absent).
    pub parameters: Value,
    /// A prompt-cache breakpoint after this tool (its `cache_control`).
    pub cache: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct JsonSchema {
    pub name: String,
    pub description: Option<String>,
    /// The schema itself (an object).
    pub schema: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ResponseFormat {
    JsonObject,
    JsonSchema(JsonSchema),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Chat {
    /// Texts of system and developer messages, in order.
    pub system: Vec<String>,
    /// Prompt-cache breakpoints after system texts: (index in `system`, `cache_control`).
    pub system_cache: Vec<(usize, Value)>,
    /// The request's own `cache_control` (Anthropic's automatic caching).
    pub cache_control: Option<Value>,
    /// User and assistant turns; consecutive same-role messages merged, tool
    /// results as user turns, empty text dropped.
    pub turns: Vec<Turn>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub n: Option<u32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub stream: bool,
    /// Thinking tokens asked for: `thinking.budget_tokens`, else `reasoning_effort` as a budget
    /// (adaptive thinking: the `medium` level's, for members that take budgets only).
    pub thinking_budget: Option<u32>,
    /// `thinking: {"type": "adaptive"}` (Claude 4.6 and later): the model decides how much.
    pub thinking_adaptive: bool,
    /// `reasoning_effort` as the client named it (`minimal` .. `high`).
    pub reasoning_effort: Option<&'static str>,
    /// Claude's `output_config` (its `effort`): Anthropic and Bedrock Claude members take it.
    pub output_config: Option<Map<String, Value>>,
    /// Anthropic betas the request needs (`anthropic-beta`, an array of strings:
    /// the Messages door's header, or the chat body's).
    pub anthropic_beta: Option<Value>,
}

/// Thinking budgets of the `reasoning_effort` levels (`none` asks for no thinking).
pub(super) const EFFORT_BUDGETS: [(&str, u32); 4] =
    [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 24576)];

/// Adaptive thinking toward a member that takes budgets only: the `medium` level's.
const ADAPTIVE_BUDGET: u32 = 8192;

/// The `reasoning_effort` a thinking budget stands for: the level with the
/// nearest budget at or above it (`high` above all).
pub(super) fn effort_of(budget: u32) -> &'static str {
    EFFORT_BUDGETS.iter().find(|(_, b)| budget <= *b).map_or("high", |(e, _)| e)
}

/// `max_tokens` for a request thinking with `budget`: providers count the
/// thinking in `max_tokens` and refuse one not above the budget, so the
/// budget comes on top of an answer size that does not exceed it.
pub(super) fn max_with_thinking(max_tokens: u32, budget: Option<u32>) -> u32 {
    match budget {
        Some(b) if max_tokens <= b => b.saturating_add(max_tokens),
        _ => max_tokens,
    }
}

impl Chat {
    /// For providers that take a `json_schema` response format as a forced
    /// tool call: the structured-output tool to declare after the client's
    /// tools, and the tool choice to send instead of the client's. `None`
    /// when there is no schema, or when the client requires a call of its
    /// own tools (`required`, or a named function): that call is the answer.
    /// With client tools the model may call them unless the client said
    /// `none`: the choice is then "any tool", else the schema tool.
    pub fn structured_output_tool(&self) -> Option<(Tool, ToolChoice)> {
        let Some(ResponseFormat::JsonSchema(format)) = &self.response_format else {
            return None;
        };
        let choice = match (&self.tool_choice, self.tools.is_empty()) {
            (Some(ToolChoice::Required | ToolChoice::Function(_)), false) => return None,
            (None | Some(ToolChoice::Auto), false) => ToolChoice::Required,
            _ => ToolChoice::Function(STRUCTURED_OUTPUT_TOOL.to_string()),
        };
        let mut description = format!(
            "Give your final answer by calling this tool: its input is the answer, a `{}` object.",
            format.name
        );
        if let Some(d) = &format.description {
            description.push(' ');
            description.push_str(d);
        }
        let tool = Tool {
            name: STRUCTURED_OUTPUT_TOOL.to_string(),
            description: Some(description),
            parameters: format.schema.clone(),
            cache: None,
        };
        Some((tool, choice))
    }

    /// The system texts, with the JSON instruction of a `json_object`
    /// response format last, for providers that have no such format.
    pub fn system_with_json_instruction(&self) -> Vec<&str> {
        let mut system: Vec<&str> = self.system.iter().map(String::as_str).collect();
        if self.response_format == Some(ResponseFormat::JsonObject) {
            system.push(JSON_OBJECT_INSTRUCTION);
        }
        system
    }

    /// True when the conversation contains tool calls or results.
    pub fn has_tool_blocks(&self) -> bool {
        self.turns
            .iter()
            .flat_map(|t| t.blocks.iter())
            .any(|b| matches!(b, Block::ToolCall { .. } | Block::ToolResult { .. }))
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(ErrorCode::InvalidValue, message)
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(ErrorCode::UnsupportedValue, message)
}

fn field<T: DeserializeOwned>(
    req: &ParsedRequest<'_>,
    name: &'static str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    match req.field(name) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Option<T>>(raw.get()).map_err(|_| {
            ApiError::invalid_request(ErrorCode::InvalidType, format!("`{name}` must be {expected}.")).with_param(name)
        }),
    }
}

/// Decodes a `data:` URL into base64 data and its media type; other URLs
/// are kept as references.
pub(super) fn source_from_url(url: &str) -> Result<Source, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(Source::Url(url.to_string()));
    };
    let (meta, payload) = rest.split_once(',').ok_or_else(|| invalid("A `data:` URL has no `,` before its data."))?;
    let mut params = meta.split(';');
    let mime = params.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mime = if mime.is_empty() { "text/plain".to_string() } else { mime };
    let is_base64 = params.any(|p| p.trim().eq_ignore_ascii_case("base64"));
    let data = if is_base64 {
        payload.chars().filter(|c| !c.is_ascii_whitespace()).collect()
    } else {
        base64(&percent_decode(payload))
    };
    Ok(Source::Base64 { mime, data })
}

/// The `cache_control` of a part, message or tool: an object (Anthropic checks the rest).
fn cache_control(v: &Value, at: &str) -> Result<Option<Value>, ApiError> {
    match v.get("cache_control") {
        None | Some(Value::Null) => Ok(None),
        Some(c @ Value::Object(_)) => Ok(Some(c.clone())),
        Some(_) => Err(invalid(format!("`{at}.cache_control` must be an object, e.g. {{\"type\": \"ephemeral\"}}."))),
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// Decodes `arguments` (a JSON string) into the object providers want.
pub(super) fn arguments_object(arguments: &Value) -> Value {
    let parsed = match arguments {
        Value::String(s) if s.trim().is_empty() => return Value::Object(Map::new()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => v,
            Err(_) => return serde_json::json!({ "arguments": s }),
        },
        Value::Null => return Value::Object(Map::new()),
        other => other.clone(),
    };
    match parsed {
        Value::Object(_) => parsed,
        other => serde_json::json!({ "arguments": other }),
    }
}

/// Content parts of a message: text, images, files.
fn content_blocks(content: &Value, at: &str, allow_media: bool) -> Result<Vec<Block>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Block::Text(s.clone())]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                let at = format!("{at}[{i}]");
                let kind = str_of(part, "type").ok_or_else(|| invalid(format!("`{at}.type` must be a string.")))?;
                let cache = cache_control(part, &at)?;
                match kind {
                    "text" | "input_text" | "refusal" => {
                        let key = if kind == "refusal" { "refusal" } else { "text" };
                        let text =
                            str_of(part, key).ok_or_else(|| invalid(format!("`{at}.{key}` must be a string.")))?;
                        out.push(Block::Text(text.to_string()));
                    }
                    "image_url" if allow_media => {
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(obj) => str_of(obj, "url").unwrap_or_default(),
                            None => "",
                        };
                        if url.is_empty() {
                            return Err(invalid(format!("`{at}.image_url.url` must be a non-empty string.")));
                        }
                        out.push(Block::Image(source_from_url(url)?));
                    }
                    "file" if allow_media => {
                        let file = part.get("file").unwrap_or(&Value::Null);
                        let filename = str_of(file, "filename").map(str::to_string);
                        match (str_of(file, "file_data"), str_of(file, "file_id")) {
                            (Some(data), _) => {
                                let source = if data.starts_with("data:") {
                                    source_from_url(data)?
                                } else {
                                    // Bare base64; the media type follows from the file name.
                                    let mime = filename.as_deref().map(mime_from_name).unwrap_or("application/pdf");
                                    Source::Base64 { mime: mime.to_string(), data: data.to_string() }
                                };
                                out.push(Block::File { source, filename });
                            }
                            (None, Some(_)) => {
                                return Err(unsupported(format!(
                                    "`{at}.file.file_id` refers to an OpenAI file, which this provider cannot read; send `file_data` instead."
                                )))
                            }
                            (None, None) => return Err(invalid(format!("`{at}.file` needs `file_data`."))),
                        }
                    }
                    "image_url" | "file" => {
                        return Err(unsupported(format!("`{at}`: {kind} parts are only allowed in user messages.")))
                    }
                    other => {
                        return Err(unsupported(format!(
                            "`{at}`: content parts of type `{other}` are not supported by this provider."
                        )))
                    }
                }
                out.extend(cache.map(Block::CachePoint));
            }
            Ok(out)
        }
        _ => Err(invalid(format!("`{at}` must be a string or an array of content parts."))),
    }
}

/// A media type guessed from a file name or URL path (its extension).
pub(super) fn mime_from_name(name: &str) -> &'static str {
    let path = name.split(['?', '#']).next().unwrap_or_default();
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// A system message's text into `system`, cut at its cache breakpoints
/// (each marked text ends one entry; `cache` applies to the whole message).
fn system_texts(content: &Value, at: &str, cache: Option<Value>, chat: &mut Chat) -> Result<(), ApiError> {
    let mut text = String::new();
    let mut blocks = content_blocks(content, at, false)?;
    blocks.extend(cache.map(Block::CachePoint));
    for block in blocks {
        match block {
            Block::Text(t) if t.is_empty() => {}
            Block::Text(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&t);
            }
            Block::CachePoint(c) if !text.is_empty() => {
                chat.system.push(std::mem::take(&mut text));
                chat.system_cache.push((chat.system.len() - 1, c));
            }
            Block::CachePoint(c) => {
                if let Some(last) = chat.system.len().checked_sub(1) {
                    chat.system_cache.push((last, c));
                }
            }
            _ => {}
        }
    }
    if !text.is_empty() {
        chat.system.push(text);
    }
    Ok(())
}

fn push_turn(turns: &mut Vec<Turn>, role: Role, blocks: Vec<Block>) {
    let blocks: Vec<Block> = blocks.into_iter().filter(|b| !matches!(b, Block::Text(t) if t.is_empty())).collect();
    // A breakpoint needs a block before it in its turn.
    let marks_only = blocks.iter().all(|b| matches!(b, Block::CachePoint(_)));
    if marks_only && turns.last().is_none_or(|t| t.role != role) {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

/// The messages into `chat`'s system texts and turns.
fn parse_messages(raw: &str, chat: &mut Chat) -> Result<(), ApiError> {
    let messages: Vec<Value> = serde_json::from_str(raw)
        .map_err(|_| ApiError::invalid_request(ErrorCode::InvalidType, "`messages` must be an array of objects."))?;
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        if !message.is_object() {
            return Err(invalid(format!("`{at}` must be an object.")));
        }
        let role = str_of(message, "role").ok_or_else(|| invalid(format!("`{at}.role` must be a string.")))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        // A message's own `cache_control` marks its end (LiteLLM's form).
        let cache = cache_control(message, &at)?;
        match role {
            "system" | "developer" => system_texts(content, &content_at, cache, chat)?,
            "user" => {
                let mut blocks = content_blocks(content, &content_at, true)?;
                blocks.extend(cache.map(Block::CachePoint));
                push_turn(&mut turns, Role::User, blocks)
            }
            "assistant" => {
                // Thinking first: providers want it before the text and calls it led to.
                let mut blocks = Vec::new();
                thinking_blocks(message, &at, &mut blocks)?;
                blocks.extend(content_blocks(content, &content_at, false)?);
                match message.get("tool_calls") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(calls)) => {
                        for (j, call) in calls.iter().enumerate() {
                            let at = format!("{at}.tool_calls[{j}]");
                            let id = str_of(call, "id").filter(|s| !s.is_empty()).ok_or_else(|| invalid(format!("`{at}.id` must be a non-empty string.")))?;
                            let function = call.get("function").ok_or_else(|| invalid(format!("`{at}.function` is required.")))?;
                            let name = str_of(function, "name").filter(|s| !s.is_empty()).ok_or_else(|| invalid(format!("`{at}.function.name` must be a non-empty string.")))?;
                            let input = arguments_object(function.get("arguments").unwrap_or(&Value::Null));
                            call_names.insert(id.to_string(), name.to_string());
                            blocks.push(Block::ToolCall { id: id.to_string(), name: name.to_string(), input });
                        }
                    }
                    Some(_) => return Err(invalid(format!("`{at}.tool_calls` must be an array."))),
                }
                blocks.extend(cache.map(Block::CachePoint));
                push_turn(&mut turns, Role::Assistant, blocks);
            }
            "tool" => {
                let id = str_of(message, "tool_call_id").filter(|s| !s.is_empty()).ok_or_else(|| invalid(format!("`{at}.tool_call_id` must be a non-empty string.")))?;
                // Anthropic takes a breakpoint on the result, not inside it.
                let (mut inner, mut kept) = (None, Vec::new());
                for block in content_blocks(content, &content_at, true)? {
                    match block {
                        Block::CachePoint(c) => inner = Some(c),
                        Block::Text(_) | Block::Image(_) => kept.push(block),
                        _ => {}
                    }
                }
                let (cache, content) = (cache.or(inner), kept);
                let name = call_names.get(id).cloned();
                // Pushed directly: an empty result still answers its call.
                let mut blocks = vec![Block::ToolResult { id: id.to_string(), name, content }];
                blocks.extend(cache.map(Block::CachePoint));
                match turns.last_mut() {
                    Some(last) if last.role == Role::User => last.blocks.append(&mut blocks),
                    _ => turns.push(Turn { role: Role::User, blocks }),
                }
            }
            "function" => {
                return Err(unsupported(format!(
                    "`{at}`: the legacy `function` role is not supported by this provider; use `tools` and `tool` messages."
                )))
            }
            other => return Err(invalid(format!("`{at}.role` `{other}` is not one of system, developer, user, assistant, tool."))),
        }
    }
    chat.turns = turns;
    Ok(())
}

fn parse_tools(raw: &str) -> Result<Vec<Tool>, ApiError> {
    let tools: Vec<Value> = serde_json::from_str(raw)
        .map_err(|_| ApiError::invalid_request(ErrorCode::InvalidType, "`tools` must be an array of objects."))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        match str_of(tool, "type") {
            Some("function") | None => {}
            Some(other) => {
                return Err(unsupported(format!(
                    "`{at}.type` `{other}` is not supported by this provider; only `function` tools are."
                )))
            }
        }
        let function = tool.get("function").ok_or_else(|| invalid(format!("`{at}.function` is required.")))?;
        let name = str_of(function, "name")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("`{at}.function.name` must be a non-empty string.")))?;
        if name == STRUCTURED_OUTPUT_TOOL {
            return Err(invalid(format!(
                "`{at}.function.name` `{name}` is reserved by the gateway for structured outputs on this provider."
            ))
            .with_param("tools"));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(invalid(format!("`{at}.function.parameters` must be a JSON schema object."))),
        };
        out.push(Tool {
            name: name.to_string(),
            description: str_of(function, "description").filter(|d| !d.is_empty()).map(str::to_string),
            parameters,
            cache: cache_control(tool, &at)?,
        });
    }
    Ok(out)
}

/// The function name of a tool reference (`{"type":"function","function":{"name"}}` or `{"name"}`).
fn function_name(v: &Value) -> Option<&str> {
    v.get("function").and_then(|f| str_of(f, "name")).or_else(|| str_of(v, "name")).filter(|n| !n.is_empty())
}

/// A tool choice, and for `allowed_tools` the names of the tools the model may call.
fn parse_tool_choice(value: &Value) -> Result<(Option<ToolChoice>, Option<Vec<String>>), ApiError> {
    let bad = || {
        unsupported("`tool_choice` must be \"none\", \"auto\", \"required\", {\"type\":\"function\",\"function\":{\"name\":...}} or {\"type\":\"allowed_tools\",...} (a custom or built-in tool's choice has no form for this model).")
            .with_param("tool_choice")
    };
    match value {
        Value::Null => Ok((None, None)),
        Value::String(s) => match s.as_str() {
            "auto" => Ok((Some(ToolChoice::Auto), None)),
            "none" => Ok((Some(ToolChoice::None), None)),
            "required" | "any" => Ok((Some(ToolChoice::Required), None)),
            _ => Err(bad()),
        },
        Value::Object(o) => match (o.get("type").and_then(Value::as_str), function_name(value)) {
            (Some("function"), Some(n)) => Ok((Some(ToolChoice::Function(n.to_string())), None)),
            // The model may call only these: the other tools are not declared to it.
            (Some("allowed_tools"), _) => {
                let allowed = o.get("allowed_tools").unwrap_or(value);
                let choice = match str_of(allowed, "mode") {
                    None | Some("auto") => ToolChoice::Auto,
                    Some("required") => ToolChoice::Required,
                    Some(_) => return Err(bad()),
                };
                let mut names = Vec::new();
                for tool in allowed.get("tools").and_then(Value::as_array).ok_or_else(bad)? {
                    names.push(function_name(tool).ok_or_else(bad)?.to_string());
                }
                Ok((Some(choice), Some(names)))
            }
            // A custom or built-in tool's choice: no translated kind has it.
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn parse_response_format(value: &Value) -> Result<Option<ResponseFormat>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
            Some("json_schema") => {
                let format = o.get("json_schema").unwrap_or(&Value::Null);
                let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
                    // A schema-less json_schema format still asks for JSON.
                    return Ok(Some(ResponseFormat::JsonObject));
                };
                let name = str_of(format, "name").filter(|n| !n.is_empty()).unwrap_or("response");
                Ok(Some(ResponseFormat::JsonSchema(JsonSchema {
                    name: name.to_string(),
                    description: str_of(format, "description").filter(|d| !d.is_empty()).map(str::to_string),
                    schema: schema.clone(),
                })))
            }
            _ => Err(invalid("`response_format.type` must be text, json_object or json_schema.")),
        },
        _ => Err(invalid("`response_format` must be an object.")),
    }
}

/// True when the client asked for usage in its stream
/// (`stream_options.include_usage`): what the host passes to
/// `ResponseAdapter::with_include_usage`.
pub fn stream_include_usage(req: &ParsedRequest<'_>) -> bool {
    let options = req.field("stream_options").and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    options.and_then(|o| o.get("include_usage").and_then(Value::as_bool)).unwrap_or(false)
}

/// The thinking budget of `thinking` (`{"type":"enabled","budget_tokens":N}`;
/// `disabled` for none; `adaptive`, flagged, the budget of the `reasoning_effort`
/// `level` when given, else the `medium` level's), else of the `effort` the
/// client named (a 400 when it is not a level).
fn thinking_budget(
    req: &ParsedRequest<'_>,
    effort: Option<&str>,
    level: Option<(&str, u32)>,
) -> Result<(Option<u32>, bool), ApiError> {
    let bad = |name: &'static str, what: &str| invalid(format!("`{name}` must be {what}.")).with_param(name);
    if let Some(t) = field::<Value>(req, "thinking", "an object")? {
        return match (str_of(&t, "type"), t.get("budget_tokens").and_then(Value::as_u64)) {
            (Some("disabled"), _) => Ok((None, false)),
            (Some("enabled"), Some(b)) if b >= 1024 => Ok((Some(b.min(u64::from(u32::MAX)) as u32), false)),
            (Some("adaptive"), _) => Ok((Some(level.map_or(ADAPTIVE_BUDGET, |(_, b)| b)), true)),
            _ => Err(bad(
                "thinking",
                "{\"type\": \"enabled\", \"budget_tokens\": N >= 1024}, {\"type\": \"adaptive\"} or {\"type\": \"disabled\"}",
            )),
        };
    }
    match (effort, level) {
        (None | Some("none"), _) => Ok((None, false)),
        (Some(_), Some((_, b))) => Ok((Some(b), false)),
        (Some(_), None) => Err(bad("reasoning_effort", "one of none, minimal, low, medium, high")),
    }
}

/// `anthropic-beta`: the names of Anthropic betas (an array of strings; `None` when empty).
fn anthropic_beta(req: &ParsedRequest<'_>) -> Result<Option<Value>, ApiError> {
    let Some(raw) = req.field("anthropic-beta") else { return Ok(None) };
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Some(Value::Array(items))),
        _ => Err(invalid("`anthropic-beta` must be an array of strings.").with_param("anthropic-beta")),
    }
}

/// An assistant message's `thinking_blocks` (what the gateway's answers
/// carry): `thinking` with its `signature`, `redacted_thinking` with `data`.
fn thinking_blocks(message: &Value, at: &str, blocks: &mut Vec<Block>) -> Result<(), ApiError> {
    let Some(list) = message.get("thinking_blocks").filter(|v| !v.is_null()) else { return Ok(()) };
    for (k, b) in list.as_array().into_iter().flatten().enumerate() {
        if b.get("cache_control").is_some_and(|c| !c.is_null()) {
            // Anthropic refuses it (thinking is cached with the turn around it).
            let message = format!("`{at}.thinking_blocks[{k}].cache_control`: a thinking block cannot carry `cache_control`; put the breakpoint on another part of the turn.");
            return Err(invalid(message).with_param(ApiError::PARAM_IN_MESSAGE));
        }
        let text = |key| str_of(b, key).unwrap_or_default().to_string();
        blocks.push(match str_of(b, "type") {
            Some("thinking") => Block::Thinking { text: text("thinking"), signature: text("signature") },
            Some("redacted_thinking") => Block::RedactedThinking(text("data")),
            _ => {
                return Err(invalid(format!("`{at}.thinking_blocks[{k}].type` must be thinking or redacted_thinking.")))
            }
        });
    }
    if !list.is_array() {
        return Err(invalid(format!("`{at}.thinking_blocks` must be an array.")));
    }
    Ok(())
}

/// Decodes the chat-completions request.
pub(super) fn parse(req: &ParsedRequest<'_>) -> Result<Chat, ApiError> {
    let mut chat = Chat::default();
    match req.field("messages") {
        Some(raw) => parse_messages(raw.get(), &mut chat)?,
        None => {
            return Err(ApiError::invalid_request(
                ErrorCode::MissingRequiredParameter,
                "Missing required parameter: `messages`.",
            )
            .with_param("messages"))
        }
    };
    let max_completion = field::<u32>(req, "max_completion_tokens", "a positive integer")?;
    let max_tokens = max_completion.or(field::<u32>(req, "max_tokens", "a positive integer")?);
    if max_tokens == Some(0) {
        return Err(invalid("`max_tokens` must be at least 1."));
    }
    let stop = match field::<Value>(req, "stop", "a string or an array of strings")? {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid_request(
                    ErrorCode::InvalidType,
                    "`stop` must be a string or an array of strings.",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid_request(
                ErrorCode::InvalidType,
                "`stop` must be a string or an array of strings.",
            ))
        }
    };
    let mut tools = match req.field("tools") {
        Some(raw) if raw.get() != "null" => parse_tools(raw.get())?,
        _ => Vec::new(),
    };
    let (tool_choice, allowed) = match field::<Value>(req, "tool_choice", "a string or an object")? {
        Some(v) => parse_tool_choice(&v)?,
        None => (None, None),
    };
    // The names the choice allows: each must be declared.
    let named = match (&tool_choice, &allowed) {
        (Some(ToolChoice::Function(name)), _) => std::slice::from_ref(name),
        (_, Some(allowed)) => allowed.as_slice(),
        _ => &[],
    };
    if let Some(name) = named.iter().find(|n| !tools.iter().any(|t| &t.name == *n)) {
        return Err(invalid(format!("`tool_choice` names function `{name}`, which is not in `tools`."))
            .with_param("tool_choice"));
    }
    if let Some(allowed) = allowed {
        tools.retain(|t| allowed.contains(&t.name));
    }
    let response_format = match field::<Value>(req, "response_format", "an object")? {
        Some(v) => parse_response_format(&v)?,
        None => None,
    };
    // Read once: the thinking's budget and Claude's effort both come from it.
    let effort = field::<String>(req, "reasoning_effort", "a string")?;
    let level = effort.as_deref().and_then(|e| EFFORT_BUDGETS.iter().find(|(name, _)| *name == e).copied());
    let (thinking_budget, thinking_adaptive) = thinking_budget(req, effort.as_deref(), level)?;
    let reasoning_effort = level.map(|(name, _)| name);
    let output_config = match field::<Value>(req, "output_config", "an object")? {
        Some(Value::Object(c)) => Some(c),
        None | Some(Value::Null) => None,
        Some(_) => return Err(invalid("`output_config` must be an object.".to_string()).with_param("output_config")),
    };
    Ok(Chat {
        cache_control: match field::<Value>(req, "cache_control", "an object")? {
            Some(Value::Object(c)) => Some(Value::Object(c)),
            None => None,
            Some(_) => return Err(invalid("`cache_control` must be an object.").with_param("cache_control")),
        },
        max_tokens,
        temperature: field(req, "temperature", "a number")?,
        top_p: field(req, "top_p", "a number")?,
        top_k: field(req, "top_k", "a positive integer")?,
        stop,
        n: field(req, "n", "a positive integer")?,
        seed: field(req, "seed", "an integer")?,
        presence_penalty: field(req, "presence_penalty", "a number")?,
        frequency_penalty: field(req, "frequency_penalty", "a number")?,
        tools,
        tool_choice,
        parallel_tool_calls: field(req, "parallel_tool_calls", "a boolean")?,
        user: field::<String>(req, "user", "a string")?.filter(|u| !u.is_empty()),
        response_format,
        stream: req.stream,
        thinking_budget,
        thinking_adaptive,
        reasoning_effort,
        output_config,
        anthropic_beta: anthropic_beta(req)?,
        ..chat
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Endpoint;
    use serde_json::json;

    pub(crate) fn chat(body: &Value) -> Result<Chat, ApiError> {
        let text = body.to_string();
        // Token limits are refused by the request parse already.
        let req = ParsedRequest::parse(text.as_bytes(), Endpoint::ChatCompletions)?;
        parse(&req)
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            source_from_url("data:image/PNG;base64,iVBO Rw0=").unwrap(),
            Source::Base64 { mime: "image/png".into(), data: "iVBORw0=".into() }
        );
        assert_eq!(
            source_from_url("data:,a%20b").unwrap(),
            Source::Base64 { mime: "text/plain".into(), data: base64(b"a b") }
        );
        assert_eq!(source_from_url("https://x/y.png").unwrap(), Source::Url("https://x/y.png".into()));
        assert!(source_from_url("data:image/png;base64").is_err());
    }

    #[test]
    fn conversation_is_normalised() {
        let c = chat(&json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
                {"role": "user", "content": ""},
                {"role": "assistant", "content": "done"}
            ],
            "stop": "END", "max_completion_tokens": 7, "user": "u1"
        }))
        .unwrap();
        assert_eq!(c.system, vec!["be brief", "and kind"]);
        assert_eq!(c.turns.len(), 4);
        assert_eq!(c.turns[0].blocks.len(), 3);
        assert_eq!(c.turns[1].blocks[0], Block::ToolCall { id: "c1".into(), name: "f".into(), input: json!({"a": 1}) });
        assert_eq!(c.turns[1].blocks[1], Block::ToolCall { id: "c2".into(), name: "g".into(), input: json!({}) });
        assert_eq!(
            c.turns[2].blocks,
            vec![
                Block::ToolResult { id: "c1".into(), name: Some("f".into()), content: vec![Block::Text("one".into())] },
                Block::ToolResult { id: "c2".into(), name: Some("g".into()), content: vec![Block::Text("two".into())] },
            ]
        );
        assert_eq!(c.turns[3].role, Role::Assistant);
        assert_eq!(c.stop, vec!["END"]);
        assert_eq!(c.max_tokens, Some(7));
        assert_eq!(c.user.as_deref(), Some("u1"));
        assert!(c.has_tool_blocks());
    }

    #[test]
    fn arguments_become_objects() {
        assert_eq!(arguments_object(&json!("{\"x\":[1]}")), json!({"x": [1]}));
        assert_eq!(arguments_object(&json!("  ")), json!({}));
        assert_eq!(arguments_object(&json!("not json")), json!({"arguments": "not json"}));
        assert_eq!(arguments_object(&json!("[1]")), json!({"arguments": [1]}));
        assert_eq!(arguments_object(&json!({"y": 2})), json!({"y": 2}));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (json!({"model": "m", "messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
                "tool_calls[0].id",
            ),
            (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), "tool_call_id"),
            (json!({"model": "m", "messages": [], "tools": [{"type": "web_search"}]}), "tools[0].type"),
            (json!({"model": "m", "messages": [], "tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"model": "m", "messages": [], "tools": [], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "nope",
            ),
            (json!({"model": "m", "messages": [], "temperature": "hot"}), "temperature"),
            (json!({"model": "m", "messages": [], "stop": [1]}), "stop"),
            (json!({"model": "m", "messages": [], "max_tokens": 0}), "max_tokens"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]}),
                "file_id",
            ),
        ];
        for (body, needle) in cases {
            let e = chat(&body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn include_usage_is_read_from_stream_options() {
        let asks = |body: &str| {
            stream_include_usage(&ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap())
        };
        assert!(asks(r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#));
        assert!(!asks(r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}"#));
        assert!(!asks(r#"{"model":"m","messages":[],"stream":true,"stream_options":null}"#));
        assert!(!asks(r#"{"model":"m","messages":[],"stream":true}"#));
    }

    #[test]
    fn structured_output_tool_name_is_reserved() {
        let e = chat(&json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": STRUCTURED_OUTPUT_TOOL}}]}))
            .unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("tools")));
        assert!(e.message.contains("reserved"));
    }

    #[test]
    fn json_schema_format_keeps_name_and_description() {
        let c = chat(&json!({"model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "P", "description": "d", "schema": {"type": "object"}}}})).unwrap();
        assert_eq!(
            c.response_format,
            Some(ResponseFormat::JsonSchema(JsonSchema {
                name: "P".into(),
                description: Some("d".into()),
                schema: json!({"type": "object"})
            }))
        );
        let c = chat(&json!({"model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "P"}}})).unwrap();
        assert_eq!(c.response_format, Some(ResponseFormat::JsonObject));
    }

    #[test]
    fn mistyped_top_level_fields_set_param() {
        let e = chat(&json!({"model": "m", "messages": [], "temperature": "hot"})).unwrap_err();
        assert_eq!((e.code.as_str(), e.param), ("invalid_type", Some("temperature")));
    }

    #[test]
    fn tool_choice_forms() {
        let base = |tc: Value| json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": tc});
        assert_eq!(chat(&base(json!("required"))).unwrap().tool_choice, Some(ToolChoice::Required));
        assert_eq!(chat(&base(json!("none"))).unwrap().tool_choice, Some(ToolChoice::None));
        assert_eq!(
            chat(&base(json!({"type": "function", "function": {"name": "f"}}))).unwrap().tool_choice,
            Some(ToolChoice::Function("f".into()))
        );
        let c = chat(&base(Value::Null)).unwrap();
        assert_eq!(c.tool_choice, None);
        assert_eq!(c.tools[0].parameters, json!({"type": "object", "properties": {}}));
        // allowed_tools: only those tools are declared (chat's form, and the Responses door's).
        let tools =
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]);
        let allowed = |tc: Value| chat(&json!({"model": "m", "messages": [], "tools": tools, "tool_choice": tc}));
        let c = allowed(json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "g"}}]}})).unwrap();
        assert_eq!((c.tool_choice, c.tools.len(), c.tools[0].name.as_str()), (Some(ToolChoice::Required), 1, "g"));
        let c = allowed(json!({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]}))
            .unwrap();
        assert_eq!((c.tool_choice, c.tools.len()), (Some(ToolChoice::Auto), 1));
        for refused in [
            json!({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "h"}]}),
            json!({"type": "custom", "custom": {"name": "f"}}),
            json!({"type": "allowed_tools", "mode": "sometimes", "tools": []}),
        ] {
            assert_eq!(allowed(refused.clone()).unwrap_err().param(), Some("tool_choice"), "{refused}");
        }
    }
}
