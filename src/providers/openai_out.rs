//! OpenAI's output shapes the translated kinds produce: complete
//! `chat.completion` bodies (`Meta::completion`), usage, and generated ids.

use serde_json::{json, Map, Value};

use super::encoding::hex;

/// Token counts in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Usage {
    /// All input tokens, cached ones included.
    pub prompt: u64,
    pub completion: u64,
    pub total: Option<u64>,
    pub cached: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Usage {
    pub fn to_json(self) -> Value {
        let mut u = json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total.unwrap_or(self.prompt + self.completion),
        });
        if let (Some(cached), Some(obj)) = (self.cached, u.as_object_mut()) {
            obj.insert("prompt_tokens_details".into(), json!({ "cached_tokens": cached }));
        }
        if let (Some(reasoning), Some(obj)) = (self.reasoning, u.as_object_mut()) {
            obj.insert("completion_tokens_details".into(), json!({ "reasoning_tokens": reasoning }));
        }
        u
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Choice {
    pub index: u32,
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(hex(&bytes))
}

/// A fresh `chatcmpl-…` id for answers whose provider gives none.
pub(super) fn new_id() -> String {
    format!("chatcmpl-{}", random_hex().unwrap_or_else(|| "switchboard".to_string()))
}

/// A fresh tool-call id for providers that give none.
pub(super) fn new_call_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match random_hex() {
        Some(h) => format!("call_{h}"),
        None => format!("call_{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
    }
}

/// The id, creation time and model written into every answer.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// A complete `chat.completion` body.
    pub fn completion(&self, choices: &[Choice], usage: Option<Usage>) -> Vec<u8> {
        let choices: Vec<Value> = choices
            .iter()
            .map(|c| {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let content = if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) };
                message.insert("content".into(), content);
                if !c.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), json!(c.reasoning));
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
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
            obj.insert("usage".into(), u.to_json());
        }
        to_vec(&body)
    }
}

pub(super) fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
        let v: Value = serde_json::from_slice(&meta.completion(&[choice], None)).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"], json!({"name": "f", "arguments": "{}"}));
        assert!(v.get("usage").is_none());
    }
}
