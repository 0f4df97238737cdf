//! Shadow traffic (pool `shadow`): a sampled share of a pool's requests is
//! copied to the shadow member; its answer is measured (status, latency,
//! tokens) and discarded. The copy is queued here and sent from the root
//! context's next tick, not from the request: the client's request never
//! waits for it, and its answer reaches the root context however long
//! after the client's request ended (an HTTP context that ends takes the
//! answers of its own calls with it). Per VM; the queue is bounded.

use std::cell::RefCell;
use std::time::Duration;

use crate::exchange::shadow::{self, Copy, Sent};

use super::abi;
use super::runtime::Runtime;

/// Copies waiting for the tick beyond this are dropped (a tick that cannot keep up).
const MAX_QUEUED: usize = 256;

#[derive(Default)]
struct Shadows {
    queued: Vec<Copy>,
    sent: Vec<(u32, Sent)>,
}

thread_local! {
    static SHADOWS: RefCell<Shadows> = RefCell::new(Shadows::default());
}

/// A routed request of `pool`: copied for its shadow with the pool's `sample` probability.
pub fn sample(rt: &Runtime, pool: usize, endpoint: crate::api::Endpoint, body: &[u8], client_headers: &[u8]) {
    let Some(copy) = shadow::sample(&rt.config, pool, endpoint, body, abi::pairs(client_headers), || rt.random())
    else {
        return;
    };
    SHADOWS.with(|s| {
        let mut s = s.borrow_mut();
        if s.queued.len() < MAX_QUEUED {
            s.queued.push(copy);
        }
    });
}

/// Root tick: sends the queued copies.
pub fn send_queued(rt: &Runtime, now: u64) {
    let queued = SHADOWS.with(|s| std::mem::take(&mut s.borrow_mut().queued));
    for copy in queued {
        match send(rt, &copy, now) {
            Ok((token, stream)) => SHADOWS.with(|s| s.borrow_mut().sent.push((token, copy.sent(now, stream)))),
            Err(e) => log::warn!("switchboard: shadow copy not sent: {e}"),
        }
    }
}

fn send(rt: &Runtime, copy: &Copy, now: u64) -> Result<(u32, bool), String> {
    let call = copy.call(&rt.config, now)?;
    let headers = call.upstream.call_headers(&copy.headers);
    let timeout = Duration::from_millis(call.timeout_ms);
    proxy_wasm::hostcalls::dispatch_http_call(call.cluster, headers, Some(&call.upstream.body), vec![], timeout)
        .map(|token| (token, call.stream))
        .map_err(|s| format!("dispatch_http_call to {} failed: {s:?}", call.cluster))
}

/// Root: the answer of a shadow copy, measured and dropped. Returns whether `token` was one.
pub fn answered(rt: &Runtime, token: u32, num_headers: usize, body_size: usize) -> bool {
    let sent = SHADOWS.with(|s| {
        let mut s = s.borrow_mut();
        let at = s.sent.iter().position(|(t, _)| *t == token)?;
        Some(s.sent.swap_remove(at).1)
    });
    let Some(sent) = sent else { return false };
    let Some(metrics) = rt.metrics.pool(sent.pool) else { return true };
    let now = abi::now_ms().unwrap_or(sent.started_ms);
    let status = if num_headers == 0 {
        0
    } else {
        abi::header_str(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    rt.metrics.inc(metrics.shadow_requests);
    if !(200..300).contains(&status) {
        rt.metrics.inc(metrics.shadow_failures);
    }
    if let Some(id) = metrics.shadow_latency_ms {
        if let Err(s) = abi::record_metric(id, now.saturating_sub(sent.started_ms)) {
            log::debug!("switchboard: record_metric failed (status {s})");
        }
    }
    if (200..300).contains(&status) {
        let body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_default();
        if let Some(used) = shadow::answer_usage(&rt.config, &sent, &body) {
            rt.metrics.add(metrics.shadow_prompt_tokens, used.prompt);
            rt.metrics.add(metrics.shadow_completion_tokens, used.completion);
        }
    }
    true
}
