//! Responses API follow-ups (`api::response_ids`): a response relayed from
//! a natively serving member is remembered with its provider, so that
//! `GET`/`DELETE /v1/responses/{id}`, `POST .../{id}/cancel`,
//! `GET .../{id}/input_items` are passed through to that provider and a
//! request's `previous_response_id` goes to a member of it.

use proxy_wasm::types::Action;

use crate::api::request::ParsedRequest;
use crate::api::response_ids::{followup, response_id_in, Holder};
use crate::api::{ApiError, ErrorCode};
use crate::config::MemberRef;
use crate::doors::Door;
use crate::providers::{responses_followup, NativeApi};
use crate::routing::{NativeOnly, Plan};

use super::{Filter, State};
use crate::host::response_store;
use crate::host::runtime::Runtime;

impl Filter {
    /// The calling tenant's name ("" without tenants): a response is only
    /// found again by the tenant that created it.
    fn tenant_name<'r>(&self, rt: &'r Runtime) -> &'r str {
        self.ex.tenant.as_ref().and_then(|t| rt.config.tenants.as_ref()?.get(t.index)).map_or("", |t| t.name.as_str())
    }

    /// Remembers which provider holds the response of a natively served
    /// Responses answer, once its id is in the answer's first bytes.
    pub(super) fn note_response_id(&mut self, rt: &Runtime, member: MemberRef, native: bool, status: u16) {
        if self.ex.door != Door::Responses || !native || self.response_noted || !(200..300).contains(&status) {
            return;
        }
        let Some(id) = self.ex.answer.tail.as_ref().and_then(|t| response_id_in(t.head())) else { return };
        let Some((_, _, provider)) = rt.config.resolve(member) else { return };
        let holder = Holder { provider: provider.name.clone(), tenant: self.tenant_name(rt).to_string() };
        response_store::remember(id, &holder);
        self.response_noted = true;
    }

    /// A follow-up on a stored response (`None`: `path` is none): passed
    /// through as it is to the provider that holds the response, or refused.
    pub(super) fn serve_followup(&mut self, rt: &Runtime, path: &str, method: &str) -> Option<Action> {
        let f = followup(path)?;
        let shown = format!("/v1/responses/{{id}}{}", f.rest.split('?').next().unwrap_or(""));
        if !f.methods.contains(&method) {
            return Some(self.answer_error(&ApiError::method_not_allowed(method, &shown, &f.methods.join(" or "))));
        }
        let holder = response_store::holder(f.id).filter(|h| h.tenant == self.tenant_name(rt));
        let Some((member, provider)) = holder.and_then(|h| native_member_of(rt, &h.provider)) else {
            return Some(self.answer_error(&ApiError::new(
                404,
                ErrorCode::NotFound,
                format!(
                    "No response `{}` is known to this gateway. {shown} is passed to the OpenAI or Azure member \
                     that created the response, which the gateway remembers when it relays a response \
                     (per gateway instance, in memory, the latest 65,536); responses created elsewhere, \
                     translated by the gateway (no provider stores them), or by another tenant are not found.",
                    f.id
                ),
            )));
        };
        let upstream = responses_followup(provider, &format!("{}{}", f.id, f.rest));
        let now = self.now_ms();
        let timeouts = self.ex.timeouts_ms(rt, member.pool, now, false);
        let present = self.client_headers.clone();
        if let Err((what, s)) = self.rewrite_request(rt, member, &upstream, timeouts, 0, &present) {
            self.host_error(what, s);
            return Some(self.answer_error(&ApiError::internal("The gateway could not rewrite the request.")));
        }
        log::info!("switchboard[{}]: {method} {shown} to provider {}", self.ex.request_id, provider.name);
        // The answer, whatever it is, passes as it is.
        self.ex.state = State::Passing;
        Some(Action::Continue)
    }

    /// A Responses request's `previous_response_id` the gateway remembers
    /// goes to a member of the provider that holds the conversation (of the
    /// same tenant; another tenant's is refused). An id it does not know is
    /// left to the native members as before.
    pub(super) fn hold_conversation(&self, rt: &Runtime, plan: &mut Plan, target: &str) -> Result<(), ApiError> {
        if self.ex.door != Door::Responses {
            return Ok(());
        }
        let Ok(request) = ParsedRequest::parse_fields(&self.ex.door_body) else { return Ok(()) };
        let Some(id) = request.field("previous_response_id").and_then(|v| v.get().strip_prefix('"')?.strip_suffix('"'))
        else {
            return Ok(());
        };
        let Some(holder) = response_store::holder(id) else { return Ok(()) };
        if holder.tenant != self.tenant_name(rt) {
            return Err(ApiError::new(
                404,
                ErrorCode::NotFound,
                format!("No response `{id}` is known to this gateway."),
            )
            .with_param("previous_response_id"));
        }
        let Some(index) = rt.config.providers.iter().position(|p| p.name == holder.provider) else { return Ok(()) };
        let native = NativeOnly {
            feature: format!("previous_response_id `{id}` is held by provider `{}`", holder.provider),
            kinds: "that provider's",
            providers: vec![index],
        };
        plan.require_native(&rt.config, native, target)
    }
}

/// A member of the provider named `name` (for its cluster and credentials),
/// if that provider serves the Responses API natively.
fn native_member_of<'r>(rt: &'r Runtime, name: &str) -> Option<(MemberRef, &'r crate::config::Provider)> {
    let index = rt.config.providers.iter().position(|p| p.name == name)?;
    let provider = rt.config.providers.get(index)?;
    if !NativeApi::Responses.served_by(provider.kind) {
        return None;
    }
    rt.config.pools.iter().enumerate().find_map(|(p, pool)| {
        let m = pool.members.iter().position(|m| m.provider == index)?;
        Some((MemberRef::new(p, m), provider))
    })
}
