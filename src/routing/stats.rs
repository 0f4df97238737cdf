//! Live latency per member for the `lowest_latency` strategy: moving averages
//! of time to first byte (streams) and of milliseconds per output token
//! (other answers). Pure: the host keeps one `LatencyStats` per member in
//! shared data (so every worker sees it) and feeds it each finished attempt.

use super::select::LatencyKind;

/// Weight of a new sample. 0.2 forgets a change within a few dozen requests
/// (after 20 samples an old level keeps about 1% of its weight).
pub const EWMA_ALPHA: f64 = 0.2;

const ENCODED_LEN: usize = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyStats {
    pub first_byte_ms: Option<f64>,
    pub per_token_ms: Option<f64>,
}

impl LatencyStats {
    pub fn get(&self, kind: LatencyKind) -> Option<f64> {
        match kind {
            LatencyKind::FirstByte => self.first_byte_ms,
            LatencyKind::PerOutputToken => self.per_token_ms,
        }
    }

    /// Adds one measurement; negative or non-finite samples are ignored.
    pub fn record(&mut self, kind: LatencyKind, sample_ms: f64) {
        if !(sample_ms.is_finite() && sample_ms >= 0.0) {
            return;
        }
        let slot = match kind {
            LatencyKind::FirstByte => &mut self.first_byte_ms,
            LatencyKind::PerOutputToken => &mut self.per_token_ms,
        };
        *slot = Some(match *slot {
            None => sample_ms,
            Some(avg) => avg + EWMA_ALPHA * (sample_ms - avg),
        });
    }

    /// Little-endian f64 pair; NaN stands for "no data".
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.first_byte_ms.unwrap_or(f64::NAN).to_le_bytes());
        b.copy_from_slice(&self.per_token_ms.unwrap_or(f64::NAN).to_le_bytes());
        out
    }

    /// Decodes a stored entry; anything malformed reads as "no data".
    pub fn decode(bytes: &[u8]) -> LatencyStats {
        let at = |i: usize| {
            let v = f64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?);
            (v.is_finite() && v >= 0.0).then_some(v)
        };
        if bytes.len() != ENCODED_LEN {
            return LatencyStats::default();
        }
        LatencyStats { first_byte_ms: at(0), per_token_ms: at(8) }
    }
}

/// The sample an attempt gives: time to first byte for a stream; for other
/// answers the whole latency per output token (`completion_tokens` from the
/// answer's usage, at least 1, so short answers are not flattered).
pub fn latency_sample(stream: bool, first_byte_ms: u64, total_ms: u64, output_tokens: u32) -> (LatencyKind, f64) {
    if stream {
        (LatencyKind::FirstByte, first_byte_ms as f64)
    } else {
        (LatencyKind::PerOutputToken, total_ms as f64 / f64::from(output_tokens.max(1)))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn first_sample_sets_the_average_then_it_moves_towards_new_ones() {
        let mut s = LatencyStats::default();
        assert_eq!(s.get(LatencyKind::FirstByte), None);
        s.record(LatencyKind::FirstByte, 10.0);
        assert_eq!(s.get(LatencyKind::FirstByte), Some(10.0));
        for _ in 0..30 {
            s.record(LatencyKind::FirstByte, 200.0);
        }
        let avg = s.get(LatencyKind::FirstByte).unwrap();
        assert!(avg > 195.0, "a slowdown shows within a few dozen requests: {avg}");
        assert_eq!(s.get(LatencyKind::PerOutputToken), None, "kinds are separate");
        s.record(LatencyKind::PerOutputToken, f64::NAN);
        s.record(LatencyKind::PerOutputToken, -1.0);
        assert_eq!(s.per_token_ms, None);
    }

    #[test]
    fn encoding_round_trips_and_tolerates_garbage() {
        let s = LatencyStats { first_byte_ms: Some(12.5), per_token_ms: None };
        assert_eq!(LatencyStats::decode(&s.encode()), s);
        assert_eq!(LatencyStats::decode(b"junk"), LatencyStats::default());
    }

    #[test]
    fn samples_by_kind() {
        assert_eq!(latency_sample(true, 120, 3000, 50), (LatencyKind::FirstByte, 120.0));
        assert_eq!(latency_sample(false, 120, 3000, 50), (LatencyKind::PerOutputToken, 60.0));
        assert_eq!(latency_sample(false, 120, 300, 0), (LatencyKind::PerOutputToken, 300.0));
    }
}
