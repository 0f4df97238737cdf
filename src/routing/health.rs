//! Per-member passive health: consecutive failures, ejection with a cooldown
//! that doubles on repeated ejection, and a half-open trial after cooldown.
//! A provider's `Retry-After` is a hold, not an ejection: the member is out
//! exactly until then, and a failure after it counts like any other (the
//! doubling is for failed trials of ejected members only).
//! The host stores one `MemberHealth` per member in shared data (so every
//! worker VM sees it) and updates it with compare-and-swap.

use crate::config::HealthPolicy;

/// Whether a member can take a request now, as seen by the health store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Cooldown over: one trial request may go through (half-open).
    Trial,
    /// Ejected (or a trial is in flight) until the given time, in ms since the epoch.
    Unavailable {
        until_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberHealth {
    pub consecutive_failures: u32,
    /// Ejections in a row without a success in between (drives the doubling).
    pub ejections: u32,
    /// 0 when in rotation; otherwise the end of the current cooldown (ms since epoch).
    pub ejected_until_ms: u64,
    /// While a half-open trial request is in flight, the time it is given up on.
    pub trial_until_ms: u64,
    pub successes: u64,
    pub failures: u64,
    /// The provider's own `Retry-After`: not back before then, whatever a probe sees.
    pub held_until_ms: u64,
}

/// What an update did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected { until_ms: u64 },
    Restored,
}

const ENCODED_LEN: usize = 48;

impl MemberHealth {
    pub fn availability(&self, now_ms: u64) -> Availability {
        if self.ejected_until_ms == 0 {
            Availability::Healthy
        } else if now_ms < self.ejected_until_ms {
            Availability::Unavailable { until_ms: self.ejected_until_ms }
        } else if now_ms < self.trial_until_ms {
            Availability::Unavailable { until_ms: self.trial_until_ms }
        } else {
            Availability::Trial
        }
    }

    /// In rotation with no failure streak: a success changes nothing but the count.
    pub fn is_clean(&self) -> bool {
        self.consecutive_failures == 0 && self.ejected_until_ms == 0
    }

    /// Claims the single half-open trial; false if another request holds it
    /// (or the member is not in the half-open state).
    pub fn begin_trial(&mut self, now_ms: u64, hold_ms: u64) -> bool {
        if self.availability(now_ms) != Availability::Trial {
            return false;
        }
        self.trial_until_ms = now_ms.saturating_add(hold_ms);
        true
    }

    pub fn record_success(&mut self) -> Transition {
        self.successes = self.successes.saturating_add(1);
        self.consecutive_failures = 0;
        if self.ejected_until_ms == 0 {
            return Transition::None;
        }
        self.ejected_until_ms = 0;
        self.trial_until_ms = 0;
        self.held_until_ms = 0;
        self.ejections = 0;
        Transition::Restored
    }

    pub fn record_failure(&mut self, now_ms: u64, policy: &HealthPolicy) -> Transition {
        self.failures = self.failures.saturating_add(1);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.ejected_until_ms != 0 {
            if now_ms < self.ejected_until_ms {
                // A request that started before the ejection: already accounted for.
                return Transition::None;
            }
            if !self.only_held() {
                // The half-open trial failed: back out, for twice as long.
                return self.eject(now_ms, policy);
            }
            // A provider's hold has passed: the member is back in rotation and
            // this failure counts toward an ejection like any other.
            self.ejected_until_ms = 0;
            self.trial_until_ms = 0;
            self.held_until_ms = 0;
        }
        if self.consecutive_failures >= policy.consecutive_failures {
            return self.eject(now_ms, policy);
        }
        Transition::None
    }

    /// Out only because its provider asked (`Retry-After`), not ejected for failures.
    fn only_held(&self) -> bool {
        self.ejections == 0 && self.held_until_ms != 0 && self.held_until_ms >= self.ejected_until_ms
    }

    /// Takes the member out until `until_ms` (a provider's `Retry-After`),
    /// never shortening an ejection already in place.
    pub fn hold_until(&mut self, until_ms: u64) -> Transition {
        if until_ms <= self.ejected_until_ms {
            return Transition::None;
        }
        self.ejected_until_ms = until_ms;
        self.held_until_ms = until_ms;
        self.trial_until_ms = 0;
        Transition::Ejected { until_ms }
    }

    /// A failure whose provider said when to come back (`Retry-After` until
    /// `until_ms`): the member is out until then, not for a cooldown of the
    /// gateway's own, so the wait a client is told is the provider's. The
    /// failure still counts in the streak.
    pub fn record_held_failure(&mut self, now_ms: u64, until_ms: u64, policy: &HealthPolicy) -> Transition {
        if until_ms <= now_ms {
            return self.record_failure(now_ms, policy);
        }
        self.failures = self.failures.saturating_add(1);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if now_ms >= self.ejected_until_ms && !self.only_held() {
            // An ejection (or its trial) that has run out: the provider's time replaces it.
            self.ejected_until_ms = 0;
        }
        self.hold_until(until_ms)
    }

    /// Out now because its provider asked (`Retry-After`), not for failures.
    pub fn held_by_provider(&self, now_ms: u64) -> bool {
        now_ms < self.held_until_ms && self.held_until_ms >= self.ejected_until_ms
    }

    /// When the gateway will next send this member a request, if not now:
    /// the end of its ejection or hold, or (a trial in flight) when that trial
    /// is given up on, at most `trial_recheck_ms` away, since a trial that
    /// succeeds puts the member back at once.
    pub fn next_try_ms(&self, now_ms: u64, trial_recheck_ms: u64) -> Option<u64> {
        match self.availability(now_ms) {
            Availability::Healthy | Availability::Trial => None,
            Availability::Unavailable { until_ms } if until_ms == self.trial_until_ms => {
                Some(until_ms.min(now_ms.saturating_add(trial_recheck_ms)))
            }
            Availability::Unavailable { until_ms } => Some(until_ms),
        }
    }

    /// An active probe's success: restores the member, unless its provider
    /// asked (`Retry-After`) not to be called before a time still to come.
    pub fn record_probe_success(&mut self, now_ms: u64) -> Transition {
        if now_ms < self.held_until_ms {
            return Transition::None;
        }
        self.record_success()
    }

    fn eject(&mut self, now_ms: u64, policy: &HealthPolicy) -> Transition {
        self.ejections = self.ejections.saturating_add(1);
        let doublings = self.ejections.saturating_sub(1).min(32);
        let cooldown = policy.cooldown_ms.saturating_mul(1u64 << doublings).min(policy.max_cooldown_ms);
        self.ejected_until_ms = now_ms.saturating_add(cooldown).max(1);
        self.trial_until_ms = 0;
        self.consecutive_failures = 0;
        Transition::Ejected { until_ms: self.ejected_until_ms }
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let parts: [&[u8]; 7] = [
            &self.consecutive_failures.to_le_bytes(),
            &self.ejections.to_le_bytes(),
            &self.ejected_until_ms.to_le_bytes(),
            &self.trial_until_ms.to_le_bytes(),
            &self.successes.to_le_bytes(),
            &self.failures.to_le_bytes(),
            &self.held_until_ms.to_le_bytes(),
        ];
        let mut at = 0;
        for part in parts {
            if let Some(dst) = out.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
        out
    }

    /// Decodes a stored entry; anything malformed reads as a fresh, healthy member.
    pub fn decode(bytes: &[u8]) -> MemberHealth {
        fn u32_at(b: &[u8], at: usize) -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        }
        fn u64_at(b: &[u8], at: usize) -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        }
        if bytes.len() != ENCODED_LEN {
            return MemberHealth::default();
        }
        (|| {
            Some(MemberHealth {
                consecutive_failures: u32_at(bytes, 0)?,
                ejections: u32_at(bytes, 4)?,
                ejected_until_ms: u64_at(bytes, 8)?,
                trial_until_ms: u64_at(bytes, 16)?,
                successes: u64_at(bytes, 24)?,
                failures: u64_at(bytes, 32)?,
                held_until_ms: u64_at(bytes, 40)?,
            })
        })()
        .unwrap_or_default()
    }
}

/// Parses a `Retry-After` value (delay seconds or an HTTP date) into an
/// absolute time in ms; `None` when unparseable. Capped at one hour so a bogus
/// header cannot take a member out for good.
pub fn retry_after_until_ms(value: &str, now_ms: u64) -> Option<u64> {
    const CAP_MS: u64 = 3_600_000;
    let value = value.trim();
    let delay_ms = if let Ok(seconds) = value.parse::<u64>() {
        seconds.saturating_mul(1000)
    } else if let Some(seconds) = decimal_seconds(value) {
        (seconds * 1000.0) as u64
    } else {
        let at_ms = http_date_ms(value)?;
        at_ms.saturating_sub(now_ms)
    };
    Some(now_ms.saturating_add(delay_ms.min(CAP_MS)))
}

/// A non-negative decimal number of seconds (`1.5`, `+2.`, `.25`, `3e-1`), as
/// `str::parse::<f64>` reads it but without core's correctly-rounding float
/// parser (its tables and code are ~16 KB of the .wasm): up to 15 significant
/// digits and 22 decimal places, one exact division gives the same f64
/// (Clinger's fast path); longer forms are within an ulp. Negative (other than
/// zero), infinite and NaN values are `None`, as before.
fn decimal_seconds(value: &str) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];
    let (negative, rest) = match value.as_bytes().first() {
        Some(b'-') => (true, value.get(1..)?),
        Some(b'+') => (false, value.get(1..)?),
        _ => (false, value),
    };
    let (number, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (rest.get(..at)?, rest.get(at + 1..)?.parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut mantissa = 0u64;
    // Power of ten the mantissa's digits are scaled by; digits past u64 only scale.
    let mut scale: i64 = i64::from(exponent);
    for (i, b) in whole.bytes().chain(fraction.bytes()).enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        let in_fraction = i >= whole.len();
        match mantissa.checked_mul(10).and_then(|m| m.checked_add(u64::from(b - b'0'))) {
            Some(m) => {
                mantissa = m;
                scale -= i64::from(in_fraction);
            }
            None => scale += i64::from(!in_fraction),
        }
    }
    if mantissa == 0 {
        return Some(0.0);
    }
    if negative {
        return None;
    }
    let m = mantissa as f64;
    let seconds = match usize::try_from(scale.unsigned_abs()).ok().and_then(|e| POW10.get(e)) {
        Some(&p) if mantissa < 1 << 53 && scale < 0 => m / p,
        Some(&p) if mantissa < 1 << 53 => m * p,
        _ => m * 10f64.powi(i32::try_from(scale).ok()?),
    };
    seconds.is_finite().then_some(seconds)
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to ms since the epoch.
fn http_date_ms(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()?.checked_mul(86_400)? + h * 3600 + m * 60 + s;
    secs.checked_mul(1000)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy { consecutive_failures: 3, cooldown_ms: 1_000, max_cooldown_ms: 3_000 }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_recovers_via_trial() {
        let p = policy();
        let mut h = MemberHealth::default();
        assert_eq!(h.record_failure(0, &p), Transition::None);
        assert_eq!(h.record_failure(0, &p), Transition::None);
        assert_eq!(h.record_failure(10, &p), Transition::Ejected { until_ms: 1_010 });
        assert_eq!(h.availability(500), Availability::Unavailable { until_ms: 1_010 });
        assert_eq!(h.availability(1_010), Availability::Trial);
        assert!(h.begin_trial(1_010, 200));
        assert!(!h.begin_trial(1_011, 200), "only one trial at a time");
        assert_eq!(h.availability(1_100), Availability::Unavailable { until_ms: 1_210 });
        assert_eq!(h.record_success(), Transition::Restored);
        assert_eq!(h.availability(1_100), Availability::Healthy);
        assert_eq!(h.ejections, 0);
    }

    #[test]
    fn clean_means_no_streak_and_in_rotation() {
        let p = policy();
        let mut h = MemberHealth::default();
        assert!(h.is_clean());
        h.record_failure(0, &p);
        assert!(!h.is_clean());
        h.record_success();
        assert!(h.is_clean());
        h.hold_until(10);
        assert!(!h.is_clean());
    }

    #[test]
    fn success_resets_consecutive_count() {
        let p = policy();
        let mut h = MemberHealth::default();
        h.record_failure(0, &p);
        h.record_failure(0, &p);
        h.record_success();
        assert_eq!(h.record_failure(0, &p), Transition::None);
        assert_eq!(h.successes, 1);
        assert_eq!(h.failures, 3);
    }

    #[test]
    fn failed_trial_doubles_cooldown_up_to_max() {
        let p = policy();
        let mut h = MemberHealth::default();
        for _ in 0..3 {
            h.record_failure(0, &p);
        }
        assert_eq!(h.ejected_until_ms, 1_000);
        assert!(h.begin_trial(1_000, 100));
        assert_eq!(h.record_failure(1_000, &p), Transition::Ejected { until_ms: 3_000 });
        assert!(h.begin_trial(3_000, 100));
        assert_eq!(h.record_failure(3_000, &p), Transition::Ejected { until_ms: 6_000 }, "capped at max");
    }

    #[test]
    fn failures_during_cooldown_do_not_extend_it() {
        let p = policy();
        let mut h = MemberHealth::default();
        for _ in 0..3 {
            h.record_failure(0, &p);
        }
        assert_eq!(h.record_failure(500, &p), Transition::None);
        assert_eq!(h.ejected_until_ms, 1_000);
    }

    #[test]
    fn retry_after_holds_member_and_never_shortens() {
        let mut h = MemberHealth::default();
        assert_eq!(h.hold_until(5_000), Transition::Ejected { until_ms: 5_000 });
        assert_eq!(h.hold_until(4_000), Transition::None);
        assert_eq!(h.availability(4_999), Availability::Unavailable { until_ms: 5_000 });
        assert_eq!(h.availability(5_000), Availability::Trial);
    }

    #[test]
    fn a_passed_retry_after_hold_is_not_an_ejection_for_the_doubling() {
        let p = HealthPolicy { consecutive_failures: 3, cooldown_ms: 5_000, max_cooldown_ms: 300_000 };
        let mut h = MemberHealth::default();
        // 429 with Retry-After: 1 -> out for exactly 1 s.
        assert_eq!(h.record_held_failure(0, 1_000, &p), Transition::Ejected { until_ms: 1_000 });
        assert_eq!(h.availability(999), Availability::Unavailable { until_ms: 1_000 });
        // Later plain failures count in the streak; no cooldown before the third.
        assert_eq!(h.record_failure(10_000, &p), Transition::None);
        assert_eq!(h.availability(10_000), Availability::Healthy);
        assert_eq!(h.record_failure(11_000, &p), Transition::Ejected { until_ms: 16_000 }, "first ejection: cooldown");
        assert!(h.begin_trial(16_000, 100));
        assert_eq!(h.record_failure(16_000, &p), Transition::Ejected { until_ms: 26_000 }, "failed trial: doubled");
    }

    #[test]
    fn a_retry_after_is_the_wait_even_when_it_ends_a_streak() {
        let p = HealthPolicy { consecutive_failures: 3, cooldown_ms: 5_000, max_cooldown_ms: 300_000 };
        let mut h = MemberHealth::default();
        h.record_failure(0, &p);
        h.record_failure(0, &p);
        // The third failure brings a hint of 1 s: out for 1 s, not the 5 s cooldown.
        assert_eq!(h.record_held_failure(100, 1_100, &p), Transition::Ejected { until_ms: 1_100 });
        assert_eq!(h.next_try_ms(100, 1_000), Some(1_100));
        assert!(h.held_by_provider(100) && !h.held_by_provider(1_100));
        // A hint after an ejection ran out replaces it; one during an ejection never shortens it.
        let mut e = MemberHealth::default();
        for _ in 0..3 {
            e.record_failure(0, &p);
        }
        assert_eq!(e.record_held_failure(1_000, 2_000, &p), Transition::None);
        assert_eq!(e.ejected_until_ms, 5_000);
        assert!(!e.held_by_provider(1_000), "ejected for failures, the hint inside the ejection");
        assert_eq!(e.record_held_failure(6_000, 7_000, &p), Transition::Ejected { until_ms: 7_000 });
        // A hint of 0 s is a plain failure.
        let mut z = MemberHealth::default();
        assert_eq!(z.record_held_failure(50, 50, &p), Transition::None);
        assert_eq!(z.consecutive_failures, 1);
    }

    #[test]
    fn next_try_is_the_end_of_the_ejection_or_soon_for_a_trial_in_flight() {
        let p = policy();
        let mut h = MemberHealth::default();
        assert_eq!(h.next_try_ms(0, 1_000), None);
        for _ in 0..3 {
            h.record_failure(0, &p);
        }
        assert_eq!(h.next_try_ms(10, 1_000), Some(1_000));
        assert_eq!(h.next_try_ms(1_000, 1_000), None, "a trial is due");
        assert!(h.begin_trial(1_000, 30_000));
        assert_eq!(h.next_try_ms(1_500, 1_000), Some(2_500));
        assert_eq!(h.next_try_ms(30_500, 1_000), Some(31_000));
    }

    #[test]
    fn encoding_round_trips_and_tolerates_garbage() {
        let h = MemberHealth {
            consecutive_failures: 2,
            ejections: 1,
            ejected_until_ms: u64::MAX - 1,
            trial_until_ms: 7,
            successes: 9,
            failures: 11,
            held_until_ms: 13,
        };
        assert_eq!(MemberHealth::decode(&h.encode()), h);
        assert_eq!(MemberHealth::decode(b"junk"), MemberHealth::default());
    }

    #[test]
    fn decimal_seconds_read_as_str_parse_reads_them() {
        for text in [
            "0",
            "-0",
            "-0.0",
            "1.5",
            ".25",
            "+2.",
            "0.29",
            "1.005",
            "3e-1",
            "2.5E+2",
            "0.001",
            "12.3456789",
            "1e2",
            "3599.9999",
            "0.1234567890123",
            "00001.10000",
        ] {
            let parsed = text.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0);
            assert_eq!(decimal_seconds(text), parsed, "{text}");
        }
        for text in ["", ".", "+", "-", "e5", "1e", "1e5.5", "1.2.3", "inf", "NaN", "-1", "1_0", "1e999"] {
            assert_eq!(decimal_seconds(text), None, "{text}");
        }
    }

    #[test]
    fn retry_after_formats() {
        assert_eq!(retry_after_until_ms("2", 1_000), Some(3_000));
        assert_eq!(retry_after_until_ms(" 1.5 ", 0), Some(1_500));
        assert_eq!(retry_after_until_ms("99999999", 0), Some(3_600_000));
        assert_eq!(retry_after_until_ms("soon", 0), None);
        assert_eq!(retry_after_until_ms("-1", 0), None);
        assert_eq!(retry_after_until_ms("-1.5", 0), None);
        assert_eq!(retry_after_until_ms("1.", 0), Some(1_000));
        assert_eq!(retry_after_until_ms("1.2.3", 0), None);
        assert_eq!(retry_after_until_ms("inf", 0), None);
        assert_eq!(retry_after_until_ms("1e999", 0), None);
        // 1994-11-06T08:49:37Z = 784111777 s
        assert_eq!(retry_after_until_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770_000), Some(784_111_777_000));
        assert_eq!(retry_after_until_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_780_000), Some(784_111_780_000));
    }

    #[test]
    fn probes_do_not_restore_a_member_before_its_retry_after() {
        let policy = HealthPolicy { consecutive_failures: 3, cooldown_ms: 1_000, max_cooldown_ms: 10_000 };
        let mut h = MemberHealth::default();
        h.record_failure(0, &policy);
        assert_eq!(h.hold_until(7_000), Transition::Ejected { until_ms: 7_000 });
        assert_eq!(h.record_probe_success(3_000), Transition::None);
        assert_eq!(h.availability(3_000), Availability::Unavailable { until_ms: 7_000 });
        assert_eq!(h.record_probe_success(7_000), Transition::Restored);
        assert_eq!(MemberHealth::decode(&h.encode()), h);
        // A plain cooldown (no Retry-After) may be ended early by a probe.
        for t in 0..3 {
            h.record_failure(8_000 + t, &policy);
        }
        assert_eq!(h.record_probe_success(8_100), Transition::Restored);
    }
}
