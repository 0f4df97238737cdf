//! AWS Signature Version 4 (header signing), as needed for Bedrock.
//!
//! Canonical URI rules are those of every service but S3: the path as sent on
//! the wire (already percent-encoded) is URI-encoded once more, segment by
//! segment, so a model id `a:0` sent as `a%3A0` is signed as `a%253A0`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::encoding::{hex, percent_decode};

type HmacSha256 = Hmac<Sha256>;

pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Percent-encodes everything but the unreserved characters `A-Za-z0-9-_.~`
/// (and `/` when `keep_slash`), with uppercase hex digits, as SigV4 requires.
pub(super) fn uri_encode(input: &str, keep_slash: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() + 8);
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
            out.push(char::from(DIGITS.get(usize::from(b & 0x0f)).copied().unwrap_or(b'0')));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
pub(super) fn amz_date(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

/// Days since 1970-01-01 to (year, month, day); H. Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// What is signed. `path` is the path as sent (percent-encoded, no query);
/// `headers` are the headers to sign, `host` and `x-amz-date` included.
pub(super) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

pub(super) struct Scope<'a> {
    /// `YYYYMMDDTHHMMSSZ`, equal to the `x-amz-date` header.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&decoded(k), false), uri_encode(&decoded(v), false))
        })
        .collect();
    sort_pairs(&mut pairs, true);
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Sorts by name, then (`by_value`) by value; stable. One sort for both
/// lists: a slice sort's code per comparator is several KB of the module.
fn sort_pairs(pairs: &mut [(String, String)], by_value: bool) {
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| if by_value { a.1.cmp(&b.1) } else { std::cmp::Ordering::Equal }));
}

/// Canonical headers block and the signed-headers list.
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut list: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    sort_pairs(&mut list, false);
    let mut merged: Vec<(String, String)> = Vec::with_capacity(list.len());
    for (k, v) in list {
        match merged.last_mut() {
            Some((last, values)) if *last == k => {
                values.push(',');
                values.push_str(&v);
            }
            _ => merged.push((k, v)),
        }
    }
    let block = merged.iter().map(|(k, v)| format!("{k}:{v}\n")).collect::<String>();
    let signed = merged.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    (block, signed)
}

/// The canonical request and the signed-headers list.
pub(super) fn canonical_request(req: &Request<'_>) -> (String, String) {
    let uri = if req.path.is_empty() { "/".to_string() } else { uri_encode(req.path, true) };
    let (headers, signed) = canonical_headers(req.headers);
    let creq = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri,
        canonical_query(req.query),
        headers,
        signed,
        req.payload_sha256
    );
    (creq, signed)
}

/// The `Authorization` header value.
pub(super) fn authorization(
    req: &Request<'_>,
    scope: &Scope<'_>,
    access_key_id: &str,
    secret_access_key: &str,
) -> String {
    let (creq, signed) = canonical_request(req);
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign =
        format!("{ALGORITHM}\n{}\n{credential_scope}\n{}", scope.amz_date, sha256_hex(creq.as_bytes()));
    let k_date = hmac(format!("AWS4{secret_access_key}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    format!("{ALGORITHM} Credential={access_key_id}/{credential_scope}, SignedHeaders={signed}, Signature={signature}")
}

fn decoded(component: &str) -> String {
    String::from_utf8_lossy(&percent_decode(component)).into_owned()
}

#[cfg(test)]
mod tests {

    use super::*;

    // The AWS SigV4 test suite (aws-sig-v4-test-suite): credentials, time and scope.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const STS_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn sign(method: &str, path: &str, query: &str, extra: &[(&str, &str)], body: &[u8]) -> String {
        let mut headers = vec![("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];
        headers.extend_from_slice(extra);
        let hash = sha256_hex(body);
        let req = Request { method, path, query, headers: &headers, payload_sha256: &hash };
        authorization(&req, &Scope { amz_date: DATE, region: "us-east-1", service: "service" }, AKID, SECRET)
    }

    fn expect(signed: &str, signature: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}")
    }

    #[test]
    fn aws_test_suite_vectors() {
        let cases: [(&str, String, String); 9] = [
            (
                "get-vanilla",
                sign("GET", "/", "", &[], b""),
                expect("host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            ),
            (
                "post-vanilla",
                sign("POST", "/", "", &[], b""),
                expect("host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
            ),
            (
                "get-vanilla-query-order-key-case",
                sign("GET", "/", "Param2=value2&Param1=value1", &[], b""),
                expect("host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            ),
            (
                "get-utf8",
                sign("GET", "/\u{1234}", "", &[], b""),
                expect("host;x-amz-date", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
            ),
            (
                "get-space",
                sign("GET", "/example space/", "", &[], b""),
                expect("host;x-amz-date", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
            ),
            (
                "get-unreserved",
                sign("GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "", &[], b""),
                expect("host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
            ),
            (
                "get-header-value-trim",
                sign("GET", "/", "", &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")], b""),
                expect(
                    "host;my-header1;my-header2;x-amz-date",
                    "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
                ),
            ),
            (
                "post-x-www-form-urlencoded",
                sign("POST", "/", "", &[("Content-Type", "application/x-www-form-urlencoded")], b"Param1=value1"),
                expect(
                    "content-type;host;x-amz-date",
                    "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
                ),
            ),
            (
                "post-sts-header-before",
                sign("POST", "/", "", &[("X-Amz-Security-Token", STS_TOKEN)], b""),
                expect(
                    "host;x-amz-date;x-amz-security-token",
                    "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
                ),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn canonical_request_of_get_vanilla() {
        let headers = [("host", "example.amazonaws.com"), ("x-amz-date", DATE)];
        let req = Request { method: "GET", path: "/", query: "", headers: &headers, payload_sha256: EMPTY_SHA };
        let (creq, signed) = canonical_request(&req);
        assert_eq!(
            creq,
            format!("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{DATE}\n\nhost;x-amz-date\n{EMPTY_SHA}")
        );
        assert_eq!(signed, "host;x-amz-date");
        assert_eq!(sha256_hex(creq.as_bytes()), "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
    }

    #[test]
    fn already_encoded_paths_are_encoded_again() {
        let headers = [("host", "bedrock-runtime.us-east-1.amazonaws.com"), ("x-amz-date", DATE)];
        let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
        let req = Request { method: "POST", path, query: "", headers: &headers, payload_sha256: EMPTY_SHA };
        let (creq, _) = canonical_request(&req);
        assert_eq!(creq.lines().nth(1), Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse"));
        assert_eq!(
            uri_encode("arn:aws:bedrock:us-east-1:1:inference-profile/x", false),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx"
        );
    }

    #[test]
    fn dates_in_iso8601_basic_format() {
        assert_eq!(amz_date(1_440_938_160), DATE);
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
        assert_eq!(amz_date(1_709_251_199), "20240229T235959Z");
    }

    #[test]
    fn hex_and_sha() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(sha256_hex(b""), EMPTY_SHA);
    }
}
