//! OpenAI (and OpenAI-compatible) API: chat/completions, completions,
//! embeddings, models, responses (`kinds::responses`). Also used by the Azure kind.

use super::schema::reply_json;
use super::{
    bad_request, js, json_response, json_value, mentions_weather, method_not_allowed, not_found, now_secs, split_even,
    sse_data, stream_pieces, stream_response, with_usage, word_tokens, Ctx,
};
use crate::body::MockBody;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

pub fn handle(ctx: &Ctx) -> Response<MockBody> {
    let path = ctx.path().trim_end_matches('/');
    let post = ctx.parts.method == Method::POST;
    if path.ends_with("/chat/completions") {
        return if post { chat(ctx, None) } else { method_not_allowed(ctx) };
    }
    if path.ends_with("/completions") {
        return if post { completions(ctx, None) } else { method_not_allowed(ctx) };
    }
    if let Some((_, rest)) = path.split_once("/responses/") {
        return super::responses::followup(ctx, rest);
    }
    if path.ends_with("/responses") {
        return if post { super::responses::handle(ctx, None) } else { method_not_allowed(ctx) };
    }
    if path.ends_with("/embeddings") {
        return if post { embeddings(ctx, None) } else { method_not_allowed(ctx) };
    }
    if path.ends_with("/models") {
        return if ctx.parts.method == Method::GET { models(ctx) } else { method_not_allowed(ctx) };
    }
    not_found(ctx)
}

fn model_of<'a>(ctx: &Ctx, obj: &'a Map<String, Value>, over: Option<&'a str>) -> Result<&'a str, String> {
    let _ = ctx;
    if let Some(m) = over {
        return Ok(m);
    }
    match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err("'model' must not be empty".into()),
        Some(_) => Err("'model' must be a string".into()),
        None => Err("you must provide a model parameter ('model' is required)".into()),
    }
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// Validate `messages`; returns the text of the last user message.
fn check_messages(obj: &Map<String, Value>) -> Result<String, String> {
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("'messages' must be an array".into()),
        None => return Err("'messages' is a required property".into()),
    };
    if msgs.is_empty() {
        return Err("'messages': [] is too short - 'messages' must contain at least one message".into());
    }
    let mut last_user = String::new();
    for (i, m) in msgs.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(format!("messages[{i}] must be an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => return Err(format!("messages[{i}].role is required and must be a string")),
        };
        if !ROLES.contains(&role) {
            return Err(format!(
                "messages[{i}].role: '{role}' is not one of ['system', 'assistant', 'user', 'tool', 'function', 'developer']"
            ));
        }
        let content = m.get("content");
        match content {
            None | Some(Value::Null) => {
                if role != "assistant" {
                    return Err(format!("messages[{i}].content is required for role '{role}'"));
                }
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(format!("messages[{i}].content must be a string or an array of content parts")),
        }
        if let Some(Value::Array(parts)) = content {
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") if !p.get("text").is_some_and(Value::is_string) => {
                        return Err(format!("messages[{i}].content[{j}].text must be a string"))
                    }
                    Some(_) => {}
                    None => return Err(format!("messages[{i}].content[{j}].type is required")),
                }
            }
        }
        if role == "user" {
            last_user = match content {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
                }
                _ => String::new(),
            };
        }
    }
    Ok(last_user)
}

/// Name of the first tool (`tools[0].function.name`), if tools are given.
fn first_tool(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(t)) if t.is_empty() => Ok(None),
        Some(Value::Array(t)) => {
            for (i, tool) in t.iter().enumerate() {
                if tool.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(format!("tools[{i}].type must be 'function'"));
                }
                if !tool.pointer("/function/name").is_some_and(Value::is_string) {
                    return Err(format!("tools[{i}].function.name is required"));
                }
            }
            Ok(t.first().and_then(|x| x.pointer("/function/name")).and_then(Value::as_str).map(str::to_string))
        }
        Some(_) => Err("'tools' must be an array".into()),
    }
}

/// Where `key` is an object's key, at any depth: its path (`messages[0].content[1]`).
fn path_of_key(v: &Value, key: &str, at: &str) -> Option<String> {
    match v {
        Value::Object(map) if map.contains_key(key) => Some(at.to_string()),
        Value::Object(map) => map.iter().find_map(|(k, v)| path_of_key(v, key, &format!("{at}.{k}"))),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| path_of_key(v, key, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// OpenAI's own rules the gateway must respect (chat `payload` is `messages`,
/// Responses `input`): no Anthropic `cache_control` anywhere (an unknown
/// parameter), at most 4 stop sequences. On OpenAI's and Azure's paths
/// (`/v1/...`, `/openai/...`) only: a compatible server under another prefix
/// (`/serving/v1/...`) takes what it is given.
pub(super) fn check_openai_only(ctx: &Ctx, obj: &Map<String, Value>, payload: &str) -> Result<(), String> {
    if !(ctx.path().starts_with("/v1/") || ctx.path().starts_with("/openai/")) {
        return Ok(());
    }
    if obj.contains_key("cache_control") {
        return Err("Unrecognized request argument supplied: cache_control".into());
    }
    for field in [payload, "tools"] {
        if let Some(at) = obj.get(field).and_then(|v| path_of_key(v, "cache_control", field)) {
            return Err(format!("Invalid '{at}': unknown parameter 'cache_control'."));
        }
    }
    if let Some(n) = obj.get("stop").and_then(Value::as_array).map(Vec::len).filter(|n| *n > 4) {
        return Err(format!(
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {n} instead."
        ));
    }
    Ok(())
}

fn is_stream(obj: &Map<String, Value>) -> Result<bool, String> {
    match obj.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err("'stream' must be a boolean".into()),
    }
}

const TOOL_ARGS: &str = r#"{"location":"Paris"}"#;

/// `POST .../chat/completions`. `over`: model name forced by the route (Azure deployment).
pub fn chat(ctx: &Ctx, over: Option<&str>) -> Response<MockBody> {
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    let model = match model_of(ctx, &obj, over) {
        Ok(m) => m,
        Err(e) => return bad_request(ctx, &e),
    };
    let last_user = match check_messages(&obj) {
        Ok(t) => t,
        Err(e) => return bad_request(ctx, &e),
    };
    if let Err(e) = check_openai_only(ctx, &obj, "messages") {
        return bad_request(ctx, &e);
    }
    // A compatible server under another prefix takes what it is given.
    let openai_path = ctx.path().starts_with("/v1/") || ctx.path().starts_with("/openai/");
    if let Err(e) = super::openai_refusal(model, &obj).or_else(|e| if openai_path { Err(e) } else { Ok(()) }) {
        return bad_request(ctx, &e);
    }
    let tool = match first_tool(&obj) {
        Ok(t) => t.filter(|_| mentions_weather(&last_user)),
        Err(e) => return bad_request(ctx, &e),
    };
    let stream = match is_stream(&obj) {
        Ok(s) => s,
        Err(e) => return bad_request(ctx, &e),
    };
    let include_usage = obj.get("stream_options").and_then(|o| o.get("include_usage")) == Some(&Value::Bool(true));
    let id = format!("chatcmpl-mock{}", ctx.l.next_id());
    let created = now_secs();
    let prompt = ctx.prompt_tokens();
    // OpenAI caches a repeated prefix by itself and says how much it read.
    let cached = ctx.l.automatic_cache(super::cache::automatic_prefix(&obj, "messages")).min(prompt);
    let model_js = js(model);
    // JSON mode: a value of the response format's schema, or `{"reply": ...}`.
    let json = match obj.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_schema") => Some(
            obj.get("response_format").and_then(|f| f.pointer("/json_schema/schema")).cloned().unwrap_or(Value::Null),
        ),
        Some("json_object") => Some(Value::Null),
        _ => None,
    };
    let reply = match &json {
        Some(schema) => reply_json(Some(schema), &ctx.reply_text(model)),
        None => ctx.reply_text(model),
    };

    if !stream {
        let (message, finish, completion) = match &tool {
            Some(name) => (
                format!(
                    r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_mock{n}","type":"function","function":{{"name":{name},"arguments":{args}}}}}],"refusal":null}}"#,
                    n = ctx.l.next_id(),
                    name = js(name),
                    args = js(TOOL_ARGS)
                ),
                "tool_calls",
                8,
            ),
            None => (
                format!(r#"{{"role":"assistant","content":{},"refusal":null}}"#, js(&reply)),
                "stop",
                word_tokens(&reply),
            ),
        };
        let body = format!(
            r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model_js},"choices":[{{"index":0,"message":{message},"logprobs":null,"finish_reason":"{finish}"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":{cached}}}}},"system_fingerprint":"fp_mock"}}"#,
            total = prompt + completion
        );
        return with_usage(json_response(StatusCode::OK, body), prompt, completion);
    }

    let chunk = |delta: &str, finish: &str| -> Bytes {
        sse_data(&format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":{model_js},"system_fingerprint":"fp_mock","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        ))
    };
    let mut events = Vec::with_capacity(ctx.opts.chunks + 4);
    let (finish, completion) = match &tool {
        Some(name) => {
            events.push(chunk(
                &format!(
                    r#"{{"role":"assistant","content":null,"tool_calls":[{{"index":0,"id":"call_mock{n}","type":"function","function":{{"name":{name},"arguments":""}}}}]}}"#,
                    n = ctx.l.next_id(),
                    name = js(name)
                ),
                "null",
            ));
            for piece in split_even(TOOL_ARGS, ctx.opts.chunks) {
                events.push(chunk(
                    &format!(r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}"#, js(&piece)),
                    "null",
                ));
            }
            ("tool_calls", 8)
        }
        None => {
            events.push(chunk(r#"{"role":"assistant","content":"","refusal":null}"#, "null"));
            // JSON is cut anywhere (filler words would break it).
            let (pieces, full) = match json {
                Some(_) => (split_even(&reply, ctx.opts.chunks), reply.clone()),
                None => stream_pieces(&reply, ctx.opts.chunks),
            };
            for p in &pieces {
                events.push(chunk(&format!(r#"{{"content":{}}}"#, js(p)), "null"));
            }
            ("stop", word_tokens(&full))
        }
    };
    events.push(chunk("{}", &format!("\"{finish}\"")));
    if include_usage {
        events.push(sse_data(&format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":{model_js},"system_fingerprint":"fp_mock","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}}}"#,
            total = prompt + completion
        )));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    with_usage(stream_response("text/event-stream", events, &ctx.opts), prompt, completion)
}

/// `POST .../completions` (legacy text completions).
pub fn completions(ctx: &Ctx, over: Option<&str>) -> Response<MockBody> {
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    let model = match model_of(ctx, &obj, over) {
        Ok(m) => m,
        Err(e) => return bad_request(ctx, &e),
    };
    match obj.get("prompt") {
        Some(Value::String(_)) | Some(Value::Array(_)) => {}
        Some(_) => return bad_request(ctx, "'prompt' must be a string or an array"),
        None => return bad_request(ctx, "'prompt' is a required property"),
    }
    let stream = match is_stream(&obj) {
        Ok(s) => s,
        Err(e) => return bad_request(ctx, &e),
    };
    let id = format!("cmpl-mock{}", ctx.l.next_id());
    let created = now_secs();
    let prompt = ctx.prompt_tokens();
    let reply = ctx.reply_text(model);
    if !stream {
        let completion = word_tokens(&reply);
        return json_value(
            StatusCode::OK,
            &json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            }),
        );
    }
    let (pieces, _) = stream_pieces(&reply, ctx.opts.chunks);
    let mut events: Vec<Bytes> = pieces
        .iter()
        .map(|p| {
            sse_data(
                &json!({"id": id, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"text": p, "index": 0, "logprobs": null, "finish_reason": null}]})
                .to_string(),
            )
        })
        .collect();
    events.push(sse_data(
        &json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]})
        .to_string(),
    ));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream_response("text/event-stream", events, &ctx.opts)
}

/// Deterministic 8-dim embedding for input `i`.
fn embedding(i: usize) -> [f32; 8] {
    let mut v = [0f32; 8];
    for (k, x) in v.iter_mut().enumerate() {
        *x = (((i * 8 + k) as f32) * 0.618_034).fract() - 0.5;
    }
    v
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

/// `POST .../embeddings`.
pub fn embeddings(ctx: &Ctx, over: Option<&str>) -> Response<MockBody> {
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    let model = match model_of(ctx, &obj, over) {
        Ok(m) => m,
        Err(e) => return bad_request(ctx, &e),
    };
    let n = match obj.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(a)) if a.is_empty() => return bad_request(ctx, "'input' must not be empty"),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => 1, // one token array
        Some(Value::Array(a)) if a.iter().all(|x| x.is_string() || x.is_array()) => a.len(),
        Some(_) => return bad_request(ctx, "'input' must be a string, an array of strings or token arrays"),
        None => return bad_request(ctx, "'input' is a required property"),
    };
    let b64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => return bad_request(ctx, "'encoding_format' must be 'float' or 'base64'"),
    };
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let e = embedding(i);
            let emb = if b64 {
                let bytes: Vec<u8> = e.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::from(base64(&bytes))
            } else {
                Value::from(e.iter().map(|f| f64::from(*f)).collect::<Vec<_>>())
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let prompt = ctx.prompt_tokens();
    json_value(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}),
    )
}

fn models(ctx: &Ctx) -> Response<MockBody> {
    let owner = &ctx.l.name;
    json_value(
        StatusCode::OK,
        &json!({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 1_700_000_000, "owned_by": owner},
            {"id": "gpt-4o-mini", "object": "model", "created": 1_700_000_000, "owned_by": owner},
            {"id": "text-embedding-3-small", "object": "model", "created": 1_700_000_000, "owned_by": owner}
        ]}),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_reference() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
