//! Fleet mode (`shared_state`, docs/fleet.md), host-free: a tenant's
//! request is admitted from this proxy's slice of the tenant's allowance
//! (shared data, compare-and-swap across the workers); when the slice runs
//! out, the request asks the state service for a new one (a call the host
//! sends through Envoy, [`FleetCalls`]) and waits. Without an answer in
//! `timeout_ms`, `on_unavailable` decides: this proxy's own counts, or a
//! 503. What a slice gives back, and a learned router's scores, are told to
//! the service once the request is over (a path the host sends on its own
//! behalf, so the call outlives the request); [`Sync`] polls the fleet's
//! canary rollbacks and scores.
//!
//! Both hosts carry these steps out: the proxy-wasm one over Envoy's shared
//! data and `dispatch_http_call`, the dynamic module over its process memory
//! and HTTP callouts.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::{ApiError, ErrorCode};
use crate::config::{Config, SharedState};
use crate::encoding::{hex, unhex};
use crate::learned::{Inputs, Model};
use crate::tenant::fleet::{slice_answer, slice_path, Back, Slice};
use crate::tenant::limits::{Refusal, Settlement, TenantState, Window};
use crate::tenant::Tenant;

use super::admission::Verdict;
use super::learning;
use super::shared::{DataError, SharedData};

/// Where a request's fleet admission stands.
#[derive(Default)]
pub enum Ask {
    #[default]
    Idle,
    /// The call is out; the request (its client body kept) waits for it,
    /// with what the slice gave back.
    Waiting { token: u64, sent_ms: u64, body: Vec<u8>, back: Back },
    /// The service's answer (`None`: none in time, or not readable).
    Answered(Option<Vec<u8>>, Back),
}

impl Ask {
    /// Whether the call `token` is the one this admission waits for.
    pub fn waits_for(&self, id: u64) -> bool {
        matches!(self, Ask::Waiting { token, .. } if *token == id)
    }
}

/// What the admission does next.
pub enum Step {
    /// The call is out: pause the request.
    Wait,
    /// Decided fleet-wide.
    Shared(Result<Window, Refusal>),
    /// The service is unavailable: this proxy's own counts decide.
    Local,
    /// The service is unavailable and `on_unavailable` is `deny`.
    Deny(ApiError),
}

/// What fleet mode counts (the host names the stats `switchboard.fleet.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetEvent {
    /// An admission decided fleet-wide (`decisions.shared`).
    Shared,
    /// The service did not answer: this proxy's counts decided (`decisions.local_fallback`).
    LocalFallback,
    /// The service did not answer: refused (`decisions.denied_unavailable`).
    DeniedUnavailable,
    /// The service answered an admission after this many ms (`service_latency_ms`).
    Latency(u64),
}

/// The stats' names, after the host's prefix.
pub const STAT_SHARED: &str = "switchboard.fleet.decisions.shared";
pub const STAT_LOCAL: &str = "switchboard.fleet.decisions.local_fallback";
pub const STAT_DENIED: &str = "switchboard.fleet.decisions.denied_unavailable";
pub const STAT_LATENCY_MS: &str = "switchboard.fleet.service_latency_ms";

/// How a host reaches the state service.
pub trait FleetCalls {
    /// Sends `POST path` to `shared.cluster`; the id its answer comes back with, or the host's status.
    fn call(&mut self, shared: &SharedState, path: &str, timeout_ms: u64) -> Result<u64, u32>;

    fn note(&self, event: FleetEvent);
}

/// The headers of a call to the state service (its requests have no body).
pub fn call_headers(path: &str) -> [(&str, &str); 4] {
    [(":method", "POST"), (":path", path), (":authority", "switchboard-state"), ("content-length", "0")]
}

/// The body of a call's answer when its status is 200.
pub fn ok_body(status: Option<&[u8]>, body: impl FnOnce() -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    (status == Some(b"200".as_slice())).then(body).flatten()
}

impl super::Exchange {
    /// The calling tenant's admission in fleet mode, for `tenant_verdict`:
    /// `Ok(None)` while the service's answer is awaited. `lease` draws this
    /// request's name in Redis the first time; `local` is this proxy's own
    /// store, which decides when the service is unavailable and
    /// `on_unavailable` is `local` (or the caller has no tenant).
    #[allow(clippy::too_many_arguments)]
    pub fn fleet_verdict(
        &mut self,
        ask: &mut Ask,
        data: &dyn SharedData,
        calls: &mut dyn FleetCalls,
        shared: &SharedState,
        tenant: &Tenant,
        now_ms: u64,
        (tokens, worst_micro_usd): (u64, u64),
        lease: impl FnOnce() -> u64,
        local: impl FnOnce() -> Verdict,
    ) -> Result<Option<Verdict>, ApiError> {
        let Some(admission) = self.tenant.as_mut() else { return Ok(Some(local())) };
        let leased = *admission.lease.get_or_insert_with(lease);
        Ok(Some(match self::admission(ask, data, calls, shared, tenant, leased, now_ms, tokens, worst_micro_usd) {
            Step::Wait => return Ok(None),
            Step::Deny(e) => {
                admission.lease = None;
                return Err(e);
            }
            Step::Local => {
                admission.lease = None;
                self.obs.limits = Some("local");
                local()
            }
            Step::Shared(verdict) => {
                self.obs.limits = Some("shared");
                verdict.map(|window| Some(TenantState { window, ..TenantState::default() }))
            }
        }))
    }
}

/// Changes this proxy's slice of `tenant` atomically (every worker shares
/// it); `None` when the store cannot be written.
fn change<R>(data: &dyn SharedData, tenant: &Tenant, mut f: impl FnMut(&mut Slice) -> R) -> Option<R> {
    let key = format!("switchboard.fleet.{}", tenant.name);
    for _ in 0..64 {
        let (bytes, cas) = data.get(&key).ok()?;
        let mut slice = Slice::decode(bytes.as_deref().unwrap_or_default());
        let out = f(&mut slice);
        match data.set(&key, &slice.encode(), cas) {
            Ok(()) => return Some(out),
            Err(DataError::CasMismatch) => continue,
            Err(DataError::Failed(_)) => return None,
        }
    }
    None
}

/// The admission of `tenant`'s request: from this proxy's slice when it
/// has room; else it asks the service for a new slice (first pass), then
/// reads its answer (the pass after it came), falling back as configured.
/// `lease` (random) names this proxy in Redis the first time.
#[allow(clippy::too_many_arguments)]
pub fn admission(
    ask: &mut Ask,
    data: &dyn SharedData,
    calls: &mut dyn FleetCalls,
    shared: &SharedState,
    tenant: &Tenant,
    lease: u64,
    now_ms: u64,
    tokens: u64,
    worst_micro_usd: u64,
) -> Step {
    let now_s = now_ms / 1000;
    let ttl_ms = shared.lease_ttl_s.saturating_mul(1000);
    let back = match std::mem::take(ask) {
        Ask::Idle => {
            let (mut back, mut holder) = (Back::default(), lease);
            let taken = change(data, tenant, |s| {
                if s.holder == 0 {
                    s.holder = lease;
                }
                holder = s.holder;
                let taken = s.take(tenant, now_ms, tokens, worst_micro_usd);
                back = if taken.is_none() { s.give_back() } else { Back::default() };
                taken
            });
            match taken {
                Some(Some(window)) => {
                    calls.note(FleetEvent::Shared);
                    return Step::Shared(Ok(window));
                }
                Some(None) => {}
                None => back = Back::default(),
            }
            let path = slice_path(true, tenant, holder, ttl_ms, tokens, worst_micro_usd, now_s, &back);
            match calls.call(shared, &path, shared.timeout_ms) {
                Ok(token) => {
                    *ask = Ask::Waiting { token, sent_ms: now_ms, body: Vec::new(), back };
                    return Step::Wait;
                }
                Err(status) => log::warn!("switchboard: calling the state service failed (status {status})"),
            }
            back
        }
        Ask::Answered(Some(body), back) => match slice_answer(&body, tenant, now_s, worst_micro_usd) {
            Some(verdict) => {
                calls.note(FleetEvent::Shared);
                let granted = |g| {
                    let window =
                        change(data, tenant, |s| s.granted(&g, tenant, now_ms, ttl_ms, tokens, worst_micro_usd));
                    window.unwrap_or_default()
                };
                return Step::Shared(verdict.map(granted));
            }
            None => back,
        },
        Ask::Answered(None, back) | Ask::Waiting { back, .. } => back,
    };
    // Whether the service applied what was given back is unknown: the spend is
    // kept to be told again (counted twice at worst), the unused parts are
    // dropped, and this proxy takes a new name so what it held expires.
    let _ = change(data, tenant, |s| {
        s.unsettled_micro_usd += back.spent_micro_usd;
        s.holder = lease;
    });
    unavailable(calls, shared, now_ms)
}

/// A request admitted from this proxy's slice ended: its slot, unused
/// tokens and unspent worst case return to the slice. The path that tells
/// the fleet what it should have now (idle slots, a tight budget's spend),
/// for the host to send on its own behalf.
pub fn release(
    data: &dyn SharedData,
    shared: &SharedState,
    tenant: &Tenant,
    end: &Settlement,
    now_ms: u64,
) -> Option<String> {
    let mut holder = 0;
    let back = change(data, tenant, |s| {
        holder = s.holder;
        s.release(tenant, end)
    })??;
    let ttl_ms = shared.lease_ttl_s.saturating_mul(1000);
    Some(slice_path(false, tenant, holder, ttl_ms, 0, 0, now_ms / 1000, &back))
}

/// When a proxy last logged a fallback (any thread).
static LAST_FALLBACK_LOG_MS: AtomicU64 = AtomicU64::new(0);

/// No answer from the service: `on_unavailable` decides, counted, logged at most once a second.
fn unavailable(calls: &dyn FleetCalls, shared: &SharedState, now_ms: u64) -> Step {
    let last = LAST_FALLBACK_LOG_MS.load(Ordering::Relaxed);
    let due = now_ms.saturating_sub(last) >= 1000
        && LAST_FALLBACK_LOG_MS.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok();
    if due {
        log::warn!("switchboard: no answer from the state service in time: shared_state.on_unavailable decides");
    }
    if shared.fallback_local {
        calls.note(FleetEvent::LocalFallback);
        return Step::Local;
    }
    calls.note(FleetEvent::DeniedUnavailable);
    Step::Deny(
        ApiError::new(
            503,
            ErrorCode::Overloaded,
            "Tenant limits are kept fleet-wide and the gateway's state service did not answer in time; \
             the request was not sent (shared_state.on_unavailable is deny). Retry shortly.",
        )
        .with_retry_after(1),
    )
}

/// The service answered the admission (`answer`: its 200 body; `None`: it
/// failed, or not in time): the latency is recorded and the answer kept for
/// the next [`admission`]. Returns the client body the request kept.
pub fn answered(ask: &mut Ask, calls: &dyn FleetCalls, now_ms: u64, answer: Option<Vec<u8>>) -> Vec<u8> {
    let Ask::Waiting { sent_ms, body, back, .. } = std::mem::take(ask) else { return Vec::new() };
    calls.note(FleetEvent::Latency(now_ms.saturating_sub(sent_ms)));
    *ask = Ask::Answered(answer, back);
    body
}

/// The path that tells the fleet a user's score of a learned router's
/// answer: every proxy, this one included, learns it from its next poll.
pub fn learned_path(key: &str, inputs: &Inputs, logit: f32, score: f32) -> String {
    let (k, i, g, s) =
        (hex(key.as_bytes()), hex(&inputs.encode()), hex(&logit.to_be_bytes()), hex(&score.to_be_bytes()));
    format!("/v1/learned?k={k}&i={i}&g={g}&s={s}")
}

/// The id of the last fleet feedback entry this proxy learned (shared data).
const CURSOR: &str = "switchboard.fleet.learned";

/// A score the fleet heard: the router's learning key, the prompt's inputs, its logit and the score.
pub type Score = (Vec<u8>, Inputs, f32, f32);

/// What a poll brought: canaries another proxy rolled back, and the scores
/// to learn (only for the poller that moved this proxy's cursor, so each
/// score is learned once per proxy).
#[derive(Default)]
pub struct News {
    pub rolled_back: Vec<String>,
    pub scores: Vec<Score>,
}

/// The fleet's sync on one poller (a wasm VM, or the module's main thread):
/// every `sync_ms` it tells the canaries this poller saw rolled back, and
/// polls the fleet's rollbacks and scores.
#[derive(Default)]
pub struct Sync {
    /// The poll out: its call id and the cursor's compare-and-swap value.
    poll: Option<(u64, u32)>,
    sent_ms: u64,
    /// Canary rollbacks this poller told the fleet or heard from it.
    told: Vec<String>,
}

impl Sync {
    /// Tells new rollbacks (read only then) and polls, when `sync_ms` has passed since the last poll.
    #[allow(clippy::too_many_arguments)]
    pub fn tick(
        &mut self,
        data: &dyn SharedData,
        calls: &mut dyn FleetCalls,
        shared: &SharedState,
        generation: u64,
        rolled_back: impl FnOnce() -> Vec<String>,
        now_ms: u64,
    ) {
        if now_ms.saturating_sub(self.sent_ms) < shared.sync_ms {
            return;
        }
        for member in rolled_back() {
            if !self.told.contains(&member) {
                let path = format!("/v1/canary?g={generation:x}&m={}", hex(member.as_bytes()));
                if calls.call(shared, &path, shared.timeout_ms.max(1000)).is_ok() {
                    self.told.push(member);
                }
            }
        }
        let Ok((cursor, cas)) = data.get(CURSOR) else { return };
        let Some(cursor) = cursor else {
            let _ = data.set(CURSOR, b"0", 0);
            return;
        };
        let path = format!("/v1/sync?g={generation:x}&after={}", String::from_utf8_lossy(&cursor));
        self.poll = calls.call(shared, &path, shared.sync_ms).ok().map(|token| (token, cas));
        self.sent_ms = now_ms;
    }

    /// The poll's answer, if `id` is it (`None`: another call's). `answer`
    /// is its 200 body (`None`: it failed).
    pub fn answered(
        &mut self,
        data: &dyn SharedData,
        id: u64,
        answer: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<News> {
        let (_, cas) = self.poll.filter(|(token, _)| *token == id)?;
        self.poll = None;
        let mut news = News::default();
        let Some(body) = answer() else { return Some(news) };
        let text = std::str::from_utf8(&body).unwrap_or_default();
        let (mut last, mut scores) = (None, Vec::new());
        for line in text.lines() {
            let mut words = line.split(' ');
            let (kind, first) = (words.next(), words.next().unwrap_or_default());
            if kind == Some("c") {
                let Some(id) = unhex(first).and_then(|b| String::from_utf8(b).ok()) else { continue };
                self.told.push(id.clone());
                news.rolled_back.push(id);
            } else if kind == Some("l") {
                last = Some(first);
                let mut next = || words.next().and_then(unhex);
                let (key, inputs, logit, score) = (next(), next().and_then(|b| Inputs::decode(&b)), next(), next());
                let real = |b: Option<Vec<u8>>| Some(f32::from_be_bytes(b?.try_into().ok()?));
                if let (Some(key), Some(inputs), Some(logit), Some(score)) = (key, inputs, real(logit), real(score)) {
                    scores.push((key, inputs, logit, score));
                }
            }
        }
        // The poller that moves the cursor learns them; another one's poll got there first otherwise.
        if let Some(last) = last {
            if data.set(CURSOR, last.as_bytes(), cas).is_ok() {
                news.scores = scores;
            }
        }
        Some(news)
    }
}

/// Learns the fleet's scores into each learned router's learning;
/// `forget(index)`: that router's cached learning is stale.
pub fn learn_scores(
    data: &dyn SharedData,
    config: &Config,
    models: &[Option<Model>],
    scores: &[Score],
    mut forget: impl FnMut(usize),
) {
    if scores.is_empty() {
        return;
    }
    for index in 0..config.routers.len() {
        let Some(key) = learning::learning_key_of(config, models, index) else { continue };
        for (_, inputs, logit, score) in scores.iter().filter(|s| s.0 == key.as_bytes()) {
            learning::learn(data, &key, inputs, *logit, *score);
        }
        forget(index);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::exchange::shared::Memory;
    use crate::tenant::{Budget, BudgetPeriod};

    /// The calls sent, answered with ids 1, 2, ...; `down`: none can be sent.
    #[derive(Default)]
    struct Service {
        sent: Vec<String>,
        events: RefCell<Vec<FleetEvent>>,
        down: bool,
    }

    impl FleetCalls for Service {
        fn call(&mut self, _: &SharedState, path: &str, _: u64) -> Result<u64, u32> {
            if self.down {
                return Err(1);
            }
            self.sent.push(path.to_string());
            Ok(self.sent.len() as u64)
        }

        fn note(&self, event: FleetEvent) {
            self.events.borrow_mut().push(event);
        }
    }

    fn shared(fallback_local: bool) -> SharedState {
        SharedState { cluster: "state".into(), timeout_ms: 100, fallback_local, lease_ttl_s: 600, sync_ms: 200 }
    }

    fn tenant() -> Tenant {
        Tenant {
            name: "t".into(),
            key_hashes: Vec::new(),
            allow: None,
            rpm: Some(60),
            tpm: None,
            max_parallel: None,
            budget: Some(Budget { per: BudgetPeriod::Day, limit_usd: 0.05 }),
        }
    }

    const NOON_MS: u64 = 1_796_644_800_000;

    #[test]
    fn a_request_waits_for_a_slice_then_the_next_ones_take_from_it_without_a_call() {
        let (data, mut service, t, s) = (Memory::default(), Service::default(), tenant(), shared(false));
        let mut ask = Ask::Idle;
        assert!(matches!(admission(&mut ask, &data, &mut service, &s, &t, 7, NOON_MS, 0, 10), Step::Wait));
        assert!(service.sent[0].starts_with("/v1/admit?t=74&h=7&"), "{:?}", service.sent);
        assert!(ask.waits_for(1) && !ask.waits_for(2));

        // The service grants 3 requests of the fleet's minute (60 - 57 used elsewhere).
        let grant = format!("ok 57 0 {} {} 3 0 0 1000", NOON_MS / 1000, NOON_MS);
        let kept = answered(&mut ask, &service, NOON_MS + 4, Some(grant.into_bytes()));
        assert!(kept.is_empty());
        let first = admission(&mut ask, &data, &mut service, &s, &t, 7, NOON_MS + 4, 0, 10);
        assert!(matches!(first, Step::Shared(Ok(_))));
        for _ in 0..2 {
            let mut next = Ask::Idle;
            let step = admission(&mut next, &data, &mut service, &s, &t, 7, NOON_MS + 5, 0, 10);
            assert!(matches!(step, Step::Shared(Ok(_))));
        }
        assert_eq!(service.sent.len(), 1, "taken from the slice");
        assert_eq!(service.events.borrow()[0], FleetEvent::Latency(4));
        // The slice is used up: the fourth asks again.
        let mut fourth = Ask::Idle;
        assert!(matches!(admission(&mut fourth, &data, &mut service, &s, &t, 7, NOON_MS + 6, 0, 10), Step::Wait));
    }

    #[test]
    fn without_the_service_on_unavailable_decides_and_says_so() {
        let (data, t) = (Memory::default(), tenant());
        let mut down = Service { down: true, ..Service::default() };
        let mut ask = Ask::Idle;
        let Step::Deny(e) = admission(&mut ask, &data, &mut down, &shared(false), &t, 7, NOON_MS, 0, 10) else {
            panic!("deny");
        };
        assert_eq!((e.status, e.retry_after_s), (503, Some(1)));
        assert!(matches!(
            admission(&mut Ask::Idle, &data, &mut down, &shared(true), &t, 7, NOON_MS, 0, 10),
            Step::Local
        ));
        assert_eq!(*down.events.borrow(), [FleetEvent::DeniedUnavailable, FleetEvent::LocalFallback]);

        // A call out but no answer in time: the same.
        let mut up = Service::default();
        assert!(matches!(admission(&mut ask, &data, &mut up, &shared(true), &t, 7, NOON_MS, 0, 10), Step::Wait));
        answered(&mut ask, &up, NOON_MS + 100, None);
        assert!(matches!(admission(&mut ask, &data, &mut up, &shared(true), &t, 7, NOON_MS, 0, 10), Step::Local));
    }

    #[test]
    fn a_poll_brings_rollbacks_to_every_poller_and_scores_to_the_one_that_moves_the_cursor() {
        let (data, s) = (Memory::default(), shared(false));
        let (mut one, mut two) = (Sync::default(), Sync::default());
        let (mut service_one, mut service_two) = (Service::default(), Service::default());
        // The first tick starts the cursor; each poller then polls from it.
        one.tick(&data, &mut service_one, &s, 0xabc, || vec!["m/x".into()], 1_000);
        assert_eq!(service_one.sent, [format!("/v1/canary?g=abc&m={}", hex(b"m/x"))]);
        one.tick(&data, &mut service_one, &s, 0xabc, || vec!["m/x".into()], 1_000);
        assert_eq!(service_one.sent.len(), 2, "a rollback is told once");
        assert_eq!(service_one.sent[1], "/v1/sync?g=abc&after=0");
        two.tick(&data, &mut service_two, &s, 0xabc, Vec::new, 1_000);
        assert_eq!(service_two.sent, ["/v1/sync?g=abc&after=0"]);

        let inputs = Inputs::default();
        let line = |id: &str| {
            format!(
                "l {id} {} {} {} {}",
                hex(b"key"),
                hex(&inputs.encode()),
                hex(&0.5f32.to_be_bytes()),
                hex(&1.0f32.to_be_bytes())
            )
        };
        let body = format!("c {}\n{}\n{}\n", hex(b"m/y"), line("5-0"), line("6-0"));
        assert!(one.answered(&data, 99, || None).is_none(), "not the poll's call");
        let news = one.answered(&data, 2, || Some(body.clone().into_bytes())).map(|n| (n.rolled_back, n.scores.len()));
        assert_eq!(news, Some((vec!["m/y".to_string()], 2)));
        assert_eq!(data.get(CURSOR).map(|(v, _)| v), Ok(Some(b"6-0".to_vec())));
        // The other poller read the cursor before it moved: the rollback, no scores.
        let news = two.answered(&data, 1, || Some(body.into_bytes())).map(|n| (n.rolled_back, n.scores.len()));
        assert_eq!(news, Some((vec!["m/y".to_string()], 0)));
        // Not due again before sync_ms.
        one.tick(&data, &mut service_one, &s, 0xabc, Vec::new, 1_100);
        assert_eq!(service_one.sent.len(), 2);
    }
}
