//! Learned routers' shared state, for any host: the scorer the routing stage
//! calls (with each router's learning from shared data), and the memory of
//! recent learned decisions that `POST /v1/feedback` scores. Both live in the
//! host's [`SharedData`] (proxy-wasm's shared data, or the dynamic module's
//! process memory), so every worker routes with the same learning.
//!
//! Memory is bounded: each VM (worker) writes its decisions to its own lane of
//! [`PAGES_PER_LANE`] pages of [`PAGE_LEN`] records in shared data (its last
//! 4,080 to 4,096 decisions, 870 KB), each valid for `FEEDBACK_TTL_MS`. Remembering is
//! no shared-data call on the request's path (see [`Journal`]). Only its owner
//! can score a request, at most `feedback_per_minute` times a minute per router.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use crate::api::request::ParsedRequest;
use crate::config::{Config, Learned};
use crate::encoding;
use crate::learned::{Inputs, Model, ModelError, Online};
use crate::routing::router::LearnedScorer;
use crate::text::push_json_string;

use super::shared::{DataError, SharedData};

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
    logit: f32,
    inputs: Inputs,
}

const REMEMBERED_LEN: usize = 8 + 8 + 2 + 2 + 4 + Inputs::ENCODED_LEN;

impl Remembered {
    fn encode(&self) -> [u8; REMEMBERED_LEN] {
        let mut out = [0u8; REMEMBERED_LEN];
        let (head, inputs) = out.split_at_mut(24);
        let (id_hash, rest) = head.split_at_mut(8);
        let (expires, rest) = rest.split_at_mut(8);
        let (router, rest) = rest.split_at_mut(2);
        let (flags, logit) = rest.split_at_mut(2);
        id_hash.copy_from_slice(&self.id_hash.to_le_bytes());
        expires.copy_from_slice(&self.expires_ms.to_le_bytes());
        router.copy_from_slice(&self.router.to_le_bytes());
        flags.copy_from_slice(&[u8::from(self.strong), 0]);
        logit.copy_from_slice(&self.logit.to_le_bytes());
        inputs.copy_from_slice(&self.inputs.encode());
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

/// Records per page: a page is one shared-data value (up to 16 x 212 bytes).
pub const PAGE_LEN: u64 = 16;
/// Pages per lane: a lane keeps its last 4,080 to 4,096 decisions.
pub const PAGES_PER_LANE: u64 = 256;
/// Lanes: one per VM (worker) or dynamic module configuration at a time.
pub const MAX_LANES: u32 = 256;
/// A lane whose owner has not said it is alive for this long can be taken.
const LANE_STALE_MS: u64 = 120_000;
const LANE_HEARTBEAT_MS: u64 = 30_000;
/// Decisions are published at least this soon after they were made (on the
/// tick), so another worker finds them; a score that finds nothing waits
/// [`FEEDBACK_WAIT_MS`] once before it is unknown.
pub const PUBLISH_AFTER_MS: u64 = 20;
pub const FEEDBACK_WAIT_MS: u64 = 150;

fn lane_key(lane: u32) -> String {
    format!("switchboard.feedback.lane.{lane}")
}

/// The page of the lane that holds record `seq`.
fn page_of(seq: u64) -> u64 {
    (seq / PAGE_LEN) % PAGES_PER_LANE
}

fn page_key(lane: u32, seq: u64) -> String {
    format!("switchboard.feedback.{lane}.{}", page_of(seq))
}

/// Which of a page's records were scored: the page's generation (`seq /
/// PAGE_LEN`, so marks of the page's previous use do not count) and a bit a record.
fn marks_key(lane: u32, seq: u64) -> String {
    format!("switchboard.feedback.{lane}.{}.scored", page_of(seq))
}

/// Two numbers as a shared-data value (a lane's owner and heartbeat, a page's generation and marks).
fn pair_value(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (first, second) = out.split_at_mut(8);
    first.copy_from_slice(&a.to_le_bytes());
    second.copy_from_slice(&b.to_le_bytes());
    out
}

fn read_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

/// A feedback id: lane, sequence number in the lane, and 64 random bits
/// (so that ids cannot be guessed from one another).
fn feedback_id(lane: u32, seq: u64, random: u64) -> String {
    format!("{lane:04x}{seq:012x}{random:016x}")
}

fn parse_feedback_id(id: &str) -> Option<(u32, u64)> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lane = u32::from_str_radix(id.get(..4)?, 16).ok()?;
    let seq = u64::from_str_radix(id.get(4..16)?, 16).ok()?;
    (lane < MAX_LANES).then_some((lane, seq))
}

#[derive(Default)]
struct JournalState {
    /// The lane this journal writes (index, owner token), once claimed.
    lane: Option<(u32, u64)>,
    heartbeat_ms: u64,
    /// The next decision's sequence number in the lane.
    seq: u64,
    /// The current page's records so far (`seq % PAGE_LEN` of them).
    page: Vec<Remembered>,
    /// When the oldest record not yet in shared data was made.
    unpublished_since: Option<u64>,
    /// The current page's marks were reset for its generation.
    marks_reset: bool,
}

impl JournalState {
    /// The sequence number of the current page's first record.
    fn first(&self) -> u64 {
        self.seq.saturating_sub(self.page.len() as u64)
    }

    /// Clears the current page's marks for its generation, once, before anyone
    /// can find its records: whoever scores one then marks an existing key with
    /// compare-and-swap (a first write could lose another's mark).
    fn ready_marks(&mut self, data: &dyn SharedData, lane: u32) {
        if self.marks_reset {
            return;
        }
        let first = self.first();
        if let Err(e) = data.set(&marks_key(lane, first), &pair_value(first / PAGE_LEN, 0), 0) {
            log::warn!("switchboard: writing feedback lane {lane} failed ({e:?})");
        }
        self.marks_reset = true;
    }
}

/// The learned decisions of one VM (or of the dynamic module), remembered
/// for feedback. Remembering costs no shared-data call on a request's path:
/// decisions go to this VM's page of its own lane, and the page is written to
/// shared data (only its owner writes it; scores mark a separate key) when it
/// is full and on the tick [`PUBLISH_AFTER_MS`] after its oldest unpublished
/// decision; a score taken on this VM reads its current page here.
#[derive(Default)]
pub struct Journal(Mutex<JournalState>);

impl Journal {
    pub fn new() -> Self {
        Journal::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a routed request for its owner's feedback (`owner`: the
    /// tenant's name, or "" without tenants) and returns its feedback id;
    /// `None` when every lane is taken (the answer is then not scorable).
    pub fn remember(
        &self,
        data: &dyn SharedData,
        owner: &str,
        decided: &Decided,
        now_ms: u64,
        random: u64,
    ) -> Option<String> {
        let mut st = self.state();
        let lane = match st.lane {
            Some((lane, _)) => lane,
            None => {
                let (lane, token) = claim_lane(data, random, now_ms)?;
                *st = JournalState { lane: Some((lane, token)), heartbeat_ms: now_ms, ..JournalState::default() };
                lane
            }
        };
        let seq = st.seq;
        let id = feedback_id(lane, seq, random);
        st.page.push(Remembered {
            id_hash: id_hash(owner, &id),
            expires_ms: now_ms.saturating_add(FEEDBACK_TTL_MS),
            router: u16::try_from(decided.router).unwrap_or(u16::MAX),
            strong: decided.strong,
            logit: decided.logit,
            inputs: decided.inputs,
        });
        st.seq = seq + 1;
        st.unpublished_since.get_or_insert(now_ms);
        if st.seq.is_multiple_of(PAGE_LEN) {
            publish(data, &mut st);
        }
        Some(id)
    }

    /// Publishes decisions older than [`PUBLISH_AFTER_MS`] and says this
    /// journal's lane is still in use (the host's tick).
    pub fn tick(&self, data: &dyn SharedData, now_ms: u64) {
        let mut st = self.state();
        if st.unpublished_since.is_some_and(|since| now_ms.saturating_sub(since) >= PUBLISH_AFTER_MS) {
            publish(data, &mut st);
        }
        if let Some((lane, token)) = st.lane {
            if now_ms.saturating_sub(st.heartbeat_ms) >= LANE_HEARTBEAT_MS {
                st.heartbeat_ms = now_ms;
                if !renew_lane(data, lane, token, now_ms) {
                    // Taken by another VM after this one went quiet: start again in a new lane.
                    *st = JournalState::default();
                }
            }
        }
    }

    /// Record `seq` of `lane` when it is on this journal's current page (not
    /// necessarily published yet), with the page's marks ready for a score.
    fn current(&self, data: &dyn SharedData, lane: u32, seq: u64) -> Option<Remembered> {
        let mut st = self.state();
        let (mine, _) = st.lane?;
        let first = st.first();
        if mine != lane || seq < first {
            return None;
        }
        let record = *st.page.get(usize::try_from(seq - first).ok()?)?;
        st.ready_marks(data, lane);
        Some(record)
    }

    /// Publishes and gives the lane back (the configuration that used it is replaced).
    pub fn release(&self, data: &dyn SharedData) {
        let mut st = self.state();
        if st.unpublished_since.is_some() {
            publish(data, &mut st);
        }
        if let Some((lane, token)) = st.lane.take() {
            if let Ok((Some(bytes), cas)) = data.get(&lane_key(lane)) {
                if read_pair(&bytes).is_some_and(|(owner, _)| owner == token) {
                    let _ = data.set(&lane_key(lane), &[], cas);
                }
            }
        }
    }
}

/// The first lane nobody holds (never used, given back, or stale), taken with compare-and-swap.
fn claim_lane(data: &dyn SharedData, random: u64, now_ms: u64) -> Option<(u32, u64)> {
    let token = random | 1;
    for lane in 0..MAX_LANES {
        let key = lane_key(lane);
        let Ok((bytes, cas)) = data.get(&key) else { continue };
        // A lane's value: its owner's token and when it last said it is alive.
        let held =
            bytes.as_deref().and_then(read_pair).is_some_and(|(_, at)| now_ms.saturating_sub(at) < LANE_STALE_MS);
        if !held && data.set(&key, &pair_value(token, now_ms), cas).is_ok() {
            return Some((lane, token));
        }
    }
    log::warn!("switchboard: all {MAX_LANES} feedback lanes are in use; learned answers are not scorable");
    None
}

/// Says lane `lane` is still `token`'s; false when another took it.
fn renew_lane(data: &dyn SharedData, lane: u32, token: u64, now_ms: u64) -> bool {
    let key = lane_key(lane);
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = data.get(&key) else { return true };
        if bytes.as_deref().and_then(read_pair).map(|(t, _)| t) != Some(token) {
            return false;
        }
        match data.set(&key, &pair_value(token, now_ms), cas) {
            Err(DataError::CasMismatch) => continue,
            _ => return true,
        }
    }
    true
}

/// Writes the journal's current page into shared data (the records so far:
/// the page's previous use is dropped); a full page is then left behind.
fn publish(data: &dyn SharedData, st: &mut JournalState) {
    let Some((lane, token)) = st.lane else { return };
    // Two VMs that took the same free lane at the same moment (a first write
    // has no compare-and-swap) learn it here: the one that lost starts again
    // in a new lane, and the decisions it had not published are not scorable.
    let owner = data.get(&lane_key(lane)).ok().and_then(|(bytes, _)| bytes.as_deref().and_then(read_pair));
    if owner.is_some_and(|(t, _)| t != token) {
        log::warn!("switchboard: feedback lane {lane} was taken by another worker; moving to another");
        *st = JournalState::default();
        return;
    }
    st.ready_marks(data, lane);
    let page: Vec<u8> = st.page.iter().flat_map(|r| r.encode()).collect();
    if let Err(e) = data.set(&page_key(lane, st.first()), &page, 0) {
        log::warn!("switchboard: writing feedback lane {lane} failed ({e:?})");
    }
    st.unpublished_since = None;
    if st.seq.is_multiple_of(PAGE_LEN) {
        st.page.clear();
        st.marks_reset = false;
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
/// `Feedback::NotYet` when nothing is found and the score has not waited yet:
/// another worker may not have published the decision (see [`Journal`]).
pub fn take_feedback(
    data: &dyn SharedData,
    config: &Config,
    journal: &Journal,
    (owner, request_id): (&str, &str),
    waited: bool,
    now_ms: u64,
) -> Feedback {
    let Some((lane, seq)) = parse_feedback_id(request_id) else { return Feedback::Unknown };
    let hash = id_hash(owner, request_id);
    let at = (seq % PAGE_LEN) as usize * REMEMBERED_LEN;
    let entry = journal.current(data, lane, seq).or_else(|| match data.get(&page_key(lane, seq)) {
        Ok((Some(page), _)) => page.get(at..at + REMEMBERED_LEN).and_then(Remembered::decode),
        _ => None,
    });
    let Some(entry) = entry.filter(|e| e.id_hash == hash) else {
        return if waited { Feedback::Unknown } else { Feedback::NotYet };
    };
    if entry.expires_ms <= now_ms {
        return Feedback::Unknown;
    }
    let (key, generation, bit) = (marks_key(lane, seq), seq / PAGE_LEN, 1u64 << (seq % PAGE_LEN));
    let limit = config
        .routers
        .get(usize::from(entry.router))
        .and_then(|r| r.learned.as_ref())
        .map_or(0, |l| l.feedback_per_minute);
    let mut counted = false;
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = data.get(&key) else { return Feedback::Unknown };
        let marks = bytes.as_deref().and_then(read_pair).filter(|(g, _)| *g == generation).map_or(0, |(_, bits)| bits);
        if marks & bit != 0 {
            return Feedback::AlreadyScored;
        }
        if !counted {
            if !within_rate(data, owner, entry.router, limit, now_ms) {
                return Feedback::TooMany { limit, retry_after_s: 60 - (now_ms / 1000) % 60 };
            }
            counted = true;
        }
        match data.set(&key, &pair_value(generation, marks | bit), cas) {
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
        let r =
            Remembered { id_hash: 7, expires_ms: 9, router: 2, strong: true, logit: -1.5, inputs: Inputs::default() };
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

    fn take(data: &dyn SharedData, config: &Config, journal: &Journal, owner: &str, id: &str, now: u64) -> Feedback {
        take_feedback(data, config, journal, (owner, id), true, now)
    }

    #[test]
    fn remembering_makes_no_shared_data_call_until_a_page_is_full() {
        let (data, journal) = (Counted::default(), Journal::new());
        journal.remember(&data, "t", &decided(false), 1_000, 7).unwrap();
        let claimed = data.1.get();
        assert_eq!(claimed, (1, 1), "the first free lane, taken once");
        for i in 1..PAGE_LEN - 1 {
            journal.remember(&data, "t", &decided(false), 1_000, i).unwrap();
        }
        assert_eq!(data.1.get(), claimed);
        journal.remember(&data, "t", &decided(false), 1_000, 99).unwrap();
        assert_eq!(data.1.get(), (claimed.0 + 1, claimed.1 + 2), "the full page: lane check, its marks, its records");
    }

    #[test]
    fn a_weak_answer_is_scored_once_by_its_owner_within_the_hour() {
        let (data, config, journal) = (Counted::default(), learned_config(600), Journal::new());
        let id = journal.remember(&data, "t1", &decided(false), 1_000, 42).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(take(&data, &config, &journal, "t2", &id, 2_000), Feedback::Unknown, "another tenant's");
        let forged = format!("{}{}", &id[..16], "0123456789abcdef");
        assert_eq!(take(&data, &config, &journal, "t1", &forged, 2_000), Feedback::Unknown, "never routed");
        assert_eq!(take(&data, &config, &journal, "t1", "req-1", 2_000), Feedback::Unknown, "not an id of ours");
        let label = Label { router: 0, logit: -0.5, inputs: Inputs::default() };
        assert_eq!(take(&data, &config, &journal, "t1", &id, 2_000), Feedback::Accepted(Some(label)));
        assert_eq!(take(&data, &config, &journal, "t1", &id, 3_000), Feedback::AlreadyScored);
        let strong = journal.remember(&data, "t1", &decided(true), 1_000, 43).unwrap();
        let expired = 1_000 + FEEDBACK_TTL_MS;
        assert_eq!(take(&data, &config, &journal, "t1", &strong, expired), Feedback::Unknown);
        assert_eq!(take(&data, &config, &journal, "t1", &strong, expired - 1), Feedback::Accepted(None), "no label");
    }

    #[test]
    fn another_worker_finds_a_decision_once_it_is_published_and_marks_survive_republishing() {
        let (data, config) = (crate::exchange::shared::Memory::default(), learned_config(600));
        let (mine, theirs) = (Journal::new(), Journal::new());
        let first = mine.remember(&data, "t", &decided(false), 1_000, 1).unwrap();
        let asked = take_feedback(&data, &config, &theirs, ("t", &first), false, 1_001);
        assert_eq!(asked, Feedback::NotYet, "not published yet: the score waits");
        mine.tick(&data, 1_000 + PUBLISH_AFTER_MS - 1);
        assert_eq!(take_feedback(&data, &config, &theirs, ("t", &first), false, 1_010), Feedback::NotYet);
        mine.tick(&data, 1_000 + PUBLISH_AFTER_MS);
        assert!(matches!(take(&data, &config, &theirs, "t", &first, 1_030), Feedback::Accepted(Some(_))));
        // The same page written again (a newer decision) keeps the mark made by the other worker.
        let second = mine.remember(&data, "t", &decided(false), 1_040, 2).unwrap();
        mine.tick(&data, 1_040 + PUBLISH_AFTER_MS);
        assert_eq!(take(&data, &config, &theirs, "t", &first, 1_050), Feedback::AlreadyScored);
        assert!(matches!(take(&data, &config, &theirs, "t", &second, 1_050), Feedback::Accepted(Some(_))));
        // Each journal has its own lane.
        let other = theirs.remember(&data, "t", &decided(false), 1_060, 3).unwrap();
        assert_ne!(other[..4], first[..4]);
    }

    #[test]
    fn a_lane_is_taken_once_and_given_back() {
        let data = crate::exchange::shared::Memory::default();
        let (a, b) = (Journal::new(), Journal::new());
        let in_a = a.remember(&data, "", &decided(false), 1_000, 1).unwrap();
        assert_eq!(&in_a[..4], "0000");
        assert_eq!(&b.remember(&data, "", &decided(false), 1_000, 2).unwrap()[..4], "0001");
        a.release(&data);
        let config = learned_config(600);
        assert!(matches!(take(&data, &config, &a, "", &in_a, 1_000), Feedback::Accepted(Some(_))));
        let c = Journal::new();
        let in_c = c.remember(&data, "", &decided(false), 1_000, 3).unwrap();
        assert_eq!(&in_c[..4], "0000", "given back");
        assert_eq!(take(&data, &config, &c, "", &in_a, 1_000), Feedback::Unknown, "the lane's old record is gone");
        assert!(
            matches!(take(&data, &config, &c, "", &in_c, 1_000), Feedback::Accepted(Some(_))),
            "old marks do not count"
        );
        // A lane whose owner stopped saying it is alive is taken; the old owner moves on.
        c.tick(&data, 1_000 + LANE_HEARTBEAT_MS);
        let d = Journal::new();
        let later = 1_000 + LANE_STALE_MS;
        assert_eq!(&d.remember(&data, "", &decided(false), later, 4).unwrap()[..4], "0001");
        b.tick(&data, later);
        assert_eq!(&b.remember(&data, "", &decided(false), later, 5).unwrap()[..4], "0002");
    }

    #[test]
    fn scores_are_limited_per_owner_and_minute() {
        let (data, config, journal) = (Counted::default(), learned_config(2), Journal::new());
        let ids: Vec<(String, String)> = (0..3)
            .map(|i| {
                let a = journal.remember(&data, "t1", &decided(false), 1_000, 2 * i).unwrap();
                (a, journal.remember(&data, "t2", &decided(false), 1_000, 2 * i + 1).unwrap())
            })
            .collect();
        let taken = |owner, id: &str, now| take(&data, &config, &journal, owner, id, now);
        assert!(matches!(taken("t1", &ids[0].0, 1_000), Feedback::Accepted(Some(_))));
        assert!(matches!(taken("t1", &ids[1].0, 2_000), Feedback::Accepted(Some(_))));
        assert_eq!(taken("t1", &ids[2].0, 3_000), Feedback::TooMany { limit: 2, retry_after_s: 57 });
        assert!(matches!(taken("t2", &ids[0].1, 3_000), Feedback::Accepted(Some(_))), "another owner's minute");
        assert!(matches!(taken("t1", &ids[2].0, 60_000), Feedback::Accepted(Some(_))), "the next minute");
    }
}
