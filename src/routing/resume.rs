//! Stream continuation (`resume_streams`): a chat completions stream that
//! breaks after its first byte (an error event, or an end without a
//! `finish_reason`) is continued once on another member and spliced into the
//! same client stream. The plain part lives here: `StreamWatch` follows the
//! OpenAI stream the client gets and holds the break back, `continuation_body`
//! asks another member for the rest, and `StreamWatch::tail` writes its answer
//! as the stream's last chunks (same id, no repeated text, usage summed).

use serde_json::Value;

use crate::api::model_rules::claude_version;
use crate::api::request::{push_json_string, ParsedRequest};
use crate::api::usage::Tokens;
use crate::config::ProviderKind;
use crate::doors::{first_choice, ChatStreamDecoder, StreamPart};
use crate::providers::{Emitter, Meta};
use crate::sse;

/// Asked after the partial answer of kinds that cannot continue a trailing assistant message.
pub const CONTINUE_INSTRUCTION: &str = "Your previous answer was cut off. Continue it exactly where it stopped: \
     do not repeat anything already written and add no preamble.";

/// Whether a continuation on `model` of a `kind` member is a prefill (the
/// partial answer as the last, assistant, message) rather than the partial
/// answer followed by [`CONTINUE_INSTRUCTION`]: the member's `prefill` when
/// configured, else only Claude models before 4.6 on Anthropic's Messages and
/// Bedrock's Converse (Claude 4.6 and later refuse a prefill with a 400: "This
/// model does not support assistant message prefill"; a name read as neither
/// gets the instruction, which every model takes).
pub fn prefills(kind: ProviderKind, model: &str, configured: Option<bool>) -> bool {
    configured
        .unwrap_or_else(|| matches!(kind, ProviderKind::Anthropic | ProviderKind::Bedrock) && claude_before_4_6(model))
}

/// A Claude model name (`claude-3-5-sonnet-20241022`, `claude-opus-4-1`,
/// `anthropic.claude-3-haiku-20240307-v1:0`, `us.anthropic.claude-opus-4-6-v1`)
/// of a version before 4.6 (`api::model_rules::claude_version`).
pub fn claude_before_4_6(model: &str) -> bool {
    claude_version(model).is_some_and(|v| v < (4, 6))
}

/// What the client's OpenAI stream said so far, and the break held back from it.
#[derive(Debug, Default)]
pub struct StreamWatch {
    decoder: ChatStreamDecoder,
    /// The start of an event not yet complete: sent on once it is.
    held: Vec<u8>,
    /// The break (an error event, `[DONE]` without a finish) and all after
    /// it: sent only if the stream cannot be continued.
    cut: Vec<u8>,
    /// The answer's text (first choice) the client got.
    text: String,
    /// The id, `created` and model every chunk of the client's stream repeats.
    meta: Option<Meta>,
    finished: bool,
    /// Something a text continuation cannot carry on (a tool call): the stream ends as it would.
    opaque: bool,
    usage: Option<Tokens>,
}

/// The continuation's answer, read from an OpenAI `chat.completion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continued {
    pub text: String,
    pub finish: String,
    /// (prompt, completion) tokens.
    pub usage: Option<Tokens>,
}

impl StreamWatch {
    /// The next piece of the client's stream. `None`: it goes on as it is;
    /// else what replaces it (the break and what follows are held back, and
    /// so is an event's start until the event is complete).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        if !self.cut.is_empty() {
            self.cut.extend_from_slice(chunk);
            return Some(Vec::new());
        }
        let as_is = self.held.is_empty();
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let mut start = 0;
        while let Some((len, separator)) = sse::event_end(data.get(start..).unwrap_or_default(), 0) {
            let end = start + len + separator;
            if self.breaks(data.get(start..end).unwrap_or_default()) {
                return Some(self.cut_at(data, start));
            }
            start = end;
        }
        let rest = data.get(start..).unwrap_or_default();
        if end_of_stream && !rest.is_empty() {
            if self.breaks(rest) {
                return Some(self.cut_at(data, start));
            }
            start = data.len();
        }
        if as_is && start == data.len() {
            return None;
        }
        self.held = data.get(start..).unwrap_or_default().to_vec();
        data.truncate(start);
        Some(data)
    }

    fn cut_at(&mut self, mut data: Vec<u8>, at: usize) -> Vec<u8> {
        self.cut = data.split_off(at.min(data.len()));
        data
    }

    /// Reads one complete event; true when it is the break.
    fn breaks(&mut self, event: &[u8]) -> bool {
        let mut broke = false;
        for part in self.decoder.feed(event, true) {
            match part {
                StreamPart::Start { .. } => self.meta = meta_of(event),
                StreamPart::Text(text) => self.text.push_str(&text),
                StreamPart::ToolStart { .. } | StreamPart::ToolArgs { .. } => self.opaque = true,
                StreamPart::Finish { .. } => self.finished = true,
                StreamPart::Usage(usage) => self.usage = Some(usage),
                StreamPart::Error { .. } | StreamPart::Done => broke |= !self.finished && !self.opaque,
            }
        }
        broke
    }

    /// The stream ended without its finish, after text a continuation can
    /// carry on (the client got the first chunk's id, which the rest reuses).
    pub fn broken(&self) -> bool {
        !self.finished && !self.opaque && self.meta.is_some() && !self.text.trim().is_empty()
    }

    /// The answer's text the client got.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The tokens the stream itself reported.
    pub fn usage(&self) -> Option<Tokens> {
        self.usage
    }

    /// What was held back of a stream that is not continued (not
    /// `broken`: no text before the break).
    pub fn take_cut(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.cut)
    }

    /// The end of a stream that could not be continued: what was held back,
    /// or (for a stream that just stopped) an `incomplete_stream` error event.
    pub fn failed_end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.cut);
        if out.is_empty() {
            Emitter::resuming(self.meta.clone().unwrap_or_default(), false).end(&mut out);
        }
        if !out.ends_with(b"data: [DONE]\n\n") {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    /// The last chunks of the client's stream: the continuation's new text,
    /// its finish, the usage of both attempts when the client asked
    /// (`include_usage`, `first`: what the broken attempt reported), then
    /// `[DONE]`. Also returns the summed usage.
    pub fn tail(&self, answer: &Continued, include_usage: bool, first: Option<Tokens>) -> (Vec<u8>, Tokens) {
        let (first, second) = (first.unwrap_or_default(), answer.usage.unwrap_or_default());
        let usage = Tokens::new(first.prompt + second.prompt, first.completion + second.completion);
        let mut emitter = Emitter::resuming(self.meta.clone().unwrap_or_default(), include_usage);
        let mut out = Vec::new();
        emitter.text(&mut out, 0, new_text(&self.text, &answer.text));
        emitter.finish(&mut out, 0, &answer.finish);
        emitter.usage = Some(usage);
        emitter.end(&mut out);
        (out, usage)
    }
}

/// The id, `created` and model of a chunk event.
fn meta_of(event: &[u8]) -> Option<Meta> {
    let v: Value = serde_json::from_slice(sse::data(event)?.trim_ascii()).ok()?;
    Some(Meta {
        id: v.get("id")?.as_str()?.to_string(),
        created: v.get("created").and_then(Value::as_u64).unwrap_or(0),
        model: v.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
    })
}

/// The client's chat request (`chat`), asking for the rest of `partial`
/// as a whole answer: as a prefill (`prefill`), else followed by
/// `CONTINUE_INSTRUCTION`. Written from the request's raw fields (the
/// prompt is not parsed again); `None` when it has no messages array.
pub fn continuation_body(chat: &ParsedRequest<'_>, partial: &str, prefill: bool) -> Option<Vec<u8>> {
    let messages = chat.field("messages")?.get().trim_end().strip_suffix(']')?.trim_end();
    let mut out = Vec::with_capacity(messages.len() + partial.len() + 256);
    out.extend_from_slice(b"{\"model\":");
    push_json_string(&mut out, &chat.target);
    for (key, value) in chat.model_fields() {
        if !matches!(key, "messages" | "stream" | "stream_options" | "n") {
            out.push(b',');
            push_json_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.extend_from_slice(b",\"stream\":false,\"messages\":");
    out.extend_from_slice(messages.as_bytes());
    if !messages.ends_with('[') {
        out.push(b',');
    }
    // Anthropic refuses a prefill that ends with whitespace.
    out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
    push_json_string(&mut out, if prefill { partial.trim_end() } else { partial });
    if !prefill {
        out.extend_from_slice(b"},{\"role\":\"user\",\"content\":");
        push_json_string(&mut out, CONTINUE_INSTRUCTION);
    }
    out.extend_from_slice(b"}]}");
    Some(out)
}

/// The text, finish and usage of an OpenAI `chat.completion`; `None` when it
/// has no first choice or calls tools (nothing a text stream can carry on).
pub fn read_answer(openai: &[u8]) -> Option<Continued> {
    let v: Value = serde_json::from_slice(openai).ok()?;
    let choice = first_choice(&v)?;
    let message = choice.get("message")?;
    if message.get("tool_calls").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
        return None;
    }
    Some(Continued {
        text: message.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        finish: choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop").to_string(),
        usage: Tokens::from_json(v.get("usage")),
    })
}

/// What `next` adds after `before`: a start of `next` that repeats the end
/// of `before` (whole words, up to `MAX_OVERLAP` bytes) is dropped, and so is
/// its leading whitespace when `before` already ends with some.
pub fn new_text<'a>(before: &str, next: &'a str) -> &'a str {
    const MAX_OVERLAP: usize = 2000;
    let said = before.trim_end();
    let candidate = next.trim_start();
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let overlap = candidate
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&k| k <= MAX_OVERLAP)
        .filter(|&k| {
            let (repeated, after) = candidate.split_at(k);
            let Some(before_overlap) = said.strip_suffix(repeated) else { return false };
            // Whole words only: "a" is no overlap of "... a" with "and".
            let starts_word = !(word(before_overlap.chars().last()) && word(repeated.chars().next()));
            let ends_word = !(word(repeated.chars().last()) && word(after.chars().next()));
            starts_word && ends_word
        })
        .last();
    let rest = match overlap {
        Some(k) => candidate.get(k..).unwrap_or_default(),
        None => next,
    };
    if before.ends_with(char::is_whitespace) {
        rest.trim_start()
    } else {
        rest
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::providers::test_support::events;
    use serde_json::json;

    fn chunk(delta: &str, finish: &str) -> String {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    }

    fn started() -> String {
        chunk(r#"{"role":"assistant","content":""}"#, "null") + &chunk(r#"{"content":"The quick "}"#, "null")
    }

    #[test]
    fn a_stream_that_finishes_passes_untouched() {
        let mut w = StreamWatch::default();
        assert_eq!(w.feed(started().as_bytes(), false), None);
        let end = chunk("{}", "\"stop\"") + "data: [DONE]\n\n";
        assert_eq!(w.feed(end.as_bytes(), true), None);
        assert!(!w.broken());
    }

    #[test]
    fn an_error_event_and_what_follows_are_held_back() {
        let mut w = StreamWatch::default();
        let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let body = started() + error;
        assert_eq!(w.feed(body.as_bytes(), false), Some(started().into_bytes()));
        assert_eq!(w.feed(b"data: [DONE]\n\n", true), Some(Vec::new()));
        assert!(w.broken());
        assert_eq!(w.text(), "The quick ");
        assert_eq!(w.failed_end(), format!("{error}data: [DONE]\n\n").into_bytes(), "as the provider ended it");
    }

    #[test]
    fn a_clean_cut_is_broken_and_its_failed_end_says_so() {
        let mut w = StreamWatch::default();
        let body = started();
        let (a, b) = body.split_at(40);
        // An event split across pieces goes on once complete.
        assert_eq!(w.feed(a.as_bytes(), false), Some(Vec::new()));
        assert_eq!(w.feed(b.as_bytes(), false), Some(body.clone().into_bytes()));
        assert_eq!(w.feed(b"", true), None);
        assert!(w.broken());
        let end = events(&w.failed_end());
        assert_eq!(end[0]["error"]["code"], "incomplete_stream");
        assert_eq!(end[1], "[DONE]");
    }

    #[test]
    fn tool_calls_are_not_continued() {
        let mut w = StreamWatch::default();
        let call = chunk(r#"{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}"#, "null");
        w.feed((started() + &call).as_bytes(), true);
        assert!(!w.broken());
    }

    #[test]
    fn the_tail_reuses_the_stream_id_drops_the_overlap_and_sums_usage() {
        let mut w = StreamWatch::default();
        w.feed(started().as_bytes(), true);
        let answer =
            Continued { text: "quick brown fox.".into(), finish: "stop".into(), usage: Some(Tokens::new(10, 3)) };
        let (tail, usage) = w.tail(&answer, true, Some(Tokens::new(9, 2)));
        assert_eq!(usage, Tokens::new(19, 5));
        let ev = events(&tail);
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(ev[..3].iter().all(|e| e["id"] == "chatcmpl-1" && e["created"] == 7 && e["model"] == "m"));
        assert_eq!(ev[0]["choices"][0]["delta"]["content"], "brown fox.");
        assert_eq!(ev[0]["usage"], Value::Null);
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[2]["usage"], json!({"prompt_tokens": 19, "completion_tokens": 5, "total_tokens": 24}));
        assert_eq!(ev[3], "[DONE]");
        let (tail, _) = w.tail(&answer, false, None);
        assert!(events(&tail).iter().all(|e| e.get("usage").is_none()));
    }

    #[test]
    fn overlaps_are_whole_words_at_the_end_of_the_text() {
        assert_eq!(new_text("The quick ", "brown fox"), "brown fox");
        assert_eq!(new_text("The quick ", " brown fox"), "brown fox");
        assert_eq!(new_text("The quick", " brown fox"), " brown fox");
        assert_eq!(new_text("The quick bro", "wn fox"), "wn fox");
        assert_eq!(new_text("The quick ", "The quick brown"), "brown");
        assert_eq!(new_text("The quick ", "quick brown"), "brown");
        assert_eq!(new_text("The quick", "quick brown"), " brown");
        assert_eq!(new_text("I saw a", "and more"), "and more", "not a word's end");
        assert_eq!(new_text("I saw a", " cat"), " cat");
        assert_eq!(new_text("x", ""), "");
        assert_eq!(new_text("Ünïcode wörds", "wörds and more"), " and more");
        // Every split of an answer splices back to the answer, with an overlap of any words.
        let full = "One two three, four five. Six seven eight nine ten.";
        for at in full.char_indices().map(|(i, _)| i).skip(1) {
            let (before, rest) = full.split_at(at);
            assert_eq!(format!("{before}{}", new_text(before, rest)), full, "split at {at}");
            let said = before.trim_end();
            let words: Vec<&str> = said.split_whitespace().collect();
            for k in 1..=words.len().min(3) {
                // A repeat of the last k words (as a continuing model does) comes out once,
                // when the text stopped at a word's end (mid-word, a repeat is ambiguous).
                let repeated = words[words.len() - k..].join(" ");
                let after = &full[said.len()..];
                if !after.starts_with(char::is_alphanumeric) {
                    let next = format!("{repeated}{after}");
                    assert_eq!(format!("{before}{}", new_text(before, &next)), full, "split at {at}, {k} words");
                }
            }
        }
    }

    #[test]
    fn claude_versions_before_4_6_are_read_from_the_model_name() {
        for before in [
            "claude-3-5-sonnet-20241022",
            "claude-3-opus-20240229",
            "claude-3-7-sonnet-latest",
            "claude-opus-4-20250514",
            "claude-opus-4-1-20250805",
            "claude-sonnet-4-5",
            "claude-haiku-4-5@20251001",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "Claude-3-5-Haiku",
        ] {
            assert!(claude_before_4_6(before), "{before}");
        }
        for not_before in [
            "claude-opus-4-6",
            "claude-sonnet-4-6-20260101",
            "us.anthropic.claude-opus-4-6-v1",
            "claude-opus-4-7",
            "claude-sonnet-5",
            "claude-sonnet-5-20260301",
            "claude-fable-5-1",
            "claude-latest",
            "amazon.nova-pro-v1:0",
            "gpt-4o",
        ] {
            assert!(!claude_before_4_6(not_before), "{not_before}");
        }
    }

    #[test]
    fn the_continuation_request_is_a_prefill_or_an_instruction() {
        let chat = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"n":1,"temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#;
        let parsed = ParsedRequest::parse(chat, crate::api::Endpoint::ChatCompletions).unwrap();
        let v: Value = serde_json::from_slice(&continuation_body(&parsed, "The quick ", true).unwrap()).unwrap();
        assert_eq!(v["stream"], false);
        assert!(v.get("stream_options").is_none() && v.get("n").is_none());
        assert_eq!((&v["model"], &v["temperature"]), (&json!("m"), &json!(0.5)));
        assert_eq!(v["messages"][0], json!({"role": "user", "content": "hi"}));
        assert_eq!(v["messages"][1], json!({"role": "assistant", "content": "The quick"}));
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        let v: Value = serde_json::from_slice(&continuation_body(&parsed, "The \"quick\" ", false).unwrap()).unwrap();
        assert_eq!(v["messages"][1], json!({"role": "assistant", "content": "The \"quick\" "}));
        assert_eq!(v["messages"][2], json!({"role": "user", "content": CONTINUE_INSTRUCTION}));
        assert!(ParsedRequest::parse(
            &continuation_body(&parsed, "x", false).unwrap(),
            crate::api::Endpoint::ChatCompletions
        )
        .is_ok());
        assert!(prefills(ProviderKind::Anthropic, "claude-3-5-haiku", None));
        assert!(prefills(ProviderKind::Bedrock, "anthropic.claude-3-haiku-20240307-v1:0", None));
        assert!(
            !prefills(ProviderKind::Openai, "gpt-4o", None) && !prefills(ProviderKind::Gemini, "gemini-2.5-pro", None)
        );
        // Claude 4.6 and later refuse a prefill; a member can say either way.
        assert!(!prefills(ProviderKind::Anthropic, "claude-opus-4-6", None));
        assert!(!prefills(ProviderKind::Anthropic, "claude-3-5-haiku", Some(false)));
        assert!(prefills(ProviderKind::OpenaiCompatible, "my-model", Some(true)));
    }

    #[test]
    fn answers_are_read_for_text_finish_and_usage() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"brown fox"},"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        let answer = read_answer(body).unwrap();
        assert_eq!(
            answer,
            Continued { text: "brown fox".into(), finish: "length".into(), usage: Some(Tokens::new(4, 2)) }
        );
        let tools =
            br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c"}]},"finish_reason":"tool_calls"}]}"#;
        assert!(read_answer(tools).is_none());
        assert!(read_answer(b"{}").is_none());
    }
}
