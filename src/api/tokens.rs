//! A fast token estimate for routing decisions (context fit, size rules,
//! expected cost), without a BPE vocabulary in the filter.
//!
//! Text is split into runs by character class the way GPT-style BPE
//! pre-tokenizers split it (letters, digits, punctuation, spaces, newlines,
//! CJK), and each run is charged what those tokenizers typically spend on it.
//! The constants are fitted against `cl100k_base`/`o200k_base` on English
//! prose and source code (see the `estimate_accuracy` test and docs/configuration.md).
//!
//! Input is the body of a JSON string as it appears on the wire: escapes
//! (`\n`, `\"`, `\u00e9`) count as the character they stand for, so no
//! decoded copy is made.

use crate::text::{for_first_unit, PhraseScan, PhraseSet, Unit, WordSpan};

impl PhraseSet {
    /// Which phrases occur as whole words in the texts (JSON string bodies), as
    /// bits: bit `i % 64` of `found[i / 64]`, with `found` at least `len().div_ceil(64)` long.
    /// Phrases match consecutive words whatever separates them. Here rather than
    /// in `text`: words are split where the token estimate splits runs, one word
    /// reader for both, and `text` stays below the estimate.
    pub fn find<'t>(&self, texts: impl Iterator<Item = &'t str>, found: &mut [u64]) {
        if self.is_wordless() {
            return;
        }
        let mut scan = PhraseScan::new(self, found);
        let mut counter = TokenCounter::new();
        for text in texts {
            counter.add_json_string_scanning(text, &mut scan);
        }
    }
}

/// Tokens charged per image part, whatever its size: a 512x512 tile at OpenAI's
/// high detail (85 base + 170 per tile); larger images cost more upstream.
pub const IMAGE_TOKENS: u32 = 255;
/// Framing tokens per chat message (role, separators), as in OpenAI's counting guide.
pub const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Class {
    /// Start of a piece: no run yet.
    Nothing,
    Letter,
    Upper,
    Digit,
    Space,
    Newline,
    Punct,
    Wide,
}

impl Class {
    /// Letters and digits: what keyword matching counts as word characters.
    #[inline(always)]
    fn is_alphanumeric(self) -> bool {
        matches!(self, Class::Letter | Class::Upper | Class::Digit)
    }
}

const fn ascii_class(b: u8) -> Class {
    match b {
        b'a'..=b'z' => Class::Letter,
        b'A'..=b'Z' => Class::Upper,
        b'0'..=b'9' => Class::Digit,
        b' ' | b'\t' => Class::Space,
        b'\n' | b'\r' => Class::Newline,
        _ => Class::Punct,
    }
}

/// Byte classes for plain text and for JSON string bodies (where `\\` starts
/// an escape): `None` for bytes that need decoding, so the common case is
/// one table read per byte.
#[allow(clippy::indexing_slicing)] // compile time: an out-of-range index fails the build
const fn byte_classes(json: bool) -> [Option<Class>; 256] {
    let mut table = [None; 256];
    let mut b = 0u8;
    while b < 128 {
        table[b as usize] = Some(ascii_class(b));
        b += 1;
    }
    if json {
        table[b'\\' as usize] = None;
    }
    table
}

const TEXT_CLASSES: [Option<Class>; 256] = byte_classes(false);
const JSON_CLASSES: [Option<Class>; 256] = byte_classes(true);

fn char_class(c: char) -> Class {
    match c {
        // CJK, kana, hangul: about a token per character in BPE vocabularies.
        '\u{1100}'..='\u{11ff}' | '\u{2e80}'..='\u{9fff}' | '\u{ac00}'..='\u{d7af}' | '\u{f900}'..='\u{faff}' => {
            Class::Wide
        }
        c if c.is_alphabetic() => Class::Letter,
        c if c.is_whitespace() => Class::Space,
        _ => Class::Punct,
    }
}

/// Who hears the words of the text being counted, by where runs start.
trait Words {
    /// A letter or digit at byte `at`; `plain` when it is one ASCII byte.
    fn letter(&mut self, at: usize, plain: bool);
    /// A separator at byte `at` of `text`, or its end.
    fn separator(&mut self, text: &str, at: usize);
}

/// Nobody: the plain estimate, where all of this compiles away.
struct NoWords;

impl Words for NoWords {
    #[inline(always)]
    fn letter(&mut self, _: usize, _: bool) {}
    #[inline(always)]
    fn separator(&mut self, _: &str, _: usize) {}
}

/// A router's keywords, matched in the same pass.
struct Scanning<'a, 's, 'f> {
    span: WordSpan,
    scan: &'a mut PhraseScan<'s, 'f>,
}

impl Words for Scanning<'_, '_, '_> {
    #[inline(always)]
    fn letter(&mut self, at: usize, plain: bool) {
        self.span.letter(at, plain);
    }
    #[inline(always)]
    fn separator(&mut self, text: &str, at: usize) {
        self.span.end(text, at, self.scan);
    }
}

/// Running estimate over one or more pieces of text.
#[derive(Debug, Clone, Copy)]
pub struct TokenCounter {
    /// Tokens in hundredths, so fractional charges add up without float math.
    centi: u64,
    prev: Class,
    run: u32,
    /// Non-ASCII letters in the current word (they cost more than ASCII ones).
    run_wide: u32,
    /// The run before the current one was a line break (indentation follows).
    after_newline: bool,
}

impl Default for TokenCounter {
    fn default() -> Self {
        TokenCounter { centi: 0, prev: Class::Nothing, run: 0, run_wide: 0, after_newline: false }
    }
}

impl TokenCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The estimate so far, rounded up.
    pub fn tokens(&self) -> u32 {
        let total = self.centi + self.pending();
        u32::try_from(total.div_ceil(100)).unwrap_or(u32::MAX)
    }

    /// Adds a plain string.
    pub fn add_text(&mut self, text: &str) {
        self.add(text, false, &mut NoWords);
    }

    /// Adds the body of a JSON string literal (between the quotes, escapes included).
    pub fn add_json_string(&mut self, raw: &str) {
        self.add(raw, true, &mut NoWords);
    }

    /// [`TokenCounter::add_json_string`] that also feeds the text's words to
    /// `scan` (as one text), so routing rules' keywords cost no second pass.
    pub fn add_json_string_scanning(&mut self, raw: &str, scan: &mut PhraseScan<'_, '_>) {
        scan.start_text();
        self.add(raw, true, &mut Scanning { span: WordSpan::new(), scan });
    }

    /// ASCII bytes are classified by table in one tight loop; escapes (when
    /// `json`) and multi-byte characters go one unit at a time. `words` hears
    /// where runs start (letters and digits, or separators).
    #[inline]
    fn add(&mut self, text: &str, json: bool, words: &mut impl Words) {
        let bytes = text.as_bytes();
        let classes = if json { &JSON_CLASSES } else { &TEXT_CLASSES };
        let mut rest = bytes.iter();
        // The current run in locals: the loop touches memory only where a run ends.
        let (mut prev, mut run) = (self.prev, self.run);
        while let Some(&b) = rest.next() {
            if let Some(class) = classes.get(usize::from(b)).copied().flatten() {
                if class as u8 == prev as u8 {
                    run += 1;
                    continue;
                }
                (self.prev, self.run) = (prev, run);
                let at = bytes.len() - rest.as_slice().len() - 1;
                if b == b' ' && prev == Class::Letter && rest.as_slice().first().is_some_and(u8::is_ascii_lowercase) {
                    // "word word", the commonest step: one space before a word is free, so
                    // both runs' steps are taken at once (the same state `push_run` leaves).
                    self.flush();
                    words.separator(text, at);
                    words.letter(at + 1, true);
                    rest.next();
                    (self.after_newline, self.run_wide) = (false, 0);
                    (prev, run) = (Class::Letter, 1);
                    continue;
                }
                if class.is_alphanumeric() {
                    words.letter(at, true);
                } else {
                    words.separator(text, at);
                }
                self.push_run(class, 1, 0);
                (prev, run) = (self.prev, self.run);
                continue;
            }
            (self.prev, self.run) = (prev, run);
            let at = bytes.len() - rest.as_slice().len() - 1;
            let tail = text.get(at..).unwrap_or_default();
            let mut used = 0;
            let mut unit = |unit: Unit, counter: &mut TokenCounter| {
                if unit.is_word() {
                    words.letter(at, false);
                } else {
                    words.separator(text, at);
                }
                match unit {
                    Unit::Ascii(b) => counter.push_run(ascii_class(b), 1, 0),
                    Unit::Char(c) => counter.push_char(c),
                }
            };
            if json {
                for_first_unit(tail, &mut used, |u| unit(u, self));
            } else if let Some(c) = tail.chars().next() {
                used = c.len_utf8();
                unit(Unit::Char(c), self);
            }
            rest = bytes.get(at + used.max(1)..).unwrap_or_default().iter();
            (prev, run) = (self.prev, self.run);
        }
        words.separator(text, bytes.len());
        (self.prev, self.run) = (prev, run);
        self.end_piece();
    }

    /// Adds a fixed number of tokens (images, message framing).
    pub fn add_tokens(&mut self, tokens: u32) {
        self.centi += u64::from(tokens) * 100;
    }

    fn push_char(&mut self, c: char) {
        let class = char_class(c);
        self.push_run(class, 1, u32::from(class == Class::Letter));
    }

    /// Adds `n` characters of one class, `wide` of them non-ASCII letters.
    #[inline(always)]
    fn push_run(&mut self, class: Class, n: u32, wide: u32) {
        // A single space before a word is free (it is part of the word's token): no flush.
        if self.prev == Class::Space && self.run == 1 && matches!(class, Class::Letter | Class::Upper) {
            self.after_newline = false;
            self.prev = class;
            self.run = n;
            self.run_wide = wide;
            return;
        }
        // `Word`, `camelCase`: a capital starts a word, lower-case letters continue it.
        if class == self.prev || (class == Class::Letter && self.prev == Class::Upper) {
            self.run += n;
        } else {
            self.flush();
            self.after_newline = self.prev == Class::Newline;
            self.prev = class;
            self.run = n;
            self.run_wide = 0;
        }
        self.run_wide += wide;
        // Capitals then lower case (`HTTPServer`, `Word`) are one word; the next capital starts another.
        if class == Class::Letter {
            self.prev = Class::Letter;
        }
    }

    fn end_piece(&mut self) {
        self.flush();
        self.prev = Class::Nothing;
        self.run = 0;
        self.run_wide = 0;
        self.after_newline = false;
    }

    #[inline(always)]
    fn flush(&mut self) {
        self.centi += self.pending();
        self.run = 0;
    }

    /// Cost of the current run in hundredths of a token.
    #[inline(always)]
    fn pending(&self) -> u64 {
        let n = u64::from(self.run);
        if n == 0 {
            return 0;
        }
        let wide = u64::from(self.run_wide);
        match self.prev {
            // Common words are one token; long or rare ones split every few letters.
            Class::Letter | Class::Upper => {
                let ascii = n - wide;
                100 + ascii.saturating_sub(6) * 100 / 4 + wide * 60
            }
            // Numbers are split into groups of up to three digits.
            Class::Digit => n.div_ceil(3) * 100,
            // A single space merges into the next word; longer runs (indentation) are about one token,
            // and indentation after a line break mostly merges with it.
            Class::Space => match (n, self.after_newline) {
                (1, _) => 0,
                (_, true) => 20,
                _ => 100,
            },
            Class::Newline => 90,
            // Punctuation pairs often merge (`);`, `()`, `",`).
            Class::Punct => 60 + (n - 1) * 35,
            Class::Wide => n * 115,
            Class::Nothing => 0,
        }
    }
}

/// Estimated tokens of a plain string.
pub fn estimate(text: &str) -> u32 {
    let mut counter = TokenCounter::new();
    counter.add_text(text);
    counter.tokens()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn short_english_counts_about_a_token_per_word() {
        assert_eq!(estimate("Hello world"), 2);
        let n = estimate("The quick brown fox jumps over the lazy dog.");
        assert!((9..=11).contains(&n), "{n}");
    }

    #[test]
    fn json_escapes_count_as_the_character_they_stand_for() {
        let mut escaped = TokenCounter::new();
        escaped.add_json_string(r#"line one\nline \"two\" caf\u00e9"#);
        assert_eq!(escaped.tokens(), estimate("line one\nline \"two\" café"));
    }

    #[test]
    fn numbers_split_in_groups_of_three() {
        assert_eq!(estimate("123456789"), 3);
        assert_eq!(estimate("1"), 1);
    }

    #[test]
    fn cjk_costs_about_a_token_per_character() {
        let n = estimate("你好世界你好世界你好");
        assert!((10..=13).contains(&n), "{n}");
    }

    #[test]
    fn fixed_costs_add_up() {
        let mut c = TokenCounter::new();
        c.add_tokens(IMAGE_TOKENS);
        c.add_tokens(MESSAGE_OVERHEAD_TOKENS);
        assert_eq!(c.tokens(), IMAGE_TOKENS + MESSAGE_OVERHEAD_TOKENS);
        assert_eq!(TokenCounter::new().tokens(), 0);
    }

    /// The estimate one character at a time through `push_run`, without the loop's shortcuts.
    fn estimate_char_by_char(text: &str) -> u32 {
        let mut c = TokenCounter::new();
        for ch in text.chars() {
            match u8::try_from(ch) {
                Ok(b) if b < 0x80 => c.push_run(ascii_class(b), 1, 0),
                _ => c.push_char(ch),
            }
        }
        c.end_piece();
        c.tokens()
    }

    #[test]
    fn the_fast_loop_charges_what_push_run_charges() {
        let mut texts: Vec<String> =
            ["a b", "a  b", "word word", "word Word", "x y z ", " a", "a\t b", "é a ü b", "HTTPServer ok"]
                .iter()
                .map(|t| t.to_string())
                .collect();
        texts.push(include_str!("../../tests/fixtures/prose.txt").to_string());
        texts.push(include_str!("../routing/health.rs").to_string());
        for text in &texts {
            assert_eq!(estimate(text), estimate_char_by_char(text), "{text:?}");
        }
    }

    #[test]
    fn a_truncated_escape_does_not_panic() {
        let mut c = TokenCounter::new();
        c.add_json_string("abc\\");
        c.add_json_string("\\u12");
        assert!(c.tokens() >= 1);
    }
}

/// Accuracy against real BPE tokenizers, on English prose and on code from this repository.
#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used)]
mod accuracy {
    use super::estimate;

    fn samples(text: &str, size: usize) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = text;
        while rest.len() > size {
            let mut cut = size;
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            out.push(chunk);
            rest = tail;
        }
        out
    }

    /// (mean absolute relative error, worst relative error, total relative error) per tokenizer.
    pub(crate) fn measure(text: &str) -> Vec<(&'static str, f64, f64, f64)> {
        let bpe =
            [("cl100k_base", tiktoken_rs::cl100k_base().unwrap()), ("o200k_base", tiktoken_rs::o200k_base().unwrap())];
        let chunks = samples(text, 2_000);
        bpe.iter()
            .map(|(name, bpe)| {
                let (mut sum_err, mut worst, mut est_total, mut real_total) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                for chunk in &chunks {
                    let real = bpe.encode_ordinary(chunk).len() as f64;
                    let est = f64::from(estimate(chunk));
                    let err = (est - real) / real;
                    sum_err += err.abs();
                    if err.abs() > worst.abs() {
                        worst = err;
                    }
                    est_total += est;
                    real_total += real;
                }
                (*name, sum_err / chunks.len() as f64, worst, (est_total - real_total) / real_total)
            })
            .collect()
    }

    pub(crate) fn prose() -> String {
        let mut text = String::new();
        // The README's prose, split into docs/ by topic, kept whole as the sample.
        for doc in [
            include_str!("../../README.md"),
            include_str!("../../docs/configuration.md"),
            include_str!("../../docs/failover-and-streams.md"),
            include_str!("../../docs/front-doors.md"),
            include_str!("../../docs/tenants.md"),
            include_str!("../../docs/learned-router.md"),
            include_str!("../../docs/envoy.md"),
            include_str!("../../docs/observability.md"),
            include_str!("../../examples/real-providers/README.md"),
        ] {
            // Paragraphs of running text only: no tables, code blocks or headings.
            let mut in_code = false;
            for line in doc.lines() {
                if line.starts_with("```") {
                    in_code = !in_code;
                    continue;
                }
                if in_code || line.starts_with('|') || line.starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(include_str!("../../tests/fixtures/prose.txt"));
        text
    }

    pub(crate) fn code() -> String {
        [
            include_str!("../routing/health.rs"),
            include_str!("../config/raw.rs"),
            include_str!("../providers/gemini.rs"),
            include_str!("../../tests/integration/harness.py"),
            include_str!("../../envoy/render.py"),
        ]
        .concat()
    }

    #[test]
    fn estimate_is_within_15_percent_on_prose_and_code() {
        for (kind, text) in [("prose", prose()), ("code", code())] {
            for (tokenizer, mean, worst, total) in measure(&text) {
                println!(
                    "{kind:5} vs {tokenizer}: mean |error| {:.1}%, worst chunk {:+.1}%, total {:+.1}%",
                    mean * 100.0,
                    worst * 100.0,
                    total * 100.0
                );
                assert!(mean < 0.15, "{kind} vs {tokenizer}: mean error {mean:.3}");
                assert!(total.abs() < 0.15, "{kind} vs {tokenizer}: total error {total:.3}");
            }
        }
    }
}
