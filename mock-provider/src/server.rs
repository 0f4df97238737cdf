//! Listener state, connection handling, the response body type and the
//! per-request flow (record -> fault -> auth -> kind handler).

use crate::body::{MockBody, StreamOpts};
use crate::faults::{Action, FaultSpec};
use crate::kinds::{self, Ctx};
use crate::listener::{lock, ConnCtl, Listener, Recorded, Stats, RECORD_CAP};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// A `hang` gives up after this long (so abandoned connections do not pile up forever).
const MAX_HANG: Duration = Duration::from_secs(3600);
// ---------------------------------------------------------------------------
// Connections and resets

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
    let now_in_flight = l.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    l.stats.max_in_flight.fetch_max(now_in_flight, Ordering::Relaxed);
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

    let mut opts = StreamOpts {
        chunks: l.defaults.stream_chunks,
        delay: l.defaults.stream_delay,
        reset_after_first: None,
        cut_after: None,
        error_after: None,
        reply: None,
        overlap_words: 0,
        kind: l.kind,
    };

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
        opts.cut_after = a.stream_cut_after;
        opts.error_after = a.stream_error_after;
        opts.reply = a.reply.clone();
        opts.overlap_words = a.continuation_overlap_words.unwrap_or(0);
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
