//! The contract every translated provider kind fulfils (`Adapter`, with its
//! per-stream `StreamState`), and the SSE stream shared by the kinds that
//! frame their streams as server-sent events.

use std::fmt::Debug;

use serde_json::Value;

use crate::api::error::ErrorType;
use crate::api::usage::Tokens;
use crate::api::ApiError;
use crate::config::{Member, Provider};
use crate::sse;

use super::chat::Chat;
use super::emit::Emitter;
use super::openai_out::{Answer, Meta};
use super::upstream::{BuildContext, UpstreamRequest};
use super::upstream_error::{code_for_status, error_json, fallback_error};

/// A translated provider kind: renders chat requests in the provider's API
/// and its answers (complete, error, or streamed) in OpenAI's.
pub(super) trait Adapter: Debug + Sync {
    /// The provider's request body for `chat`, sent to `model`.
    fn body(&self, chat: &Chat, model: &str, ctx: &BuildContext) -> Result<Value, ApiError>;

    /// Path, authority and headers around the serialised `body` (which
    /// Bedrock signs).
    fn request(&self, to: &Target<'_>, body: Vec<u8>) -> Result<UpstreamRequest, ApiError>;

    /// A complete successful-status answer, read; `Err` holds an OpenAI
    /// error body when the answer is an error in disguise or cannot be read.
    fn completion(&self, body: &[u8]) -> Result<Answer, Vec<u8>>;

    /// The provider's error in a JSON error body: its name (empty when it
    /// has none) and message; `None` when the body is in another format.
    fn find_error<'v>(&self, body: &'v Value) -> Option<(&'v str, &'v str)>;

    /// OpenAI's error type for the provider's error `name` (falling back on
    /// the HTTP `status`).
    fn error_type(&self, name: &str, status: u16) -> ErrorType;

    /// Translation state for one successful stream whose chunks carry
    /// `meta`, ending with a usage chunk when `include_usage`.
    fn stream(&self, meta: Meta, include_usage: bool) -> Box<dyn StreamState>;

    /// The upstream request for `chat`: `body`, serialised once, in `request`.
    fn build(
        &self,
        provider: &Provider,
        member: &Member,
        chat: &Chat,
        ctx: &BuildContext,
    ) -> Result<UpstreamRequest, ApiError> {
        let body = self.body(chat, &member.model, ctx)?;
        self.request(&Target { provider, member, chat, ctx }, serde_json::to_vec(&body).unwrap_or_default())
    }

    /// An error answer (`status` >= 400) into an OpenAI error body, the
    /// provider's error name as `code`; bodies in no known format keep their
    /// text as the message.
    fn error_body(&self, status: u16, body: &[u8]) -> Vec<u8> {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let Some((name, message)) = parsed.as_ref().and_then(|v| self.find_error(v)) else {
            return fallback_error(status, body);
        };
        let code = if name.is_empty() { code_for_status(status) } else { name };
        error_json(message, self.error_type(name, status), code)
    }
}

/// Where a request goes and what it asks: what `Adapter::request` needs
/// besides the body.
pub(super) struct Target<'a> {
    pub provider: &'a Provider,
    pub member: &'a Member,
    pub chat: &'a Chat,
    pub ctx: &'a BuildContext,
}

/// One upstream stream being translated into OpenAI SSE.
pub(super) trait StreamState: Debug {
    /// The next piece of the upstream stream (cut anywhere) into complete
    /// OpenAI SSE events; pieces of an event are held until it is complete.
    /// With `end_of_stream` the rest is flushed and `data: [DONE]` ends it.
    fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8>;

    /// What writes the client's events (and knows what was sent).
    fn emitter(&self) -> &Emitter;

    /// The latest usage the provider reported, whether or not it was sent.
    fn usage(&self) -> Option<Tokens> {
        self.emitter().usage
    }

    /// Whether the stream ended with an error event (see `Emitter::failed`).
    fn failed(&self) -> bool {
        self.emitter().failed()
    }

    /// Whether the stream failed before any event for the client.
    fn failed_before_output(&self) -> bool {
        self.emitter().failed_before_output()
    }
}

/// What a kind does with each JSON event of its SSE stream.
pub(super) trait SseEvents: Debug {
    fn event(&mut self, em: &mut Emitter, event: &Value, out: &mut Vec<u8>);
}

/// Largest event of a provider's stream; beyond it the stream is treated as broken.
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// An SSE-framed provider stream (Anthropic, Gemini): events are framed and
/// decoded here and translated by the kind's `SseEvents`.
#[derive(Debug)]
pub(super) struct SseStream<E> {
    framer: sse::Framer,
    emitter: Emitter,
    events: E,
}

impl<E: SseEvents> SseStream<E> {
    pub fn new(meta: Meta, include_usage: bool, events: E) -> Self {
        SseStream { framer: sse::Framer::default(), emitter: Emitter::new(meta, include_usage), events }
    }
}

/// One event's `data` translated by `events` (events without data carry nothing).
fn translate(emitter: &mut Emitter, events: &mut dyn SseEvents, event: &[u8], out: &mut Vec<u8>) {
    let Some(data) = sse::data(event) else { return };
    let data = String::from_utf8_lossy(&data);
    // Some relays end with OpenAI's own `[DONE]`; it carries nothing.
    if emitter.closed() || data.trim() == "[DONE]" {
        return;
    }
    match serde_json::from_str::<Value>(&data) {
        Ok(v) => events.event(emitter, &v, out),
        Err(_) => emitter.unreadable(out, "The provider's stream contains an event that is not JSON."),
    }
}

impl<E: SseEvents> StreamState for SseStream<E> {
    fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let (emitter, events) = (&mut self.emitter, &mut self.events);
        self.framer.feed(chunk, end_of_stream, &mut |event| translate(emitter, events, event, &mut out));
        if self.framer.held() > MAX_EVENT {
            self.framer.take();
            self.emitter.unreadable(&mut out, "An event of the provider's stream exceeds the size limit.");
        }
        if end_of_stream {
            self.emitter.end(&mut out);
        }
        out
    }

    fn emitter(&self) -> &Emitter {
        &self.emitter
    }
}
