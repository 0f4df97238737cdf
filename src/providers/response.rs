//! `ResponseAdapter`: the one place a provider's answer is turned into
//! OpenAI's shape. OpenAI-wire providers pass through untouched (no
//! adapter); translated kinds go through their `Adapter`.

use crate::api::usage::Tokens;
use crate::api::Endpoint;
use crate::config::ProviderKind;

use super::adapter::{Adapter, StreamState};
use super::dispatch::translated;
use super::openai_out::{new_id, Meta};

/// Translates one upstream response (non-streaming body, error body, or a
/// stream delivered in arbitrary chunks) into OpenAI's format.
#[derive(Debug)]
pub struct ResponseAdapter {
    stream: bool,
    meta: Meta,
    adapter: &'static dyn Adapter,
    /// Created by the first stream chunk, so `with_created` reaches it.
    stream_state: Option<Box<dyn StreamState>>,
    failed: bool,
    include_usage: bool,
    /// Usage of a translated whole answer.
    body_usage: Option<Tokens>,
}

impl ResponseAdapter {
    /// `None` when the provider already speaks OpenAI's format.
    pub fn new(kind: ProviderKind, endpoint: Endpoint, stream: bool, model: &str) -> Option<ResponseAdapter> {
        let _ = endpoint;
        let adapter = translated(kind)?;
        let meta = Meta { id: new_id(), created: 0, model: model.to_string() };
        Some(ResponseAdapter {
            stream,
            meta,
            adapter,
            stream_state: None,
            failed: false,
            include_usage: false,
            body_usage: None,
        })
    }

    /// Whether a translated stream ends with a usage chunk: the client's
    /// `stream_options.include_usage`. Without it (the default) a stream has
    /// no usage anywhere, as OpenAI's; whole answers always carry usage.
    pub fn with_include_usage(mut self, include_usage: bool) -> Self {
        self.include_usage = include_usage;
        self
    }

    /// The final token counts the provider reported, for accounting,
    /// whatever the client was sent: of the whole answer translated, or of
    /// the stream so far (complete once it ended). `None` before any, for
    /// error answers, and when the provider reported none.
    pub fn usage(&self) -> Option<Tokens> {
        match &self.stream_state {
            Some(state) => state.usage(),
            None => self.body_usage,
        }
    }

    /// Sets `created` (seconds since the Unix epoch) in translated answers.
    pub fn with_created(mut self, unix_s: u64) -> Self {
        self.meta.created = unix_s;
        self
    }

    /// True when a successful answer is translated as a stream (SSE).
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// Content type of a successful translated answer.
    pub fn content_type(&self) -> &'static str {
        if self.is_stream() {
            "text/event-stream"
        } else {
            "application/json"
        }
    }

    /// A complete body: a non-streaming answer, or any error answer
    /// (`status` >= 400), into OpenAI JSON. A successful streamed answer
    /// given whole is translated as a stream.
    pub fn translate_body(&mut self, status: u16, body: &[u8]) -> Vec<u8> {
        if status >= 400 {
            return self.adapter.error_body(status, body);
        }
        if self.stream {
            return self.translate_stream(body, true);
        }
        match self.adapter.completion(body) {
            Ok(answer) => {
                self.body_usage = answer.usage;
                self.meta.completion(&answer)
            }
            Err(error) => {
                self.failed = true;
                error
            }
        }
    }

    /// True when `translate_body` was given a successful status but returned
    /// an OpenAI error body (the answer was an error in disguise or could not
    /// be read): the host should then answer 502 rather than 200.
    pub fn translation_failed(&self) -> bool {
        self.failed
    }

    /// True when the stream failed (unreadable, an error event, ended
    /// empty) before it produced any event for the client: the host may
    /// still fail over.
    pub fn stream_failed_before_output(&self) -> bool {
        self.stream_state.as_ref().is_some_and(|s| s.failed_before_output())
    }

    /// True when the translated stream ended with an error event: the
    /// provider's, an unreadable event, or `incomplete_stream` (cut short).
    pub fn stream_failed(&self) -> bool {
        self.stream_state.as_ref().is_some_and(|s| s.failed())
    }

    /// The next piece of a successful stream into OpenAI `chat.completion.chunk`
    /// SSE events. Events split across chunks are held until complete; the
    /// call with `end_of_stream` flushes and ends with `data: [DONE]`.
    pub fn translate_stream(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let (adapter, meta, include_usage) = (self.adapter, &self.meta, self.include_usage);
        self.stream_state.get_or_insert_with(|| adapter.stream(meta.clone(), include_usage)).feed(chunk, end_of_stream)
    }
}

#[cfg(test)]
mod tests {

    use serde_json::Value;

    use super::*;
    use crate::api::error::assert_openai_error;

    #[test]
    fn openai_wire_kinds_pass_through() {
        for kind in [ProviderKind::Openai, ProviderKind::OpenaiCompatible, ProviderKind::Azure] {
            assert!(ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").is_none());
        }
        let a = ResponseAdapter::new(ProviderKind::Gemini, Endpoint::ChatCompletions, true, "m").unwrap();
        assert!(a.is_stream());
        assert_eq!(a.content_type(), "text/event-stream");
        let a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m").unwrap();
        assert!(!a.is_stream());
        assert_eq!(a.content_type(), "application/json");
    }

    #[test]
    fn with_created_and_ids() {
        let mut a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m")
            .unwrap()
            .with_created(1_700_000_000);
        let v: Value = serde_json::from_slice(&a.translate_body(
            200,
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"x"}]}},"stopReason":"end_turn"}"#,
        ))
        .unwrap();
        assert_eq!(v["created"], 1_700_000_000);
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    }

    #[test]
    fn usage_is_known_for_whole_answers_and_not_for_errors() {
        let mut a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m").unwrap();
        assert_eq!(a.usage(), None);
        a.translate_body(
            200,
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"x"}]}},"stopReason":"end_turn","usage":{"inputTokens":2,"outputTokens":1,"totalTokens":3}}"#,
        );
        assert_eq!(
            a.usage(),
            Some(Tokens { prompt: 2, completion: 1, total: Some(3), cached: None, cache_write: None, reasoning: None })
        );
        let mut a = ResponseAdapter::new(ProviderKind::Bedrock, Endpoint::ChatCompletions, false, "m").unwrap();
        a.translate_body(429, br#"{"message":"slow down"}"#);
        assert_eq!(a.usage(), None);
    }

    #[test]
    fn cache_reads_and_writes_come_back_as_chat_usage() {
        let cases: [(ProviderKind, &[u8]); 3] = [
            (ProviderKind::Anthropic, br#"{"id":"m","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"cache_read_input_tokens":300,"cache_creation_input_tokens":200,"output_tokens":2}}"#),
            (ProviderKind::Bedrock, br#"{"output":{"message":{"role":"assistant","content":[{"text":"x"}]}},"stopReason":"end_turn","usage":{"inputTokens":5,"cacheReadInputTokens":300,"cacheWriteInputTokens":200,"outputTokens":2}}"#),
            (ProviderKind::Gemini, br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"x"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":505,"cachedContentTokenCount":300,"candidatesTokenCount":2}}"#),
        ];
        for (kind, body) in cases {
            let mut a = ResponseAdapter::new(kind, Endpoint::ChatCompletions, false, "m").unwrap();
            let v: Value = serde_json::from_slice(&a.translate_body(200, body)).unwrap();
            let write = (kind != ProviderKind::Gemini).then_some(200);
            assert_eq!(v["usage"]["prompt_tokens"], 505, "{kind:?}: every input token, cached ones included");
            assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 300, "{kind:?}");
            assert_eq!(v["usage"]["prompt_tokens_details"].get("cache_write_tokens").and_then(Value::as_u64), write);
            assert_eq!(
                a.usage().map(|u| (u.cached, u.cache_write, u.uncached_prompt())),
                Some((Some(300), write, 505 - 300 - write.unwrap_or(0)))
            );
        }
    }

    #[test]
    fn translation_failure_is_reported() {
        let new = |kind| ResponseAdapter::new(kind, Endpoint::ChatCompletions, false, "m").unwrap();
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            let mut a = new(kind);
            let v: Value = serde_json::from_slice(&a.translate_body(200, b"{}")).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response", "{kind:?}");
            assert!(a.translation_failed());
            let mut a = new(kind);
            a.translate_body(503, b"{}");
            assert!(!a.translation_failed(), "error statuses are expected errors");
        }
        let mut a = new(ProviderKind::Anthropic);
        let v: Value = serde_json::from_slice(&a.translate_body(
            200,
            br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], "api_error");
        assert!(a.translation_failed());
    }

    #[test]
    fn stream_failure_before_any_event_is_told_apart_from_a_failure_later() {
        let new = |kind| ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").unwrap();
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            // Garbage, or a 200 that ends with nothing: nothing reached the client yet.
            let mut a = new(kind);
            assert!(!a.stream_failed_before_output(), "nothing fed yet");
            a.translate_stream(b"<html>bad gateway</html>", true);
            assert!(a.stream_failed_before_output(), "{kind:?}");
            let mut a = new(kind);
            a.translate_stream(b"", true);
            assert!(a.stream_failed_before_output(), "{kind:?}");
        }
        let mut a = new(ProviderKind::Anthropic);
        a.translate_stream(b"data: {not json\n\n", false);
        assert!(a.stream_failed_before_output());
        // An event went out, then the stream broke: too late to fail over.
        let mut a = new(ProviderKind::Anthropic);
        let text = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert!(!a.translate_stream(text, false).is_empty());
        a.translate_stream(b"data: {not json\n\n", true);
        assert!(!a.stream_failed_before_output());
        // Half an event is no verdict yet.
        let mut a = new(ProviderKind::Anthropic);
        assert!(a.translate_stream(b"event: content_block_delta\ndata: {\"type\":", false).is_empty());
        assert!(!a.stream_failed_before_output());
    }

    /// Upstream error bodies of every shape the kinds know, and some they do not.
    const ERROR_BODIES: [&[u8]; 8] = [
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        br#"{"type":"error","error":{"message":"no type"}}"#,
        br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
        br#"[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]"#,
        br#"{"message":"denied","__type":"com.amazon.coral#AccessDeniedException"}"#,
        b"upstream connect error or disconnect/reset before headers",
        b"",
        b"{}",
    ];

    #[test]
    fn every_translated_error_body_is_an_openai_error() {
        let statuses = [400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529];
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            for stream in [false, true] {
                let new = || ResponseAdapter::new(kind, Endpoint::ChatCompletions, stream, "m").unwrap();
                for body in ERROR_BODIES {
                    for status in statuses {
                        assert_openai_error(&new().translate_body(status, body));
                    }
                    // A successful status whose body is an error or unreadable.
                    let mut a = new();
                    let out = a.translate_body(200, body);
                    if !stream {
                        assert!(a.translation_failed(), "{kind:?} {:?}", String::from_utf8_lossy(body));
                        assert_openai_error(&out);
                    }
                }
            }
        }
    }

    #[test]
    fn every_stream_error_event_is_an_openai_error() {
        let broken: [&[u8]; 5] = [
            b"data: {not json\n\n",
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n",
            b"data: {\"error\":{\"code\":503,\"message\":\"busy\",\"status\":\"UNAVAILABLE\"}}\n\n",
            b"\x00\x00\x00\x10garbage-frame",
            b"",
        ];
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock] {
            for input in broken {
                let mut a = ResponseAdapter::new(kind, Endpoint::ChatCompletions, true, "m").unwrap();
                let out = a.translate_stream(input, true);
                let errors: Vec<Value> = crate::providers::test_support::events(&out)
                    .into_iter()
                    .filter(|e| e.get("error").is_some())
                    .collect();
                assert_eq!(errors.len(), 1, "{kind:?} {input:?}");
                assert_openai_error(&serde_json::to_vec(&errors[0]).unwrap());
            }
        }
    }
}
