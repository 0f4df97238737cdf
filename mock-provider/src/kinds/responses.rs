//! OpenAI Responses API: `POST {any prefix}/responses` (openai) and Azure's v1
//! `POST /openai/v1/responses`. Stateful fields (`previous_response_id`,
//! `store`, `background`, built-in tools) are accepted as OpenAI does, so
//! tests can check a pass-through request arrived as the client sent it.

use super::{bad_request, json_value, stream_pieces, stream_response, tool_call, word_tokens, Ctx, DeclaredTool};
use super::{now_secs, split_even, ToolChoice};
use crate::body::MockBody;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

/// Text of the last user turn: the `input` string, or the text parts of its last user item.
fn last_user_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
            .map(|i| match i.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
                }
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Function tools (`{"type":"function","name","parameters"}`); built-in tools are not called.
fn function_tools(obj: &Map<String, Value>) -> Vec<DeclaredTool> {
    obj.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?.to_string();
            Some(DeclaredTool { name, schema: t.get("parameters").cloned().unwrap_or(Value::Null) })
        })
        .collect()
}

/// `base` with the fields of `extra` added.
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// One event: `event: TYPE` and its JSON with `type` and `sequence_number`.
fn event(kind: &str, seq: &mut u64, mut data: Value) -> Bytes {
    if let Some(obj) = data.as_object_mut() {
        obj.insert("type".into(), json!(kind));
        obj.insert("sequence_number".into(), json!(*seq));
    }
    *seq += 1;
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

pub fn handle(ctx: &Ctx, over: Option<&str>) -> Response<MockBody> {
    let obj = match ctx.json_object() {
        Ok(o) => o,
        Err(e) => return bad_request(ctx, &e),
    };
    let model = match (over, obj.get("model")) {
        (Some(m), _) => m.to_string(),
        (None, Some(Value::String(m))) if !m.is_empty() => m.clone(),
        _ => return bad_request(ctx, "you must provide a model parameter ('model' is required)"),
    };
    if let Err(e) = super::openai::check_openai_only(ctx, &obj, "input") {
        return bad_request(ctx, &e);
    }
    let input = obj.get("input").cloned().unwrap_or(Value::Null);
    if !(input.is_string() || input.is_array() || obj.contains_key("previous_response_id")) {
        return bad_request(ctx, "'input' is required (a string or an array of items)");
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request(ctx, "'stream' must be a boolean"),
    };
    let tools = function_tools(&obj);
    let choice = match obj.get("tool_choice") {
        Some(Value::String(c)) if c == "required" => ToolChoice::Any,
        Some(Value::String(c)) if c == "none" => ToolChoice::None,
        Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
            ToolChoice::Tool(c.get("name").and_then(Value::as_str).unwrap_or_default().to_string())
        }
        _ => ToolChoice::Auto,
    };
    let call = match tool_call(&tools, &choice, &last_user_text(&input)) {
        Ok(c) => c,
        Err(e) => return bad_request(ctx, &e),
    };
    let n = ctx.l.next_id();
    let (id, item_id) = (format!("resp_mock{n}_{}", ctx.l.name), format!("item_mock{n}"));
    let reply = ctx.reply_text(&model);
    let (pieces, text) = stream_pieces(&reply, ctx.opts.chunks);
    let text = if stream { text } else { reply };
    let prompt = ctx.prompt_tokens();
    let (item, completion) = match &call {
        Some((name, args)) => (
            json!({"type": "function_call", "id": item_id, "call_id": format!("call_mock{n}"), "name": name,
                   "arguments": args, "status": "completed"}),
            8,
        ),
        None => (
            json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}),
            word_tokens(&text),
        ),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": now_secs(), "status": status, "model": model,
               "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage})
    };
    let cached = ctx.l.automatic_cache(super::cache::automatic_prefix(&obj, "input")).min(prompt);
    let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                       "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": prompt + completion});
    let done = response("completed", json!([item]), usage);
    if !stream {
        return json_value(StatusCode::OK, &done);
    }
    let mut seq = 0;
    let mut events =
        vec![event("response.created", &mut seq, json!({"response": response("in_progress", json!([]), Value::Null)}))];
    // Every item event names the item; content events their part too.
    let with = |extra: Value| merged(json!({"item_id": item_id, "output_index": 0}), extra);
    match &call {
        Some((name, args)) => {
            let started = json!({"type": "function_call", "id": item_id, "call_id": format!("call_mock{n}"),
                                 "name": name, "arguments": "", "status": "in_progress"});
            events.push(event("response.output_item.added", &mut seq, json!({"output_index": 0, "item": started})));
            for piece in split_even(args, ctx.opts.chunks) {
                events.push(event("response.function_call_arguments.delta", &mut seq, with(json!({"delta": piece}))));
            }
            events.push(event("response.function_call_arguments.done", &mut seq, with(json!({"arguments": args}))));
        }
        None => {
            let started =
                json!({"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []});
            events.push(event("response.output_item.added", &mut seq, json!({"output_index": 0, "item": started})));
            let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
            let part_at = |extra: Value| merged(with(json!({"content_index": 0})), extra);
            events.push(event("response.content_part.added", &mut seq, part_at(json!({"part": part("")}))));
            for piece in &pieces {
                events.push(event("response.output_text.delta", &mut seq, part_at(json!({"delta": piece}))));
            }
            events.push(event("response.output_text.done", &mut seq, part_at(json!({"text": text}))));
            events.push(event("response.content_part.done", &mut seq, part_at(json!({"part": part(&text)}))));
        }
    }
    events.push(event("response.output_item.done", &mut seq, json!({"output_index": 0, "item": item})));
    events.push(event("response.completed", &mut seq, json!({"response": done})));
    stream_response("text/event-stream", events, &ctx.opts)
}

/// The follow-ups of a stored response (`rest`: what follows `.../responses/`):
/// `GET {id}`, `DELETE {id}`, `POST {id}/cancel`, `GET {id}/input_items`.
/// The mock keeps no state: any id is answered, as a completed response.
pub fn followup(ctx: &Ctx, rest: &str) -> Response<MockBody> {
    use hyper::Method;
    let (id, op) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() {
        return super::not_found(ctx);
    }
    let response = |status: &str| {
        json!({
            "id": id, "object": "response", "created_at": super::now_secs(), "status": status,
            "model": "mock", "output": [], "error": null, "incomplete_details": null, "instructions": null,
            "metadata": {}, "parallel_tool_calls": true, "temperature": null, "tool_choice": "auto",
            "tools": [], "top_p": null, "usage": null,
        })
    };
    let method = &ctx.parts.method;
    let body = match (op, method) {
        ("", &Method::GET) => response("completed"),
        ("", &Method::DELETE) => json!({"id": id, "object": "response", "deleted": true}),
        ("cancel", &Method::POST) => response("cancelled"),
        ("input_items", &Method::GET) => {
            json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
        }
        ("" | "cancel" | "input_items", _) => return super::method_not_allowed(ctx),
        _ => return super::not_found(ctx),
    };
    super::json_value(hyper::StatusCode::OK, &body)
}
