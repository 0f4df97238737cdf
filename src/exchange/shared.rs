//! What the requests of a proxy share, as one request's exchange asks for
//! it: the configuration, the clock, member health, live load and latency,
//! canary windows, and the counters. `host::runtime::Runtime` implements it
//! over Envoy's shared data; tests implement it in memory.
//!
//! Every method answers at once, from what this worker can read now
//! (Envoy's shared data, or caches the host refreshes on its tick). A second
//! host (an Envoy dynamic module) implements this trait over its own shared
//! state and applies the same steps. A store that answers only after a round
//! trip (a state service through Envoy, for a fleet) does not fit a method
//! that answers at once: such a decision is a step the host carries out and
//! answers later (the request paused meanwhile), not a method here: a
//! tenant's admission is asked ([`super::TenantAsk`]) of the store the host
//! picks (shared data, or the fleet's service), and its verdict handed back.

use crate::api::models::ModelListing;
use crate::api::response_ids::Holder;
use crate::api::ErrorCode;
use crate::config::{Config, MemberRef};
use crate::routing::exhausted::PassedOver;
use crate::routing::{LatencyKind, MemberHealth, Plan};

/// A member chosen for an attempt, with the health it had when chosen.
#[derive(Debug, Clone, Copy)]
pub struct Picked {
    pub member: MemberRef,
    /// A clean member's success changes nothing in shared data but a count.
    pub health: MemberHealth,
}

/// An event the counters count (the host names and labels them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A request routed to this pool.
    PoolRequest(usize),
    /// An attempt started on this member.
    Attempt(MemberRef),
    /// This member failed and the request moved on to another.
    Failover(MemberRef),
    /// Every member of this pool failed or was passed over.
    Exhausted(usize),
    /// This member's answer broke after its headers went out.
    CutAnswer(MemberRef),
    /// A request of this pool was hedged; its hedge won.
    Hedged(usize),
    HedgeWin(usize),
    /// A stream of this pool fell silent past its idle limit.
    StreamIdleTimeout(usize),
    /// A broken stream of this pool was continued on another member.
    ResumedStream(usize),
    /// The gateway answered or failed the request itself with this code.
    LocalError(ErrorCode),
    /// This tenant's request was refused by its limits (`budget`: by its budget).
    TenantRefused {
        tenant: usize,
        budget: bool,
    },
}

/// What requests share. See the module documentation.
pub trait Shared {
    fn config(&self) -> &Config;

    /// Milliseconds since the epoch (0 when the clock cannot be read).
    fn now_ms(&self) -> u64;

    /// The next member `plan` allows, by its pool's strategy over the
    /// members' health, load and latency; a member past its cooldown is
    /// claimed for its one trial request.
    fn pick(&self, plan: &mut Plan, now_ms: u64) -> Option<Picked>;

    /// How an attempt ended, in shared health, canary windows and counters
    /// (the plan has it already). `failed`: its pool fails over on it.
    fn record(
        &self,
        picked: Picked,
        status: u16,
        failed: bool,
        retry_after: Option<&str>,
        now_ms: u64,
        request_id: &str,
    );

    /// A successful answer of `member` that ended at `now_ms` after `took_ms`
    /// (the evidence that tells a hung member from a slow one).
    fn note_answered(&self, member: MemberRef, now_ms: u64, took_ms: u64);

    /// Whether a client that left after `waited_ms` without an answer from
    /// `member` counts as its failure (the pool's other members answer much faster).
    fn abort_is_failure(&self, member: MemberRef, waited_ms: u64, now_ms: u64) -> bool;

    /// When the gateway next sends `member_id` a request (None: it would now).
    fn next_try_ms(&self, member_id: &str, now_ms: u64) -> Option<u64>;

    /// A member not tried because it was out (ejected or held).
    fn passed_over(&self, member_id: &str, now_ms: u64) -> PassedOver;

    /// A request to `member` starts or ends (requests in flight, `least_busy`).
    fn begin_in_flight(&self, member: MemberRef);
    fn end_in_flight(&self, member: MemberRef);

    /// A latency sample of `member` (`lowest_latency`).
    fn observe_latency(&self, member: MemberRef, kind: LatencyKind, sample_ms: f64);

    fn count(&self, what: Count);

    /// The member's identity `provider/model`, for logs and headers.
    fn member_id(&self, member: MemberRef) -> &str {
        self.config().member(member).map_or("?", |m| m.id.as_str())
    }

    /// Remembers who holds the stored response `id` (a Responses answer
    /// served natively), for its follow-ups. A host that serves no
    /// follow-ups keeps nothing.
    fn remember_response(&self, _id: &str, _holder: &Holder) {}

    /// Who holds the stored response `id`, if it was remembered.
    fn response_holder(&self, _id: &str) -> Option<Holder> {
        None
    }

    /// The model listing `tenant` may see (`None`: every model), when the host keeps one.
    fn listing(&self, _tenant: Option<usize>) -> Option<&ModelListing> {
        None
    }

    /// Whether `status` (0: no response) from `member` is a failure its pool fails over on.
    fn is_failure(&self, member: MemberRef, status: u16) -> bool {
        status == 0 || self.config().pool_at(member.pool).is_some_and(|p| p.retry.should_retry(status))
    }
}

/// Why [`SharedData::set`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// Another writer changed the key since it was read: read it again and retry.
    CasMismatch,
    /// The host refused (its status).
    Failed(u32),
}

/// Bytes per key with a version, seen by every worker of the proxy: the
/// semantics of proxy-wasm's shared data, which the stores written against it
/// (learned routers' learning and feedback memory, the Responses table) need.
/// The proxy-wasm host implements it over Envoy's shared data, the dynamic
/// module over its process memory.
pub trait SharedData {
    /// The value of `key` (`None`: never set) and its version for [`SharedData::set`]; `Err`: the host's status.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), u32>;

    /// Writes `key` if its version is still `cas` (0: whatever it is).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), DataError>;
}

/// Shared data in memory, with proxy-wasm's versions (for tests).
#[cfg(test)]
#[derive(Default)]
pub struct Memory(std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>);

#[cfg(test)]
impl SharedData for Memory {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), u32> {
        Ok(self.0.borrow().get(key).map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas)))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), DataError> {
        let mut map = self.0.borrow_mut();
        let entry = map.entry(key.to_string()).or_insert((Vec::new(), 0));
        if cas != 0 && cas != entry.1 {
            return Err(DataError::CasMismatch);
        }
        *entry = (value.to_vec(), entry.1 + 1);
        Ok(())
    }
}
