//! Prompt features, byte for byte the definition in `router/features.py` (the
//! reference; its module docstring is the specification). One streaming pass
//! over at most [`SCAN_LIMIT`] bytes, no allocation: hashed n-grams are handed
//! to a visitor as they are found, counts come back in [`Counts`].

/// Bytes of a prompt that are looked at (its length is counted in full).
pub const SCAN_LIMIT: usize = 16384;
/// Bytes of a word that count; the rest of a longer word is skipped.
pub const MAX_WORD: usize = 32;
/// Number of dense features (see [`dense_features`]).
pub const N_DENSE: usize = 15;
/// Hashed groups: word unigrams, word bigrams, char 4-grams of the normalised stream.
pub const N_GROUPS: usize = 3;
/// Coarse prompt kinds of the feedback correction: see [`bucket_from`].
pub const N_BUCKETS: usize = 6;
pub const BUCKET_NAMES: [&str; N_BUCKETS] = ["code", "math", "choice", "short", "medium", "long"];

const FNV_OFFSET: u32 = 0x811C_9DC5;
const FNV_PRIME: u32 = 0x0100_0193;
const NS_WORD: u8 = 1;
const BIGRAM_MUL: u32 = 0x9E37_79B1;
const WH_WORDS: [&[u8]; 9] = [b"what", b"which", b"who", b"whom", b"whose", b"when", b"where", b"why", b"how"];
/// Bytes of the first word kept to recognise wh-words (the longest has five).
const HEAD: usize = 5;

/// Up to [`HEAD`] bytes as a little-endian integer: the first word is compared
/// as a number, so the scanner's state has no array and stays in registers.
#[allow(clippy::indexing_slicing)] // compile time: a bad index fails the build
const fn packed(word: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = word.len();
    while i > 0 {
        i -= 1;
        v = (v << 8) | word[i] as u64;
    }
    v
}

#[allow(clippy::indexing_slicing)] // compile time: a bad index fails the build
const WH_PACKED: [(u64, usize); 9] = {
    let mut out = [(0u64, 0usize); 9];
    let mut i = 0;
    while i < 9 {
        out[i] = (packed(WH_WORDS[i]), WH_WORDS[i].len());
        i += 1;
    }
    out
};

#[inline(always)]
fn step(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
}

/// MurmurHash3's finaliser: spreads a word hash or a 4-byte window over all bits.
#[inline(always)]
pub(crate) fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// Integer counts over the scanned bytes (names as in the Python `Counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub n_bytes: usize,
    pub scanned: usize,
    pub words: u32,
    pub newlines: u32,
    pub digits: u32,
    pub numbers: u32,
    pub math: u32,
    pub code: u32,
    pub questions: u32,
    pub ends_q: bool,
    pub starts_wh: bool,
    pub options: u32,
    pub upper: u32,
    pub letters: u32,
    pub non_ascii: u32,
    pub word_bytes: u32,
    pub long_words: u32,
    /// Hashed items handed to the visitor, per group (not a Python feature:
    /// they follow from the words and the stream's length, so the loop does not count them).
    pub items: [u32; N_GROUPS],
}

// Byte classes, one table lookup per byte.
const WORD: u8 = 1;
const DIGIT: u8 = 2;
const UPPER: u8 = 4;
const LOWER: u8 = 8;
const MATH: u8 = 16;
const CODE: u8 = 32;
const HIGH: u8 = 64;
const SPACE: u8 = 128;

// Evaluated at compile time only (for `CLASS`): a bad index would fail the build.
#[allow(clippy::indexing_slicing)]
const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b >= 0x80 {
            c |= WORD | HIGH;
        }
        if b.is_ascii_digit() {
            c |= WORD | DIGIT;
        }
        if b.is_ascii_uppercase() {
            c |= WORD | UPPER;
        }
        if b.is_ascii_lowercase() {
            c |= WORD | LOWER;
        }
        if matches!(b, b'=' | b'+' | b'*' | b'/' | b'^' | b'<' | b'>' | b'|' | b'\\' | b'$') {
            c |= MATH;
        }
        if matches!(b, b'{' | b'}' | b'[' | b']' | b';' | b'`' | b'#') {
            c |= CODE;
        }
        if matches!(b, b' ' | b'\t') {
            c |= SPACE;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

const fn one(on: bool, lane: u32) -> u64 {
    if on {
        1 << (16 * lane)
    } else {
        0
    }
}

/// Per byte, counts to add in four 16-bit lanes (the scan limit keeps each below 2^16):
/// for word bytes (digit, upper, letter, non-ASCII), for the others (math, code, '?', newline).
#[allow(clippy::indexing_slicing)]
const fn tallies() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let c = classes()[i];
        t[i] = if c & WORD != 0 {
            one(c & DIGIT != 0, 0) | one(c & UPPER != 0, 1) | one(c & (UPPER | LOWER) != 0, 2) | one(c & HIGH != 0, 3)
        } else {
            one(c & MATH != 0, 0) | one(c & CODE != 0, 1) | one(i == b'?' as usize, 2) | one(i == b'\n' as usize, 3)
        };
        i += 1;
    }
    t
}

static TALLY: [u64; 256] = tallies();

fn lane(packed: u64, k: u32) -> u32 {
    ((packed >> (16 * k)) & 0xFFFF) as u32
}

/// Who hears the hashed items of [`scan`].
pub trait Visit {
    /// One hashed item of `group` (0 unigrams, 1 bigrams, 2 char 4-grams).
    fn item(&mut self, group: usize, hash: u32);
}

impl<F: FnMut(usize, u32)> Visit for F {
    #[inline(always)]
    fn item(&mut self, group: usize, hash: u32) {
        self(group, hash)
    }
}

/// The streaming state of [`scan`].
struct Scanner<V: Visit> {
    visit: V,
    c: Counts,
    /// Last 4 bytes of the normalised stream `" " + " ".join(words) + " "`, oldest highest.
    window: u32,
    stream_len: usize,
    in_word: bool,
    word_len: usize,
    /// FNV-1a of `ns 1 + word` so far.
    uni: u32,
    /// The previous word's `uni`, when there was one.
    prev_uni: Option<u32>,
    /// The first [`HEAD`] kept bytes of the first word, [`packed`].
    head: u64,
}

impl<V: Visit> Scanner<V> {
    #[inline(always)]
    fn push_stream(&mut self, b: u8) {
        self.window = (self.window << 8) | u32::from(b);
        self.stream_len += 1;
        if self.stream_len >= 4 {
            self.visit.item(2, fmix32(self.window));
        }
    }

    #[inline(always)]
    fn word_byte(&mut self, b: u8) {
        if !self.in_word {
            self.in_word = true;
            self.word_len = 0;
            self.uni = step(FNV_OFFSET, NS_WORD);
        }
        if self.word_len < MAX_WORD {
            let lower = b.to_ascii_lowercase();
            if self.c.words == 0 && self.word_len < HEAD {
                self.head |= u64::from(lower) << (8 * self.word_len);
            }
            self.word_len += 1;
            self.uni = step(self.uni, lower);
            self.push_stream(lower);
        }
    }

    #[inline(always)]
    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        self.in_word = false;
        let len = self.word_len;
        if self.c.words == 0 {
            self.c.starts_wh = WH_PACKED.contains(&(self.head, len));
        }
        self.c.words += 1;
        self.c.word_bytes += len as u32;
        if len >= 12 {
            self.c.long_words += 1;
        }
        self.visit.item(0, fmix32(self.uni));
        if let Some(prev) = self.prev_uni {
            self.visit.item(1, fmix32(prev.wrapping_mul(BIGRAM_MUL) ^ self.uni));
        }
        self.prev_uni = Some(self.uni);
        self.push_stream(b' ');
    }
}

/// One pass over `text`: hands every hashed item to `visit` (group 0 unigrams,
/// 1 bigrams, 2 char 4-grams, each in stream order) and returns the counts and
/// `visit`. The visitor is owned, not borrowed, so what it sums stays in
/// registers (in wasm: locals, not the shadow stack).
pub fn scan<V: Visit>(text: &[u8], visit: V) -> (Counts, V) {
    let data = text.get(..SCAN_LIMIT).unwrap_or(text);
    let mut s = Scanner {
        visit,
        c: Counts { n_bytes: text.len(), scanned: data.len(), ..Counts::default() },
        window: 0,
        stream_len: 0,
        in_word: false,
        word_len: 0,
        uni: 0,
        prev_uni: None,
        head: 0,
    };
    s.push_stream(b' ');
    let mut prev_digit = false;
    let mut line_start = true;
    let (mut word_tally, mut other_tally) = (0u64, 0u64);
    let mut next_bytes = data.iter().skip(1);
    for &b in data {
        let next = next_bytes.next().copied();
        let class = CLASS.get(usize::from(b)).copied().unwrap_or(0);
        let tally = TALLY.get(usize::from(b)).copied().unwrap_or(0);
        if class & WORD != 0 {
            s.word_byte(b);
            word_tally += tally;
            let is_digit = class & DIGIT != 0;
            s.c.numbers += u32::from(is_digit & !prev_digit);
            prev_digit = is_digit;
            if line_start {
                if (b'A'..=b'J').contains(&b) && matches!(next, Some(b'.' | b')')) {
                    s.c.options += 1;
                }
                line_start = false;
            }
            continue;
        }
        s.end_word();
        prev_digit = false;
        other_tally += tally;
        // '_' is code in identifiers (snake_case, __init__), not in "____" blanks.
        s.c.code += u32::from(b == b'_' && next.is_some_and(|n| n.is_ascii_alphabetic()));
        if b == b'\n' {
            line_start = true;
        } else if class & SPACE == 0 {
            line_start = false;
        }
    }
    s.end_word();
    let mut c = s.c;
    (c.digits, c.upper, c.letters, c.non_ascii) =
        (lane(word_tally, 0), lane(word_tally, 1), lane(word_tally, 2), lane(word_tally, 3));
    (c.math, c.questions, c.newlines) = (lane(other_tally, 0), lane(other_tally, 2), lane(other_tally, 3));
    c.code += lane(other_tally, 1);
    c.ends_q = data.iter().rev().find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) == Some(&b'?');
    // A unigram per word, a bigram per word after the first, a 4-gram per stream byte from the fourth.
    c.items = [c.words, c.words.saturating_sub(1), u32::try_from(s.stream_len.saturating_sub(3)).unwrap_or(u32::MAX)];
    (c, s.visit)
}

/// The dense feature vector (order and definitions: `DENSE_NAMES` in router/features.py).
pub fn dense_features(c: &Counts) -> [f64; N_DENSE] {
    let n = c.scanned.max(1) as f64;
    let ln = |x: u32| f64::from(x).ln_1p();
    [
        (c.n_bytes as f64).ln_1p(),
        ln(c.words),
        ln(c.newlines),
        f64::from(c.digits) / n,
        ln(c.numbers),
        ln(c.math),
        ln(c.code),
        ln(c.questions),
        if c.ends_q { 1.0 } else { 0.0 },
        if c.starts_wh { 1.0 } else { 0.0 },
        ln(c.options),
        if c.letters > 0 { f64::from(c.upper) / f64::from(c.letters) } else { 0.0 },
        if c.words > 0 { f64::from(c.word_bytes) / f64::from(c.words) / 10.0 } else { 0.0 },
        f64::from(c.non_ascii) / n,
        ln(c.long_words),
    ]
}

/// The coarse kind of a prompt, 0..N_BUCKETS (names in [`BUCKET_NAMES`]): code-like,
/// maths/numeric, multiple choice with listed options, then short/medium/long by bytes.
pub fn bucket_from(c: &Counts) -> u8 {
    if c.code >= 6 {
        0
    } else if c.math >= 3 || (c.numbers >= 4 && c.digits as usize * 100 >= 3 * c.scanned.max(1)) {
        1
    } else if c.options >= 2 {
        2
    } else if c.n_bytes < 200 {
        3
    } else if c.n_bytes < 1500 {
        4
    } else {
        5
    }
}

/// The feedback bucket of a prompt (see [`bucket_from`]); one pass, no allocation.
pub fn bucket_of(text: &str) -> u8 {
    bucket_from(&scan(text.as_bytes(), |_, _| {}).0)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn items(text: &str) -> (Counts, [Vec<u32>; 3]) {
        let mut g: [Vec<u32>; 3] = Default::default();
        let (c, _) = scan(text.as_bytes(), |i: usize, h| g[i].push(h));
        (c, g)
    }

    fn fnv(data: &[u8]) -> u32 {
        data.iter().fold(FNV_OFFSET, |h, &b| step(h, b))
    }

    #[test]
    fn hashes_words_bigrams_and_char4_grams_of_the_lowercased_stream() {
        let (c, g) = items("Hi, Bob");
        assert_eq!(c.words, 2);
        let (hi, bob) = (fnv(b"\x01hi"), fnv(b"\x01bob"));
        assert_eq!(g[0], vec![fmix32(hi), fmix32(bob)]);
        assert_eq!(g[1], vec![fmix32(hi.wrapping_mul(BIGRAM_MUL) ^ bob)]);
        // stream " hi bob " has 5 four-byte windows
        let want: Vec<u32> =
            [b" hi ", b"hi b", b"i bo", b" bob", b"bob "].iter().map(|w| fmix32(u32::from_be_bytes(**w))).collect();
        assert_eq!(g[2], want);
    }

    #[test]
    fn long_words_are_cut_to_max_word_bytes() {
        let long = "x".repeat(40);
        let (c, g) = items(&long);
        assert_eq!(c.word_bytes, MAX_WORD as u32);
        assert_eq!(g[0], vec![fmix32(fnv(&[&[1u8][..], &[b'x'; MAX_WORD]].concat()))]);
    }

    #[test]
    fn counts_options_questions_and_wh_start() {
        let (c, _) = items("What is 2+2?\nA. 3\n  B) 4\nC: 5\n");
        assert!(c.starts_wh);
        assert!(!c.ends_q);
        assert_eq!(c.options, 2);
        assert_eq!(c.questions, 1);
        assert_eq!(c.numbers, 5);
        assert_eq!(c.math, 1);
        assert_eq!(c.newlines, 4);
    }

    #[test]
    fn only_the_scan_limit_is_read_but_the_length_counts_in_full() {
        let text = "word ".repeat(SCAN_LIMIT);
        let (c, _) = items(&text);
        assert_eq!(c.n_bytes, text.len());
        assert_eq!(c.scanned, SCAN_LIMIT);
        assert_eq!(c.words as usize, SCAN_LIMIT.div_ceil(5)); // the last word is cut, not dropped
    }

    #[test]
    fn underscores_count_as_code_in_identifiers_but_not_in_blanks() {
        let (blank, _) = items("The ______ is the powerhouse of the cell.");
        assert_eq!(blank.code, 0);
        let (ident, _) = items("call __init__ on snake_case_name_");
        assert_eq!(ident.code, 3); // before "init", "case", "name"; not "__" endings
    }

    #[test]
    fn buckets_separate_code_math_choice_and_lengths() {
        assert_eq!(bucket_of("fn main() { let x = [1, 2]; println!(\"{x:?}\"); }"), 0);
        assert_eq!(bucket_of("Solve x^2 + 3x = 10 for x"), 1);
        assert_eq!(bucket_of("Pick one\nA. red\nB. blue\nAnswer:"), 2);
        assert_eq!(bucket_of("Tell me a joke"), 3);
        assert_eq!(bucket_of(&"a sentence of words. ".repeat(20)), 4);
        assert_eq!(bucket_of(&"a sentence of words. ".repeat(100)), 5);
    }
}
