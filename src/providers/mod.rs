//! Provider adapters: how a routed request is presented to each kind of
//! provider (path, host, credentials, body), and how answers come back in
//! OpenAI's shape. No proxy-wasm calls.
//!
//! OpenAI-wire kinds (`openai`, `openai_compatible`, `azure`) only get their
//! `model` replaced (`openai`) and their answers pass through. `anthropic`,
//! `gemini` and `bedrock` serve chat completions only: the request is decoded
//! once (`chat`) and rendered per kind.
//!
//! # The adapter contract
//!
//! Each translated kind is a unit struct implementing `adapter::Adapter`:
//!
//! - `body(chat, model, ctx)`: the provider's JSON request body, or a 400
//!   naming what it cannot express; `request(provider, member, chat, body,
//!   ctx)`: path, authority and headers around the serialised body (Bedrock
//!   signs it). The provided `build` joins them.
//! - `completion(body)`: a successful complete answer read into an
//!   `Answer` (choices, usage, the provider's id), which `Meta::completion`
//!   writes as a `chat.completion`; `Err(openai_error_body)` when the answer
//!   is an error in disguise or cannot be read (the host then answers 502).
//! - `error_body(status, body)`: an error answer into an OpenAI error body,
//!   the provider's error name as `code` (via `upstream_error::translate`).
//! - `stream(meta, include_usage)`: a fresh `StreamState` whose
//!   `feed(chunk, end_of_stream) -> Vec<u8>` turns pieces of the upstream
//!   stream, cut anywhere, into complete OpenAI SSE events, ending with
//!   `data: [DONE]` (after a usage-only chunk when `include_usage`), and
//!   whose `usage()` is the latest usage seen. Kinds put usage in
//!   `Emitter::usage`; the `Emitter` decides what the client sees. SSE-framed
//!   kinds implement only `SseEvents` and use `SseStream`.
//!
//! Structured outputs (`structured`): Anthropic and Bedrock declare
//! `Chat::structured_output_tool()`; the emitter and `Meta::completion`
//! turn that tool's call into content for every kind.
//!
//! `dispatch::translated(kind)` is the one place that maps a kind to its
//! adapter; `build_request` and `ResponseAdapter` use it.
//!
//! # Layers
//!
//! Modules only import from lower layers, never back:
//! `eventstream`, `sigv4`, `upstream`, `structured` (leaves) <- `chat`,
//! `openai_out` <- `emit`, `upstream_error` <- `adapter` <- `anthropic`,
//! `gemini`, `bedrock`, `openai` <- `dispatch` <- `response`. All OpenAI
//! error JSON is written by `api::error::write_json`; base64, hex and
//! percent-decoding come from `crate::encoding`, SSE framing from `crate::sse`.

mod adapter;
mod anthropic;
mod bedrock;
mod chat;
mod dispatch;
mod emit;
mod eventstream;
mod gemini;
mod openai;
mod openai_out;
mod response;
mod sigv4;
mod structured;
#[cfg(test)]
pub(crate) mod test_support;
mod upstream;
mod upstream_error;

pub use chat::stream_include_usage;
pub use dispatch::{build_native, build_request, NativeApi};
pub(crate) use emit::Emitter;
pub use openai::responses_followup;
pub(crate) use openai_out::Meta;
pub use response::ResponseAdapter;
pub use upstream::{BuildContext, UpstreamRequest, CREDENTIAL_HEADERS};

/// A tool call's arguments as JSON text: `to_string` by serde_json's writer
/// (what `Value`'s `Display` prints, without a second serializer for
/// `fmt::Write` in the module). Serializing a `Value` cannot fail.
fn json_text(value: &serde_json::Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
