//! Control API under `/_mock/` (no auth, not counted in stats, not recorded).

use crate::body::MockBody;
use crate::faults::FaultSpec;
use crate::kinds::json_value;
use crate::listener::{lock, Listener};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

fn text(status: StatusCode, body: &'static str) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn err(status: StatusCode, msg: &str) -> Response<MockBody> {
    json_value(status, &json!({"error": msg}))
}

pub async fn handle(l: &Listener, req: Request<Incoming>) -> Response<MockBody> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return err(StatusCode::BAD_REQUEST, &format!("could not read body: {e}")),
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/_mock/health") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/_mock/faults") => {
            let cur = lock(&l.faults).clone();
            json_value(StatusCode::OK, &serde_json::to_value(cur.as_deref()).unwrap_or(Value::Null))
        }
        (&Method::POST | &Method::PUT, "/_mock/faults") => match FaultSpec::parse(&body) {
            Ok(spec) => {
                let v = serde_json::to_value(&spec).unwrap_or(Value::Null);
                l.set_faults(Some(spec));
                json_value(StatusCode::OK, &json!({"ok": true, "faults": v}))
            }
            Err(e) => err(StatusCode::BAD_REQUEST, &e),
        },
        (&Method::DELETE, "/_mock/faults") => {
            l.set_faults(None);
            json_value(StatusCode::OK, &json!({"ok": true}))
        }
        (&Method::POST, "/_mock/reset") => {
            l.set_faults(None);
            l.stats.clear();
            l.clear_recorded();
            l.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
            json_value(StatusCode::OK, &json!({"ok": true}))
        }
        (&Method::GET, "/_mock/stats") => {
            let mut by_status = Map::new();
            for (code, c) in l.stats.by_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    by_status.insert(code.to_string(), json!(n));
                }
            }
            json_value(
                StatusCode::OK,
                &json!({
                    "name": l.name,
                    "kind": l.kind.as_str(),
                    "requests": l.stats.requests.load(Ordering::Relaxed),
                    "by_status": by_status,
                    "resets": l.stats.resets.load(Ordering::Relaxed),
                    "hangs": l.stats.hangs.load(Ordering::Relaxed),
                    "in_flight": l.stats.in_flight.load(Ordering::Relaxed),
                    "max_in_flight": l.stats.max_in_flight.load(Ordering::Relaxed),
                }),
            )
        }
        (&Method::GET, "/_mock/requests") => {
            let Some(rec) = &l.recorded else {
                return err(StatusCode::CONFLICT, "request recording is disabled (--no-record)");
            };
            let list: Vec<Value> = lock(rec)
                .iter()
                .map(|r| {
                    let headers: Map<String, Value> = r.headers.iter().fold(Map::new(), |mut m, (k, v)| {
                        // repeated headers are joined with ", "
                        match m.get_mut(k) {
                            Some(Value::String(s)) => {
                                s.push_str(", ");
                                s.push_str(v);
                            }
                            _ => {
                                m.insert(k.clone(), Value::String(v.clone()));
                            }
                        }
                        m
                    });
                    let body = if r.body.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice::<Value>(&r.body)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()))
                    };
                    json!({"method": r.method, "path": r.path, "headers": headers, "body": body})
                })
                .collect();
            json_value(StatusCode::OK, &Value::Array(list))
        }
        (_, "/_mock/health" | "/_mock/faults" | "/_mock/reset" | "/_mock/stats" | "/_mock/requests") => {
            err(StatusCode::METHOD_NOT_ALLOWED, &format!("method {method} not allowed on {path}"))
        }
        _ => err(StatusCode::NOT_FOUND, &format!("unknown control endpoint {path}")),
    }
}
