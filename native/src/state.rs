//! What the requests of an Envoy process share, in process memory: every
//! worker thread reads and changes the same stores under a lock, where the
//! proxy-wasm build keeps them in Envoy's shared data under compare-and-swap.
//! The semantics are the same: member health (ejection, cooldown, trial),
//! requests in flight and latency averages, the last answer per member, canary
//! windows and tenants' windows, budgets and parallel slots; and the bytes
//! per key with compare-and-swap ([`Data`], the exchange's `SharedData`) that
//! the core's own stores use: learned routers' learning and feedback memory,
//! the Responses table. Like shared
//! data, the stores outlive a configuration reload (canary windows are keyed
//! by the configuration's fingerprint) and end with the process.
//!
//! [`Runtime`] is one configuration's view; it implements the exchange's
//! [`Shared`] trait over these stores, as `host::runtime::Runtime` does over
//! shared data.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use switchboard::api::models::ModelListing;
use switchboard::api::response_ids::Holder;
use switchboard::config::{Config, Member, MemberRef, Pool};
use switchboard::exchange::learning::{self, Learning};
use switchboard::exchange::{Count, DataError, Picked, Shared, SharedData};
use switchboard::learned::Model;
use switchboard::routing::canary::CanaryWindow;
use switchboard::routing::exhausted::PassedOver;
use switchboard::routing::health::retry_after_until_ms;
use switchboard::routing::silence::{self, LastAnswer};
use switchboard::routing::{Availability, LatencyKind, LatencyStats, LiveStats, MemberHealth, Plan, Rng, Transition};
use switchboard::tenant::limits::{Refusal, Settlement, TenantState};
use switchboard::tenant::Tenant;

use crate::abi::ConfigScheduler;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::probes::Prober;
use crate::shadow::Shadows;

/// How long a client is told to wait while a member's half-open trial is in
/// flight (the trial's success puts the member back at once); as `host::health_store`.
const TRIAL_RECHECK_MS: u64 = 1_000;

/// The process-wide stores, keyed like the shared-data keys of the wasm build.
#[derive(Default)]
struct Stores {
    health: Mutex<HashMap<String, MemberHealth>>,
    in_flight: Mutex<HashMap<String, u32>>,
    latency: Mutex<HashMap<String, LatencyStats>>,
    answers: Mutex<HashMap<String, LastAnswer>>,
    canaries: Mutex<HashMap<(u64, String), CanaryWindow>>,
    tenants: Mutex<HashMap<String, TenantState>>,
    /// Shared data: each key's bytes and version.
    data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

/// Process memory with the semantics of proxy-wasm's shared data (Envoy's
/// implementation: a version per key, bumped by every write; a write naming
/// another version is refused), for the core's stores written against it.
pub struct Data;

impl SharedData for Data {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), u32> {
        Ok(lock(&stores().data).get(key).map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas)))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), DataError> {
        let mut data = lock(&stores().data);
        match data.get_mut(key) {
            Some((_, version)) if cas != 0 && cas != *version => Err(DataError::CasMismatch),
            Some((bytes, version)) => {
                bytes.clear();
                bytes.extend_from_slice(value);
                *version = version.wrapping_add(1).max(1);
                Ok(())
            }
            None => {
                data.insert(key.to_string(), (value.to_vec(), 1));
                Ok(())
            }
        }
    }
}

fn stores() -> &'static Stores {
    static STORES: OnceLock<Stores> = OnceLock::new();
    STORES.get_or_init(Stores::default)
}

/// A lock that a panicking holder did not leave unusable: the stores hold
/// plain values, each change written whole, so the data stays consistent.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Member health, read by every worker.
pub fn health(member_id: &str) -> MemberHealth {
    lock(&stores().health).get(member_id).copied().unwrap_or_default()
}

pub fn update_health(member_id: &str, change: impl FnOnce(&mut MemberHealth) -> Transition) -> Transition {
    with_entry(&mut lock(&stores().health), member_id, change)
}

/// Changes the entry of `key`, created at its default the first time (the key is copied only then).
fn with_entry<T: Default, R>(map: &mut HashMap<String, T>, key: &str, change: impl FnOnce(&mut T) -> R) -> R {
    if let Some(entry) = map.get_mut(key) {
        return change(entry);
    }
    change(map.entry(key.to_string()).or_default())
}

/// Admits one request of `tenant` against its windows, budget and parallel slots, at once.
pub fn admit_tenant(tenant: &Tenant, now_s: u64, tokens: u64, worst_micro_usd: u64) -> Result<TenantState, Refusal> {
    let mut map = lock(&stores().tenants);
    let state = map.get(&tenant.name).copied().unwrap_or_default();
    let next = state.admit(tenant, now_s, tokens, worst_micro_usd)?;
    map.insert(tenant.name.clone(), next);
    Ok(next)
}

/// Settles an admitted request: slot, token reservation and spend.
pub fn settle_tenant(tenant: &Tenant, now_s: u64, end: &Settlement) {
    let mut map = lock(&stores().tenants);
    let state = map.get(&tenant.name).copied().unwrap_or_default();
    map.insert(tenant.name.clone(), state.settle(tenant, now_s, end));
}

thread_local! {
    /// Each worker its own random source (weighted picks, request ids).
    static RNG: RefCell<Rng> = RefCell::new(Rng::from_entropy());
}

pub fn random() -> u64 {
    RNG.with(|r| r.borrow_mut().next_u64())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What strategies see of members: health, load and latency from the stores.
struct Stats<'a> {
    health: MutexGuard<'a, HashMap<String, MemberHealth>>,
    now: u64,
    rolled_back: &'a [String],
}

impl LiveStats for Stats<'_> {
    fn availability(&self, member: &Member) -> Availability {
        self.health.get(&member.id).copied().unwrap_or_default().availability(self.now)
    }

    fn in_flight(&self, member: &Member) -> u32 {
        lock(&stores().in_flight).get(&member.id).copied().unwrap_or(0)
    }

    fn latency_ms(&self, member: &Member, kind: LatencyKind) -> Option<f64> {
        lock(&stores().latency).get(&member.id).and_then(|s| s.get(kind))
    }

    fn rolled_back(&self, member: &Member) -> bool {
        self.rolled_back.contains(&member.id)
    }
}

/// One configuration: validated, with its model listings and metrics.
pub struct Runtime {
    pub config: Config,
    pub listing: ModelListing,
    /// Per tenant (configuration order): what it may use.
    pub tenant_listings: Vec<ModelListing>,
    pub metrics: Metrics,
    /// Per router (same order as `config.routers`): its learned model, if it has a `learned` part.
    pub learned_models: Vec<Option<Model>>,
    /// Per router: its learning from feedback as last read from [`Data`].
    pub learning: Learning,
    /// Fingerprint of the configuration: canary windows are kept per configuration.
    pub canary_generation: u64,
    /// Canaries rolled back (member ids).
    rolled_back: Mutex<Vec<String>>,
    /// Wakes Envoy's main thread for this configuration (when something runs there: shadow copies).
    pub scheduler: Option<ConfigScheduler>,
    /// Shadow copies queued for the main thread, and those sent.
    pub shadows: Shadows,
    /// Active probes: when each pool was last probed, the probes in flight.
    pub prober: Prober,
    /// Fleet mode: tells waiting for the main thread, the fleet's poll.
    pub fleet: Fleet,
    /// How often the configuration ticks: once a second, or every `shared_state.sync_ms` if sooner.
    pub tick_ms: u64,
    /// Until Envoy destroys the configuration: its tick runs.
    pub ticking: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// Refuses a learned model that cannot be read, naming its field.
    pub fn new(config: Config, metrics: Metrics, raw: &[u8]) -> Result<Runtime, String> {
        let learned_models = learning::load_models(&config)?;
        let tenant_listings =
            config.tenants.iter().flatten().map(|t| ModelListing::build_for(&config, &|name| t.allows(name))).collect();
        let canary_generation = fingerprint(raw);
        let tick_ms = config_tick_ms(&config);
        let rolled_back = {
            let canaries = lock(&stores().canaries);
            config
                .pools
                .iter()
                .flat_map(|p| &p.members)
                .filter(|m| canaries.get(&(canary_generation, m.id.clone())).is_some_and(|w| w.rolled_back))
                .map(|m| m.id.clone())
                .collect()
        };
        Ok(Runtime {
            listing: ModelListing::build(&config),
            tenant_listings,
            metrics,
            learning: Learning::new(learned_models.len()),
            learned_models,
            config,
            canary_generation,
            rolled_back: Mutex::new(rolled_back),
            scheduler: None,
            shadows: Shadows::default(),
            prober: Prober::default(),
            fleet: Fleet::default(),
            tick_ms,
            ticking: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// A canary another proxy of the fleet rolled back (fleet mode): `false` if already known.
    pub fn roll_back(&self, member_id: &str) -> bool {
        let mut rolled = lock(&self.rolled_back);
        let new = !rolled.iter().any(|m| m == member_id);
        if new {
            rolled.push(member_id.to_string());
        }
        new
    }

    /// The canaries rolled back.
    pub fn rolled_back(&self) -> Vec<String> {
        lock(&self.rolled_back).clone()
    }

    /// The configuration's tick, on Envoy's main thread: the fleet's sync, the gauges and the probes.
    pub fn tick(&self, envoy_config: crate::abi::EnvoyFilterConfig) {
        let now = now_ms();
        journal().tick(&Data, now);
        Fleet::sync(self, envoy_config);
        Prober::tick(self, envoy_config, now);
        let health = lock(&stores().health);
        for (pool, stats) in self.config.pools.iter().zip(&self.metrics.pools) {
            let healthy = pool
                .members
                .iter()
                .filter(|m| in_rotation(health.get(&m.id).copied().unwrap_or_default().availability(now)))
                .count();
            self.metrics.set_gauge(stats.healthy_members, healthy as u64);
        }
        drop(health);
        let tenants = lock(&stores().tenants);
        for (tenant, stats) in self.config.tenants.iter().flatten().zip(&self.metrics.tenants) {
            let Some(budget) = &tenant.budget else { continue };
            let spent = tenants.get(&tenant.name).map_or(0, |t| t.spend.in_period(now / 1000, budget.per));
            self.metrics.set_gauge(stats.budget_spent, spent);
        }
    }

    /// Counts an attempt in its pool's canary windows; a canary this rolls back gets weight 0.
    fn count_canaries(&self, at: MemberRef, pool: &Pool, failed: bool, now_s: u64, request_id: &str) {
        let attempted = at.member;
        for (index, member) in pool.members.iter().enumerate() {
            let Some(policy) = &member.canary else { continue };
            let mut windows = lock(&stores().canaries);
            let window = windows.entry((self.canary_generation, member.id.clone())).or_default();
            if window.rolled_back || !window.record(policy, now_s, index == attempted, failed) {
                continue;
            }
            let (canary, others) = window.totals(now_s);
            drop(windows);
            log::warn!(
                "switchboard[{request_id}]: canary {} rolled back (weight 0 until the configuration changes): \
                 error rate {:.2} over {} attempts, the pool's other members {:.2}",
                member.id,
                canary.error_rate(),
                canary.requests,
                others.error_rate()
            );
            self.metrics.member(MemberRef::new(at.pool, index), |m| m.canary_rollbacks);
            lock(&self.rolled_back).push(member.id.clone());
        }
    }
}

/// Whether the healthy-members gauge counts a member (as the wasm build's
/// root tick): in rotation, or past its cooldown and offered the next request.
fn in_rotation(availability: Availability) -> bool {
    matches!(availability, Availability::Healthy | Availability::Trial)
}

/// The process's learned decisions remembered for feedback: one journal for
/// every worker thread and configuration (feedback on any thread finds them).
pub fn journal() -> &'static learning::Journal {
    static JOURNAL: std::sync::OnceLock<learning::Journal> = std::sync::OnceLock::new();
    JOURNAL.get_or_init(learning::Journal::new)
}

/// How often a configuration ticks.
fn config_tick_ms(config: &Config) -> u64 {
    config.shared_state.as_ref().map_or(crate::timers::TICK_MS, |s| s.sync_ms.clamp(10, crate::timers::TICK_MS))
}

/// Identifies a configuration's text (canary windows start afresh when it changes).
fn fingerprint(raw: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(raw);
    h.finish()
}

impl Shared for Runtime {
    fn config(&self) -> &Config {
        &self.config
    }

    fn listing(&self, tenant: Option<usize>) -> Option<&ModelListing> {
        Some(tenant.and_then(|t| self.tenant_listings.get(t)).unwrap_or(&self.listing))
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    /// The next member of the plan; one past its cooldown is claimed for its trial.
    fn pick(&self, plan: &mut Plan, now: u64) -> Option<Picked> {
        let random = random();
        let rolled_back = lock(&self.rolled_back).clone();
        let mut stats = Stats { health: lock(&stores().health), now, rolled_back: &rolled_back };
        let member = plan.next_member(&self.config, &stats, random)?;
        let (pool, m, _) = self.config.resolve(member)?;
        let health = stats.health.get(&m.id).copied().unwrap_or_default();
        if health.availability(now) == Availability::Trial {
            let hold = pool.retry.trial_hold_ms();
            with_entry(&mut stats.health, &m.id, |h| h.begin_trial(now, hold));
        }
        Some(Picked { member, health })
    }

    fn record(&self, picked: Picked, status: u16, failed: bool, retry_after: Option<&str>, now: u64, request_id: &str) {
        let MemberRef { pool: pool_index, member: member_index } = picked.member;
        let Some(pool) = self.config.pool_at(pool_index) else { return };
        let Some(member) = pool.members.get(member_index) else { return };
        if pool.members.iter().any(|m| m.canary.is_some()) {
            let now = if now == 0 { now_ms() } else { now };
            self.count_canaries(picked.member, pool, failed, now / 1000, request_id);
        }
        let metrics = &self.metrics;
        let transition = if failed {
            metrics.member(picked.member, |m| m.failures);
            let hold =
                retry_after.filter(|_| status == 429 || status == 503).and_then(|v| retry_after_until_ms(v, now));
            update_health(&member.id, |h| match hold {
                Some(until) => h.record_held_failure(now, until, &pool.health),
                None => h.record_failure(now, &pool.health),
            })
        } else {
            metrics.member(picked.member, |m| m.requests);
            if picked.health.is_clean() {
                update_health(&member.id, |h| {
                    h.successes = h.successes.saturating_add(1);
                    Transition::None
                })
            } else {
                update_health(&member.id, MemberHealth::record_success)
            }
        };
        match transition {
            Transition::Ejected { until_ms } => {
                metrics.member(picked.member, |m| m.ejections);
                log::info!(
                    "switchboard[{request_id}]: member {} ejected for {} ms (last status {status})",
                    member.id,
                    until_ms.saturating_sub(now)
                );
            }
            Transition::Restored => {
                metrics.member(picked.member, |m| m.restorations);
                log::info!("switchboard[{request_id}]: member {} restored", member.id);
            }
            Transition::None => {}
        }
    }

    fn note_answered(&self, member: MemberRef, now: u64, took_ms: u64) {
        with_entry(&mut lock(&stores().answers), self.member_id(member), |seen| {
            *seen = seen.newer(LastAnswer { at_ms: now, took_ms });
        });
    }

    fn abort_is_failure(&self, member: MemberRef, waited_ms: u64, now: u64) -> bool {
        let Some(pool) = self.config.pool_at(member.pool) else { return false };
        let answers = lock(&stores().answers);
        let peers = pool
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != member.member)
            .map(|(_, m)| answers.get(&m.id).copied().unwrap_or_default());
        silence::abort_is_failure(waited_ms, now, peers)
    }

    fn next_try_ms(&self, member_id: &str, now: u64) -> Option<u64> {
        health(member_id).next_try_ms(now, TRIAL_RECHECK_MS)
    }

    fn passed_over(&self, member_id: &str, now: u64) -> PassedOver {
        let health = health(member_id);
        PassedOver {
            next_try_ms: health.next_try_ms(now, TRIAL_RECHECK_MS),
            held_by_provider: health.held_by_provider(now),
        }
    }

    fn begin_in_flight(&self, member: MemberRef) {
        with_entry(&mut lock(&stores().in_flight), self.member_id(member), |n| *n = n.saturating_add(1));
    }

    fn end_in_flight(&self, member: MemberRef) {
        let id = self.member_id(member);
        if let Some(n) = lock(&stores().in_flight).get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }

    fn observe_latency(&self, member: MemberRef, kind: LatencyKind, sample_ms: f64) {
        with_entry(&mut lock(&stores().latency), self.member_id(member), |s| s.record(kind, sample_ms));
    }

    fn remember_response(&self, id: &str, holder: &Holder) {
        switchboard::exchange::remember_holder(&Data, id, holder);
    }

    fn response_holder(&self, id: &str) -> Option<Holder> {
        switchboard::exchange::response_holder(&Data, id)
    }

    fn count(&self, what: Count) {
        let m = &self.metrics;
        match what {
            Count::PoolRequest(p) => m.pool(p, |p| p.requests),
            Count::Attempt(at) => m.member(at, |m| m.attempts),
            Count::Failover(at) => {
                m.member(at, |mm| mm.failovers);
                m.pool(at.pool, |p| p.failovers);
            }
            Count::Exhausted(p) => m.pool(p, |p| p.exhausted),
            Count::CutAnswer(at) => m.member(at, |m| m.cut_answers),
            Count::Hedged(p) => m.pool(p, |p| p.hedged),
            Count::HedgeWin(p) => m.pool(p, |p| p.hedge_wins),
            Count::StreamIdleTimeout(p) => m.pool(p, |p| p.stream_idle_timeouts),
            Count::ResumedStream(p) => m.pool(p, |p| p.resumed_streams),
            Count::LocalError(code) => m.local_error(code),
            Count::TenantRefused { tenant, budget } => m.tenant_refused(tenant, budget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let json =
            br#"{"cluster_header": "x-c", "providers": {"a": {"kind": "openai", "cluster": "a", "host": "a.example", "api_key_env": "K"}},
            "pools": {"p": {"members": [{"provider": "a", "model": "m1"}, {"provider": "a", "model": "m2"}]}}}"#;
        let env = |_: &str| Some("k".to_string());
        match Config::parse(json, &env) {
            Ok(c) => c,
            Err(e) => unreachable!("test configuration: {e:?}"),
        }
    }

    /// A failure recorded by one worker thread takes the member out for every other thread.
    #[test]
    fn health_is_shared_across_threads() {
        let rt = match Runtime::new(config(), Metrics::default(), b"t1") {
            Ok(rt) => std::sync::Arc::new(rt),
            Err(e) => unreachable!("test runtime: {e}"),
        };
        let now = now_ms();
        let picked = Picked { member: MemberRef::new(0, 0), health: MemberHealth::default() };
        let failures = rt.config.pool_at(0).map_or(1, |p| p.health.consecutive_failures.max(1));
        let writer = {
            let rt = rt.clone();
            std::thread::spawn(move || {
                for _ in 0..failures {
                    rt.record(picked, 503, true, None, now, "t");
                }
            })
        };
        assert!(writer.join().is_ok());
        let id = rt.member_id(MemberRef::new(0, 0)).to_string();
        let reader = std::thread::spawn(move || health(&id).availability(now));
        assert!(matches!(reader.join(), Ok(Availability::Unavailable { .. })));
    }

    /// Shared data keeps one version per key: a write naming an older version is refused.
    #[test]
    fn data_refuses_a_stale_compare_and_swap() {
        let key = "test.data.cas";
        assert_eq!(Data.get(key), Ok((None, 0)));
        assert_eq!(Data.set(key, b"a", 0), Ok(()));
        let Ok((Some(v), cas)) = Data.get(key) else { unreachable!("just written") };
        assert_eq!(v, b"a");
        assert_eq!(Data.set(key, b"b", cas), Ok(()));
        assert_eq!(Data.set(key, b"c", cas), Err(DataError::CasMismatch));
        assert!(matches!(Data.get(key), Ok((Some(v), _)) if v == b"b"));
    }

    #[test]
    fn compare_and_swap_loses_no_write_across_threads() {
        // What the stores written against shared data (fleet slices, learning) rely on.
        let key = "test.data.counter";
        // Written first: a version of 0 writes whatever is there (shared data's semantics).
        assert_eq!(Data.set(key, b"0", 0), Ok(()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        loop {
                            let (bytes, cas) = Data.get(key).unwrap_or_default();
                            let n: u64 = bytes.and_then(|b| String::from_utf8(b).ok()?.parse().ok()).unwrap_or(0);
                            if Data.set(key, (n + 1).to_string().as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| unreachable!("a writer panicked"));
        }
        assert!(matches!(Data.get(key), Ok((Some(v), _)) if v == b"8000"));
    }
}
