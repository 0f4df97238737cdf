//! Routing a request, as its exchange runs it: the client's body as the
//! pipeline reads it (a door's translated), the plan (name resolved through
//! its router, candidates filtered, kept on native members where the door's
//! translation refused a feature), the first member, and the answer's shape
//! and readers. The host reads the body and headers, asks the tenant's store
//! between the plan and the pick, and applies the rewrite.

use crate::api::request::ParsedRequest;
use crate::api::usage::Tail;
use crate::doors::{DoorAnswer, DoorError};
use crate::providers::stream_include_usage;
use crate::routing::router::{HeaderLookup, LearnedScorer};
use crate::routing::{NativeOnly, Plan, RouteInput};

use super::{expected_tokens, AnswerShape, Count, Exchange, Picked, Shared};

/// The client's body as routing reads it.
#[derive(Debug)]
pub struct ChatBody {
    /// Chat completions (a door's request translated, or the client's own).
    pub body: Vec<u8>,
    /// A feature only the door's native kinds serve: the request stays on their members.
    pub native_only: Option<DoorError>,
}

impl Exchange {
    /// The client's body as the pipeline routes it; a door's own body is
    /// kept for members that serve its API natively. `Err`: the door's
    /// translator refuses it (answer [`Exchange::refuse_door_request`]).
    pub fn to_chat(&mut self, client_body: Vec<u8>) -> Result<ChatBody, DoorError> {
        match self.door.to_chat(&client_body, self.anthropic_beta.as_deref())? {
            Some(routed) => {
                self.door_body = client_body;
                Ok(ChatBody { body: routed.chat, native_only: routed.native_only })
            }
            None => Ok(ChatBody { body: client_body, native_only: None }),
        }
    }

    /// The request's plan: the name it asks for resolved (a router's rules
    /// read `headers`; a learned router asks `scorer`), the candidates
    /// filtered and ordered, and kept on the door's native members when
    /// `native_only` says the translation refused a feature.
    pub fn plan(
        &mut self,
        sh: &dyn Shared,
        parsed: &ParsedRequest<'_>,
        headers: &dyn HeaderLookup,
        scorer: Option<&dyn LearnedScorer>,
        native_only: Option<DoorError>,
        now: u64,
    ) -> Result<Plan, crate::api::ApiError> {
        let config = sh.config();
        self.obs.model = Some(parsed.target.clone());
        let native_kinds = self.door.native_api().map_or(0, |api| api.kind_bits());
        let input = RouteInput { request: parsed, headers, scorer, native_kinds };
        let mut plan = Plan::for_request(config, input, now)?;
        if let (Some(refused), Some(api)) = (native_only, self.door.native_api()) {
            let native = NativeOnly::new(config, refused.message, api.kinds(), |k| api.served_by(k));
            plan.require_native(config, native, &parsed.target)?;
        }
        Ok(plan)
    }

    /// The first member `plan` allows, the request counted in its pool.
    /// `None`: every member is ejected or held (answer [`Exchange::exhausted`],
    /// which says when the gateway tries again).
    pub fn pick_first(&self, sh: &dyn Shared, plan: &mut Plan, now: u64) -> Option<Picked> {
        sh.count(Count::PoolRequest(plan.primary_pool()));
        sh.pick(plan, now)
    }

    /// A learned router's pick, remembered for feedback as `feedback_id`: the
    /// answer shows the score and the id; the call log keeps the id (and the
    /// scored text, when `call_log_prompts` kept it).
    pub fn remembered(&mut self, score: f64, feedback_id: String, prompt: Option<String>) {
        self.obs.feedback_id = Some(feedback_id.clone());
        self.obs.prompt = prompt;
        self.score = Some((score, feedback_id));
    }

    /// The request is routed: what its answer looks like, the readers it
    /// passes through, and the tokens it is expected to take.
    pub fn routed(&mut self, parsed: &ParsedRequest<'_>, body_len: usize, now: u64) {
        self.shape = AnswerShape {
            stream: parsed.stream,
            include_usage: stream_include_usage(parsed),
            choices: parsed.field("n").and_then(|n| n.get().parse::<u32>().ok()).unwrap_or(1),
        };
        self.answer.shape = self.shape;
        self.answer.endpoint = self.endpoint;
        self.answer.api = self.door.native_api();
        self.answer.door = DoorAnswer::new(self.door, &parsed.target, parsed.stream, now / 1000);
        // Every answer's usage is read: for the stats, the call log and the tenant's limits.
        self.answer.tail.get_or_insert_with(Tail::default);
        self.obs.estimate = expected_tokens(parsed, body_len);
    }
}
