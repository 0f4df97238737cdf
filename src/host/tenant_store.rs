//! Tenant limit state in shared data, changed under compare-and-swap so every
//! worker of the Envoy process counts against the same numbers. Per Envoy
//! instance and in memory: a restart starts from zero.

use crate::tenant::limits::{Refusal, Settlement, TenantState};
use crate::tenant::Tenant;

use super::abi;

const CAS_RETRIES: usize = 64;

/// Applies `change` to the entry atomically. `Err` when `change` refuses;
/// `Ok(None)` when the store cannot be written (fails open, logged).
fn update<T>(
    key: &str,
    decode: impl Fn(&[u8]) -> T,
    mut change: impl FnMut(T) -> Result<(T, Vec<u8>), Refusal>,
) -> Result<Option<T>, Refusal>
where
    T: Copy,
{
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = match abi::shared_get(key) {
            Ok(v) => v,
            Err(status) => {
                log::warn!("switchboard: reading {key} failed (status {status})");
                return Ok(None);
            }
        };
        let current = decode(bytes.as_deref().unwrap_or_default());
        let (next, encoded) = change(current)?;
        match abi::shared_set(key, &encoded, cas) {
            Ok(()) => return Ok(Some(next)),
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return Ok(None);
            }
        }
    }
    log::warn!("switchboard: {key} lost to contention");
    Ok(None)
}

fn state_key(tenant: &Tenant) -> String {
    format!("switchboard.tenant.{}", tenant.name)
}

/// Admits one request reserving `tokens` and `worst_micro_usd` of the budget
/// against every limit at once. Returns the state after admission (for the
/// rate-limit headers), if stored.
pub fn admit(tenant: &Tenant, now_s: u64, tokens: u64, worst_micro_usd: u64) -> Result<Option<TenantState>, Refusal> {
    update(&state_key(tenant), TenantState::decode, |state| {
        let next = state.admit(tenant, now_s, tokens, worst_micro_usd)?;
        Ok((next, next.encode().to_vec()))
    })
}

/// What the tenant spent of its budget in the current period (micro-USD);
/// `None` without a budget or when the store cannot be read.
pub fn spent_micro_usd(tenant: &Tenant, now_s: u64) -> Option<u64> {
    let budget = tenant.budget.as_ref()?;
    let (bytes, _) = abi::shared_get(&state_key(tenant)).ok()?;
    let state = TenantState::decode(bytes.as_deref().unwrap_or_default());
    Some(state.spend.in_period(now_s, budget.per))
}

/// Settles an admitted request: slot, token reservation and spend in one swap.
pub fn settle(tenant: &Tenant, now_s: u64, end: &Settlement) {
    let _ = update(&state_key(tenant), TenantState::decode, |state| {
        let next = state.settle(tenant, now_s, end);
        Ok((next, next.encode().to_vec()))
    });
}
