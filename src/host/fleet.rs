//! Fleet mode in the host (`shared_state`, docs/fleet.md): a tenant's
//! admission asks the state service through Envoy (`dispatch_http_call` to
//! the configured cluster) while the request waits; its end is told to the
//! service from the root context, so the call outlives the request. Without
//! an answer in `timeout_ms`, `on_unavailable` decides: this proxy's own
//! counts, or a 503. The root's tick polls the fleet's feedback and canary
//! rollbacks (`sync`).

use std::cell::Cell;
use std::time::Duration;

use crate::api::{ApiError, ErrorCode};
use crate::config::SharedState;
use crate::tenant::fleet::admit_answer;
use crate::tenant::limits::{Refusal, Window};
use crate::tenant::Tenant;

use super::abi;

/// Where a request's fleet admission stands.
#[derive(Default)]
pub enum Ask {
    #[default]
    Idle,
    /// The call is out; the request (its client body kept) waits for it.
    Waiting { token: u32, sent_ms: u64, body: Vec<u8> },
    /// The service's answer (`None`: none in time, or not readable).
    Answered(Option<Vec<u8>>),
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
}

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

/// The admission of `tenant`'s request: asks the service (first pass), then
/// reads its answer (the pass after it came), falling back as configured.
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
    match std::mem::take(ask) {
        Ask::Idle => {
            let ttl_ms = shared.lease_ttl_s.saturating_mul(1000);
            let path = crate::tenant::fleet::admit_path(tenant, lease, ttl_ms, tokens, worst_micro_usd, now_s);
            match call(shared, &path, shared.timeout_ms) {
                Ok(token) => {
                    *ask = Ask::Waiting { token, sent_ms: now_ms, body: Vec::new() };
                    return Step::Wait;
                }
                Err(status) => log::warn!("switchboard: calling the state service failed (status {status})"),
            }
        }
        Ask::Answered(Some(body)) => {
            if let Some(verdict) = admit_answer(&body, tenant, now_s, worst_micro_usd) {
                inc(stats().shared);
                return Step::Shared(verdict);
            }
        }
        Ask::Answered(None) | Ask::Waiting { .. } => {}
    }
    unavailable(shared, now_ms)
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
    let Ask::Waiting { sent_ms, body, .. } = std::mem::take(ask) else { return Vec::new() };
    if let Some(id) = stats().latency_ms {
        let _ = abi::record_metric(id, now_ms.saturating_sub(sent_ms));
    }
    *ask = Ask::Answered(answer_body(num_headers, body_size));
    body
}

/// Tells the service a request ended (its lease released, its usage counted),
/// on behalf of the root context: the request's own calls end with it.
pub fn tell(shared: &SharedState, path: &str, context_id: u32) {
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
