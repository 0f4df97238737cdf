//! switchboard: an LLM gateway as a proxy-wasm HTTP filter for Envoy.
//!
//! Layout: `config` (schema and validation), `api` (client-facing OpenAI API:
//! parsing, errors, model listing), `routing` (member selection, health),
//! `providers` (upstream request/response adapters) are plain Rust, tested
//! natively and as wasm; so is `observe` (the call-log line, request-end stat
//! names). `host` is the only module that talks to proxy-wasm.

pub mod api;
pub mod config;
pub mod doors;
pub mod encoding;
pub mod exchange;
pub mod explain;
pub use switchboard_learned as learned;
pub mod observe;
pub mod providers;
pub mod routing;
pub mod sse;
pub mod stats;
pub mod tenant;
pub mod text;
pub mod training;

#[cfg(feature = "filter")]
mod host;
