//! What the host writes to point a request at a member: the routed
//! request's body and header changes ([`Rewrite`]), or the call that sends it
//! on its own ([`Dispatch`]). Built from the client's headers as name/value
//! pairs, so any host that can list and set headers applies them.

use std::borrow::Cow;

use crate::api::forward::forwarded;
use crate::config::MemberRef;
use crate::providers::UpstreamRequest;

use super::{Exchange, Shared};

/// Names the authenticated tenant on the request, for Envoy filters after this one.
pub const TENANT_HEADER: &str = "x-switchboard-tenant";

/// The paused request pointed at a member. The host sets `body` (when the
/// gateway writes one) in place of the client's, then each header: set to
/// the value, or removed for `None`. Only what changes is listed.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewrite<'a> {
    pub body: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<Cow<'a, str>>)>,
}

/// A request sent on its own (a failover, hedge or continuation call): the
/// cluster, its headers and body, and its timeout.
#[derive(Debug)]
pub struct Dispatch<'a> {
    pub cluster: &'a str,
    pub timeout_ms: u64,
    upstream: &'a UpstreamRequest,
    /// The client's allow-listed headers.
    forwarded: Vec<(String, String)>,
    first_byte_ms: Option<String>,
}

impl Dispatch<'_> {
    /// The call's headers: the provider's request's, the client's forwarded
    /// ones, and the first-byte timeout.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = self.upstream.call_headers(&self.forwarded);
        if let Some(ms) = &self.first_byte_ms {
            headers.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms));
        }
        headers
    }

    pub fn body(&self) -> &[u8] {
        &self.upstream.body
    }
}

/// A client header the rewrite cannot name (not UTF-8), so cannot remove.
#[derive(Debug, PartialEq, Eq)]
pub struct Unnamed;

fn cluster_of(sh: &dyn Shared, member: MemberRef) -> Option<&str> {
    sh.config().resolve(member).map(|(_, _, provider)| provider.cluster.as_str())
}

impl Exchange {
    /// Points the request at `member` with `upstream`: the body, then the
    /// header map (`present`: the client's headers as they are now):
    /// allow-listed client headers kept, the others removed; path, authority,
    /// cluster, content type and length, timeouts, the provider's headers and
    /// the tenant's name set. `client_len`: the client's body length (0 and
    /// an empty upstream body: the client's is kept, a Responses follow-up).
    #[allow(clippy::too_many_arguments)]
    pub fn rewrite<'a>(
        &self,
        sh: &'a dyn Shared,
        member: MemberRef,
        upstream: &'a UpstreamRequest,
        (timeout_ms, first_byte_ms): (u64, Option<u64>),
        client_len: usize,
        present: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Rewrite<'a>, Unnamed> {
        let config = sh.config();
        let extra = self.native_headers(sh, member);
        let own_body = !(upstream.body.is_empty() && client_len == 0);
        let mut ours: Vec<(&'a str, Option<Cow<'a, str>>)> = Vec::with_capacity(12);
        let mut set = |name: &'a str, value: Cow<'a, str>| ours.push((name, Some(value)));
        set(":authority", Cow::Borrowed(&upstream.authority));
        if own_body {
            set("content-length", Cow::Owned(upstream.body.len().to_string()));
        }
        set(&config.cluster_header, Cow::Borrowed(cluster_of(sh, member).unwrap_or_default()));
        set("x-envoy-upstream-rq-timeout-ms", Cow::Owned(timeout_ms.to_string()));
        if let Some(ms) = first_byte_ms {
            set("x-envoy-upstream-rq-per-try-timeout-ms", Cow::Owned(ms.to_string()));
        }
        for (k, v) in &upstream.headers {
            set(k, Cow::Borrowed(v));
        }
        // For Envoy's global rate limit after this filter; removed before the request leaves Envoy.
        if let Some(t) = self.tenant.as_ref().and_then(|t| config.tenants.as_ref()?.get(t.index)) {
            set(TENANT_HEADER, Cow::Borrowed(&t.name));
        }
        let sets = ours.len();
        // Client headers off the allow-list are removed; what the client already has right stays.
        let mut client_path: &[u8] = b"";
        let mut json = false;
        for (k, v) in present {
            match k {
                b":path" => client_path = v,
                b"content-type" => json = v == b"application/json",
                b":method" | b":scheme" | b":authority" => {}
                _ if forwarded(k, true, extra) || ours.iter().take(sets).any(|(n, _)| n.as_bytes() == k) => {}
                _ => ours.push((std::str::from_utf8(k).map_err(|_| Unnamed)?, None)),
            }
        }
        if upstream.path.as_bytes() != client_path {
            ours.push((":path", Some(Cow::Borrowed(&upstream.path))));
        }
        // The body is the gateway's JSON, whatever the client labelled its own.
        if !json && !ours.iter().take(sets).any(|(n, _)| *n == "content-type") {
            ours.push(("content-type", Some(Cow::Borrowed("application/json"))));
        }
        Ok(Rewrite { body: own_body.then_some(upstream.body.as_slice()), headers: ours })
    }

    /// Sends `upstream` to `member` on its own, with the client's
    /// allow-listed headers of `present` (and the door's own to a member
    /// serving it natively); `stream` picks its timeouts. `None`: the member
    /// has no cluster.
    pub fn dispatch<'a>(
        &self,
        sh: &'a dyn Shared,
        member: MemberRef,
        now: u64,
        upstream: &'a UpstreamRequest,
        stream: bool,
        present: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Option<Dispatch<'a>> {
        let cluster = cluster_of(sh, member)?;
        let extra = self.native_headers(sh, member);
        let forwarded = present
            .filter(|(k, _)| forwarded(k, false, extra))
            .filter_map(|(k, v)| {
                Some((std::str::from_utf8(k).ok()?.to_string(), std::str::from_utf8(v).ok()?.to_string()))
            })
            .collect();
        let (timeout_ms, first_byte_ms) = self.timeouts_ms(sh, member.pool, now, stream);
        let first_byte_ms = first_byte_ms.map(|ms| ms.to_string());
        Some(Dispatch { cluster, timeout_ms, upstream, forwarded, first_byte_ms })
    }
}
