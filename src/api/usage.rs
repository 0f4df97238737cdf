//! Token usage read back from an answer, without parsing it: the last
//! `prompt_tokens` and `completion_tokens` numbers in its tail (the `usage`
//! object closes a completion and the final chunk of a stream). Answers passed
//! through in Anthropic's or the Responses API's shape count `input_tokens`
//! and `output_tokens` instead; an Anthropic stream may give its input only in
//! its first event, so the head of the answer is kept too.

/// Bytes of an answer's end worth keeping to find its usage.
pub const TAIL_BYTES: usize = 1024;

/// Keeps the first and the last `TAIL_BYTES` of a body seen chunk by chunk.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Tail {
    pub fn push(&mut self, chunk: &[u8]) {
        let room = TAIL_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        self.tail.extend_from_slice(chunk);
        let excess = self.tail.len().saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.tail.drain(..excess);
        }
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        scan(&self.tail).or_else(|| {
            let output = last_number_after(&self.tail, b"\"output_tokens\"")?;
            let input = |body: &[u8]| {
                let n = |key: &[u8]| last_number_after(body, key);
                // Anthropic counts cache reads and writes apart from `input_tokens`.
                let plain = n(b"\"input_tokens\"")?;
                Some(
                    plain
                        + n(b"\"cache_read_input_tokens\"").unwrap_or(0)
                        + n(b"\"cache_creation_input_tokens\"").unwrap_or(0),
                )
            };
            Some((input(&self.tail).or_else(|| input(&self.head))?, output))
        })
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
        assert!(tail.tail.len() <= TAIL_BYTES && tail.head.len() <= TAIL_BYTES);
    }

    #[test]
    fn native_answers_count_input_and_output_tokens() {
        let mut tail = Tail::default();
        tail.push(br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}"#);
        assert_eq!(tail.usage(), Some((15, 3)), "Anthropic: cache reads are input too");
        let mut stream = Tail::default();
        stream.push(
            b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n",
        );
        stream.push(&vec![b' '; 3000]);
        stream.push(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(stream.usage(), Some((42, 9)), "the input from the first event, the output from the last");
        let mut responses = Tail::default();
        responses.push(br#"{"object":"response","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":4,"total_tokens":11}}"#);
        assert_eq!(responses.usage(), Some((7, 4)));
    }
}
