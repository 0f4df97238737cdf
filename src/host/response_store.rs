//! Which provider holds a response the gateway relayed (`api::response_ids`):
//! a bounded table in shared data, so every worker finds what another
//! remembered. Per Envoy instance and in memory, like the other stores.

use crate::api::response_ids::{bucket_key, find, insert, Holder};

use super::abi;

const CAS_RETRIES: usize = 16;

/// Remembers that `holder` holds response `id`.
pub fn remember(id: &str, holder: &Holder) {
    let key = bucket_key(id);
    for _ in 0..CAS_RETRIES {
        let (value, cas) = match abi::shared_get(&key) {
            Ok(v) => v,
            Err(status) => {
                log::warn!("switchboard: reading {key} failed (status {status})");
                return;
            }
        };
        let Some(next) = insert(value.as_deref().unwrap_or_default(), id, holder) else { return };
        match abi::shared_set(&key, &next, cas) {
            Ok(()) => return,
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return;
            }
        }
    }
}

/// Who holds response `id`, if this gateway relayed it (and still remembers).
pub fn holder(id: &str) -> Option<Holder> {
    let (value, _) = abi::shared_get(&bucket_key(id)).ok()?;
    find(&value?, id)
}
