//! OpenAI Responses API door, stateless subset: requests to Chat Completions
//! bodies, chat answers and streams back to Responses `response` objects and
//! events. Errors on this door keep OpenAI's error shape
//! (`DoorError::to_openai_json`, and upstream OpenAI error bodies as they are).
//!
//! Refused as `unsupported_feature` (they need OpenAI's own state or tools;
//! `Door::to_chat` then keeps the request on OpenAI and Azure members, which
//! get it as it is): `previous_response_id`,
//! `conversation`, `store: true`, `background: true`, `prompt` templates,
//! `item_reference` items, `file_id` inputs and built-in tools (`web_search`,
//! `file_search`, `computer_use_preview`, ...). `reasoning` items in the
//! input are dropped (their encrypted content only means something to OpenAI).

use serde_json::{json, Map, Value};

use super::with_cache_control as cached;
use super::{copy_number, copy_stream, door_id, first_choice, obj, parse_object, push_sse, to_bytes, DoorError};
use super::{DoorStream, StreamPart, StreamProgress};
use crate::api::usage::Tokens;

/// (feature name, request field) of the first stateful feature.
fn stateful_feature(req: &Map<String, Value>) -> Option<(&'static str, String)> {
    let set = |name: &str| req.get(name).is_some_and(|v| !v.is_null());
    if set("previous_response_id") {
        return Some(("previous_response_id", "previous_response_id".into()));
    }
    if set("conversation") {
        return Some(("conversation", "conversation".into()));
    }
    if req.get("store") == Some(&Value::Bool(true)) {
        return Some(("store", "store".into()));
    }
    if req.get("background") == Some(&Value::Bool(true)) {
        return Some(("background", "background".into()));
    }
    if set("prompt") {
        return Some(("prompt", "prompt".into()));
    }
    for (i, tool) in req.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") | None => {}
            Some(kind) => return Some((builtin_tool_name(kind), format!("tools[{i}].type"))),
        }
    }
    let items = req.get("input").and_then(Value::as_array);
    for (i, item) in items.into_iter().flatten().enumerate() {
        if item.get("type").and_then(Value::as_str) == Some("item_reference") {
            return Some(("item_reference", format!("input[{i}].type")));
        }
        let parts = item.get("content").and_then(Value::as_array);
        for (j, part) in parts.into_iter().flatten().enumerate() {
            if part.get("file_id").is_some_and(|f| !f.is_null()) {
                return Some(("file_id", format!("input[{i}].content[{j}].file_id")));
            }
            if part.get("type").and_then(Value::as_str) == Some("input_file") {
                return Some(("input_file", format!("input[{i}].content[{j}].type")));
            }
        }
    }
    None
}

fn builtin_tool_name(kind: &str) -> &'static str {
    match kind {
        "web_search" => "web_search",
        "web_search_preview" | "web_search_preview_2025_03_11" => "web_search_preview",
        "file_search" => "file_search",
        "computer_use_preview" | "computer_use" => "computer_use_preview",
        "code_interpreter" => "code_interpreter",
        "image_generation" => "image_generation",
        "mcp" => "mcp",
        "local_shell" | "shell" => "local_shell",
        "custom" => "custom tools",
        _ => "built-in tools",
    }
}

/// Responses request -> OpenAI Chat Completions body (the `model` is kept as is).
pub fn to_chat(body: &[u8]) -> Result<Vec<u8>, DoorError> {
    let req = parse_object(body)?;
    // Before the stateful features: a request only native members serve still needs a valid one.
    let max_output_tokens = match req.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=u64::from(u32::MAX)).contains(&n)) => {
            Some(v.clone())
        }
        // `Door::to_chat` says precisely why.
        Some(_) => return Err(DoorError::invalid("max_output_tokens", "must be an integer >= 1")),
    };
    if let Some((feature, param)) = stateful_feature(&req) {
        return Err(DoorError::unsupported(
            param,
            format!("`{feature}` needs OpenAI's provider-side state or tools; it is served only by OpenAI models"),
        ));
    }
    let mut out = Map::new();
    match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => out.insert("model".into(), Value::String(m.clone())),
        None | Some(Value::Null) => return Err(DoorError::invalid("model", "Missing required parameter")),
        Some(_) => return Err(DoorError::invalid("model", "must be a non-empty string")),
    };
    let mut messages = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                messages.push(obj! {"role": "system", "content": s.as_str()});
            }
        }
        Some(_) => return Err(DoorError::invalid("instructions", "must be a string")),
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(obj! {"role": "user", "content": s.as_str()}),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        None | Some(Value::Null) => return Err(DoorError::invalid("input", "Missing required parameter")),
        Some(_) => return Err(DoorError::invalid("input", "must be a string or an array of items")),
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(v) = max_output_tokens {
        out.insert("max_completion_tokens".into(), v);
    }
    copy_number(&req, "temperature", &mut out, "temperature")?;
    copy_number(&req, "top_p", &mut out, "top_p")?;
    copy_stream(&req, &mut out)?;
    let has_tools = translate_tools(&req, &mut out)?;
    translate_tool_choice(&req, has_tools, &mut out)?;
    match req.get("parallel_tool_calls") {
        Some(v @ Value::Bool(_)) if has_tools => {
            out.insert("parallel_tool_calls".into(), v.clone());
        }
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => return Err(DoorError::invalid("parallel_tool_calls", "must be a boolean")),
    }
    translate_text_format(&req, &mut out)?;
    if let Some(effort) = req.get("reasoning").and_then(|r| r.get("effort")).and_then(Value::as_str) {
        out.insert("reasoning_effort".into(), Value::String(effort.to_string()));
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("user".into(), Value::String(user.to_string()));
    }
    super::carry(&req, super::RESPONSES_PARAMS, &mut out)?;
    Ok(to_bytes(&Value::Object(out)))
}

/// A Responses `reasoning` item of an Anthropic thinking block: its text as
/// the summary, the block itself (with its signature) as `encrypted_content`,
/// which clients send back as it is.
pub(crate) fn reasoning_item(id: &str, block: &Value) -> Value {
    let text = block.get("thinking").and_then(Value::as_str).unwrap_or_default();
    let summary: Vec<Value> =
        [text].iter().filter(|t| !t.is_empty()).map(|t| obj! {"type": "summary_text", "text": *t}).collect();
    obj! {"id": id, "type": "reasoning", "summary": summary, "encrypted_content": String::from_utf8(to_bytes(block)).unwrap_or_default()}
}

fn input_items(items: &[Value], messages: &mut Vec<Value>) -> Result<(), DoorError> {
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let item = item.as_object().ok_or_else(|| DoorError::invalid(at.clone(), "must be an object"))?;
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => messages.push(message_item(item, &at)?),
            "function_call" => {
                let field = |name: &str| {
                    item.get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| DoorError::invalid(format!("{at}.{name}"), "Missing required parameter"))
                };
                let call = obj! {"id": field("call_id")?, "type": "function", "function": obj! {
                    "name": field("name")?,
                    "arguments": field("arguments")?,
                },};
                // Consecutive calls (and a text turn just before them) form one assistant message.
                let last_is_assistant = messages.last().is_some_and(|m| {
                    m.get("role").and_then(Value::as_str) == Some("assistant")
                        && (m.get("tool_calls").is_some() || m.get("from_text").is_some())
                });
                match messages.last_mut().and_then(Value::as_object_mut) {
                    Some(last) if last_is_assistant => {
                        last.remove("from_text");
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => {
                                last.insert("tool_calls".into(), Value::Array(vec![call]));
                            }
                        }
                    }
                    _ => messages.push(obj! {
                        "role": "assistant",
                        "content": Value::Null,
                        "tool_calls": vec![call],
                    }),
                }
                // A call's breakpoint marks the end of the assistant message that carries it.
                if let (Some(c), Some(last)) =
                    (item.get("cache_control"), messages.last_mut().and_then(Value::as_object_mut))
                {
                    last.insert("cache_control".into(), c.clone());
                }
            }
            "function_call_output" => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| DoorError::invalid(format!("{at}.call_id"), "Missing required parameter"))?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match part.get("text").and_then(Value::as_str) {
                                Some(t) => text.push_str(t),
                                None => {
                                    return Err(DoorError::unsupported(
                                        format!("{at}.output[{j}]"),
                                        "only text parts are supported in function call outputs",
                                    ))
                                }
                            }
                        }
                        text
                    }
                    _ => return Err(DoorError::invalid(format!("{at}.output"), "must be a string")),
                };
                messages.push(cached(item, obj! {"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // The gateway's own reasoning items carry an Anthropic thinking block: back to the
            // assistant turn it led (OpenAI's own encrypted reasoning means nothing elsewhere).
            "reasoning" => {
                if item.get("cache_control").is_some_and(|c| !c.is_null()) {
                    return Err(super::messages::thinking_cache_control(&at));
                }
                let block = item.get("encrypted_content").and_then(Value::as_str);
                let block = block.and_then(|b| serde_json::from_str::<Value>(b).ok()).filter(|b| {
                    matches!(b.get("type").and_then(Value::as_str), Some("thinking" | "redacted_thinking"))
                });
                if let Some(block) = block {
                    match messages.last_mut().and_then(Value::as_object_mut) {
                        Some(last) if last.contains_key("thinking_blocks") && last.contains_key("from_text") => {
                            if let Some(blocks) = last.get_mut("thinking_blocks").and_then(Value::as_array_mut) {
                                blocks.push(block);
                            }
                        }
                        _ => messages.push(obj! {"role": "assistant", "content": Value::Null, "thinking_blocks": vec![block], "from_text": true}),
                    }
                }
            }
            other => {
                return Err(DoorError::unsupported(
                    format!("{at}.type"),
                    format!("input item `{other}` is not supported by the gateway's translation"),
                ))
            }
        }
    }
    // Drop the merge marker of assistant text turns no call followed.
    for m in messages.iter_mut().filter_map(Value::as_object_mut) {
        m.remove("from_text");
    }
    Ok(())
}

fn message_item(item: &Map<String, Value>, at: &str) -> Result<Value, DoorError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        // Other providers know no `developer` role.
        Some("system" | "developer") => "system",
        _ => {
            return Err(DoorError::invalid(
                format!("{at}.role"),
                "must be one of `user`, `assistant`, `system`, `developer`",
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{at}.content[{j}]");
                let kind = part.get("type").and_then(Value::as_str);
                let text = part.get("text").and_then(Value::as_str);
                // A part's `cache_control` (the chat door's field) carries to the chat part.
                let mut out = Marked(&mut out, part.as_object());
                match (kind, text) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => {
                        out.push(obj! {"type": "text", "text": t})
                    }
                    (Some("refusal"), _) => {
                        let t = part.get("refusal").and_then(Value::as_str).unwrap_or_default();
                        out.push(obj! {"type": "text", "text": t});
                    }
                    (Some("input_image"), _) => {
                        let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                            return Err(DoorError::invalid(format!("{at}.image_url"), "Missing required parameter"));
                        };
                        let mut image = Map::new();
                        image.insert("url".into(), json!(url));
                        if let Some(detail) = part.get("detail").and_then(Value::as_str) {
                            image.insert("detail".into(), json!(detail));
                        }
                        out.push(obj! {"type": "image_url", "image_url": image});
                    }
                    (Some("input_text" | "output_text" | "text"), None) => {
                        return Err(DoorError::invalid(format!("{at}.text"), "must be a string"))
                    }
                    (Some(other), _) => {
                        return Err(DoorError::unsupported(
                            format!("{at}.type"),
                            format!("content part `{other}` is not supported by the gateway's translation"),
                        ))
                    }
                    (None, _) => return Err(DoorError::invalid(format!("{at}.type"), "Missing required parameter")),
                }
            }
            // Text-only assistant and system turns as a plain string: not every provider takes parts there.
            let all_text = out.iter().all(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                && out.iter().all(|p| p.get("cache_control").is_none());
            if all_text && role != "user" {
                let joined: String = out.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
                Value::String(joined)
            } else {
                Value::Array(out)
            }
        }
        _ => return Err(DoorError::invalid(format!("{at}.content"), "must be a string or an array of parts")),
    };
    let mut message = Map::new();
    message.insert("role".into(), json!(role));
    message.insert("content".into(), content);
    if role == "assistant" {
        // Marks a text turn that function_call items right after it join (removed before return).
        message.insert("from_text".into(), Value::Bool(true));
    }
    Ok(cached(item, Value::Object(message)))
}

/// Parts pushed with the `cache_control` of the part they come from.
struct Marked<'a>(&'a mut Vec<Value>, Option<&'a Map<String, Value>>);

impl Marked<'_> {
    fn push(&mut self, part: Value) {
        self.0.push(match self.1 {
            Some(from) => cached(from, part),
            None => part,
        });
    }
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
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| DoorError::invalid(format!("{at}.name"), "Missing required parameter"))?;
        let mut function = Map::new();
        function.insert("name".into(), Value::String(name.to_string()));
        if let Some(d) = tool.get("description").and_then(Value::as_str) {
            function.insert("description".into(), Value::String(d.to_string()));
        }
        match tool.get("parameters") {
            Some(p @ Value::Object(_)) => {
                function.insert("parameters".into(), p.clone());
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(DoorError::invalid(format!("{at}.parameters"), "must be a JSON schema object")),
        }
        if let Some(strict @ Value::Bool(_)) = tool.get("strict") {
            function.insert("strict".into(), strict.clone());
        }
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
    let choice = match req.get("tool_choice") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => json!(s),
        Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
            match c.get("name").and_then(Value::as_str) {
                Some(name) => {
                    obj! {"type": "function", "function": obj! {"name": name}}
                }
                None => return Err(DoorError::invalid("tool_choice.name", "Missing required parameter")),
            }
        }
        // Function tools only (a built-in tool is the native kinds'): chat's own form.
        Some(Value::Object(c))
            if c.get("type").and_then(Value::as_str) == Some("allowed_tools")
                && c.get("tools")
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().all(|t| t.get("type").and_then(Value::as_str) == Some("function"))) =>
        {
            // A tool without a name: chat's parse names `tool_choice`.
            let name = |t: &Value| t.get("name").cloned().unwrap_or(Value::Null);
            let mut tools = Vec::new();
            for t in c.get("tools").and_then(Value::as_array).into_iter().flatten() {
                tools.push(obj! {"type": "function", "function": obj! {"name": name(t)}});
            }
            let mode = c.get("mode").cloned().unwrap_or_else(|| Value::from("auto"));
            obj! {"type": "allowed_tools", "allowed_tools": obj! {"mode": mode, "tools": tools}}
        }
        Some(Value::Object(c)) => {
            let kind = c.get("type").and_then(Value::as_str).unwrap_or_default();
            return Err(DoorError::unsupported(
                "tool_choice.type",
                format!("tool_choice `{kind}` is not supported; use `auto`, `none`, `required` or a function"),
            ));
        }
        Some(_) => {
            return Err(DoorError::invalid("tool_choice", "must be `auto`, `none`, `required` or a function choice"))
        }
    };
    if has_tools {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

fn translate_text_format(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), DoorError> {
    let Some(format) = req.get("text").and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            out.insert("response_format".into(), obj! {"type": "json_object"});
        }
        Some("json_schema") => {
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| DoorError::invalid("text.format.name", "Missing required parameter"))?;
            let Some(schema @ Value::Object(_)) = format.get("schema") else {
                return Err(DoorError::invalid("text.format.schema", "must be a JSON schema object"));
            };
            let mut spec = Map::new();
            spec.insert("name".into(), Value::String(name.to_string()));
            spec.insert("schema".into(), schema.clone());
            for key in ["description", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    spec.insert(key.into(), v.clone());
                }
            }
            out.insert("response_format".into(), obj! {"type": "json_schema", "json_schema": spec});
        }
        _ => return Err(DoorError::invalid("text.format.type", "must be `text`, `json_object` or `json_schema`")),
    }
    Ok(())
}

fn usage_json(usage: Tokens) -> Value {
    obj! {"input_tokens": usage.prompt, "input_tokens_details": obj! {
        "cached_tokens": usage.cached.unwrap_or(0),
        "cache_write_tokens": usage.cache_write.unwrap_or(0),
    }, "output_tokens": usage.completion, "output_tokens_details": obj! {
        "reasoning_tokens": usage.reasoning.unwrap_or(0),
    }, "total_tokens": usage.prompt + usage.completion}
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
fn status_for(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", obj! {"reason": "max_output_tokens"}),
        Some("content_filter") => ("incomplete", obj! {"reason": "content_filter"}),
        _ => ("completed", Value::Null),
    }
}

/// A `response` object with every field the SDKs require.
fn response_object(id: &str, model: &str, created_at: u64, status: &str, output: Vec<Value>) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created_at));
    r.insert("status".into(), json!(status));
    r.insert("model".into(), json!(model));
    r.insert("output".into(), Value::Array(output));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("instructions".into(), Value::Null);
    r.insert("metadata".into(), json!({}));
    r.insert("parallel_tool_calls".into(), json!(true));
    r.insert("temperature".into(), Value::Null);
    r.insert("top_p".into(), Value::Null);
    r.insert("tool_choice".into(), json!("auto"));
    r.insert("tools".into(), json!([]));
    r.insert("text".into(), obj! {"format": obj! {"type": "text"}});
    r.insert("usage".into(), Value::Null);
    r
}

fn message_output(id: &str, status: &str, text: &str, refusal: bool) -> Value {
    let part = if refusal {
        obj! {"type": "refusal", "refusal": text}
    } else {
        obj! {
            "type": "output_text",
            "text": text,
            "annotations": Value::Array(Vec::new()),
            "logprobs": Value::Array(Vec::new()),
        }
    };
    obj! {
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": vec![part],
    }
}

fn function_call_output(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    obj! {"type": "function_call", "id": id, "status": status, "call_id": call_id, "name": name, "arguments": arguments}
}

/// Error body for an unreadable upstream answer, in OpenAI's shape.
fn invalid_upstream(message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    crate::api::error::write_json(
        &mut out,
        message,
        crate::api::error::ErrorType::Server,
        None,
        "invalid_upstream_response",
    );
    out
}

/// OpenAI `chat.completion` -> Responses `response` object, naming the model
/// the answer names (`model`, the name the client asked for, when it names
/// none). An unreadable answer gives an OpenAI error body.
pub fn from_chat_completion(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return invalid_upstream("The upstream answer was not valid JSON.");
    };
    let Some(choice) = first_choice(&answer) else {
        return invalid_upstream("The upstream answer had no choices.");
    };
    let base = door_id("", answer.get("id").and_then(Value::as_str));
    let message = choice.get("message");
    let field = |name: &str| message.and_then(|m| m.get(name)).and_then(Value::as_str).filter(|t| !t.is_empty());
    let mut output: Vec<Value> = super::thinking_of(message)
        .iter()
        .enumerate()
        .map(|(i, b)| reasoning_item(&format!("rs_{base}_{i}"), b))
        .collect();
    if let Some(text) = field("content") {
        output.push(message_output(&format!("msg_{base}"), "completed", text, false));
    } else if let Some(text) = field("refusal") {
        output.push(message_output(&format!("msg_{base}"), "completed", text, true));
    }
    let calls = message.and_then(|m| m.get("tool_calls")).and_then(Value::as_array);
    for (i, call) in calls.into_iter().flatten().enumerate() {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
        let arguments = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
        let call_id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_string);
        output.push(function_call_output(&format!("fc_{base}_{i}"), "completed", &call_id, name, arguments));
    }
    let (status, incomplete) = status_for(choice.get("finish_reason").and_then(Value::as_str));
    let created = answer.get("created").and_then(Value::as_u64).unwrap_or(0);
    let mut r = response_object(&format!("resp_{base}"), super::served_model(&answer, model), created, status, output);
    r.insert("incomplete_details".into(), incomplete);
    r.insert("usage".into(), usage_json(Tokens::from_json(answer.get("usage")).unwrap_or_default()));
    to_bytes(&Value::Object(r))
}

/// The output item being streamed.
#[derive(Debug)]
enum OpenItem {
    None,
    Message { id: String, text: String },
    Call { index: u64, id: String, call_id: String, name: String, arguments: String },
}

/// OpenAI `chat.completion.chunk` SSE -> Responses streaming events, chunk by chunk.
#[derive(Debug)]
pub struct ResponsesStream {
    progress: StreamProgress,
    model: String,
    created_at: u64,
    id: String,
    sequence: u64,
    started: bool,
    open: OpenItem,
    output: Vec<Value>,
    usage: Tokens,
}

impl ResponsesStream {
    /// `model` is the name the client asked for; `created_at` the Unix time the
    /// host stamps on the response (this module has no clock).
    pub fn new(model: &str, created_at: u64) -> Self {
        ResponsesStream {
            progress: StreamProgress::default(),
            model: model.to_string(),
            created_at,
            id: String::new(),
            sequence: 0,
            started: false,
            open: OpenItem::None,
            output: Vec::new(),
            usage: Tokens::default(),
        }
    }

    /// Translates the next piece of the OpenAI stream; `end_of_stream` closes it
    /// (an upstream stream cut before its `finish_reason` ends with `response.failed`).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        self.translate(chunk, end_of_stream)
    }

    fn emit(&mut self, kind: &str, mut data: Map<String, Value>, out: &mut Vec<u8>) {
        data.insert("type".into(), json!(kind));
        data.insert("sequence_number".into(), json!(self.sequence));
        self.sequence += 1;
        push_sse(out, kind, &Value::Object(data));
    }

    /// A text event's fields: its `delta` or whole `text` (`key`) of message item `id`.
    fn text_fields(id: &str, index: usize, key: &str, text: String) -> Map<String, Value> {
        let mut fields = Self::fields(
            obj! {"item_id": id, "output_index": index, "content_index": 0, "logprobs": Value::Array(Vec::new())},
        );
        fields.insert(key.into(), Value::String(text));
        fields
    }

    fn fields(pairs: Value) -> Map<String, Value> {
        match pairs {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn base(&self) -> String {
        self.id.strip_prefix("resp_").unwrap_or(&self.id).to_string()
    }

    fn snapshot(&self, status: &str) -> Map<String, Value> {
        response_object(&self.id, &self.model, self.created_at, status, self.output.clone())
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = door_id("resp_", id);
        let response = Value::Object(self.snapshot("in_progress"));
        self.emit("response.created", Self::fields(obj! {"response": response.clone()}), out);
        self.emit("response.in_progress", Self::fields(obj! {"response": response}), out);
    }

    fn close_item(&mut self, out: &mut Vec<u8>) {
        let index = self.output.len();
        let item = match std::mem::replace(&mut self.open, OpenItem::None) {
            OpenItem::None => return,
            OpenItem::Message { id, text } => {
                let item = message_output(&id, "completed", &text, false);
                let part = item.get("content").and_then(|c| c.get(0)).cloned().unwrap_or_default();
                let done = Self::text_fields(&id, index, "text", text);
                self.emit("response.output_text.done", done, out);
                let done = Self::fields(
                    obj! {"item_id": id.as_str(), "output_index": index, "content_index": 0, "part": part},
                );
                self.emit("response.content_part.done", done, out);
                item
            }
            OpenItem::Call { id, call_id, name, arguments, .. } => {
                let done = Self::fields(obj! {
                    "item_id": id.as_str(),
                    "output_index": index,
                    "name": name.as_str(),
                    "arguments": arguments.as_str(),
                });
                self.emit("response.function_call_arguments.done", done, out);
                function_call_output(&id, "completed", &call_id, &name, &arguments)
            }
        };
        self.emit("response.output_item.done", Self::fields(obj! {"output_index": index, "item": item.clone()}), out);
        self.output.push(item);
    }

    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.start(None, out);
        self.progress.finished = true;
        let code = if kind == "rate_limit_error" { "rate_limit_exceeded" } else { "server_error" };
        let mut response = self.snapshot("failed");
        response.insert("error".into(), obj! {"code": code, "message": message});
        response.insert("usage".into(), usage_json(self.usage));
        let error = Self::fields(obj! {"code": code, "message": message, "param": Value::Null});
        self.emit("error", error, out);
        self.emit("response.failed", Self::fields(obj! {"response": response}), out);
    }
}

impl DoorStream for ResponsesStream {
    fn progress(&mut self) -> &mut StreamProgress {
        &mut self.progress
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
                if !matches!(self.open, OpenItem::Message { .. }) {
                    self.close_item(out);
                    let id = format!("msg_{}", self.base());
                    let item = message_output(&id, "in_progress", "", false);
                    let index = self.output.len();
                    let item_added = Self::fields(obj! {"output_index": index, "item": obj! {
                        "type": "message",
                        "id": id.as_str(),
                        "status": "in_progress",
                        "role": "assistant",
                        "content": Value::Array(Vec::new()),
                    },});
                    self.emit("response.output_item.added", item_added, out);
                    let part = item.get("content").and_then(|c| c.get(0)).cloned().unwrap_or_default();
                    let part_added = Self::fields(
                        obj! {"item_id": id.as_str(), "output_index": index, "content_index": 0, "part": part},
                    );
                    self.emit("response.content_part.added", part_added, out);
                    self.open = OpenItem::Message { id, text: String::new() };
                }
                let index = self.output.len();
                if let OpenItem::Message { id, text: all } = &mut self.open {
                    all.push_str(&text);
                    let delta = Self::text_fields(id, index, "delta", text);
                    self.emit("response.output_text.delta", delta, out);
                }
            }
            StreamPart::ToolStart { index, id, name } => {
                self.start(None, out);
                if !matches!(self.open, OpenItem::Call { index: open, .. } if open == index) {
                    self.close_item(out);
                    let item_id = format!("fc_{}_{}", self.base(), self.output.len());
                    let call_id = id.unwrap_or_else(|| format!("call_{index}"));
                    let item = function_call_output(&item_id, "in_progress", &call_id, &name, "");
                    let added = Self::fields(obj! {"output_index": self.output.len(), "item": item});
                    self.emit("response.output_item.added", added, out);
                    self.open = OpenItem::Call { index, id: item_id, call_id, name, arguments: String::new() };
                }
            }
            StreamPart::ToolArgs { index, arguments } => {
                let output_index = self.output.len();
                // Arguments of an already closed call (interleaved calls) cannot be delivered.
                if let OpenItem::Call { index: open, id, arguments: all, .. } = &mut self.open {
                    if *open == index {
                        all.push_str(&arguments);
                        let delta = Self::fields(
                            obj! {"item_id": id.as_str(), "output_index": output_index, "delta": arguments},
                        );
                        self.emit("response.function_call_arguments.delta", delta, out);
                    }
                }
            }
            StreamPart::Usage(usage) => self.usage = usage,
            StreamPart::Error { message, kind } => self.fail(&kind, &message, out),
            StreamPart::Finish { .. } | StreamPart::Done => {} // kept by DoorStream::translate
        }
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close_item(out);
        self.progress.finished = true;
        let (status, incomplete) = status_for(self.progress.finish.as_ref().map(|(reason, _)| reason.as_str()));
        let mut response = self.snapshot(status);
        response.insert("incomplete_details".into(), incomplete);
        response.insert("usage".into(), usage_json(self.usage));
        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
        self.emit(kind, Self::fields(obj! {"response": response}), out);
    }
    fn fail_incomplete(&mut self, out: &mut Vec<u8>) {
        self.fail("server_error", "The upstream stream ended before the answer was complete.", out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        serde_json::from_slice(&to_chat(&to_bytes(&body)).unwrap()).unwrap()
    }

    fn refused(body: Value) -> DoorError {
        to_chat(&to_bytes(&body)).unwrap_err()
    }

    #[test]
    fn string_input_with_instructions_and_options() {
        let out = chat(json!({
            "model": "pool", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 50,
            "temperature": 0.2, "top_p": 0.8, "stream": true, "user": "u", "store": false,
            "reasoning": {"effort": "low"}, "include": [], "metadata": {"k": "v"}, "truncation": "disabled",
        }));
        assert_eq!(
            out,
            json!({
                "model": "pool",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.8, "stream": true,
                "stream_options": {"include_usage": true}, "reasoning_effort": "low", "user": "u",
                "metadata": {"k": "v"},
            })
        );
    }

    #[test]
    fn items_messages_images_calls_and_outputs_become_chat_messages() {
        let out = chat(json!({
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Look:"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
                {"type": "function_call", "call_id": "call_3", "name": "h", "arguments": "{}"},
            ],
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "Rules."},
                {"role": "user", "content": [{"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                {"role": "tool", "tool_call_id": "call_2", "content": "two"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "h", "arguments": "{}"}}]},
            ])
        );
    }

    #[test]
    fn cache_control_carries_to_chat_parts_messages_and_tools() {
        let eph = json!({"type": "ephemeral"});
        let out = chat(json!({"model": "m", "input": [
            {"role": "system", "content": [{"type": "input_text", "text": "rules", "cache_control": eph}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "cache_control": eph},
            {"type": "function_call_output", "call_id": "c1", "output": "ok", "cache_control": eph}],
            "tools": [{"type": "function", "name": "f", "cache_control": eph}]}));
        assert_eq!(out["messages"][0]["content"], json!([{"type": "text", "text": "rules", "cache_control": eph}]));
        assert_eq!((&out["messages"][1]["cache_control"], &out["messages"][2]["cache_control"]), (&eph, &eph));
        assert_eq!(out["tools"][0]["cache_control"], eph);
    }

    #[test]
    fn function_tools_tool_choice_and_json_schema_format() {
        let out = chat(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
        }));
        assert_eq!(
            out["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(out["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(out["parallel_tool_calls"], json!(false));
        assert_eq!(
            out["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
        );
        let out =
            chat(json!({"model": "m", "input": "x", "tool_choice": "required", "text": {"format": {"type": "text"}}}));
        assert!(out.get("tool_choice").is_none() && out.get("response_format").is_none());
        let out = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
        assert_eq!(out["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn stateful_features_are_refused_naming_them() {
        for (body, feature, param) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
                "previous_response_id",
            ),
            (json!({"model": "m", "input": "x", "store": true}), "store", "store"),
            (json!({"model": "m", "input": "x", "conversation": "conv_1"}), "conversation", "conversation"),
            (json!({"model": "m", "input": "x", "background": true}), "background", "background"),
            (json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}), "web_search", "tools[0].type"),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": []}]}),
                "file_search",
                "tools[1].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "computer_use_preview"}]}),
                "computer_use_preview",
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "item_reference",
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]}),
                "file_id",
                "input[0].content[0].file_id",
            ),
        ] {
            let e = refused(body);
            assert_eq!(e.code, "unsupported_feature");
            assert_eq!(e.param.as_deref(), Some(param));
            assert!(e.message.contains(&format!("`{feature}`")), "{}", e.message);
        }
        assert!(to_chat(br#"{"model":"m","input":"x","store":false}"#).is_ok());
    }

    #[test]
    fn bad_shapes_are_refused_naming_the_field() {
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 3}), "input"),
            (json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}), "input[0].role"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
                "input[0].call_id",
            ),
            (json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}), "input[0].output"),
            (json!({"model": "m", "input": [{"type": "web_search_call"}]}), "input[0].type"),
            (json!({"model": "m", "input": "x", "max_output_tokens": 0}), "max_output_tokens"),
            (json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}), "tools[0].name"),
            (json!({"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools"}}), "tool_choice.type"),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format.schema",
            ),
            (json!({"model": "m", "input": "x", "instructions": ["a"]}), "instructions"),
        ] {
            let e = refused(body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
    }

    #[test]
    fn completion_becomes_response_with_message_calls_and_usage() {
        let answer = json!({
            "id": "chatcmpl-9", "created": 1700000000,
            "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Sure.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 5},
                "completion_tokens_details": {"reasoning_tokens": 1}},
        });
        let out: Value = serde_json::from_slice(&from_chat_completion(&to_bytes(&answer), "pool")).unwrap();
        assert_eq!(out["id"], "resp_9");
        assert_eq!(out["object"], "response");
        assert_eq!(out["status"], "completed");
        assert_eq!(out["model"], "pool");
        assert_eq!(out["created_at"], 1700000000);
        assert_eq!(
            out["output"],
            json!([
                {"type": "message", "id": "msg_9", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Sure.", "annotations": [], "logprobs": []}]},
                {"type": "function_call", "id": "fc_9_0", "status": "completed", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
            ])
        );
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 5}, "output_tokens": 4,
                "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 14})
        );
        let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "par"}}]});
        let out: Value = serde_json::from_slice(&from_chat_completion(&to_bytes(&cut), "m")).unwrap();
        assert_eq!(out["status"], "incomplete");
        assert_eq!(out["incomplete_details"], json!({"reason": "max_output_tokens"}));
        let bad: Value = serde_json::from_slice(&from_chat_completion(b"[]", "m")).unwrap();
        assert_eq!(bad["error"]["code"], "invalid_upstream_response");
    }

    fn events(sse: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(sse).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.strip_prefix("event: ").unwrap());
                data
            })
            .collect()
    }

    const TEXT_THEN_TOOL: &str = concat!(
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn stream_becomes_response_events_with_sequence_numbers_in_any_chunking() {
        let mut s = ResponsesStream::new("pool", 1700000000);
        let whole = events(&s.feed(TEXT_THEN_TOOL.as_bytes(), true));
        let kinds: Vec<&str> = whole.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, e) in whole.iter().enumerate() {
            assert_eq!(e["sequence_number"], n as u64);
        }
        assert_eq!(whole[0]["response"]["id"], "resp_7");
        assert_eq!(whole[0]["response"]["status"], "in_progress");
        assert_eq!(whole[4]["delta"], "Hi ");
        assert_eq!(whole[4]["item_id"], "msg_7");
        assert_eq!(whole[6]["text"], "Hi there");
        assert_eq!(whole[9]["output_index"], 1);
        assert_eq!(whole[9]["item"]["call_id"], "call_a");
        assert_eq!(whole[12]["arguments"], "{\"a\":1}");
        let done = &whole[14]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["total_tokens"], 14);
        assert_eq!(done["output"][0]["content"][0]["text"], "Hi there");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");

        for size in [1, 5, 33] {
            let mut s = ResponsesStream::new("pool", 1700000000);
            let mut out = Vec::new();
            for piece in TEXT_THEN_TOOL.as_bytes().chunks(size) {
                out.extend(s.feed(piece, false));
            }
            out.extend(s.feed(b"", true));
            assert_eq!(events(&out), whole, "chunks of {size}");
        }
    }

    #[test]
    fn cut_stream_and_error_event_fail_the_response() {
        let mut s = ResponsesStream::new("m", 0);
        let ev = events(&s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n", true));
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(ev[ev.len() - 2]["type"], "error");

        let mut s = ResponsesStream::new("m", 0);
        let ev = events(&s.feed(b"data: {\"error\":{\"message\":\"slow\",\"type\":\"rate_limit_error\"}}\n\n", false));
        assert_eq!(
            ev.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
            ["response.created", "response.in_progress", "error", "response.failed"]
        );
        assert_eq!(ev[2]["code"], "rate_limit_exceeded");
        assert!(s.feed(b"data: [DONE]\n\n", true).is_empty());

        let mut s = ResponsesStream::new("m", 0);
        let ev = events(
            &s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"length\"}]}\n\n", true),
        );
        assert_eq!(ev.last().unwrap()["type"], "response.incomplete");
    }
}
