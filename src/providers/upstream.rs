//! The request sent to a provider, and what building it needs to know.

/// Client headers that carry credentials. Always removed before a request
/// goes upstream, so a client's own key never reaches a provider.
pub const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// What the gateway needs to know about the request being sent.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext {
    /// Seconds since the Unix epoch (request signing).
    pub now_unix_s: u64,
    /// Default `max_tokens` for providers that require one (the pool's `max_response_tokens`).
    pub max_response_tokens: Option<u32>,
}

/// A request ready for a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub path: String,
    pub authority: String,
    /// Headers to set, after the client's credential headers are removed.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    /// Headers for sending this request with Envoy's HTTP call API: pseudo
    /// headers, a JSON content type, then `extra` (client headers), then the
    /// provider's own. A name the provider sets is sent once, its value winning.
    pub fn call_headers<'a>(&'a self, extra: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
        let set_here = |name: &str| self.headers.iter().any(|(n, _)| *n == name);
        let mut out: Vec<(&str, &str)> = Vec::with_capacity(extra.len() + self.headers.len() + 4);
        out.push((":method", "POST"));
        out.push((":path", &self.path));
        out.push((":authority", &self.authority));
        if !set_here("content-type") {
            out.push(("content-type", "application/json"));
        }
        out.extend(extra.iter().filter(|(k, _)| !set_here(k)).map(|(k, v)| (k.as_str(), v.as_str())));
        out.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        out
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn call_headers_send_each_name_once_provider_values_winning() {
        let up = UpstreamRequest {
            path: "/v1/messages".into(),
            authority: "api.example".into(),
            headers: vec![("content-type", "application/json; charset=utf-8".into()), ("x-api-key", "k".into())],
            body: Vec::new(),
        };
        let client =
            vec![("x-api-key".to_string(), "client".to_string()), ("x-request-id".to_string(), "r1".to_string())];
        assert_eq!(
            up.call_headers(&client),
            vec![
                (":method", "POST"),
                (":path", "/v1/messages"),
                (":authority", "api.example"),
                ("x-request-id", "r1"),
                ("content-type", "application/json; charset=utf-8"),
                ("x-api-key", "k"),
            ]
        );
        let plain = UpstreamRequest { headers: Vec::new(), ..up };
        assert!(plain.call_headers(&[]).contains(&("content-type", "application/json")));
    }
}
