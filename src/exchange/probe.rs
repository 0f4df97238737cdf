//! Active health probes (pool `probe`), for any host: which pools are due,
//! and the cheap request that asks an ejected member whether it is back. The
//! host sends it on its own and restores the member on a 2xx
//! (`MemberHealth::record_probe_success`).

use std::collections::HashMap;

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::config::{Config, MemberRef};
use crate::providers::{build_request, BuildContext, UpstreamRequest};

/// The cheap request sent to an ejected member to see if it is back.
const PROBE_BODY: &[u8] = br#"{"model":"probe","messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#;

/// The pools with `probe` whose interval has passed at `now` since they were last probed (`last`, ms).
pub fn due_pools(config: &Config, last: &HashMap<usize, u64>, now: u64) -> Vec<usize> {
    config
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let every = p.probe.as_ref()?.interval_ms;
            let due = last.get(&i).is_none_or(|at| now.saturating_sub(*at) >= every);
            due.then_some(i)
        })
        .collect()
}

/// A probe of one member: its cluster, the request, the pool's probe timeout.
pub struct ProbeCall<'c> {
    pub cluster: &'c str,
    pub upstream: UpstreamRequest,
    pub timeout_ms: u64,
}

/// The probe of `target` (in its provider's format), if its pool probes.
pub fn probe_call(config: &Config, target: MemberRef, now: u64) -> Option<ProbeCall<'_>> {
    let (pool, member, provider) = config.resolve(target)?;
    let policy = pool.probe.as_ref()?;
    let parsed = ParsedRequest::parse(PROBE_BODY, Endpoint::ChatCompletions).ok()?;
    let ctx = BuildContext { now_unix_s: now / 1000, max_response_tokens: Some(1) };
    let upstream = build_request(provider, member, Endpoint::ChatCompletions, &parsed, &ctx).ok()?;
    Some(ProbeCall { cluster: &provider.cluster, upstream, timeout_ms: policy.timeout_ms })
}
