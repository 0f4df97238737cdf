//! AWS binary event-stream framing (`application/vnd.amazon.eventstream`), as
//! used by Bedrock's `converse-stream`.
//!
//! ```text
//! [total_len u32 BE][headers_len u32 BE][prelude_crc u32 BE]
//! [headers ...][payload ...][message_crc u32 BE]
//! header: [name_len u8][name][type u8 = 7 (string)][value_len u16 BE][value]
//! ```
//! CRCs are CRC32 (IEEE); the prelude CRC covers the first 8 bytes, the
//! message CRC everything before it.

const HEADER_TYPE_STRING: u8 = 7;

/// Encode one message with string headers.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers.iter().map(|(k, v)| 1 + k.len() + 1 + 2 + v.len()).sum();
    let total = 12 + headers_len + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    for (k, v) in headers {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.push(HEADER_TYPE_STRING);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Encode a Bedrock `event` message with a JSON payload.
pub fn event(event_type: &str, payload_json: &[u8]) -> Vec<u8> {
    encode(
        &[(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        payload_json,
    )
}

/// A decoded message: string headers and payload.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, PartialEq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

#[cfg_attr(not(test), allow(dead_code))]
fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| "truncated".to_string())
}

/// Decode one message from the front of `buf`; returns it and the bytes used.
/// Only string headers are supported (all that this mock produces).
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode(buf: &[u8]) -> Result<(Message, usize), String> {
    let total = be32(buf, 0)? as usize;
    let headers_len = be32(buf, 4)? as usize;
    let prelude_crc = be32(buf, 8)?;
    if total < 16 || buf.len() < total {
        return Err(format!("bad total length {total} (have {})", buf.len()));
    }
    if crc32fast::hash(buf.get(..8).ok_or("truncated")?) != prelude_crc {
        return Err("prelude CRC mismatch".into());
    }
    let msg_crc = be32(buf, total - 4)?;
    if crc32fast::hash(buf.get(..total - 4).ok_or("truncated")?) != msg_crc {
        return Err("message CRC mismatch".into());
    }
    if 12 + headers_len > total - 4 {
        return Err("headers length exceeds message".into());
    }
    let hdrs = buf.get(12..12 + headers_len).ok_or("truncated")?;
    let mut headers = Vec::new();
    let mut i = 0;
    while i < hdrs.len() {
        let nlen = *hdrs.get(i).ok_or("truncated header")? as usize;
        let name = hdrs.get(i + 1..i + 1 + nlen).ok_or("truncated header name")?;
        i += 1 + nlen;
        let ty = *hdrs.get(i).ok_or("truncated header type")?;
        if ty != HEADER_TYPE_STRING {
            return Err(format!("unsupported header type {ty}"));
        }
        let vlen = u16::from_be_bytes(
            hdrs.get(i + 1..i + 3).and_then(|s| <[u8; 2]>::try_from(s).ok()).ok_or("truncated header value length")?,
        ) as usize;
        let value = hdrs.get(i + 3..i + 3 + vlen).ok_or("truncated header value")?;
        i += 3 + vlen;
        headers.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    let payload = buf.get(12 + headers_len..total - 4).ok_or("truncated")?.to_vec();
    Ok((Message { headers, payload }, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_message_matches_reference_vector() {
        // Reference bytes computed independently with Python's zlib.crc32.
        assert_eq!(hex::encode(encode(&[], b"")), "000000100000000005c248eb7d98c8ff");
    }

    #[test]
    fn bedrock_event_matches_reference_vector() {
        let msg = event("messageStop", br#"{"stopReason":"end_turn"}"#);
        let expected = "0000007a00000051ca2c46650b3a6576656e742d7479706507000b6d65737361676553746f70\
                        0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573\
                        736167652d747970650700056576656e747b2273746f70526561736f6e223a22656e645f7475\
                        726e227d5fbf09fc";
        assert_eq!(hex::encode(&msg), expected);
    }

    #[test]
    fn roundtrip_and_crc_detection() {
        let a = event("contentBlockDelta", br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#);
        let b = event("messageStop", br#"{"stopReason":"end_turn"}"#);
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let (m1, used) = decode(&both).unwrap();
        assert_eq!(used, a.len());
        assert_eq!(m1.headers[0], (":event-type".to_string(), "contentBlockDelta".to_string()));
        let (m2, _) = decode(&both[used..]).unwrap();
        assert_eq!(m2.payload, br#"{"stopReason":"end_turn"}"#);

        let mut bad = a.clone();
        let n = bad.len();
        bad[n - 6] ^= 1; // payload byte
        assert_eq!(decode(&bad).unwrap_err(), "message CRC mismatch");
        let mut bad = a;
        bad[3] ^= 1; // total length
        assert!(decode(&bad).is_err());
    }
}
