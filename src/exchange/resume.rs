//! Stream continuation's decisions (the watch, request and splice are
//! `routing::resume`): which answers are watched, the request that asks the
//! next member for the rest, and how its answer is read. The host holds the
//! broken stream's end and sends the call.

use crate::api::request::ParsedRequest;
use crate::api::Endpoint;
use crate::providers::{ResponseAdapter, UpstreamRequest};
use crate::routing::resume::{continuation_body, prefills, read_answer, Continued};

use super::{build_upstream, Attempt, Exchange, Picked, Shared};

impl Exchange {
    /// Whether an answer of `status` to `attempt` is watched for a break: a
    /// successful stream of a continuing pool, in OpenAI's shape (not a
    /// door's native one), with one choice.
    pub fn watches_resume(&self, sh: &dyn Shared, attempt: &Attempt, status: u16) -> bool {
        let pool = sh.config().pool_at(attempt.picked.member.pool);
        let continues = pool.is_some_and(|p| p.retry.resume_streams)
            && self.shape.stream
            && self.endpoint == Endpoint::ChatCompletions
            && (200..300).contains(&status)
            && !attempt.native;
        continues
            && ParsedRequest::parse(&self.body, self.endpoint)
                .is_ok_and(|p| p.field("n").is_none_or(|n| n.get() == "1"))
    }

    /// The call that asks `picked` for the rest of an answer whose text so
    /// far is `text` (one non-streaming request, prefilled where the
    /// member's kind takes it), with the adapter that reads its answer set on
    /// `next`. `None`: the member cannot be asked.
    pub fn continuation(
        &self,
        sh: &dyn Shared,
        picked: Picked,
        next: &mut Attempt,
        text: &str,
        now: u64,
    ) -> Option<UpstreamRequest> {
        let (kind, model) = sh.config().resolve(picked.member).map(|(_, m, p)| (p.kind, m.model.as_str()))?;
        next.adapter = ResponseAdapter::new(kind, self.endpoint, false, model);
        let chat = ParsedRequest::parse(&self.body, self.endpoint).ok()?;
        let body = continuation_body(&chat, text, prefills(kind))?;
        let parsed = ParsedRequest::parse(&body, self.endpoint).ok()?;
        build_upstream(sh, self.endpoint, &parsed, picked.member, now, None).ok()
    }
}

/// The continuation call's answer (`status`, its body read by `body` only
/// for a success) as the rest of the stream; `None`: a failure, or an answer
/// that cannot be read.
pub fn continued(attempt: &mut Attempt, status: u16, body: impl FnOnce() -> Vec<u8>) -> Option<Continued> {
    if !(200..300).contains(&status) {
        return None;
    }
    let body = body();
    let body = match attempt.adapter.as_mut() {
        Some(adapter) => Some(adapter.translate_body(status, &body)).filter(|_| !adapter.translation_failed())?,
        None => body,
    };
    read_answer(&body)
}
