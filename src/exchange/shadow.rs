//! Shadow copies (pool `shadow`), for any host: which routed requests are
//! copied, the copy's request to the shadow member, and what its answer
//! measured. The host sends a copy on its own, never from the request (the
//! client never waits for it, and its answer is measured however long after
//! the request ended), and drops the answer once measured.

use crate::api::forward::forwarded;
use crate::api::request::ParsedRequest;
use crate::api::usage::{self, Tokens};
use crate::api::Endpoint;
use crate::config::Config;
use crate::providers::{build_request, BuildContext, ResponseAdapter, UpstreamRequest};

/// A routed request's copy, waiting to be sent to its pool's shadow member.
pub struct Copy {
    pub pool: usize,
    pub endpoint: Endpoint,
    pub body: Vec<u8>,
    /// The client's headers that a provider may see (the allow-list).
    pub headers: Vec<(String, String)>,
}

/// A copy sent, measured when its answer comes.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub pool: usize,
    pub started_ms: u64,
    pub endpoint: Endpoint,
    pub stream: bool,
}

/// The copy's call to the shadow member.
pub struct ShadowCall<'c> {
    pub cluster: &'c str,
    pub upstream: UpstreamRequest,
    pub timeout_ms: u64,
    pub stream: bool,
}

/// A routed request of `pool`, copied with the pool's `sample` probability
/// (`random` is drawn only for a pool with a shadow): its copy.
pub fn sample<'h>(
    config: &Config,
    pool: usize,
    endpoint: Endpoint,
    body: &[u8],
    client_headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    random: impl FnOnce() -> u64,
) -> Option<Copy> {
    let shadow = config.pool_at(pool)?.shadow.as_ref()?;
    // 53 random bits as a share in [0, 1).
    if (random() >> 11) as f64 / (1u64 << 53) as f64 >= shadow.sample {
        return None;
    }
    let headers = client_headers
        .filter(|(k, _)| forwarded(k, false, &[]))
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?.to_string(), std::str::from_utf8(v).ok()?.to_string())))
        .collect();
    Some(Copy { pool, endpoint, body: body.to_vec(), headers })
}

impl Copy {
    /// The request to the pool's shadow member (in its provider's format), or why there is none.
    pub fn call<'c>(&self, config: &'c Config, now_ms: u64) -> Result<ShadowCall<'c>, String> {
        let pool = config.pool_at(self.pool).ok_or("no pool")?;
        let shadow = pool.shadow.as_ref().ok_or("no shadow")?;
        let provider = config.providers.get(shadow.member.provider).ok_or("no provider")?;
        let parsed = ParsedRequest::parse(&self.body, self.endpoint).map_err(|e| e.message)?;
        let ctx = BuildContext { now_unix_s: now_ms / 1000, max_response_tokens: pool.max_response_tokens };
        let upstream = build_request(provider, &shadow.member, self.endpoint, &parsed, &ctx).map_err(|e| e.message)?;
        Ok(ShadowCall {
            cluster: &provider.cluster,
            upstream,
            timeout_ms: pool.retry.timeout_ms,
            stream: parsed.stream,
        })
    }

    pub fn sent(&self, started_ms: u64, stream: bool) -> Sent {
        Sent { pool: self.pool, started_ms, endpoint: self.endpoint, stream }
    }
}

/// The tokens of the shadow's answer, read in its provider's own format.
pub fn answer_usage(config: &Config, sent: &Sent, body: &[u8]) -> Option<Tokens> {
    let shadow = config.pool_at(sent.pool)?.shadow.as_ref()?;
    let kind = config.providers.get(shadow.member.provider)?.kind;
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
