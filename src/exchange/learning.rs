//! Learned routers' shared state, for any host: the scorer the routing stage
//! calls (with each router's learning from shared data), and the memory of
//! recent learned decisions that `POST /v1/feedback` scores. Both live in the
//! host's [`SharedData`] (proxy-wasm's shared data, or the dynamic module's
//! process memory), so every worker routes with the same learning.
//!
//! Memory is bounded: `FEEDBACK_SLOTS` slots in shared data, a request's slot
//! chosen by a hash of its owner (tenant) and id, each valid for
//! `FEEDBACK_TTL_MS`. Remembering is one write and no read (it is on every
//! learned request's path), so a newer request takes its slot from an older
//! one that hashed there: of the last 1,000 learned requests about 94% are
//! still scorable, of the last 5,000 about 74%. Only its owner can score a
//! request, at most `feedback_per_minute` times a minute per router.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use crate::api::request::ParsedRequest;
use crate::config::{Config, Learned};
use crate::encoding;
use crate::learned::{Inputs, Model, ModelError, Online};
use crate::routing::router::LearnedScorer;
use crate::text::push_json_string;

use super::shared::{DataError, SharedData};

pub const FEEDBACK_SLOTS: u64 = 16_384;
/// How long a VM routes with the learning it last read before reading it
/// again: scores reach every worker within this, and a request pays no
/// shared-data read.
pub const LEARNING_REFRESH_MS: u64 = 100;
pub const FEEDBACK_TTL_MS: u64 = 3_600_000;
const CAS_RETRIES: usize = 32;

/// Per router (the order of `config.routers`): its learned model, when it has a
/// `learned` part; a model that cannot be read is refused, naming its field.
pub fn load_models(config: &Config) -> Result<Vec<Option<Model>>, String> {
    config
        .routers
        .iter()
        .map(|r| {
            let Some(learned) = &r.learned else { return Ok(None) };
            let model = match &learned.model {
                None => Model::embedded_default(),
                Some(b64) => encoding::base64_decode(b64)
                    .ok_or_else(|| ModelError("not base64".to_string()))
                    .and_then(|bytes| Model::from_bytes(&bytes)),
            };
            model.map(Some).map_err(|e| format!("invalid configuration: routers.{}.learned.model: {e}", r.name))
        })
        .collect()
}

/// What a learned router decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decided {
    pub router: usize,
    /// Sent to the strong pool.
    pub strong: bool,
    /// Would have gone to strong, sent to weak to learn (`explore`).
    pub explored: bool,
    /// The corrected score (shown in `x-switchboard-route-score`).
    pub score: f64,
    /// The shipped model's logit and the prompt's inputs: what a score learns from.
    pub logit: f32,
    pub inputs: Inputs,
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

/// Where router `learned`'s learning lives: per router name, model and epoch, so a
/// configuration reload that keeps the model keeps the learning, and a new model
/// (or a new `learning_epoch`) starts from nothing.
pub fn learning_key(router: &str, model: &Model, learned: &Learned) -> String {
    format!("switchboard.learned.{router}.{:08x}.{}", model.checksum(), learned.learning_epoch)
}

/// Where the learning of router `index` lives, if it is a learned router with a model.
pub fn learning_key_of(config: &Config, models: &[Option<Model>], index: usize) -> Option<String> {
    let router = config.routers.get(index)?;
    Some(learning_key(&router.name, models.get(index)?.as_ref()?, router.learned.as_ref()?))
}

fn read_learning(data: &dyn SharedData, key: &str) -> Online {
    match data.get(key) {
        Ok((Some(bytes), _)) => Online::decode(&bytes).unwrap_or_default(),
        _ => Online::new(),
    }
}

/// A router's learning and when this VM read it (ms).
type Read = Option<(u64, Arc<Online>)>;

/// Each learned router's learning as this VM (or module) last read it, and when
/// (behind a lock: the dynamic module's workers share one).
pub struct Learning(Mutex<Vec<Read>>);

impl Learning {
    pub fn new(routers: usize) -> Self {
        Learning(Mutex::new(vec![None; routers]))
    }

    /// Router `index`'s learning, read from shared data when older than [`LEARNING_REFRESH_MS`].
    pub fn get(&self, data: &dyn SharedData, index: usize, key: impl FnOnce() -> String, now_ms: u64) -> Arc<Online> {
        let mut cache = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(slot) = cache.get_mut(index) else { return Arc::new(read_learning(data, &key())) };
        match slot {
            Some((read_ms, o)) if now_ms.saturating_sub(*read_ms) < LEARNING_REFRESH_MS => o.clone(),
            _ => {
                let o = Arc::new(read_learning(data, &key()));
                *slot = Some((now_ms, o.clone()));
                o
            }
        }
    }

    /// This VM changed router `index`'s learning: read it again next time.
    pub fn forget(&self, index: usize) {
        if let Some(slot) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(index) {
            *slot = None;
        }
    }
}

/// Learns from a user's score of a weak-pool answer (compare-and-swap in shared data).
pub fn learn(data: &dyn SharedData, key: &str, inputs: &Inputs, logit: f32, score: f32) {
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = data.get(key) else { return };
        let mut o = bytes.as_deref().and_then(Online::decode).unwrap_or_default();
        o.learn(inputs, logit, score);
        match data.set(key, &o.encode(), cas) {
            Ok(()) => return,
            Err(DataError::CasMismatch) => continue,
            Err(DataError::Failed(status)) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return;
            }
        }
    }
}

/// The scorer for one request: scores with the router's model corrected by its
/// learning, explores, and keeps the decision.
pub struct Scorer<'a> {
    pub config: &'a Config,
    pub data: &'a dyn SharedData,
    /// Per router (same order as `config.routers`): its model, when it is learned.
    pub models: &'a [Option<Model>],
    pub learning: &'a Learning,
    pub now_ms: u64,
    pub decided: Cell<Option<Decided>>,
    /// The text scored, kept for the call log when `call_log_prompts` is on.
    pub prompt: RefCell<Option<String>>,
}

impl<'a> Scorer<'a> {
    /// A scorer for one request routed at `now_ms`, nothing decided yet.
    pub fn new(
        config: &'a Config,
        data: &'a dyn SharedData,
        models: &'a [Option<Model>],
        learning: &'a Learning,
        now_ms: u64,
    ) -> Scorer<'a> {
        Scorer { config, data, models, learning, now_ms, decided: Cell::new(None), prompt: RefCell::new(None) }
    }

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
        let online = self.learning.get(self.data, router, || learning_key(name, model, learned), self.now_ms);
        let text = prompt_text(request);
        let d = model.decide(&text, threshold, &online);
        if self.config.call_log && self.config.call_log_prompts {
            *self.prompt.borrow_mut() = Some(text);
        }
        // Exploration: a share of would-be-strong prompts goes to weak, so that weak
        // answers to hard prompts get scored too (chosen by the prompt: deterministic).
        let explored = d.strong && f64::from(d.inputs.draw()) < learned.explore;
        let strong = d.strong && !explored;
        let score = f64::from(d.score);
        self.decided.set(Some(Decided { router, strong, explored, score, logit: d.logit, inputs: d.inputs }));
        Some(if explored { -1.0 } else { score })
    }

    fn threshold_for_share(&self, learned: &Learned, share: f64) -> Option<f64> {
        let model = self.models.get(self.router_of(learned)?)?.as_ref()?;
        Some(f64::from(model.threshold_for_share(share as f32)))
    }
}

/// A learned decision remembered for feedback.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Remembered {
    id_hash: u64,
    expires_ms: u64,
    router: u16,
    strong: bool,
    scored: bool,
    logit: f32,
    inputs: Inputs,
}

const REMEMBERED_LEN: usize = 8 + 8 + 2 + 2 + 4 + Inputs::ENCODED_LEN;

impl Remembered {
    fn encode(&self) -> [u8; REMEMBERED_LEN] {
        let mut out = [0u8; REMEMBERED_LEN];
        let bytes = self
            .id_hash
            .to_le_bytes()
            .into_iter()
            .chain(self.expires_ms.to_le_bytes())
            .chain(self.router.to_le_bytes())
            .chain([u8::from(self.strong), u8::from(self.scored)])
            .chain(self.logit.to_le_bytes())
            .chain(self.inputs.encode());
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = src;
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Remembered> {
        if b.len() != REMEMBERED_LEN {
            return None;
        }
        Some(Remembered {
            id_hash: u64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
            expires_ms: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            router: u16::from_le_bytes(b.get(16..18)?.try_into().ok()?),
            strong: *b.get(18)? != 0,
            scored: *b.get(19)? != 0,
            logit: f32::from_le_bytes(b.get(20..24)?.try_into().ok()?),
            inputs: Inputs::decode(b.get(24..)?)?,
        })
    }
}

fn fnv64(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// FNV-1a of owner and id (stable across VMs, which share the slots): another
/// owner's id is another request.
fn id_hash(owner: &str, request_id: &str) -> u64 {
    fnv64(fnv64(fnv64(0xcbf2_9ce4_8422_2325, owner.as_bytes()), &[0]), request_id.as_bytes())
}

fn slot_key(hash: u64) -> String {
    format!("switchboard.feedback.{}", hash % FEEDBACK_SLOTS)
}

/// Remembers a routed request for its owner's feedback (`owner`: the tenant's
/// name, or "" without tenants).
pub fn remember(data: &dyn SharedData, owner: &str, request_id: &str, decided: &Decided, now_ms: u64) {
    let hash = id_hash(owner, request_id);
    let entry = Remembered {
        id_hash: hash,
        expires_ms: now_ms.saturating_add(FEEDBACK_TTL_MS),
        router: u16::try_from(decided.router).unwrap_or(u16::MAX),
        strong: decided.strong,
        scored: false,
        logit: decided.logit,
        inputs: decided.inputs,
    };
    if let Err(e) = data.set(&slot_key(hash), &entry.encode(), 0) {
        log::warn!("switchboard[{request_id}]: remembering the learned decision failed ({e:?})");
    }
}

/// A weak-pool answer's score to learn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub router: usize,
    pub logit: f32,
    pub inputs: Inputs,
}

/// How a score was taken (the label is this store's).
pub type Feedback = super::Feedback<Label>;

/// Counts one score of `owner` for `router` in the current minute; false when over `limit`.
fn within_rate(data: &dyn SharedData, owner: &str, router: u16, limit: u32, now_ms: u64) -> bool {
    let key = format!("switchboard.feedback.rate.{router}.{:016x}", id_hash(owner, ""));
    let minute = now_ms / 60_000;
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = data.get(&key) else { return true };
        let (at, n) = match bytes.as_deref().map(|b| (b.get(0..8), b.get(8..12))) {
            Some((Some(a), Some(n))) => (
                u64::from_le_bytes(a.try_into().unwrap_or_default()),
                u32::from_le_bytes(n.try_into().unwrap_or_default()),
            ),
            _ => (minute, 0),
        };
        let n = if at == minute { n } else { 0 };
        if n >= limit {
            return false;
        }
        let value: Vec<u8> = minute.to_le_bytes().into_iter().chain((n + 1).to_le_bytes()).collect();
        match data.set(&key, &value, cas) {
            Ok(()) => return true,
            Err(DataError::CasMismatch) => continue,
            Err(DataError::Failed(_)) => return true,
        }
    }
    true
}

/// Marks `owner`'s request `request_id` scored, once, within the router's rate.
pub fn take_feedback(data: &dyn SharedData, config: &Config, owner: &str, request_id: &str, now_ms: u64) -> Feedback {
    let hash = id_hash(owner, request_id);
    let key = slot_key(hash);
    let mut counted = false;
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = data.get(&key) else { return Feedback::Unknown };
        let Some(mut entry) = bytes.as_deref().and_then(Remembered::decode) else { return Feedback::Unknown };
        if entry.id_hash != hash || entry.expires_ms <= now_ms {
            return Feedback::Unknown;
        }
        if entry.scored {
            return Feedback::AlreadyScored;
        }
        let limit = config
            .routers
            .get(usize::from(entry.router))
            .and_then(|r| r.learned.as_ref())
            .map_or(0, |l| l.feedback_per_minute);
        if !counted {
            if !within_rate(data, owner, entry.router, limit, now_ms) {
                return Feedback::TooMany { limit, retry_after_s: 60 - (now_ms / 1000) % 60 };
            }
            counted = true;
        }
        entry.scored = true;
        match data.set(&key, &entry.encode(), cas) {
            Ok(()) => {
                let label = (!entry.strong).then_some(Label {
                    router: usize::from(entry.router),
                    logit: entry.logit,
                    inputs: entry.inputs,
                });
                return Feedback::Accepted(label);
            }
            Err(DataError::CasMismatch) => continue,
            Err(DataError::Failed(_)) => return Feedback::Unknown,
        }
    }
    Feedback::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_round_trips() {
        let r = Remembered {
            id_hash: 7,
            expires_ms: 9,
            router: 2,
            strong: true,
            scored: false,
            logit: -1.5,
            inputs: Inputs::default(),
        };
        assert_eq!(Remembered::decode(&r.encode()), Some(r));
        assert_eq!(Remembered::decode(b"short"), None);
    }

    #[test]
    fn learning_is_kept_per_router_model_and_epoch() {
        use crate::config::Cutoff;
        let m = Model::embedded_default().unwrap();
        let l = Learned {
            strong: 0,
            weak: 1,
            cutoff: Cutoff::Threshold(0.5),
            model: None,
            explore: 0.05,
            feedback_per_minute: 600,
            learning_epoch: 0,
        };
        let key = learning_key("r", &m, &l);
        // A reload that changes other settings keeps the learning...
        assert_eq!(
            key,
            learning_key("r", &m, &Learned { explore: 0.2, cutoff: Cutoff::StrongShare(0.3), ..l.clone() })
        );
        // ...a new epoch (the reset) or another router does not.
        assert_ne!(key, learning_key("r", &m, &Learned { learning_epoch: 1, ..l.clone() }));
        assert_ne!(key, learning_key("s", &m, &l));
    }

    #[test]
    fn another_owner_is_another_request() {
        assert_ne!(id_hash("a", "req-1"), id_hash("b", "req-1"));
        assert_ne!(id_hash("ab", "c"), id_hash("a", "bc"));
    }

    /// A config with one learned router taking `per_minute` scores a minute.
    fn learned_config(per_minute: u32) -> Config {
        let json = crate::config::tests::sample_config().replacen(
            "\"pools\": {",
            &format!(
                r#""routers": {{"smart": {{"learned": {{"strong": "gpt4o_16k", "weak": "gpt-4o", "threshold": 0.5,
                   "feedback_per_minute": {per_minute}}}}}}}, "pools": {{"#
            ),
            1,
        );
        Config::parse(json.as_bytes(), &crate::config::tests::ENV).unwrap()
    }

    fn decided(strong: bool) -> Decided {
        Decided { router: 0, strong, explored: false, score: 0.3, logit: -0.5, inputs: Inputs::default() }
    }

    /// Counts what remembering costs in shared data.
    #[derive(Default)]
    struct Counted(crate::exchange::shared::Memory, Cell<(usize, usize)>);

    impl SharedData for Counted {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), u32> {
            self.1.set((self.1.get().0 + 1, self.1.get().1));
            self.0.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), DataError> {
            self.1.set((self.1.get().0, self.1.get().1 + 1));
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn remembering_a_decision_is_one_write_and_no_read() {
        let data = Counted::default();
        for i in 0..100 {
            remember(&data, "t", &format!("{i:016x}"), &decided(false), 1_000);
        }
        assert_eq!(data.1.get(), (0, 100));
    }

    #[test]
    fn a_weak_answer_is_scored_once_by_its_owner_within_the_hour() {
        let (data, config) = (Counted::default(), learned_config(600));
        remember(&data, "t1", "id-1", &decided(false), 1_000);
        assert_eq!(take_feedback(&data, &config, "t2", "id-1", 2_000), Feedback::Unknown, "another tenant's");
        assert_eq!(take_feedback(&data, &config, "t1", "id-2", 2_000), Feedback::Unknown, "never routed");
        let label = Label { router: 0, logit: -0.5, inputs: Inputs::default() };
        assert_eq!(take_feedback(&data, &config, "t1", "id-1", 2_000), Feedback::Accepted(Some(label)));
        assert_eq!(take_feedback(&data, &config, "t1", "id-1", 3_000), Feedback::AlreadyScored);
        remember(&data, "t1", "id-3", &decided(true), 1_000);
        let expired = 1_000 + FEEDBACK_TTL_MS;
        assert_eq!(take_feedback(&data, &config, "t1", "id-3", expired), Feedback::Unknown);
        assert_eq!(take_feedback(&data, &config, "t1", "id-3", expired - 1), Feedback::Accepted(None), "strong: no label");
    }

    #[test]
    fn scores_are_limited_per_owner_and_minute() {
        let (data, config) = (Counted::default(), learned_config(2));
        for i in 0..3 {
            remember(&data, "t1", &format!("a{i}"), &decided(false), 1_000);
            remember(&data, "t2", &format!("b{i}"), &decided(false), 1_000);
        }
        let taken = |owner, id: &str, now| take_feedback(&data, &config, owner, id, now);
        assert!(matches!(taken("t1", "a0", 1_000), Feedback::Accepted(Some(_))));
        assert!(matches!(taken("t1", "a1", 2_000), Feedback::Accepted(Some(_))));
        assert_eq!(taken("t1", "a2", 3_000), Feedback::TooMany { limit: 2, retry_after_s: 57 });
        assert!(matches!(taken("t2", "b0", 3_000), Feedback::Accepted(Some(_))), "another owner's minute");
        assert!(matches!(taken("t1", "a2", 60_000), Feedback::Accepted(Some(_))), "the next minute");
    }
}

