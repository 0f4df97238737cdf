//! Shadow traffic (pool `shadow`): a sampled share of a pool's requests is
//! copied to the shadow member; its answer is measured (status, latency,
//! tokens) and discarded. The copy is queued here and sent from the root
//! context's next tick, not from the request: the client's request never
//! waits for it, and its answer reaches the root context however long
//! after the client's request ended (an HTTP context that ends takes the
//! answers of its own calls with it). Per VM; the queue is bounded.

use std::cell::RefCell;
use std::time::Duration;

use crate::api::forward::forwarded;
use crate::api::request::ParsedRequest;
use crate::api::usage::{self, Tokens};
use crate::api::Endpoint;
use crate::providers::{build_request, BuildContext, ResponseAdapter};

use super::abi;
use super::runtime::Runtime;

/// Copies waiting for the tick beyond this are dropped (a tick that cannot keep up).
const MAX_QUEUED: usize = 256;

struct Copy {
    pool: usize,
    endpoint: Endpoint,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

struct Sent {
    pool: usize,
    started_ms: u64,
    endpoint: Endpoint,
    stream: bool,
}

#[derive(Default)]
struct Shadows {
    queued: Vec<Copy>,
    sent: Vec<(u32, Sent)>,
}

thread_local! {
    static SHADOWS: RefCell<Shadows> = RefCell::new(Shadows::default());
}

/// A routed request of `pool`: copied for its shadow with the pool's `sample` probability.
pub fn sample(rt: &Runtime, pool: usize, endpoint: Endpoint, body: &[u8], client_headers: &[u8]) {
    let Some(shadow) = rt.config.pool_at(pool).and_then(|p| p.shadow.as_ref()) else { return };
    // 53 random bits as a share in [0, 1).
    if (rt.random() >> 11) as f64 / (1u64 << 53) as f64 >= shadow.sample {
        return;
    }
    let headers = abi::pairs(client_headers)
        .filter(|(k, _)| forwarded(k, false, &[]))
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?.to_string(), std::str::from_utf8(v).ok()?.to_string())))
        .collect();
    SHADOWS.with(|s| {
        let mut s = s.borrow_mut();
        if s.queued.len() < MAX_QUEUED {
            s.queued.push(Copy { pool, endpoint, body: body.to_vec(), headers });
        }
    });
}

/// Root tick: sends the queued copies.
pub fn send_queued(rt: &Runtime, now: u64) {
    let queued = SHADOWS.with(|s| std::mem::take(&mut s.borrow_mut().queued));
    for copy in queued {
        match send(rt, &copy, now) {
            Ok((token, stream)) => SHADOWS.with(|s| {
                let sent = Sent { pool: copy.pool, started_ms: now, endpoint: copy.endpoint, stream };
                s.borrow_mut().sent.push((token, sent));
            }),
            Err(e) => log::warn!("switchboard: shadow copy not sent: {e}"),
        }
    }
}

fn send(rt: &Runtime, copy: &Copy, now: u64) -> Result<(u32, bool), String> {
    let pool = rt.config.pool_at(copy.pool).ok_or("no pool")?;
    let shadow = pool.shadow.as_ref().ok_or("no shadow")?;
    let provider = rt.config.providers.get(shadow.member.provider).ok_or("no provider")?;
    let parsed = ParsedRequest::parse(&copy.body, copy.endpoint).map_err(|e| e.message)?;
    let ctx = BuildContext { now_unix_s: now / 1000, max_response_tokens: pool.max_response_tokens };
    let upstream = build_request(provider, &shadow.member, copy.endpoint, &parsed, &ctx).map_err(|e| e.message)?;
    let headers = upstream.call_headers(&copy.headers);
    let timeout = Duration::from_millis(pool.retry.timeout_ms);
    proxy_wasm::hostcalls::dispatch_http_call(&provider.cluster, headers, Some(&upstream.body), vec![], timeout)
        .map(|token| (token, parsed.stream))
        .map_err(|s| format!("dispatch_http_call to {} failed: {s:?}", provider.cluster))
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
        if let Some(used) = answer_usage(rt, &sent, &body) {
            rt.metrics.add(metrics.shadow_prompt_tokens, used.prompt);
            rt.metrics.add(metrics.shadow_completion_tokens, used.completion);
        }
    }
    true
}

/// The tokens of the shadow's answer, read in its provider's own format.
fn answer_usage(rt: &Runtime, sent: &Sent, body: &[u8]) -> Option<Tokens> {
    let shadow = rt.config.pool_at(sent.pool)?.shadow.as_ref()?;
    let kind = rt.config.providers.get(shadow.member.provider)?.kind;
    match ResponseAdapter::new(kind, sent.endpoint, sent.stream, &shadow.member.model) {
        Some(mut adapter) => {
            if sent.stream {
                adapter.translate_stream(body, true);
            } else {
                adapter.translate_body(200, body);
            }
            adapter.usage()
        }
        None => usage::scan(body),
    }
}
