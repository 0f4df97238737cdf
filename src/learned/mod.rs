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
