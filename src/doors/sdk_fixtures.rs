//! Golden files for tests/unit_doors (the official SDKs parse them): the
//! translators' output for the inputs in tests/fixtures/doors must match the
//! committed `*.expected.*` files. `SWITCHBOARD_UPDATE_FIXTURES=1 cargo test
//! doors::sdk_fixtures` rewrites them after an intended change. Native only: wasm tests have no files.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use super::{messages, responses};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/doors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// Pretty-prints JSON outputs so the golden files review well.
fn pretty(json: &[u8]) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mut out = serde_json::to_vec_pretty(&value).unwrap();
    out.push(b'\n');
    out
}

fn check(name: &str, actual: Vec<u8>) {
    let path = dir().join(name);
    if std::env::var_os("SWITCHBOARD_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_default();
    assert!(expected == actual, "{name} differs from the translator output:\n{}", String::from_utf8_lossy(&actual));
}

/// Feeds a stream in 7-byte pieces, as Envoy may split it.
fn feed_split(mut feed: impl FnMut(&[u8], bool) -> Vec<u8>, stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in stream.chunks(7) {
        out.extend(feed(piece, false));
    }
    out.extend(feed(b"", true));
    out
}

#[test]
fn messages_door_output_matches_the_sdk_checked_golden_files() {
    check("messages_request.expected.json", pretty(&messages::to_chat(&read("messages_request.json"), None).unwrap()));
    check(
        "messages_message.expected.json",
        pretty(&messages::from_chat_completion(&read("chat_completion.json"), "claude-pool")),
    );
    let mut stream = messages::MessagesStream::new("claude-pool");
    check("messages_stream.expected.sse", feed_split(|c, end| stream.feed(c, end), &read("chat_stream.sse")));
    let mut stream = messages::MessagesStream::new("claude-pool");
    check(
        "messages_stream_error.expected.sse",
        feed_split(|c, end| stream.feed(c, end), &read("chat_stream_error.sse")),
    );
    check("messages_error.expected.json", pretty(&messages::error_body(429, &read("openai_error.json"))));
    check(
        "messages_count_tokens.expected.json",
        pretty(&messages::count_tokens(&read("messages_request.json")).unwrap()),
    );
}

#[test]
fn responses_door_output_matches_the_sdk_checked_golden_files() {
    check("responses_request.expected.json", pretty(&responses::to_chat(&read("responses_request.json")).unwrap()));
    check(
        "responses_response.expected.json",
        pretty(&responses::from_chat_completion(&read("chat_completion.json"), "agents-pool")),
    );
    let mut stream = responses::ResponsesStream::new("agents-pool", 1_741_570_283);
    check("responses_stream.expected.sse", feed_split(|c, end| stream.feed(c, end), &read("chat_stream.sse")));
    let mut stream = responses::ResponsesStream::new("agents-pool", 1_741_570_283);
    check(
        "responses_stream_error.expected.sse",
        feed_split(|c, end| stream.feed(c, end), &read("chat_stream_error.sse")),
    );
}
