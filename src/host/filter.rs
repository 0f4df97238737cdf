//! The HTTP context: one client request. Reads the body, routes it to a pool
//! member by rewriting the request, and on a retriable upstream answer pauses
//! the response and retries other members through `dispatch_http_call`,
//! replacing the response with the first success.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::api::request::ParsedRequest;
use crate::api::{ApiError, Endpoint};
use crate::providers::{build_request, BuildContext, ResponseAdapter, UpstreamRequest, CREDENTIAL_HEADERS};
use crate::routing::health::retry_after_until_ms;
use crate::routing::{Availability, MemberHealth, Plan, Transition};

use super::root::Runtime;
use super::{abi, health_store};

const REQ: u32 = abi::MAP_REQUEST_HEADERS;
const RESP: u32 = abi::MAP_RESPONSE_HEADERS;

/// Client headers never copied onto a failover call: hop-by-hop, framing,
/// routing and Envoy-internal ones (credentials are handled separately).
/// `accept-encoding` too: a failover answer is relayed without its
/// `content-encoding`, and translated answers must be readable.
const NOT_FORWARDED: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
    "proxy-connection",
    "accept-encoding",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the request body.
    Reading,
    /// Request sent to the routed member; response passes through.
    Routed,
    /// Response paused while a failover call is in flight.
    Failover,
    /// The filter answered (error, model list, or failover result).
    Answered,
}

pub struct Filter {
    rt: Option<Rc<Runtime>>,
    state: State,
    endpoint: Endpoint,
    /// The client's body, kept for failover calls.
    body: Vec<u8>,
    /// The client's request headers, serialized as the host gave them.
    client_headers: Vec<u8>,
    original_path: String,
    client_sent_json: bool,
    plan: Option<Plan>,
    /// The attempt in flight: (pool, member).
    current: Option<(usize, usize)>,
    pending_call: Option<u32>,
    /// Set when the routed member's provider does not speak OpenAI's format.
    adapter: Option<ResponseAdapter>,
    /// How the routed response body is translated, decided at its headers.
    translation: Translation,
    upstream_status: u16,
    stream: bool,
    /// Health of the member in flight when it was picked.
    picked_health: MemberHealth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Translation {
    None,
    /// Buffer the whole body, then translate (non-streaming and error answers).
    WholeBody,
    /// Translate each chunk as it arrives (successful streams).
    Stream,
}

impl Filter {
    pub fn new(_context_id: u32, rt: Option<Rc<Runtime>>) -> Self {
        Filter {
            rt,
            state: State::Reading,
            endpoint: Endpoint::ChatCompletions,
            body: Vec::new(),
            client_headers: Vec::new(),
            original_path: String::new(),
            client_sent_json: false,
            plan: None,
            current: None,
            pending_call: None,
            adapter: None,
            translation: Translation::None,
            upstream_status: 0,
            stream: false,
            picked_health: MemberHealth::default(),
        }
    }

    fn host_error(&self, what: &str, status: abi::Status) {
        log::warn!("switchboard: host call failed: {what} (status {status})");
        if let Some(rt) = &self.rt {
            rt.metrics.inc(rt.metrics.host_errors);
        }
    }

    fn now_ms(&self) -> u64 {
        abi::now_ms().unwrap_or_else(|status| {
            self.host_error("get_current_time", status);
            0
        })
    }

    /// Answers the client with an OpenAI-style error. Returns the action to give Envoy.
    fn answer_error(&mut self, error: &ApiError) -> Action {
        if let Some(rt) = &self.rt {
            rt.metrics.local_error(error.code);
        }
        let retry_after = error.retry_after_s.map(|s| s.to_string());
        let attempts = self.plan.as_ref().map_or(0, |p| p.attempts.len()).to_string();
        let mut headers: Vec<(&str, &str)> =
            vec![("content-type", "application/json"), ("x-switchboard-attempts", &attempts)];
        if let Some(v) = retry_after.as_deref() {
            headers.push(("retry-after", v));
        }
        self.respond(error.status, &headers, &error.to_json());
        Action::Pause
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.state = State::Answered;
        if let Err(s) = abi::send_local_response(status, headers, body) {
            self.host_error("send_local_response", s);
        }
    }

    fn route(&mut self, rt: &Runtime, body: Vec<u8>) -> Action {
        let now = self.now_ms();
        let (plan, pool, member, upstream) = {
            let parsed = match ParsedRequest::parse(&body, self.endpoint) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            let mut plan = match Plan::new(&rt.config, &parsed, now) {
                Ok(p) => p,
                Err(e) => return self.answer_error(&e),
            };
            let Some((pool, member, health)) = next_member(rt, &mut plan, now) else {
                return self.answer_error(&plan.exhausted_error(&parsed.target));
            };
            let upstream = match build_for(rt, self.endpoint, &parsed, pool, member, now) {
                Ok(u) => u,
                Err(e) => return self.answer_error(&e),
            };
            self.stream = parsed.stream;
            self.picked_health = health;
            (plan, pool, member, upstream)
        };
        if let Some(pm) = rt.metrics.pool(plan.primary_pool()) {
            rt.metrics.inc(pm.requests);
        }
        self.plan = Some(plan);
        let credentials: Vec<&'static str> = CREDENTIAL_HEADERS
            .iter()
            .copied()
            .filter(|c| abi::pairs(&self.client_headers).any(|(k, _)| k == c.as_bytes()))
            .collect();
        let cluster = cluster_of(rt, pool, member).unwrap_or_default();
        let (timeout_ms, first_byte_ms) = self.timeouts_ms(rt, pool, now);
        let unchanged = Unchanged { path: &self.original_path, json_content_type: self.client_sent_json };
        let rewritten = rewrite_request(
            &rt.config.cluster_header,
            cluster,
            &upstream,
            (timeout_ms, first_byte_ms),
            &credentials,
            body.len(),
            &unchanged,
        );
        if let Err((what, s)) = rewritten {
            self.host_error(what, s);
            return self.answer_error(&ApiError::internal("The gateway could not rewrite the request."));
        }
        self.body = body;
        self.start_attempt(rt, pool, member);
        self.state = State::Routed;
        Action::Continue
    }

    fn start_attempt(&mut self, rt: &Runtime, pool: usize, member: usize) {
        self.current = Some((pool, member));
        self.adapter = adapter_for(rt, self.endpoint, self.stream, pool, member);
        if let Some(mm) = rt.metrics.member(pool, member) {
            rt.metrics.inc(mm.attempts);
        }
    }

    /// Whether `status` from the member in flight calls for failover.
    fn attempt_failed(&self, rt: &Runtime, status: u16) -> bool {
        let pool = self.current.and_then(|(pool, _)| rt.config.pool_at(pool));
        status == 0 || pool.is_some_and(|p| p.retry.should_retry(status))
    }

    /// Records how the attempt in flight ended: in the plan, in shared health, in metrics.
    /// Returns whether it should fail over.
    fn finish_attempt(&mut self, rt: &Runtime, status: u16, retry_after: Option<&str>, now: u64) -> bool {
        let Some((pool_index, member_index)) = self.current.take() else { return false };
        let Some(pool) = rt.config.pool_at(pool_index) else { return false };
        let Some(member) = pool.members.get(member_index) else { return false };
        let failed = status == 0 || pool.retry.should_retry(status);
        if let Some(plan) = self.plan.as_mut() {
            plan.record(&rt.config, pool_index, member_index, status);
        }
        let metrics = rt.metrics.member(pool_index, member_index);
        let transition = if failed {
            rt.metrics.inc(metrics.and_then(|m| m.failures));
            let hold =
                retry_after.filter(|_| status == 429 || status == 503).and_then(|v| retry_after_until_ms(v, now));
            health_store::update(&member.id, |h| {
                let t = h.record_failure(now, &pool.health);
                match hold.map(|until| h.hold_until(until)) {
                    Some(held @ Transition::Ejected { .. }) => held,
                    _ => t,
                }
            })
        } else {
            rt.metrics.inc(metrics.and_then(|m| m.requests));
            if self.picked_health.is_clean() {
                // Nothing to reset: count the success locally, flushed to shared data on tick.
                rt.note_success(&member.id);
                Transition::None
            } else {
                health_store::update(&member.id, |h| h.record_success())
            }
        };
        match transition {
            Transition::Ejected { until_ms } => {
                rt.metrics.inc(metrics.and_then(|m| m.ejections));
                log::info!(
                    "switchboard: member {} ejected for {} ms (last status {status})",
                    member.id,
                    until_ms.saturating_sub(now)
                );
            }
            Transition::Restored => {
                rt.metrics.inc(metrics.and_then(|m| m.restorations));
                log::info!("switchboard: member {} restored", member.id);
            }
            Transition::None => {}
        }
        failed
    }

    /// Dispatches the request to the next member. False when none is left
    /// (or the deadline passed).
    fn dispatch_next(&mut self, rt: &Runtime, now: u64) -> bool {
        loop {
            let Some(plan) = self.plan.as_mut() else { return false };
            if now >= plan.deadline_ms {
                return false;
            }
            let failed_from = plan.attempts.last().map(|a| (a.pool, a.member));
            let Some((pool, member, health)) = next_member(rt, plan, now) else { return false };
            self.picked_health = health;
            if let Some((p, m)) = failed_from {
                rt.metrics.inc(rt.metrics.member(p, m).and_then(|mm| mm.failovers));
                rt.metrics.inc(rt.metrics.pool(p).and_then(|pm| pm.failovers));
            }
            match self.dispatch(rt, pool, member, now) {
                Ok(token) => {
                    self.pending_call = Some(token);
                    self.start_attempt(rt, pool, member);
                    return true;
                }
                Err(e) => {
                    log::warn!(
                        "switchboard: failover call to {} failed to start: {}",
                        member_id(rt, pool, member),
                        e.message
                    );
                    self.start_attempt(rt, pool, member);
                    self.finish_attempt(rt, 0, None, now);
                }
            }
        }
    }

    fn dispatch(&self, rt: &Runtime, pool: usize, member: usize, now: u64) -> Result<u32, ApiError> {
        let parsed = ParsedRequest::parse(&self.body, self.endpoint)?;
        let upstream = build_for(rt, self.endpoint, &parsed, pool, member, now)?;
        let cluster = cluster_of(rt, pool, member).ok_or_else(|| ApiError::internal("member without cluster"))?;
        let forwarded: Vec<(String, String)> = abi::pairs(&self.client_headers)
            .filter_map(|(k, v)| {
                Some((std::str::from_utf8(k).ok()?.to_string(), std::str::from_utf8(v).ok()?.to_string()))
            })
            .filter(|(k, _)| forwardable(k, &rt.config.cluster_header))
            .collect();
        let mut headers = upstream.call_headers(&forwarded);
        let (attempt_ms, first_byte_ms) = self.timeouts_ms(rt, pool, now);
        let first_byte = first_byte_ms.map(|ms| ms.to_string());
        if let Some(ms) = first_byte.as_deref() {
            headers.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms));
        }
        let timeout = Duration::from_millis(attempt_ms);
        proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, Some(&upstream.body), vec![], timeout)
            .map_err(|s| ApiError::internal(format!("dispatch_http_call to cluster {cluster} failed: {s:?}")))
    }

    /// How long an attempt may take, and for a stream how long it may wait
    /// for its response headers. Both are the pool's per-try timeout cut short
    /// by the request's overall deadline, except that a stream's whole attempt
    /// may use the remaining deadline: Envoy's timeout covers the full
    /// response, while its per-try timeout stops counting once the response
    /// has started, so a silent member is failed over in time and a long
    /// stream still runs.
    fn timeouts_ms(&self, rt: &Runtime, pool: usize, now: u64) -> (u64, Option<u64>) {
        let per_try = rt.config.pool_at(pool).map_or(30_000, |p| p.retry.per_try_timeout_ms);
        let remaining = self.plan.as_ref().map_or(per_try, |p| p.deadline_ms.saturating_sub(now));
        let bounded = per_try.min(remaining).max(1);
        if self.stream {
            (remaining.max(1), Some(bounded))
        } else {
            (bounded, None)
        }
    }

    fn exhausted(&mut self, rt: &Runtime) -> Action {
        let error = match &self.plan {
            Some(plan) => {
                rt.metrics.inc(rt.metrics.pool(plan.primary_pool()).and_then(|p| p.exhausted));
                let target = rt.config.pool_at(plan.primary_pool()).map_or("", |p| p.name.as_str());
                plan.exhausted_error(target)
            }
            None => ApiError::unavailable("No upstream could be tried."),
        };
        self.answer_error(&error)
    }

    fn result_headers(&self, rt: &Runtime) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(3);
        if let Some(plan) = &self.plan {
            if let Some(last) = plan.attempts.last() {
                if let Some(pool) = rt.config.pool_at(last.pool) {
                    out.push(("x-switchboard-pool", pool.name.clone()));
                }
                out.push(("x-switchboard-member", last.member_id.clone()));
            }
            out.push(("x-switchboard-attempts", plan.attempts.len().to_string()));
        }
        out
    }
}

/// Whether a client header is copied onto a failover call.
fn forwardable(name: &str, cluster_header: &str) -> bool {
    !name.starts_with(':')
        && !name.starts_with("x-envoy-")
        && name != cluster_header
        && name != "content-type"
        && !NOT_FORWARDED.contains(&name)
        && !CREDENTIAL_HEADERS.contains(&name)
}

/// What the client's request already has right, so it need not be set again.
struct Unchanged<'a> {
    path: &'a str,
    json_content_type: bool,
}

/// Points the paused request at the chosen member: body, path, authority,
/// cluster, credentials and the timeouts (whole attempt, and first byte for streams).
fn rewrite_request(
    cluster_header: &str,
    cluster: &str,
    upstream: &UpstreamRequest,
    (timeout_ms, first_byte_ms): (u64, Option<u64>),
    client_credentials: &[&str],
    original_len: usize,
    unchanged: &Unchanged<'_>,
) -> Result<(), (&'static str, abi::Status)> {
    abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, original_len, &upstream.body).map_err(|s| ("set request body", s))?;
    // The client's own credentials never go upstream.
    for name in client_credentials {
        abi::remove_header(REQ, name).map_err(|s| ("remove credential header", s))?;
    }
    let set = |name: &str, value: &str| abi::set_header(REQ, name, value).map_err(|s| ("set request header", s));
    if upstream.path != unchanged.path {
        set(":path", &upstream.path)?;
    }
    set(":authority", &upstream.authority)?;
    set(cluster_header, cluster)?;
    set("content-length", &upstream.body.len().to_string())?;
    // The body is the gateway's JSON, whatever the client labelled its own.
    if !unchanged.json_content_type {
        set("content-type", "application/json")?;
    }
    set("x-envoy-upstream-rq-timeout-ms", &timeout_ms.to_string())?;
    if let Some(ms) = first_byte_ms {
        set("x-envoy-upstream-rq-per-try-timeout-ms", &ms.to_string())?;
    }
    for (name, value) in &upstream.headers {
        set(name, value)?;
    }
    Ok(())
}

/// The response adapter for a member, if its provider needs one.
fn adapter_for(rt: &Runtime, endpoint: Endpoint, stream: bool, pool: usize, member: usize) -> Option<ResponseAdapter> {
    let m = rt.config.pool_at(pool)?.members.get(member)?;
    let provider = rt.config.provider(m.provider)?;
    let adapter = ResponseAdapter::new(provider.kind, endpoint, stream, &m.model)?;
    Some(adapter.with_created(abi::now_ms().unwrap_or(0) / 1000))
}

fn member_id(rt: &Runtime, pool: usize, member: usize) -> &str {
    rt.config.pool_at(pool).and_then(|p| p.members.get(member)).map_or("?", |m| m.id.as_str())
}

fn cluster_of(rt: &Runtime, pool: usize, member: usize) -> Option<&str> {
    let m = rt.config.pool_at(pool)?.members.get(member)?;
    rt.config.provider(m.provider).map(|p| p.cluster.as_str())
}

/// Chooses the next member to try, with the health snapshot seen when choosing.
fn next_member(rt: &Runtime, plan: &mut Plan, now: u64) -> Option<(usize, usize, MemberHealth)> {
    let random = rt.rng.borrow_mut().next_u64();
    let mut cache = rt.health.borrow_mut();
    cache.refresh();
    let cache = RefCell::new(cache);
    let (pool, member) = plan.next(&rt.config, |m| cache.borrow_mut().get(&m.id).availability(now), random)?;
    let p = rt.config.pool_at(pool)?;
    let m = p.members.get(member)?;
    let snapshot = cache.borrow_mut().get(&m.id);
    drop(cache);
    // A member past its cooldown takes one trial request; claim it so other
    // workers keep skipping it until the trial ends.
    if snapshot.availability(now) == Availability::Trial {
        let hold = p.retry.per_try_timeout_ms;
        health_store::update(&m.id, |h| {
            h.begin_trial(now, hold);
            Transition::None
        });
    }
    Some((pool, member, snapshot))
}

fn build_for(
    rt: &Runtime,
    endpoint: Endpoint,
    parsed: &ParsedRequest<'_>,
    pool: usize,
    member: usize,
    now_ms: u64,
) -> Result<UpstreamRequest, ApiError> {
    let p = rt.config.pool_at(pool).ok_or_else(|| ApiError::internal("unknown pool"))?;
    let m = p.members.get(member).ok_or_else(|| ApiError::internal("unknown member"))?;
    let provider = rt.config.provider(m.provider).ok_or_else(|| ApiError::internal("unknown provider"))?;
    let ctx = BuildContext { now_unix_s: now_ms / 1000, max_response_tokens: p.max_response_tokens };
    build_request(provider, m, endpoint, parsed, &ctx)
}

impl Context for Filter {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if self.pending_call != Some(token_id) || self.state != State::Failover {
            return;
        }
        self.pending_call = None;
        let Some(rt) = self.rt.clone() else { return };
        let now = self.now_ms();
        // A call that failed (reset, refused, timed out) arrives with no headers.
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            abi::headers(abi::MAP_HTTP_CALL_RESPONSE_HEADERS).unwrap_or_else(|s| {
                self.host_error("get call response headers", s);
                Vec::new()
            })
        };
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let status = find(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        let retry_after = find("retry-after").map(str::to_string);
        if self.finish_attempt(&rt, status, retry_after.as_deref(), now) {
            if !self.dispatch_next(&rt, now) {
                self.exhausted(&rt);
            }
            return;
        }
        let body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size).unwrap_or_else(|s| {
            self.host_error("get call response body", s);
            Vec::new()
        });
        let mut content_type = find("content-type").unwrap_or("application/json").to_string();
        let mut status = status;
        let body = match self.adapter.as_mut() {
            Some(adapter) if status < 400 && adapter.content_type() == "text/event-stream" => {
                content_type = adapter.content_type().to_string();
                adapter.translate_stream(&body, true)
            }
            Some(adapter) => {
                content_type = "application/json".to_string();
                let translated = adapter.translate_body(status, &body);
                if adapter.translation_failed() {
                    rt.metrics.local_error("bad_upstream_response");
                    status = 502;
                }
                translated
            }
            None => body,
        };
        let extra = self.result_headers(&rt);
        let mut out: Vec<(&str, &str)> = vec![("content-type", &content_type)];
        for (k, v) in &extra {
            out.push((k, v));
        }
        self.respond(status, &out, &body);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return self.answer_error(&ApiError::internal("switchboard is not configured"));
        };
        // One host call for every header the filter needs now and for failover later.
        let raw = match abi::headers_raw(REQ) {
            Ok(raw) => raw,
            Err(s) => {
                self.host_error("get request headers", s);
                return self.answer_error(&ApiError::internal("The gateway could not read the request headers."));
            }
        };
        let header = |name: &str| {
            abi::pairs(&raw).find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let path = header(":path").unwrap_or_default();
        let method = header(":method").unwrap_or_default();
        let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
        self.client_sent_json = header("content-type").is_some_and(|v| v == "application/json");
        // A client can never pick a cluster: the header is the filter's alone.
        if header(&rt.config.cluster_header).is_some() {
            if let Err(s) = abi::remove_header(REQ, &rt.config.cluster_header) {
                self.host_error("remove cluster header", s);
                return self.answer_error(&ApiError::internal("The gateway could not process the request headers."));
            }
        }
        self.original_path = path.clone();
        self.client_headers = raw;
        let Some((endpoint, query)) = Endpoint::from_path(&path) else {
            return self.answer_error(&ApiError::not_found(path.split('?').next().unwrap_or("")));
        };
        self.endpoint = endpoint;
        if method != endpoint.method() && !(endpoint == Endpoint::Models && method == "HEAD") {
            let clean = path.split('?').next().unwrap_or("");
            return self.answer_error(&ApiError::method_not_allowed(&method, clean, endpoint.method()));
        }
        if endpoint == Endpoint::Models {
            let body = rt.listing.body(query).to_vec();
            self.respond(200, &[("content-type", "application/json")], &body);
            return Action::Pause;
        }
        if declared.is_some_and(|n| n > rt.config.max_body_bytes) {
            return self.answer_error(&ApiError::body_too_large(rt.config.max_body_bytes));
        }
        if end_of_stream || declared == Some(0) {
            return self.answer_error(&ApiError::invalid_request(
                "invalid_json",
                "Request body is empty; expected a JSON object.",
            ));
        }
        // Hold the headers until the body says where the request goes
        // (needs allow_on_headers_stop_iteration in the plugin config).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state != State::Reading {
            return if self.state == State::Answered { Action::Pause } else { Action::Continue };
        }
        let Some(rt) = self.rt.clone() else { return Action::Pause };
        if body_size > rt.config.max_body_bytes {
            return self.answer_error(&ApiError::body_too_large(rt.config.max_body_bytes));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match abi::buffer(abi::BUFFER_REQUEST_BODY, 0, body_size) {
            Ok(body) => self.route(&rt, body),
            Err(s) => {
                self.host_error("get request body", s);
                self.answer_error(&ApiError::internal("The gateway could not read the request body."))
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.state != State::Routed {
            // Our own local reply passing through, or a request we did not route.
            return Action::Continue;
        }
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        let status = abi::header_str(RESP, ":status")
            .unwrap_or_else(|s| {
                self.host_error("get response status", s);
                None
            })
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        // The common case (a success from a healthy member) needs neither the
        // clock nor Retry-After: skip those host calls.
        let failed = self.attempt_failed(&rt, status);
        let now = if failed || !self.picked_health.is_clean() { self.now_ms() } else { 0 };
        let retry_after = if failed { abi::header_str(RESP, "retry-after").ok().flatten() } else { None };
        if self.finish_attempt(&rt, status, retry_after.as_deref(), now) {
            self.state = State::Failover;
            if self.dispatch_next(&rt, now) {
                return Action::Pause;
            }
            return self.exhausted(&rt);
        }
        self.upstream_status = status;
        let mut headers = self.result_headers(&rt);
        if let Some(adapter) = &self.adapter {
            let streaming = status < 400 && adapter.content_type() == "text/event-stream";
            self.translation = if streaming { Translation::Stream } else { Translation::WholeBody };
            let content_type = if streaming { "text/event-stream" } else { "application/json" };
            headers.push(("content-type", content_type.to_string()));
            if let Err(s) = abi::remove_header(RESP, "content-length") {
                self.host_error("remove content-length", s);
            }
        }
        for (name, value) in headers {
            if let Err(s) = abi::set_header(RESP, name, &value) {
                self.host_error("set response header", s);
            }
        }
        // A translated whole body is only known good once read: hold the
        // headers so an unreadable answer can still become a 502.
        if self.translation == Translation::WholeBody && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.state {
            // Hold the failed upstream's body back until the local answer replaces it.
            State::Failover => return Action::Pause,
            State::Routed => {}
            _ => return Action::Continue,
        }
        let translation = self.translation;
        if translation == Translation::None {
            return Action::Continue;
        }
        if translation == Translation::WholeBody && !end_of_stream {
            return Action::Pause;
        }
        let chunk = match abi::buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size) {
            Ok(chunk) => chunk,
            Err(s) => {
                self.host_error("get response body", s);
                return Action::Continue;
            }
        };
        let status = self.upstream_status;
        let Some(adapter) = self.adapter.as_mut() else { return Action::Continue };
        let out = if translation == Translation::Stream {
            adapter.translate_stream(&chunk, end_of_stream)
        } else {
            adapter.translate_body(status, &chunk)
        };
        let unreadable = translation == Translation::WholeBody && adapter.translation_failed();
        if unreadable {
            // The headers are still held: treat the answer as the member's 502
            // and fail over like any other failure.
            let Some(rt) = self.rt.clone() else { return Action::Continue };
            rt.metrics.local_error("bad_upstream_response");
            let last = self.plan.as_mut().and_then(|p| p.attempts.pop());
            log::warn!(
                "switchboard: unreadable {status} answer from {}",
                last.as_ref().map_or("?", |a| a.member_id.as_str())
            );
            if let Some(last) = last {
                let now = self.now_ms();
                self.current = Some((last.pool, last.member));
                if self.finish_attempt(&rt, 502, None, now) {
                    self.state = State::Failover;
                    if self.dispatch_next(&rt, now) {
                        return Action::Pause;
                    }
                    return self.exhausted(&rt);
                }
            }
            if let Err(s) = abi::set_header(RESP, ":status", "502") {
                self.host_error("set response status", s);
            }
        }
        if let Err(s) = abi::set_buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size, &out) {
            self.host_error("set response body", s);
        }
        Action::Continue
    }
}
