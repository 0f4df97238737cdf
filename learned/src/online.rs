//! Learning from scores: a bounded online logistic-regression residual on top of
//! the shipped model, per router.
//!
//! A feedback score of a weak-pool answer is a label: `1 - score` is how bad the
//! weak answer was (a low score: the weak answer was worse than it should be).
//! The residual is a logistic regression on the prompt's [`Inputs`]: the 15 dense
//! features (scaled) and word unigrams folded into [`BINS`] bins (present or not),
//! updated by one step of stochastic gradient descent per label with the shipped
//! model's logit as offset, so the corrected score is
//! `sigmoid(model logit + residual)`.
//!
//! Bounds: each step is at most [`RATE`] times the (bounded) inputs, and after
//! every step the weights are scaled back into the ball of norm [`MAX_NORM`], so
//! the residual moves a prompt's logit by at most `MAX_NORM * |inputs|` (about 5
//! logits for typical prompts) whatever the scores.
//!
//! State: [`Online::ENCODED_LEN`] bytes (version, label count, weights as f32,
//! little-endian): one value, small enough for shared data or Redis.

use super::features::{self, N_DENSE};

/// Word-unigram bins (a power of two).
pub const BINS: usize = 1024;
/// Learning rate of one label.
pub const RATE: f32 = 0.1;
/// The largest weight norm.
pub const MAX_NORM: f32 = 3.0;
const N_WEIGHTS: usize = N_DENSE + 1 + BINS;
const ENCODING_VERSION: u8 = 1;
/// Dense features are divided by these so each input is about -1..1 (`ln_*`
/// features reach 8 to 10 for the longest prompts).
const DENSE_SCALE: [f32; N_DENSE] = [10.0, 10.0, 5.0, 1.0, 5.0, 5.0, 5.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 3.0];

/// What the residual sees of one prompt; kept with a remembered request so its
/// score can be learned from after the prompt is gone ([`Inputs::ENCODED_LEN`] bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    dense: [f32; N_DENSE],
    bins: [u8; BINS / 8],
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs { dense: [0.0; N_DENSE], bins: [0; BINS / 8] }
    }
}

/// The bin of a word unigram's hash (its top bits: the model's table uses the low ones).
#[inline(always)]
pub(crate) fn bin_of(hash: u32) -> usize {
    (hash >> (32 - BINS.trailing_zeros())) as usize
}

impl Inputs {
    /// Bytes of [`Inputs::encode`].
    pub const ENCODED_LEN: usize = 4 * N_DENSE + BINS / 8;

    pub(crate) fn set_dense(&mut self, dense: [f64; N_DENSE]) {
        for ((d, x), s) in self.dense.iter_mut().zip(dense).zip(DENSE_SCALE) {
            *d = ((x as f32) / s).clamp(-2.0, 2.0);
        }
    }

    #[cfg(test)]
    fn set_bin(&mut self, bin: usize) {
        if let Some(b) = self.bins.get_mut(bin / 8) {
            *b |= 1 << (bin % 8);
        }
    }

    fn bins_set(&self) -> u32 {
        self.bins.iter().map(|b| b.count_ones()).sum()
    }

    /// Calls `f(weight index, input value)` for every non-zero input.
    fn each(&self, mut f: impl FnMut(usize, f32)) {
        f(0, 1.0);
        for (i, d) in self.dense.iter().enumerate() {
            f(1 + i, *d);
        }
        let n = self.bins_set();
        if n == 0 {
            return;
        }
        let v = 1.0 / (n as f32).sqrt();
        for (byte_at, byte) in self.bins.iter().enumerate() {
            let mut rest = *byte;
            while rest != 0 {
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                f(1 + N_DENSE + byte_at * 8 + bit, v);
            }
        }
    }

    /// A number in [0, 1) fixed by the prompt's inputs (exploration picks by it, so
    /// the same prompt is always explored or never).
    pub fn draw(&self) -> f32 {
        let h = self.encode().iter().fold(0x811C_9DC5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
        let h = features::fmix32(h);
        (h >> 8) as f32 / (1u32 << 24) as f32
    }

    pub fn encode(&self) -> [u8; Inputs::ENCODED_LEN] {
        let mut out = [0u8; Inputs::ENCODED_LEN];
        let (dense, bins) = out.split_at_mut(4 * N_DENSE);
        for (slot, d) in dense.chunks_exact_mut(4).zip(self.dense) {
            slot.copy_from_slice(&d.to_le_bytes());
        }
        bins.copy_from_slice(&self.bins);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Inputs> {
        if bytes.len() != Inputs::ENCODED_LEN {
            return None;
        }
        let (dense, bins) = bytes.split_at(4 * N_DENSE);
        let mut inputs = Inputs::default();
        for (d, chunk) in inputs.dense.iter_mut().zip(dense.chunks_exact(4)) {
            *d = f32::from_le_bytes(chunk.try_into().ok()?);
            if !d.is_finite() || d.abs() > 2.0 {
                return None;
            }
        }
        inputs.bins.copy_from_slice(bins);
        Some(inputs)
    }
}

/// Collects a prompt's [`Inputs`] during the model's scan.
pub(crate) fn inputs_of(dense: [f64; N_DENSE], bins: &[u8; BINS / 8]) -> Inputs {
    let mut inputs = Inputs { bins: *bins, ..Inputs::default() };
    inputs.set_dense(dense);
    inputs
}

/// One router's learning: the residual's weights and how many labels made them.
#[derive(Debug, Clone, PartialEq)]
pub struct Online {
    weights: Vec<f32>,
    labels: u32,
}

impl Default for Online {
    fn default() -> Self {
        Online::new()
    }
}

impl Online {
    /// Bytes of [`Online::encode`].
    pub const ENCODED_LEN: usize = 1 + 4 + 4 * N_WEIGHTS;

    /// Nothing learned: the residual is 0.
    pub fn new() -> Online {
        Online { weights: vec![0.0; N_WEIGHTS], labels: 0 }
    }

    /// Labels learned from (saturating).
    pub fn labels(&self) -> u32 {
        self.labels
    }

    /// The residual's logit for a prompt.
    pub fn residual(&self, inputs: &Inputs) -> f32 {
        if self.labels == 0 {
            return 0.0;
        }
        let mut z = 0.0;
        inputs.each(|i, x| z += self.weights.get(i).copied().unwrap_or(0.0) * x);
        z
    }

    /// Learns from one scored weak-pool answer: `score` (0..=1, clamped; NaN
    /// ignored) for a prompt with these inputs whose shipped-model logit was `logit`.
    pub fn learn(&mut self, inputs: &Inputs, logit: f32, score: f32) {
        if score.is_nan() || !logit.is_finite() {
            return;
        }
        let target = 1.0 - score.clamp(0.0, 1.0);
        let z = (logit + self.residual(inputs)).clamp(-40.0, 40.0);
        let p = 1.0 / (1.0 + (-z).exp());
        let step = RATE * (target - p);
        inputs.each(|i, x| {
            if let Some(w) = self.weights.get_mut(i) {
                *w += step * x;
            }
        });
        let norm = self.weights.iter().map(|w| w * w).sum::<f32>().sqrt();
        if norm > MAX_NORM {
            let k = MAX_NORM / norm;
            self.weights.iter_mut().for_each(|w| *w *= k);
        }
        self.labels = self.labels.saturating_add(1);
    }

    /// The state as bytes for a shared-data value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; Online::ENCODED_LEN];
        let (head, weights) = out.split_at_mut(5);
        if let Some(version) = head.first_mut() {
            *version = ENCODING_VERSION;
        }
        if let Some(labels) = head.get_mut(1..5) {
            labels.copy_from_slice(&self.labels.to_le_bytes());
        }
        for (slot, w) in weights.chunks_exact_mut(4).zip(&self.weights) {
            slot.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads [`Online::encode`]'s bytes; refuses other lengths and versions, non-finite
    /// weights and norms over the bound.
    pub fn decode(bytes: &[u8]) -> Option<Online> {
        if bytes.len() != Online::ENCODED_LEN || bytes.first() != Some(&ENCODING_VERSION) {
            return None;
        }
        let labels = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?);
        let weights: Vec<f32> = bytes
            .get(5..)?
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).map(f32::from_le_bytes).unwrap_or(f32::NAN))
            .collect();
        let norm = weights.iter().map(|w| w * w).sum::<f32>().sqrt();
        (norm.is_finite() && norm <= MAX_NORM * 1.001).then_some(Online { weights, labels })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn inputs(bins: &[usize]) -> Inputs {
        let mut i = Inputs::default();
        i.set_dense([5.0, 4.0, 1.0, 0.1, 1.0, 0.0, 0.0, 0.7, 1.0, 1.0, 0.0, 0.1, 0.5, 0.0, 0.0]);
        for b in bins {
            i.set_bin(*b);
        }
        i
    }

    #[test]
    fn bad_scores_raise_the_score_of_their_kind_more_than_of_others() {
        let (bad, good) = (inputs(&[1, 2, 3, 4]), inputs(&[500, 501, 502, 503]));
        let mut o = Online::new();
        for _ in 0..200 {
            o.learn(&bad, -1.5, 0.0);
            o.learn(&good, -1.5, 1.0);
        }
        // The good kind was already unlikely to be worse (logit -1.5): it moves less.
        assert!(o.residual(&bad) > 1.0 && o.residual(&good) < 0.0, "{} {}", o.residual(&bad), o.residual(&good));
        assert_eq!(o.labels(), 400);
    }

    #[test]
    fn weights_stay_in_the_norm_ball_whatever_the_scores() {
        let x = inputs(&[7]);
        let mut o = Online::new();
        for _ in 0..100_000 {
            o.learn(&x, -40.0, 0.0);
        }
        let norm = o.weights.iter().map(|w| w * w).sum::<f32>().sqrt();
        assert!(norm <= MAX_NORM * 1.0001, "{norm}");
        o.learn(&x, 0.0, f32::NAN);
        assert_eq!(o.labels(), 100_000);
    }

    #[test]
    fn state_and_inputs_round_trip_and_bad_bytes_are_refused() {
        let x = inputs(&[0, 9, 1023]);
        let mut o = Online::new();
        o.learn(&x, -1.0, 0.2);
        let bytes = o.encode();
        assert_eq!(bytes.len(), Online::ENCODED_LEN);
        assert_eq!(Online::decode(&bytes), Some(o.clone()));
        assert_eq!(Online::decode(&bytes[1..]), None);
        let mut big = o.clone();
        big.weights[3] = 100.0;
        assert_eq!(Online::decode(&big.encode()), None);
        assert_eq!(Inputs::decode(&x.encode()), Some(x));
        assert_eq!(Inputs::decode(&[0; 3]), None);
    }
}
