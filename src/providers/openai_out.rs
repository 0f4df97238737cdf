//! OpenAI's output shapes the translated kinds produce: complete
//! `chat.completion` bodies (`Meta::completion`), usage, and generated ids.

use serde_json::{json, Map, Value};

use super::structured::STRUCTURED_OUTPUT_TOOL;
use crate::api::usage::Tokens;
use crate::encoding::random_hex;

/// OpenAI's `usage` object of `usage`.
pub(super) fn usage_json(usage: Tokens) -> Value {
    let mut u = json!({
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.total_tokens(),
    });
    if let (true, Some(obj)) = (usage.cached.or(usage.cache_write).is_some(), u.as_object_mut()) {
        // `cache_write_tokens`: OpenRouter's name for Anthropic's cache creation.
        let mut details = json!({ "cached_tokens": usage.cached.unwrap_or(0) });
        if let (Some(write), Some(d)) = (usage.cache_write, details.as_object_mut()) {
            d.insert("cache_write_tokens".into(), json!(write));
        }
        obj.insert("prompt_tokens_details".into(), details);
    }
    if let (Some(reasoning), Some(obj)) = (usage.reasoning, u.as_object_mut()) {
        obj.insert("completion_tokens_details".into(), json!({ "reasoning_tokens": reasoning }));
    }
    u
}

/// A tool call of a complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

/// One choice of a complete answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Choice {
    pub index: u32,
    pub text: String,
    pub reasoning: String,
    /// Anthropic-shaped thinking blocks with their signatures (`thinking_blocks`).
    pub thinking_blocks: Vec<Value>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

impl Choice {
    /// The structured-output tool's call as the message content: its
    /// arguments are the answer, which ends normally unless it was cut short.
    fn with_structured_output(&self) -> Choice {
        let mut c = self.clone();
        let (answers, calls): (Vec<ToolCall>, Vec<ToolCall>) =
            c.tool_calls.into_iter().partition(|t| t.name == STRUCTURED_OUTPUT_TOOL);
        c.tool_calls = calls;
        if answers.is_empty() {
            return c;
        }
        for answer in answers {
            c.text.push_str(&answer.arguments);
        }
        if c.tool_calls.is_empty() && c.finish_reason == "tool_calls" {
            c.finish_reason = "stop";
        }
        c
    }
}

/// A complete answer read from a provider, before it is written in OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Answer {
    /// The provider's id for the answer, when it gives one.
    pub id: Option<String>,
    pub choices: Vec<Choice>,
    pub usage: Option<Tokens>,
}

/// A fresh `chatcmpl-…` id for answers whose provider gives none.
pub(super) fn new_id() -> String {
    format!("chatcmpl-{}", random_hex::<12>().unwrap_or_else(|| "switchboard".to_string()))
}

/// A fresh tool-call id for providers that give none.
pub(super) fn new_call_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match random_hex::<12>() {
        Some(h) => format!("call_{h}"),
        None => format!("call_{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
    }
}

/// The id, creation time and model written into every answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// `answer` as a complete `chat.completion` body.
    pub(super) fn completion(&self, answer: &Answer) -> Vec<u8> {
        let choices: Vec<Value> = answer
            .choices
            .iter()
            .map(Choice::with_structured_output)
            .map(|c| {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let content = if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) };
                message.insert("content".into(), content);
                if !c.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), json!(c.reasoning));
                }
                if !c.thinking_blocks.is_empty() {
                    message.insert("thinking_blocks".into(), Value::Array(c.thinking_blocks.clone()));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .iter()
                        .map(|t| json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}))
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                message.insert("refusal".into(), Value::Null);
                json!({"index": c.index, "message": message, "logprobs": null, "finish_reason": c.finish_reason})
            })
            .collect();
        let mut body = json!({
            "id": answer.id.as_deref().unwrap_or(&self.id),
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (answer.usage, body.as_object_mut()) {
            obj.insert("usage".into(), usage_json(u));
        }
        to_vec(&body)
    }
}

pub(super) fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn generated_ids_differ() {
        assert!(new_id().starts_with("chatcmpl-"));
        assert_ne!(new_id(), new_id());
        assert!(new_call_id().starts_with("call_"));
        assert_ne!(new_call_id(), new_call_id());
    }

    #[test]
    fn completion_with_tool_calls_has_null_content() {
        let meta = Meta { id: "x".into(), created: 1, model: "m".into() };
        let call = ToolCall { id: "c".into(), name: "f".into(), arguments: "{}".into() };
        let choice = Choice { index: 0, tool_calls: vec![call], finish_reason: "tool_calls", ..Choice::default() };
        let v: Value =
            serde_json::from_slice(&meta.completion(&Answer { choices: vec![choice], ..Answer::default() })).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"], json!({"name": "f", "arguments": "{}"}));
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn structured_output_call_becomes_content() {
        let meta = Meta { id: "x".into(), created: 1, model: "m".into() };
        let answer = ToolCall { id: "c".into(), name: STRUCTURED_OUTPUT_TOOL.into(), arguments: r#"{"a":1}"#.into() };
        let other = ToolCall { id: "d".into(), name: "f".into(), arguments: "{}".into() };
        let render = |calls: Vec<ToolCall>, finish_reason| -> Value {
            let choice = Choice { tool_calls: calls, finish_reason, ..Choice::default() };
            let answer = Answer { id: Some("up".into()), choices: vec![choice], usage: None };
            serde_json::from_slice(&meta.completion(&answer)).unwrap()
        };
        let v = render(vec![answer.clone()], "tool_calls");
        assert_eq!(v["id"], "up");
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"a":1}"#);
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(render(vec![answer.clone()], "length")["choices"][0]["finish_reason"], "length");
        let v = render(vec![answer, other], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"a":1}"#);
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["id"], "d");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }
}
