//! Listener state, connection handling, the response body type and the
//! per-request flow (record -> fault -> auth -> kind handler).

use crate::faults::{Action, FaultSpec};
use crate::kinds::{self, Ctx, Kind, StreamOpts};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Requests kept by `GET /_mock/requests`.
pub const RECORD_CAP: usize = 200;
/// A `hang` gives up after this long (so abandoned connections do not pile up forever).
const MAX_HANG: Duration = Duration::from_secs(3600);
/// Grace period for the first chunk to reach the socket before a mid-stream reset.
const RESET_GRACE: Duration = Duration::from_millis(50);

pub struct Stats {
    pub requests: AtomicU64,
    pub by_status: Vec<AtomicU64>, // index = status code (0..600)
    pub resets: AtomicU64,
    pub hangs: AtomicU64,
    pub in_flight: AtomicI64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: AtomicU64::new(0),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            resets: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
    pub fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        for s in &self.by_status {
            s.store(0, Ordering::Relaxed);
        }
        self.resets.store(0, Ordering::Relaxed);
        self.hangs.store(0, Ordering::Relaxed);
    }
    fn count_status(&self, s: StatusCode) {
        if let Some(c) = self.by_status.get(s.as_u16() as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Global defaults from the command line.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub stream_chunks: usize,
    pub stream_delay: Duration,
    pub record: bool,
}

pub struct Listener {
    pub name: String,
    pub kind: Kind,
    pub key: Option<String>,
    pub secret: Option<String>,
    pub faults: Mutex<Option<Arc<FaultSpec>>>,
    has_faults: AtomicBool,
    pub stats: Stats,
    pub recorded: Option<Mutex<VecDeque<Recorded>>>,
    pub defaults: Defaults,
    ids: AtomicU64,
    pub name_header: HeaderValue,
}

impl Listener {
    pub fn new(name: String, kind: Kind, key: Option<String>, secret: Option<String>, defaults: Defaults) -> Listener {
        let name_header = HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("mock"));
        Listener {
            recorded: defaults.record.then(|| Mutex::new(VecDeque::with_capacity(RECORD_CAP))),
            name,
            kind,
            key,
            secret,
            faults: Mutex::new(None),
            has_faults: AtomicBool::new(false),
            stats: Stats::new(),
            defaults,
            ids: AtomicU64::new(1),
            name_header,
        }
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_faults(&self, spec: Option<FaultSpec>) {
        let mut g = lock(&self.faults);
        self.has_faults.store(spec.is_some(), Ordering::Release);
        *g = spec.map(Arc::new);
    }

    fn current_faults(&self) -> Option<Arc<FaultSpec>> {
        if !self.has_faults.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.faults).clone()
    }

    pub fn clear_recorded(&self) {
        if let Some(r) = &self.recorded {
            lock(r).clear();
        }
    }
}

/// Lock a mutex, ignoring poisoning (the data stays usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Connections and resets

/// Per-connection control: lets a request ask for the TCP connection to be
/// torn down with an RST.
#[derive(Default)]
pub struct ConnCtl {
    reset: AtomicBool,
    notify: Notify,
}

impl ConnCtl {
    pub fn trigger_reset(&self) {
        self.reset.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// TcpStream that sets SO_LINGER 0 on drop when a reset was requested, so the
/// close sends an RST instead of a FIN.
struct CtlStream {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for CtlStream {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::Acquire) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for CtlStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CtlStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accept loop of one listener.
pub async fn serve(listener: Arc<Listener>, tcp: TcpListener) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = match tcp.accept().await {
            Ok(s) => s,
            Err(_) => {
                // e.g. EMFILE: back off a little instead of spinning
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener = listener.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let ctl = Arc::new(ConnCtl::default());
            let io = TokioIo::new(CtlStream { inner: stream, ctl: ctl.clone() });
            let ctl2 = ctl.clone();
            let svc = hyper::service::service_fn(move |req| {
                let listener = listener.clone();
                let ctl = ctl2.clone();
                async move { Ok::<_, Infallible>(handle(listener, ctl, req).await) }
            });
            let conn = builder.serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = ctl.notify.notified() => {} // drop the connection: RST
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Response body

/// Response body: a complete buffer, or a sequence of events sent as separate
/// frames with optional delays and an optional mid-stream reset.
pub enum MockBody {
    Full(Option<Bytes>),
    Events(Box<EventBody>),
}

pub struct EventBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
    reset_after_first: Option<Arc<ConnCtl>>,
    resetting: bool,
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> MockBody {
        MockBody::Full(Some(b.into()))
    }
    pub fn events(events: Vec<Bytes>, opts: &StreamOpts) -> MockBody {
        MockBody::Events(Box::new(EventBody {
            events: events.into(),
            delay: opts.delay,
            sleep: None,
            sent: 0,
            reset_after_first: opts.reset_after_first.clone(),
            resetting: false,
        }))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Events(e) => e.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Events(e) => e.events.is_empty() && e.reset_after_first.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Events(_) => SizeHint::default(),
        }
    }
}

impl EventBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(s) = self.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                if self.resetting {
                    if let Some(ctl) = &self.reset_after_first {
                        ctl.trigger_reset();
                    }
                    // The connection task drops the connection; never finish.
                    return Poll::Pending;
                }
            }
            if self.resetting {
                return Poll::Pending;
            }
            if self.sent >= 1 && self.reset_after_first.is_some() {
                self.resetting = true;
                self.sleep = Some(Box::pin(tokio::time::sleep(self.delay.max(RESET_GRACE))));
                continue;
            }
            let Some(ev) = self.events.pop_front() else {
                return Poll::Ready(None);
            };
            self.sent += 1;
            if !self.delay.is_zero() && !self.events.is_empty() {
                self.sleep = Some(Box::pin(tokio::time::sleep(self.delay)));
            }
            return Poll::Ready(Some(Ok(Frame::data(ev))));
        }
    }
}

// ---------------------------------------------------------------------------
// Request flow

struct InFlight<'a>(&'a Stats);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(l: Arc<Listener>, ctl: Arc<ConnCtl>, req: Request<Incoming>) -> Response<MockBody> {
    if req.uri().path().starts_with("/_mock/") || req.uri().path() == "/_mock" {
        return crate::control::handle(&l, req).await;
    }
    l.stats.requests.fetch_add(1, Ordering::Relaxed);
    l.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&l.stats);
    let mut resp = handle_provider(&l, &ctl, req).await;
    l.stats.count_status(resp.status());
    let n = l.stats.requests.load(Ordering::Relaxed);
    let headers = resp.headers_mut();
    headers.insert("x-mock-provider", l.name_header.clone());
    // Like real providers: their own request id and rate-limit state on every answer.
    if let Ok(id) = hyper::header::HeaderValue::from_str(&format!("req_mock_{n}")) {
        headers.insert("x-request-id", id);
    }
    headers.insert("x-ratelimit-remaining-requests", hyper::header::HeaderValue::from_static("4999"));
    resp
}

async fn handle_provider(l: &Listener, ctl: &Arc<ConnCtl>, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return kinds::error(l.kind, StatusCode::BAD_REQUEST, &format!("could not read request body: {e}"));
        }
    };

    if let Some(rec) = &l.recorded {
        let r = Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: body.clone(),
        };
        let mut g = lock(rec);
        if g.len() >= RECORD_CAP {
            g.pop_front();
        }
        g.push_back(r);
    }

    // Fault: the per-request header wins over the listener's spec.
    let action: Option<Action> = match parts.headers.get("x-mock-fault") {
        Some(h) => match FaultSpec::parse(h.as_bytes()) {
            Ok(spec) => spec.resolve(),
            Err(e) => {
                return kinds::error(l.kind, StatusCode::BAD_REQUEST, &format!("bad x-mock-fault header: {e}"));
            }
        },
        None => l.current_faults().and_then(|s| s.resolve()),
    };

    let mut opts =
        StreamOpts { chunks: l.defaults.stream_chunks, delay: l.defaults.stream_delay, reset_after_first: None };

    if let Some(a) = &action {
        if !a.delay.is_zero() {
            tokio::time::sleep(a.delay).await;
        }
        if a.hang {
            l.stats.hangs.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(MAX_HANG).await;
            return kinds::error(l.kind, StatusCode::GATEWAY_TIMEOUT, "mock fault: hang gave up");
        }
        if a.reset {
            l.stats.resets.fetch_add(1, Ordering::Relaxed);
            ctl.trigger_reset();
            std::future::pending::<()>().await;
        }
        if let Some(c) = a.stream_chunks {
            opts.chunks = c;
        }
        if let Some(d) = a.stream_delay {
            opts.delay = d;
        }
        if a.reset_after_first_chunk {
            l.stats.resets.fetch_add(1, Ordering::Relaxed);
            opts.reset_after_first = Some(ctl.clone());
        }
        let status = a.status.and_then(|s| StatusCode::from_u16(s).ok());
        let injected = match (status, &a.body) {
            (Some(s), Some(b)) => Some(raw(s, b.clone())),
            (None, Some(b)) => Some(raw(StatusCode::OK, b.clone())),
            (Some(s), None) if s.as_u16() >= 400 => {
                Some(kinds::error(l.kind, s, &format!("mock fault: injected status {}", s.as_u16())))
            }
            _ => None,
        };
        if let Some(mut r) = injected {
            if let Some(ra) = a.retry_after.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                r.headers_mut().insert(RETRY_AFTER, ra);
            }
            if opts.reset_after_first.is_some() {
                r = split_for_reset(r, &opts);
            }
            return r;
        }
    }

    let ctx = Ctx { l, parts: &parts, body: &body, opts };
    if let Err(msg) = kinds::check_auth(&ctx) {
        return kinds::error(l.kind, StatusCode::UNAUTHORIZED, &msg);
    }
    let resp = kinds::dispatch(&ctx);
    if ctx.opts.reset_after_first.is_some() {
        if let MockBody::Full(_) = resp.body() {
            return split_for_reset(resp, &ctx.opts);
        }
    }
    resp
}

/// A raw injected body: JSON content type if it parses as JSON.
fn raw(status: StatusCode, body: String) -> Response<MockBody> {
    let ct = if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// Turn a complete body into two frames (first half, second half) so that
/// `reset_after_first_chunk` truncates it.
fn split_for_reset(resp: Response<MockBody>, opts: &StreamOpts) -> Response<MockBody> {
    let (parts, body) = resp.into_parts();
    let bytes = match body {
        MockBody::Full(Some(b)) => b,
        other => return Response::from_parts(parts, other),
    };
    let half = bytes.len() / 2;
    let events = vec![bytes.slice(..half.max(1).min(bytes.len())), bytes.slice(half.max(1).min(bytes.len())..)];
    Response::from_parts(parts, MockBody::events(events, opts))
}
