//! Upstream answers: translation of bodies and streams (delivered in
//! input-derived chunks) for every provider kind, and the upstream headers
//! that drive health (`Retry-After`, the shared health record).
//!
//! Input: byte 0 picks kind and endpoint, byte 1 stream flag and status,
//! bytes 2..5 the chunk split points, the rest is the upstream body.
#![no_main]

use fuzz_common::{is_json, mix, strict, ENDPOINTS, NOW_MS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard::config::{HealthPolicy, ProviderKind};
use switchboard::providers::ResponseAdapter;
use switchboard::routing::health::retry_after_until_ms;
use switchboard::routing::MemberHealth;

const KINDS: [ProviderKind; 6] = [
    ProviderKind::Openai,
    ProviderKind::OpenaiCompatible,
    ProviderKind::Azure,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
    ProviderKind::Bedrock,
];
const STATUSES: [u16; 16] = [200, 200, 200, 200, 201, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 529];

/// Checks an OpenAI SSE stream as the client sees it (`data:` events of JSON
/// objects, ending with `data: [DONE]`) and returns its events with generated
/// ids blanked (they are random per adapter).
fn sse_events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap_or_else(|_| panic!("stream output is not UTF-8"));
    assert!(text.ends_with("data: [DONE]\n\n"), "stream does not end with [DONE]: {text:?}");
    let mut events = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {event:?}"));
        assert!(!data.contains('\n'), "multi-line event: {event:?}");
        if data == "[DONE]" {
            events.push(Value::Null);
            continue;
        }
        let mut v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("event is not JSON ({e}): {data:?}"));
        assert!(v.is_object(), "event is not an object: {data:?}");
        blank_generated_ids(&mut v);
        events.push(v);
    }
    assert_eq!(events.iter().filter(|e| e.is_null()).count(), 1, "[DONE] not exactly once: {text:?}");
    events
}

fn blank_generated_ids(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                let generated = x.as_str().is_some_and(|s| s.starts_with("chatcmpl-") || s.starts_with("call_"));
                if k == "id" && generated {
                    *x = Value::Null;
                } else {
                    blank_generated_ids(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(blank_generated_ids),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, body) = data.split_at(5);
    let kind = KINDS[usize::from(head[0]) % KINDS.len()];
    let endpoint = ENDPOINTS[(usize::from(head[0]) / KINDS.len()) % ENDPOINTS.len()];
    let stream = head[1] & 1 == 1;
    let status = STATUSES[usize::from(head[1] >> 1) % STATUSES.len()];

    // Headers that reach the health store.
    if let Ok(value) = std::str::from_utf8(body) {
        if let Some(until) = retry_after_until_ms(value, NOW_MS) {
            assert!((NOW_MS..=NOW_MS + 3_600_000).contains(&until), "Retry-After {value:?} gives {until}");
        }
    }
    let mut health = MemberHealth::decode(body.get(..40).unwrap_or(body));
    assert_eq!(MemberHealth::decode(&health.encode()), health, "health record does not round-trip");
    let policy = HealthPolicy {
        consecutive_failures: u32::from(head[2]).max(1),
        cooldown_ms: mix(head, 1) % 100_000,
        max_cooldown_ms: 100_000 + mix(head, 2) % 1_000_000,
    };
    let now = NOW_MS + mix(body, 3) % 1_000_000;
    let _ = health.availability(now);
    let _ = health.record_failure(now, &policy);
    let _ = health.begin_trial(now, 1000);
    let _ = health.hold_until(now + 500);
    let _ = health.record_success();

    let Some(mut adapter) = ResponseAdapter::new(kind, endpoint, stream, "model-x") else {
        assert!(
            matches!(kind, ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure),
            "{kind:?} needs a response adapter"
        );
        return;
    };
    let streaming = stream && status < 400;
    assert_eq!(adapter.content_type() == "text/event-stream", stream);

    // As the filter does: a whole body for non-streaming and error answers...
    let out = adapter.translate_body(status, body);
    if strict() {
        if streaming {
            // A successful stream given whole is translated as a stream.
            sse_events(&out);
        } else {
            assert!(is_json(&out), "translated body is not JSON: {:?}", String::from_utf8_lossy(&out));
        }
    }
    if !streaming {
        return;
    }

    // ... and a successful stream as it arrives: in one piece, then in up to
    // four input-derived pieces; the cuts must not change the translation.
    let Some(mut whole) = ResponseAdapter::new(kind, endpoint, stream, "model-x") else { return };
    let reference = whole.translate_stream(body, true);
    let Some(mut adapter) = ResponseAdapter::new(kind, endpoint, stream, "model-x") else { return };
    let mut cuts: Vec<usize> = head[2..5].iter().map(|&b| usize::from(b) * body.len() / 255).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts {
        out.extend(adapter.translate_stream(&body[at..cut], false));
        at = cut;
    }
    out.extend(adapter.translate_stream(&body[at..], false));
    out.extend(adapter.translate_stream(&[], true));
    // Anything after the end is ignored, never a panic.
    let _ = adapter.translate_stream(b"data: {}\n\n", true);
    if strict() {
        let want = sse_events(&reference);
        let got = sse_events(&out);
        assert_eq!(got, want, "translation depends on how the stream is cut ({:?})", &head[2..5]);
    }
});
