//! The learned router's model: reading the `.sblr` file (layout documented in
//! `router/model_file.py` and docs/learned-router.md), scoring a prompt, and the
//! calibration quantiles that turn a strong-call share into a threshold.

use super::features::{self, N_BUCKETS, N_DENSE, N_GROUPS};
use super::online::{self, Inputs, Online, BINS};

/// The model trained on `../shared/data/routellm-mmlu` (80% split), shipped in the `.wasm`.
const EMBEDDED: &[u8] = include_bytes!("../../router/models/default.sblr");

const MAGIC: &[u8; 4] = b"SBLR";
const VERSION: u16 = 1;
const HEADER: usize = 16;
const MIN_TABLE_BITS: u8 = 10;
const MAX_TABLE_BITS: u8 = 20;

/// Why a model file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "learned router model: {}", self.0)
    }
}

impl std::error::Error for ModelError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ModelError> {
    Err(ModelError(msg.into()))
}

/// A loaded model: logistic regression over hashed n-grams and dense prompt features.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    bias: f32,
    dense: [f32; N_DENSE],
    mask: u32,
    scale: f32,
    table: Vec<i8>,
    quantiles: Vec<f32>,
    bucket_quantiles: Vec<Vec<f32>>,
    bucket_counts: [u32; N_BUCKETS],
    checksum: u32,
}

/// What the router decided for one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Estimated probability that the weak pool's answer is worse than the strong
    /// pool's: the shipped model corrected by the router's learning.
    pub score: f32,
    /// The shipped model's logit alone (the offset the learning is fitted on).
    pub logit: f32,
    /// What the learning sees of the prompt.
    pub inputs: Inputs,
    /// Send to the strong pool (`score >= threshold`).
    pub strong: bool,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let chunk = self.bytes.get(self.at..self.at + N).and_then(|s| <[u8; N]>::try_from(s).ok());
        match chunk {
            Some(c) => {
                self.at += N;
                Ok(c)
            }
            None => err(format!("truncated at byte {} reading {what} ({} bytes)", self.at, self.bytes.len())),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, ModelError> {
        let [b] = self.take::<1>(what)?;
        Ok(b)
    }
    fn u16(&mut self, what: &str) -> Result<u16, ModelError> {
        Ok(u16::from_le_bytes(self.take(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }
    fn f32(&mut self, what: &str) -> Result<f32, ModelError> {
        let v = f32::from_le_bytes(self.take(what)?);
        if v.is_finite() {
            Ok(v)
        } else {
            err(format!("{what} is not a finite number"))
        }
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, ModelError> {
        (0..n).map(|_| self.f32(what)).collect()
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn check_quantiles(q: &[f32], what: &str) -> Result<(), ModelError> {
    if q.windows(2).any(|w| matches!(w, [a, b] if b > a)) {
        return err(format!("{what} must not increase with the strong share"));
    }
    Ok(())
}

impl Model {
    /// Reads a model file, refusing it with the reason when it is not a valid version-1 file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        if bytes.get(..4) != Some(&MAGIC[..]) {
            return err("not a model file (expected magic \"SBLR\")");
        }
        let Some((body, sum)) = bytes.len().checked_sub(4).map(|n| bytes.split_at(n)) else {
            return err("truncated");
        };
        let mut r = Reader { bytes: body, at: 4 };
        let version = r.u16("version")?;
        if version != VERSION {
            return err(format!("version {version} is not supported (this build reads version {VERSION})"));
        }
        let bits = r.u8("table_bits")?;
        if !(MIN_TABLE_BITS..=MAX_TABLE_BITS).contains(&bits) {
            return err(format!("table_bits {bits} is outside {MIN_TABLE_BITS}..={MAX_TABLE_BITS}"));
        }
        let (nd, ng, nb) = (r.u8("dense count")?, r.u8("group count")?, r.u8("bucket count")?);
        if (usize::from(nd), usize::from(ng), usize::from(nb)) != (N_DENSE, N_GROUPS, N_BUCKETS) {
            return err(format!(
                "layout {nd} dense/{ng} groups/{nb} buckets, version 1 has {N_DENSE}/{N_GROUPS}/{N_BUCKETS}"
            ));
        }
        let nq = usize::from(r.u16("quantile count")?);
        if nq < 2 {
            return err(format!("quantile count {nq} must be at least 2"));
        }
        let table_len = 1usize << bits;
        let expected = HEADER + 4 * (N_DENSE + nq + N_BUCKETS * nq + N_BUCKETS + 1) + table_len + 4;
        if bytes.len() != expected {
            return err(format!("{} bytes, expected {expected} for table_bits {bits} and {nq} quantiles", bytes.len()));
        }
        let stored = u32::from_le_bytes(<[u8; 4]>::try_from(sum).map_err(|_| ModelError("truncated".into()))?);
        if fnv1a(body) != stored {
            return err("checksum mismatch (file damaged or edited)");
        }
        let bias = r.f32("bias")?;
        let mut dense = [0f32; N_DENSE];
        for d in dense.iter_mut() {
            *d = r.f32("dense weight")?;
        }
        let quantiles = r.f32s(nq, "quantiles")?;
        check_quantiles(&quantiles, "quantiles")?;
        let mut bucket_quantiles = Vec::with_capacity(N_BUCKETS);
        for _ in 0..N_BUCKETS {
            let q = r.f32s(nq, "bucket quantiles")?;
            check_quantiles(&q, "bucket quantiles")?;
            bucket_quantiles.push(q);
        }
        let mut bucket_counts = [0u32; N_BUCKETS];
        for c in bucket_counts.iter_mut() {
            *c = r.u32("bucket count")?;
        }
        let scale = r.f32("table scale")?;
        let table: Vec<i8> = body.get(r.at..).unwrap_or_default().iter().map(|&b| b as i8).collect();
        if table.len() != table_len {
            return err(format!("{} hashed weights, expected {table_len}", table.len()));
        }
        Ok(Model {
            bias,
            dense,
            mask: (table_len - 1) as u32,
            scale,
            table,
            quantiles,
            bucket_quantiles,
            bucket_counts,
            checksum: stored,
        })
    }

    /// The file's checksum: names this model (learning from feedback is kept per model).
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// The model shipped in the filter (trained on the RouteLLM MMLU data).
    pub fn embedded_default() -> Result<Model, ModelError> {
        Model::from_bytes(EMBEDDED)
    }

    /// Score and bucket of a prompt in one pass over its bytes (no allocation).
    pub fn analyze(&self, text: &str) -> (f32, u8) {
        let (z, counts, _, _) = self.logit_of(text);
        (sigmoid(z), features::bucket_from(&counts))
    }

    /// The model's logit, the scan's counts, its dense features and the word bins seen.
    fn logit_of(&self, text: &str) -> (f64, features::Counts, [f64; N_DENSE], [u8; BINS / 8]) {
        let (counts, sums) = features::scan(text.as_bytes(), Sums::new(&self.table, self.mask));
        let (by_group, items) = (sums.by_group(), counts.items);
        let dense = features::dense_features(&counts);
        let mut z = f64::from(self.bias);
        for (w, x) in self.dense.iter().zip(dense) {
            z += f64::from(*w) * x;
        }
        for (s, n) in by_group.iter().zip(items) {
            if n > 0 {
                z += (f64::from(self.scale) * f64::from(*s)) / f64::from(n).sqrt();
            }
        }
        (z.clamp(-40.0, 40.0), counts, dense, sums.bins)
    }

    /// The estimated probability in [0, 1] that the weak pool's answer is worse than the strong's.
    pub fn score(&self, text: &str) -> f32 {
        self.analyze(text).0
    }

    /// The threshold that sends `share` (0..=1) of the calibration prompts to strong.
    pub fn threshold_for_share(&self, share: f32) -> f32 {
        threshold_in(&self.quantiles, share)
    }

    /// The share of calibration prompts whose score is at least `threshold`.
    pub fn share_for_threshold(&self, threshold: f32) -> f32 {
        share_in(&self.quantiles, threshold)
    }

    /// Calibration prompts that fell in each prompt bucket.
    pub fn bucket_counts(&self) -> [u32; N_BUCKETS] {
        self.bucket_counts
    }

    /// Scores `text`, corrected by the router's learning, and decides strong or weak against `threshold`.
    pub fn decide(&self, text: &str, threshold: f32, learning: &Online) -> Decision {
        let (z, _, dense, bins) = self.logit_of(text);
        let inputs = online::inputs_of(dense, &bins);
        let score = sigmoid(z + f64::from(learning.residual(&inputs)));
        Decision { score, logit: z as f32, inputs, strong: score >= threshold }
    }
}

fn sigmoid(z: f64) -> f32 {
    (1.0 / (1.0 + (-z.clamp(-40.0, 40.0)).exp())) as f32
}

/// The hashed weights of a prompt summed per group. Integer sums of the 8-bit
/// weights: exact, so Python and Rust agree whatever the order.
struct Sums<'t> {
    table: &'t [i8],
    mask: u32,
    sums: (i32, i32, i32),
    /// Word unigrams seen, by [`online::bin_of`].
    bins: [u8; BINS / 8],
}

impl<'t> Sums<'t> {
    fn new(table: &'t [i8], mask: u32) -> Self {
        Sums { table, mask, sums: (0, 0, 0), bins: [0; BINS / 8] }
    }

    fn by_group(&self) -> [i32; N_GROUPS] {
        const _: () = assert!(N_GROUPS == 3, "one sum per hashed group");
        let (s0, s1, s2) = self.sums;
        [s0, s1, s2]
    }
}

impl features::Visit for Sums<'_> {
    #[inline(always)]
    fn item(&mut self, group: usize, hash: u32) {
        let w = i32::from(self.table.get((hash & self.mask) as usize).copied().unwrap_or(0));
        match group {
            0 => {
                self.sums.0 += w;
                let bin = online::bin_of(hash);
                if let Some(b) = self.bins.get_mut(bin / 8) {
                    *b |= 1 << (bin % 8);
                }
            }
            1 => self.sums.1 += w,
            _ => self.sums.2 += w,
        }
    }
}

/// Piecewise-linear reading of non-increasing quantiles at `share` (clamped to 0..=1).
fn threshold_in(q: &[f32], share: f32) -> f32 {
    let last = q.len().saturating_sub(1);
    let pos = share.clamp(0.0, 1.0) * last as f32;
    let i = (pos.floor() as usize).min(last);
    let frac = pos - i as f32;
    match (q.get(i), q.get(i + 1)) {
        (Some(a), Some(b)) => a + (b - a) * frac,
        (Some(a), None) => *a,
        _ => 0.5,
    }
}

/// The inverse of [`threshold_in`]: the share whose threshold is `t`.
fn share_in(q: &[f32], t: f32) -> f32 {
    let last = q.len().saturating_sub(1).max(1) as f32;
    match (q.first(), q.last()) {
        (Some(&top), _) if t > top => return 0.0,
        (_, Some(&bottom)) if t <= bottom => return 1.0,
        _ => {}
    }
    for (i, w) in q.windows(2).enumerate() {
        if let [a, b] = *w {
            if a >= t && t > b {
                return (i as f32 + (a - t) / (a - b)) / last;
            }
        }
    }
    1.0
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn embedded_default_loads_and_scores_in_unit_interval() {
        let m = Model::embedded_default().unwrap();
        for text in ["", "hi", "What is the capital of France?", &"x = 1; ".repeat(5000)] {
            let s = m.score(text);
            assert!((0.0..=1.0).contains(&s), "{s} for {text:?}");
        }
    }

    #[test]
    fn refuses_damaged_files_naming_the_problem() {
        let good = EMBEDDED.to_vec();
        let e = |b: &[u8]| Model::from_bytes(b).unwrap_err().to_string();
        assert!(e(b"nope").contains("magic"), "{}", e(b"nope"));
        assert!(e(&good[..good.len() - 10]).contains("expected"), "{}", e(&good[..good.len() - 10]));
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert!(e(&flipped).contains("checksum"), "{}", e(&flipped));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert!(e(&v2).contains("version 2"), "{}", e(&v2));
    }

    #[test]
    fn threshold_and_share_are_inverse_and_monotone() {
        let m = Model::embedded_default().unwrap();
        let mut prev = f32::INFINITY;
        for pct in 0..=100 {
            let share = pct as f32 / 100.0;
            let t = m.threshold_for_share(share);
            assert!(t <= prev, "threshold rises at {pct}%");
            prev = t;
            if (1..100).contains(&pct) {
                assert!((m.share_for_threshold(t) - share).abs() < 0.011, "{pct}%: {}", m.share_for_threshold(t));
            }
        }
        assert_eq!(m.share_for_threshold(1.5), 0.0);
        assert_eq!(m.share_for_threshold(-0.5), 1.0);
    }

    #[test]
    fn decide_applies_threshold_and_reports_bucket() {
        let m = Model::embedded_default().unwrap();
        let none = Online::new();
        let text = "Which of the following is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:";
        let d = m.decide(text, 0.0, &none);
        assert!(d.strong);
        assert!(!m.decide(text, 1.01, &none).strong);
        assert_eq!(d.score, m.score(text));
    }
}
