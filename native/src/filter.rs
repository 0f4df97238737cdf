//! One client request in the dynamic module: reads what Envoy hands the
//! hooks, asks the host-free `switchboard::exchange` what to do, and applies
//! it with the ABI's callbacks. The same decisions as the proxy-wasm host
//! (`src/host/filter.rs`) for what this host serves (see docs/native.md):
//! the request held until its body is in, routed by rewriting it (cluster
//! header, path, authority, credentials, body) for Envoy's router; a
//! retriable answer fails over through HTTP callouts, the first good answer
//! replacing it; answers translated back through the exchange's answer chain.

use std::sync::Arc;

use switchboard::api::forward::forwarded;
use switchboard::api::request::ParsedRequest;
use switchboard::api::{ApiError, ErrorCode};
use switchboard::config::MemberRef;
use switchboard::doors::{messages, Door};
use switchboard::exchange::{
    build_upstream, BodyFor, BodyRead, BodyStep, CallStep, Calls, Exchange, HeadersStep, Opening, Relays, State, Step,
};
use switchboard::observe::{CallRecord, Outcome};
use switchboard::providers::UpstreamRequest;
use switchboard::routing::router::HeaderLookup;
use switchboard::routing::Plan;

use crate::abi::{self, Stream, REQUEST_HEADERS as REQ, RESPONSE_HEADERS as RESP};
use crate::metrics::{Family, Labels};
use crate::state::{self, Runtime};

/// Names the authenticated tenant on the request, for Envoy filters after this one.
const TENANT_HEADER: &str = "x-switchboard-tenant";
/// The call-log line's filter-state key (`%FILTER_STATE(switchboard.call:PLAIN)%`).
const CALL_LOG_KEY: &str = "switchboard.call";

pub struct Filter {
    rt: Arc<Runtime>,
    ex: Exchange,
    /// The client's request headers as they came.
    client_headers: Vec<(String, String)>,
    /// The request body ended with trailers: all of it is in Envoy's buffer (nothing "received").
    in_trailers: bool,
}

/// The calls a request sends on its own (failovers), as HTTP callouts with
/// the client's allow-listed headers.
struct Caller<'a> {
    s: Stream,
    rt: &'a Runtime,
    client_headers: &'a [(String, String)],
}

impl Calls for Caller<'_> {
    fn send(
        &mut self,
        ex: &Exchange,
        member: MemberRef,
        upstream: &UpstreamRequest,
        stream: bool,
        now: u64,
    ) -> Result<u64, ApiError> {
        let present = self.client_headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
        let call = ex
            .dispatch(self.rt, member, now, upstream, stream, present)
            .ok_or_else(|| ApiError::internal("member without cluster"))?;
        let cluster = call.cluster;
        self.s
            .callout(cluster, &call.headers(), call.body(), call.timeout_ms)
            .map_err(|r| ApiError::internal(format!("HTTP callout to cluster {cluster} failed to start ({r})")))
    }
}

/// What a hook tells Envoy (the status enums of the ABI).
pub type Status = u32;

struct Headers<'a>(&'a [(String, String)]);

impl HeaderLookup for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        header(self.0, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl Filter {
    pub fn new(rt: Arc<Runtime>) -> Filter {
        Filter { rt, ex: Exchange::default(), client_headers: Vec::new(), in_trailers: false }
    }

    /// Does what the exchange asks: a reply is sent as Envoy's local reply.
    fn apply(&mut self, s: Stream, step: Step) -> Status {
        match step {
            Step::Continue => abi::HEADERS_CONTINUE,
            Step::Pause => abi::HEADERS_STOP_ITERATION,
            Step::Reply { status, headers, body } => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
                s.send_response(status, &headers, &body, "switchboard");
                abi::HEADERS_STOP_ITERATION
            }
        }
    }

    fn answer_error(&mut self, s: Stream, error: &ApiError) -> Status {
        let rt = self.rt.clone();
        let step = self.ex.error_reply(&*rt, error);
        self.apply(s, step)
    }

    /// Fails the request after a panic caught at the boundary (as the wasm build's trap would).
    pub fn fail_internal(&mut self, s: Stream) {
        if !matches!(self.ex.state, State::Answered) {
            self.ex.state = State::Answered;
            let body = ApiError::internal("The gateway failed on this request.").to_json();
            s.send_response(500, &[("content-type", "application/json")], &body, "switchboard_panic");
        }
    }

    pub fn on_request_headers(&mut self, s: Stream, end_of_stream: bool) -> Status {
        let rt = self.rt.clone();
        self.ex.obs.start_ms = state::now_ms();
        let raw = s.headers(REQ);
        // This build replays nothing: a failover token is never a client's.
        let opening = self.ex.request_headers(&*rt, &raw.as_slice(), end_of_stream, false, state::random);
        self.client_headers = raw;
        match opening {
            Opening::Step(Step::Pause) if self.ex.body_for == BodyFor::Feedback => {}
            Opening::Step(step) => return self.apply(s, step),
            // Answered at once here: the call log of a refused key does not wait for its model.
            Opening::RefuseAfterBody(e) => return self.answer_error(s, &e),
            Opening::Replay(_) | Opening::Followup => {}
        }
        // Not served by this build yet (docs/native.md).
        let path = header(&self.client_headers, ":path").unwrap_or_default();
        let e = ApiError::not_found(path.split('?').next().unwrap_or(""));
        self.answer_error(s, &e)
    }

    pub fn on_request_body(&mut self, s: Stream, end_of_stream: bool) -> Status {
        match self.ex.state {
            State::Reading => {}
            State::Answered => return abi::BODY_STOP_NO_BUFFER,
            _ => return abi::BODY_CONTINUE,
        }
        let max = self.rt.config.max_body_bytes;
        let size = s.body_size(abi::BUFFERED_REQUEST_BODY) + s.body_size(abi::RECEIVED_REQUEST_BODY);
        if size > max {
            self.answer_error(s, &ApiError::body_too_large(max));
            return abi::BODY_STOP_NO_BUFFER;
        }
        if !end_of_stream {
            return abi::BODY_STOP_AND_BUFFER;
        }
        let mut body = Vec::with_capacity(size);
        s.read_body(abi::BUFFERED_REQUEST_BODY, &mut body);
        s.read_body(abi::RECEIVED_REQUEST_BODY, &mut body);
        self.serve(s, body)
    }

    /// A body followed by trailers ends here.
    pub fn on_request_trailers(&mut self, s: Stream) -> Status {
        if !matches!(self.ex.state, State::Reading) {
            return abi::HEADERS_CONTINUE;
        }
        let mut body = Vec::new();
        s.read_body(abi::BUFFERED_REQUEST_BODY, &mut body);
        self.in_trailers = true;
        if body.len() > self.rt.config.max_body_bytes {
            self.answer_error(s, &ApiError::body_too_large(self.rt.config.max_body_bytes));
            return abi::HEADERS_STOP_ITERATION;
        }
        match self.serve(s, body) {
            abi::BODY_CONTINUE => abi::HEADERS_CONTINUE,
            _ => abi::HEADERS_STOP_ITERATION,
        }
    }

    /// A complete request body: token counting answered here, the rest routed.
    fn serve(&mut self, s: Stream, body: Vec<u8>) -> Status {
        if self.ex.door == Door::CountTokens {
            let rt = self.rt.clone();
            let step = match messages::count_tokens(&body) {
                Ok(count) => self.ex.json_reply(&*rt, count),
                Err(e) => self.ex.refuse_door_request(&*rt, &e),
            };
            self.apply(s, step);
            return abi::BODY_STOP_NO_BUFFER;
        }
        match self.route(s, body) {
            Ok(()) => abi::BODY_CONTINUE,
            Err(e) => {
                if let Some(e) = e {
                    self.answer_error(s, &e);
                }
                abi::BODY_STOP_NO_BUFFER
            }
        }
    }

    /// Plans the request, admits its tenant, picks a member and points the request at it.
    /// `Err(None)`: answered already (every member out).
    fn route(&mut self, s: Stream, client_body: Vec<u8>) -> Result<(), Option<ApiError>> {
        let rt = self.rt.clone();
        let client_len = client_body.len();
        let (body, native_only) = match self.ex.door.to_chat(&client_body, self.ex.anthropic_beta.as_deref()) {
            Ok(Some(routed)) => {
                self.ex.door_body = client_body;
                (routed.chat, routed.native_only)
            }
            Ok(None) => (client_body, None),
            Err(e) => {
                let step = self.ex.refuse_door_request(&*rt, &e);
                self.apply(s, step);
                return Err(None);
            }
        };
        let now = state::now_ms();
        let (plan, picked, upstream) = {
            let mut parsed = ParsedRequest::parse(&body, self.ex.endpoint)?;
            // A stand-in for a door body only native members take: its fields are not chat parameters.
            if native_only.is_some() {
                parsed.params = 0;
            }
            let headers = Headers(&self.client_headers);
            let mut plan = self.ex.plan(&*rt, &parsed, &headers, None, native_only, now)?;
            self.admit_tenant(&parsed, &plan, client_len, now)?;
            let Some(picked) = self.ex.pick_first(&*rt, &mut plan, now) else {
                self.ex.plan = Some(plan);
                let step = self.ex.exhausted(&*rt);
                self.apply(s, step);
                return Err(None);
            };
            let upstream = build_upstream(&*rt, self.ex.endpoint, &parsed, picked.member, now, self.ex.native_body())?;
            self.ex.routed(&parsed, body.len(), now);
            (plan, picked, upstream)
        };
        self.ex.plan = Some(plan);
        let timeouts = self.ex.timeouts_ms(&*rt, picked.member.pool, now, self.ex.shape.stream);
        self.rewrite_request(s, picked.member, &upstream, timeouts, client_len);
        self.ex.body = body;
        self.ex.state = State::Routed(self.ex.begin(&*rt, picked, now));
        Ok(())
    }

    /// The calling tenant's admission (`Exchange::tenant_ask`), decided by this module's store.
    fn admit_tenant(
        &mut self,
        parsed: &ParsedRequest<'_>,
        plan: &Plan,
        body_len: usize,
        now: u64,
    ) -> Result<(), ApiError> {
        let rt = self.rt.clone();
        let Some(ask) = self.ex.tenant_ask(&*rt, parsed, plan, body_len)? else { return Ok(()) };
        let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(ask.index)) else { return Ok(()) };
        let verdict = state::admit_tenant(tenant, now / 1000, ask.reserve, ask.budget.micro_usd).map(Some);
        self.ex.tenant_verdict(&*rt, &ask, verdict, now)
    }

    /// Points the held request at `member`: body, then the headers the gateway sets
    /// (client headers off the allow-list removed), then the route is chosen again.
    fn rewrite_request(
        &self,
        s: Stream,
        member: MemberRef,
        upstream: &UpstreamRequest,
        (timeout_ms, first_byte_ms): (u64, Option<u64>),
        original_len: usize,
    ) {
        let rt = &self.rt;
        let extra = self.ex.native_headers(&**rt, member);
        let own_body = !(upstream.body.is_empty() && original_len == 0);
        if own_body && self.in_trailers {
            s.replace_body(abi::BUFFERED_REQUEST_BODY, &upstream.body);
        } else if own_body {
            s.drain_body(abi::BUFFERED_REQUEST_BODY);
            s.replace_body(abi::RECEIVED_REQUEST_BODY, &upstream.body);
        }
        let cluster = cluster_of(rt, member).unwrap_or_default();
        let content_length = upstream.body.len().to_string();
        let timeout = timeout_ms.to_string();
        let first_byte = first_byte_ms.map(|ms| ms.to_string());
        let tenant = self.ex.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index));
        let mut ours: Vec<(&str, &str)> = Vec::with_capacity(12);
        ours.push((":authority", &upstream.authority));
        if own_body {
            ours.push(("content-length", &content_length));
        }
        ours.push((&rt.config.cluster_header, cluster));
        ours.push(("x-envoy-upstream-rq-timeout-ms", &timeout));
        if let Some(ms) = first_byte.as_deref() {
            ours.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms));
        }
        ours.extend(upstream.headers.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(t) = tenant {
            ours.push((TENANT_HEADER, &t.name));
        }
        let sets = |name: &str| ours.iter().any(|(n, _)| *n == name);
        let mut client_path = "";
        let mut json = false;
        for (k, v) in &self.client_headers {
            match k.as_str() {
                ":path" => client_path = v,
                "content-type" => json = v == "application/json",
                ":method" | ":scheme" | ":authority" => {}
                _ if forwarded(k.as_bytes(), true, extra) || sets(k) => {}
                _ => {
                    s.remove_header(REQ, k);
                }
            }
        }
        if upstream.path != client_path {
            ours.push((":path", &upstream.path));
        }
        if !json && !ours.iter().any(|(n, _)| *n == "content-type") {
            ours.push(("content-type", "application/json"));
        }
        for (k, v) in ours {
            s.set_header(REQ, k, v);
        }
        s.clear_route_cache();
    }

    pub fn on_response_headers(&mut self, s: Stream, end_of_stream: bool) -> Status {
        if !matches!(self.ex.state, State::Routed(_) | State::Failover { .. }) {
            return abi::HEADERS_CONTINUE;
        }
        let rt = self.rt.clone();
        let headers = s.headers(RESP);
        // This host neither holds a stream's headers for its first event nor continues a broken stream.
        let can = Relays { prime: false, resume: false };
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        match self.ex.response_headers(&*rt, &headers.as_slice(), end_of_stream, can, &mut caller) {
            HeadersStep::Step(step) => self.apply(s, step),
            HeadersStep::Answer { set, drop, hold, .. } => {
                for (k, v) in &set {
                    s.set_header(RESP, k, v);
                }
                for name in drop {
                    s.remove_header(RESP, name);
                }
                if hold {
                    abi::HEADERS_STOP_ITERATION
                } else {
                    abi::HEADERS_CONTINUE
                }
            }
        }
    }

    /// A call of this request answered (or failed: no headers): the exchange
    /// says what becomes of it (the failover's answer replaces the failed one,
    /// or the next member is tried).
    pub fn on_callout_done(&mut self, s: Stream, id: u64, headers: Vec<(String, String)>, body: Vec<u8>) {
        let rt = self.rt.clone();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        if let CallStep::Step(Step::Reply { status, headers, body }) =
            self.ex.call_answered(&*rt, id, &headers, || body, &mut caller)
        {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
            s.send_response(status, &headers, &body, "switchboard_failover");
        }
    }

    pub fn on_response_body(&mut self, s: Stream, end_of_stream: bool) -> Status {
        let rt = self.rt.clone();
        let holding = matches!(self.ex.state, State::Holding { .. });
        match self.ex.body_read(&*rt, 0, end_of_stream) {
            BodyRead::Skip(Step::Pause) if holding => return abi::BODY_STOP_AND_BUFFER,
            BodyRead::Skip(Step::Pause) => return abi::BODY_STOP_NO_BUFFER,
            BodyRead::Skip(_) => return abi::BODY_CONTINUE,
            BodyRead::From(_) => {}
        }
        // A held whole body is in Envoy's buffer and this last piece; a relayed one is this piece.
        let mut chunk = Vec::new();
        if holding {
            s.read_body(abi::BUFFERED_RESPONSE_BODY, &mut chunk);
        }
        s.read_body(abi::RECEIVED_RESPONSE_BODY, &mut chunk);
        let size = chunk.len();
        let mut caller = Caller { s, rt: &rt, client_headers: &self.client_headers };
        let BodyStep { body, status, step } = self.ex.response_body(&*rt, chunk, size, end_of_stream, &mut caller);
        if let Some(status) = status {
            s.set_header(RESP, ":status", &status.to_string());
        }
        match (body, holding) {
            (Some(out), true) => {
                s.drain_body(abi::BUFFERED_RESPONSE_BODY);
                s.replace_body(abi::RECEIVED_RESPONSE_BODY, &out);
                s.set_header(RESP, "content-length", &out.len().to_string());
            }
            (Some(out), false) => {
                s.replace_body(abi::RECEIVED_RESPONSE_BODY, &out);
            }
            // A held answer failed over: its body is replaced by the failover's answer.
            (None, true) => {
                s.drain_body(abi::BUFFERED_RESPONSE_BODY);
                s.drain_body(abi::RECEIVED_RESPONSE_BODY);
            }
            (None, false) => {}
        }
        match step {
            Step::Continue => abi::BODY_CONTINUE,
            Step::Pause => abi::HEADERS_STOP_ITERATION,
            reply => self.apply(s, reply),
        }
    }

    /// The request is over, however it ended: the attempt still open is judged,
    /// the call log written, the tenant's admission settled.
    pub fn on_stream_complete(&mut self, s: Stream) {
        let rt = self.rt.clone();
        self.ex.end_unfinished(&*rt, || s.attribute_string(abi::ATTRIBUTE_RESPONSE_CODE_DETAILS).unwrap_or_default());
        let ended_ms = self.ex.obs.end_ms(state::now_ms);
        self.ex.count_relayed();
        self.report(s, ended_ms);
        self.release_tenant(ended_ms);
    }

    /// The call-log line (as filter state, when an access log prints it) and the request-end stats
    /// (as `host::observe::report`).
    fn report(&self, s: Stream, ended_ms: u64) {
        let obs = &self.ex.obs;
        let config = &self.rt.config;
        let served = obs.attempts.last().filter(|(_, status, _)| (200..300).contains(status)).map(|(m, _, _)| *m);
        let shown = served.or(obs.attempts.last().map(|(m, _, _)| *m));
        let usage = self.ex.answer.usage();
        let tokens = served.map(|_| usage.unwrap_or(obs.estimate));
        let cost = served.zip(tokens).and_then(|(m, t)| {
            let prices = config.member(m)?.prices();
            prices.priced().then(|| prices.cost(t))
        });
        let plan = self.ex.plan.as_ref();
        let tenant = self.ex.tenant.as_ref().map(|t| t.index);
        let labels = Labels {
            pool: shown.map(|m| m.pool).or(plan.map(Plan::primary_pool)).unwrap_or(Labels::NONE),
            member: shown.map_or(Labels::NONE, |m| m.member),
            tenant: tenant.unwrap_or(Labels::NONE),
        };
        let metrics = &self.rt.metrics;
        let outcome = Outcome::of(obs.status, obs.error, obs.exhausted);
        metrics.count(Family::Requests(outcome), labels, 1);
        if let Some(t) = tokens {
            metrics.count(Family::InputTokens, labels, t.prompt);
            metrics.count(Family::OutputTokens, labels, t.completion);
            // Parts of the input above (not added to it); most answers have none.
            for (family, n) in [(Family::CacheReadTokens, t.cached), (Family::CacheWriteTokens, t.cache_write)] {
                if let Some(n) = n.filter(|n| *n > 0) {
                    metrics.count(family, labels, n);
                }
            }
            metrics.count(Family::UsageEstimated, labels, u64::from(usage.is_none()));
            metrics.count(Family::CostMicroUsd, labels, cost.unwrap_or(0));
        }
        if !obs.attempts.is_empty() {
            metrics.record(Family::Duration(outcome), labels, ended_ms.saturating_sub(obs.start_ms));
        }
        if served.is_some() && self.ex.shape.stream && obs.first_event_ms > 0 {
            metrics.record(Family::FirstToken, labels, obs.first_event_ms.saturating_sub(obs.start_ms));
        }
        if !config.call_log {
            return;
        }
        let pool = shown.map(|m| m.pool).or(plan.map(Plan::primary_pool));
        let (router, rule) = plan.and_then(|p| p.router_headers(config)).unzip();
        let first_byte =
            if self.ex.shape.stream && obs.first_event_ms > 0 { obs.first_event_ms } else { obs.first_byte_ms };
        let attempts: Vec<switchboard::observe::AttemptLog<'_>> = obs
            .attempts
            .iter()
            .map(|(m, status, ms)| switchboard::observe::AttemptLog {
                member: config.member(*m).map_or("?", |mm| mm.id.as_str()),
                status: *status,
                ms: *ms,
            })
            .collect();
        let record = CallRecord {
            start_ms: obs.start_ms,
            end_ms: ended_ms,
            request_id: &self.ex.request_id,
            tenant: self.ex.tenant.as_ref().and_then(|t| Some(config.tenants.as_ref()?.get(t.index)?.name.as_str())),
            model: obs.model.as_deref(),
            pool: pool.and_then(|p| config.pool_at(p)).map(|p| p.name.as_str()),
            router,
            rule,
            member: shown.and_then(|m| config.member(m)).map(|m| m.id.as_str()),
            status: obs.status,
            error: obs.error.map(ErrorCode::as_str),
            stream: self.ex.shape.stream,
            attempts,
            tokens,
            usage_estimated: usage.is_none(),
            cost_micro_usd: cost,
            first_byte_ms: (first_byte > 0).then(|| first_byte.saturating_sub(obs.start_ms)),
            duration_ms: ended_ms.saturating_sub(obs.start_ms),
            limits: obs.limits,
            cut: obs.cut,
            feedback_id: obs.feedback_id.as_deref(),
            prompt: obs.prompt.as_deref(),
            feedback: None,
        };
        s.set_filter_state(CALL_LOG_KEY, &record.json());
    }

    /// The tenant's request ended: the exchange's settlement, told to this module's store.
    fn release_tenant(&mut self, ended_ms: u64) {
        let rt = self.rt.clone();
        let Some((index, _, end)) = self.ex.settlement(&*rt) else { return };
        if let Some(tenant) = rt.config.tenants.as_ref().and_then(|t| t.get(index)) {
            state::settle_tenant(tenant, ended_ms / 1000, &end);
        }
    }
}

fn cluster_of(rt: &Runtime, member: MemberRef) -> Option<&str> {
    rt.config.resolve(member).map(|(_, _, provider)| provider.cluster.as_str())
}
