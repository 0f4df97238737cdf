//! OpenAI error bodies: the gateway's own errors (`ApiError`) and the one
//! writer of `{"error":{"message","type","param","code"}}` that every error
//! body and stream error event of the crate goes through.

use serde::Serialize;

/// OpenAI's error `type` values, the only ones the gateway writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Authentication,
    Permission,
    RateLimit,
    /// OpenAI's 429 for spent quota (a tenant's budget here).
    InsufficientQuota,
    Server,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::Permission => "permission_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::InsufficientQuota => "insufficient_quota",
            ErrorType::Server => "server_error",
        }
    }

    /// The type OpenAI gives an error of HTTP `status` (404, 405 and 413 are
    /// `invalid_request_error` there too; any non-4xx is `server_error`).
    pub fn for_status(status: u16) -> ErrorType {
        match status {
            401 => ErrorType::Authentication,
            403 => ErrorType::Permission,
            429 => ErrorType::RateLimit,
            s if (400..500).contains(&s) => ErrorType::InvalidRequest,
            _ => ErrorType::Server,
        }
    }
}

/// Every OpenAI `code` the gateway answers with itself: a closed set, so
/// that each has a counter from configuration load (`switchboard.local_errors;code=<code>`)
/// and the call log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidType,
    MissingModel,
    MissingRequiredParameter,
    InvalidProvider,
    ModelNotFound,
    AmbiguousModel,
    NotFound,
    MethodNotAllowed,
    RequestTooLarge,
    UnsupportedContentEncoding,
    NoHealthyUpstream,
    Overloaded,
    RateLimitExceeded,
    UnsupportedProvider,
    UnsupportedEndpoint,
    InvalidUpstreamResponse,
    InvalidValue,
    UnsupportedValue,
    ContextLengthExceeded,
    UnsupportedParameter,
    NoMemberWithTags,
    InvalidApiKey,
    ModelNotAllowed,
    InsufficientQuota,
    UnsupportedFeature,
    InvalidRequest,
    RequestNotFound,
    FeedbackAlreadyRecorded,
    InternalError,
}

impl ErrorCode {
    /// Every code, in declaration order (`code as usize` indexes it).
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidType,
        ErrorCode::MissingModel,
        ErrorCode::MissingRequiredParameter,
        ErrorCode::InvalidProvider,
        ErrorCode::ModelNotFound,
        ErrorCode::AmbiguousModel,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTooLarge,
        ErrorCode::UnsupportedContentEncoding,
        ErrorCode::NoHealthyUpstream,
        ErrorCode::Overloaded,
        ErrorCode::RateLimitExceeded,
        ErrorCode::UnsupportedProvider,
        ErrorCode::UnsupportedEndpoint,
        ErrorCode::InvalidUpstreamResponse,
        ErrorCode::InvalidValue,
        ErrorCode::UnsupportedValue,
        ErrorCode::ContextLengthExceeded,
        ErrorCode::UnsupportedParameter,
        ErrorCode::NoMemberWithTags,
        ErrorCode::InvalidApiKey,
        ErrorCode::ModelNotAllowed,
        ErrorCode::InsufficientQuota,
        ErrorCode::UnsupportedFeature,
        ErrorCode::InvalidRequest,
        ErrorCode::RequestNotFound,
        ErrorCode::FeedbackAlreadyRecorded,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidType => "invalid_type",
            ErrorCode::MissingModel => "missing_model",
            ErrorCode::MissingRequiredParameter => "missing_required_parameter",
            ErrorCode::InvalidProvider => "invalid_provider",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::AmbiguousModel => "ambiguous_model",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::UnsupportedContentEncoding => "unsupported_content_encoding",
            ErrorCode::NoHealthyUpstream => "no_healthy_upstream",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimitExceeded => "rate_limit_exceeded",
            ErrorCode::UnsupportedProvider => "unsupported_provider",
            ErrorCode::UnsupportedEndpoint => "unsupported_endpoint",
            ErrorCode::InvalidUpstreamResponse => "invalid_upstream_response",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::UnsupportedValue => "unsupported_value",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::UnsupportedParameter => "unsupported_parameter",
            ErrorCode::NoMemberWithTags => "no_member_with_tags",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::InsufficientQuota => "insufficient_quota",
            ErrorCode::UnsupportedFeature => "unsupported_feature",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::RequestNotFound => "request_not_found",
            ErrorCode::FeedbackAlreadyRecorded => "feedback_already_recorded",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tests compare a code with its wire name; the filter decides on variants only.
#[cfg(test)]
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
impl PartialEq<ErrorCode> for &str {
    fn eq(&self, other: &ErrorCode) -> bool {
        *self == other.as_str()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'a str,
}

/// Appends the OpenAI error JSON `{"error":{"message","type","param","code"}}` to `out`.
pub fn write_json(out: &mut Vec<u8>, message: &str, kind: ErrorType, param: Option<&str>, code: &str) {
    let start = out.len();
    let body = Body { error: Inner { message, kind: kind.as_str(), param, code } };
    // Serializing strings into a Vec cannot fail; keep a valid body regardless.
    if serde_json::to_writer(&mut *out, &body).is_err() {
        out.truncate(start);
        out.extend_from_slice(
            br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#,
        );
    }
}

/// An error the gateway answers itself. Its OpenAI `type` follows from `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI `code`, e.g. `model_not_found`.
    pub code: ErrorCode,
    /// OpenAI `param`: the request field at fault, when there is one.
    pub param: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
    /// `x-should-retry` for the OpenAI SDKs: whether retrying can help.
    pub should_retry: Option<bool>,
}

impl ApiError {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), code, param: None, retry_after_s: None, should_retry: None }
    }

    pub fn invalid_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// A name that is no pool, router or model; `param` is `model` (the field that names one).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            ErrorCode::ModelNotFound,
            format!("The model `{model}` does not exist: it is neither a pool nor a model served by this gateway. List them with GET /v1/models."),
        )
        .with_param("model")
    }

    /// A model name several members serve (and no pool is named after): which member ids to use.
    pub fn ambiguous_model(model: &str, member_ids: &[String]) -> Self {
        Self::new(
            404,
            ErrorCode::AmbiguousModel,
            format!(
                "The model `{model}` is served by {} members ({}): name one of them as the model, or a pool. List them with GET /v1/models.",
                member_ids.len(),
                member_ids.join(", ")
            ),
        )
        .with_param("model")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(404, ErrorCode::NotFound, format!("Unknown path {path}. Supported: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/messages/count_tokens, /v1/responses, /v1/feedback; GET /v1/models, /v1/models/{{id}}; GET and DELETE /v1/responses/{{id}}, POST /v1/responses/{{id}}/cancel, GET /v1/responses/{{id}}/input_items."))
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(405, ErrorCode::MethodNotAllowed, format!("Method {method} is not allowed on {path}; use {allowed}."))
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(413, ErrorCode::RequestTooLarge, format!("Request body exceeds the gateway limit of {limit} bytes."))
    }

    pub fn unsupported_content_encoding(encoding: &str) -> Self {
        Self::new(
            415,
            ErrorCode::UnsupportedContentEncoding,
            format!(
                "Request bodies with Content-Encoding `{encoding}` are not supported; send JSON uncompressed or gzip."
            ),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, ErrorCode::NoHealthyUpstream, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, ErrorCode::InternalError, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// `param` of an error whose field is only known at run time: the first
    /// name in backticks of the message (no owned copy in every error).
    pub const PARAM_IN_MESSAGE: &'static str = "`";

    /// OpenAI's `param`.
    pub fn param(&self) -> Option<&str> {
        match self.param {
            Some(Self::PARAM_IN_MESSAGE) => self.message.split('`').nth(1),
            p => p,
        }
    }

    /// Names the request field at fault (OpenAI's `param`).
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// OpenAI `type` of this error: by status, except spent quota, which
    /// OpenAI types by its code.
    pub fn kind(&self) -> ErrorType {
        if self.code == ErrorCode::InsufficientQuota {
            return ErrorType::InsufficientQuota;
        }
        ErrorType::for_status(self.status)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 96);
        write_json(&mut out, &self.message, self.kind(), self.param(), self.code.as_str());
        out
    }
}

/// Test helper: checks that `body` is exactly an OpenAI error body written by
/// `write_json` and returns its `error` object.
#[cfg(test)]
pub(crate) fn assert_openai_error(body: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    const TYPES: [&str; 7] = [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "server_error",
        "insufficient_quota",
    ];
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
    let outer = v.as_object().expect("an object");
    assert_eq!(outer.keys().collect::<Vec<_>>(), ["error"], "{v}");
    let error = outer["error"].as_object().expect("`error` is an object").clone();
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {v}");
    assert!(error["type"].as_str().is_some_and(|t| TYPES.contains(&t)), "type: {v}");
    assert!(error["param"].is_null() || error["param"].is_string(), "param: {v}");
    assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()), "code: {v}");
    error
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn error_json_has_openai_shape() {
        let e = ApiError::model_not_found("gpt-\"9\"");
        assert_eq!(e.status, 404);
        let error = assert_openai_error(&e.to_json());
        assert_eq!(error["code"], "model_not_found");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().unwrap().contains("gpt-\"9\""));
    }

    #[test]
    fn every_constructor_writes_an_openai_error_with_the_status_type() {
        let cases = [
            (ApiError::invalid_request(ErrorCode::InvalidJson, "bad"), "invalid_request_error"),
            (ApiError::ambiguous_model("m", &["a/m".into(), "b/m".into()]), "invalid_request_error"),
            (ApiError::model_not_found("m"), "invalid_request_error"),
            (ApiError::not_found("/x"), "invalid_request_error"),
            (ApiError::method_not_allowed("GET", "/v1/chat/completions", "POST"), "invalid_request_error"),
            (ApiError::body_too_large(10), "invalid_request_error"),
            (ApiError::unavailable("none left").with_retry_after(3), "server_error"),
            (ApiError::internal("oops"), "server_error"),
            (ApiError::new(401, ErrorCode::InvalidApiKey, "no"), "authentication_error"),
            (ApiError::new(403, ErrorCode::ModelNotAllowed, "no"), "permission_error"),
            (ApiError::new(429, ErrorCode::RateLimitExceeded, "slow"), "rate_limit_error"),
        ];
        for (e, kind) in cases {
            let error = assert_openai_error(&e.to_json());
            assert_eq!(error["type"], kind, "{e:?}");
            assert_eq!(error["code"], e.code.as_str());
            assert_eq!(error["param"].as_str(), e.param(), "{e:?}");
        }
    }

    #[test]
    fn unknown_and_ambiguous_models_name_the_model_field() {
        let e = ApiError::model_not_found("nope");
        assert_eq!((e.status, e.code.as_str(), e.param), (404, "model_not_found", Some("model")));
        let e = ApiError::ambiguous_model("gpt-4o", &["alpha/gpt-4o".into(), "beta/gpt-4o".into()]);
        assert_eq!((e.status, e.code.as_str(), e.param), (404, "ambiguous_model", Some("model")));
        assert!(e.message.contains("alpha/gpt-4o, beta/gpt-4o"), "{}", e.message);
    }

    #[test]
    fn param_is_written_when_set() {
        let e = ApiError::invalid_request(ErrorCode::MissingModel, "`model` is required.").with_param("model");
        assert_eq!(assert_openai_error(&e.to_json())["param"], "model");
    }

    #[test]
    fn write_json_appends_and_escapes() {
        let mut out = b"data: ".to_vec();
        write_json(&mut out, "a \"quoted\"\nline", ErrorType::RateLimit, Some("p"), "c");
        let error = assert_openai_error(out.strip_prefix(b"data: ").unwrap());
        assert_eq!(error["message"], "a \"quoted\"\nline");
        assert_eq!(error["type"], "rate_limit_error");
        assert_eq!(error["param"], "p");
    }
}
