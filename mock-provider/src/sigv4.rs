//! AWS Signature Version 4 verification (header form, `AWS4-HMAC-SHA256`).
//!
//! The signature is recomputed from the request as received: canonical URI is
//! the raw path URI-encoded once more (AWS "double encoding", as botocore and
//! the AWS SDKs do for every service but S3), canonical query sorted by
//! encoded name then value, signed headers trimmed with inner runs of spaces
//! collapsed, payload hash from `x-amz-content-sha256` if present, else the
//! SHA-256 of the body.

use hmac::{Hmac, Mac};
use hyper::header::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The parts of a request that go into the signature.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Path as sent on the wire (still percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Used for the `host` header when the request has none (HTTP/2 `:authority`).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// Parsed `Authorization` header.
#[derive(Debug, PartialEq)]
pub struct AuthHeader<'a> {
    pub access_key: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

pub fn parse_auth(value: &str) -> Result<AuthHeader<'_>, String> {
    let rest =
        value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("Authorization header must start with 'AWS4-HMAC-SHA256 '")?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        } else if !part.is_empty() {
            return Err(format!("unexpected Authorization component '{part}'"));
        }
    }
    let cred = cred.ok_or("Authorization header has no Credential=")?;
    let signed_headers = signed.ok_or("Authorization header has no SignedHeaders=")?;
    let signature = sig.ok_or("Authorization header has no Signature=")?;
    let mut it = cred.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some(term), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(format!("Credential '{cred}' must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"));
    };
    if term != "aws4_request" {
        return Err(format!("Credential scope must end with aws4_request, got '{term}'"));
    }
    Ok(AuthHeader { access_key, date, region, service, signed_headers, signature })
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// AWS URI encoding: everything but unreserved characters (and '/' if
/// `keep_slash`) as %XX with upper-case hex.
pub fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    uri_encode(path.as_bytes(), true)
}

pub fn canonical_query(query: Option<&str>) -> String {
    let Some(q) = query else { return String::new() };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn canonical_header_value(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Build the canonical request for `signed_headers` (`;`-separated, lower-case).
pub fn canonical_request(req: &SignedRequest, signed_headers: &str) -> Result<String, String> {
    let payload_hash = match req.headers.get("x-amz-content-sha256") {
        Some(v) => {
            let v = v.to_str().map_err(|_| "x-amz-content-sha256 is not ASCII")?;
            if v != "UNSIGNED-PAYLOAD" && !v.starts_with("STREAMING-") {
                let actual = sha256_hex(req.body);
                if !v.eq_ignore_ascii_case(&actual) {
                    return Err(format!("x-amz-content-sha256 {v} does not match the SHA-256 of the body {actual}"));
                }
            }
            v.to_string()
        }
        None => sha256_hex(req.body),
    };
    let mut headers = String::new();
    for name in signed_headers.split(';') {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("SignedHeaders '{signed_headers}' must be lower-case names"));
        }
        let values: Vec<String> =
            req.headers.get_all(name).iter().map(|v| canonical_header_value(v.as_bytes())).collect();
        let value = if values.is_empty() {
            match (name, req.authority) {
                ("host", Some(a)) => a.to_string(),
                _ => return Err(format!("signed header '{name}' is missing from the request")),
            }
        } else {
            values.join(",")
        };
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&value);
        headers.push('\n');
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        headers,
        signed_headers,
        payload_hash
    ))
}

/// Compute the signature of `req` as signed by `auth`'s scope with `secret`.
/// Returns (signature, canonical request, string to sign).
pub fn compute(
    req: &SignedRequest,
    auth: &AuthHeader,
    amz_date: &str,
    secret: &str,
) -> Result<(String, String, String), String> {
    let creq = canonical_request(req, auth.signed_headers)?;
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let sts = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(creq.as_bytes()));
    let key = signing_key(secret, auth.date, auth.region, auth.service);
    Ok((hex::encode(hmac(&key, sts.as_bytes())), creq, sts))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verify the request's SigV4 `Authorization` header. On success returns the
/// region from the credential scope.
pub fn verify(req: &SignedRequest, access_key: &str, secret: &str, service: &str) -> Result<String, String> {
    let auth_value = req
        .headers
        .get("authorization")
        .ok_or("Missing Authentication Token: no Authorization header")?
        .to_str()
        .map_err(|_| "Authorization header is not ASCII")?;
    let auth = parse_auth(auth_value)?;
    if auth.access_key != access_key {
        return Err(format!(
            "The security token included in the request is invalid: unknown access key '{}'",
            auth.access_key
        ));
    }
    if auth.service != service {
        return Err(format!("Credential should be scoped to correct service: '{service}', got '{}'", auth.service));
    }
    if !auth.signed_headers.split(';').any(|h| h == "host") {
        return Err("SignedHeaders must include 'host'".into());
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .ok_or("missing x-amz-date header")?
        .to_str()
        .map_err(|_| "x-amz-date is not ASCII")?;
    if amz_date.len() != 16 || !amz_date.ends_with('Z') || amz_date.as_bytes().get(8) != Some(&b'T') {
        return Err(format!("x-amz-date '{amz_date}' must look like YYYYMMDDTHHMMSSZ"));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(format!("Credential date '{}' does not match x-amz-date '{amz_date}'", auth.date));
    }
    let (expected, creq, sts) = compute(req, &auth, amz_date, secret)?;
    if ct_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(auth.region.to_string())
    } else {
        Err(format!(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. \
             The Canonical String for this request should have been '{creq}' \
             The String-to-Sign should have been '{sts}'"
        ))
    }
}

/// Sign a request (used by tests and by the mock's self-check). Returns the
/// `Authorization` header value for the given signed headers.
#[cfg(test)]
pub fn sign(
    req: &SignedRequest,
    access_key: &str,
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    signed_headers: &str,
) -> String {
    let date = &amz_date[..8];
    let auth = AuthHeader { access_key, date, region, service, signed_headers, signature: "" };
    let (sig, _, _) = compute(req, &auth, amz_date, secret).unwrap();
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{date}/{region}/{service}/aws4_request, \
         SignedHeaders={signed_headers}, Signature={sig}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn suite_headers(sig: &str, signed: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static(DATE));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed}, Signature={sig}"
        );
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        h
    }

    fn check(method: &str, path: &str, query: Option<&str>, h: &HeaderMap, body: &[u8]) -> Result<String, String> {
        let req = SignedRequest { method, path, query, headers: h, authority: None, body };
        verify(&req, AKID, SECRET, "service")
    }

    // Vectors from the AWS "Signature Version 4 test suite".
    #[test]
    fn suite_get_vanilla() {
        let h = suite_headers("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31", "host;x-amz-date");
        assert_eq!(check("GET", "/", None, &h, b""), Ok("us-east-1".to_string()));
        // canonical request as published
        let req = SignedRequest { method: "GET", path: "/", query: None, headers: &h, authority: None, body: b"" };
        assert_eq!(
            canonical_request(&req, "host;x-amz-date").unwrap(),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn suite_get_vanilla_query_order() {
        let h = suite_headers("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500", "host;x-amz-date");
        assert!(check("GET", "/", Some("Param2=value2&Param1=value1"), &h, b"").is_ok());
        let h = suite_headers("5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694", "host;x-amz-date");
        assert!(check("GET", "/", Some("Param1=value2&Param1=value1"), &h, b"").is_ok());
    }

    #[test]
    fn suite_get_unreserved() {
        let h = suite_headers("07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f", "host;x-amz-date");
        let path = "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        assert!(check("GET", path, None, &h, b"").is_ok());
    }

    #[test]
    fn suite_post_x_www_form_urlencoded() {
        let mut h = suite_headers(
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            "content-type;host;x-amz-date",
        );
        h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
        assert!(check("POST", "/", None, &h, b"Param1=value1").is_ok());
        // a different body breaks it
        assert!(check("POST", "/", None, &h, b"Param1=value2").is_err());
    }

    #[test]
    fn rejects_wrong_signature_key_and_scope() {
        let good = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let bad = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30";
        let h = suite_headers(bad, "host;x-amz-date");
        let err = check("GET", "/", None, &h, b"").unwrap_err();
        assert!(err.contains("signature we calculated does not match"), "{err}");
        let h = suite_headers(good, "host;x-amz-date");
        let req = SignedRequest { method: "GET", path: "/", query: None, headers: &h, authority: None, body: b"" };
        assert!(verify(&req, "OTHERKEY", SECRET, "service").is_err());
        assert!(verify(&req, AKID, "wrong-secret", "service").is_err());
        assert!(verify(&req, AKID, SECRET, "bedrock").unwrap_err().contains("service"));
        // missing signed header
        let h = suite_headers(good, "host;x-amz-date;x-other");
        assert!(check("GET", "/", None, &h, b"").unwrap_err().contains("x-other"));
        // no authorization at all
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        assert!(check("GET", "/", None, &h, b"").is_err());
    }

    #[test]
    fn bedrock_roundtrip_with_double_encoded_path_and_content_sha() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("bedrock-runtime.eu-west-1.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20240102T030405Z"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let sha = sha256_hex(body);
        h.insert("x-amz-content-sha256", HeaderValue::from_str(&sha).unwrap());
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        let req = SignedRequest { method: "POST", path, query: None, headers: &h, authority: None, body };
        let signed = "content-type;host;x-amz-content-sha256;x-amz-date";
        let creq = canonical_request(&req, signed).unwrap();
        assert!(creq.contains("/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse"));
        let auth = sign(&req, "AKIA1", "s3cr3t", "20240102T030405Z", "eu-west-1", "bedrock", signed);
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        let req = SignedRequest { method: "POST", path, query: None, headers: &h, authority: None, body };
        assert_eq!(verify(&req, "AKIA1", "s3cr3t", "bedrock"), Ok("eu-west-1".to_string()));
        // tampered body: content sha no longer matches
        let req = SignedRequest { method: "POST", path, query: None, headers: &h, authority: None, body: b"{}" };
        assert!(verify(&req, "AKIA1", "s3cr3t", "bedrock").unwrap_err().contains("x-amz-content-sha256"));
    }

    #[test]
    fn parse_auth_errors() {
        assert!(parse_auth("Bearer x").is_err());
        assert!(parse_auth("AWS4-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=host, Signature=x").is_err());
        assert!(parse_auth("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=x").is_err());
        let a = parse_auth("AWS4-HMAC-SHA256 Credential=K/20200101/r/s/aws4_request,SignedHeaders=host,Signature=ab")
            .unwrap();
        assert_eq!(a.region, "r");
        assert_eq!(a.signature, "ab");
    }

    #[test]
    fn query_encoding() {
        assert_eq!(canonical_query(Some("b=2&a=x%2Fy&c")), "a=x%2Fy&b=2&c=");
        assert_eq!(canonical_query(Some("a=hello world")), "a=hello%20world");
        assert_eq!(canonical_uri("/a b/%3A"), "/a%20b/%253A");
    }
}
