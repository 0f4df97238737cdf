//! Fault specifications (`POST /_mock/faults`, `x-mock-fault` header) and their
//! per-request resolution into a concrete [`Action`].

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A fault specification as sent by a test. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Answer with this status (>= 400: the provider's native error JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Probability (0..=1) that this spec applies to a request. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// `Retry-After` header value (string or number).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_string_or_number")]
    pub retry_after: Option<String>,
    /// Raw response body replacing the native error JSON (or, without
    /// `status`, a 200 answer with this body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Delay the whole response by this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Never answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    /// Close the TCP connection abruptly (RST) without any response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    /// Send headers + the first event / first half of the body, then RST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after_first_chunk: Option<bool>,
    /// Delay between streamed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_delay_ms: Option<u64>,
    /// Number of content deltas in a streamed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_chunks: Option<usize>,
    /// Delay before the response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_delay_ms: Option<u64>,
    /// A stream ends cleanly after this many content deltas: no finish, no `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_cut_after: Option<usize>,
    /// A stream sends this many content deltas, then the kind's native
    /// mid-stream error event, then ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_error_after: Option<usize>,
    /// The answer's text, instead of `mock reply from <listener> to <model>`
    /// (the same text on several listeners makes continuations checkable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// A continuation (see `kinds::Ctx::reply_text`) first repeats the last
    /// this many words of the text it continues, as models sometimes do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation_overlap_words: Option<usize>,
    /// Weighted alternatives, one picked per request. Fields set at the top
    /// level are defaults for the entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Vec<FaultSpec>>,
    /// Weight of a `mix` entry (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

fn de_string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!("retry_after must be a string or a number, got {other}"))),
    }
}

/// Largest accepted delay (one day).
const MAX_DELAY_MS: u64 = 86_400_000;

/// What to do with one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Action {
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub body: Option<String>,
    /// Delay before the response headers (latency_ms + first_byte_delay_ms).
    pub delay: Duration,
    pub hang: bool,
    pub reset: bool,
    pub reset_after_first_chunk: bool,
    pub stream_delay: Option<Duration>,
    pub stream_chunks: Option<usize>,
    pub stream_cut_after: Option<usize>,
    pub stream_error_after: Option<usize>,
    pub reply: Option<String>,
    pub continuation_overlap_words: Option<usize>,
}

impl FaultSpec {
    /// Parse and validate a spec from JSON bytes.
    pub fn parse(bytes: &[u8]) -> Result<FaultSpec, String> {
        let spec: FaultSpec = serde_json::from_slice(bytes).map_err(|e| format!("invalid fault JSON: {e}"))?;
        spec.validate(true)?;
        Ok(spec)
    }

    fn validate(&self, top: bool) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(100..=599).contains(&s) {
                return Err(format!("status {s} out of range 100..=599"));
            }
        }
        if let Some(r) = self.rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("rate {r} out of range 0..=1"));
            }
        }
        if let Some(w) = self.weight {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(format!("weight {w} must be a finite number >= 0"));
            }
        }
        for (name, v) in [
            ("latency_ms", self.latency_ms),
            ("first_byte_delay_ms", self.first_byte_delay_ms),
            ("stream_delay_ms", self.stream_delay_ms),
        ] {
            if v.is_some_and(|v| v > MAX_DELAY_MS) {
                return Err(format!("{name} must be <= {MAX_DELAY_MS}"));
            }
        }
        if let Some(c) = self.stream_chunks {
            if c > 100_000 {
                return Err("stream_chunks must be <= 100000".into());
            }
        }
        if let Some(mix) = &self.mix {
            if !top {
                return Err("nested mix is not supported".into());
            }
            if mix.is_empty() {
                return Err("mix must not be empty".into());
            }
            for e in mix {
                e.validate(false)?;
            }
            let total: f64 = mix.iter().map(|e| e.weight.unwrap_or(1.0)).sum();
            if total <= 0.0 {
                return Err("mix weights must add up to more than 0".into());
            }
        }
        Ok(())
    }

    /// Decide what happens to one request. `None`: answer normally.
    pub fn resolve(&self) -> Option<Action> {
        self.resolve_with(fastrand::f64)
    }

    /// As [`resolve`](Self::resolve) with an explicit source of uniform
    /// numbers in [0, 1) (for tests).
    pub fn resolve_with(&self, mut rnd: impl FnMut() -> f64) -> Option<Action> {
        if let Some(rate) = self.rate {
            if rate < 1.0 && rnd() >= rate {
                return None;
            }
        }
        match &self.mix {
            None => Some(self.action()),
            Some(mix) => {
                let entry = pick(mix, rnd())?;
                if let Some(rate) = entry.rate {
                    if rate < 1.0 && rnd() >= rate {
                        return None;
                    }
                }
                Some(entry.merged_over(self).action())
            }
        }
    }

    fn merged_over(&self, top: &FaultSpec) -> FaultSpec {
        FaultSpec {
            status: self.status.or(top.status),
            rate: None,
            retry_after: self.retry_after.clone().or_else(|| top.retry_after.clone()),
            body: self.body.clone().or_else(|| top.body.clone()),
            latency_ms: self.latency_ms.or(top.latency_ms),
            hang: self.hang.or(top.hang),
            reset: self.reset.or(top.reset),
            reset_after_first_chunk: self.reset_after_first_chunk.or(top.reset_after_first_chunk),
            stream_delay_ms: self.stream_delay_ms.or(top.stream_delay_ms),
            stream_chunks: self.stream_chunks.or(top.stream_chunks),
            first_byte_delay_ms: self.first_byte_delay_ms.or(top.first_byte_delay_ms),
            stream_cut_after: self.stream_cut_after.or(top.stream_cut_after),
            stream_error_after: self.stream_error_after.or(top.stream_error_after),
            reply: self.reply.clone().or_else(|| top.reply.clone()),
            continuation_overlap_words: self.continuation_overlap_words.or(top.continuation_overlap_words),
            mix: None,
            weight: None,
        }
    }

    fn action(&self) -> Action {
        Action {
            status: self.status,
            retry_after: self.retry_after.clone(),
            body: self.body.clone(),
            delay: Duration::from_millis(
                self.latency_ms.unwrap_or(0).saturating_add(self.first_byte_delay_ms.unwrap_or(0)),
            ),
            hang: self.hang.unwrap_or(false),
            reset: self.reset.unwrap_or(false),
            reset_after_first_chunk: self.reset_after_first_chunk.unwrap_or(false),
            stream_delay: self.stream_delay_ms.map(Duration::from_millis),
            stream_chunks: self.stream_chunks,
            stream_cut_after: self.stream_cut_after,
            stream_error_after: self.stream_error_after,
            reply: self.reply.clone(),
            continuation_overlap_words: self.continuation_overlap_words,
        }
    }
}

/// Pick a mix entry by weight; `u` is uniform in [0, 1).
pub fn pick(mix: &[FaultSpec], u: f64) -> Option<&FaultSpec> {
    let total: f64 = mix.iter().map(|e| e.weight.unwrap_or(1.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = u.clamp(0.0, 1.0) * total;
    let mut last = None;
    for e in mix {
        let w = e.weight.unwrap_or(1.0);
        if w <= 0.0 {
            continue;
        }
        if x < w {
            return Some(e);
        }
        x -= w;
        last = Some(e);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_spec() {
        let s = FaultSpec::parse(
            br#"{"status": 503, "rate": 0.5, "retry_after": "2", "body": "x", "latency_ms": 10,
                "hang": false, "reset": false, "reset_after_first_chunk": true,
                "stream_delay_ms": 5, "stream_chunks": 7, "first_byte_delay_ms": 3}"#,
        )
        .unwrap();
        assert_eq!(s.status, Some(503));
        assert_eq!(s.rate, Some(0.5));
        assert_eq!(s.retry_after.as_deref(), Some("2"));
        assert_eq!(s.stream_chunks, Some(7));
        let a = s.resolve_with(|| 0.1).unwrap();
        assert_eq!(a.delay, Duration::from_millis(13));
        assert!(a.reset_after_first_chunk);
        assert_eq!(a.stream_delay, Some(Duration::from_millis(5)));
        // rate 0.5: a draw of 0.7 means no fault
        assert!(s.resolve_with(|| 0.7).is_none());
    }

    #[test]
    fn stream_break_and_continuation_faults_parse_and_merge_into_mix_entries() {
        let s = FaultSpec::parse(
            br#"{"reply": "a b c", "continuation_overlap_words": 2, "mix": [{"stream_cut_after": 3}, {"stream_error_after": 1}]}"#,
        )
        .unwrap();
        let cut = s.resolve_with(|| 0.1).unwrap();
        assert_eq!((cut.stream_cut_after, cut.stream_error_after), (Some(3), None));
        assert_eq!((cut.reply.as_deref(), cut.continuation_overlap_words), (Some("a b c"), Some(2)));
        assert_eq!(s.resolve_with(|| 0.9).unwrap().stream_error_after, Some(1));
    }

    #[test]
    fn retry_after_number_and_empty_spec() {
        let s = FaultSpec::parse(br#"{"status": 429, "retry_after": 1}"#).unwrap();
        assert_eq!(s.retry_after.as_deref(), Some("1"));
        let e = FaultSpec::parse(b"{}").unwrap();
        assert_eq!(e.resolve_with(|| 0.99), Some(Action::default()));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(FaultSpec::parse(br#"{"stauts": 500}"#).is_err());
        assert!(FaultSpec::parse(br#"{"status": 1000}"#).is_err());
        assert!(FaultSpec::parse(br#"{"rate": 1.5}"#).is_err());
        assert!(FaultSpec::parse(br#"{"mix": []}"#).is_err());
        assert!(FaultSpec::parse(br#"{"mix": [{"weight": 0}]}"#).is_err());
        assert!(FaultSpec::parse(br#"{"mix": [{"mix": [{}]}]}"#).is_err());
        assert!(FaultSpec::parse(b"not json").is_err());
        assert!(FaultSpec::parse(br#"{"retry_after": [1]}"#).is_err());
        assert!(FaultSpec::parse(br#"{"latency_ms": 99999999999}"#).is_err());
        assert!(FaultSpec::parse(br#"{"latency_ms": -1}"#).is_err());
    }

    #[test]
    fn mix_selection_by_weight() {
        let s = FaultSpec::parse(
            br#"{"mix": [{"weight": 1, "status": 500}, {"weight": 1, "status": 429, "retry_after": "1"},
                         {"weight": 2, "hang": true}, {"weight": 2, "reset": true}, {"weight": 4}],
                 "latency_ms": 7}"#,
        )
        .unwrap();
        let at = |u: f64| s.resolve_with(|| u).unwrap();
        assert_eq!(at(0.05).status, Some(500));
        assert_eq!(at(0.15).status, Some(429));
        assert_eq!(at(0.15).retry_after.as_deref(), Some("1"));
        assert!(at(0.25).hang);
        assert!(at(0.45).reset);
        let normal = at(0.8);
        assert_eq!(normal.status, None);
        assert!(!normal.hang && !normal.reset);
        // top-level fields are defaults for entries
        assert_eq!(normal.delay, Duration::from_millis(7));

        // statistical check with the real random source
        let mut counts = [0usize; 5];
        let n = 20_000;
        for _ in 0..n {
            let a = s.resolve().unwrap();
            let i = match (a.status, a.hang, a.reset) {
                (Some(500), _, _) => 0,
                (Some(429), _, _) => 1,
                (_, true, _) => 2,
                (_, _, true) => 3,
                _ => 4,
            };
            counts[i] += 1;
        }
        let expect = [0.1, 0.1, 0.2, 0.2, 0.4];
        for (c, e) in counts.iter().zip(expect) {
            let f = *c as f64 / n as f64;
            assert!((f - e).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn pick_edges() {
        let mix = vec![
            FaultSpec { weight: Some(0.0), status: Some(1), ..Default::default() },
            FaultSpec { weight: Some(1.0), status: Some(2), ..Default::default() },
        ];
        assert_eq!(pick(&mix, 0.0).unwrap().status, Some(2));
        assert_eq!(pick(&mix, 0.999_999).unwrap().status, Some(2));
        assert_eq!(pick(&mix, 1.0).unwrap().status, Some(2));
    }
}
