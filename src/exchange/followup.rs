//! Responses API follow-ups' decisions (`api::response_ids`): which
//! provider's member a follow-up or a `previous_response_id` goes to, and
//! which answer's id is remembered. The host keeps the table (shared data)
//! and hands in what it holds.

use crate::api::request::ParsedRequest;
use crate::api::response_ids::{bucket_key, find, followup, insert, response_id_in, Followup, Holder};
use crate::api::{ApiError, ErrorCode};
use crate::config::{Config, MemberRef, Provider};
use crate::doors::Door;
use crate::providers::{responses_followup, NativeApi, UpstreamRequest};
use crate::routing::{NativeOnly, Plan};

use super::{DataError, Exchange, Shared, SharedData};

const CAS_RETRIES: usize = 16;

/// Remembers in the host's shared data that `holder` holds response `id`
/// (a bounded table, so every worker finds what another remembered).
pub fn remember_holder(data: &dyn SharedData, id: &str, holder: &Holder) {
    let key = bucket_key(id);
    for _ in 0..CAS_RETRIES {
        let (value, cas) = match data.get(&key) {
            Ok(v) => v,
            Err(status) => {
                log::warn!("switchboard: reading {key} failed (status {status})");
                return;
            }
        };
        let Some(next) = insert(value.as_deref().unwrap_or_default(), id, holder) else { return };
        match data.set(&key, &next, cas) {
            Ok(()) => return,
            Err(DataError::CasMismatch) => continue,
            Err(DataError::Failed(status)) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return;
            }
        }
    }
}

/// Who holds response `id`, if this gateway relayed it (and still remembers).
pub fn response_holder(data: &dyn SharedData, id: &str) -> Option<Holder> {
    let (value, _) = data.get(&bucket_key(id)).ok()?;
    find(&value?, id)
}

/// A member of the provider named `name` (for its cluster and credentials),
/// if that provider serves the Responses API natively.
pub fn native_member_of<'c>(config: &'c Config, name: &str) -> Option<(MemberRef, &'c Provider)> {
    let index = config.providers.iter().position(|p| p.name == name)?;
    let provider = config.providers.get(index)?;
    if !NativeApi::Responses.served_by(provider.kind) {
        return None;
    }
    config.pools.iter().enumerate().find_map(|(p, pool)| {
        let m = pool.members.iter().position(|m| m.provider == index)?;
        Some((MemberRef::new(p, m), provider))
    })
}

/// A follow-up on a response no member of this gateway is known to hold.
pub fn unknown_response(f: &Followup<'_>) -> ApiError {
    let shown = format!("/v1/responses/{{id}}{}", f.rest.split('?').next().unwrap_or(""));
    ApiError::new(
        404,
        ErrorCode::NotFound,
        format!(
            "No response `{}` is known to this gateway. {shown} is passed to the OpenAI or Azure member \
             that created the response, which the gateway remembers when it relays a response \
             (per gateway instance, in memory, the latest 65,536); responses created elsewhere, \
             translated by the gateway (no provider stores them), or by another tenant are not found.",
            f.id
        ),
    )
}

impl Exchange {
    /// The calling tenant's name ("" without tenants): a response is only
    /// found again by the tenant that created it.
    pub fn tenant_name<'c>(&self, sh: &'c dyn Shared) -> &'c str {
        let tenant = self.tenant.as_ref().and_then(|t| sh.config().tenants.as_ref()?.get(t.index));
        tenant.map_or("", |t| t.name.as_str())
    }

    /// The `previous_response_id` of a Responses request.
    pub fn previous_response_id(&self) -> Option<String> {
        if self.door != Door::Responses {
            return None;
        }
        let request = ParsedRequest::parse_fields(&self.door_body).ok()?;
        let id = request.field("previous_response_id")?.get().strip_prefix('"')?.strip_suffix('"')?;
        Some(id.to_string())
    }

    /// A `previous_response_id` of `holder` goes to a member of the provider
    /// that holds the conversation (of the same tenant; another tenant's is
    /// refused as unknown). An id the gateway does not know is left to the
    /// native members as before.
    pub fn hold_conversation(
        &self,
        sh: &dyn Shared,
        plan: &mut Plan,
        target: &str,
        id: &str,
        holder: Option<Holder>,
    ) -> Result<(), ApiError> {
        let Some(holder) = holder else { return Ok(()) };
        if holder.tenant != self.tenant_name(sh) {
            return Err(ApiError::new(
                404,
                ErrorCode::NotFound,
                format!("No response `{id}` is known to this gateway."),
            )
            .with_param("previous_response_id"));
        }
        let config = sh.config();
        let Some(index) = config.providers.iter().position(|p| p.name == holder.provider) else { return Ok(()) };
        let native = NativeOnly {
            feature: format!("previous_response_id `{id}` is held by provider `{}`", holder.provider),
            kinds: "that provider's",
            providers: vec![index],
        };
        plan.require_native(config, native, target)
    }

    /// Remembers (through `Shared`) which provider holds the response of a
    /// natively served Responses answer of `status` from `member`, once its
    /// id is in the answer's first bytes.
    pub fn note_response_id(&mut self, sh: &dyn Shared, member: MemberRef, native: bool, status: u16) {
        if self.response_noted || self.door != Door::Responses || !native || !(200..300).contains(&status) {
            return;
        }
        let Some(id) = self.answer.tail.as_ref().and_then(|t| response_id_in(t.head())) else { return };
        let Some((_, _, provider)) = sh.config().resolve(member) else { return };
        sh.remember_response(id, &Holder { provider: provider.name.clone(), tenant: self.tenant_name(sh).to_string() });
        self.response_noted = true;
    }

    /// A follow-up on a stored response: the member of the provider that
    /// holds it (of the caller's tenant) it is passed to as it is, with that
    /// request; else the 404.
    pub fn followup(
        &self,
        sh: &dyn Shared,
        method: &str,
        path: &str,
    ) -> Result<(MemberRef, UpstreamRequest), ApiError> {
        let f = followup(path).ok_or_else(|| ApiError::not_found(path.split('?').next().unwrap_or("")))?;
        let holder = sh.response_holder(f.id).filter(|h| h.tenant == self.tenant_name(sh));
        let Some((member, provider)) = holder.and_then(|h| native_member_of(sh.config(), &h.provider)) else {
            return Err(unknown_response(&f));
        };
        let upstream = responses_followup(provider, &format!("{}{}", f.id, f.rest));
        log::info!(
            "switchboard[{}]: {method} /v1/responses/{{id}}{} to provider {}",
            self.request_id,
            f.rest.split('?').next().unwrap_or(""),
            provider.name
        );
        Ok((member, upstream))
    }

    /// A Responses request's `previous_response_id` the gateway remembers
    /// keeps the request on a member of the provider that holds the conversation.
    pub fn hold_remembered(&self, sh: &dyn Shared, plan: &mut Plan, target: &str) -> Result<(), ApiError> {
        let Some(id) = self.previous_response_id() else { return Ok(()) };
        self.hold_conversation(sh, plan, target, &id, sh.response_holder(&id))
    }
}
