//! Token usage read back from an OpenAI-shaped answer, without parsing it:
//! the last `prompt_tokens` and `completion_tokens` numbers in its tail (the
//! `usage` object closes a completion and the final chunk of a stream).

/// Bytes of an answer's end worth keeping to find its usage.
pub const TAIL_BYTES: usize = 1024;

/// Keeps the last `TAIL_BYTES` of a body seen chunk by chunk.
#[derive(Debug, Default, Clone)]
pub struct Tail(Vec<u8>);

impl Tail {
    pub fn push(&mut self, chunk: &[u8]) {
        self.0.extend_from_slice(chunk);
        let excess = self.0.len().saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.0.drain(..excess);
        }
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        scan(&self.0)
    }
}

fn last_number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).rposition(|w| w == key)?;
    let rest = text.get(at + key.len()..)?;
    let digits: Vec<u8> = rest
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == b':')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// (prompt, completion) tokens, when both are there.
pub fn scan(body: &[u8]) -> Option<(u64, u64)> {
    Some((last_number_after(body, b"\"prompt_tokens\"")?, last_number_after(body, b"\"completion_tokens\"")?))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn finds_usage_of_completions_and_final_stream_chunks() {
        let body =
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens": 200,"completion_tokens":12,"total_tokens":212}}"#;
        assert_eq!(scan(body), Some((200, 12)));
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan(stream), Some((7, 3)));
        assert_eq!(scan(b"{\"choices\":[]}"), None);
    }

    #[test]
    fn tail_keeps_the_end_across_chunks() {
        let mut tail = Tail::default();
        tail.push(&vec![b'x'; 5000]);
        tail.push(br#"{"usage":{"prompt_tokens":1,"completion_tokens":"#);
        tail.push(b"2}}");
        assert_eq!(tail.usage(), Some((1, 2)));
        assert!(tail.0.len() <= TAIL_BYTES);
    }
}
