//! AWS Bedrock Converse API: `POST /model/{modelId}/converse` and
//! `/model/{modelId}/converse-stream` (binary event stream).

use super::{
    bad_request, json_value, method_not_allowed, not_found, split_even, stream_pieces, stream_response, tool_call,
    with_usage, word_tokens, Ctx, DeclaredTool, ToolChoice,
};
use crate::body::MockBody;
use crate::eventstream;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

const TOP_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];
const INFERENCE_FIELDS: &[&str] = &["maxTokens", "temperature", "topP", "stopSequences"];
const BLOCK_KINDS: &[&str] = &[
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
];

pub fn handle(ctx: &Ctx) -> Response<MockBody> {
    let path = ctx.path().trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/model/") else {
        return not_found(ctx);
    };
    let Some((model, op)) = rest.rsplit_once('/') else {
        return not_found(ctx);
    };
    let stream = match op {
        "converse" => false,
        "converse-stream" => true,
        _ => return not_found(ctx),
    };
    if model.is_empty() {
        return not_found(ctx);
    }
    if ctx.parts.method != Method::POST {
        return method_not_allowed(ctx);
    }
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    let msgs = obj.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if super::refuses_prefill(&model.replace("%3A", ":")) && super::ends_with_assistant(msgs) {
        return bad_request(ctx, super::PREFILL_REFUSED);
    }
    let (inference, extra) = (obj.get("inferenceConfig"), obj.get("additionalModelRequestFields"));
    let has = |v: Option<&Value>, k: &str| v.is_some_and(|v| v.get(k).is_some());
    let sampling = [
        ("temperature", has(inference, "temperature")),
        ("top_p", has(inference, "topP")),
        ("top_k", has(extra, "top_k")),
    ];
    if let Err(e) = super::claude_refusal(&model.replace("%3A", ":"), &sampling, extra.and_then(|e| e.get("thinking")))
    {
        return bad_request(ctx, &e);
    }
    match validate(&obj).and_then(|tool| Ok((tool, super::cache::bedrock_prefix(&obj)?))) {
        Ok((tool, cache)) => respond(ctx, tool, stream, cache),
        Err(e) => bad_request(ctx, &e),
    }
}

fn check_blocks(v: Option<&Value>, at: &str, allow_empty: bool) -> Result<String, String> {
    let Some(Value::Array(blocks)) = v else {
        return Err(format!("{at} must be a list of content blocks"));
    };
    if blocks.is_empty() && !allow_empty {
        return Err(format!("{at} must not be empty"));
    }
    let mut text = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let Some(b) = b.as_object() else {
            return Err(format!("{at}[{j}] must be an object"));
        };
        if b.len() != 1 {
            return Err(format!("{at}[{j}] must have exactly one member (text, image, toolUse, ...)"));
        }
        for (k, val) in b {
            if !BLOCK_KINDS.contains(&k.as_str()) {
                return Err(format!("{at}[{j}]: unknown content block member '{k}'"));
            }
            if k == "text" {
                match val.as_str() {
                    Some(s) => text.push(s),
                    None => return Err(format!("{at}[{j}].text must be a string")),
                }
            }
        }
    }
    Ok(text.join(" "))
}

/// Validates the request; returns the tool call to answer (name, JSON arguments).
fn validate(obj: &Map<String, Value>) -> Result<Option<(String, String)>, String> {
    for k in obj.keys() {
        if !TOP_FIELDS.contains(&k.as_str()) {
            return Err(format!("Malformed input request: extraneous key [{k}] is not permitted"));
        }
    }
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err("A conversation must start with a user message.".into()),
        Some(_) => return Err("messages must be a list".into()),
        None => return Err("1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null".into()),
    };
    let mut last_user = String::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy \
                 constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            ));
        }
        let text = check_blocks(m.get("content"), &format!("messages[{i}].content"), false)?;
        if role == "user" {
            last_user = text;
        }
    }
    if let Some(s) = obj.get("system") {
        check_blocks(Some(s), "system", true)?;
    }
    if let Some(ic) = obj.get("inferenceConfig") {
        let Some(ic) = ic.as_object() else {
            return Err("inferenceConfig must be an object".into());
        };
        for k in ic.keys() {
            if !INFERENCE_FIELDS.contains(&k.as_str()) {
                return Err(format!("Malformed input request: inferenceConfig: extraneous key [{k}] is not permitted"));
            }
        }
        for (k, ok) in [
            ("maxTokens", ic.get("maxTokens").is_none_or(|v| v.as_u64().is_some_and(|n| n >= 1))),
            ("temperature", ic.get("temperature").is_none_or(Value::is_number)),
            ("topP", ic.get("topP").is_none_or(Value::is_number)),
            (
                "stopSequences",
                // Converse takes at most 2500.
                ic.get("stopSequences")
                    .is_none_or(|v| v.as_array().is_some_and(|a| a.len() <= 2500 && a.iter().all(Value::is_string))),
            ),
        ] {
            if !ok {
                return Err(format!("inferenceConfig.{k} has an invalid value"));
            }
        }
    }
    let mut declared = Vec::new();
    let mut choice = ToolChoice::Auto;
    if let Some(tc) = obj.get("toolConfig") {
        let Some(Value::Array(tools)) = tc.get("tools") else {
            return Err("toolConfig.tools must be a list".into());
        };
        for (i, t) in tools.iter().enumerate() {
            if let Some(spec) = t.get("toolSpec") {
                let Some(name) = spec.get("name").and_then(Value::as_str) else {
                    return Err(format!("toolConfig.tools[{i}].toolSpec.name is required"));
                };
                let Some(schema) = spec.pointer("/inputSchema/json") else {
                    return Err(format!("toolConfig.tools[{i}].toolSpec.inputSchema.json is required"));
                };
                declared.push(DeclaredTool { name: name.to_string(), schema: schema.clone() });
            }
        }
        choice = match tc.get("toolChoice") {
            None => ToolChoice::Auto,
            Some(c) if c.get("auto").is_some() => ToolChoice::Auto,
            Some(c) if c.get("any").is_some() => ToolChoice::Any,
            Some(c) => match c.pointer("/tool/name").and_then(Value::as_str) {
                Some(name) => ToolChoice::Tool(name.to_string()),
                None => return Err("toolConfig.toolChoice must have exactly one of auto, any, tool.name".into()),
            },
        };
    }
    tool_call(&declared, &choice, &last_user)
}

fn respond(ctx: &Ctx, tool: Option<(String, String)>, stream: bool, cache: Option<String>) -> Response<MockBody> {
    let model = ctx.path().trim_start_matches("/model/").rsplit_once('/').map(|(m, _)| m).unwrap_or("");
    let model = model.replace("%3A", ":").replace("%3a", ":");
    let prompt = ctx.prompt_tokens();
    // Bedrock's `inputTokens` leave out what was read from or written to the cache.
    let cached = ctx.l.prompt_cache(cache);
    let input = prompt.saturating_sub(cached.read + cached.write).max(1);
    let mut usage = json!({"inputTokens": input, "outputTokens": 0, "totalTokens": 0});
    if cached.read + cached.write > 0 {
        usage["cacheReadInputTokens"] = json!(cached.read);
        usage["cacheWriteInputTokens"] = json!(cached.write);
    }
    let usage = |out: u64| {
        let mut u = usage.clone();
        u["outputTokens"] = json!(out);
        u["totalTokens"] = json!(prompt.max(input) + out);
        u
    };
    let reply = ctx.reply_text(&model);
    let tool_id = format!("tooluse_mock{}", ctx.l.next_id());
    let request_id = format!("00000000-0000-4000-8000-{:012}", ctx.l.next_id());
    if !stream {
        let (content, stop, out) = match &tool {
            Some((name, input)) => (
                json!([{"toolUse": {"toolUseId": tool_id, "name": name,
                    "input": serde_json::from_str::<Value>(input).unwrap_or(Value::Null)}}]),
                "tool_use",
                8,
            ),
            None => (json!([{"text": reply}]), "end_turn", word_tokens(&reply)),
        };
        let mut r = json_value(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop,
                "usage": usage(out),
                "metrics": {"latencyMs": 1}
            }),
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            r.headers_mut().insert("x-amzn-requestid", v);
        }
        return with_usage(r, prompt, out);
    }
    let ev = |ty: &str, v: Value| Bytes::from(eventstream::event(ty, v.to_string().as_bytes()));
    let mut events = vec![ev("messageStart", json!({"role": "assistant"}))];
    let (stop, out) = match &tool {
        Some((name, input)) => {
            events.push(ev(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": tool_id, "name": name}}}),
            ));
            for piece in split_even(input, ctx.opts.chunks) {
                events.push(ev(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                ));
            }
            ("tool_use", 8)
        }
        None => {
            let (pieces, full) = stream_pieces(&reply, ctx.opts.chunks);
            for p in pieces {
                events.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": p}})));
            }
            ("end_turn", word_tokens(&full))
        }
    };
    events.push(ev("contentBlockStop", json!({"contentBlockIndex": 0})));
    events.push(ev("messageStop", json!({"stopReason": stop})));
    events.push(ev("metadata", json!({"usage": usage(out), "metrics": {"latencyMs": 1}})));
    let mut r = stream_response("application/vnd.amazon.eventstream", events, &ctx.opts);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    with_usage(r, prompt, out)
}
