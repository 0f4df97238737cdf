//! The client-facing OpenAI-style API: endpoints, request parsing and
//! rewriting, the model listing and error bodies. No proxy-wasm calls.

pub mod error;
pub mod forward;
pub mod models;
pub mod params;
pub mod request;
pub mod response_ids;
pub mod stream_end;
pub mod tokens;
pub mod usage;

pub use error::{ApiError, ErrorCode};

/// The endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// Maps a request path (query string allowed) to an endpoint.
    pub fn from_path(path: &str) -> Option<(Endpoint, &str)> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path, ""),
        };
        let endpoint = match path.trim_end_matches('/') {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/models" => Endpoint::Models,
            _ => return None,
        };
        Some((endpoint, query))
    }

    /// Path below the provider's base path, for OpenAI-shaped providers.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models => "GET",
            _ => "POST",
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(Endpoint::from_path("/v1/chat/completions"), Some((Endpoint::ChatCompletions, "")));
        assert_eq!(Endpoint::from_path("/v1/models?subtype=pool"), Some((Endpoint::Models, "subtype=pool")));
        assert_eq!(Endpoint::from_path("/v1/embeddings/"), Some((Endpoint::Embeddings, "")));
        assert_eq!(Endpoint::from_path("/v2/chat"), None);
    }
}
