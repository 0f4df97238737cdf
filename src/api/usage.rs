//! Token usage read back from an answer, without parsing it: the last
//! `prompt_tokens` and `completion_tokens` numbers in its tail (the `usage`
//! object closes a completion and the final chunk of a stream). Answers passed
//! through in Anthropic's or the Responses API's shape count `input_tokens`
//! and `output_tokens` instead; an Anthropic stream may give its input only in
//! its first event, so the head of the answer is kept too. And the usage-only
//! chunk taken out of an OpenAI stream whose client did not ask for it.

use serde_json::Value;

use crate::sse;
use crate::text;

/// Token counts of one answer, in OpenAI's terms: the one usage type of the
/// gateway, from the answers it reads to tenants' budgets and the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    /// All input tokens, cached ones included (`prompt_tokens`; Anthropic's
    /// and the Responses API's `input_tokens`).
    pub prompt: u64,
    /// Output tokens, reasoning included (`completion_tokens`, `output_tokens`).
    pub completion: u64,
    /// The provider's total, when it gives one.
    pub total: Option<u64>,
    /// Input tokens read from the provider's cache (`cached_tokens`,
    /// Anthropic's `cache_read_input_tokens`), part of `prompt`.
    pub cached: Option<u64>,
    /// Input tokens written to the provider's cache (Anthropic's
    /// `cache_creation_input_tokens`, `cache_write_tokens`), part of `prompt`.
    pub cache_write: Option<u64>,
    /// Reasoning tokens (`reasoning_tokens`).
    pub reasoning: Option<u64>,
}

impl Tokens {
    pub const fn new(prompt: u64, completion: u64) -> Tokens {
        Tokens { prompt, completion, total: None, cached: None, cache_write: None, reasoning: None }
    }

    /// `total_tokens`: the provider's total, else prompt + completion.
    pub fn total_tokens(&self) -> u64 {
        self.total.unwrap_or(self.prompt + self.completion)
    }

    /// Cache counts of 0 as none: the answer's shape is the same either way.
    pub fn without_zero_cache(self) -> Tokens {
        Tokens { cached: self.cached.filter(|c| *c > 0), cache_write: self.cache_write.filter(|c| *c > 0), ..self }
    }

    /// Input tokens neither read from nor written to a cache.
    pub fn uncached_prompt(&self) -> u64 {
        self.prompt.saturating_sub(self.cached.unwrap_or(0)).saturating_sub(self.cache_write.unwrap_or(0))
    }

    /// An OpenAI `usage` object's counts (details only when given; no total).
    pub fn from_json(usage: Option<&Value>) -> Option<Tokens> {
        let usage = usage?.as_object()?;
        let n = |v: Option<&Value>| v.and_then(Value::as_u64);
        Some(Tokens {
            prompt: n(usage.get("prompt_tokens")).unwrap_or(0),
            completion: n(usage.get("completion_tokens")).unwrap_or(0),
            total: None,
            cached: n(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens"))),
            cache_write: n(usage.get("prompt_tokens_details").and_then(|d| d.get("cache_write_tokens"))),
            reasoning: n(usage.get("completion_tokens_details").and_then(|d| d.get("reasoning_tokens"))),
        })
    }
}

/// Bytes of an answer's end worth keeping to find its usage.
pub const TAIL_BYTES: usize = 1024;

/// Keeps the first and the last `TAIL_BYTES` of a body seen chunk by chunk.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// The usage read since the last push: an answer's end asks for it several times.
    read: std::cell::Cell<Option<Option<Tokens>>>,
}

impl Tail {
    pub fn push(&mut self, chunk: &[u8]) {
        self.read.set(None);
        let room = TAIL_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        self.tail.extend_from_slice(chunk);
        let excess = self.tail.len().saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.tail.drain(..excess);
        }
    }

    /// The first `TAIL_BYTES` of the answer.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    pub fn usage(&self) -> Option<Tokens> {
        if let Some(read) = self.read.get() {
            return read;
        }
        let usage = self.read_usage();
        self.read.set(Some(usage));
        usage
    }

    fn read_usage(&self) -> Option<Tokens> {
        scan(&self.tail).or_else(|| {
            let output = last_number_after(&self.tail, b"\"output_tokens\"")?;
            // Anthropic counts cache reads and writes apart from `input_tokens`
            // (in its first event, for a stream), the Responses API within it.
            let input = |body: &[u8]| {
                let n = |key: &[u8]| last_number_after(body, key);
                let plain = n(b"\"input_tokens\"")?;
                let read = n(b"\"cache_read_input_tokens\"");
                let write = n(b"\"cache_creation_input_tokens\"");
                let prompt = plain + read.unwrap_or(0) + write.unwrap_or(0);
                let cached = read.or_else(|| n(b"\"cached_tokens\""));
                Some(Tokens { cached, cache_write: write, ..Tokens::new(prompt, output) }.without_zero_cache())
            };
            input(&self.tail).or_else(|| input(&self.head))
        })
    }
}

/// The number after the last `key` in `text` (`"key": 12`).
pub(crate) fn last_number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    number_at(text::last_value_after(body, key)?)
}

/// The tokens of an OpenAI answer, when `prompt_tokens` is there (embeddings
/// report no completion: 0).
pub fn scan(body: &[u8]) -> Option<Tokens> {
    // The counts are in the last `usage` object: its keys are read in one pass
    // from it on. An answer without one is searched key by key.
    let from_usage = text::last_value_after(body, b"\"usage\"").and_then(usage_object);
    from_usage.or_else(|| {
        let n = |key: &[u8]| last_number_after(body, key);
        let prompt = n(b"\"prompt_tokens\"")?;
        let tokens = Tokens::new(prompt, n(b"\"completion_tokens\"").unwrap_or(0));
        Some(
            Tokens { cached: n(b"\"cached_tokens\""), cache_write: n(b"\"cache_write_tokens\""), ..tokens }
                .without_zero_cache(),
        )
    })
}

/// The counts of an OpenAI `usage` object (`text`: from its value to the
/// answer's end), read in one pass over its keys; the last of each counts.
fn usage_object(text: &[u8]) -> Option<Tokens> {
    let (mut prompt, mut completion, mut cached, mut cache_write) = (None, None, None, None);
    // Quotes pair up as strings' ends; an escaped one is inside a string.
    let mut quotes = memchr::memchr_iter(b'"', text).filter(|at| !text::escaped_at(text, *at));
    while let Some(open) = quotes.next() {
        let Some(close) = quotes.next() else { break };
        let slot = match text.get(open + 1..close) {
            Some(b"prompt_tokens") => &mut prompt,
            Some(b"completion_tokens") => &mut completion,
            Some(b"cached_tokens") => &mut cached,
            Some(b"cache_write_tokens") => &mut cache_write,
            _ => continue,
        };
        if let Some(n) = number_at(text::value_start(text, close + 1)) {
            *slot = Some(n);
        }
    }
    let tokens = Tokens::new(prompt?, completion.unwrap_or(0));
    Some(Tokens { cached, cache_write, ..tokens }.without_zero_cache())
}

/// The number `value` starts with (`12,...`), if it starts with digits.
fn number_at(value: &[u8]) -> Option<u64> {
    let mut number: Option<u64> = None;
    for b in value.iter().take_while(|b| b.is_ascii_digit()) {
        number = Some(number.unwrap_or(0).checked_mul(10)?.checked_add(u64::from(b - b'0'))?);
    }
    number
}

/// Takes the usage-only chunk (`"choices":[]` with a `usage` object) out of
/// an OpenAI stream, keeping its counts: the gateway asks OpenAI-wire
/// providers for usage (`stream_options.include_usage`) even when the client
/// did not, and that client must not get a chunk it never asked for.
/// Bytes after the last complete event are held until the event completes,
/// so a chunk split across body callbacks is still recognised; complete
/// events pass as they came.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    held: Vec<u8>,
    usage: Option<Tokens>,
}

impl UsageChunkFilter {
    /// What to send on for `chunk`: `None` when that is `chunk` itself.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        let whole = end_of_stream || sse::ends_with_blank_line(chunk);
        if self.held.is_empty() && whole && !has_empty_choices(chunk) {
            return None;
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(data.len());
        let mut start = 0;
        while let Some((len, separator)) = sse::event_end(data.get(start..).unwrap_or_default(), 0) {
            let end = start + len + separator;
            self.pass(data.get(start..end).unwrap_or_default(), &mut out);
            start = end;
        }
        let rest = data.get(start..).unwrap_or_default();
        if end_of_stream {
            self.pass(rest, &mut out);
        } else {
            self.held = rest.to_vec();
        }
        Some(out)
    }

    /// Sends `event` on, unless it is the usage-only chunk.
    fn pass(&mut self, event: &[u8], out: &mut Vec<u8>) {
        match scan(event).filter(|_| has_empty_choices(event)) {
            Some(usage) => self.usage = Some(usage),
            None => out.extend_from_slice(event),
        }
    }

    /// The counts of the chunk taken out, once it was seen.
    pub fn usage(&self) -> Option<Tokens> {
        self.usage
    }
}

/// Whether a `"choices"` key holds an empty array (`"choices": [ ]` too).
fn has_empty_choices(bytes: &[u8]) -> bool {
    const KEY: &[u8] = b"\"choices\"";
    fn then(rest: &[u8], what: u8) -> Option<&[u8]> {
        let at = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest.get(at) == Some(&what) {
            rest.get(at + 1..)
        } else {
            None
        }
    }
    text::values_after(bytes, KEY).any(|value| then(value, b'[').and_then(|rest| then(rest, b']')).is_some())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn finds_usage_of_completions_and_final_stream_chunks() {
        let body =
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens": 200,"completion_tokens":12,"total_tokens":212}}"#;
        assert_eq!(scan(body), Some(Tokens::new(200, 12)));
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan(stream), Some(Tokens::new(7, 3)));
        assert_eq!(scan(b"{\"choices\":[]}"), None);
        let embeddings = br#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(scan(embeddings), Some(Tokens::new(8, 0)));
        // Cache counts come from the usage object (a stream's last usage), not from text before it.
        let cached = br#"{"choices":[{"message":{"content":""cached_tokens":99"}}],"usage":{"prompt_tokens":50,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":40,"cache_write_tokens":6}}}"#;
        assert_eq!(scan(cached), Some(Tokens { cached: Some(40), cache_write: Some(6), ..Tokens::new(50, 2) }));
        let uncached = br#"{"choices":[{"message":{"content":""cached_tokens":99"}}],"usage":{"prompt_tokens":50,"completion_tokens":2}}"#;
        assert_eq!(scan(uncached), Some(Tokens::new(50, 2)));
        // Strings after the usage object, escaped quotes within, are not read as its keys.
        let after = br#"{"usage":{"prompt_tokens":5,"completion_tokens":1},"note":"a \"prompt_tokens\": 9, \\"}"#;
        assert_eq!(scan(after), Some(Tokens::new(5, 1)));
    }

    const CHUNK: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &[u8] =
        b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    #[test]
    fn usage_chunk_is_taken_out_and_counted_whatever_the_chunking() {
        let stream = [CHUNK, CHUNK, USAGE, DONE].concat();
        let expected = [CHUNK, CHUNK, DONE].concat();
        // Every way of cutting the stream in two (and in bytes) gives the same output.
        for cut in 0..=stream.len() {
            let mut f = UsageChunkFilter::default();
            let (a, b) = stream.split_at(cut);
            let mut out = f.feed(a, false).unwrap_or_else(|| a.to_vec());
            out.extend(f.feed(b, true).unwrap_or_else(|| b.to_vec()));
            assert_eq!(out, expected, "cut at {cut}");
            assert_eq!(f.usage(), Some(Tokens::new(7, 3)), "cut at {cut}");
        }
        let mut f = UsageChunkFilter::default();
        let mut out = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            out.extend(f.feed(&[*byte], i + 1 == stream.len()).unwrap_or_else(|| vec![*byte]));
        }
        assert_eq!((out, f.usage()), (expected, Some(Tokens::new(7, 3))));
    }

    #[test]
    fn usage_chunk_filter_leaves_other_streams_untouched() {
        let mut f = UsageChunkFilter::default();
        // Whole events without a usage-only chunk pass as they are, without a copy.
        assert_eq!(f.feed(CHUNK, false), None);
        assert_eq!(f.feed(DONE, true), None);
        assert_eq!(f.usage(), None);
        // Usage on a chunk that still has choices (some servers) is not a usage-only chunk.
        let with_choice =
            b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        assert_eq!(UsageChunkFilter::default().feed(with_choice, true), None);
        // CRLF framing and spaced JSON are recognised; an unterminated tail is sent at the end.
        let spaced = b"data: {\"choices\": [ ], \"usage\": {\"prompt_tokens\": 4, \"completion_tokens\": 5}}\r\n\r\n";
        let mut f = UsageChunkFilter::default();
        assert_eq!(f.feed(&[CHUNK, spaced].concat(), false), Some(CHUNK.to_vec()));
        assert_eq!(f.feed(b"data: [DO", false), Some(Vec::new()));
        assert_eq!(f.feed(b"NE]", true), Some(b"data: [DONE]".to_vec()));
        assert_eq!(f.usage(), Some(Tokens::new(4, 5)));
        // Events ended by lone `\r`s (cut anywhere, even between a `\r` and what follows) too.
        let cr = |event: &[u8]| [event.strip_suffix(b"\n\n").unwrap(), b"\r\r"].concat();
        let stream = [cr(CHUNK), cr(USAGE), cr(DONE)].concat();
        for cut in 0..=stream.len() {
            let mut f = UsageChunkFilter::default();
            let (a, b) = stream.split_at(cut);
            let mut out = f.feed(a, false).unwrap_or_else(|| a.to_vec());
            out.extend(f.feed(b, true).unwrap_or_else(|| b.to_vec()));
            assert_eq!(out, [cr(CHUNK), cr(DONE)].concat(), "cut at {cut}");
            assert_eq!(f.usage(), Some(Tokens::new(7, 3)), "cut at {cut}");
        }
    }

    #[test]
    fn tail_keeps_the_end_across_chunks() {
        let mut tail = Tail::default();
        tail.push(&vec![b'x'; 5000]);
        tail.push(br#"{"usage":{"prompt_tokens":1,"completion_tokens":"#);
        assert_eq!(tail.usage(), Some(Tokens::new(1, 0)));
        tail.push(b"2}}");
        assert_eq!(tail.usage(), Some(Tokens::new(1, 2)));
        assert!(tail.tail.len() <= TAIL_BYTES && tail.head.len() <= TAIL_BYTES);
    }

    #[test]
    fn native_answers_count_input_and_output_tokens() {
        let mut tail = Tail::default();
        tail.push(br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}"#);
        let read = Tokens { cached: Some(5), ..Tokens::new(15, 3) };
        assert_eq!(tail.usage(), Some(read), "Anthropic: cache reads are input too");
        let mut stream = Tail::default();
        stream.push(
            b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n",
        );
        stream.push(&vec![b' '; 3000]);
        stream.push(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(
            stream.usage(),
            Some(Tokens::new(42, 9)),
            "the input from the first event, the output from the last"
        );
        let mut responses = Tail::default();
        responses.push(br#"{"object":"response","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":4,"total_tokens":11}}"#);
        assert_eq!(responses.usage(), Some(Tokens { cached: Some(2), ..Tokens::new(7, 4) }));
    }
}
