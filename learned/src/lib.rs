//! The learned router's pure logic: prompt features, the model file and scorer,
//! and the bounded online learning from feedback scores. Training and evaluation are in `router/`
//! (Python); both sides compute the same features (see `router/features.py`).
//!
//! Use: load a model once ([`Model::embedded_default`] or [`Model::from_bytes`] for
//! a config's `learned.model`), turn a configured `strong_share` into a threshold
//! with [`Model::threshold_for_share`], then per request [`Model::decide`] with the
//! router's [`Online`] learning (kept in shared data, updated by [`Online::learn`]
//! when a weak-pool answer is scored).

pub mod features;
mod model;
mod online;

pub use features::{bucket_of, BUCKET_NAMES, N_BUCKETS};
pub use model::{Decision, Model, ModelError};
pub use online::{Inputs, Online, BINS, MAX_NORM, RATE};

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

    fn strong_share(m: &Model, prompts: &[String], threshold: f32, learning: &Online) -> f32 {
        let strong = prompts.iter().filter(|p| m.decide(p, threshold, learning).strong).count();
        strong as f32 / prompts.len() as f32
    }

    #[test]
    fn weak_answers_scored_zero_on_one_kind_send_more_of_that_kind_to_strong() {
        let m = Model::embedded_default().unwrap();
        let threshold = m.threshold_for_share(0.3);
        let cases = cases();
        let choice: Vec<String> = cases.iter().filter(|c| c.bucket == 2).map(|c| c.prompt.clone()).collect();
        // The same questions without their options, scored 1 (weak was right).
        let stems: Vec<String> = choice.iter().filter_map(|p| p.split("\nA.").next()).map(str::to_string).collect();
        assert!(choice.len() >= 600);
        let (train, probes) = choice.split_at(300);
        let fresh = Online::new();
        let before = [strong_share(&m, probes, threshold, &fresh), strong_share(&m, &stems[300..], threshold, &fresh)];
        let mut learning = Online::new();
        for (p, s) in train.iter().zip(&stems) {
            let d = m.decide(p, threshold, &learning);
            learning.learn(&d.inputs, d.logit, 0.0);
            let d = m.decide(s, threshold, &learning);
            learning.learn(&d.inputs, d.logit, 1.0);
        }
        let after =
            [strong_share(&m, probes, threshold, &learning), strong_share(&m, &stems[300..], threshold, &learning)];
        eprintln!("strong share before {before:?}, after {after:?} (choice, stems)");
        assert!(after[0] - before[0] >= 0.20, "choice: {before:?} -> {after:?}");
        // Half the labels say weak was worse, far more than the model expected, so
        // every score rises; the scored-0 kind rises most.
        assert!(after[0] - after[1] > before[0] - before[1] + 0.1, "stems: {before:?} -> {after:?}");
    }
}
