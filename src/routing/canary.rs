//! Canary rollback: a member marked `canary` is compared with the other
//! members of its pool over a sliding window of attempts; once it has had
//! `min_requests` in the window and its error rate exceeds theirs by more
//! than `max_error_rate`, it is rolled back (its weight becomes 0) until the
//! configuration changes. The window is time buckets, so it can live in
//! shared data as a few bytes.

use crate::config::CanaryPolicy;

/// The window: `BUCKETS` buckets of `BUCKET_S` seconds.
pub const BUCKETS: usize = 6;
pub const BUCKET_S: u64 = 10;

/// Attempts and errors of one side (the canary or the others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u32,
    pub errors: u32,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            f64::from(self.errors) / f64::from(self.requests)
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Which `BUCKET_S` period of time the bucket counts (seconds / BUCKET_S).
    period: u64,
    canary: Tally,
    others: Tally,
}

/// One canary member's window and verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryWindow {
    buckets: [Bucket; BUCKETS],
    pub rolled_back: bool,
}

/// Encoded size: per bucket the period and four counts, then the verdict.
const ENCODED_LEN: usize = BUCKETS * 24 + 1;

impl CanaryWindow {
    /// Counts one attempt that ended at `now_s`. Returns true when this
    /// attempt rolls the canary back (once).
    pub fn record(&mut self, policy: &CanaryPolicy, now_s: u64, canary: bool, failed: bool) -> bool {
        let period = now_s / BUCKET_S;
        let Some(bucket) = self.buckets.get_mut((period % BUCKETS as u64) as usize) else { return false };
        if bucket.period != period {
            *bucket = Bucket { period, ..Bucket::default() };
        }
        let side = if canary { &mut bucket.canary } else { &mut bucket.others };
        side.add(Tally { requests: 1, errors: u32::from(failed) });
        if self.rolled_back || !should_roll_back(policy, self.totals(now_s)) {
            return false;
        }
        self.rolled_back = true;
        true
    }

    /// (canary, others) over the buckets still inside the window at `now_s`.
    pub fn totals(&self, now_s: u64) -> (Tally, Tally) {
        let period = now_s / BUCKET_S;
        let mut totals = (Tally::default(), Tally::default());
        for b in self.buckets.iter().filter(|b| b.period + (BUCKETS as u64) > period && b.period <= period) {
            totals.0.add(b.canary);
            totals.1.add(b.others);
        }
        totals
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        for b in &self.buckets {
            out.extend_from_slice(&b.period.to_le_bytes());
            for n in [b.canary.requests, b.canary.errors, b.others.requests, b.others.errors] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        out.push(u8::from(self.rolled_back));
        out
    }

    /// `None` for bytes that are not an encoded window.
    pub fn decode(bytes: &[u8]) -> Option<CanaryWindow> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let mut window = CanaryWindow { rolled_back: bytes.last() == Some(&1), ..CanaryWindow::default() };
        for (i, b) in window.buckets.iter_mut().enumerate() {
            let at = i * 24;
            b.period = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
            b.canary = Tally { requests: u32_at(at + 8)?, errors: u32_at(at + 12)? };
            b.others = Tally { requests: u32_at(at + 16)?, errors: u32_at(at + 20)? };
        }
        Some(window)
    }
}

/// The rollback decision: enough canary attempts, and an error rate above
/// the other members' by more than the policy allows.
pub fn should_roll_back(policy: &CanaryPolicy, (canary, others): (Tally, Tally)) -> bool {
    canary.requests >= policy.min_requests && canary.error_rate() - others.error_rate() > policy.max_error_rate
}

#[cfg(test)]
mod tests {

    use super::*;

    const POLICY: CanaryPolicy = CanaryPolicy { max_error_rate: 0.2, min_requests: 50 };

    /// `requests` attempts of which `errors` fail, spread evenly.
    fn run(window: &mut CanaryWindow, now_s: u64, canary: bool, requests: u32, errors: u32) -> bool {
        let mut rolled = false;
        for i in 0..requests {
            let failed = (i + 1) * errors / requests > i * errors / requests;
            rolled |= window.record(&POLICY, now_s, canary, failed);
        }
        rolled
    }

    #[test]
    fn canary_failing_much_more_than_the_others_is_rolled_back_once_it_has_min_requests() {
        let mut w = CanaryWindow::default();
        run(&mut w, 100, false, 100, 5);
        // 49 canary attempts, half failed: not judged yet.
        assert!(!run(&mut w, 100, true, 49, 25));
        assert!(!w.rolled_back);
        // The 50th: 26/50 = 0.52 against 0.05, beyond 0.2.
        assert!(run(&mut w, 100, true, 1, 1));
        assert!(w.rolled_back);
        // Reported once.
        assert!(!run(&mut w, 101, true, 10, 10));
    }

    #[test]
    fn canary_within_the_allowed_margin_stays() {
        let mut w = CanaryWindow::default();
        run(&mut w, 100, false, 100, 10);
        // 0.28 against 0.10: a margin of 0.18, within 0.2.
        assert!(!run(&mut w, 100, true, 100, 28));
        assert!(!w.rolled_back);
    }

    #[test]
    fn the_others_failing_as_much_keeps_the_canary() {
        let mut w = CanaryWindow::default();
        run(&mut w, 100, false, 100, 60);
        assert!(!run(&mut w, 100, true, 100, 70));
    }

    #[test]
    fn attempts_older_than_the_window_no_longer_count() {
        let mut w = CanaryWindow::default();
        run(&mut w, 100, true, 40, 40);
        assert_eq!(w.totals(100).0, Tally { requests: 40, errors: 40 });
        assert_eq!(w.totals(100 + BUCKET_S * BUCKETS as u64).0, Tally::default());
        // 40 old failures are forgotten: 20 fresh clean ones and 30 failures reach 50, 0.6 > 0.2.
        assert!(!run(&mut w, 100 + BUCKET_S * BUCKETS as u64, true, 20, 0));
        assert!(!run(&mut w, 100 + BUCKET_S * BUCKETS as u64, true, 29, 29));
        assert!(run(&mut w, 100 + BUCKET_S * BUCKETS as u64, true, 1, 1));
    }

    #[test]
    fn window_round_trips_through_bytes() {
        let mut w = CanaryWindow::default();
        run(&mut w, 100, true, 7, 3);
        run(&mut w, 125, false, 9, 1);
        w.rolled_back = true;
        let bytes = w.encode();
        assert_eq!(CanaryWindow::decode(&bytes), Some(w));
        assert_eq!(CanaryWindow::decode(&bytes[1..]), None);
    }
}
