//! Failover that keeps streaming: the words the filter's two halves share.
//!
//! The downstream filter tags a routed stream with a one-time token (request
//! header [`TRY_HEADER`], removed by the upstream filter before the request
//! leaves Envoy). When that attempt fails before its first byte, the
//! upstream filter answers the router with a 307 to [`location`], and
//! Envoy's internal redirect replays the request through the downstream
//! filter chain, which finds the token in the path ([`token_in_path`]) and
//! routes the next member; its answer then streams to the client directly.
//! No proxy-wasm calls here.

/// Request header from the downstream filter to the upstream one: the try's token.
pub const TRY_HEADER: &str = "x-switchboard-try";
/// [`TRY_HEADER`] of a routed request that does not fail over by redirect (not a stream).
pub const UNTAGGED: &str = "-";
/// Query parameter of the redirect's path carrying the token.
pub const TOKEN_PARAM: &str = "switchboard_failover";

/// A token nobody can guess: 128 random bits (WASI `random_get`) as hex;
/// `None` when the host has no randomness (the request then keeps the buffered failover).
pub fn new_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The redirect target: the client's own URL (so the route that served it
/// matches again) with the token appended to its query.
pub fn location(scheme: &str, authority: &str, path: &str, token: &str) -> String {
    let scheme = if scheme.is_empty() { "http" } else { scheme };
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{scheme}://{authority}{path}{sep}{TOKEN_PARAM}={token}")
}

/// The token of a replayed request, when its path carries one (possibly
/// empty: a client who writes the parameter itself must still be refused).
pub fn token_in_path(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == TOKEN_PARAM).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn location_keeps_the_client_path_and_query_and_round_trips() {
        let l = location("http", "gw:10000", "/v1/chat/completions", "ab12");
        assert_eq!(l, "http://gw:10000/v1/chat/completions?switchboard_failover=ab12");
        let l = location("https", "gw", "/v1/messages?beta=true", "ab12");
        assert_eq!(l, "https://gw/v1/messages?beta=true&switchboard_failover=ab12");
        assert_eq!(token_in_path(l.trim_start_matches("https://gw")), Some("ab12"));
        assert_eq!(location("", "gw", "/p", "t"), "http://gw/p?switchboard_failover=t");
    }

    #[test]
    fn token_in_path_finds_only_the_exact_parameter() {
        assert_eq!(token_in_path("/v1/chat/completions"), None);
        assert_eq!(token_in_path("/v1/chat/completions?x=1&switchboard_failover=t9"), Some("t9"));
        assert_eq!(token_in_path("/v1/chat/completions?switchboard_failover"), Some(""));
        assert_eq!(token_in_path("/v1/chat/completions?xswitchboard_failover=t"), None);
        assert_eq!(token_in_path("/switchboard_failover=t"), None);
    }
}
