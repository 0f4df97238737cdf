//! Member health kept in proxy-wasm shared data, visible to every worker VM
//! of the Envoy process, updated with compare-and-swap.
//!
//! Every change that can alter a member's availability also bumps a shared
//! generation number. Each VM caches the entries it read together with the
//! generation; while the generation stands still (the normal, healthy case) a
//! pick costs one shared-data read however many members the pool has.

use rustc_hash::FxHashMap as HashMap;

use crate::routing::exhausted::PassedOver;
use crate::routing::{Availability, MemberHealth, Transition};

use super::abi;

const CAS_RETRIES: usize = 16;
const GENERATION_KEY: &str = "switchboard.health.generation";

/// A VM's view of member health, valid for one generation.
#[derive(Debug, Default)]
pub struct HealthCache {
    generation: Option<u64>,
    entries: HashMap<String, MemberHealth>,
}

impl HealthCache {
    /// Drops the cached entries if any member changed since they were read.
    pub fn refresh(&mut self) {
        let generation = read_generation();
        if generation.is_none() || generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
    }

    pub fn get(&mut self, member_id: &str) -> MemberHealth {
        if let Some(h) = self.entries.get(member_id) {
            return *h;
        }
        let (health, _) = read(member_id);
        // Only cache what a known generation vouches for.
        if self.generation.is_some() {
            self.entries.insert(member_id.to_string(), health);
        }
        health
    }
}

fn read_generation() -> Option<u64> {
    match abi::shared_get(GENERATION_KEY) {
        Ok((Some(bytes), _)) => Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)),
        // Nothing changed since Envoy started.
        Ok((None, _)) => Some(0),
        Err(status) => {
            log::warn!("switchboard: reading health generation failed (status {status})");
            None
        }
    }
}

fn bump_generation() {
    for _ in 0..CAS_RETRIES {
        let (current, cas) = match abi::shared_get(GENERATION_KEY) {
            Ok((bytes, cas)) => {
                (bytes.and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))).unwrap_or(0), cas)
            }
            Err(_) => return,
        };
        match abi::shared_set(GENERATION_KEY, &current.wrapping_add(1).to_le_bytes(), cas) {
            Ok(()) => return,
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: bumping health generation failed (status {status})");
                return;
            }
        }
    }
}

fn key(member_id: &str) -> String {
    format!("switchboard.health.{member_id}")
}

pub fn read(member_id: &str) -> (MemberHealth, u32) {
    match abi::shared_get(&key(member_id)) {
        Ok((Some(bytes), cas)) => (MemberHealth::decode(&bytes), cas),
        Ok((None, cas)) => (MemberHealth::default(), cas),
        Err(status) => {
            log::warn!("switchboard: reading health of {member_id} failed (status {status}); treating as healthy");
            (MemberHealth::default(), 0)
        }
    }
}

pub fn availability(member_id: &str, now_ms: u64) -> Availability {
    read(member_id).0.availability(now_ms)
}

/// How long a client is told to wait while a member's half-open trial is in
/// flight: the trial's success puts the member back at once.
const TRIAL_RECHECK_MS: u64 = 1_000;

/// When the gateway next sends `member_id` a request (None: now).
pub fn next_try_ms(member_id: &str, now_ms: u64) -> Option<u64> {
    read(member_id).0.next_try_ms(now_ms, TRIAL_RECHECK_MS)
}

/// A member the request passed over because it was out: when it is back, and why it is out.
pub fn passed_over(member_id: &str, now_ms: u64) -> PassedOver {
    let health = read(member_id).0;
    PassedOver {
        next_try_ms: health.next_try_ms(now_ms, TRIAL_RECHECK_MS),
        held_by_provider: health.held_by_provider(now_ms),
    }
}

/// Applies `change` atomically; returns what it did. On persistent contention
/// or host errors the update is dropped (health is advisory) and logged.
/// Changes that alter availability (anything but the success count) bump the
/// generation so other VMs re-read.
pub fn update(member_id: &str, mut change: impl FnMut(&mut MemberHealth) -> Transition) -> Transition {
    let key = key(member_id);
    for _ in 0..CAS_RETRIES {
        let (mut health, cas) = read(member_id);
        let before = MemberHealth { successes: 0, failures: 0, ..health };
        let transition = change(&mut health);
        match abi::shared_set(&key, &health.encode(), cas) {
            Ok(()) => {
                if (MemberHealth { successes: 0, failures: 0, ..health }) != before {
                    bump_generation();
                }
                return transition;
            }
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: writing health of {member_id} failed (status {status})");
                return Transition::None;
            }
        }
    }
    log::warn!("switchboard: health update of {member_id} lost to contention");
    Transition::None
}

/// Reads a small shared counter-like value (used for the probe leader lease).
pub fn lease(name: &str, holder: u64, now_ms: u64, ttl_ms: u64) -> bool {
    let key = format!("switchboard.lease.{name}");
    for _ in 0..CAS_RETRIES {
        let (current, cas) = match abi::shared_get(&key) {
            Ok(v) => v,
            Err(_) => return false,
        };
        let (owner, expires) = current
            .as_deref()
            .and_then(|b| {
                let owner = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
                let expires = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
                Some((owner, expires))
            })
            .unwrap_or((0, 0));
        if owner != holder && expires > now_ms {
            return false;
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&holder.to_le_bytes());
        value[8..].copy_from_slice(&now_ms.saturating_add(ttl_ms).to_le_bytes());
        match abi::shared_set(&key, &value, cas) {
            Ok(()) => return true,
            Err(abi::CAS_MISMATCH) => continue,
            Err(_) => return false,
        }
    }
    false
}
