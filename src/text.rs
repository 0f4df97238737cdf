//! Text helpers shared by request reading and routing rules (no dependencies):
//! JSON string bodies read without a decoded copy, and case-insensitive
//! whole-word matching by word hashes.

/// The characters of a JSON string body (between the quotes), escapes decoded
/// on the fly. A malformed escape yields U+FFFD; a trailing backslash ends the text.
pub fn json_string_chars(raw: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = raw.chars();
    std::iter::from_fn(move || {
        let c = chars.next()?;
        if c != '\\' {
            return Some(c);
        }
        Some(match chars.next()? {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'b' | 'f' => ' ',
            'u' => {
                let mut code = 0u32;
                for _ in 0..4 {
                    code = code * 16 + chars.next().and_then(|h| h.to_digit(16)).unwrap_or(0xf);
                }
                char::from_u32(code).unwrap_or('\u{fffd}')
            }
            other => other,
        })
    })
}

/// Word hashing: a polynomial hash per byte (shift and subtract, cheap on
/// every target), mixed once per word.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn finish(hash: u64) -> u64 {
    let h = (hash ^ (hash >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// One step of reading a JSON string body: an ASCII byte (the common case,
/// handled without decoding) or a decoded character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ascii(u8),
    Char(char),
}

/// Calls `each` for every unit of a JSON string body; escapes are decoded,
/// plain ASCII passes as bytes. The same characters as [`json_string_chars`].
#[inline(always)]
pub fn for_each_unit(raw: &str, mut each: impl FnMut(Unit)) {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b < 0x80 && b != b'\\' {
            each(Unit::Ascii(b));
            i += 1;
            continue;
        }
        // Rare: an escape or a multi-byte character; decode it with the char reader.
        let rest = raw.get(i..).unwrap_or_default();
        let mut chars = json_string_chars(rest);
        let Some(c) = chars.next() else { break };
        let used = rest.len() - chars_rest_len(rest, c);
        match u8::try_from(c) {
            Ok(ascii) if ascii < 0x80 => each(Unit::Ascii(ascii)),
            _ => each(Unit::Char(c)),
        }
        i += used.max(1);
    }
}

/// Reads the first unit of `rest` (a JSON string body), adding the bytes it used to `used`.
pub fn for_first_unit(rest: &str, used: &mut usize, each: impl FnOnce(Unit)) {
    let mut chars = json_string_chars(rest);
    let Some(c) = chars.next() else {
        *used += rest.len();
        return;
    };
    *used += rest.len() - chars_rest_len(rest, c);
    match u8::try_from(c) {
        Ok(ascii) if ascii < 0x80 => each(Unit::Ascii(ascii)),
        _ => each(Unit::Char(c)),
    }
}

/// Bytes left after reading one unit starting with `c` from `rest`.
fn chars_rest_len(rest: &str, c: char) -> usize {
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'\\') {
        return rest.len() - c.len_utf8();
    }
    let escape_len = if bytes.get(1) == Some(&b'u') { 6 } else { 2 };
    rest.len().saturating_sub(escape_len.min(bytes.len()))
}

/// Hashes lower-cased words (letters and digits; everything else separates).
#[derive(Debug, Clone, Copy)]
struct WordHasher {
    hash: u64,
    in_word: bool,
}

impl WordHasher {
    fn new() -> Self {
        WordHasher { hash: HASH_SEED, in_word: false }
    }

    #[inline(always)]
    fn mix(&mut self, b: u8) {
        self.hash = (self.hash << 5).wrapping_sub(self.hash).wrapping_add(u64::from(b));
    }

    #[inline(always)]
    fn unit(&mut self, unit: Unit, word: &mut impl FnMut(u64)) {
        match unit {
            Unit::Ascii(b) if b.is_ascii_alphanumeric() => {
                self.in_word = true;
                self.mix(b.to_ascii_lowercase());
            }
            Unit::Char(c) if c.is_alphanumeric() => {
                self.in_word = true;
                for lower in c.to_lowercase() {
                    let mut buf = [0u8; 4];
                    for b in lower.encode_utf8(&mut buf).bytes() {
                        self.mix(b);
                    }
                }
            }
            _ => self.end(word),
        }
    }

    #[inline(always)]
    fn end(&mut self, word: &mut impl FnMut(u64)) {
        if self.in_word {
            word(finish(self.hash));
            self.hash = HASH_SEED;
            self.in_word = false;
        }
    }
}

/// Calls `word` with the hash of each lower-cased word of a JSON string body, in order.
pub fn for_each_word_hash(raw: &str, mut word: impl FnMut(u64)) {
    let bytes = raw.as_bytes();
    let mut hasher = WordHasher::new();
    let mut rest = bytes.iter();
    while let Some(&b) = rest.next() {
        if b < 0x80 && b != b'\\' {
            // Plain ASCII, the common case: no decoding.
            if b.is_ascii_alphanumeric() {
                hasher.in_word = true;
                hasher.mix(b | if b.is_ascii_uppercase() { 0x20 } else { 0 });
            } else {
                hasher.end(&mut word);
            }
            continue;
        }
        let at = bytes.len() - rest.as_slice().len() - 1;
        let mut used = 0;
        for_first_unit(raw.get(at..).unwrap_or_default(), &mut used, |u| hasher.unit(u, &mut word));
        rest = bytes.get(at + used.max(1)..).unwrap_or_default().iter();
    }
    hasher.end(&mut word);
}

/// The word hashes of a keyword or phrase as written (`"stack trace"` -> two hashes).
pub fn phrase_hashes(phrase: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut push = |h| out.push(h);
    let mut hasher = WordHasher::new();
    for c in phrase.chars() {
        let unit = if c.is_ascii() { Unit::Ascii(c as u8) } else { Unit::Char(c) };
        hasher.unit(unit, &mut push);
    }
    hasher.end(&mut push);
    out
}

/// Keywords and phrases compiled for one pass over a text: each phrase is
/// a sequence of word hashes, indexed by its last word behind a bit filter so
/// most words of a text cost one bit test.
#[derive(Debug, Clone, Default)]
pub struct PhraseSet {
    phrases: Vec<Vec<u64>>,
    /// (hash of the last word, phrase index), sorted.
    by_last: Vec<(u64, usize)>,
    filter: [u64; 16],
    longest: usize,
}

fn filter_bit(hash: u64) -> (usize, u64) {
    let bit = (hash >> 54) as usize; // 0..1024
    (bit / 64, 1u64 << (bit % 64))
}

impl PhraseSet {
    /// Phrases without any word never match.
    pub fn new<'p>(phrases: impl IntoIterator<Item = &'p str>) -> PhraseSet {
        let mut set = PhraseSet::default();
        for (i, phrase) in phrases.into_iter().enumerate() {
            let hashes = phrase_hashes(phrase);
            if let Some(&last) = hashes.last() {
                set.by_last.push((last, i));
                let (word, bit) = filter_bit(last);
                if let Some(w) = set.filter.get_mut(word) {
                    *w |= bit;
                }
            }
            set.longest = set.longest.max(hashes.len());
            set.phrases.push(hashes);
        }
        set.by_last.sort_unstable();
        set
    }

    pub fn len(&self) -> usize {
        self.phrases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// Which phrases occur as whole words in the texts (JSON string bodies), as
    /// bits: bit `i % 64` of `found[i / 64]`, with `found` at least `len().div_ceil(64)` long.
    /// Phrases match consecutive words whatever separates them.
    pub fn find<'t>(&self, texts: impl Iterator<Item = &'t str>, found: &mut [u64]) {
        let longest = self.longest;
        if longest == 0 {
            return;
        }
        // The last `longest` words, as a ring.
        let mut recent = [0u64; 8];
        let mut recent_heap = if longest > recent.len() { vec![0u64; longest] } else { Vec::new() };
        let ring: &mut [u64] =
            if longest > 8 { &mut recent_heap } else { recent.get_mut(..longest).unwrap_or_default() };
        for text in texts {
            let mut seen = 0usize;
            // Where the next word goes in the ring (kept without a division per word).
            let mut slot = 0usize;
            for_each_word_hash(text, |hash| {
                if let Some(s) = ring.get_mut(slot) {
                    *s = hash;
                }
                slot = if slot + 1 == longest { 0 } else { slot + 1 };
                seen += 1;
                let (word, bit) = filter_bit(hash);
                if self.filter.get(word).is_none_or(|w| w & bit == 0) {
                    return;
                }
                let from = self.by_last.partition_point(|(h, _)| *h < hash);
                for &(_, i) in self.by_last.get(from..).unwrap_or_default().iter().take_while(|(h, _)| *h == hash) {
                    let Some(phrase) = self.phrases.get(i) else { continue };
                    let n = phrase.len();
                    if n > seen {
                        continue;
                    }
                    let matches = phrase.iter().enumerate().all(|(k, h)| ring.get((seen - n + k) % longest) == Some(h));
                    if matches {
                        if let Some(bits) = found.get_mut(i / 64) {
                            *bits |= 1u64 << (i % 64);
                        }
                    }
                }
            });
        }
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` on any other character.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn found(text: &str, phrases: &[&str]) -> Vec<bool> {
        let set = PhraseSet::new(phrases.iter().copied());
        let mut bits = vec![0u64; set.len().div_ceil(64)];
        set.find(std::iter::once(text), &mut bits);
        (0..phrases.len()).map(|i| bits[i / 64] & (1 << (i % 64)) != 0).collect()
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        assert_eq!(found("Write some PYTHON, please", &["python", "sql"]), vec![true, false]);
        assert_eq!(found("pythonic code", &["python"]), vec![false], "not inside a longer word");
        assert_eq!(found("SQL", &["sql"]), vec![true]);
        assert_eq!(found("Ünïcode ÉTÉ", &["été"]), vec![true]);
    }

    #[test]
    fn phrases_match_consecutive_words() {
        let p = ["stack trace", "trace"];
        assert_eq!(found("here is the Stack\\n  Trace:", &p), vec![true, true]);
        assert_eq!(found("stack of trace", &p), vec![false, true]);
        assert_eq!(found("a stack", &p), vec![false, false]);
    }

    #[test]
    fn units_match_the_char_reader() {
        for raw in [r#"plain ascii"#, r#"caf\u00e9 \"q\" \\ x\ny"#, "ünï ✓ 你好", "trailing\\", "\\u12"] {
            let mut got = String::new();
            for_each_unit(raw, |u| match u {
                Unit::Ascii(b) => got.push(b as char),
                Unit::Char(c) => got.push(c),
            });
            assert_eq!(got, json_string_chars(raw).collect::<String>(), "{raw}");
        }
    }

    #[test]
    fn escapes_in_json_strings_are_decoded() {
        assert_eq!(found("caf\\u00e9 time", &["café"]), vec![true]);
        let chars: String = json_string_chars(r#"a\"b\\c\n\u0041\x"#).collect();
        assert_eq!(chars, "a\"b\\c\nAx");
        let truncated: String = json_string_chars("ab\\").collect();
        assert_eq!(truncated, "ab");
    }

    #[test]
    fn phrases_longer_than_the_inline_ring_work() {
        let long = "one two three four five six seven eight nine ten";
        assert_eq!(found(&format!("say {long} now"), &[long, "nine"]), vec![true, true]);
        assert_eq!(found("one two three", &[long]), vec![false]);
        assert_eq!(found("anything", &["...", ""]), vec![false, false], "phrases without words never match");
    }

    #[test]
    fn many_phrases_use_several_words_of_bits() {
        let phrases: Vec<String> = (0..70).map(|i| format!("kw{i}")).collect();
        let refs: Vec<&str> = phrases.iter().map(String::as_str).collect();
        let got = found("kw3 and kw69", &refs);
        assert!(got[3] && got[69]);
        assert_eq!(got.iter().filter(|b| **b).count(), 2);
    }

    #[test]
    fn base64_decodes_with_or_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("AAEC\n/w==").as_deref(), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(base64_decode("a$"), None);
    }
}
