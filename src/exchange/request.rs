//! A request's headers, read once: its id, the API whose error shape
//! answers it, the tenant's key, its route, and whether its body can be
//! read at all. Answered here when the headers say all (a refusal, the model
//! listing); else the host waits for the body, passes a follow-up on, or
//! takes a replayed request back.

use crate::api::{ApiError, ErrorCode};
use crate::doors::Door;
use crate::encoding::percent_decode;
use crate::routing::redirect;
use crate::routing::router::HeaderLookup;
use crate::tenant::{authenticate, presented_key};

use super::{Admission, Exchange, Route, Shared, Step};

/// With the call log on, an unauthenticated request whose body declares at most
/// this size is refused once its body is in, so that the line names the model it
/// asked for; a larger or undeclared body is refused at its headers, unread.
pub const REFUSED_BODY_PEEK_BYTES: usize = 64 * 1024;

/// What a request's headers lead to.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// Answered now (a reply), or held until the body is in (`Pause`).
    Step(Step),
    /// The replay of a parked request (streaming failover), under this token.
    Replay(String),
    /// A key refused; answered once a small body is in (see `REFUSED_BODY_PEEK_BYTES`).
    RefuseAfterBody(ApiError),
    /// A Responses follow-up: passed through to the member holding the response ([`Exchange::followup`]).
    Followup,
}

impl Exchange {
    /// The request's headers came (`new_id`: an id for a request that brings
    /// none). `replays`: the host replays failed streams (a failover token
    /// is then its replay's, not a client's).
    pub fn request_headers(
        &mut self,
        sh: &dyn Shared,
        headers: &impl HeaderLookup,
        end_of_stream: bool,
        replays: bool,
        new_id: impl FnOnce() -> u64,
    ) -> Opening {
        let config = sh.config();
        self.request_id = match headers.header("x-request-id") {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("{:016x}", new_id()),
        };
        let path = headers.header(":path").unwrap_or_default();
        if let Some(token) = redirect::token_in_path(path) {
            if replays {
                return Opening::Replay(token.to_string());
            }
            return Opening::Step(self.error_reply(sh, &super::forged_token()));
        }
        if config.stream_failover && headers.header("x-envoy-original-url").is_some() {
            // Envoy followed a redirect switchboard did not ask for (a provider's own): never re-routed.
            let e = ApiError::new(
                502,
                ErrorCode::InvalidUpstreamResponse,
                "The provider answered with a redirect, which the gateway does not follow.",
            );
            return Opening::Step(self.error_reply(sh, &e));
        }
        // Every answer of a door in its error shape, a refused key's included.
        self.door = Door::error_shape_of(path);
        let declared = headers.header("content-length").and_then(|v| v.parse::<usize>().ok());
        if let Some(tenants) = &config.tenants {
            match authenticate(tenants, presented_key(|name| headers.header(name))) {
                Ok(index) => self.tenant = Some(Admission { index, ..Admission::default() }),
                Err(e)
                    if config.call_log
                        && !end_of_stream
                        && declared.is_some_and(|n| n > 0 && n <= REFUSED_BODY_PEEK_BYTES) =>
                {
                    return Opening::RefuseAfterBody(e)
                }
                Err(e) => return Opening::Step(self.error_reply(sh, &e)),
            }
        }
        let route = match Route::parse(headers.header(":method").unwrap_or_default(), path) {
            Ok(route) => route,
            Err(e) => return Opening::Step(self.error_reply(sh, &e)),
        };
        let listing = sh.listing(self.tenant.as_ref().map(|t| t.index));
        match route {
            Route::Followup(_) => return Opening::Followup,
            Route::Models { query } => {
                let Some(body) = listing.map(|l| l.body(query).to_vec()) else {
                    return Opening::Step(self.error_reply(sh, &ApiError::not_found("/v1/models")));
                };
                return Opening::Step(self.json_reply(sh, body));
            }
            Route::Model { id } => {
                // The SDKs percent-encode the id (`o1/gpt-4o` arrives as `o1%2Fgpt-4o`).
                let id = String::from_utf8_lossy(&percent_decode(id)).into_owned();
                let step = match listing.and_then(|l| l.entry(&id)).map(<[u8]>::to_vec) {
                    Some(body) => self.json_reply(sh, body),
                    None => self.error_reply(sh, &config.unknown_target(&id, "model")),
                };
                return Opening::Step(step);
            }
            _ => {}
        }
        if let Some((body_for, endpoint, door)) = route.body() {
            (self.body_for, self.endpoint, self.door) = (body_for, endpoint, door);
            if door == Door::Messages {
                self.anthropic_beta = headers.header("anthropic-beta").map(str::to_string);
            }
        }
        // Envoy's decompressor (before this filter) takes gzip off; anything left is unreadable.
        let refusal = if let Some(encoding) = headers.header("content-encoding").filter(|e| *e != "identity") {
            ApiError::unsupported_content_encoding(encoding)
        } else if declared.is_some_and(|n| n > config.max_body_bytes) {
            ApiError::body_too_large(config.max_body_bytes)
        } else if end_of_stream || declared == Some(0) {
            ApiError::invalid_request(ErrorCode::InvalidJson, "Request body is empty; expected a JSON object.")
        } else {
            // Held until the body says where the request goes.
            return Opening::Step(Step::Pause);
        };
        Opening::Step(self.error_reply(sh, &refusal))
    }
}
