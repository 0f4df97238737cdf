//! Anthropic Messages API door: requests to Chat Completions bodies, OpenAI
//! answers, streams and errors back to Anthropic's shapes.
//!
//! Translation notes (the subset a non-Anthropic member can honour):
//! - `tool_result` blocks become `role: "tool"` messages placed before the rest
//!   of their user turn; `is_error: true` prefixes the content with `Error: `
//!   (OpenAI has no flag); images inside a tool result follow in a user message.
//! - `cache_control` becomes the chat field the Anthropic-compatible ecosystem
//!   uses: on content parts (system ones too), on a tool, and on the `tool`
//!   message of a `tool_result`; an assistant block's moves to its message.
//! - Server tools (`web_search_*`, `bash_*`, `text_editor_*`, ...), `document`
//!   blocks and other block types are refused here (`unsupported_feature`):
//!   `Door::to_chat` then keeps the request on Anthropic members, which get it as it is.
//! - `stop_reason: stop_sequence` is reported when the server names the matched
//!   stop string (vLLM's `choices[].stop_reason`); otherwise a stop is `end_turn`.

use serde_json::{json, Map, Value};

use super::with_cache_control as cached;
use super::{copy_number, copy_stream, door_id, first_choice, obj, parse_object, push_sse, to_bytes, DoorError};
use super::{DoorStream, StreamPart, StreamProgress};
use crate::api::usage::Tokens;

/// Betas (`anthropic-beta`, matched by their name before the date) whose
/// absence changes nothing a translated member is asked: they name the client
/// or its credentials, enable what is generally available or what the
/// gateway translates anyway, or only enable a request field the translator
/// keeps on Anthropic members. Every other beta is the chat parameter
/// `anthropic-beta`: Anthropic and Bedrock's Claude models take it, other
/// members refuse it (docs/parameters.md).
pub const HARMLESS_BETAS: [&str; 12] = [
    "claude-code-",
    "oauth-",
    "prompt-caching-",
    "extended-cache-ttl-",
    "token-counting-",
    "interleaved-thinking-",
    "fine-grained-tool-streaming-",
    "files-api-",
    "pdfs-",
    "mcp-client-",
    "code-execution-",
    "context-management-",
];

/// The betas of an `anthropic-beta` header a translated member must honour.
fn meaningful_betas(header: &str) -> Vec<Value> {
    let mut betas = Vec::new();
    for beta in header.split(',').map(str::trim) {
        if !beta.is_empty() && !HARMLESS_BETAS.iter().any(|h| beta.starts_with(h)) {
            betas.push(Value::String(beta.to_string()));
        }
    }
    betas
}

/// Anthropic request -> OpenAI Chat Completions body (the `model` is kept
/// as is); `beta` is the request's `anthropic-beta` header.
pub fn to_chat(body: &[u8], beta: Option<&str>) -> Result<Vec<u8>, DoorError> {
    let req = parse_object(body)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model_of(&req)?.to_string()));
    // Before the messages: a request only native members serve still needs a valid one.
    let max_tokens = match req.get("max_tokens") {
        Some(v @ Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=u64::from(u32::MAX)).contains(&n)) => v.clone(),
        None | Some(Value::Null) => return Err(DoorError::invalid("max_tokens", "Field required")),
        // `Door::to_chat` says precisely why.
        Some(_) => return Err(DoorError::invalid("max_tokens", "must be an integer >= 1")),
    };
    let messages = chat_messages(&req)?;
    out.insert("messages".into(), Value::Array(messages));
    out.insert("max_tokens".into(), max_tokens);
    copy_number(&req, "temperature", &mut out, "temperature")?;
    copy_number(&req, "top_p", &mut out, "top_p")?;
    match req.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            if !items.is_empty() {
                out.insert("stop".into(), Value::Array(items.clone()));
            }
        }
        Some(_) => return Err(DoorError::invalid("stop_sequences", "must be an array of strings")),
    }
    copy_stream(&req, &mut out)?;
    let has_tools = translate_tools(&req, &mut out)?;
    translate_tool_choice(&req, has_tools, &mut out)?;
    if let Some(user) = req.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), Value::String(user.to_string()));
    }
    translate_output_config(&req, &mut out)?;
    super::carry(&req, super::MESSAGES_PARAMS, &mut out)?;
    let betas = beta.map(meaningful_betas).unwrap_or_default();
    if !betas.is_empty() {
        out.insert("anthropic-beta".into(), Value::Array(betas));
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// `output_config`: its `format` (structured outputs) is chat's `response_format`;
/// its `effort` is the depth of adaptive thinking (chat `reasoning_effort`, which
/// every kind takes) when the request thinks adaptively, else it stays Claude's
/// `output_config.effort` (the effort of the whole answer), which only Claude
/// members take: others are routed around or refuse it unless it is dropped.
fn translate_output_config(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), DoorError> {
    let config = match req.get("output_config") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(DoorError::invalid("output_config", "must be an object")),
    };
    let adaptive = req.get("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) == Some("adaptive");
    let mut rest = Map::new();
    for (key, value) in config.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "format" => match (value.get("type").and_then(Value::as_str), value.get("schema")) {
                (Some("json_schema"), Some(schema @ Value::Object(_))) => {
                    let format = obj! {"type": "json_schema", "json_schema": obj! {"name": "output", "schema": schema.clone(), "strict": true}};
                    out.insert("response_format".into(), format);
                }
                _ => {
                    return Err(DoorError::invalid(
                        "output_config.format",
                        "must be {\"type\": \"json_schema\", \"schema\": {...}}",
                    ))
                }
            },
            "effort" => {
                let effort = value.as_str().filter(|e| ["low", "medium", "high", "xhigh", "max"].contains(e));
                let Some(effort) = effort else {
                    return Err(DoorError::invalid(
                        "output_config.effort",
                        "must be one of low, medium, high, xhigh, max",
                    ));
                };
                if adaptive {
                    // The chat levels end at `high`.
                    let level = if matches!(effort, "xhigh" | "max") { "high" } else { effort };
                    out.insert("reasoning_effort".into(), Value::String(level.to_string()));
                } else {
                    rest.insert(key.clone(), value.clone());
                }
            }
            _ => {
                rest.insert(key.clone(), value.clone());
            }
        }
    }
    if !rest.is_empty() {
        out.insert("output_config".into(), Value::Object(rest));
    }
    Ok(())
}

fn model_of(req: &Map<String, Value>) -> Result<&str, DoorError> {
    match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        None | Some(Value::Null) => Err(DoorError::invalid("model", "Field required")),
        Some(_) => Err(DoorError::invalid("model", "must be a non-empty string")),
    }
}

/// Content of the system message: `system` as a string (text blocks joined
/// by newlines), or text parts when a block carries `cache_control`.
fn system_text(req: &Map<String, Value>) -> Result<Option<Value>, DoorError> {
    match req.get("system") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty()).map(Value::String)),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                match (block.as_object(), block.get("type").and_then(Value::as_str), block.get("text")) {
                    (Some(b), Some("text"), Some(Value::String(t))) => {
                        texts.push(t.as_str());
                        parts.push(cached(b, obj! {"type": "text", "text": t.as_str()}));
                    }
                    _ => return Err(DoorError::invalid(format!("system[{i}]"), "must be a text block")),
                }
            }
            if blocks.iter().any(|b| b.get("cache_control").is_some_and(|c| !c.is_null())) {
                return Ok(Some(Value::Array(parts)));
            }
            Ok(Some(texts.join("\n")).filter(|s| !s.is_empty()).map(Value::String))
        }
        Some(_) => Err(DoorError::invalid("system", "must be a string or an array of text blocks")),
    }
}

fn chat_messages(req: &Map<String, Value>) -> Result<Vec<Value>, DoorError> {
    let mut out = Vec::new();
    if let Some(system) = system_text(req)? {
        out.push(obj! {"role": "system", "content": system});
    }
    let messages = match req.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => return Err(DoorError::invalid("messages", "Field required")),
        Some(_) => return Err(DoorError::invalid("messages", "must be an array")),
    };
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(message) = message.as_object() else {
            return Err(DoorError::invalid(at, "must be an object"));
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => return Err(DoorError::invalid(format!("{at}.role"), "must be `user` or `assistant`")),
        };
        match message.get("content") {
            Some(Value::String(text)) => out.push(obj! {"role": role, "content": text.as_str()}),
            Some(Value::Array(blocks)) if role == "user" => user_blocks(blocks, &at, &mut out)?,
            Some(Value::Array(blocks)) => out.push(assistant_blocks(blocks, &at)?),
            _ => {
                return Err(DoorError::invalid(format!("{at}.content"), "must be a string or an array of blocks"));
            }
        }
    }
    Ok(out)
}

/// An image block's URL: base64 sources become `data:` URLs.
fn image_url(block: &Map<String, Value>, at: &str) -> Result<String, DoorError> {
    let source = block.get("source").and_then(Value::as_object);
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let field = |name: &str| source.and_then(|s| s.get(name)).and_then(Value::as_str);
    match kind {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(media), Some(data)) => Ok(format!("data:{media};base64,{data}")),
            _ => Err(DoorError::invalid(format!("{at}.source"), "base64 sources need `media_type` and `data`")),
        },
        Some("url") => match field("url") {
            Some(url) => Ok(url.to_string()),
            None => Err(DoorError::invalid(format!("{at}.source.url"), "Field required")),
        },
        Some(other) => Err(DoorError::unsupported(
            format!("{at}.source.type"),
            format!("image source `{other}` is not supported; use `base64` or `url`"),
        )),
        None => Err(DoorError::invalid(format!("{at}.source"), "must be an object with a `type`")),
    }
}

fn block_type<'a>(block: &'a Value, at: &str) -> Result<(&'a Map<String, Value>, &'a str), DoorError> {
    let map = block.as_object().ok_or_else(|| DoorError::invalid(at, "must be an object"))?;
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| DoorError::invalid(format!("{at}.type"), "Field required"))?;
    Ok((map, kind))
}

fn text_of<'a>(block: &'a Map<String, Value>, at: &str) -> Result<&'a str, DoorError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| DoorError::invalid(format!("{at}.text"), "must be a string"))
}

fn unsupported_block(at: &str, kind: &str) -> DoorError {
    DoorError::unsupported(
        format!("{at}.type"),
        format!("content block `{kind}` is not supported by the gateway's translation for this model"),
    )
}

fn user_blocks(blocks: &[Value], at: &str, out: &mut Vec<Value>) -> Result<(), DoorError> {
    let mut parts = Vec::new();
    let mut tool_images = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let (block, kind) = block_type(block, &at)?;
        match kind {
            "text" => parts.push(cached(block, obj! {"type": "text", "text": text_of(block, &at)?})),
            "image" => {
                parts.push(cached(block, obj! {"type": "image_url", "image_url": obj! {"url": image_url(block, &at)?}}))
            }
            "tool_result" => out.push(cached(block, tool_message(block, &at, &mut tool_images)?)),
            // Extended thinking history has no OpenAI equivalent.
            "thinking" | "redacted_thinking" => {}
            other => return Err(unsupported_block(&at, other)),
        }
    }
    tool_images.extend(parts);
    match tool_images.as_slice() {
        [] => {}
        [only] if only.get("type").and_then(Value::as_str) == Some("text") && only.get("cache_control").is_none() => {
            out.push(obj! {"role": "user", "content": only.get("text").cloned().unwrap_or_default()});
        }
        _ => out.push(obj! {"role": "user", "content": tool_images}),
    }
    Ok(())
}

fn tool_message(block: &Map<String, Value>, at: &str, images: &mut Vec<Value>) -> Result<Value, DoorError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| DoorError::invalid(format!("{at}.tool_use_id"), "Field required"))?;
    let mut text = String::new();
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(items)) => {
            for (k, item) in items.iter().enumerate() {
                let at = format!("{at}.content[{k}]");
                let (item, kind) = block_type(item, &at)?;
                match kind {
                    "text" => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(text_of(item, &at)?);
                    }
                    "image" => {
                        images.push(obj! {"type": "image_url", "image_url": obj! {"url": image_url(item, &at)?}})
                    }
                    other => return Err(unsupported_block(&at, other)),
                }
            }
        }
        Some(_) => return Err(DoorError::invalid(format!("{at}.content"), "must be a string or an array of blocks")),
    }
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        text.insert_str(0, "Error: ");
    }
    Ok(obj! {"role": "tool", "tool_call_id": id, "content": text})
}

fn assistant_blocks(blocks: &[Value], at: &str) -> Result<Value, DoorError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    // The message's content is one string: a block's breakpoint marks the message's end.
    let mut cache = Map::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let (block, kind) = block_type(block, &at)?;
        if let Some(c) = block.get("cache_control").filter(|c| !c.is_null()) {
            if matches!(kind, "thinking" | "redacted_thinking") {
                return Err(thinking_cache_control(&at));
            }
            cache.insert("cache_control".into(), c.clone());
        }
        match kind {
            "text" => text.push_str(text_of(block, &at)?),
            "tool_use" => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(DoorError::invalid(at, "tool_use blocks need `id` and `name`"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                let arguments = String::from_utf8(to_bytes(&input)).unwrap_or_default();
                calls
                    .push(obj! {"id": id, "type": "function", "function": obj! {"name": name, "arguments": arguments}});
            }
            // Carried with their signatures: an Anthropic member of a later turn needs them back.
            "thinking" | "redacted_thinking" => thinking.push(Value::Object(block.clone())),
            other => return Err(unsupported_block(&at, other)),
        }
    }
    let mut message = Map::new();
    if !thinking.is_empty() {
        message.insert("thinking_blocks".into(), Value::Array(thinking));
    }
    message.insert("role".into(), Value::String("assistant".into()));
    message
        .insert("content".into(), if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) });
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(cached(&cache, Value::Object(message)))
}

/// Anthropic refuses a cache breakpoint on a thinking block (thinking is
/// cached with the turn around it): refused here, before any member, whatever serves it.
pub(crate) fn thinking_cache_control(at: &str) -> DoorError {
    DoorError::invalid(
        format!("{at}.cache_control"),
        "a thinking block cannot carry `cache_control`; put the breakpoint on another block of the turn",
    )
}

fn translate_tools(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<bool, DoorError> {
    let tools = match req.get("tools") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(DoorError::invalid("tools", "must be an array")),
    };
    let mut functions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool = tool.as_object().ok_or_else(|| DoorError::invalid(at.clone(), "must be an object"))?;
        let kind = tool.get("type").and_then(Value::as_str);
        if kind.is_some_and(|k| k != "custom") && !tool.contains_key("input_schema") {
            return Err(DoorError::unsupported(
                format!("{at}.type"),
                format!("server tool `{}` needs an Anthropic model", kind.unwrap_or_default()),
            ));
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| DoorError::invalid(format!("{at}.name"), "Field required"))?;
        let schema = match tool.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => return Err(DoorError::invalid(format!("{at}.input_schema"), "must be a JSON schema object")),
        };
        let mut function = Map::new();
        function.insert("name".into(), Value::String(name.to_string()));
        if let Some(d) = tool.get("description").and_then(Value::as_str) {
            function.insert("description".into(), Value::String(d.to_string()));
        }
        function.insert("parameters".into(), schema);
        functions.push(cached(tool, obj! {"type": "function", "function": function}));
    }
    let any = !functions.is_empty();
    if any {
        out.insert("tools".into(), Value::Array(functions));
    }
    Ok(any)
}

fn translate_tool_choice(
    req: &Map<String, Value>,
    has_tools: bool,
    out: &mut Map<String, Value>,
) -> Result<(), DoorError> {
    let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) else { return Ok(()) };
    let kind = choice.get("type").and_then(Value::as_str);
    let openai = match kind {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => obj! {"type": "function", "function": obj! {"name": name}},
            None => return Err(DoorError::invalid("tool_choice.name", "Field required")),
        },
        _ => return Err(DoorError::invalid("tool_choice.type", "must be one of `auto`, `any`, `tool`, `none`")),
    };
    if !has_tools {
        // OpenAI refuses a tool_choice without tools; Anthropic accepts it.
        return Ok(());
    }
    out.insert("tool_choice".into(), openai);
    if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish: &str, stop_string: Option<&str>) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ if stop_string.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

/// Anthropic usage from OpenAI usage: Anthropic's `input_tokens` exclude cache reads and writes.
fn usage_json(usage: Tokens) -> Value {
    obj! {
        "input_tokens": usage.uncached_prompt(),
        "output_tokens": usage.completion,
        "cache_read_input_tokens": usage.cached.unwrap_or(0),
        "cache_creation_input_tokens": usage.cache_write.unwrap_or(0),
    }
}

/// Tool arguments (a JSON string) as the `input` object Anthropic clients expect.
fn parse_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// OpenAI `chat.completion` -> Anthropic `message`, naming the model the
/// answer names (`model`, the name the client asked for, when it names none).
/// An unreadable answer gives an Anthropic `api_error` body.
pub fn from_chat_completion(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return anthropic_error("api_error", "The upstream answer was not valid JSON.");
    };
    let Some(choice) = first_choice(&answer) else {
        return anthropic_error("api_error", "The upstream answer had no choices.");
    };
    let message = choice.get("message");
    let mut content = super::thinking_of(message);
    let field = |name: &str| message.and_then(|m| m.get(name)).and_then(Value::as_str).filter(|t| !t.is_empty());
    if let Some(text) = field("content").or_else(|| field("refusal")) {
        content.push(obj! {"type": "text", "text": text});
    }
    let calls = message.and_then(|m| m.get("tool_calls")).and_then(Value::as_array);
    for (i, call) in calls.into_iter().flatten().enumerate() {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
        let arguments = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
        let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("toolu_{i}"), str::to_string);
        content.push(obj! {"type": "tool_use", "id": id, "name": name, "input": parse_input(arguments)});
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let stop_string = choice.get("stop_reason").and_then(Value::as_str);
    let reason = stop_reason(finish, stop_string);
    let usage = Tokens::from_json(answer.get("usage")).unwrap_or_default();
    let id = door_id("msg_", answer.get("id").and_then(Value::as_str));
    to_bytes(&obj! {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": super::served_model(&answer, model),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": if reason == "stop_sequence" { stop_string } else { None },
        "usage": usage_json(usage),
    })
}

/// Anthropic error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        s if (400..500).contains(&s) => "invalid_request_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type":..., "message":...}}`.
pub(crate) fn anthropic_error(kind: &str, message: &str) -> Vec<u8> {
    to_bytes(&obj! {"type": "error", "error": obj! {"type": kind, "message": message}})
}

/// An OpenAI error body (the gateway's or a provider's, of HTTP `status`) in Anthropic's error shape.
pub fn error_body(status: u16, openai_error_json: &[u8]) -> Vec<u8> {
    let parsed = serde_json::from_slice::<Value>(openai_error_json).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("Upstream error (HTTP {status})."));
    anthropic_error(error_type(status), &message)
}

/// Per-message overhead of the token estimate (role and framing).
const TOKENS_PER_MESSAGE: u64 = 4;
/// Cost of one image: Anthropic's ceiling for a 1.15-megapixel image (about w*h/750).
const TOKENS_PER_IMAGE: u64 = 1600;

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` from an estimate:
/// one token per 4 bytes (rounded up) of every text (system, text blocks, tool
/// inputs and results, tool definitions as JSON), plus 4 per message and 1600
/// per image. The request is validated like `to_chat` (`max_tokens` not needed).
pub fn count_tokens(body: &[u8]) -> Result<Vec<u8>, DoorError> {
    let req = parse_object(body)?;
    model_of(&req)?;
    let messages = chat_messages(&req)?;
    let mut bytes: u64 = 0;
    let mut overhead: u64 = 0;
    for message in &messages {
        overhead += TOKENS_PER_MESSAGE;
        match message.get("content") {
            Some(Value::String(s)) => bytes += s.len() as u64,
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(t) => bytes += t.len() as u64,
                        None => overhead += TOKENS_PER_IMAGE,
                    }
                }
            }
            _ => {}
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let function = call.get("function");
            for key in ["name", "arguments"] {
                bytes += function.and_then(|f| f.get(key)).and_then(Value::as_str).map_or(0, str::len) as u64;
            }
        }
    }
    let mut tools = Map::new();
    translate_tools(&req, &mut tools)?;
    if let Some(t) = tools.get("tools") {
        bytes += to_bytes(t).len() as u64;
    }
    let input_tokens = bytes.div_ceil(4) + overhead;
    Ok(to_bytes(&obj! {"input_tokens": input_tokens}))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    /// A tool_use block fed by the OpenAI tool call of this `index`.
    Tool(u64),
}

/// OpenAI `chat.completion.chunk` SSE -> Anthropic SSE events, chunk by chunk.
#[derive(Debug)]
pub struct MessagesStream {
    progress: StreamProgress,
    model: String,
    started: bool,
    open: OpenBlock,
    next_index: u64,
    usage: Tokens,
}

impl MessagesStream {
    /// `model` is the name the client asked for, echoed in `message_start`.
    pub fn new(model: &str) -> Self {
        MessagesStream {
            progress: StreamProgress::default(),
            model: model.to_string(),
            started: false,
            open: OpenBlock::None,
            next_index: 0,
            usage: Tokens::default(),
        }
    }

    /// Translates the next piece of the OpenAI stream; `end_of_stream` closes the
    /// Anthropic stream (an upstream stream that ends without a `finish_reason`
    /// or `[DONE]` ends with an `error` event, not a false `message_stop`).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        self.translate(chunk, end_of_stream)
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = obj! {
            "id": door_id("msg_", id),
            "type": "message",
            "role": "assistant",
            "model": self.model.as_str(),
            "content": Value::Array(Vec::new()),
            "stop_reason": Value::Null,
            "stop_sequence": Value::Null,
            "usage": obj! {"input_tokens": 0, "output_tokens": 0},
        };
        push_sse(out, "message_start", &obj! {"type": "message_start", "message": message});
    }

    fn open_block(&mut self, block: OpenBlock, content: Value, out: &mut Vec<u8>) {
        self.open = block;
        let event = obj! {"type": "content_block_start", "index": self.next_index, "content_block": content};
        push_sse(out, "content_block_start", &event);
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        let event = obj! {"type": "content_block_delta", "index": self.next_index, "delta": delta};
        push_sse(out, "content_block_delta", &event);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open == OpenBlock::None {
            return;
        }
        self.open = OpenBlock::None;
        push_sse(out, "content_block_stop", &obj! {"type": "content_block_stop", "index": self.next_index});
        self.next_index += 1;
    }

    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.progress.finished = true;
        let event = obj! {"type": "error", "error": obj! {"type": kind, "message": message}};
        push_sse(out, "error", &event);
    }
}

impl DoorStream for MessagesStream {
    fn progress(&mut self) -> &mut StreamProgress {
        &mut self.progress
    }
    fn fail_incomplete(&mut self, out: &mut Vec<u8>) {
        self.fail("api_error", "The upstream stream ended before the answer was complete.", out);
    }
    fn part(&mut self, part: StreamPart, out: &mut Vec<u8>) {
        match part {
            StreamPart::Start { id, model } => {
                if let Some(model) = model {
                    self.model = model;
                }
                self.start(id.as_deref(), out)
            }
            StreamPart::Text(text) => {
                self.start(None, out);
                if self.open != OpenBlock::Text {
                    self.close_block(out);
                    self.open_block(OpenBlock::Text, obj! {"type": "text", "text": ""}, out);
                }
                let delta = obj! {"type": "text_delta", "text": text};
                self.delta(delta, out);
            }
            StreamPart::ToolStart { index, id, name } => {
                self.start(None, out);
                if self.open != OpenBlock::Tool(index) {
                    self.close_block(out);
                    let id = id.unwrap_or_else(|| format!("toolu_{index}"));
                    let block = obj! {"type": "tool_use", "id": id, "name": name, "input": Value::Object(Map::new())};
                    self.open_block(OpenBlock::Tool(index), block, out);
                }
            }
            StreamPart::ToolArgs { index, arguments } => {
                // Arguments of a call whose block is closed (interleaved calls) cannot be delivered.
                if self.open == OpenBlock::Tool(index) {
                    self.delta(obj! {"type": "input_json_delta", "partial_json": arguments}, out);
                }
            }
            StreamPart::Usage(usage) => self.usage = usage,
            StreamPart::Error { message, kind } => {
                let kind = match kind.as_str() {
                    "invalid_request_error" | "authentication_error" | "permission_error" | "rate_limit_error" => kind,
                    _ => "api_error".to_string(),
                };
                self.fail(&kind, &message, out);
            }
            StreamPart::Finish { .. } | StreamPart::Done => {} // kept by DoorStream::translate
        }
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close_block(out);
        self.progress.finished = true;
        let (finish, stop_string) = self.progress.finish.take().unwrap_or_else(|| ("stop".into(), None));
        let reason = stop_reason(&finish, stop_string.as_deref());
        let stop_sequence = if reason == "stop_sequence" { stop_string } else { None };
        let event = obj! {"type": "message_delta", "delta": obj! {
            "stop_reason": reason,
            "stop_sequence": stop_sequence,
        }, "usage": usage_json(self.usage)};
        push_sse(out, "message_delta", &event);
        push_sse(out, "message_stop", &obj! {"type": "message_stop"});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        serde_json::from_slice(&to_chat(&to_bytes(&body), None).unwrap()).unwrap()
    }

    fn refused(body: Value) -> DoorError {
        to_chat(&to_bytes(&body), None).unwrap_err()
    }

    #[test]
    fn betas_that_change_the_request_become_the_anthropic_beta_parameter() {
        let body = to_bytes(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}));
        let with = |beta| serde_json::from_slice::<Value>(&to_chat(&body, Some(beta)).unwrap()).unwrap();
        let harmless = with("claude-code-20250219, interleaved-thinking-2025-05-14,prompt-caching-2024-07-31");
        assert!(harmless.get("anthropic-beta").is_none(), "{harmless}");
        let out = with("oauth-2025-04-20,context-1m-2025-08-07, computer-use-2025-01-24");
        assert_eq!(out["anthropic-beta"], json!(["context-1m-2025-08-07", "computer-use-2025-01-24"]));
    }

    #[test]
    fn a_cache_breakpoint_on_a_thinking_block_is_refused_with_its_path() {
        let thinking =
            json!({"type": "thinking", "thinking": "t", "signature": "s", "cache_control": {"type": "ephemeral"}});
        let e = refused(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": [thinking, {"type": "text", "text": "a"}]},
            {"role": "user", "content": "go on"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[1].content[0].cache_control"));
        assert_eq!(e.kind, crate::doors::DoorErrorKind::Invalid);
    }

    #[test]
    fn plain_request_maps_system_sampling_stop_stream_and_user() {
        let out = chat(json!({
            "model": "fast-pool", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}],
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"], "stream": true,
            "metadata": {"user_id": "u-1"},
        }));
        assert_eq!(
            out,
            json!({
                "model": "fast-pool", "max_tokens": 100,
                "messages": [{"role": "system", "content": [
                    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}]},
                    {"role": "user", "content": "Hi"}],
                "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "stream": true,
                "stream_options": {"include_usage": true}, "user": "u-1", "top_k": 5,
            })
        );
    }

    #[test]
    fn images_tool_use_and_tool_results_become_openai_messages() {
        let out = chat(json!({
            "model": "m", "max_tokens": 10,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}, {"type": "text", "text": "20C"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "Thanks"},
                ]},
            ],
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ]},
                {"role": "assistant", "content": "Let me look.", "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s"}], "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny\n20C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
                {"role": "user", "content": "Thanks"},
            ])
        );
    }

    #[test]
    fn tool_only_assistant_turn_has_null_content_and_tool_result_images_follow() {
        let out = chat(json!({
            "model": "m", "max_tokens": 10,
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://i"}}]}]},
            ],
        }));
        assert_eq!(out["messages"][0]["content"], Value::Null);
        assert_eq!(out["messages"][1], json!({"role": "tool", "tool_call_id": "t", "content": ""}));
        assert_eq!(
            out["messages"][2],
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://i"}}]})
        );
    }

    #[test]
    fn claude_code_style_request_translates() {
        // Claude Code's shape: cache_control on blocks, thinking config, untyped tools.
        let out = chat(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": true, "temperature": 1,
            "thinking": {"type": "enabled", "budget_tokens": 4000},
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}]}],
            "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
            "metadata": {"user_id": "user_abc_session_1"},
        }));
        assert_eq!(
            out["messages"][1]["content"],
            json!([
            {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
            {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(out["tools"][0]["function"]["name"], "Bash");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["thinking"], json!({"type": "enabled", "budget_tokens": 4000}));
    }

    #[test]
    fn parameters_only_anthropic_takes_are_refused_by_name() {
        let body = json!({"model": "m", "max_tokens": 1, "messages": [], "context_management": {"edits": []}});
        let e = to_chat(body.to_string().as_bytes(), None).unwrap_err();
        assert_eq!((e.code.as_str(), e.param.as_deref()), ("unsupported_parameter", Some("context_management")));
        let body = json!({"model": "m", "max_tokens": 1, "messages": [], "frobnicate": 1, "container": null});
        assert_eq!(to_chat(body.to_string().as_bytes(), None).unwrap_err().param.as_deref(), Some("frobnicate"));
    }

    #[test]
    fn tools_and_every_tool_choice() {
        let tools = json!([{"name": "f", "description": "does f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}]);
        let expected_tools = json!([{"type": "function", "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}}, "cache_control": {"type": "ephemeral"}}]);
        for (choice, expected) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
            (json!({"type": "tool", "name": "f"}), json!({"type": "function", "function": {"name": "f"}})),
        ] {
            let out =
                chat(json!({"model": "m", "max_tokens": 1, "messages": [], "tools": tools, "tool_choice": choice}));
            assert_eq!(out["tools"], expected_tools);
            assert_eq!(out["tool_choice"], expected);
            assert!(out.get("parallel_tool_calls").is_none());
        }
        let out = chat(json!({"model": "m", "max_tokens": 1, "messages": [], "tools": tools,
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}));
        assert_eq!(out["parallel_tool_calls"], json!(false));
        let out = chat(json!({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "auto"}}));
        assert!(out.get("tool_choice").is_none(), "no tool_choice without tools");
    }

    #[test]
    fn bad_shapes_are_refused_naming_the_field() {
        let cases = [
            (json!({"max_tokens": 1, "messages": []}), "model"),
            (json!({"model": "m", "messages": []}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 0, "messages": []}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 1}), "messages"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0].text",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "messages[0].content[0].source.type",
            ),
            (json!({"model": "m", "max_tokens": 1, "messages": [], "stop_sequences": "END"}), "stop_sequences"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (json!({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "f"}]}), "tools[0].input_schema"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (json!({"model": "m", "max_tokens": 1, "messages": [], "temperature": "hot"}), "temperature"),
        ];
        for (body, param) in cases {
            let e = refused(body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert!(e.message.starts_with(param), "{e:?}");
        }
        assert_eq!(to_chat(b"{not json", None).unwrap_err().code, "invalid_json");
        assert_eq!(to_chat(b"[]", None).unwrap_err().code, "invalid_request");
    }

    #[test]
    fn server_tools_and_documents_are_refused_as_unsupported_features() {
        let server = json!({"model": "m", "max_tokens": 1, "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        assert_eq!(refused(server).code, "unsupported_feature");
        let doc = json!({"model": "m", "max_tokens": 1,
            "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]});
        assert_eq!(refused(doc).code, "unsupported_feature");
    }

    #[test]
    fn completion_becomes_message_with_text_tool_use_and_usage() {
        let answer = json!({
            "id": "chatcmpl-42", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                               {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3}},
        });
        let out: Value = serde_json::from_slice(&from_chat_completion(&to_bytes(&answer), "claude-pool")).unwrap();
        assert_eq!(
            out,
            json!({
                "id": "msg_42", "type": "message", "role": "assistant", "model": "claude-pool",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 7, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 3},
            })
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        for (finish, stop, expected, sequence) in [
            ("stop", None, "end_turn", Value::Null),
            ("length", None, "max_tokens", Value::Null),
            ("content_filter", None, "refusal", Value::Null),
            ("stop", Some("END"), "stop_sequence", json!("END")),
        ] {
            let answer =
                json!({"choices": [{"finish_reason": finish, "stop_reason": stop, "message": {"content": "x"}}]});
            let out: Value = serde_json::from_slice(&from_chat_completion(&to_bytes(&answer), "m")).unwrap();
            assert_eq!(out["stop_reason"], expected);
            assert_eq!(out["stop_sequence"], sequence);
        }
        let bad: Value = serde_json::from_slice(&from_chat_completion(b"nope", "m")).unwrap();
        assert_eq!(bad["error"]["type"], "api_error");
    }

    #[test]
    fn error_bodies_take_anthropic_types_by_status() {
        let openai =
            br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limited"}}"#;
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (504, "timeout_error"),
            (402, "billing_error"),
            (422, "invalid_request_error"),
        ] {
            let out: Value = serde_json::from_slice(&error_body(status, openai)).unwrap();
            assert_eq!(out, json!({"type": "error", "error": {"type": kind, "message": "slow down"}}), "{status}");
        }
        let out: Value = serde_json::from_slice(&error_body(502, b"<html>")).unwrap();
        assert_eq!(out["error"]["message"], "Upstream error (HTTP 502).");
    }

    #[test]
    fn count_tokens_estimates_text_messages_images_and_tools() {
        let body = json!({"model": "m", "system": "abcd", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcdefgh"},
                {"type": "image", "source": {"type": "url", "url": "https://i"}}]}]});
        let out: Value = serde_json::from_slice(&count_tokens(&to_bytes(&body)).unwrap()).unwrap();
        // system 4 bytes + text 8 bytes = 3 tokens; 2 messages * 4; 1 image.
        assert_eq!(out, json!({"input_tokens": 3 + 8 + 1600}));
        let with_tools =
            json!({"model": "m", "messages": [], "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
        let out: Value = serde_json::from_slice(&count_tokens(&to_bytes(&with_tools)).unwrap()).unwrap();
        assert!(out["input_tokens"].as_u64().unwrap() > 10);
        assert_eq!(count_tokens(b"{\"model\":\"m\"}").unwrap_err().param.as_deref(), Some("messages"));
    }

    /// Splits Anthropic SSE output into (event name, data JSON).
    fn events(sse: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(sse).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"));
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The event names of a message whose content blocks have these many deltas each.
    fn message_events(deltas_per_block: &[usize]) -> Vec<&'static str> {
        let mut names = vec!["message_start"];
        for &deltas in deltas_per_block {
            names.push("content_block_start");
            names.extend(std::iter::repeat_n("content_block_delta", deltas));
            names.push("content_block_stop");
        }
        names.extend(["message_delta", "message_stop"]);
        names
    }

    const TEXT_THEN_TOOL: &str = concat!(
        "data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn stream_text_and_tool_calls_become_anthropic_events_in_any_chunking() {
        let expected = {
            let mut s = MessagesStream::new("claude-pool");
            events(&s.feed(TEXT_THEN_TOOL.as_bytes(), true))
        };
        assert_eq!(names(&expected), message_events(&[2, 2, 1]), "a text block, then two tool calls");
        let data: Vec<&Value> = expected.iter().map(|(_, d)| d).collect();
        assert_eq!(data[0]["message"]["id"], "msg_7");
        assert_eq!(data[0]["message"]["model"], "claude-pool");
        assert_eq!(data[1]["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(data[2]["delta"], json!({"type": "text_delta", "text": "Hi "}));
        assert_eq!(
            data[5],
            &json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}})
        );
        assert_eq!(data[6]["delta"], json!({"type": "input_json_delta", "partial_json": "{\"a\":"}));
        assert_eq!(data[9]["content_block"]["id"], "call_b");
        assert_eq!(data[11]["index"], 2);
        assert_eq!(data[12]["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
        assert_eq!(data[12]["usage"]["output_tokens"], 5);
        assert_eq!(data[12]["usage"]["input_tokens"], 9);

        for size in [1, 3, 17, 64] {
            let mut s = MessagesStream::new("claude-pool");
            let mut out = Vec::new();
            for piece in TEXT_THEN_TOOL.as_bytes().chunks(size) {
                out.extend(s.feed(piece, false));
            }
            out.extend(s.feed(b"", true));
            assert_eq!(events(&out), expected, "chunks of {size}");
        }
    }

    #[test]
    fn stream_without_done_finishes_on_end_of_stream_and_cut_stream_is_an_error() {
        let mut s = MessagesStream::new("m");
        let out =
            s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"length\"}]}\n\n", true);
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "message_stop");
        assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "max_tokens");

        let mut s = MessagesStream::new("m");
        let ev = events(&s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n", true));
        assert_eq!(ev.last().unwrap().0, "error");
        assert_eq!(ev.last().unwrap().1["error"]["type"], "api_error");
        assert!(s.feed(b"data: [DONE]\n\n", true).is_empty(), "nothing after the end");
    }

    #[test]
    fn stream_tool_call_repeating_its_id_each_delta_stays_one_block() {
        let mut s = MessagesStream::new("m");
        let chunk = |args: &str| {
            format!("data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":0,\"id\":\"c\",\"function\":{{\"name\":\"f\",\"arguments\":\"{args}\"}}}}]}}}}]}}\n\n")
        };
        let stream = format!(
            "{}{}data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\n",
            chunk("{"),
            chunk("}")
        );
        let ev = events(&s.feed(stream.as_bytes(), true));
        assert_eq!(names(&ev), message_events(&[2]));
    }

    #[test]
    fn stream_reports_the_stop_sequence_a_server_names() {
        let mut s = MessagesStream::new("m");
        let ev = events(&s.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\",\"stop_reason\":\"###\"}]}\n\ndata: [DONE]\n\n",
            false,
        ));
        let delta = &ev[ev.len() - 2].1["delta"];
        assert_eq!(delta, &json!({"stop_reason": "stop_sequence", "stop_sequence": "###"}));
    }

    #[test]
    fn stream_error_event_becomes_anthropic_error_event() {
        let mut s = MessagesStream::new("m");
        let ev =
            events(&s.feed(b"data: {\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_error\"}}\n\n", true));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    }

    #[test]
    fn empty_answer_stream_still_starts_and_stops() {
        let mut s = MessagesStream::new("m");
        let ev = events(&s.feed(b"data: [DONE]\n\n", false));
        assert_eq!(names(&ev), message_events(&[]));
        assert_eq!(ev[1].1["delta"]["stop_reason"], "end_turn");
    }
}
