//! Text helpers shared by request reading, answer reading and routing rules:
//! JSON string bodies read without a decoded copy, values found after a key
//! without parsing, and case-insensitive whole-word matching by word hashes.

/// The characters of a JSON string body (between the quotes), escapes decoded
/// on the fly. A malformed escape yields U+FFFD; a trailing backslash ends the text.
pub fn json_string_chars(raw: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = raw.chars();
    std::iter::from_fn(move || match chars.next()? {
        '\\' => unescape(&mut chars),
        c => Some(c),
    })
}

/// Appends `raw` (a JSON string body) decoded, as [`json_string_chars`]
/// decodes it: runs without escapes are copied whole, not char by char.
pub fn push_json_string(out: &mut String, raw: &str) {
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(rest.get(..at).unwrap_or_default());
        let mut chars = rest.get(at + 1..).unwrap_or_default().chars();
        let Some(c) = unescape(&mut chars) else { return };
        out.push(c);
        rest = chars.as_str();
    }
    out.push_str(rest);
}

/// The start of each value of `key` (a quoted key, `b"\"id\""`) in JSON
/// read as bytes, past its colon and white space. Keys are found without
/// parsing: a string value never holds a key's quotes unescaped.
pub fn values_after<'a>(json: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        let rest = json.get(from..)?;
        from += rest.windows(key.len()).position(|w| w == key)? + key.len();
        Some(value_start(json, from))
    })
}

/// [`values_after`] the last `key` only.
pub fn last_value_after<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    // Every answer's tail is read: whole keys are compared only where their first byte is.
    let first = *key.first()?;
    let at = (0..=json.len().checked_sub(key.len())?)
        .rev()
        .find(|&i| json.get(i) == Some(&first) && json.get(i..i + key.len()) == Some(key))?;
    Some(value_start(json, at + key.len()))
}

/// `json` from `from` on, past a key's colon and white space: where its value starts.
pub fn value_start(json: &[u8], from: usize) -> &[u8] {
    let rest = json.get(from..).unwrap_or_default();
    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace() || **b == b':').count();
    rest.get(skip..).unwrap_or_default()
}

/// Whether the byte at `at` is escaped: an odd run of backslashes before it.
pub fn escaped_at(bytes: &[u8], at: usize) -> bool {
    bytes.get(..at).map_or(0, |b| b.iter().rev().take_while(|&&c| c == b'\\').count()) % 2 == 1
}

/// The character an escape stands for, read from just after its backslash.
fn unescape(chars: &mut std::str::Chars<'_>) -> Option<char> {
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
}

/// Word hashing: a word's lower-cased UTF-8 bytes, eight at a time (little
/// endian; the last chunk zero-padded, word bytes are never zero), one
/// multiply per chunk. A multiply by an odd constant is a bijection, so words
/// of up to eight bytes never collide, and its top bits (the phrase filter's
/// index) depend on every byte: no final mix is needed.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const HASH_MUL: u64 = 0x517c_c1b7_2722_0a95;
/// `| LOWER` lower-cases eight ASCII letters at once and leaves digits as they are.
const LOWER: u64 = 0x2020_2020_2020_2020;

#[inline(always)]
fn mix(hash: u64, chunk: u64) -> u64 {
    (hash.rotate_left(5) ^ chunk).wrapping_mul(HASH_MUL)
}

/// The hash of the ASCII word (letters and digits only) at `text[start..end]`,
/// read a chunk at a time from the text: the same hash [`WordHasher`] gives it.
#[inline(always)]
pub(crate) fn ascii_word_hash(text: &[u8], start: usize, end: usize) -> u64 {
    let mut hash = HASH_SEED;
    let mut at = start;
    while at < end {
        let n = end - at;
        // Bytes past the word are read when the text has them, then masked off.
        let raw = match text.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
            Some(chunk) => u64::from_le_bytes(*chunk),
            None => text.get(at..end).unwrap_or_default().iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)),
        };
        let mask = if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
        hash = mix(hash, (raw | LOWER) & mask);
        at += 8;
    }
    hash
}

/// One step of reading a JSON string body: an ASCII byte (the common case,
/// handled without decoding) or a decoded character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ascii(u8),
    Char(char),
}

impl Unit {
    /// Letters and digits belong to words; everything else separates them.
    #[inline(always)]
    pub fn is_word(self) -> bool {
        match self {
            Unit::Ascii(b) => b.is_ascii_alphanumeric(),
            Unit::Char(c) => c.is_alphanumeric(),
        }
    }
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

/// Hashes lower-cased words unit by unit (letters and digits; everything else
/// separates), for text that is not plain ASCII.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WordHasher {
    hash: u64,
    /// Bytes not mixed yet (fewer than eight), little endian.
    pending: u64,
    pending_len: u32,
    in_word: bool,
}

impl WordHasher {
    pub(crate) fn new() -> Self {
        WordHasher { hash: HASH_SEED, pending: 0, pending_len: 0, in_word: false }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.pending |= u64::from(b) << (8 * self.pending_len);
        self.pending_len += 1;
        if self.pending_len == 8 {
            self.hash = mix(self.hash, self.pending);
            (self.pending, self.pending_len) = (0, 0);
        }
    }

    #[inline(always)]
    pub(crate) fn unit(&mut self, unit: Unit, word: &mut impl FnMut(u64)) {
        if word_bytes(unit, |b| self.byte(b)) {
            self.in_word = true;
        } else {
            self.end(word);
        }
    }

    /// A separator: the word so far (if any) is complete.
    #[inline(always)]
    pub(crate) fn end(&mut self, word: &mut impl FnMut(u64)) {
        if self.in_word {
            if self.pending_len > 0 {
                self.hash = mix(self.hash, self.pending);
            }
            word(self.hash);
            *self = WordHasher::new();
        }
    }
}

/// Hands `each` the lower-cased bytes `unit` adds to a word; false when it
/// separates words instead. What a word is, for texts and keywords alike.
#[inline(always)]
fn word_bytes(unit: Unit, mut each: impl FnMut(u8)) -> bool {
    match unit {
        // `| 0x20` lower-cases letters and leaves digits as they are.
        Unit::Ascii(b) if unit.is_word() => each(b | 0x20),
        Unit::Char(c) if c.is_alphanumeric() => {
            for lower in c.to_lowercase() {
                let mut buf = [0u8; 4];
                lower.encode_utf8(&mut buf).bytes().for_each(&mut each);
            }
        }
        _ => return false,
    }
    true
}

/// The word being read by someone who walks a JSON string body byte by byte
/// (the token estimate): only where it starts is kept, and it is hashed once
/// it ends, straight from the text when it is plain ASCII. The hashes equal
/// [`phrase_hashes`]'.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WordSpan {
    start: Option<usize>,
    /// No escape or non-ASCII character in the word so far.
    plain: bool,
}

impl WordSpan {
    pub(crate) fn new() -> Self {
        WordSpan { start: None, plain: true }
    }

    /// A letter or digit at byte `at`; `plain` when it is one ASCII byte.
    #[inline(always)]
    pub(crate) fn letter(&mut self, at: usize, plain: bool) {
        match self.start {
            None => (self.start, self.plain) = (Some(at), plain),
            Some(_) => self.plain &= plain,
        }
    }

    /// A separator at byte `at` of `raw` (or its end): the word so far, if any, is complete.
    #[inline(always)]
    pub(crate) fn end(&mut self, raw: &str, at: usize, scan: &mut PhraseScan<'_, '_>) {
        let Some(start) = self.start.take() else { return };
        if self.plain {
            scan.plain_word(raw.as_bytes(), start, at);
        } else {
            scan.word(decoded_word_hash(raw.get(start..at).unwrap_or_default()));
        }
    }
}

/// The hash of a word with escapes or non-ASCII letters (`raw` is all word units).
#[inline(never)]
fn decoded_word_hash(raw: &str) -> u64 {
    let mut hasher = WordHasher::new();
    for_each_unit(raw, |unit| hasher.unit(unit, &mut |_| {}));
    let mut hash = 0;
    hasher.end(&mut |h| hash = h);
    hash
}

/// The word hashes of a keyword or phrase as written (`"stack trace"` -> two hashes).
pub fn phrase_hashes(phrase: &str) -> Vec<u64> {
    phrase_words(phrase).iter().map(|word| word_hash(word)).collect()
}

/// The hash of one word's lower-cased bytes, as [`WordHasher`] gives it.
fn word_hash(word: &[u8]) -> u64 {
    let mut hasher = WordHasher::new();
    word.iter().for_each(|&b| hasher.byte(b));
    hasher.in_word = true;
    let mut hash = 0;
    hasher.end(&mut |h| hash = h);
    hash
}

/// The lower-cased UTF-8 bytes of each word (letters and digits) of a phrase.
fn phrase_words(phrase: &str) -> Vec<Vec<u8>> {
    let mut words = vec![Vec::new()];
    for c in phrase.chars() {
        let unit = if c.is_ascii() { Unit::Ascii(c as u8) } else { Unit::Char(c) };
        let Some(word) = words.last_mut() else { continue };
        if !word_bytes(unit, |b| word.push(b)) && !word.is_empty() {
            words.push(Vec::new());
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Keywords and phrases compiled for one pass over a text: each phrase is
/// a sequence of word hashes, indexed by its last word behind a bit filter so
/// most words of a text cost one bit test.
#[derive(Debug, Clone)]
pub struct PhraseSet {
    phrases: Vec<Vec<u64>>,
    /// (hash of the last word, phrase index), sorted.
    by_last: Vec<(u64, usize)>,
    filter: [u64; 16],
    /// By a phrase word's first (lower-cased ASCII) byte, its lengths as bits
    /// (bit 31: 31 bytes or more): most words of a text are ruled out by their
    /// shape before they are hashed.
    shapes: [u32; 128],
    longest: usize,
}

impl Default for PhraseSet {
    fn default() -> Self {
        PhraseSet { phrases: Vec::new(), by_last: Vec::new(), filter: [0; 16], shapes: [0; 128], longest: 0 }
    }
}

/// The bit of a word's length in [`PhraseSet`]'s `shapes`.
#[inline(always)]
fn length_bit(len: usize) -> u32 {
    1 << len.min(31)
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
            let words = phrase_words(phrase);
            for word in &words {
                if let Some(slot) = word.first().and_then(|&b| set.shapes.get_mut(usize::from(b))) {
                    *slot |= length_bit(word.len());
                }
            }
            let hashes: Vec<u64> = words.iter().map(|word| word_hash(word)).collect();
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

    /// No phrase has a word: nothing can match. (`find` lives with the word
    /// reader it shares with the token estimate, in `api::tokens`.)
    pub(crate) fn is_wordless(&self) -> bool {
        self.longest == 0
    }
}

/// A [`PhraseSet`] matching words as they come, so a caller that already walks
/// the text (the token estimate) can find the phrases in the same pass.
pub struct PhraseScan<'s, 'f> {
    set: &'s PhraseSet,
    found: &'f mut [u64],
    /// The last `set.longest` words of the current text, as a ring (on the heap
    /// only for phrases longer than eight words).
    recent: [u64; 8],
    recent_heap: Vec<u64>,
    /// Words seen in the current text.
    seen: usize,
    /// Where the next word goes in the ring (kept without a division per word).
    slot: usize,
}

impl<'s, 'f> PhraseScan<'s, 'f> {
    /// Found phrases are set as bits in `found`, as [`PhraseSet::find`] sets them.
    pub fn new(set: &'s PhraseSet, found: &'f mut [u64]) -> Self {
        let recent_heap = if set.longest > 8 { vec![0u64; set.longest] } else { Vec::new() };
        PhraseScan { set, found, recent: [0; 8], recent_heap, seen: 0, slot: 0 }
    }

    /// A new text begins: phrases do not run from one text into the next.
    pub fn start_text(&mut self) {
        self.seen = 0;
        self.slot = 0;
    }

    /// The next word of the current text, by its [`phrase_hashes`]-style hash.
    #[inline(always)]
    pub fn word(&mut self, hash: u64) {
        let longest = self.set.longest;
        if longest == 0 {
            return;
        }
        let ring: &mut [u64] = if longest > 8 { &mut self.recent_heap } else { &mut self.recent };
        if let Some(s) = ring.get_mut(self.slot) {
            *s = hash;
        }
        self.slot = if self.slot + 1 == longest { 0 } else { self.slot + 1 };
        self.seen += 1;
        let (word, bit) = filter_bit(hash);
        if self.set.filter.get(word).is_none_or(|w| w & bit == 0) {
            return;
        }
        self.matched(hash);
    }

    /// The next word of the current text, plain ASCII at `text[start..end]`:
    /// hashed only when some phrase has a word of its first letter and length.
    #[inline(always)]
    pub fn plain_word(&mut self, text: &[u8], start: usize, end: usize) {
        let first = text.get(start).map_or(0, |&b| b | 0x20);
        let shape_fits =
            self.set.shapes.get(usize::from(first)).is_some_and(|&lens| lens & length_bit(end - start) != 0);
        if !shape_fits {
            // In no phrase: no phrase runs across this word, as across texts.
            self.start_text();
            return;
        }
        self.word(ascii_word_hash(text, start, end));
    }

    /// The rare case: `hash` is the last word of some phrase.
    #[inline(never)]
    fn matched(&mut self, hash: u64) {
        let (set, seen, longest) = (self.set, self.seen, self.set.longest);
        let ring: &[u64] = if longest > 8 { &self.recent_heap } else { &self.recent };
        let from = set.by_last.partition_point(|(h, _)| *h < hash);
        for &(_, i) in set.by_last.get(from..).unwrap_or_default().iter().take_while(|(h, _)| *h == hash) {
            let Some(phrase) = set.phrases.get(i) else { continue };
            let n = phrase.len();
            if n > seen {
                continue;
            }
            let matches = phrase.iter().enumerate().all(|(k, h)| ring.get((seen - n + k) % longest) == Some(h));
            if matches {
                if let Some(bits) = self.found.get_mut(i / 64) {
                    *bits |= 1u64 << (i % 64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn values_are_found_after_their_keys() {
        let json = br#"{"id": "a", "n":{"id" :12}, "s":"say \"id\": 3"}"#;
        let values: Vec<&[u8]> = values_after(json, br#""id""#).map(|v| &v[..3]).collect();
        assert_eq!(values, vec![&b"\"a\""[..], b"12}"]);
        assert_eq!(last_value_after(json, br#""id""#).map(|v| &v[..2]), Some(&b"12"[..]));
        assert_eq!(last_value_after(json, br#""none""#), None);
    }

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
    fn words_of_other_shapes_break_phrases_and_long_or_mixed_words_still_match() {
        let p = ["status update", "Kw12", "x", "internationalization-ready software"];
        assert_eq!(found("a STATUS update", &p), vec![true, false, false, false]);
        assert_eq!(found("status, an update", &p), vec![false, false, false, false]);
        assert_eq!(found("see KW12 and X", &p), vec![false, true, true, false]);
        let long = "InternationalizationReadySoftwareComponents internationalization ready software";
        assert_eq!(found(long, &p), vec![false, false, false, true]);
        let word = "pneumonoultramicroscopicsilicovolcanoconiosis";
        assert_eq!(found(&format!("has {} here", word.to_uppercase()), &[word, &word[..40]]), vec![true, false]);
        assert_eq!(found("caf\\u00e9 \\u0058", &["CAFÉ", "x"]), vec![true, true], "escaped words are decoded");
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
    fn pushed_json_strings_match_the_char_reader() {
        for raw in [
            r#"plain ascii"#,
            r#"caf\u00e9 \"q\" \\ x\ny"#,
            "ünï ✓ 你好\\n",
            "trailing\\",
            "\\u12",
            "\\u12é!",
            r#"\ud83d\ude00 \x"#,
        ] {
            let mut got = String::from(">");
            push_json_string(&mut got, raw);
            assert_eq!(got, format!(">{}", json_string_chars(raw).collect::<String>()), "{raw}");
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
}
