//! Failover that keeps streaming: the words the filter and the router's
//! upstream filter (a few lines of Lua, `envoy/render.py`) share.
//!
//! The filter tags a routed stream with [`try_header`]: the statuses its pool
//! fails over on and the URL to replay it at, carrying a one-time token. The
//! upstream filter removes the header before the request leaves Envoy, and
//! when the attempt answers one of those statuses it answers the router with
//! a 307 to that URL plus the status ([`STATUS_PARAM`], [`RETRY_AFTER_PARAM`]).
//! Envoy's internal redirect replays the request through the filter, which
//! finds the token in the path ([`token_in_path`]), records the failure
//! ([`failure_in`]) and routes the next member, whose answer then streams to
//! the client directly. No proxy-wasm calls here.

use crate::encoding::{percent_decode, random_hex};

/// Request header from the filter to the upstream filter: `<statuses>;<url>` (see [`try_header`]).
pub const TRY_HEADER: &str = "x-switchboard-try";
/// Query parameter of the redirect's path carrying the token.
pub const TOKEN_PARAM: &str = "switchboard_failover";
/// Query parameters the upstream filter adds: the failed attempt's status and `Retry-After` (percent-encoded).
pub const STATUS_PARAM: &str = "switchboard_status";
pub const RETRY_AFTER_PARAM: &str = "switchboard_retry_after";

/// The try header's value: the statuses that fail over, comma-separated, then the replay URL.
pub fn try_header(retry_on: &[u16], url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 4 * retry_on.len() + 1);
    for (i, status) in retry_on.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&status.to_string());
    }
    out.push(';');
    out.push_str(url);
    out
}

/// The failed attempt's status and `Retry-After` in a replayed path (or a
/// redirect's `Location` Envoy did not follow); status 0 when absent.
pub fn failure_in(url: &str) -> (u16, Option<String>) {
    let status = param(url, STATUS_PARAM).and_then(|s| s.parse().ok()).unwrap_or(0);
    let retry_after = param(url, RETRY_AFTER_PARAM).map(|v| String::from_utf8_lossy(&percent_decode(v)).into_owned());
    (status, retry_after)
}

fn param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A token nobody can guess: 128 random bits (WASI `random_get`) as hex;
/// `None` when the host has no randomness (the request then keeps the buffered failover).
pub fn new_token() -> Option<String> {
    random_hex::<16>()
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
    param(path, TOKEN_PARAM)
}

#[cfg(test)]
mod tests {

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
    fn try_header_and_the_failure_the_upstream_filter_appends_round_trip() {
        let url = location("http", "gw", "/v1/chat/completions", "t1");
        assert_eq!(try_header(&[429, 503], &url), format!("429,503;{url}"));
        assert_eq!(try_header(&[], "u"), ";u");
        let replayed =
            format!("{url}&{STATUS_PARAM}=503&{RETRY_AFTER_PARAM}=Wed%2C%2021%20Oct%202015%2007%3A28%3A00%20GMT");
        assert_eq!(failure_in(&replayed), (503, Some("Wed, 21 Oct 2015 07:28:00 GMT".to_string())));
        assert_eq!(failure_in(&format!("{url}&{STATUS_PARAM}=429&{RETRY_AFTER_PARAM}=2")), (429, Some("2".into())));
        assert_eq!(failure_in(&url), (0, None));
        assert_eq!(percent_decode("50%"), b"50%");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
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
