//! Choosing where a request goes: member selection and health bookkeeping.
//! No proxy-wasm calls; the host layer supplies time, randomness and storage.

pub mod select;

pub use select::{pick, Availability, Rng};
pub mod health;
pub mod plan;
pub mod verdict;

pub use health::{MemberHealth, Transition};
pub use plan::{Attempt, Plan};
