//! What every request of a VM shares: the validated configuration, the model
//! listing, metrics, the random source and the VM's view of member health;
//! and the bookkeeping of one attempt (pick, record), the same for the
//! routed request and every failover call.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;

use crate::api::models::ModelListing;
use crate::api::response_ids::Holder;
use crate::config::Config;
use crate::config::{Member, MemberRef};
use crate::exchange::learning;
use crate::exchange::{Count, Picked, Shared};
use crate::learned::Model;
use crate::routing::exhausted::PassedOver;
use crate::routing::health::retry_after_until_ms;
use crate::routing::silence::{self, LastAnswer};
use crate::routing::{Availability, LatencyKind, LiveStats, Plan, Rng, Transition};

use super::metrics::Metrics;
use super::{abi, canary_store, health_store, live_store};

/// What strategies see of members: health from the VM's cache, load and
/// latency from shared data (read only for the strategies that use them).
struct SharedStats<'c> {
    health: RefCell<std::cell::RefMut<'c, health_store::HealthCache>>,
    now: u64,
    rolled_back: &'c [String],
}

impl LiveStats for SharedStats<'_> {
    fn availability(&self, member: &Member) -> Availability {
        self.health.borrow_mut().get(&member.id).availability(self.now)
    }

    fn in_flight(&self, member: &Member) -> u32 {
        live_store::in_flight(&member.id)
    }

    fn latency_ms(&self, member: &Member, kind: LatencyKind) -> Option<f64> {
        live_store::latency(&member.id).get(kind)
    }

    fn rolled_back(&self, member: &Member) -> bool {
        self.rolled_back.contains(&member.id)
    }
}

pub struct Runtime {
    pub config: Config,
    pub listing: ModelListing,
    /// Per tenant (same order as `config.tenants`): what it may use.
    pub tenant_listings: Vec<ModelListing>,
    /// Per router (same order as `config.routers`): its learned model, if it has a `learned` part.
    pub learned_models: Vec<Option<Model>>,
    /// Per router: its learning from feedback as this VM last read it from shared data.
    pub learned_learning: learning::Learning,
    /// This plugin's learned decisions remembered for feedback (its lane is
    /// given back when Envoy removes the plugin, e.g. for a new configuration).
    pub journal: std::rc::Rc<learning::Journal>,
    pub metrics: Metrics,
    rng: RefCell<Rng>,
    /// Successes of healthy members not yet added to shared data (flushed on tick).
    pending_successes: RefCell<HashMap<String, u64>>,
    health: RefCell<health_store::HealthCache>,
    /// Fingerprint of the configuration: canary windows are kept per configuration.
    pub canary_generation: u64,
    /// Canaries rolled back (member ids), as this VM last saw shared data.
    rolled_back: RefCell<Vec<String>>,
    /// Per pool and member: its last successful answer on this VM, the
    /// evidence that tells a hung member from a slow one (`routing::silence`),
    /// and whether it is newer than what this VM last published to the others.
    last_answers: RefCell<Vec<Vec<(LastAnswer, bool)>>>,
}

impl Runtime {
    /// Everything requests share; refuses a learned model that cannot be read, naming its field.
    pub fn new(config: Config) -> Result<Runtime, String> {
        let learned_models = learning::load_models(&config)?;
        Ok(Runtime::with_models(config, learned_models))
    }

    fn with_models(config: Config, learned_models: Vec<Option<Model>>) -> Runtime {
        let last_answers = config.pools.iter().map(|p| vec![(LastAnswer::default(), false); p.members.len()]).collect();
        let tenant_listings =
            config.tenants.iter().flatten().map(|t| ModelListing::build_for(&config, &|name| t.allows(name))).collect();
        Runtime {
            listing: ModelListing::build(&config),
            tenant_listings,
            learned_learning: learning::Learning::new(learned_models.len()),
            journal: std::rc::Rc::default(),
            learned_models,
            metrics: Metrics::define(&config),
            config,
            rng: RefCell::new(Rng::from_entropy()),
            pending_successes: RefCell::new(HashMap::default()),
            health: RefCell::new(health_store::HealthCache::default()),
            canary_generation: 0,
            rolled_back: RefCell::new(Vec::new()),
            last_answers: RefCell::new(last_answers),
        }
    }

    /// A successful answer of `member` that ended at `now` after `took_ms`.
    pub fn note_answered(&self, member: MemberRef, now: u64, took_ms: u64) {
        if let Some(slot) = self.last_answers.borrow_mut().get_mut(member.pool).and_then(|p| p.get_mut(member.member)) {
            *slot = (LastAnswer { at_ms: now, took_ms }, true);
        }
    }

    /// Whether a client that left after `waited_ms` without an answer from
    /// `member` counts as that member's failure: the pool's other members
    /// have been answering much faster, as this worker or any other saw it.
    pub fn abort_is_failure(&self, member: MemberRef, waited_ms: u64, now: u64) -> bool {
        let answers = self.last_answers.borrow();
        let (Some(local), Some(pool)) = (answers.get(member.pool), self.config.pool_at(member.pool)) else {
            return false;
        };
        let peers = local
            .iter()
            .zip(&pool.members)
            .enumerate()
            .filter(|(i, _)| *i != member.member)
            .map(|(_, ((seen, _), m))| seen.newer(live_store::last_answer(&m.id)));
        silence::abort_is_failure(waited_ms, now, peers)
    }

    /// Tick: the answers this VM saw since the last tick, for the other workers.
    pub fn publish_answers(&self) {
        let mut answers = self.last_answers.borrow_mut();
        for (pool, local) in self.config.pools.iter().zip(answers.iter_mut()) {
            for (member, (seen, unpublished)) in pool.members.iter().zip(local.iter_mut()) {
                if std::mem::take(unpublished) {
                    live_store::publish_answer(&member.id, *seen);
                }
            }
        }
    }

    pub fn random(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    /// The member's identity `provider/model`, for logs and headers.
    pub fn member_id(&self, r: MemberRef) -> &str {
        self.config.member(r).map_or("?", |m| m.id.as_str())
    }

    /// Chooses the next member of the plan. A member past its cooldown takes
    /// one trial request: it is claimed here so other workers keep skipping it
    /// until the trial ends.
    pub fn pick(&self, plan: &mut Plan, now: u64) -> Option<Picked> {
        let random = self.random();
        let mut cache = self.health.borrow_mut();
        cache.refresh();
        let rolled_back = self.rolled_back.borrow();
        let stats = SharedStats { health: RefCell::new(cache), now, rolled_back: &rolled_back };
        let member = plan.next_member(&self.config, &stats, random)?;
        let (pool, m, _) = self.config.resolve(member)?;
        let health = stats.health.borrow_mut().get(&m.id);
        drop(stats);
        if health.availability(now) == Availability::Trial {
            let hold = pool.retry.trial_hold_ms();
            health_store::update(&m.id, |h| {
                h.begin_trial(now, hold);
                Transition::None
            });
        }
        Some(Picked { member, health })
    }

    /// Records how an attempt ended (the plan has it already), once: in
    /// shared health, canary windows and metrics.
    fn record_attempt(
        &self,
        picked: Picked,
        status: u16,
        failed: bool,
        retry_after: Option<&str>,
        now: u64,
        request_id: &str,
    ) {
        let MemberRef { pool: pool_index, member: member_index } = picked.member;
        let Some(pool) = self.config.pool_at(pool_index) else { return };
        let Some(member) = pool.members.get(member_index) else { return };
        if pool.members.iter().any(|m| m.canary.is_some()) {
            self.count_canaries(pool_index, member_index, failed, now, request_id);
        }
        let metrics = self.metrics.member(pool_index, member_index);
        let transition = if failed {
            self.metrics.inc(metrics.and_then(|m| m.failures));
            let hold =
                retry_after.filter(|_| status == 429 || status == 503).and_then(|v| retry_after_until_ms(v, now));
            health_store::update(&member.id, |h| match hold {
                Some(until) => h.record_held_failure(now, until, &pool.health),
                None => h.record_failure(now, &pool.health),
            })
        } else {
            self.metrics.inc(metrics.and_then(|m| m.requests));
            if picked.health.is_clean() {
                // Nothing to reset: count the success locally, flushed to shared data on tick.
                self.note_success(&member.id);
                Transition::None
            } else {
                health_store::update(&member.id, |h| h.record_success())
            }
        };
        match transition {
            Transition::Ejected { until_ms } => {
                self.metrics.inc(metrics.and_then(|m| m.ejections));
                log::info!(
                    "switchboard[{request_id}]: member {} ejected for {} ms (last status {status})",
                    member.id,
                    until_ms.saturating_sub(now)
                );
            }
            Transition::Restored => {
                self.metrics.inc(metrics.and_then(|m| m.restorations));
                log::info!("switchboard[{request_id}]: member {} restored", member.id);
            }
            Transition::None => {}
        }
    }

    /// Counts an attempt in its pool's canary windows; a canary this rolls
    /// back gets weight 0 on this worker now, on the others by their next tick.
    fn count_canaries(&self, pool_index: usize, member_index: usize, failed: bool, now: u64, request_id: &str) {
        let Some(pool) = self.config.pool_at(pool_index) else { return };
        // A clean success is recorded without the clock.
        let now = if now == 0 { super::abi::now_ms().unwrap_or(0) } else { now };
        for (index, canary_rate, others_rate, requests) in
            canary_store::record(self.canary_generation, pool, member_index, failed, now / 1000)
        {
            let Some(member) = pool.members.get(index) else { continue };
            self.metrics.inc(self.metrics.member(pool_index, index).and_then(|m| m.canary_rollbacks));
            log::warn!(
                "switchboard[{request_id}]: canary {} rolled back (weight 0 until the configuration changes): \
                 error rate {canary_rate:.2} over {requests} attempts, the pool's other members {others_rate:.2}",
                member.id
            );
            self.rolled_back.borrow_mut().push(member.id.clone());
        }
    }

    /// A canary another proxy of the fleet rolled back (fleet mode): `false` if already known.
    pub fn roll_back(&self, member_id: &str) -> bool {
        let mut rolled = self.rolled_back.borrow_mut();
        let new = !rolled.iter().any(|m| m == member_id);
        if new {
            rolled.push(member_id.to_string());
        }
        new
    }

    /// The canaries rolled back, as this VM knows.
    pub fn rolled_back(&self) -> Vec<String> {
        self.rolled_back.borrow().clone()
    }

    /// Tick: which canaries other workers rolled back.
    pub fn refresh_canaries(&self) {
        let canaries = self.config.pools.iter().flat_map(|p| &p.members).filter(|m| m.canary.is_some());
        let mut rolled = self.rolled_back.borrow_mut();
        for member in canaries {
            if !rolled.contains(&member.id) && canary_store::rolled_back(self.canary_generation, &member.id) {
                rolled.push(member.id.clone());
            }
        }
    }

    fn note_success(&self, member_id: &str) {
        let mut pending = self.pending_successes.borrow_mut();
        match pending.get_mut(member_id) {
            Some(n) => *n += 1,
            None => {
                pending.insert(member_id.to_string(), 1);
            }
        }
    }

    /// Adds the successes counted since the last tick to shared data.
    pub fn flush_successes(&self) {
        let pending = std::mem::take(&mut *self.pending_successes.borrow_mut());
        for (member_id, count) in pending {
            health_store::update(&member_id, |h| {
                h.successes = h.successes.saturating_add(count);
                Transition::None
            });
        }
    }
}

/// The exchange's view of what requests share: this VM's caches over Envoy's shared data.
impl Shared for Runtime {
    fn config(&self) -> &Config {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        super::abi::now_ms().unwrap_or_else(|status| {
            log::warn!("switchboard: host call failed: get_current_time (status {status})");
            self.metrics.inc(self.metrics.host_errors);
            0
        })
    }

    fn pick(&self, plan: &mut Plan, now_ms: u64) -> Option<Picked> {
        Runtime::pick(self, plan, now_ms)
    }

    fn record(
        &self,
        picked: Picked,
        status: u16,
        failed: bool,
        retry_after: Option<&str>,
        now_ms: u64,
        request_id: &str,
    ) {
        self.record_attempt(picked, status, failed, retry_after, now_ms, request_id);
    }

    fn note_answered(&self, member: MemberRef, now_ms: u64, took_ms: u64) {
        Runtime::note_answered(self, member, now_ms, took_ms);
    }

    fn abort_is_failure(&self, member: MemberRef, waited_ms: u64, now_ms: u64) -> bool {
        Runtime::abort_is_failure(self, member, waited_ms, now_ms)
    }

    fn next_try_ms(&self, member_id: &str, now_ms: u64) -> Option<u64> {
        health_store::next_try_ms(member_id, now_ms)
    }

    fn passed_over(&self, member_id: &str, now_ms: u64) -> PassedOver {
        health_store::passed_over(member_id, now_ms)
    }

    fn begin_in_flight(&self, member: MemberRef) {
        live_store::begin(self.member_id(member));
    }

    fn end_in_flight(&self, member: MemberRef) {
        live_store::end(self.member_id(member));
    }

    fn observe_latency(&self, member: MemberRef, kind: LatencyKind, sample_ms: f64) {
        live_store::observe(self.member_id(member), kind, sample_ms);
    }

    fn listing(&self, tenant: Option<usize>) -> Option<&ModelListing> {
        Some(tenant.and_then(|t| self.tenant_listings.get(t)).unwrap_or(&self.listing))
    }

    fn remember_response(&self, id: &str, holder: &Holder) {
        crate::exchange::remember_holder(&abi::Data, id, holder);
    }

    fn response_holder(&self, id: &str) -> Option<Holder> {
        crate::exchange::response_holder(&abi::Data, id)
    }

    fn count(&self, what: Count) {
        let m = &self.metrics;
        let id = match what {
            Count::PoolRequest(p) => m.pool(p).and_then(|p| p.requests),
            Count::Attempt(at) => m.member(at.pool, at.member).and_then(|m| m.attempts),
            Count::Failover(at) => {
                m.inc(m.member(at.pool, at.member).and_then(|mm| mm.failovers));
                m.pool(at.pool).and_then(|pm| pm.failovers)
            }
            Count::Exhausted(p) => m.pool(p).and_then(|p| p.exhausted),
            Count::CutAnswer(at) => m.member(at.pool, at.member).and_then(|m| m.cut_answers),
            Count::Hedged(p) => m.pool(p).and_then(|p| p.hedged),
            Count::HedgeWin(p) => m.pool(p).and_then(|p| p.hedge_wins),
            Count::StreamIdleTimeout(p) => m.pool(p).and_then(|p| p.stream_idle_timeouts),
            Count::ResumedStream(p) => m.pool(p).and_then(|p| p.resumed_streams),
            Count::LocalError(code) => return m.local_error(code),
            Count::TenantRefused { tenant, budget } => return m.tenant_refused(tenant, budget),
        };
        m.inc(id);
    }
}
