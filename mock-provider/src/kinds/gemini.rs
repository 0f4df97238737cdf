//! Google Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (`?alt=sse` for SSE, otherwise a streamed JSON array).

use super::schema::reply_json;
use super::{
    bad_request, json_value, mentions_weather, method_not_allowed, not_found, split_even, stream_pieces,
    stream_response, with_usage, word_tokens, Ctx,
};
use crate::body::MockBody;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

const TOP_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
    "labels",
];

const GEN_FIELDS: &[&str] = &[
    "stopSequences",
    "stop_sequences",
    "responseMimeType",
    "response_mime_type",
    "responseSchema",
    "response_schema",
    "responseJsonSchema",
    "response_json_schema",
    "responseModalities",
    "response_modalities",
    "candidateCount",
    "candidate_count",
    "maxOutputTokens",
    "max_output_tokens",
    "temperature",
    "topP",
    "top_p",
    "topK",
    "top_k",
    "seed",
    "presencePenalty",
    "presence_penalty",
    "frequencyPenalty",
    "frequency_penalty",
    "responseLogprobs",
    "response_logprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "speech_config",
    "thinkingConfig",
    "thinking_config",
    "mediaResolution",
    "media_resolution",
];

pub fn handle(ctx: &Ctx) -> Response<MockBody> {
    let path = ctx.path().replace("%3A", ":").replace("%3a", ":");
    let rest = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"));
    let Some((model, method)) = rest.and_then(|r| r.rsplit_once(':')) else {
        return not_found(ctx);
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return not_found(ctx),
    };
    if model.is_empty() || model.contains('/') {
        return not_found(ctx);
    }
    if ctx.parts.method != Method::POST {
        return method_not_allowed(ctx);
    }
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &format!("Invalid JSON payload received. {e}")),
    };
    let tool = match validate(&obj) {
        Ok(t) => t,
        Err(e) => return bad_request(ctx, &e),
    };
    let sse = ctx.query_param("alt") == Some("sse");
    let thoughts =
        obj.get("generationConfig").and_then(|g| g.get("thinkingConfig")).and_then(|t| t.get("includeThoughts"));
    // Gemini's implicit caching: a repeated long prefix is read from its cache.
    let cached = ctx.l.automatic_cache(super::cache::gemini_prefix(&obj));
    respond(ctx, model, tool, json_mode(&obj).as_ref(), (stream, sse), thoughts == Some(&Value::Bool(true)), cached)
}

/// With `responseMimeType: application/json`, the `responseSchema` (or
/// `Null` without one): the answer is then JSON text.
fn json_mode(obj: &Map<String, Value>) -> Option<Value> {
    let gc = obj.get("generationConfig").or_else(|| obj.get("generation_config"))?;
    let mime = gc.get("responseMimeType").or_else(|| gc.get("response_mime_type")).and_then(Value::as_str);
    if mime != Some("application/json") {
        return None;
    }
    let schema = ["responseSchema", "response_schema", "responseJsonSchema", "response_json_schema"]
        .iter()
        .find_map(|k| gc.get(*k));
    Some(schema.cloned().unwrap_or(Value::Null))
}

fn check_parts(parts: Option<&Value>, at: &str) -> Result<String, String> {
    let Some(Value::Array(parts)) = parts else {
        return Err(format!("{at}.parts must be a non-empty array"));
    };
    if parts.is_empty() {
        return Err(format!("{at}.parts must not be empty"));
    }
    let mut text = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let Some(p) = p.as_object() else {
            return Err(format!("{at}.parts[{j}] must be an object"));
        };
        if let Some(t) = p.get("text") {
            match t.as_str() {
                Some(s) => text.push(s),
                None => return Err(format!("{at}.parts[{j}].text must be a string")),
            }
        } else if ![
            "inlineData",
            "inline_data",
            "functionCall",
            "function_call",
            "functionResponse",
            "function_response",
            "fileData",
            "file_data",
            "executableCode",
            "codeExecutionResult",
        ]
        .iter()
        .any(|k| p.contains_key(*k))
        {
            let keys: Vec<&String> = p.keys().collect();
            return Err(format!("Invalid JSON payload received. {at}.parts[{j}] has no data field (keys: {keys:?})"));
        }
    }
    Ok(text.join(" "))
}

/// Validate the request; returns the first function declaration's name when a
/// function call should be answered.
fn validate(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    for k in obj.keys() {
        if !TOP_FIELDS.contains(&k.as_str()) {
            return Err(format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."));
        }
    }
    let contents = match obj.get("contents") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err("* GenerateContentRequest.contents: contents is not specified".into()),
        Some(_) => return Err("Invalid JSON payload received. 'contents' must be an array".into()),
        None => return Err("* GenerateContentRequest.contents: contents is not specified".into()),
    };
    let mut last_user = String::new();
    for (i, c) in contents.iter().enumerate() {
        let Some(c) = c.as_object() else {
            return Err(format!("contents[{i}] must be an object"));
        };
        let role = match c.get("role") {
            None => "user",
            Some(Value::String(r)) => r.as_str(),
            Some(_) => return Err(format!("contents[{i}].role must be a string")),
        };
        if role != "user" && role != "model" && role != "function" {
            return Err(format!("Please use a valid role: user, model. (contents[{i}].role = \"{role}\")"));
        }
        let text = check_parts(c.get("parts"), &format!("contents[{i}]"))?;
        if role == "user" {
            last_user = text;
        }
    }
    for key in ["systemInstruction", "system_instruction"] {
        if let Some(si) = obj.get(key) {
            let Some(si) = si.as_object() else {
                return Err(format!("{key} must be an object with parts"));
            };
            check_parts(si.get("parts"), key)?;
        }
    }
    for key in ["generationConfig", "generation_config"] {
        if let Some(gc) = obj.get(key) {
            let Some(gc) = gc.as_object() else {
                return Err(format!("{key} must be an object"));
            };
            for k in gc.keys() {
                if !GEN_FIELDS.contains(&k.as_str()) {
                    return Err(format!(
                        "Invalid JSON payload received. Unknown name \"{k}\" at 'generation_config': Cannot find field."
                    ));
                }
            }
            for (k, ok) in [
                ("maxOutputTokens", gc.get("maxOutputTokens").is_none_or(Value::is_u64)),
                ("temperature", gc.get("temperature").is_none_or(Value::is_number)),
                ("topP", gc.get("topP").is_none_or(Value::is_number)),
                // Gemini takes at most 5 stop sequences.
                ("stopSequences", gc.get("stopSequences").is_none_or(|s| s.as_array().is_some_and(|a| a.len() <= 5))),
            ] {
                if !ok {
                    return Err(format!("Invalid value at 'generation_config.{k}'"));
                }
            }
        }
    }
    let mut first_fn = None;
    match obj.get("tools") {
        None => {}
        Some(Value::Array(tools)) => {
            for t in tools {
                let decls = t.get("functionDeclarations").or_else(|| t.get("function_declarations"));
                if let Some(Value::Array(d)) = decls {
                    for (i, f) in d.iter().enumerate() {
                        let Some(name) = f.get("name").and_then(Value::as_str) else {
                            return Err(format!("tools.functionDeclarations[{i}].name is required"));
                        };
                        if first_fn.is_none() {
                            first_fn = Some(name.to_string());
                        }
                    }
                }
            }
        }
        Some(_) => return Err("tools must be an array".into()),
    }
    Ok(first_fn.filter(|_| mentions_weather(&last_user)))
}

fn respond(
    ctx: &Ctx,
    model: &str,
    tool: Option<String>,
    json: Option<&Value>,
    (stream, sse): (bool, bool),
    thoughts: bool,
    cached: u64,
) -> Response<MockBody> {
    let prompt = ctx.prompt_tokens();
    let cached = cached.min(prompt);
    let reply = match json {
        Some(schema) => reply_json(Some(schema), &ctx.reply_text(model)),
        None => ctx.reply_text(model),
    };
    let response_id = format!("mock{}", ctx.l.next_id());
    let chunk = |parts: Value, finish: Option<&str>, completion: Option<u64>| -> Value {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        let mut v = json!({"candidates": [cand], "modelVersion": model, "responseId": response_id});
        v["usageMetadata"] = match completion {
            Some(c) => json!({"promptTokenCount": prompt, "candidatesTokenCount": c, "totalTokenCount": prompt + c}),
            None => json!({"promptTokenCount": prompt, "totalTokenCount": prompt}),
        };
        if cached > 0 {
            v["usageMetadata"]["cachedContentTokenCount"] = json!(cached);
        }
        v
    };
    let fn_part = |name: &str| json!([{"functionCall": {"name": name, "args": {"location": "Paris"}}}]);

    if !stream {
        let completion = if tool.is_some() { 8 } else { word_tokens(&reply) };
        let v = match &tool {
            Some(name) => chunk(fn_part(name), Some("STOP"), Some(8)),
            None if thoughts => {
                let mut v = chunk(
                    json!([{"text": "Thinking it over.", "thought": true}, {"text": reply}]),
                    Some("STOP"),
                    Some(completion),
                );
                v["usageMetadata"]["thoughtsTokenCount"] = json!(3);
                v
            }
            None => chunk(json!([{"text": reply}]), Some("STOP"), Some(completion)),
        };
        return with_usage(json_value(StatusCode::OK, &v), prompt, completion);
    }
    let mut chunks = Vec::new();
    let mut completion = 8;
    match &tool {
        Some(name) => chunks.push(chunk(fn_part(name), Some("STOP"), Some(8))),
        None => {
            // JSON is cut anywhere (filler words would break it).
            let (pieces, full) = match json {
                Some(_) => (split_even(&reply, ctx.opts.chunks), reply.clone()),
                None => stream_pieces(&reply, ctx.opts.chunks),
            };
            let n = pieces.len();
            completion = word_tokens(&full);
            for (i, p) in pieces.into_iter().enumerate() {
                let last = i + 1 == n;
                chunks.push(chunk(json!([{"text": p}]), last.then_some("STOP"), last.then(|| word_tokens(&full))));
            }
        }
    }
    let events: Vec<Bytes> = if sse {
        chunks.iter().map(|c| Bytes::from(format!("data: {c}\r\n\r\n"))).collect()
    } else {
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let open = if i == 0 { "[" } else { ",\r\n" };
                let close = if i + 1 == n { "]" } else { "" };
                Bytes::from(format!("{open}{c}{close}"))
            })
            .collect()
    };
    let ct = if sse { "text/event-stream" } else { "application/json; charset=UTF-8" };
    with_usage(stream_response(ct, events, &ctx.opts), prompt, completion)
}
