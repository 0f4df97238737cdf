//! The learned router's pure logic: prompt features, the model file and scorer,
//! and the bounded feedback correction. Training and evaluation are in `router/`
//! (Python); both sides compute the same features (see `router/features.py`).
//!
//! Use: load a model once ([`Model::embedded_default`] or [`Model::from_bytes`] for
//! a config's `learned.model`), turn a configured `strong_share` into a threshold
//! with [`Model::threshold_for_share`], then per request [`Model::decide`] with the
//! router's [`Correction`] (kept in shared data, updated by
//! [`Correction::record_weak_score`] when a weak-pool answer is scored).

pub mod features;
mod feedback;
mod model;

pub use features::{bucket_of, BUCKET_NAMES, N_BUCKETS};
pub use feedback::{Correction, ALPHA, GAIN, MAX_SHIFT, NEUTRAL};
pub use model::{Decision, Model, ModelError};

#[cfg(test)]
mod tests {

    use super::*;

    /// Prompts with the Python scorer's score and bucket (router/make_fixture.py).
    const PARITY: &str = include_str!("../../tests/fixtures/learned/parity.jsonl");

    #[derive(serde::Deserialize)]
    struct Case {
        prompt: String,
        score: f64,
        bucket: u8,
    }

    fn cases() -> Vec<Case> {
        PARITY.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn parity_with_python_fixture() {
        let m = Model::embedded_default().unwrap();
        let cases = cases();
        assert!(cases.len() >= 1000, "{} cases", cases.len());
        let mut worst = 0f64;
        for c in &cases {
            let (score, bucket) = m.analyze(&c.prompt);
            worst = worst.max((f64::from(score) - c.score).abs());
            assert!((f64::from(score) - c.score).abs() <= 1e-5, "rust {score} python {} for {:?}", c.score, c.prompt);
            assert_eq!(bucket, c.bucket, "bucket of {:?}", c.prompt);
        }
        eprintln!("{} prompts, largest score difference {worst:e}", cases.len());
    }

    fn strong_share(m: &Model, prompts: &[String], threshold: f32, corr: &Correction) -> f32 {
        let strong = prompts.iter().filter(|p| m.decide(p, threshold, corr).strong).count();
        strong as f32 / prompts.len() as f32
    }

    #[test]
    fn weak_answers_scored_zero_on_one_kind_move_only_that_kind_to_strong() {
        let m = Model::embedded_default().unwrap();
        let threshold = m.threshold_for_share(0.3);
        let cases = cases();
        let of_bucket =
            |b: u8| -> Vec<String> { cases.iter().filter(|c| c.bucket == b).map(|c| c.prompt.clone()).collect() };
        let choice = of_bucket(2);
        let math = of_bucket(1);
        // The same questions without their listed options: short and medium prompts.
        let stems: Vec<String> = choice.iter().filter_map(|p| p.split("\nA.").next()).map(str::to_string).collect();
        let (short, medium): (Vec<String>, Vec<String>) =
            stems.into_iter().filter(|p| bucket_of(p) >= 3).partition(|p| bucket_of(p) == 3);
        assert!(choice.len() >= 300 && math.len() >= 100 && short.len() >= 100 && medium.len() >= 100);

        let fresh = Correction::new();
        let before: Vec<f32> =
            [&choice, &math, &short, &medium].iter().map(|k| strong_share(&m, k, threshold, &fresh)).collect();
        let mut corr = Correction::new();
        for p in choice.iter().take(300) {
            let d = m.decide(p, threshold, &corr);
            if !d.strong {
                corr.record_weak_score(d.bucket, 0.0);
            }
        }
        let after: Vec<f32> =
            [&choice, &math, &short, &medium].iter().map(|k| strong_share(&m, k, threshold, &corr)).collect();
        eprintln!("strong share before {before:?}, after {after:?} (choice, math, short, medium)");
        assert!(after[0] - before[0] >= 0.20, "choice: {} -> {}", before[0], after[0]);
        for k in 1..4 {
            assert!((after[k] - before[k]).abs() < 0.05, "kind {k}: {} -> {}", before[k], after[k]);
        }
    }
}
