//! Decoder for AWS event-stream framing (`application/vnd.amazon.eventstream`),
//! used by Bedrock's `converse-stream`. Frames arrive split at arbitrary byte
//! positions; only the incomplete frame is buffered.
//!
//! Frame: total length (u32 BE), headers length (u32 BE), prelude CRC32,
//! headers, payload, message CRC32 (of everything before it).

/// Largest frame accepted. AWS caps event-stream messages at 16 MiB.
pub(super) const MAX_FRAME: usize = 16 * 1024 * 1024 + 64;

const PRELUDE: usize = 12;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0u32;
    while i < 256 {
        let mut c = i;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        // Evaluated at compile time; an out-of-bounds index would fail the build.
        #[allow(clippy::indexing_slicing)]
        {
            table[i as usize] = c;
        }
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib's `crc32`).
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        let slot = usize::from((c as u8) ^ b);
        c = CRC_TABLE.get(slot).copied().unwrap_or(0) ^ (c >> 8);
    }
    !c
}

/// One decoded message: its string headers and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Frame {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub(super) struct Decoder {
    buf: Vec<u8>,
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]))
}

fn be_u16(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 2)?;
    Some(usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?])))
}

fn parse_headers(mut h: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while let Some((&name_len, rest)) = h.split_first() {
        let name_len = usize::from(name_len);
        let name = rest.get(..name_len).ok_or("truncated header name")?;
        let rest = rest.get(name_len..).ok_or("truncated header name")?;
        let (&kind, rest) = rest.split_first().ok_or("truncated header type")?;
        let (value, size): (Option<&[u8]>, usize) = match kind {
            0 | 1 => (None, 0),
            2 => (None, 1),
            3 => (None, 2),
            4 => (None, 4),
            5 | 8 => (None, 8),
            9 => (None, 16),
            6 | 7 => {
                let len = be_u16(rest, 0).ok_or("truncated header value length")?;
                (Some(rest.get(2..2 + len).ok_or("truncated header value")?), 2 + len)
            }
            other => return Err(format!("unknown header value type {other}")),
        };
        if rest.len() < size {
            return Err("truncated header value".to_string());
        }
        if let (7, Some(v)) = (kind, value) {
            out.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(v).into_owned()));
        }
        h = rest.get(size..).unwrap_or_default();
    }
    Ok(out)
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes of an incomplete frame still held.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or an
    /// error when the stream is corrupt (no resynchronisation is possible).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        let (Some(total), Some(headers_len), Some(prelude_crc)) =
            (be_u32(&self.buf, 0), be_u32(&self.buf, 4), be_u32(&self.buf, 8))
        else {
            return Ok(None);
        };
        let prelude = self.buf.get(..8).unwrap_or_default();
        if crc32(prelude) != prelude_crc {
            return Err("event stream prelude CRC mismatch".to_string());
        }
        let (total, headers_len) = (total as usize, headers_len as usize);
        if total < PRELUDE + 4 + headers_len || total > MAX_FRAME {
            return Err(format!("event stream frame has an invalid length {total}"));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf.get(..total - 4).unwrap_or_default();
        let message_crc = be_u32(&self.buf, total - 4).unwrap_or(0);
        if crc32(body) != message_crc {
            return Err("event stream message CRC mismatch".to_string());
        }
        let headers = parse_headers(body.get(PRELUDE..PRELUDE + headers_len).unwrap_or_default())?;
        let payload = body.get(PRELUDE + headers_len..).unwrap_or_default().to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame { headers, payload }))
    }
}

/// Encodes a frame with string headers (tests and fixtures).
#[cfg(test)]
pub(super) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = PRELUDE + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock event frame (tests and fixtures).
#[cfg(test)]
pub(super) fn event(kind: &str, payload: &str) -> Vec<u8> {
    encode(
        &[(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn decodes_reference_frames() {
        // An empty message, and a Bedrock `messageStop` event, byte for byte
        // as framed by AWS (CRCs checked against zlib's crc32).
        let empty = unhex("000000100000000005c248eb7d98c8ff");
        let stop = unhex(concat!(
            "0000007a00000051ca2c46650b3a6576656e742d7479706507000b6d65737361676553746f70",
            "0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573",
            "736167652d747970650700056576656e747b2273746f70526561736f6e223a22656e645f7475",
            "726e227d5fbf09fc"
        ));
        assert_eq!(encode(&[], b""), empty);
        assert_eq!(event("messageStop", r#"{"stopReason":"end_turn"}"#), stop);
        let mut d = Decoder::default();
        d.push(&empty);
        d.push(&stop);
        assert_eq!(d.next_frame().unwrap(), Some(Frame { headers: vec![], payload: vec![] }));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.header(":event-type"), Some("messageStop"));
        assert_eq!(f.header(":message-type"), Some("event"));
        assert_eq!(f.payload, br#"{"stopReason":"end_turn"}"#);
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn frames_split_at_every_byte() {
        let a = event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"h\u00e9"}}"#);
        let b = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let all = [a.clone(), b.clone()].concat();
        for cut in 0..=all.len() {
            let mut d = Decoder::default();
            let mut frames = Vec::new();
            for piece in [&all[..cut], &all[cut..]] {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[1].header(":event-type"), Some("messageStop"));
        }
    }

    #[test]
    fn skips_non_string_headers() {
        let mut h = vec![3u8];
        h.extend_from_slice(b"num");
        h.push(4);
        h.extend_from_slice(&7u32.to_be_bytes());
        h.push(2);
        h.extend_from_slice(b"ok");
        h.push(0);
        h.push(2);
        h.extend_from_slice(b"id");
        h.push(9);
        h.extend_from_slice(&[0u8; 16]);
        h.push(1);
        h.extend_from_slice(b"s");
        h.push(7);
        h.extend_from_slice(&2u16.to_be_bytes());
        h.extend_from_slice(b"hi");
        assert_eq!(parse_headers(&h).unwrap(), vec![("s".to_string(), "hi".to_string())]);
        assert!(parse_headers(&[5, b'a']).is_err());
        assert!(parse_headers(&[1, b'a', 42]).is_err());
        assert!(parse_headers(&[1, b'a', 4, 0]).is_err());
    }

    #[test]
    fn corruption_is_an_error_not_a_panic() {
        let good = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let mut d = Decoder::default();
            d.push(&bad);
            match d.next_frame() {
                Err(_) => {}
                Ok(None) => assert!(i < 4, "byte {i}: a changed length only waits for more"),
                Ok(Some(_)) => panic!("byte {i}: corrupt frame accepted"),
            }
        }
        let mut d = Decoder::default();
        d.push(&encode(&[], b"")[..8]);
        assert_eq!(d.next_frame().unwrap(), None);
    }
}
