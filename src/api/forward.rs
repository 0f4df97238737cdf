//! Which client request headers reach a provider. An allow-list: a header
//! the gateway does not know is dropped, so a client's `cookie`,
//! `openai-organization` (which real OpenAI checks against the gateway's
//! key), SDK telemetry or the cluster header never leave Envoy. Credentials
//! are never on the list: the gateway sets the provider's own.

/// Forwarded on every upstream request: content negotiation, the client's
/// identity as a user agent, and tracing.
const FORWARDED: [&str; 17] = [
    "accept",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Whether the client's header `name` (lower case, as Envoy gives it) goes
/// upstream. `accept-encoding` only on the routed request, whose answer Envoy
/// relays as it is; a failover answer is relayed without its
/// `content-encoding`, so failover calls never offer compression.
/// `extra`: more names for this request (`anthropic-beta` to an Anthropic
/// member serving the Messages API as it is).
pub fn forwarded(name: &[u8], routed: bool, extra: &[&str]) -> bool {
    FORWARDED.iter().any(|f| f.as_bytes() == name)
        || (routed && name == b"accept-encoding")
        || extra.iter().any(|e| e.as_bytes() == name)
}

/// How a provider's response header reaches the client: as it is, renamed,
/// or (None) not at all. Used for answers the gateway writes itself (after a
/// failover), which otherwise would lose the provider's rate-limit state and
/// request id; and to keep the provider's `x-request-id`, which Envoy
/// overwrites with the gateway's, as `x-upstream-request-id`.
pub fn relayed_response_header(name: &str) -> Option<&str> {
    const KEPT_PREFIXES: [&str; 3] = ["x-ratelimit-", "anthropic-ratelimit-", "openai-"];
    const KEPT: [&str; 4] = ["request-id", "x-amzn-requestid", "retry-after-ms", "x-ms-region"];
    if name == "x-request-id" {
        Some("x-upstream-request-id")
    } else if KEPT.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Some(name)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn tracing_and_negotiation_pass_everything_else_is_dropped() {
        for name in ["accept", "user-agent", "x-request-id", "traceparent", "x-b3-traceid", "x-forwarded-for"] {
            assert!(forwarded(name.as_bytes(), false, &[]), "{name}");
        }
        for name in [
            "authorization",
            "api-key",
            "x-api-key",
            "cookie",
            "openai-organization",
            "openai-project",
            "x-stainless-lang",
            "x-switchboard-cluster",
            "x-envoy-retry-on",
            "anthropic-beta",
        ] {
            assert!(!forwarded(name.as_bytes(), true, &[]), "{name}");
        }
    }

    #[test]
    fn accept_encoding_only_on_the_routed_request() {
        assert!(forwarded(b"accept-encoding", true, &[]));
        assert!(!forwarded(b"accept-encoding", false, &[]));
    }

    #[test]
    fn extra_names_extend_the_list() {
        assert!(forwarded(b"anthropic-beta", false, &["anthropic-beta"]));
        assert!(!forwarded(b"anthropic-version", false, &["anthropic-beta"]));
    }

    #[test]
    fn provider_rate_limit_headers_and_request_ids_are_kept() {
        assert_eq!(relayed_response_header("x-ratelimit-remaining-requests"), Some("x-ratelimit-remaining-requests"));
        assert_eq!(
            relayed_response_header("anthropic-ratelimit-tokens-reset"),
            Some("anthropic-ratelimit-tokens-reset")
        );
        assert_eq!(relayed_response_header("openai-processing-ms"), Some("openai-processing-ms"));
        assert_eq!(relayed_response_header("request-id"), Some("request-id"));
        assert_eq!(relayed_response_header("x-request-id"), Some("x-upstream-request-id"));
        for dropped in ["set-cookie", "content-length", "server", "x-envoy-upstream-service-time", ":status"] {
            assert_eq!(relayed_response_header(dropped), None, "{dropped}");
        }
    }
}
