//! Responses API follow-ups (`api::response_ids`, decided in
//! `exchange::followup`): a response relayed from a natively serving member
//! is remembered with its provider (`host/response_store.rs`), so that
//! `GET`/`DELETE /v1/responses/{id}`, `POST .../{id}/cancel`,
//! `GET .../{id}/input_items` are passed through to that provider and a
//! request's `previous_response_id` goes to a member of it.

use proxy_wasm::types::Action;

use crate::api::response_ids::Followup;
use crate::api::ApiError;
use crate::config::MemberRef;
use crate::exchange::{native_member_of, unknown_response};
use crate::providers::responses_followup;
use crate::routing::Plan;

use super::{Filter, State};
use crate::host::response_store;
use crate::host::runtime::Runtime;

impl Filter {
    /// Remembers which provider holds the response of a natively served
    /// Responses answer, once its id is in the answer's first bytes.
    pub(super) fn note_response_id(&mut self, rt: &Runtime, member: MemberRef, native: bool, status: u16) {
        if self.response_noted {
            return;
        }
        let Some((id, holder)) = self.ex.response_to_note(rt, member, native, status) else { return };
        response_store::remember(id, &holder);
        self.response_noted = true;
    }

    /// A follow-up on a stored response: passed through as it is to the
    /// provider that holds the response, or refused.
    pub(super) fn serve_followup(&mut self, rt: &Runtime, f: Followup<'_>) -> Action {
        let holder = response_store::holder(f.id).filter(|h| h.tenant == self.ex.tenant_name(rt));
        let Some((member, provider)) = holder.and_then(|h| native_member_of(&rt.config, &h.provider)) else {
            return self.answer_error(&unknown_response(&f));
        };
        let upstream = responses_followup(provider, &format!("{}{}", f.id, f.rest));
        let now = self.now_ms();
        let timeouts = self.ex.timeouts_ms(rt, member.pool, now, false);
        let present = self.client_headers.clone();
        if let Err((what, s)) = self.rewrite_request(rt, member, &upstream, timeouts, 0, &present) {
            self.host_error(what, s);
            return self.answer_error(&ApiError::internal("The gateway could not rewrite the request."));
        }
        let method = super::header_value(&self.client_headers, ":method").unwrap_or_default();
        let shown = f.rest.split('?').next().unwrap_or("");
        log::info!(
            "switchboard[{}]: {method} /v1/responses/{{id}}{shown} to provider {}",
            self.ex.request_id,
            provider.name
        );
        // The answer, whatever it is, passes as it is.
        self.ex.state = State::Passing;
        Action::Continue
    }

    /// A Responses request's `previous_response_id` the gateway remembers
    /// goes to a member of the provider that holds the conversation.
    pub(super) fn hold_conversation(&self, rt: &Runtime, plan: &mut Plan, target: &str) -> Result<(), ApiError> {
        let Some(id) = self.ex.previous_response_id() else { return Ok(()) };
        self.ex.hold_conversation(rt, plan, target, &id, response_store::holder(&id))
    }
}
