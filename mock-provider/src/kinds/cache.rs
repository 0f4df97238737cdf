//! The mock's prompt cache. A request's cacheable prefix is what it marks
//! (Anthropic's `cache_control` on tools, system and message blocks, or on
//! the request for its last block; Bedrock's `cachePoint` blocks) or, for the
//! kinds that cache by themselves (OpenAI chat and Responses, Gemini),
//! everything before the last message once that is at least 1024 tokens. The first
//! request with a prefix writes it, later ones read it (per listener, until
//! `POST /_mock/reset`). A prefix costs its JSON bytes / 4 tokens.

use serde_json::{Map, Value};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::listener::Listener;

/// Anthropic's and Bedrock's limit on breakpoints in one request.
const MAX_BREAKPOINTS: usize = 4;
/// OpenAI caches prompts of at least this many tokens, in steps of 128.
const AUTOMATIC_MIN_TOKENS: u64 = 1024;

/// Cache tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cached {
    pub read: u64,
    pub write: u64,
}

impl Listener {
    /// Reads `prefix` from the cache, or writes it there.
    pub fn prompt_cache(&self, prefix: Option<String>) -> Cached {
        let Some(prefix) = prefix.filter(|p| !p.is_empty()) else { return Cached::default() };
        let tokens = prefix.len() as u64 / 4;
        let mut h = DefaultHasher::new();
        prefix.hash(&mut h);
        let mut seen = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(h.finish()) {
            Cached { read: 0, write: tokens }
        } else {
            Cached { read: tokens, write: 0 }
        }
    }

    /// OpenAI's automatic caching: a repeated prefix of at least 1024 tokens
    /// is read (in steps of 128); nothing is reported written.
    pub fn automatic_cache(&self, prefix: String) -> u64 {
        if (prefix.len() as u64 / 4) < AUTOMATIC_MIN_TOKENS {
            return 0;
        }
        self.prompt_cache(Some(prefix)).read / 128 * 128
    }
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn marked(v: &Value) -> Option<&Value> {
    v.get("cache_control").filter(|c| !c.is_null())
}

/// The prefix an Anthropic Messages request marks, with Anthropic's rules:
/// at most 4 breakpoints, type `ephemeral`, none on an empty text block nor
/// inside a `tool_result`'s content.
pub fn anthropic_prefix(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    let mut blocks: Vec<(String, &Value)> = Vec::new();
    for (i, t) in list(obj.get("tools")).iter().enumerate() {
        blocks.push((format!("tools.{i}"), t));
    }
    for (j, b) in list(obj.get("system")).iter().enumerate() {
        blocks.push((format!("system.{j}"), b));
    }
    for (i, m) in list(obj.get("messages")).iter().enumerate() {
        for (j, b) in list(m.get("content")).iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            if list(b.get("content")).iter().any(|inner| marked(inner).is_some()) {
                return Err(format!("{at}.tool_result.content: cache_control may not be specified within `tool_result.content`. Instead, place it directly on `tool_result`"));
            }
            blocks.push((at, b));
        }
    }
    let mut last = None;
    let mut count = 0;
    for (k, (at, b)) in blocks.iter().enumerate() {
        let Some(c) = marked(b) else { continue };
        if c.get("type").and_then(Value::as_str) != Some("ephemeral") {
            return Err(format!("{at}.cache_control.type: Input should be 'ephemeral'"));
        }
        if b.get("type").and_then(Value::as_str) == Some("text") && b.get("text").and_then(Value::as_str) == Some("") {
            return Err(format!("{at}.text: cache_control cannot be set for empty text blocks"));
        }
        count += 1;
        last = Some(k);
    }
    if let Some(c) = obj.get("cache_control").filter(|c| !c.is_null()) {
        if c.get("type").and_then(Value::as_str) != Some("ephemeral") {
            return Err("cache_control.type: Input should be 'ephemeral'".into());
        }
        count += 1;
        last = blocks.len().checked_sub(1);
    }
    if count > MAX_BREAKPOINTS {
        return Err(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {count}."
        ));
    }
    Ok(last.map(|k| blocks.iter().take(k + 1).map(|(_, b)| b.to_string()).collect()))
}

/// The prefix a Bedrock Converse request marks with `cachePoint` blocks (at most 4).
pub fn bedrock_prefix(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    let messages = list(obj.get("messages")).iter().flat_map(|m| list(m.get("content")));
    let tools = list(obj.get("toolConfig").and_then(|t| t.get("tools")));
    let all: Vec<&Value> = tools.iter().chain(list(obj.get("system"))).chain(messages).collect();
    let points = all.iter().filter(|b| b.get("cachePoint").is_some()).count();
    if points > MAX_BREAKPOINTS {
        return Err(format!("The number of cachePoint blocks ({points}) exceeds the maximum of {MAX_BREAKPOINTS}."));
    }
    let Some(last) = all.iter().rposition(|b| b.get("cachePoint").is_some()) else { return Ok(None) };
    Ok(Some(all.iter().take(last).filter(|b| b.get("cachePoint").is_none()).map(|b| b.to_string()).collect()))
}

/// What Gemini may cache of a request: its system instruction, tools and
/// every content but the last.
pub fn gemini_prefix(obj: &Map<String, Value>) -> String {
    let mut prefix = String::new();
    for key in ["systemInstruction", "tools"] {
        if let Some(v) = obj.get(key) {
            prefix.push_str(&v.to_string());
        }
    }
    if let Some(Value::Array(list)) = obj.get("contents") {
        for item in list.iter().take(list.len().saturating_sub(1)) {
            prefix.push_str(&item.to_string());
        }
    }
    prefix
}

/// What OpenAI may cache of a chat or Responses request: its tools and
/// instructions, and every message or input item but the last.
pub fn automatic_prefix(obj: &Map<String, Value>, items: &str) -> String {
    let mut prefix = String::new();
    for key in ["tools", "instructions"] {
        if let Some(v) = obj.get(key) {
            prefix.push_str(&v.to_string());
        }
    }
    if let Some(Value::Array(list)) = obj.get(items) {
        for item in list.iter().take(list.len().saturating_sub(1)) {
            prefix.push_str(&item.to_string());
        }
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn anthropic_breakpoints_mark_the_prefix_and_follow_anthropics_rules() {
        let eph = json!({"type": "ephemeral"});
        let req = json!({"system": [{"type": "text", "text": "rules", "cache_control": eph}],
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "later"}]}]});
        let prefix = anthropic_prefix(&obj(req)).unwrap().unwrap();
        assert!(prefix.contains("rules") && !prefix.contains("later"));
        let auto = json!({"cache_control": eph, "messages": [{"role": "user", "content": [{"type": "text", "text": "later"}]}]});
        assert!(anthropic_prefix(&obj(auto)).unwrap().unwrap().contains("later"));
        let five = json!({"system": vec![json!({"type": "text", "text": "x", "cache_control": eph}); 5]});
        assert!(anthropic_prefix(&obj(five)).unwrap_err().contains("maximum of 4"));
        let empty = json!({"system": [{"type": "text", "text": "", "cache_control": eph}]});
        assert!(anthropic_prefix(&obj(empty)).unwrap_err().contains("empty text"));
        let inside = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
            "content": [{"type": "text", "text": "r", "cache_control": eph}]}]}]});
        assert!(anthropic_prefix(&obj(inside)).unwrap_err().contains("tool_result"));
        assert_eq!(anthropic_prefix(&obj(json!({"messages": []}))).unwrap(), None);
    }

    #[test]
    fn bedrock_cache_points_mark_what_comes_before_them() {
        let req = json!({"system": [{"text": "rules"}, {"cachePoint": {"type": "default"}}],
                         "messages": [{"role": "user", "content": [{"text": "later"}]}]});
        let prefix = bedrock_prefix(&obj(req)).unwrap().unwrap();
        assert!(prefix.contains("rules") && !prefix.contains("later") && !prefix.contains("cachePoint"));
        assert_eq!(bedrock_prefix(&obj(json!({"messages": []}))).unwrap(), None);
    }
}
