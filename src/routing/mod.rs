//! Choosing where a request goes: member selection and health bookkeeping.
//! No proxy-wasm calls; the host layer supplies time, randomness and storage.

pub mod health;
pub mod plan;
pub mod select;

pub use health::{Availability, MemberHealth, Transition};
pub use plan::{Attempt, Plan};
pub use select::{pick, Rng};
