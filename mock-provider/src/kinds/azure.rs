//! Azure OpenAI: `/openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=...`.
//! Answers like OpenAI with `model` = the deployment name. Also the v1
//! `POST /openai/v1/responses` (Responses API, `model` = the deployment).

use super::{bad_request, method_not_allowed, not_found, openai, Ctx};
use crate::body::MockBody;
use hyper::{Method, Response};

pub fn handle(ctx: &Ctx) -> Response<MockBody> {
    let path = ctx.path().trim_end_matches('/');
    // The v1 API: no api-version, the deployment named as `model`.
    if path == "/openai/v1/responses" {
        return if ctx.parts.method == Method::POST {
            super::responses::handle(ctx, None)
        } else {
            method_not_allowed(ctx)
        };
    }
    if let Some(rest) = path.strip_prefix("/openai/v1/responses/") {
        return super::responses::followup(ctx, rest);
    }
    let Some(rest) = path.strip_prefix("/openai/deployments/") else {
        return not_found(ctx);
    };
    let Some((deployment, op)) = rest.split_once('/') else {
        return not_found(ctx);
    };
    if deployment.is_empty() {
        return not_found(ctx);
    }
    let f = match op {
        "chat/completions" => openai::chat,
        "completions" => openai::completions,
        "embeddings" => openai::embeddings,
        _ => return not_found(ctx),
    };
    if ctx.parts.method != Method::POST {
        return method_not_allowed(ctx);
    }
    match ctx.query_param("api-version") {
        Some(v) if !v.is_empty() => {}
        _ => {
            return bad_request(
                ctx,
                "Missing API version: the api-version query parameter is required for all requests",
            )
        }
    }
    f(ctx, Some(deployment))
}
