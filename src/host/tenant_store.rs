//! Tenant limit state in shared data, changed under compare-and-swap so every
//! worker of the Envoy process counts against the same numbers. Per Envoy
//! instance and in memory: a restart starts from zero.

use crate::tenant::limits::{admit_parallel, Refusal, Spend, Window};
use crate::tenant::{BudgetPeriod, Tenant};

use super::abi;

const CAS_RETRIES: usize = 64;

fn key(tenant: &str, what: &str) -> String {
    format!("switchboard.tenant.{tenant}.{what}")
}

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

fn decode_u32(bytes: &[u8]) -> u32 {
    bytes.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// Takes a parallel slot; true when one is held (release it with `release_parallel`).
pub fn take_parallel(tenant: &Tenant) -> Result<bool, Refusal> {
    let Some(max) = tenant.max_parallel else { return Ok(false) };
    let taken = update(&key(&tenant.name, "parallel"), decode_u32, |n| {
        let next = admit_parallel(n, max)?;
        Ok((next, next.to_le_bytes().to_vec()))
    })?;
    Ok(taken.is_some())
}

pub fn release_parallel(tenant: &Tenant) {
    let _ = update(&key(&tenant.name, "parallel"), decode_u32, |n| {
        let next = n.saturating_sub(1);
        Ok((next, next.to_le_bytes().to_vec()))
    });
}

/// Counts the request and reserves `tokens` in this minute's window. Returns
/// the window after admission (for the rate-limit headers), if stored.
pub fn admit(tenant: &Tenant, now_s: u64, tokens: u64) -> Result<Option<Window>, Refusal> {
    update(&key(&tenant.name, "window"), Window::decode, |w| {
        let next = w.admit(now_s, tenant.rpm, tenant.tpm, tokens)?;
        Ok((next, next.encode().to_vec()))
    })
}

/// Replaces a reservation by the real usage.
pub fn correct(tenant: &Tenant, now_s: u64, reserved_in_s: u64, reserved: u64, actual: u64) {
    let _ = update(&key(&tenant.name, "window"), Window::decode, |w| {
        let next = w.correct(now_s, reserved_in_s, reserved, actual);
        Ok((next, next.encode().to_vec()))
    });
}

fn spend_key(tenant: &Tenant) -> String {
    key(&tenant.name, "spend")
}

pub fn check_budget(tenant: &Tenant, now_s: u64) -> Result<(), Refusal> {
    let Some(budget) = &tenant.budget else { return Ok(()) };
    let spend = match abi::shared_get(&spend_key(tenant)) {
        Ok((Some(bytes), _)) => Spend::decode(&bytes),
        _ => Spend::default(),
    };
    spend.check(now_s, budget.per, budget.limit_usd)
}
pub fn add_spend(tenant: &Tenant, now_s: u64, micro_usd: u64) {
    let Some(per) = tenant.budget.as_ref().map(|b| b.per) else { return };
    let per: BudgetPeriod = per;
    let _ = update(&spend_key(tenant), Spend::decode, |s| {
        let next = s.add(now_s, per, micro_usd);
        Ok((next, next.encode().to_vec()))
    });
}
