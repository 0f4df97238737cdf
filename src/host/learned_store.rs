//! Learned routers in the host: the scorer the routing stage calls (with each
//! router's feedback correction from shared data), and the memory of recent
//! learned decisions that `POST /v1/feedback` scores.
//!
//! Memory is bounded: `FEEDBACK_SLOTS` slots in shared data, a request's slot
//! chosen by a hash of its id (a newer request can take an older one's slot),
//! each valid for `FEEDBACK_TTL_MS`.

use std::cell::{Cell, RefCell};

use crate::api::request::ParsedRequest;
use crate::config::{Config, Learned};
use crate::learned::{Correction, Model};
use crate::routing::router::LearnedScorer;
use crate::text::push_json_string;

use super::abi;

pub const FEEDBACK_SLOTS: u64 = 4096;
/// How long a VM routes with the correction it last read before reading it
/// again: scores reach every worker within this, and a request pays no
/// shared-data read.
pub const CORRECTION_REFRESH_MS: u64 = 100;
pub const FEEDBACK_TTL_MS: u64 = 3_600_000;
const CAS_RETRIES: usize = 32;

/// What a learned router decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decided {
    pub router: usize,
    pub bucket: u8,
    pub strong: bool,
    /// The score the decision was made with (shown in `x-switchboard-route-score`).
    pub score: f64,
}

/// The user's text as the model was trained on it: user messages' text, escapes decoded.
fn prompt_text(request: &ParsedRequest<'_>) -> String {
    let parts = request.user_text();
    let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + parts.len());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        push_json_string(&mut text, part);
    }
    text
}

fn correction_key(router: &str) -> String {
    format!("switchboard.learned.{router}")
}

fn read_correction(router: &str) -> Correction {
    match abi::shared_get(&correction_key(router)) {
        Ok((Some(bytes), _)) => Correction::decode(&bytes).unwrap_or_default(),
        _ => Correction::new(),
    }
}

/// Each learned router's correction as this VM last read it, and when.
pub struct Corrections(RefCell<Vec<Option<(u64, Correction)>>>);

impl Corrections {
    pub fn new(routers: usize) -> Self {
        Corrections(RefCell::new(vec![None; routers]))
    }

    /// Router `index`'s correction, read from shared data when older than [`CORRECTION_REFRESH_MS`].
    pub fn get(&self, index: usize, router: &str, now_ms: u64) -> Correction {
        let mut cache = self.0.borrow_mut();
        let Some(slot) = cache.get_mut(index) else { return read_correction(router) };
        match slot {
            Some((read_ms, c)) if now_ms.saturating_sub(*read_ms) < CORRECTION_REFRESH_MS => *c,
            _ => {
                let c = read_correction(router);
                *slot = Some((now_ms, c));
                c
            }
        }
    }

    /// This VM changed router `index`'s correction: read it again next time.
    pub fn forget(&self, index: usize) {
        if let Some(slot) = self.0.borrow_mut().get_mut(index) {
            *slot = None;
        }
    }
}

/// Adds a user's score of a weak-pool answer to the router's correction.
pub fn record_weak_score(router: &str, bucket: u8, score: f32) {
    let key = correction_key(router);
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = abi::shared_get(&key) else { return };
        let mut c = bytes.as_deref().and_then(|b| Correction::decode(b).ok()).unwrap_or_default();
        c.record_weak_score(bucket, score);
        match abi::shared_set(&key, &c.encode(), cas) {
            Ok(()) => return,
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return;
            }
        }
    }
}

/// The scorer for one request: scores with the router's model, moves the
/// threshold by the router's feedback correction, and keeps the decision.
pub struct Scorer<'a> {
    pub config: &'a Config,
    /// Per router (same order as `config.routers`): its model, when it is learned.
    pub models: &'a [Option<Model>],
    pub corrections: &'a Corrections,
    pub now_ms: u64,
    pub decided: Cell<Option<Decided>>,
}

impl Scorer<'_> {
    fn router_of(&self, learned: &Learned) -> Option<usize> {
        self.config.routers.iter().position(|r| r.learned.as_ref().is_some_and(|l| std::ptr::eq(l, learned)))
    }
}

impl LearnedScorer for Scorer<'_> {
    fn score(&self, learned: &Learned, request: &ParsedRequest<'_>) -> Option<f64> {
        let router = self.router_of(learned)?;
        let model = self.models.get(router)?.as_ref()?;
        let threshold = match learned.cutoff {
            crate::config::Cutoff::Threshold(t) => t as f32,
            crate::config::Cutoff::StrongShare(share) => model.threshold_for_share(share as f32),
        };
        let name = &self.config.routers.get(router)?.name;
        let correction = self.corrections.get(router, name, self.now_ms);
        let decision = model.decide(&prompt_text(request), threshold, &correction);
        // The routing stage compares with the configured threshold: move the
        // score by the feedback's shift of this prompt's bucket instead.
        let score = f64::from((decision.score - decision.threshold + threshold).clamp(0.0, 1.0));
        self.decided.set(Some(Decided { router, bucket: decision.bucket, strong: decision.strong, score }));
        Some(score)
    }

    fn threshold_for_share(&self, learned: &Learned, share: f64) -> Option<f64> {
        let model = self.models.get(self.router_of(learned)?)?.as_ref()?;
        Some(f64::from(model.threshold_for_share(share as f32)))
    }
}

/// A learned decision remembered for feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    id_hash: u64,
    expires_ms: u64,
    router: u16,
    bucket: u8,
    strong: bool,
    scored: bool,
}

impl Remembered {
    fn encode(&self) -> [u8; 21] {
        let mut out = [0u8; 21];
        for (dst, src) in out.iter_mut().zip(
            self.id_hash
                .to_le_bytes()
                .into_iter()
                .chain(self.expires_ms.to_le_bytes())
                .chain(self.router.to_le_bytes())
                .chain([self.bucket, u8::from(self.strong), u8::from(self.scored)]),
        ) {
            *dst = src;
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Remembered> {
        Some(Remembered {
            id_hash: u64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
            expires_ms: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            router: u16::from_le_bytes(b.get(16..18)?.try_into().ok()?),
            bucket: *b.get(18)?,
            strong: *b.get(19)? != 0,
            scored: *b.get(20)? != 0,
        })
    }
}

fn id_hash(request_id: &str) -> u64 {
    // FNV-1a: stable across VMs, which share the slots.
    request_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn slot_key(hash: u64) -> String {
    format!("switchboard.feedback.{}", hash % FEEDBACK_SLOTS)
}

pub fn remember(request_id: &str, decided: &Decided, now_ms: u64) {
    let hash = id_hash(request_id);
    let entry = Remembered {
        id_hash: hash,
        expires_ms: now_ms.saturating_add(FEEDBACK_TTL_MS),
        router: u16::try_from(decided.router).unwrap_or(u16::MAX),
        bucket: decided.bucket,
        strong: decided.strong,
        scored: false,
    };
    if let Err(status) = abi::shared_set(&slot_key(hash), &entry.encode(), 0) {
        log::warn!("switchboard[{request_id}]: remembering the learned decision failed (status {status})");
    }
}

/// How scoring a request id went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Accepted; `Some((router, bucket))` when it scored a weak-pool answer (a correction to make).
    Accepted(Option<(usize, u8)>),
    Unknown,
    AlreadyScored,
}

/// Marks `request_id` scored, once.
pub fn take_feedback(request_id: &str, now_ms: u64) -> Feedback {
    let hash = id_hash(request_id);
    let key = slot_key(hash);
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = abi::shared_get(&key) else { return Feedback::Unknown };
        let Some(mut entry) = bytes.as_deref().and_then(Remembered::decode) else { return Feedback::Unknown };
        if entry.id_hash != hash || entry.expires_ms <= now_ms {
            return Feedback::Unknown;
        }
        if entry.scored {
            return Feedback::AlreadyScored;
        }
        entry.scored = true;
        match abi::shared_set(&key, &entry.encode(), cas) {
            Ok(()) => {
                let weak = (!entry.strong).then_some((usize::from(entry.router), entry.bucket));
                return Feedback::Accepted(weak);
            }
            Err(abi::CAS_MISMATCH) => continue,
            Err(_) => return Feedback::Unknown,
        }
    }
    Feedback::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_round_trips() {
        let r = Remembered { id_hash: 7, expires_ms: 9, router: 2, bucket: 3, strong: true, scored: false };
        assert_eq!(Remembered::decode(&r.encode()), Some(r));
        assert_eq!(Remembered::decode(b"short"), None);
    }
}
