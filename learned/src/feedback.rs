//! Learning from scores: a bounded online correction of one learned router, per
//! feedback bucket (the coarse prompt kind of [`super::bucket_of`]).
//!
//! Each bucket keeps an exponential moving average of the scores (0..=1) that
//! users gave to the *weak* pool's answers on prompts of that kind (strong-pool
//! answers say nothing about whether weak was good enough, so they are not
//! recorded). The average starts at [`NEUTRAL`]; when it falls below, the bucket's
//! strong share rises, when it rises above, the share falls:
//!
//! `shift = clamp((NEUTRAL - ema) * GAIN, -MAX_SHIFT, MAX_SHIFT)` (a share, e.g. +0.25
//! is 25 more points of that bucket's prompts to strong; [`super::Model::bucket_threshold`]
//! turns it into a threshold with the bucket's calibration quantiles).
//!
//! Bounds: a bucket moves at most [`MAX_SHIFT`] either way, whatever the burst, and a
//! burst moves only the buckets its prompts fall in. One score moves the average by
//! at most [`ALPHA`], so about 32 scores are needed to go most of the way.
//!
//! State: [`Correction::ENCODED_LEN`] = 49 bytes (version byte, then per bucket the
//! average as f32 and the number of scores as u32, little-endian): small enough for
//! one proxy-wasm shared-data value per router.

use super::features::N_BUCKETS;

/// The average weak-answer score that leaves a bucket uncorrected.
pub const NEUTRAL: f32 = 0.7;
/// Weight of one new score in the moving average.
pub const ALPHA: f32 = 1.0 / 32.0;
/// Share shift per unit of average below [`NEUTRAL`].
pub const GAIN: f32 = 1.0;
/// The largest shift of a bucket's strong share, either way.
pub const MAX_SHIFT: f32 = 0.25;

const ENCODING_VERSION: u8 = 1;

/// The feedback correction of one router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    ema: [f32; N_BUCKETS],
    scores: [u32; N_BUCKETS],
}

impl Default for Correction {
    fn default() -> Self {
        Correction::new()
    }
}

impl Correction {
    /// Bytes of [`Correction::encode`].
    pub const ENCODED_LEN: usize = 1 + 8 * N_BUCKETS;

    /// No feedback yet: every bucket neutral.
    pub fn new() -> Correction {
        Correction { ema: [NEUTRAL; N_BUCKETS], scores: [0; N_BUCKETS] }
    }

    /// Records a user's score (clamped to 0..=1; NaN ignored) for a weak-pool answer
    /// to a prompt of `bucket` (out-of-range buckets are ignored).
    pub fn record_weak_score(&mut self, bucket: u8, score: f32) {
        if score.is_nan() {
            return;
        }
        let b = usize::from(bucket);
        if let (Some(ema), Some(n)) = (self.ema.get_mut(b), self.scores.get_mut(b)) {
            *ema += ALPHA * (score.clamp(0.0, 1.0) - *ema);
            *n = n.saturating_add(1);
        }
    }

    /// How far feedback moves `bucket`'s strong share, in -MAX_SHIFT..=MAX_SHIFT.
    pub fn share_shift(&self, bucket: u8) -> f32 {
        self.ema.get(usize::from(bucket)).map_or(0.0, |ema| ((NEUTRAL - ema) * GAIN).clamp(-MAX_SHIFT, MAX_SHIFT))
    }

    /// The moving average of weak-answer scores in `bucket`.
    pub fn average(&self, bucket: u8) -> Option<f32> {
        self.ema.get(usize::from(bucket)).copied()
    }

    /// Scores recorded for `bucket` (saturating).
    pub fn scores(&self, bucket: u8) -> u32 {
        self.scores.get(usize::from(bucket)).copied().unwrap_or(0)
    }

    /// The state as bytes for a shared-data value.
    pub fn encode(&self) -> [u8; Correction::ENCODED_LEN] {
        let mut out = [0u8; Correction::ENCODED_LEN];
        let mut fields = out.iter_mut();
        if let Some(v) = fields.next() {
            *v = ENCODING_VERSION;
        }
        for (ema, n) in self.ema.iter().zip(self.scores) {
            // bytes first: zip pulls its left side first, so no slot is skipped at the end
            for (byte, slot) in ema.to_le_bytes().into_iter().chain(n.to_le_bytes()).zip(&mut fields) {
                *slot = byte;
            }
        }
        out
    }

    /// Reads [`Correction::encode`]'s bytes; refuses other lengths, versions and averages
    /// outside 0..=1 (the caller then starts again from [`Correction::new`]).
    pub fn decode(bytes: &[u8]) -> Result<Correction, String> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err("feedback correction: empty".into());
        };
        if version != ENCODING_VERSION || bytes.len() != Correction::ENCODED_LEN {
            return Err(format!(
                "feedback correction: version {version}, {} bytes (expected version {ENCODING_VERSION}, {} bytes)",
                bytes.len(),
                Correction::ENCODED_LEN
            ));
        }
        let mut c = Correction::new();
        for ((chunk, ema), n) in rest.chunks_exact(8).zip(c.ema.iter_mut()).zip(c.scores.iter_mut()) {
            let (e, k) = chunk.split_at(4);
            let e = f32::from_le_bytes(e.try_into().map_err(|_| "feedback correction: short bucket")?);
            if !(0.0..=1.0).contains(&e) {
                return Err(format!("feedback correction: average {e} outside 0..=1"));
            }
            *ema = e;
            *n = u32::from_le_bytes(k.try_into().map_err(|_| "feedback correction: short bucket")?);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn low_scores_raise_one_bucket_up_to_the_bound_only() {
        let mut c = Correction::new();
        for _ in 0..1000 {
            c.record_weak_score(2, 0.0);
        }
        assert_eq!(c.share_shift(2), MAX_SHIFT);
        for b in [0, 1, 3, 4, 5] {
            assert_eq!(c.share_shift(b), 0.0);
        }
        assert_eq!(c.scores(2), 1000);
    }

    #[test]
    fn high_scores_lower_the_share_and_bad_input_is_ignored() {
        let mut c = Correction::new();
        for _ in 0..200 {
            c.record_weak_score(0, 7.0); // clamped to 1
        }
        c.record_weak_score(0, f32::NAN);
        c.record_weak_score(99, 0.0);
        assert_eq!(c.share_shift(0), -MAX_SHIFT);
        assert_eq!(c.scores(0), 200);
    }

    #[test]
    fn one_score_moves_the_share_by_at_most_alpha() {
        let mut c = Correction::new();
        c.record_weak_score(1, 0.0);
        assert!(c.share_shift(1) <= ALPHA * GAIN + f32::EPSILON);
    }

    #[test]
    fn encodes_and_decodes_the_state() {
        let mut c = Correction::new();
        c.record_weak_score(3, 0.1);
        c.record_weak_score(5, 0.9);
        let bytes = c.encode();
        assert_eq!(bytes.len(), 49);
        assert_eq!(Correction::decode(&bytes), Ok(c));
        assert!(Correction::decode(&bytes[..10]).unwrap_err().contains("10 bytes"));
        let mut bad = bytes;
        bad[1..5].copy_from_slice(&2.0f32.to_le_bytes());
        assert!(Correction::decode(&bad).unwrap_err().contains("outside"));
        assert!(Correction::decode(&[]).is_err());
    }
}
