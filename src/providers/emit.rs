//! Writing OpenAI `chat.completion.chunk` SSE events for a translated stream.

use serde_json::{json, Value};

use crate::api::error::{write_json, ErrorType};

use super::openai_out::{to_vec, Meta, Usage};

/// Writes OpenAI `chat.completion.chunk` SSE events, tracking what was sent
/// so every stream starts with the assistant role and ends exactly once.
#[derive(Debug)]
pub(super) struct Emitter {
    pub meta: Meta,
    /// Choice indexes whose first (role) chunk was sent.
    started: Vec<u32>,
    /// Choice indexes whose finish chunk was sent.
    finished: Vec<u32>,
    errored: bool,
    done: bool,
}

impl Emitter {
    pub fn new(meta: Meta) -> Self {
        Emitter { meta, started: Vec::new(), finished: Vec::new(), errored: false, done: false }
    }

    /// True once the stream ended or failed: later upstream events are ignored.
    pub fn closed(&self) -> bool {
        self.errored || self.done
    }

    /// True while choice `index` may still receive content.
    fn open(&self, index: u32) -> bool {
        !self.closed() && !self.finished.contains(&index)
    }

    pub fn finished_count(&self) -> usize {
        self.finished.len()
    }

    fn chunk(&self, out: &mut Vec<u8>, index: u32, delta: Value, finish: Option<&str>, usage: Option<Usage>) {
        let mut body = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
            obj.insert("usage".into(), u.to_json());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&to_vec(&body));
        out.extend_from_slice(b"\n\n");
    }

    /// Sends the role chunk of choice `index` unless already sent.
    pub fn start(&mut self, out: &mut Vec<u8>, index: u32) {
        if self.closed() || self.started.contains(&index) {
            return;
        }
        self.started.push(index);
        self.chunk(out, index, json!({"role": "assistant", "content": ""}), None, None);
    }

    pub fn text(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "content": text }), None, None);
    }

    pub fn reasoning(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "reasoning_content": text }), None, None);
    }

    /// The first delta of tool call `tool_index`: id, name and any arguments known.
    pub fn tool_start(
        &mut self,
        out: &mut Vec<u8>,
        index: u32,
        tool_index: u32,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        if !self.open(index) {
            return;
        }
        self.start(out, index);
        let call = json!({"index": tool_index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None, None);
    }

    /// A fragment of the arguments of tool call `tool_index`.
    pub fn tool_arguments(&mut self, out: &mut Vec<u8>, index: u32, tool_index: u32, fragment: &str) {
        if fragment.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        let call = json!({"index": tool_index, "function": {"arguments": fragment}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None, None);
    }

    /// The last chunk of choice `index`, with usage when known.
    pub fn finish(&mut self, out: &mut Vec<u8>, index: u32, reason: &str, usage: Option<Usage>) {
        if !self.open(index) {
            return;
        }
        self.start(out, index);
        self.finished.push(index);
        self.chunk(out, index, json!({}), Some(reason), usage);
    }

    /// An error event (`data: {"error":{...}}`), as OpenAI sends mid-stream.
    pub fn error(&mut self, out: &mut Vec<u8>, message: &str, kind: ErrorType, code: &str) {
        if self.closed() {
            return;
        }
        self.errored = true;
        out.extend_from_slice(b"data: ");
        write_json(out, message, kind, None, code);
        out.extend_from_slice(b"\n\n");
    }

    /// An error event for a provider stream that cannot be read.
    pub fn unreadable(&mut self, out: &mut Vec<u8>, message: &str) {
        self.error(out, message, ErrorType::Server, "invalid_upstream_response");
    }

    /// Ends the stream with `data: [DONE]`; a stream that never finished
    /// gets an error event first, so truncation is not mistaken for an answer.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.errored && self.finished.is_empty() {
            self.error(
                out,
                "The provider's stream ended before the answer was complete.",
                ErrorType::Server,
                "incomplete_stream",
            );
        }
        self.done = true;
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::api::error::assert_openai_error;
    use crate::providers::test_support::events;

    #[test]
    fn emitter_sequence() {
        let mut e = Emitter::new(Meta { id: "x".into(), created: 5, model: "m".into() });
        let mut out = Vec::new();
        e.text(&mut out, 0, "hi");
        e.tool_start(&mut out, 0, 0, "c1", "f", "");
        e.tool_arguments(&mut out, 0, 0, "{}");
        e.finish(
            &mut out,
            0,
            "tool_calls",
            Some(Usage { prompt: 3, completion: 4, total: None, cached: Some(1), reasoning: None }),
        );
        e.finish(&mut out, 0, "stop", None);
        e.text(&mut out, 0, "ignored");
        e.end(&mut out);
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev.len(), 6);
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(ev[0]["object"], "chat.completion.chunk");
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(
            ev[2]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(ev[3]["choices"][0]["delta"]["tool_calls"][0], json!({"index": 0, "function": {"arguments": "{}"}}));
        assert_eq!(ev[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}})
        );
        assert_eq!(ev[5], "[DONE]");
    }

    #[test]
    fn truncated_stream_ends_with_an_error() {
        let mut e = Emitter::new(Meta { id: "x".into(), created: 0, model: "m".into() });
        let mut out = Vec::new();
        e.text(&mut out, 0, "partial");
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev[2]["error"]["code"], "incomplete_stream");
        assert_eq!(ev[3], "[DONE]");
    }

    #[test]
    fn error_events_are_openai_errors() {
        let mut e = Emitter::new(Meta { id: "x".into(), created: 0, model: "m".into() });
        let mut out = Vec::new();
        e.unreadable(&mut out, "garbled");
        let text = std::str::from_utf8(&out).unwrap();
        let data = text.strip_prefix("data: ").and_then(|t| t.strip_suffix("\n\n")).unwrap();
        let error = assert_openai_error(data.as_bytes());
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("server_error"), Some("invalid_upstream_response"))
        );
    }
}
