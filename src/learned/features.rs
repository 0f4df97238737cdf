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
const NS_BIGRAM: u8 = 2;
const NS_CHAR4: u8 = 3;
const WH_WORDS: [&[u8]; 9] = [b"what", b"which", b"who", b"whom", b"whose", b"when", b"where", b"why", b"how"];

#[inline]
fn step(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
}

#[inline]
fn is_word_byte(b: u8) -> bool {
    b >= 0x80 || b.is_ascii_alphanumeric()
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
}

/// The word being read: its kept bytes' hash states.
struct Word {
    len: usize,
    uni: u32,
    /// `ns 2 + word`: the prefix of the bigram this word starts.
    bi_next: u32,
    /// `ns 2 + previous word + ' ' + word`, when there was a previous word.
    bi: Option<u32>,
    /// The first 5 kept bytes, to recognise wh-words.
    head: [u8; 5],
}

/// Sliding window over the normalised stream `" " + " ".join(words) + " "`.
struct Char4 {
    window: [u8; 4],
    seen: usize,
    prefix: u32,
}

impl Char4 {
    #[inline]
    fn push(&mut self, b: u8, visit: &mut impl FnMut(usize, u32)) {
        self.window = [self.window[1], self.window[2], self.window[3], b];
        self.seen += 1;
        if self.seen >= 4 {
            let h = self.window.iter().fold(self.prefix, |h, &b| step(h, b));
            visit(2, h);
        }
    }
}

/// One pass over `text`: calls `visit(group, hash)` for every hashed item (group 0
/// unigrams, 1 bigrams, 2 char 4-grams, each in stream order) and returns the counts.
pub fn scan(text: &[u8], mut visit: impl FnMut(usize, u32)) -> Counts {
    let data = text.get(..SCAN_LIMIT).unwrap_or(text);
    let mut c = Counts { n_bytes: text.len(), scanned: data.len(), ..Counts::default() };
    let uni_prefix = step(FNV_OFFSET, NS_WORD);
    let bi_prefix = step(FNV_OFFSET, NS_BIGRAM);
    let mut char4 = Char4 { window: [0; 4], seen: 0, prefix: step(FNV_OFFSET, NS_CHAR4) };
    char4.push(b' ', &mut visit);

    let mut word: Option<Word> = None;
    let mut prev_bi_next: Option<u32> = None;
    let mut prev_digit = false;
    let mut line_start = true;

    let finish = |w: Word, c: &mut Counts, char4: &mut Char4, visit: &mut dyn FnMut(usize, u32)| {
        if c.words == 0 {
            c.starts_wh = WH_WORDS.iter().any(|wh| w.head.get(..w.len).is_some_and(|h| h == *wh));
        }
        c.words += 1;
        c.word_bytes += w.len as u32;
        if w.len >= 12 {
            c.long_words += 1;
        }
        visit(0, w.uni);
        if let Some(bi) = w.bi {
            visit(1, bi);
        }
        let mut v = |g, h| visit(g, h);
        char4.push(b' ', &mut v);
        w.bi_next
    };

    for (i, &b) in data.iter().enumerate() {
        let is_digit = b.is_ascii_digit();
        if is_digit {
            c.digits += 1;
            if !prev_digit {
                c.numbers += 1;
            }
        }
        prev_digit = is_digit;
        if b"=+*/^<>|\\$".contains(&b) {
            c.math += 1;
        }
        if b"{}[];`#_".contains(&b) {
            c.code += 1;
        }
        if b == b'?' {
            c.questions += 1;
        }
        if b.is_ascii_uppercase() {
            c.upper += 1;
            c.letters += 1;
        } else if b.is_ascii_lowercase() {
            c.letters += 1;
        }
        if b >= 0x80 {
            c.non_ascii += 1;
        }
        if b == b'\n' {
            c.newlines += 1;
            line_start = true;
        } else if b != b' ' && b != b'\t' {
            if line_start && (b'A'..=b'J').contains(&b) && matches!(data.get(i + 1), Some(b'.' | b')')) {
                c.options += 1;
            }
            line_start = false;
        }

        if is_word_byte(b) {
            let w = word.get_or_insert_with(|| Word {
                len: 0,
                uni: uni_prefix,
                bi_next: bi_prefix,
                bi: prev_bi_next.map(|p| step(p, b' ')),
                head: [0; 5],
            });
            if w.len < MAX_WORD {
                let lower = b.to_ascii_lowercase();
                if let Some(slot) = w.head.get_mut(w.len) {
                    *slot = lower;
                }
                w.len += 1;
                w.uni = step(w.uni, lower);
                w.bi_next = step(w.bi_next, lower);
                w.bi = w.bi.map(|h| step(h, lower));
                char4.push(lower, &mut visit);
            }
        } else if let Some(w) = word.take() {
            prev_bi_next = Some(finish(w, &mut c, &mut char4, &mut visit));
        }
    }
    if let Some(w) = word.take() {
        finish(w, &mut c, &mut char4, &mut visit);
    }
    c.ends_q = data.iter().rev().find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) == Some(&b'?');
    c
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
    bucket_from(&scan(text.as_bytes(), |_, _| {}))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn items(text: &str) -> (Counts, [Vec<u32>; 3]) {
        let mut g: [Vec<u32>; 3] = Default::default();
        let c = scan(text.as_bytes(), |i, h| g[i].push(h));
        (c, g)
    }

    fn fnv(data: &[u8]) -> u32 {
        data.iter().fold(FNV_OFFSET, |h, &b| step(h, b))
    }

    #[test]
    fn hashes_words_bigrams_and_char4_grams_of_the_lowercased_stream() {
        let (c, g) = items("Hi, Bob");
        assert_eq!(c.words, 2);
        assert_eq!(g[0], vec![fnv(b"\x01hi"), fnv(b"\x01bob")]);
        assert_eq!(g[1], vec![fnv(b"\x02hi bob")]);
        // stream " hi bob " has 5 four-byte windows
        let want: Vec<u32> =
            [&b" hi "[..], b"hi b", b"i bo", b" bob", b"bob "].iter().map(|w| fnv(&[&[3u8][..], w].concat())).collect();
        assert_eq!(g[2], want);
    }

    #[test]
    fn long_words_are_cut_to_max_word_bytes() {
        let long = "x".repeat(40);
        let (c, g) = items(&long);
        assert_eq!(c.word_bytes, MAX_WORD as u32);
        assert_eq!(g[0], vec![fnv(&[&[1u8][..], &[b'x'; MAX_WORD]].concat())]);
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
    fn buckets_separate_code_math_choice_and_lengths() {
        assert_eq!(bucket_of("fn main() { let x = [1, 2]; println!(\"{x:?}\"); }"), 0);
        assert_eq!(bucket_of("Solve x^2 + 3x = 10 for x"), 1);
        assert_eq!(bucket_of("Pick one\nA. red\nB. blue\nAnswer:"), 2);
        assert_eq!(bucket_of("Tell me a joke"), 3);
        assert_eq!(bucket_of(&"a sentence of words. ".repeat(20)), 4);
        assert_eq!(bucket_of(&"a sentence of words. ".repeat(100)), 5);
    }
}
