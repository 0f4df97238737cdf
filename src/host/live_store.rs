//! Live load and latency per member in shared data, so every worker sees
//! them: requests in flight (`least_busy`) and the moving averages of
//! `routing::stats` (`lowest_latency`). Only pools whose strategy reads them
//! pay for the reads and writes. Also each member's last answer
//! (`routing::silence`), published once a second by each worker that saw one.

use crate::routing::silence::LastAnswer;
use crate::routing::{LatencyKind, LatencyStats};

use super::abi;

const CAS_RETRIES: usize = 32;

fn in_flight_key(member_id: &str) -> String {
    format!("switchboard.inflight.{member_id}")
}

fn latency_key(member_id: &str) -> String {
    format!("switchboard.latency.{member_id}")
}

fn answer_key(member_id: &str) -> String {
    format!("switchboard.answered.{member_id}")
}

fn update(key: &str, change: impl Fn(Option<&[u8]>) -> Vec<u8>) {
    for _ in 0..CAS_RETRIES {
        let Ok((bytes, cas)) = abi::shared_get(key) else { return };
        match abi::shared_set(key, &change(bytes.as_deref()), cas) {
            Ok(()) => return,
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("switchboard: writing {key} failed (status {status})");
                return;
            }
        }
    }
}

fn decode_u32(bytes: Option<&[u8]>) -> u32 {
    bytes.and_then(|b| b.get(..4)).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

pub fn in_flight(member_id: &str) -> u32 {
    abi::shared_get(&in_flight_key(member_id)).map_or(0, |(bytes, _)| decode_u32(bytes.as_deref()))
}

/// A request to the member started; `end` must follow however it ends.
pub fn begin(member_id: &str) {
    update(&in_flight_key(member_id), |b| decode_u32(b).saturating_add(1).to_le_bytes().to_vec());
}

pub fn end(member_id: &str) {
    update(&in_flight_key(member_id), |b| decode_u32(b).saturating_sub(1).to_le_bytes().to_vec());
}

pub fn latency(member_id: &str) -> LatencyStats {
    match abi::shared_get(&latency_key(member_id)) {
        Ok((Some(bytes), _)) => LatencyStats::decode(&bytes),
        _ => LatencyStats::default(),
    }
}

pub fn observe(member_id: &str, kind: LatencyKind, sample_ms: f64) {
    update(&latency_key(member_id), |b| {
        let mut stats = b.map(LatencyStats::decode).unwrap_or_default();
        stats.record(kind, sample_ms);
        stats.encode().to_vec()
    });
}

/// The member's last successful answer any worker published.
pub fn last_answer(member_id: &str) -> LastAnswer {
    match abi::shared_get(&answer_key(member_id)) {
        Ok((Some(bytes), _)) => LastAnswer::decode(&bytes),
        _ => LastAnswer::default(),
    }
}

/// Publishes a worker's last answer of the member unless another worker's is newer.
pub fn publish_answer(member_id: &str, answer: LastAnswer) {
    update(&answer_key(member_id), |b| b.map(LastAnswer::decode).unwrap_or_default().newer(answer).encode().to_vec());
}
