//! OpenAI error bodies for what providers answer: error bodies in no
//! provider format, answers that cannot be read, and the generic codes of
//! HTTP statuses (`Adapter::error_body` translates the providers' own error
//! bodies). The JSON itself is written by `api::error::write_json`.

use serde_json::Value;

use crate::api::error::{write_json, ErrorType};

/// Message of a provider error that carries none.
pub(super) const NO_MESSAGE: &str = "The provider returned an error.";
/// Message of a provider's stream error event that carries none.
pub(super) const NO_STREAM_MESSAGE: &str = "The provider reported an error.";

/// An OpenAI error body without `param`.
pub(super) fn error_json(message: &str, kind: ErrorType, code: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 96);
    write_json(&mut out, message, kind, None, code);
    out
}

/// A generic `code` for an HTTP status, for errors that carry none.
pub(super) fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        500 => "internal_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        s if (400..500).contains(&s) => "invalid_request",
        _ => "upstream_error",
    }
}

/// An error body that is not in the provider's error format (for example
/// an Envoy "upstream connect error" text): its text becomes the message.
pub(super) fn fallback_error(status: u16, body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("The provider answered HTTP {status}.")
    } else {
        let mut t: String = text.chars().take(1000).collect();
        if t.len() < text.len() {
            t.push('…');
        }
        format!("The provider answered HTTP {status}: {t}")
    };
    let status = if status < 400 { 502 } else { status };
    error_json(&message, ErrorType::for_status(status), code_for_status(status))
}

/// A successful-status body that could not be read.
pub(super) fn invalid_answer(provider: &str, detail: &str) -> Vec<u8> {
    error_json(
        &format!("The {provider} answer could not be translated: {detail}"),
        ErrorType::Server,
        "invalid_upstream_response",
    )
}

/// A successful-status body as JSON, or the error body saying it is not JSON.
pub(super) fn parse_answer(provider: &str, body: &[u8]) -> Result<Value, Vec<u8>> {
    serde_json::from_slice(body).map_err(|e| invalid_answer(provider, &format!("not JSON ({e})")))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::error::assert_openai_error;

    #[test]
    fn fallback_errors() {
        let v: Value =
            serde_json::from_slice(&fallback_error(503, b"upstream connect error or disconnect/reset before headers"))
                .unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], "service_unavailable");
        assert!(v["error"]["message"].as_str().unwrap().contains("upstream connect error"));
        let v: Value = serde_json::from_slice(&fallback_error(429, b"")).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let long = "x".repeat(5000);
        let v: Value = serde_json::from_slice(&fallback_error(500, long.as_bytes())).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() < 1100);
    }

    #[test]
    fn every_status_gives_an_openai_error() {
        for status in [200, 400, 401, 403, 404, 408, 413, 418, 429, 500, 502, 503, 504, 529] {
            assert_openai_error(&fallback_error(status, b"oops"));
            assert_openai_error(&fallback_error(status, b""));
        }
        assert_openai_error(&invalid_answer("X", "no content"));
        assert_openai_error(&parse_answer("X", b"<html>").unwrap_err());
    }
}
