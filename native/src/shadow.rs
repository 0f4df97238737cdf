//! Shadow copies in the dynamic module. A worker queues a routed request's
//! copy (`exchange::shadow` decides which, and what it becomes) and wakes
//! Envoy's main thread through the configuration's scheduler; there the copy
//! leaves as the configuration's own HTTP call, so it never holds up the
//! client's request and its answer is measured (status, latency, tokens)
//! however long after that request ended, then dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use switchboard::exchange::shadow::{self, Copy, Sent};

use crate::abi::{self, EnvoyFilterConfig};
use crate::state::{self, lock, Runtime};

/// The scheduler's event that sends the queued copies.
pub const SEND_EVENT: u64 = 1;
/// Copies waiting for the main thread beyond this are dropped (a main thread that cannot keep up).
const MAX_QUEUED: usize = 256;

#[derive(Default)]
pub struct Shadows {
    queued: Mutex<Vec<Copy>>,
    sent: Mutex<HashMap<u64, Sent>>,
}

impl Shadows {
    /// A worker's copy, queued; the main thread is woken when the queue was empty.
    pub fn queue(rt: &Runtime, copy: Copy) {
        let mut queued = lock(&rt.shadows.queued);
        if queued.len() >= MAX_QUEUED {
            return;
        }
        queued.push(copy);
        if queued.len() == 1 {
            drop(queued);
            if let Some(scheduler) = &rt.scheduler {
                scheduler.commit(SEND_EVENT);
            }
        }
    }

    /// Main thread: sends the queued copies.
    pub fn send_queued(rt: &Runtime, envoy_config: EnvoyFilterConfig) {
        let queued = std::mem::take(&mut *lock(&rt.shadows.queued));
        let now = state::now_ms();
        for copy in queued {
            let sent = copy.call(&rt.config, now).and_then(|call| {
                let headers = call.upstream.call_headers(&copy.headers);
                abi::config_callout(envoy_config, call.cluster, &headers, &call.upstream.body, call.timeout_ms)
                    .map(|id| (id, call.stream))
                    .map_err(|r| format!("HTTP callout to cluster {} failed to start ({r})", call.cluster))
            });
            match sent {
                Ok((id, stream)) => {
                    lock(&rt.shadows.sent).insert(id, copy.sent(now, stream));
                }
                Err(e) => log::warn!("switchboard: shadow copy not sent: {e}"),
            }
        }
    }

    /// Main thread: a copy's answer (no headers: it failed), measured and dropped.
    pub fn answered(rt: &Runtime, id: u64, headers: &[(String, String)], body: &[u8]) {
        let Some(sent) = lock(&rt.shadows.sent).remove(&id) else { return };
        let status: u16 = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let metrics = &rt.metrics;
        metrics.pool(sent.pool, |p| p.shadow_requests);
        if !(200..300).contains(&status) {
            metrics.pool(sent.pool, |p| p.shadow_failures);
        }
        metrics.pool_record(sent.pool, |p| p.shadow_latency_ms, state::now_ms().saturating_sub(sent.started_ms));
        if (200..300).contains(&status) {
            if let Some(used) = shadow::answer_usage(&rt.config, &sent, body) {
                metrics.pool_add(sent.pool, |p| p.shadow_prompt_tokens, used.prompt);
                metrics.pool_add(sent.pool, |p| p.shadow_completion_tokens, used.completion);
            }
        }
    }
}
