//! Canary windows in shared data: every worker counts its pool's attempts
//! into the same window, so a rollback decided on one worker holds on all.
//! Keys carry a fingerprint of the configuration: a changed configuration
//! starts every canary afresh (shared data outlives a reload).

use crate::config::Pool;
use crate::routing::canary::CanaryWindow;

use super::abi;

const CAS_RETRIES: usize = 16;

fn key(generation: u64, member_id: &str) -> String {
    format!("switchboard.canary.{generation:x}.{member_id}")
}

fn read(key: &str) -> Option<(CanaryWindow, u32)> {
    match abi::shared_get(key) {
        Ok((bytes, cas)) => Some((bytes.as_deref().and_then(CanaryWindow::decode).unwrap_or_default(), cas)),
        Err(status) => {
            log::warn!("switchboard: reading {key} failed (status {status})");
            None
        }
    }
}

/// Whether the canary `member_id` was rolled back, by any worker.
pub fn rolled_back(generation: u64, member_id: &str) -> bool {
    read(&key(generation, member_id)).is_some_and(|(w, _)| w.rolled_back)
}

/// Counts an attempt of member `attempted` of `pool` in the windows of the
/// pool's canaries. Returns the canaries (member indexes) it rolled back,
/// each with (its window, the others') error rates and its attempts.
pub fn record(generation: u64, pool: &Pool, attempted: usize, failed: bool, now_s: u64) -> Vec<(usize, f64, f64, u32)> {
    let mut rolled = Vec::new();
    for (index, member) in pool.members.iter().enumerate() {
        let Some(policy) = &member.canary else { continue };
        let key = key(generation, &member.id);
        for _ in 0..CAS_RETRIES {
            let Some((mut window, cas)) = read(&key) else { break };
            if window.rolled_back {
                break;
            }
            let now_rolled = window.record(policy, now_s, index == attempted, failed);
            match abi::shared_set(&key, &window.encode(), cas) {
                Ok(()) => {
                    if now_rolled {
                        let (canary, others) = window.totals(now_s);
                        rolled.push((index, canary.error_rate(), others.error_rate(), canary.requests));
                    }
                    break;
                }
                Err(abi::CAS_MISMATCH) => continue,
                Err(status) => {
                    log::warn!("switchboard: writing {key} failed (status {status})");
                    break;
                }
            }
        }
    }
    rolled
}
