//! The client-facing OpenAI-style API: endpoints, request parsing and
//! rewriting, the model listing and error bodies. No proxy-wasm calls.

pub mod error;
pub mod forward;
pub mod model_rules;
pub mod models;
pub mod params;
pub mod request;
pub mod response_ids;
pub mod stream_end;
pub mod tokens;
pub mod usage;

pub use error::{ApiError, ErrorCode};

/// The OpenAI endpoints a request is routed as (what `exchange::Route` reads
/// from the path; a door's request runs as `ChatCompletions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path below the provider's base path, for OpenAI-shaped providers.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}
