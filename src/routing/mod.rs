//! Choosing where a request goes, in stages: resolve the requested name
//! (`router`), candidate members (`filter`), pick (`select` strategies), with
//! the attempts tracked by `plan`; plus member health bookkeeping.
//! No proxy-wasm calls; the host layer supplies time, randomness, headers,
//! live member stats and storage.

pub mod canary;
pub mod exhausted;
pub mod filter;
pub mod health;
pub mod plan;
pub mod redirect;
pub mod resume;
pub mod router;
pub mod select;
pub mod silence;
pub mod stats;

pub use filter::NativeOnly;
pub use health::{Availability, MemberHealth, Transition};
pub use plan::{Attempt, Plan, RouteInput, StageReport, Verdict};
pub use select::{Candidate, LatencyKind, LiveStats, Rng};
pub use stats::LatencyStats;
