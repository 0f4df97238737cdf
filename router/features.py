"""Prompt features of the learned router, the reference definition.

learned/src/features.rs computes exactly the same values (the parity test in
tests/test_learned_parity.py and the Rust unit test `parity_with_python_fixture`
compare both on committed prompts). Pure Python, standard library only, so the
scorer runs anywhere; training imports it too.

Everything works on the prompt's UTF-8 bytes, never on Unicode classes (which
differ between Python and Rust):

* Only the first SCAN_LIMIT bytes are looked at (the byte length itself is
  counted in full), so the cost per request is bounded.
* A word is a maximal run of "word bytes": ASCII letters and digits, and every
  byte >= 0x80 (so non-Latin scripts still form words). ASCII letters are
  lowercased. Words longer than MAX_WORD bytes are cut to their first MAX_WORD.
* The normalised stream is " " + " ".join(words) + " ".
* Hashed features, index = hash & (table_size - 1), with fmix32 the MurmurHash3
  finaliser and u = FNV-1a 32 of (b"\x01" + word):
    - word unigrams: fmix32(u)
    - word bigrams: fmix32((u1 * 0x9E3779B1 mod 2^32) ^ u2)
    - char 4-grams of the normalised stream: fmix32(the 4 bytes as a big-endian u32)
  Each group's feature values are count / sqrt(number of items in the group),
  so the group contributes sum(weights of its items) / sqrt(items).
* Dense features: DENSE_NAMES below, in that order.
"""

import math

SCAN_LIMIT = 16384
MAX_WORD = 32
FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
MASK32 = 0xFFFFFFFF

NS_WORD = 1
GROUPS = ("word", "bigram", "char4")

WH_WORDS = {b"what", b"which", b"who", b"whom", b"whose", b"when", b"where", b"why", b"how"}
MATH_BYTES = frozenset(b"=+*/^<>|\\$")
CODE_BYTES = frozenset(b"{}[];`#")
OPTION_LETTERS = frozenset(b"ABCDEFGHIJ")

DENSE_NAMES = (
    "ln_bytes",  # ln(1 + total UTF-8 bytes)
    "ln_words",  # ln(1 + words)
    "ln_lines",  # ln(1 + newline count)
    "digit_share",  # digit bytes / scanned bytes
    "ln_numbers",  # ln(1 + maximal digit runs)
    "ln_math",  # ln(1 + bytes in = + * / ^ < > | \ $)
    "ln_code",  # ln(1 + bytes in { } [ ] ; ` # and '_' before a letter (not "____" blanks))
    "ln_questions",  # ln(1 + '?' bytes)
    "ends_question",  # 1 if the last non-space byte is '?'
    "starts_wh",  # 1 if the first word is a wh-word (what, which, who, ...)
    "ln_options",  # ln(1 + lines starting, after spaces, with A-J then '.' or ')')
    "upper_share",  # ASCII upper-case letters / ASCII letters
    "mean_word_len",  # word bytes / words / 10
    "non_ascii_share",  # bytes >= 0x80 / scanned bytes
    "ln_long_words",  # ln(1 + words of 12 or more bytes)
)
N_DENSE = len(DENSE_NAMES)


def is_word_byte(b):
    return b >= 0x80 or 48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122


def fnv(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK32
    return h


def fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def words_of(data):
    """The scanned bytes' words, lowercased and cut to MAX_WORD bytes."""
    out = []
    cur = bytearray()
    for b in data:
        if is_word_byte(b):
            if len(cur) < MAX_WORD:
                cur.append(b + 32 if 65 <= b <= 90 else b)
        elif cur:
            out.append(bytes(cur))
            cur = bytearray()
    if cur:
        out.append(bytes(cur))
    return out


def hashed_groups(words):
    """Per group, the list of 32-bit hashes of its items (in stream order)."""
    prefix = fnv(bytes([NS_WORD]))
    raw = [fnv(w, prefix) for w in words]
    uni = [fmix32(u) for u in raw]
    bi = [fmix32(((a * 0x9E3779B1) & MASK32) ^ b) for a, b in zip(raw, raw[1:])]
    stream = b" " + b" ".join(words) + b" " if words else b" "
    c4 = [fmix32(int.from_bytes(stream[i : i + 4], "big")) for i in range(len(stream) - 3)]
    return (uni, bi, c4)


class Counts:
    """Integer counts over the scanned bytes; dense features and the bucket derive from them."""

    __slots__ = ("n_bytes", "scanned", "words", "newlines", "digits", "numbers", "math", "code",
                 "questions", "ends_q", "starts_wh", "options", "upper", "letters", "non_ascii",
                 "word_bytes", "long_words")


def count(text_bytes, words):
    data = text_bytes[:SCAN_LIMIT]
    c = Counts()
    digits = numbers = math_n = code_n = questions = upper = letters = non_ascii = 0
    newlines = options = 0
    prev_digit = False
    line_start = True  # only spaces/tabs seen since the last newline
    last = len(data) - 1
    for i, b in enumerate(data):
        is_digit = 48 <= b <= 57
        if is_digit:
            digits += 1
            if not prev_digit:
                numbers += 1
        prev_digit = is_digit
        if b in MATH_BYTES:
            math_n += 1
        if b in CODE_BYTES or (b == 95 and i < last and (65 <= data[i + 1] <= 90 or 97 <= data[i + 1] <= 122)):
            code_n += 1
        if b == 63:
            questions += 1
        if 65 <= b <= 90:
            upper += 1
            letters += 1
        elif 97 <= b <= 122:
            letters += 1
        if b >= 0x80:
            non_ascii += 1
        if b == 10:
            newlines += 1
            line_start = True
        elif b not in (32, 9):
            if line_start and b in OPTION_LETTERS and i < last and data[i + 1] in (46, 41):
                options += 1
            line_start = False
    c.n_bytes = len(text_bytes)
    c.scanned = len(data)
    c.words = len(words)
    c.newlines = newlines
    c.digits = digits
    c.numbers = numbers
    c.math = math_n
    c.code = code_n
    c.questions = questions
    c.ends_q = data.rstrip(b" \t\r\n").endswith(b"?")
    c.starts_wh = bool(words) and words[0] in WH_WORDS
    c.options = options
    c.upper = upper
    c.letters = letters
    c.non_ascii = non_ascii
    c.word_bytes = sum(len(w) for w in words)
    c.long_words = sum(1 for w in words if len(w) >= 12)
    return c


def dense_features(c):
    n = max(1, c.scanned)
    return [
        math.log1p(c.n_bytes),
        math.log1p(c.words),
        math.log1p(c.newlines),
        c.digits / n,
        math.log1p(c.numbers),
        math.log1p(c.math),
        math.log1p(c.code),
        math.log1p(c.questions),
        1.0 if c.ends_q else 0.0,
        1.0 if c.starts_wh else 0.0,
        math.log1p(c.options),
        c.upper / c.letters if c.letters else 0.0,
        c.word_bytes / c.words / 10.0 if c.words else 0.0,
        c.non_ascii / n,
        math.log1p(c.long_words),
    ]


def extract(text):
    """(dense feature list, per-group hash lists, bucket) of one prompt."""
    raw = text.encode("utf-8")
    words = words_of(raw[:SCAN_LIMIT])
    c = count(raw, words)
    return dense_features(c), hashed_groups(words), bucket_from(c)


def bucket_from(c):
    """The coarse prompt kind used by the feedback correction (see BUCKET_NAMES)."""
    if c.code >= 6:
        return 0  # code-like: many braces, brackets, semicolons, backticks, '#', identifier '_'
    if c.math >= 3 or (c.numbers >= 4 and c.digits * 100 >= 3 * max(1, c.scanned)):
        return 1  # maths / numeric: operators, or several numbers making >= 3% of the bytes
    if c.options >= 2:
        return 2  # multiple choice with listed options (A. ... B. ...)
    if c.n_bytes < 200:
        return 3  # short
    if c.n_bytes < 1500:
        return 4  # medium
    return 5  # long


def bucket_of(text):
    raw = text.encode("utf-8")
    return bucket_from(count(raw, words_of(raw[:SCAN_LIMIT])))


BUCKET_NAMES = ("code", "math", "choice", "short", "medium", "long")
