//! Anthropic Messages API: `POST /v1/messages`.

use super::{
    bad_request, js, json_response, method_not_allowed, not_found, split_even, stream_pieces, stream_response,
    tool_call, with_usage, word_tokens, Ctx, DeclaredTool, ToolChoice,
};
use crate::body::MockBody;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

pub fn handle(ctx: &Ctx) -> Response<MockBody> {
    let path = ctx.path().trim_end_matches('/');
    if path != "/v1/messages" {
        return not_found(ctx);
    }
    if ctx.parts.method != Method::POST {
        return method_not_allowed(ctx);
    }
    if ctx.header("anthropic-version").is_none_or(str::is_empty) {
        return bad_request(ctx, "anthropic-version: header is required");
    }
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    match validate(&obj) {
        Ok(v) => respond(ctx, v),
        Err(e) => bad_request(ctx, &e),
    }
}

struct Valid<'a> {
    model: &'a str,
    stream: bool,
    /// With `thinking` enabled: the thinking block's text.
    thinking: Option<String>,
    /// The tool call to answer: name and JSON arguments.
    tool: Option<(String, String)>,
    /// The prompt prefix its cache breakpoints mark.
    cache: Option<String>,
}

/// The mock's signature of a thinking text (Anthropic's is opaque and verified the same way).
pub fn signature(thinking: &str) -> String {
    let h = thinking.bytes().fold(5381u64, |h, b| h.wrapping_mul(33) ^ u64::from(b));
    format!("mocksig{h:016x}")
}

/// Anthropic's rules for `thinking`: a budget of at least 1024 below
/// `max_tokens`, and (the tool loop) a final assistant turn with tool calls
/// that starts with a thinking block whose signature is intact.
fn check_thinking(obj: &Map<String, Value>, msgs: &[Value]) -> Result<bool, String> {
    let Some(t) = obj.get("thinking").filter(|t| t.get("type").and_then(Value::as_str) == Some("enabled")) else {
        return Ok(false);
    };
    let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
    if budget < 1024 {
        return Err("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into());
    }
    if obj.get("max_tokens").and_then(Value::as_u64).unwrap_or(0) <= budget {
        return Err("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size".into());
    }
    let last = msgs.iter().enumerate().rev().find(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"));
    if let Some((i, m)) = last {
        let blocks = m.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let ty = |b: &Value| b.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        if blocks.iter().any(|b| ty(b) == "tool_use") {
            let first = blocks.first().map(ty).unwrap_or_default();
            if first != "thinking" && first != "redacted_thinking" {
                return Err(format!("messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns."));
            }
        }
        for (j, b) in blocks.iter().enumerate().filter(|(_, b)| ty(b) == "thinking") {
            let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
            if b.get("signature").and_then(Value::as_str) != Some(signature(text).as_str()) {
                return Err(format!("messages.{i}.content.{j}: Invalid `signature` in `thinking` block"));
            }
        }
    }
    Ok(true)
}

fn check_blocks(blocks: &[Value], at: &str) -> Result<(), String> {
    for (j, b) in blocks.iter().enumerate() {
        let Some(ty) = b.get("type").and_then(Value::as_str) else {
            return Err(format!("{at}.{j}.type: Field required"));
        };
        match ty {
            "text" => {
                if !b.get("text").is_some_and(Value::is_string) {
                    return Err(format!("{at}.{j}.text: Field required (string)"));
                }
            }
            "thinking" | "redacted_thinking" if b.get("cache_control").is_some_and(|c| !c.is_null()) => {
                return Err(format!("{at}.{j}.{ty}.cache_control: Extra inputs are not permitted"));
            }
            "image"
            | "document"
            | "tool_use"
            | "tool_result"
            | "thinking"
            | "redacted_thinking"
            | "server_tool_use"
            | "web_search_tool_result"
            | "search_result"
            | "container_upload" => {}
            other => return Err(format!("{at}.{j}.type: Input tag '{other}' does not match any of the expected tags")),
        }
    }
    Ok(())
}

fn validate(obj: &Map<String, Value>) -> Result<Valid<'_>, String> {
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(_) => return Err("model: Input should be a valid string".into()),
        None => return Err("model: Field required".into()),
    };
    match obj.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
        Some(_) => return Err("max_tokens: Input should be a valid integer >= 1".into()),
        None => return Err("max_tokens: Field required".into()),
    }
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("messages: Input should be a valid list".into()),
        None => return Err("messages: Field required".into()),
    };
    if msgs.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    if super::refuses_prefill(model) && super::ends_with_assistant(msgs) {
        return Err(super::PREFILL_REFUSED.into());
    }
    let sampling = ["temperature", "top_p", "top_k"].map(|k| (k, obj.contains_key(k)));
    super::claude_refusal(model, &sampling, obj.get("thinking"))?;
    let mut last_user = String::new();
    for (i, m) in msgs.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(format!("messages.{i}: Input should be a valid dictionary"));
        };
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "user" | "assistant" => {}
            "system" => {
                return Err("messages: Unexpected role \"system\". The Messages API accepts a top-level \
                            `system` parameter, not \"system\" as an input message role."
                    .into())
            }
            "" => return Err(format!("messages.{i}.role: Field required")),
            other => return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant', got '{other}'")),
        }
        let text = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(blocks)) => {
                check_blocks(blocks, &format!("messages.{i}.content"))?;
                blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            Some(_) => return Err(format!("messages.{i}.content: Input should be a valid string or list")),
            None => return Err(format!("messages.{i}.content: Field required")),
        };
        if role == "user" {
            last_user = text;
        }
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            check_blocks(blocks, "system")?;
            if blocks.iter().any(|b| b.get("type").and_then(Value::as_str) != Some("text")) {
                return Err("system: only text blocks are allowed".into());
            }
        }
        Some(_) => return Err("system: Input should be a valid string or list of text blocks".into()),
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream: Input should be a valid boolean".into()),
    };
    for (key, ok) in [
        ("temperature", obj.get("temperature").is_none_or(Value::is_number)),
        ("top_p", obj.get("top_p").is_none_or(Value::is_number)),
        ("top_k", obj.get("top_k").is_none_or(Value::is_u64)),
        ("stop_sequences", obj.get("stop_sequences").is_none_or(Value::is_array)),
    ] {
        if !ok {
            return Err(format!("{key}: invalid type"));
        }
    }
    let mut tools = Vec::new();
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(t)) => {
            for (i, tool) in t.iter().enumerate() {
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    return Err(format!("tools.{i}.name: Field required"));
                };
                let custom = tool.get("type").is_none_or(|t| t == "custom");
                let schema = tool.get("input_schema").filter(|s| s.is_object());
                if custom && schema.is_none() {
                    return Err(format!("tools.{i}.input_schema: Field required"));
                }
                tools.push(DeclaredTool { name: name.to_string(), schema: schema.cloned().unwrap_or(Value::Null) });
            }
        }
        Some(_) => return Err("tools: Input should be a valid list".into()),
    }
    let choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(_) if tools.is_empty() => return Err("tool_choice may only be specified while providing tools.".into()),
        Some(c) => match (c.get("type").and_then(Value::as_str), c.get("name").and_then(Value::as_str)) {
            (Some("auto"), _) => ToolChoice::Auto,
            (Some("none"), _) => ToolChoice::None,
            (Some("any"), _) => ToolChoice::Any,
            (Some("tool"), Some(name)) => ToolChoice::Tool(name.to_string()),
            (Some("tool"), None) => return Err("tool_choice.tool.name: Field required".into()),
            _ => {
                return Err(
                    "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
                        .into(),
                )
            }
        },
    };
    let tool = tool_call(&tools, &choice, &last_user)?;
    let text = || format!("The user wrote {} words.", last_user.split_whitespace().count());
    // Adaptive thinking (Claude 4.6+): its text only when `display` is `summarized` (omitted by default on 4.7+).
    let adaptive = obj.get("thinking").filter(|t| t.get("type").and_then(Value::as_str) == Some("adaptive"));
    let thinking = match adaptive {
        Some(t) if t.get("display").and_then(Value::as_str) == Some("summarized") => Some(text()),
        Some(_) => Some(String::new()),
        None => check_thinking(obj, msgs)?.then(text),
    };
    let cache = super::cache::anthropic_prefix(obj)?;
    Ok(Valid { model, stream, thinking, tool, cache })
}

fn respond(ctx: &Ctx, v: Valid) -> Response<MockBody> {
    let id = format!("msg_mock{}", ctx.l.next_id());
    let prompt_tokens = ctx.prompt_tokens();
    // Anthropic's `input_tokens` leave out what was read from or written to the cache.
    let cache = ctx.l.prompt_cache(v.cache.clone());
    let input_tokens = prompt_tokens.saturating_sub(cache.read + cache.write).max(1);
    let (read, write) = (cache.read, cache.write);
    let reply = ctx.reply_text(v.model);
    let model_js = js(v.model);
    if !v.stream {
        let (content, stop, out) = match &v.tool {
            Some((name, input)) => (
                format!(
                    r#"[{{"type":"tool_use","id":"toolu_mock{}","name":{},"input":{input}}}]"#,
                    ctx.l.next_id(),
                    js(name)
                ),
                "tool_use",
                8,
            ),
            None => (format!(r#"[{{"type":"text","text":{}}}]"#, js(&reply)), "end_turn", word_tokens(&reply)),
        };
        let (content, out) = match &v.thinking {
            Some(t) => {
                let block = json!({"type": "thinking", "thinking": t, "signature": signature(t)});
                (format!("[{block},{}", &content[1..]), out + word_tokens(t))
            }
            None => (content, out),
        };
        let body = format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":{model_js},"content":{content},"stop_reason":"{stop}","stop_sequence":null,"usage":{{"input_tokens":{input_tokens},"cache_creation_input_tokens":{write},"cache_read_input_tokens":{read},"output_tokens":{out}}}}}"#
        );
        return with_usage(json_response(StatusCode::OK, body), prompt_tokens, out);
    }

    let ev = |name: &str, data: Value| -> Bytes { Bytes::from(format!("event: {name}\ndata: {data}\n\n")) };
    let mut events = Vec::with_capacity(ctx.opts.chunks + 6);
    events.push(ev(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": v.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": write,
                      "cache_read_input_tokens": read, "output_tokens": 1}}}),
    ));
    // A thinking block first, at index 0: the answer's own block follows at `at`.
    let at = usize::from(v.thinking.is_some());
    if let Some(t) = &v.thinking {
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        events.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": t}}),
        ));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature(t)}})));
        events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    }
    let (stop, out) = match &v.tool {
        Some((name, input)) => {
            events.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": at, "content_block":
                    {"type": "tool_use", "id": format!("toolu_mock{}", ctx.l.next_id()), "name": name, "input": {}}}),
            ));
            for piece in split_even(input, ctx.opts.chunks) {
                events.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": at,
                           "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            ("tool_use", 8)
        }
        None => {
            events.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": at, "content_block": {"type": "text", "text": ""}}),
            ));
            events.push(ev("ping", json!({"type": "ping"})));
            let (pieces, full) = stream_pieces(&reply, ctx.opts.chunks);
            for p in pieces {
                events.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": at, "delta": {"type": "text_delta", "text": p}}),
                ));
            }
            ("end_turn", word_tokens(&full))
        }
    };
    events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": at})));
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": out}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    with_usage(stream_response("text/event-stream", events, &ctx.opts), prompt_tokens, out)
}
