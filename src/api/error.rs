//! Errors the gateway answers itself, in OpenAI's error format.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// OpenAI `code`, e.g. `model_not_found`.
    pub code: &'static str,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code, retry_after_s: None }
    }

    pub fn invalid_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist: it is neither a pool nor a model served by this gateway. List them with GET /v1/models."),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(404, "invalid_request_error", "not_found", format!("Unknown path {path}. Supported: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models."))
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("Method {method} is not allowed on {path}; use {allowed}."),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("Request body exceeds the gateway limit of {limit} bytes."),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable", "no_healthy_upstream", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", "internal_error", message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        let body = Body { error: Inner { message: &self.message, kind: self.kind, param: None, code: self.code } };
        // Serializing plain strings cannot fail; keep a valid body regardless.
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"message":"internal error","type":"internal_error","param":null,"code":"internal_error"}}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn error_json_has_openai_shape() {
        let e = ApiError::model_not_found("gpt-\"9\"");
        assert_eq!(e.status, 404);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-\"9\""));
    }
}
