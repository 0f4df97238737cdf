//! switchboard-state: the state service of fleet mode. Every switchboard
//! proxy takes slices of its tenants' allowances from it (through an Envoy
//! cluster, `dispatch_http_call`) and gives back what it did not use, tells
//! it learned-router scores and canary rollbacks, and polls the fleet's. It
//! keeps nothing itself: every count is in Redis, changed by one Lua script
//! (`scripts.rs`), so several copies can serve the same fleet. See docs/fleet.md.

mod scripts;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

const USAGE: &str = "\
usage: switchboard-state [--listen ADDR] [--redis URL] [--redis-timeout-ms MS] [--delay-ms MS]

  --listen ADDR          where proxies reach it (default 127.0.0.1:8787; port 0: any free port)
  --redis URL            redis://HOST:PORT[/DB] (default redis://127.0.0.1:6379)
  --redis-timeout-ms MS  a Redis step slower than this answers 503 (default 1000; each proxy's
                         shared_state.timeout_ms bounds how long a request waits in any case)
  --delay-ms MS          answer every request MS late (fault tests; also POST /_state/delay?ms=N)
Once listening, prints one line: {\"listening\": \"HOST:PORT\"}";

/// Entries of learned feedback kept in Redis (a stream, trimmed to about this many; 4 KB each).
const LEARNED_KEPT: usize = 20_000;
/// Sync answers carry at most this many feedback entries (the next poll takes the rest).
const SYNC_BATCH: usize = 100;

struct Service {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    redis_timeout: Duration,
    delay_ms: AtomicU64,
    slice: redis::Script,
}

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

fn query(req: &Request<Incoming>) -> HashMap<&str, &str> {
    req.uri().query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')).collect()
}

/// A tenant's or router's name as the proxy sends it (hex), checked.
fn hex_name(q: &HashMap<&str, &str>, field: &str) -> Result<String, String> {
    let v = q.get(field).copied().unwrap_or("");
    if v.is_empty() || v.len() > 512 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{field}` must be a name in hex"));
    }
    Ok(v.to_ascii_lowercase())
}

fn number(q: &HashMap<&str, &str>, field: &str) -> Result<u64, String> {
    match q.get(field) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| format!("`{field}` must be a whole number")),
    }
}

impl Service {
    /// A connection to Redis: the one kept, else a new one (Redis may have come back).
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut kept = self.conn.lock().await;
        if let Some(c) = kept.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *kept = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// One step of a tenant's allowance (`scripts::SLICE`): take a slice
    /// (`grant`) or only give back what a proxy did not use and what it spent.
    async fn slice(&self, q: &HashMap<&str, &str>, grant: bool) -> Result<String, Failure> {
        let tenant = hex_name(q, "t")?;
        let holder = hex_name(q, "h")?;
        let mut inv = self.slice.key(format!("sb:{{{tenant}}}"));
        inv.arg(holder);
        for field in ["ttl", "rpm", "tpm", "par", "bl", "bp", "tok", "bw"] {
            inv.arg(number(q, field)?);
        }
        inv.arg(u64::from(grant));
        for field in ["ws", "br", "bk", "ko", "bpar", "bb", "cost"] {
            inv.arg(number(q, field)?);
        }
        let mut conn = self.connection().await?;
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// A user's score of a learned router's weak-pool answer, for every proxy to
    /// learn: the learning's key (`k`), the prompt's inputs (`i`), both in hex,
    /// the shipped model's logit (`g`) and the score (`s`), f32 bits in hex.
    async fn learned(&self, q: &HashMap<&str, &str>) -> Result<String, Failure> {
        let key = hex_name(q, "k")?;
        let inputs = q.get("i").copied().unwrap_or("");
        if inputs.is_empty() || inputs.len() > 16_384 || !inputs.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::Bad("`i` must be the prompt's inputs in hex".into()));
        }
        // Both f32 bit patterns in hex, passed on as they are.
        let real = |f: &str| {
            let v = q.get(f).copied().unwrap_or("");
            let bits = u32::from_str_radix(v, 16).ok().filter(|b| v.len() == 8 && f32::from_bits(*b).is_finite());
            bits.map(|_| v.to_ascii_lowercase())
                .ok_or_else(|| Failure::Bad(format!("`{f}` must be a number's f32 bits in hex")))
        };
        let (logit, score) = (real("g")?, real("s")?);
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("XADD")
            .arg("sb:learned")
            .arg("MAXLEN")
            .arg("~")
            .arg(LEARNED_KEPT)
            .arg("*")
            .arg("e")
            .arg(format!("{key} {inputs} {logit} {score}"))
            .query_async(&mut conn)
            .await?;
        Ok("ok".into())
    }

    /// A canary rolled back by one proxy (configuration fingerprint `g`, member `m` in hex).
    async fn canary(&self, q: &HashMap<&str, &str>) -> Result<String, Failure> {
        let generation = hex_name(q, "g")?;
        let member = hex_name(q, "m")?;
        let key = format!("sb:canary:{generation}");
        let mut conn = self.connection().await?;
        redis::pipe()
            .cmd("SADD")
            .arg(&key)
            .arg(member)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(7 * 86_400)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok("ok".into())
    }

    /// What a proxy's tick polls: the canaries rolled back (`c MEMBER`) and the
    /// feedback after entry `after` (`l ID KEY INPUTS LOGIT SCORE`), one a line.
    async fn sync(&self, q: &HashMap<&str, &str>) -> Result<String, Failure> {
        let generation = hex_name(q, "g")?;
        let after = q.get("after").copied().filter(|a| !a.is_empty()).unwrap_or("0");
        if !after.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(Failure::Bad("`after` must be an entry id".into()));
        }
        let mut conn = self.connection().await?;
        let (canaries, entries): (Vec<String>, redis::Value) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(format!("sb:canary:{generation}"))
            .cmd("XRANGE")
            .arg("sb:learned")
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(SYNC_BATCH)
            .query_async(&mut conn)
            .await?;
        let mut out = String::new();
        for member in canaries {
            out.push_str(&format!("c {member}\n"));
        }
        for (id, entry) in stream_entries(entries) {
            out.push_str(&format!("l {id} {entry}\n"));
        }
        Ok(out)
    }
}

/// (id, the `e` field) of each XRANGE entry.
fn stream_entries(v: redis::Value) -> Vec<(String, String)> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(entries) = v else { return Vec::new() };
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(pair) = e else { return None };
            let id = text(pair.first()?)?;
            let Value::Array(fields) = pair.get(1)? else { return None };
            let value = fields.chunks(2).find(|kv| kv.first().and_then(text).as_deref() == Some("e"))?.get(1)?;
            Some((id, text(value)?))
        })
        .collect()
}

enum Failure {
    Bad(String),
    Unavailable(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Bad(e)
    }
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        Failure::Unavailable(e.to_string())
    }
}

async fn handle(svc: Arc<Service>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let delay = svc.delay_ms.load(Ordering::Relaxed);
    if delay > 0 && req.uri().path() != "/_state/delay" {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let q = query(&req);
    let step = async {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/admit") => svc.slice(&q, true).await,
            (&Method::POST, "/v1/settle") => svc.slice(&q, false).await,
            (&Method::POST, "/v1/learned") => svc.learned(&q).await,
            (&Method::POST, "/v1/canary") => svc.canary(&q).await,
            (&Method::GET | &Method::POST, "/v1/sync") => svc.sync(&q).await,
            (&Method::GET, "/healthz") => {
                let mut conn = svc.connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok("ok".into())
            }
            (&Method::POST, "/_state/delay") => {
                svc.delay_ms.store(number(&q, "ms")?, Ordering::Relaxed);
                Ok("ok".into())
            }
            _ => Err(Failure::Bad(format!("no such endpoint: {} {}", req.method(), req.uri().path()))),
        }
    };
    let reply = match tokio::time::timeout(svc.redis_timeout, step).await {
        Ok(Ok(body)) => text(StatusCode::OK, body),
        Ok(Err(Failure::Bad(e))) => text(StatusCode::BAD_REQUEST, e),
        Ok(Err(Failure::Unavailable(e))) => {
            svc.forget_connection().await;
            text(StatusCode::SERVICE_UNAVAILABLE, format!("redis unavailable: {e}"))
        }
        Err(_) => {
            svc.forget_connection().await;
            text(StatusCode::SERVICE_UNAVAILABLE, "redis did not answer in time")
        }
    };
    Ok(reply)
}

struct Args {
    listen: String,
    redis: String,
    redis_timeout_ms: u64,
    delay_ms: u64,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:8787".into(),
        redis: "redis://127.0.0.1:6379".into(),
        redis_timeout_ms: 1000,
        delay_ms: 0,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = value()?,
            "--redis" => a.redis = value()?,
            "--redis-timeout-ms" => a.redis_timeout_ms = value()?.parse().map_err(|_| "--redis-timeout-ms: ms")?,
            "--delay-ms" => a.delay_ms = value()?.parse().map_err(|_| "--delay-ms: ms")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => return println!("{USAGE}"),
        Err(e) => {
            eprintln!("switchboard-state: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let client = match redis::Client::open(args.redis.as_str()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard-state: --redis {}: {e}", args.redis);
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchboard-state: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("{{\"listening\": \"{addr}\"}}");
    let svc = Arc::new(Service {
        client,
        conn: Mutex::new(None),
        redis_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
        delay_ms: AtomicU64::new(args.delay_ms),
        slice: redis::Script::new(scripts::SLICE),
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = tokio::signal::ctrl_c() => return,
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        tokio::spawn(async move {
            let serve = hyper::service::service_fn(move |req| handle(svc.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), serve).await;
        });
    }
}
