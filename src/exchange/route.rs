//! What a request asks of the gateway, read once from its method and path:
//! the one place that knows the gateway's paths. A path no route takes is a
//! 404, a route's wrong method a 405, both in the words the client reads.

use crate::api::response_ids::{followup, Followup};
use crate::api::{ApiError, Endpoint};
use crate::doors::Door;

/// A request's route. The first three read the body; the others are answered
/// (or passed through) at the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Routed to a pool member: an OpenAI endpoint, or a door's request as
    /// chat completions (`door` names the API the client speaks).
    Pipeline { endpoint: Endpoint, door: Door },
    /// `POST /v1/messages/count_tokens`: counted by the gateway.
    CountTokens,
    /// `POST /v1/feedback`: a user's score of an earlier answer.
    Feedback,
    /// `GET|HEAD /v1/models`, with its query string.
    Models { query: &'a str },
    /// `GET|HEAD /v1/models/{id}` (the id still percent-encoded).
    Model { id: &'a str },
    /// A Responses follow-up, passed through to the provider holding the response.
    Followup(Followup<'a>),
}

/// What the body of a request is for, once it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFor {
    #[default]
    Routing,
    CountTokens,
    Feedback,
}

impl<'a> Route<'a> {
    /// The route of `method` on `path` (query string allowed).
    pub fn parse(method: &str, path: &'a str) -> Result<Route<'a>, ApiError> {
        let (clean, query) = path.split_once('?').unwrap_or((path, ""));
        let trimmed = clean.trim_end_matches('/');
        // A follow-up's or a model's id may end in anything, a slash too.
        if let Some(f) = followup(path) {
            return Route::Followup(f).allows(method, clean);
        }
        if let Some(id) = clean.strip_prefix("/v1/models/").filter(|id| !id.is_empty()) {
            return Route::Model { id }.allows(method, clean);
        }
        let route = match trimmed {
            "/v1/chat/completions" => Route::pipeline(Endpoint::ChatCompletions, Door::Chat),
            "/v1/completions" => Route::pipeline(Endpoint::Completions, Door::Chat),
            "/v1/embeddings" => Route::pipeline(Endpoint::Embeddings, Door::Chat),
            "/v1/messages" => Route::pipeline(Endpoint::ChatCompletions, Door::Messages),
            "/v1/responses" => Route::pipeline(Endpoint::ChatCompletions, Door::Responses),
            "/v1/messages/count_tokens" => Route::CountTokens,
            "/v1/feedback" => Route::Feedback,
            "/v1/models" => Route::Models { query },
            _ => return Err(ApiError::not_found(clean)),
        };
        route.allows(method, clean)
    }

    /// This route if it takes `method`, else the 405 naming the one it takes.
    fn allows(self, method: &str, clean: &str) -> Result<Route<'a>, ApiError> {
        let route = self;
        let (allowed, shown): (&[&str], &str) = match route {
            Route::Models { .. } => (&["GET", "HEAD"], clean),
            Route::Model { .. } => (&["GET", "HEAD"], "/v1/models/{id}"),
            Route::Followup(f) => (f.methods, ""),
            Route::Feedback => (&["POST"], "/v1/feedback"),
            Route::Pipeline { .. } | Route::CountTokens => (&["POST"], clean),
        };
        if allowed.contains(&method) {
            return Ok(route);
        }
        Err(match route {
            Route::Followup(f) => {
                let shown = format!("/v1/responses/{{id}}{}", f.rest.split('?').next().unwrap_or(""));
                ApiError::method_not_allowed(method, &shown, &f.methods.join(" or "))
            }
            // HEAD is allowed, GET is what the error names.
            _ => ApiError::method_not_allowed(method, shown, allowed.first().copied().unwrap_or("POST")),
        })
    }

    fn pipeline(endpoint: Endpoint, door: Door) -> Route<'a> {
        Route::Pipeline { endpoint, door }
    }

    /// What the body is read for, with the endpoint and door the request
    /// runs as; `None`: answered at the headers.
    pub fn body(&self) -> Option<(BodyFor, Endpoint, Door)> {
        match *self {
            Route::Pipeline { endpoint, door } => Some((BodyFor::Routing, endpoint, door)),
            Route::CountTokens => Some((BodyFor::CountTokens, Endpoint::ChatCompletions, Door::CountTokens)),
            Route::Feedback => Some((BodyFor::Feedback, Endpoint::ChatCompletions, Door::Chat)),
            Route::Models { .. } | Route::Model { .. } | Route::Followup(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    fn route(method: &str, path: &str) -> Route<'static> {
        let path: &'static str = Box::leak(path.to_string().into_boxed_str());
        Route::parse(method, path).unwrap_or_else(|e| panic!("{method} {path}: {}", e.message))
    }

    fn refused(method: &str, path: &str) -> (u16, ErrorCode, String) {
        let e = Route::parse(method, path).unwrap_err();
        (e.status, e.code, e.message)
    }

    #[test]
    fn every_path_has_one_route() {
        let chat = Route::Pipeline { endpoint: Endpoint::ChatCompletions, door: Door::Chat };
        assert_eq!(route("POST", "/v1/chat/completions"), chat);
        assert_eq!(route("POST", "/v1/chat/completions/?x=1"), chat);
        assert_eq!(
            route("POST", "/v1/embeddings"),
            Route::Pipeline { endpoint: Endpoint::Embeddings, door: Door::Chat }
        );
        assert_eq!(
            route("POST", "/v1/completions"),
            Route::Pipeline { endpoint: Endpoint::Completions, door: Door::Chat }
        );
        assert_eq!(
            route("POST", "/v1/messages?beta=true"),
            Route::Pipeline { endpoint: Endpoint::ChatCompletions, door: Door::Messages }
        );
        assert_eq!(
            route("POST", "/v1/responses/"),
            Route::Pipeline { endpoint: Endpoint::ChatCompletions, door: Door::Responses }
        );
        assert_eq!(route("POST", "/v1/messages/count_tokens"), Route::CountTokens);
        assert_eq!(route("POST", "/v1/feedback/"), Route::Feedback);
        assert_eq!(route("GET", "/v1/models?subtype=pool"), Route::Models { query: "subtype=pool" });
        assert_eq!(route("HEAD", "/v1/models/"), Route::Models { query: "" });
        assert_eq!(route("GET", "/v1/models/o1%2Fgpt-4o"), Route::Model { id: "o1%2Fgpt-4o" });
        let Route::Followup(f) = route("POST", "/v1/responses/resp_1/cancel") else { panic!() };
        assert_eq!((f.id, f.rest), ("resp_1", "/cancel"));
        assert!(matches!(route("DELETE", "/v1/responses/resp_1"), Route::Followup(_)));
    }

    #[test]
    fn body_routes_say_what_their_body_is_for() {
        assert_eq!(
            route("POST", "/v1/messages").body(),
            Some((BodyFor::Routing, Endpoint::ChatCompletions, Door::Messages))
        );
        assert_eq!(
            route("POST", "/v1/messages/count_tokens").body(),
            Some((BodyFor::CountTokens, Endpoint::ChatCompletions, Door::CountTokens))
        );
        assert_eq!(
            route("POST", "/v1/feedback").body(),
            Some((BodyFor::Feedback, Endpoint::ChatCompletions, Door::Chat))
        );
        assert_eq!(route("GET", "/v1/models").body(), None);
        assert_eq!(route("GET", "/v1/responses/r/input_items").body(), None);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_naming_the_right_one() {
        let (status, code, message) = refused("POST", "/v2/chat?x=1");
        assert_eq!((status, code), (404, ErrorCode::NotFound));
        assert!(message.starts_with("Unknown path /v2/chat. Supported:"), "{message}");
        assert_eq!(refused("GET", "/v1/responses/r/other").0, 404);
        assert_eq!(refused("POST", "/v1/messagesx").0, 404);
        let cases = [
            ("GET", "/v1/chat/completions?x", "Method GET is not allowed on /v1/chat/completions; use POST."),
            ("POST", "/v1/models?x", "Method POST is not allowed on /v1/models; use GET."),
            ("DELETE", "/v1/models/m", "Method DELETE is not allowed on /v1/models/{id}; use GET."),
            ("GET", "/v1/feedback/", "Method GET is not allowed on /v1/feedback; use POST."),
            ("GET", "/v1/messages/count_tokens", "Method GET is not allowed on /v1/messages/count_tokens; use POST."),
            ("POST", "/v1/responses/r?x=1", "Method POST is not allowed on /v1/responses/{id}; use GET or DELETE."),
            ("GET", "/v1/responses/r/cancel", "Method GET is not allowed on /v1/responses/{id}/cancel; use POST."),
        ];
        for (method, path, message) in cases {
            assert_eq!(refused(method, path), (405, ErrorCode::MethodNotAllowed, message.to_string()), "{path}");
        }
    }
}
