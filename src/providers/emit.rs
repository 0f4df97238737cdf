//! Writing OpenAI `chat.completion.chunk` SSE events for a translated stream.

use serde_json::{json, Value};

use crate::api::error::{write_json, ErrorType};
use crate::api::usage::Tokens;

use super::openai_out::{to_vec, usage_json, Meta};
use super::structured::STRUCTURED_OUTPUT_TOOL;

/// A tool call of the upstream stream.
#[derive(Debug)]
struct ToolSlot {
    choice: u32,
    /// The kind's index of the call.
    upstream: u32,
    /// The index sent to the client; `None` for the structured-output tool,
    /// whose arguments are sent as content.
    sent: Option<u32>,
}

/// Writes OpenAI `chat.completion.chunk` SSE events, tracking what was sent
/// so every stream starts with the assistant role and ends exactly once.
///
/// Usage follows OpenAI: only when the client asked (`include_usage`), as
/// one last chunk with empty `choices` before `[DONE]`, every other chunk
/// then carrying `"usage": null`. Kinds put what they learn in `usage`.
#[derive(Debug)]
pub(crate) struct Emitter {
    pub meta: Meta,
    /// The latest usage the provider reported.
    pub usage: Option<Tokens>,
    include_usage: bool,
    /// Choice indexes whose first (role) chunk was sent.
    started: Vec<u32>,
    /// Choice indexes whose finish chunk was sent.
    finished: Vec<u32>,
    tools: Vec<ToolSlot>,
    errored: bool,
    done: bool,
}

impl Emitter {
    pub fn new(meta: Meta, include_usage: bool) -> Self {
        Emitter {
            meta,
            usage: None,
            include_usage,
            started: Vec::new(),
            finished: Vec::new(),
            tools: Vec::new(),
            errored: false,
            done: false,
        }
    }

    /// The writer of a stream's last chunks when its first choice's role
    /// chunk already reached the client (a continued stream).
    pub fn resuming(meta: Meta, include_usage: bool) -> Self {
        Emitter { started: vec![0], ..Emitter::new(meta, include_usage) }
    }

    /// True once the stream ended or failed: later upstream events are ignored.
    pub fn closed(&self) -> bool {
        self.errored || self.done
    }

    /// True once the stream ended with an error event (the provider's, an
    /// unreadable event, or `incomplete_stream` for a stream cut short).
    pub fn failed(&self) -> bool {
        self.errored
    }

    /// True when the stream failed before any chunk was written.
    pub fn failed_before_output(&self) -> bool {
        self.errored && self.started.is_empty()
    }

    /// True while choice `index` may still receive content.
    fn open(&self, index: u32) -> bool {
        !self.closed() && !self.finished.contains(&index)
    }

    fn write(&self, out: &mut Vec<u8>, choices: Value, usage: Option<Tokens>) {
        let mut body = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if let (true, Some(obj)) = (self.include_usage, body.as_object_mut()) {
            obj.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&to_vec(&body));
        out.extend_from_slice(b"\n\n");
    }

    fn chunk(&self, out: &mut Vec<u8>, index: u32, delta: Value, finish: Option<&str>) {
        let choices = json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        self.write(out, choices, None);
    }

    /// Sends the role chunk of choice `index` unless already sent.
    pub fn start(&mut self, out: &mut Vec<u8>, index: u32) {
        if self.closed() || self.started.contains(&index) {
            return;
        }
        self.started.push(index);
        self.chunk(out, index, json!({"role": "assistant", "content": ""}), None);
    }

    pub fn text(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "content": text }), None);
    }

    pub fn reasoning(&mut self, out: &mut Vec<u8>, index: u32, text: &str) {
        if text.is_empty() || !self.open(index) {
            return;
        }
        self.start(out, index);
        self.chunk(out, index, json!({ "reasoning_content": text }), None);
    }

    /// The first delta of tool call `tool_index`: id, name and any arguments
    /// known. The structured-output tool's arguments go out as content, and
    /// the other calls are numbered without it.
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
        let sent = if name == STRUCTURED_OUTPUT_TOOL {
            None
        } else {
            Some(self.tools.iter().filter(|t| t.choice == index && t.sent.is_some()).count() as u32)
        };
        self.tools.push(ToolSlot { choice: index, upstream: tool_index, sent });
        let Some(sent) = sent else {
            self.start(out, index);
            return self.text(out, index, arguments);
        };
        self.start(out, index);
        let call =
            json!({"index": sent, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None);
    }

    /// A fragment of the arguments of tool call `tool_index`.
    pub fn tool_arguments(&mut self, out: &mut Vec<u8>, index: u32, tool_index: u32, fragment: &str) {
        if fragment.is_empty() || !self.open(index) {
            return;
        }
        let slot = self.tools.iter().find(|t| t.choice == index && t.upstream == tool_index);
        let Some(sent) = slot.map_or(Some(tool_index), |t| t.sent) else {
            return self.text(out, index, fragment);
        };
        self.start(out, index);
        let call = json!({"index": sent, "function": {"arguments": fragment}});
        self.chunk(out, index, json!({ "tool_calls": [call] }), None);
    }

    /// The last chunk of choice `index`. A choice whose only call was the
    /// structured-output tool's finishes as `stop`: its answer was content.
    pub fn finish(&mut self, out: &mut Vec<u8>, index: u32, reason: &str) {
        if !self.open(index) {
            return;
        }
        let mut calls = self.tools.iter().filter(|t| t.choice == index);
        let structured_only = calls.clone().next().is_some() && calls.all(|t| t.sent.is_none());
        let reason = if reason == "tool_calls" && structured_only { "stop" } else { reason };
        self.start(out, index);
        self.finished.push(index);
        self.chunk(out, index, json!({}), Some(reason));
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
    /// gets an error event first, so truncation is not mistaken for an
    /// answer, and a finished one the usage chunk if the client asked.
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
        if let (false, true, Some(usage)) = (self.errored, self.include_usage, self.usage) {
            self.write(out, json!([]), Some(usage));
        }
        self.done = true;
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::error::assert_openai_error;
    use crate::providers::test_support::events;

    fn meta() -> Meta {
        Meta { id: "x".into(), created: 5, model: "m".into() }
    }

    const USAGE: Tokens =
        Tokens { prompt: 3, completion: 4, total: None, cached: Some(1), cache_write: None, reasoning: None };

    #[test]
    fn emitter_sequence_without_usage() {
        let mut e = Emitter::new(meta(), false);
        let mut out = Vec::new();
        e.text(&mut out, 0, "hi");
        e.tool_start(&mut out, 0, 0, "c1", "f", "");
        e.tool_arguments(&mut out, 0, 0, "{}");
        e.usage = Some(USAGE);
        e.finish(&mut out, 0, "tool_calls");
        e.finish(&mut out, 0, "stop");
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
        assert_eq!(ev[5], "[DONE]");
        assert!(ev.iter().all(|e| e.get("usage").is_none()), "no usage unless asked: {ev:?}");
    }

    #[test]
    fn usage_chunk_ends_the_stream_when_asked() {
        let mut e = Emitter::new(meta(), true);
        let mut out = Vec::new();
        e.text(&mut out, 0, "hi");
        e.usage = Some(USAGE);
        e.finish(&mut out, 0, "stop");
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev.len(), 5);
        assert!(ev[..3].iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()), "{ev:?}");
        assert_eq!(ev[3]["choices"], json!([]));
        assert_eq!(ev[3]["object"], "chat.completion.chunk");
        assert_eq!(
            ev[3]["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}})
        );
        assert_eq!(ev[4], "[DONE]");
    }

    #[test]
    fn failed_stream_has_no_usage_chunk() {
        let mut e = Emitter::new(meta(), true);
        let mut out = Vec::new();
        e.usage = Some(USAGE);
        e.text(&mut out, 0, "partial");
        e.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev[2]["error"]["code"], "incomplete_stream");
        assert_eq!(ev[3], "[DONE]");
        assert_eq!(e.usage, Some(USAGE), "still known to the host");
    }

    #[test]
    fn structured_output_tool_streams_as_content() {
        let mut e = Emitter::new(meta(), false);
        let mut out = Vec::new();
        e.tool_start(&mut out, 0, 0, "c1", STRUCTURED_OUTPUT_TOOL, "");
        e.tool_arguments(&mut out, 0, 0, "{\"a\":");
        e.tool_arguments(&mut out, 0, 0, "1}");
        e.finish(&mut out, 0, "tool_calls");
        e.end(&mut out);
        let ev = events(&out);
        assert!(ev.iter().all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()), "{ev:?}");
        let text: String = ev.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, "{\"a\":1}");
        assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn other_tools_are_numbered_without_the_structured_output_tool() {
        let mut e = Emitter::new(meta(), false);
        let mut out = Vec::new();
        e.tool_start(&mut out, 0, 0, "c1", STRUCTURED_OUTPUT_TOOL, "{}");
        e.tool_start(&mut out, 0, 1, "c2", "f", "");
        e.tool_arguments(&mut out, 0, 1, "{}");
        e.finish(&mut out, 0, "tool_calls");
        let ev = events(&out);
        let calls: Vec<&Value> = ev.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c[0]["index"] == 0));
        assert_eq!(ev.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn error_events_are_openai_errors() {
        let mut e = Emitter::new(meta(), false);
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
