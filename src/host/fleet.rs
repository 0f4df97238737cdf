//! Fleet mode in the host (`shared_state`, docs/fleet.md): a tenant's
//! request is admitted from this proxy's slice of the tenant's allowance
//! (shared data, compare-and-swap across the workers); when the slice runs
//! out, the request asks the state service for a new one through Envoy
//! (`dispatch_http_call` to the configured cluster) and waits. What a slice
//! gives back is told from the root context, so the call outlives the
//! request. Without an answer in `timeout_ms`, `on_unavailable` decides:
//! this proxy's own counts, or a 503.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::api::{ApiError, ErrorCode};
use crate::config::SharedState;
use crate::encoding::{hex, unhex};
use crate::learned::Inputs;
use crate::tenant::fleet::{slice_answer, slice_path, Back, Slice};
use crate::tenant::limits::{Refusal, Settlement, Window};
use crate::tenant::Tenant;

use super::runtime::Runtime;
use super::abi;
use crate::exchange::learning;

/// Where a request's fleet admission stands.
#[derive(Default)]
pub enum Ask {
    #[default]
    Idle,
    /// The call is out; the request (its client body kept) waits for it,
    /// with what the slice gave back.
    Waiting { token: u32, sent_ms: u64, body: Vec<u8>, back: Back },
    /// The service's answer (`None`: none in time, or not readable).
    Answered(Option<Vec<u8>>, Back),
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

/// The stats of fleet mode, defined on first use (fleet mode only).
#[derive(Clone, Copy)]
struct Stats {
    shared: Option<u32>,
    local: Option<u32>,
    denied: Option<u32>,
    latency_ms: Option<u32>,
}

thread_local! {
    static ROOT_ID: Cell<u32> = const { Cell::new(0) };
    static STATS: Cell<Option<Stats>> = const { Cell::new(None) };
    static LAST_FALLBACK_LOG_MS: Cell<u64> = const { Cell::new(0) };
    /// The fleet poll: its call token, the learned cursor's compare-and-swap value, when it was sent.
    static POLL: Cell<(u32, u32, u64)> = const { Cell::new((0, 0, 0)) };
    /// Canary rollbacks this VM told the fleet or heard from it.
    static TOLD: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The id of the last fleet feedback entry this proxy learned (shared data).
const CURSOR: &str = "switchboard.fleet.learned";

/// The root context of this VM: end-of-request calls are made on its behalf.
pub fn set_root(id: u32) {
    ROOT_ID.with(|r| r.set(id));
}

fn stats() -> Stats {
    STATS.with(|s| {
        s.get().unwrap_or_else(|| {
            let define = |kind, name: &str| abi::define_metric(kind, name).ok();
            let stats = Stats {
                shared: define(abi::METRIC_COUNTER, "switchboard.fleet.decisions.shared"),
                local: define(abi::METRIC_COUNTER, "switchboard.fleet.decisions.local_fallback"),
                denied: define(abi::METRIC_COUNTER, "switchboard.fleet.decisions.denied_unavailable"),
                latency_ms: define(abi::METRIC_HISTOGRAM, "switchboard.fleet.service_latency_ms"),
            };
            s.set(Some(stats));
            stats
        })
    })
}

fn inc(id: Option<u32>) {
    if let Some(id) = id {
        let _ = abi::increment_metric(id, 1);
    }
}

/// Sends `POST path` to the state service; its answer comes back as a call response.
pub fn call(shared: &SharedState, path: &str, timeout_ms: u64) -> Result<u32, abi::Status> {
    let headers =
        vec![(":method", "POST"), (":path", path), (":authority", "switchboard-state"), ("content-length", "0")];
    proxy_wasm::hostcalls::dispatch_http_call(&shared.cluster, headers, None, vec![], Duration::from_millis(timeout_ms))
        .map_err(|s| s as abi::Status)
}

/// The body of a call's answer when it is a 200 (a failed call has no headers).
pub fn answer_body(num_headers: usize, body_size: usize) -> Option<Vec<u8>> {
    if num_headers == 0 {
        return None;
    }
    let status = abi::header(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status").ok()??;
    if status != b"200" {
        return None;
    }
    abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).ok()
}

/// Changes this proxy's slice of `tenant` atomically (every worker shares
/// it); `None` when the store cannot be written.
fn change<R>(tenant: &Tenant, mut f: impl FnMut(&mut Slice) -> R) -> Option<R> {
    let key = format!("switchboard.fleet.{}", tenant.name);
    for _ in 0..64 {
        let (bytes, cas) = abi::shared_get(&key).ok()?;
        let mut slice = Slice::decode(bytes.as_deref().unwrap_or_default());
        let out = f(&mut slice);
        match abi::shared_set(&key, &slice.encode(), cas) {
            Ok(()) => return Some(out),
            Err(abi::CAS_MISMATCH) => continue,
            Err(_) => return None,
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
            let taken = change(tenant, |s| {
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
                    inc(stats().shared);
                    return Step::Shared(Ok(window));
                }
                Some(None) => {}
                None => back = Back::default(),
            }
            let path = slice_path(true, tenant, holder, ttl_ms, tokens, worst_micro_usd, now_s, &back);
            match call(shared, &path, shared.timeout_ms) {
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
                inc(stats().shared);
                let granted = |g| {
                    let window = change(tenant, |s| s.granted(&g, tenant, now_ms, ttl_ms, tokens, worst_micro_usd));
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
    let _ = change(tenant, |s| {
        s.unsettled_micro_usd += back.spent_micro_usd;
        s.holder = lease;
    });
    unavailable(shared, now_ms)
}

/// A request admitted from this proxy's slice ended: its slot, unused
/// tokens and unspent worst case return to the slice; what the fleet
/// should have now (idle slots, a tight budget's spend) is told.
pub fn release(shared: &SharedState, tenant: &Tenant, end: &Settlement, now_ms: u64, context_id: u32) {
    let mut holder = 0;
    let Some(Some(back)) = change(tenant, |s| {
        holder = s.holder;
        s.release(tenant, end)
    }) else {
        return;
    };
    let ttl_ms = shared.lease_ttl_s.saturating_mul(1000);
    tell(shared, &slice_path(false, tenant, holder, ttl_ms, 0, 0, now_ms / 1000, &back), context_id);
}

/// No answer from the service: `on_unavailable` decides, counted, logged at most once a second.
fn unavailable(shared: &SharedState, now_ms: u64) -> Step {
    let log_now = LAST_FALLBACK_LOG_MS.with(|last| {
        let due = now_ms.saturating_sub(last.get()) >= 1000;
        if due {
            last.set(now_ms);
        }
        due
    });
    if log_now {
        log::warn!("switchboard: no answer from the state service in time: shared_state.on_unavailable decides");
    }
    if shared.fallback_local {
        inc(stats().local);
        return Step::Local;
    }
    inc(stats().denied);
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

/// The service answered (or failed to, in time): the latency is recorded and the answer kept.
pub fn answered(ask: &mut Ask, now_ms: u64, num_headers: usize, body_size: usize) -> Vec<u8> {
    let Ask::Waiting { sent_ms, body, back, .. } = std::mem::take(ask) else { return Vec::new() };
    if let Some(id) = stats().latency_ms {
        let _ = abi::record_metric(id, now_ms.saturating_sub(sent_ms));
    }
    *ask = Ask::Answered(answer_body(num_headers, body_size), back);
    body
}

/// Tells the service what a slice gives back, on behalf of the root
/// context: the request's own calls end with it.
fn tell(shared: &SharedState, path: &str, context_id: u32) {
    let root = ROOT_ID.with(Cell::get);
    let switched = root != 0 && abi::set_effective_context(root).is_ok();
    // The lease expires by itself if this is lost; a slow service gets a second or so.
    if let Err(status) = call(shared, path, shared.timeout_ms.max(1000)) {
        log::warn!("switchboard: telling the state service {path} failed (status {status})");
    }
    if switched {
        let _ = abi::set_effective_context(context_id);
    }
}

/// A user's score of a learned router's answer, told to the fleet: every
/// proxy, this one included, learns it from its next poll.
pub fn tell_learned(shared: &SharedState, key: &str, inputs: &Inputs, logit: f32, score: f32, context_id: u32) {
    let (k, i, g, s) =
        (hex(key.as_bytes()), hex(&inputs.encode()), hex(&logit.to_be_bytes()), hex(&score.to_be_bytes()));
    let path = format!("/v1/learned?k={k}&i={i}&g={g}&s={s}");
    tell(shared, &path, context_id);
}

/// Root tick, every `sync_ms` in fleet mode: tells the fleet the canaries
/// this VM saw rolled back, and polls the fleet's rollbacks and scores.
pub fn sync(rt: &Runtime, now_ms: u64) {
    let Some(shared) = &rt.config.shared_state else { return };
    if now_ms.saturating_sub(POLL.with(Cell::get).2) < shared.sync_ms {
        return;
    }
    let generation = rt.canary_generation;
    for member in rt.rolled_back() {
        if TOLD.with(|t| !t.borrow().contains(&member)) {
            let path = format!("/v1/canary?g={generation:x}&m={}", hex(member.as_bytes()));
            if call(shared, &path, shared.timeout_ms.max(1000)).is_ok() {
                TOLD.with(|t| t.borrow_mut().push(member));
            }
        }
    }
    let Ok((cursor, cas)) = abi::shared_get(CURSOR) else { return };
    let Some(cursor) = cursor else {
        let _ = abi::shared_set(CURSOR, b"0", 0);
        return;
    };
    let path = format!("/v1/sync?g={generation:x}&after={}", String::from_utf8_lossy(&cursor));
    let token = call(shared, &path, shared.sync_ms).unwrap_or(0);
    POLL.with(|p| p.set((token, cas, now_ms)));
}

/// The fleet poll's answer, if `token` is it (`false`: another call's).
/// Rollbacks apply on every VM; scores are learned by the VM whose poll
/// moves the proxy's cursor, so each once per proxy.
pub fn sync_answered(rt: &Runtime, token: u32, num_headers: usize, body_size: usize) -> bool {
    let (out, cas, sent_ms) = POLL.with(Cell::get);
    if token == 0 || token != out {
        return false;
    }
    POLL.with(|p| p.set((0, 0, sent_ms)));
    let Some(body) = answer_body(num_headers, body_size) else { return true };
    let text = std::str::from_utf8(&body).unwrap_or_default();
    let (mut last, mut scores) = (None, Vec::new());
    for line in text.lines() {
        let mut words = line.split(' ');
        let (kind, first) = (words.next(), words.next().unwrap_or_default());
        if kind == Some("c") {
            let Some(id) = unhex(first).and_then(|b| String::from_utf8(b).ok()) else { continue };
            if rt.roll_back(&id) {
                log::warn!("switchboard: canary {id} rolled back by another proxy of the fleet");
            }
            TOLD.with(|t| t.borrow_mut().push(id));
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
    let Some(last) = last else { return true };
    if abi::shared_set(CURSOR, last.as_bytes(), cas).is_err() {
        return true; // the other worker's poll learns them
    }
    for (index, router) in rt.config.routers.iter().enumerate() {
        let (Some(learned), Some(Some(model))) = (&router.learned, rt.learned_models.get(index)) else { continue };
        let key = learning::learning_key(&router.name, model, learned);
        for (_, inputs, logit, score) in scores.iter().filter(|s| s.0 == key.as_bytes()) {
            learning::learn(&abi::Data, &key, inputs, *logit, *score);
        }
        rt.learned_learning.forget(index);
    }
    true
}
