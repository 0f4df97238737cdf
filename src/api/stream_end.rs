//! Whether a stream relayed as its provider wrote it (an OpenAI-wire chat or
//! completions stream, or a front door's native Messages or Responses
//! stream) ended as its API ends a complete answer, and the events that end
//! it as failed when it did not. Translated kinds are checked by their
//! adapter (`providers::emit`); these streams pass through untouched, so only
//! their end is read, without parsing every event:
//!
//! - OpenAI chat and completions: a `finish_reason` for every choice, or
//!   `data: [DONE]`; a `data: {"error": ...}` event is the provider's failure.
//! - Anthropic Messages: `message_stop`; `event: error` is the provider's failure.
//! - OpenAI Responses: `response.completed` or `response.incomplete`;
//!   `response.failed` or `error` is the provider's failure.
//!
//! A stream that ends otherwise (the provider closed it cleanly mid-answer)
//! is ended by `StreamEnd::end` the way the API ends a failed one, so SDKs
//! raise instead of returning a truncated answer.
//!
//! It also counts the output relayed (the bytes of the answer's text, tool
//! arguments and reasoning in the events), which stands in for the usage of
//! a stream that reports none (the client left before its end).

use serde_json::{json, Value};

use crate::api::error::{write_json, ErrorType};
use crate::api::usage::last_number_after;
use crate::sse;
use crate::text;

/// The message every gateway-ended stream carries.
pub const INCOMPLETE_MESSAGE: &str = "The provider's stream ended before the answer was complete.";

/// The format of a stream the gateway relays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI `chat.completion.chunk` or `text_completion` events.
    OpenAi,
    /// Anthropic Messages events.
    Messages,
    /// OpenAI Responses events.
    Responses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// No end seen yet.
    Open,
    /// Ended as a complete answer.
    Complete,
    /// Ended with the provider's own error event.
    Failed,
}

/// Follows a relayed stream's events to its end.
#[derive(Debug)]
pub struct StreamEnd {
    wire: Wire,
    /// Choices the answer has (`n`); it is complete once that many finished.
    choices: u32,
    finishes: u32,
    ending: Ending,
    /// The start of an event not yet complete.
    framer: sse::Framer,
    /// Responses: the last `sequence_number` seen, and the response object
    /// of `response.created` (what a `response.failed` repeats).
    sequence: Option<u64>,
    response: Option<Value>,
    /// The gateway ended the stream itself.
    cut: bool,
    /// Bytes of output (text, arguments, reasoning) in the events so far.
    output_bytes: u64,
}

impl StreamEnd {
    /// A stream of `wire` with `choices` choices (OpenAI's `n`, at least 1).
    pub fn new(wire: Wire, choices: u32) -> Self {
        StreamEnd {
            wire,
            choices: choices.max(1),
            finishes: 0,
            ending: Ending::Open,
            framer: sse::Framer::default(),
            sequence: None,
            response: None,
            cut: false,
            output_bytes: 0,
        }
    }

    /// The next piece of the stream, cut anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(chunk, false, &mut |event| self.event(event));
        self.framer = framer;
    }

    /// The stream's body ended. `None`: it ended as its API ends an answer
    /// (complete, or with the provider's error event); else the events that
    /// end it as failed: for OpenAI an `incomplete_stream` error event and
    /// `data: [DONE]`, for Messages an `error` event, for Responses `error`
    /// and `response.failed`.
    pub fn end(&mut self) -> Option<Vec<u8>> {
        let last = self.framer.take();
        if self.ending == Ending::Open && !last.iter().all(u8::is_ascii_whitespace) {
            self.event(&last);
        }
        if self.ending != Ending::Open {
            return None;
        }
        self.cut = true;
        let mut out = Vec::new();
        // What was relayed of an unfinished event is closed first, so the
        // client reads the events below as events of their own.
        if !last.is_empty() {
            out.extend_from_slice(b"\n\n");
        }
        match self.wire {
            Wire::OpenAi => {
                out.extend_from_slice(b"data: ");
                write_json(&mut out, INCOMPLETE_MESSAGE, ErrorType::Server, None, "incomplete_stream");
                out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
            }
            Wire::Messages => {
                let event = json!({"type": "error", "error": {"type": "api_error", "message": INCOMPLETE_MESSAGE}});
                push_event(&mut out, "error", &event);
            }
            Wire::Responses => {
                let mut next = self.sequence.map_or(0, |s| s.saturating_add(1));
                let error = json!({
                    "type": "error", "code": "server_error", "message": INCOMPLETE_MESSAGE, "param": null,
                    "sequence_number": next,
                });
                push_event(&mut out, "error", &error);
                next = next.saturating_add(1);
                let mut response = self.response.take().unwrap_or_else(|| json!({"object": "response"}));
                if let Some(r) = response.as_object_mut() {
                    r.insert("status".into(), json!("failed"));
                    r.insert("error".into(), json!({"code": "server_error", "message": INCOMPLETE_MESSAGE}));
                }
                let failed = json!({"type": "response.failed", "response": response, "sequence_number": next});
                push_event(&mut out, "response.failed", &failed);
            }
        }
        Some(out)
    }

    /// Whether the stream ended failed: with the provider's error event, or
    /// cut short (`end` then wrote its failed end).
    pub fn failed(&self) -> bool {
        self.cut || self.ending == Ending::Failed
    }

    /// Output tokens relayed so far: about 4 bytes a token, as the gateway
    /// estimates prompts.
    pub fn output_tokens(&self) -> u64 {
        self.output_bytes.div_ceil(4)
    }

    fn event(&mut self, event: &[u8]) {
        let keys: &[&[u8]] = match self.wire {
            Wire::OpenAi => &[b"\"content\"", b"\"reasoning_content\"", b"\"arguments\"", b"\"refusal\"", b"\"text\""],
            Wire::Messages => &[b"\"text\"", b"\"partial_json\"", b"\"thinking\""],
            Wire::Responses => &[b"\"delta\""],
        };
        if let Some(data) = sse::data(event) {
            let bytes: usize = keys.iter().map(|k| string_bytes_after(&data, k)).sum();
            self.output_bytes = self.output_bytes.saturating_add(bytes as u64);
        }
        if self.ending != Ending::Open {
            return;
        }
        match self.wire {
            Wire::OpenAi => self.openai_event(event),
            Wire::Messages => match event_name(event).as_deref() {
                Some("message_stop") => self.ending = Ending::Complete,
                Some("error") => self.ending = Ending::Failed,
                _ => {}
            },
            Wire::Responses => {
                if let Some(n) = last_number_after(event, b"\"sequence_number\"") {
                    self.sequence = Some(n);
                }
                match event_name(event).as_deref() {
                    Some("response.completed" | "response.incomplete") => self.ending = Ending::Complete,
                    Some("response.failed" | "error") => self.ending = Ending::Failed,
                    Some("response.created") => {
                        self.response = sse::data(event)
                            .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                            .and_then(|mut v| v.get_mut("response").map(Value::take));
                    }
                    _ => {}
                }
            }
        }
    }

    fn openai_event(&mut self, event: &[u8]) {
        let Some(data) = sse::data(event) else { return };
        let data = data.trim_ascii();
        if data.starts_with(b"[DONE]") {
            self.ending = Ending::Complete;
            return;
        }
        // `"error"` with both quotes occurs in JSON only as a key or a whole string value.
        if text::values_after(data, b"\"error\"").next().is_some()
            && serde_json::from_slice::<Value>(data).is_ok_and(|v| v.get("error").is_some_and(|e| !e.is_null()))
        {
            self.ending = Ending::Failed;
            return;
        }
        self.finishes = self.finishes.saturating_add(finishes_in(data));
        if self.finishes >= self.choices {
            self.ending = Ending::Complete;
        }
    }
}

fn push_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Into `out` as `to_vec` writes (not `Display`, a second serializer in the module); a `Value` always serializes.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// An event's name: its `event:` line, else the `type` of its data.
fn event_name(event: &[u8]) -> Option<String> {
    if let Some(name) = sse::name(event) {
        return std::str::from_utf8(name.trim_ascii()).ok().map(str::to_string);
    }
    let v: Value = serde_json::from_slice(&sse::data(event)?).ok()?;
    v.get("type")?.as_str().map(str::to_string)
}

/// How many `"finish_reason"` keys of `data` hold a value (not `null`).
fn finishes_in(data: &[u8]) -> u32 {
    const KEY: &[u8] = b"\"finish_reason\"";
    text::values_after(data, KEY).filter(|value| value.first() == Some(&b'"')).count() as u32
}

/// The bytes of every string value of `key` in `data` (as written, escapes included).
fn string_bytes_after(data: &[u8], key: &[u8]) -> usize {
    let mut total = 0;
    for value in text::values_after(data, key) {
        let Some(value) = value.strip_prefix(b"\"") else { continue };
        let mut escaped = false;
        let len = value
            .iter()
            .take_while(|b| {
                let end = **b == b'"' && !escaped;
                escaped = **b == b'\\' && !escaped;
                !end
            })
            .count();
        total += len;
    }
    total
}

#[cfg(test)]
mod tests {

    use super::*;

    fn chunk(content: &str, finish: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":{finish}}}]}}\n\n"
        )
    }

    /// Feeds `stream` cut at every byte, and returns what `end` wrote each time (all equal).
    fn ended(wire: Wire, choices: u32, stream: &str) -> (Option<Vec<u8>>, bool) {
        let mut results = Vec::new();
        for at in 0..=stream.len() {
            let mut s = StreamEnd::new(wire, choices);
            let (a, b) = stream.as_bytes().split_at(at);
            s.feed(a);
            s.feed(b);
            let end = s.end();
            results.push((end, s.failed()));
        }
        let first = results[0].clone();
        assert!(results.iter().all(|r| *r == first), "the same whatever the chunking");
        first
    }

    fn events(sse: &[u8]) -> Vec<(String, Value)> {
        String::from_utf8(sse.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                (name, serde_json::from_str(data).unwrap_or(Value::String(data.into())))
            })
            .collect()
    }

    #[test]
    fn an_openai_stream_with_its_finish_or_done_is_complete() {
        let finished = chunk("a", "null") + &chunk("", "\"stop\"");
        assert_eq!(ended(Wire::OpenAi, 1, &finished), (None, false), "a finish without [DONE]");
        assert_eq!(ended(Wire::OpenAi, 1, &(finished.clone() + "data: [DONE]\n\n")), (None, false));
        assert_eq!(ended(Wire::OpenAi, 1, &(chunk("a", "null") + "data: [DONE]\n\n")), (None, false));
        let spaced = "data: {\"choices\": [{\"delta\": {}, \"finish_reason\" : \"length\"}]}\r\n\r\n";
        assert_eq!(ended(Wire::OpenAi, 1, spaced), (None, false));
    }

    #[test]
    fn an_openai_stream_cut_short_ends_with_incomplete_stream_and_done() {
        for stream in [chunk("a", "null"), chunk("a", "null") + &chunk("b", "null")[..30], String::new()] {
            let (end, failed) = ended(Wire::OpenAi, 1, &stream);
            let end = end.unwrap();
            assert!(failed);
            let ev = events(&end);
            assert_eq!(ev.len(), 2, "{ev:?}");
            assert_eq!(ev[0].1["error"]["code"], "incomplete_stream");
            assert_eq!(ev[0].1["error"]["type"], "server_error");
            assert_eq!(ev[1].1, "[DONE]");
            assert!(end.starts_with(b"data: ") || end.starts_with(b"\n\n"));
        }
        // Text that quotes the key is no finish; a second choice must finish too.
        let quoted = chunk("say \\\"finish_reason\\\": \\\"stop\\\"", "null");
        assert!(ended(Wire::OpenAi, 1, &quoted).1);
        assert!(ended(Wire::OpenAi, 2, &(chunk("a", "\"stop\""))).1);
        assert!(!ended(Wire::OpenAi, 2, &(chunk("a", "\"stop\"") + &chunk("b", "\"stop\""))).1);
    }

    #[test]
    fn the_provider_s_error_event_is_its_own_end() {
        let error = "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
        assert_eq!(ended(Wire::OpenAi, 1, &(chunk("a", "null") + error)), (None, true));
        let text_saying_error = chunk("\\\"error\\\"", "null") + "data: {\"choices\":[],\"x\":\"error\"}\n\n";
        assert!(ended(Wire::OpenAi, 1, &text_saying_error).0.is_some(), "no error event: cut");
        let anthropic = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        assert_eq!(ended(Wire::Messages, 1, anthropic), (None, true));
        let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":3}\n\n";
        assert_eq!(ended(Wire::Responses, 1, failed), (None, true));
    }

    const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"message_stop\"}}\n\n";

    #[test]
    fn the_output_relayed_is_counted_in_every_wire() {
        let mut s = StreamEnd::new(Wire::OpenAi, 1);
        s.feed((chunk("", "null") + &chunk("abcd", "null") + &chunk("ef\\\"g", "null")).as_bytes());
        assert_eq!(s.output_tokens(), 3, "4 + 5 bytes, as written");
        let call = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n";
        s.feed(call.as_bytes());
        assert_eq!(s.output_tokens(), 5, "and 9 bytes of arguments");
        let mut m = StreamEnd::new(Wire::Messages, 1);
        m.feed(MESSAGE_START.as_bytes());
        assert_eq!(m.output_tokens(), 3, "the text delta, not the block start");
        let mut r = StreamEnd::new(Wire::Responses, 1);
        let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"12345678\"}\n\n";
        let done = "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"12345678\"}\n\n";
        r.feed(format!("{delta}{done}").as_bytes());
        assert_eq!(r.output_tokens(), 2, "deltas only, not the whole text again");
    }

    #[test]
    fn a_messages_stream_is_complete_at_message_stop_else_ends_with_an_error_event() {
        let done = format!("{MESSAGE_START}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
        assert_eq!(ended(Wire::Messages, 1, &done), (None, false));
        let (end, failed) = ended(Wire::Messages, 1, MESSAGE_START);
        assert!(failed);
        let ev = events(&end.unwrap());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "error");
        assert_eq!(ev[0].1, json!({"type": "error", "error": {"type": "api_error", "message": INCOMPLETE_MESSAGE}}));
        // Events without `event:` lines are named by their data's type.
        assert_eq!(ended(Wire::Messages, 1, "data: {\"type\":\"message_stop\"}\n\n"), (None, false));
        // Any line end: `\r\n` or a lone `\r`, cut anywhere.
        assert_eq!(ended(Wire::Messages, 1, &done.replace('\n', "\r\n")), (None, false));
        assert_eq!(ended(Wire::Messages, 1, &done.replace('\n', "\r")), (None, false));
        assert!(ended(Wire::Messages, 1, &MESSAGE_START.replace('\n', "\r")).1);
    }

    #[test]
    fn a_responses_stream_is_complete_at_completed_or_incomplete_else_fails_the_response() {
        let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4o\",\"output\":[]}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"delta\":\"hi\"}\n\n";
        for end in ["response.completed", "response.incomplete"] {
            let stream = format!("{created}event: {end}\ndata: {{\"type\":\"{end}\",\"sequence_number\":5}}\n\n");
            assert_eq!(ended(Wire::Responses, 1, &stream), (None, false));
        }
        let (end, failed) = ended(Wire::Responses, 1, created);
        assert!(failed);
        let ev = events(&end.unwrap());
        assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["error", "response.failed"]);
        assert_eq!(ev[0].1["code"], "server_error");
        assert_eq!(ev[0].1["sequence_number"], 5);
        assert_eq!(ev[1].1["sequence_number"], 6);
        let response = &ev[1].1["response"];
        assert_eq!(
            (&response["id"], &response["status"], &response["model"]),
            (&json!("resp_1"), &json!("failed"), &json!("gpt-4o"))
        );
        assert_eq!(response["error"]["code"], "server_error");
    }
}
