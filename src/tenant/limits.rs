//! Tenant limits as plain state transitions; the host keeps each state in
//! shared data and applies these under compare-and-swap, so concurrent
//! requests on every worker see one count and a limit never over-admits.
//!
//! - `rpm`/`tpm`: a fixed 60 s window aligned to the minute. Tokens are
//!   reserved before the call (prompt estimate + expected output) and the
//!   reservation is replaced by the real usage when the answer ends.
//! - `max_parallel`: requests in flight.
//! - budgets: spend in micro-USD per UTC day or month.

use super::{BudgetPeriod, Tenant};

pub const WINDOW_S: u64 = 60;

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// A tenant's request and token counts in the current minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub start_s: u64,
    pub requests: u32,
    pub tokens: u64,
}

/// Why a request was refused, and when trying again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Requests { retry_after_s: u64 },
    Tokens { retry_after_s: u64 },
    Parallel,
    Budget { retry_after_s: u64 },
}

impl Window {
    const ENCODED_LEN: usize = 20;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        put(&mut out, 0, &self.start_s.to_le_bytes());
        put(&mut out, 8, &self.requests.to_le_bytes());
        put(&mut out, 12, &self.tokens.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Window {
        let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let u32_at = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        match (u64_at(0), u32_at(8), u64_at(12)) {
            (Some(start_s), Some(requests), Some(tokens)) => Window { start_s, requests, tokens },
            _ => Window::default(),
        }
    }

    /// This window, or a fresh one when the minute has turned.
    pub fn at(self, now_s: u64) -> Window {
        let start_s = now_s - now_s % WINDOW_S;
        if self.start_s == start_s {
            self
        } else {
            Window { start_s, requests: 0, tokens: 0 }
        }
    }

    pub fn reset_in_s(&self, now_s: u64) -> u64 {
        (self.start_s + WINDOW_S).saturating_sub(now_s).max(1)
    }

    /// Counts one request reserving `tokens`, or says why not.
    pub fn admit(self, now_s: u64, rpm: Option<u32>, tpm: Option<u64>, tokens: u64) -> Result<Window, Refusal> {
        let w = self.at(now_s);
        let retry_after_s = w.reset_in_s(now_s);
        if rpm.is_some_and(|limit| w.requests >= limit) {
            return Err(Refusal::Requests { retry_after_s });
        }
        // A request larger than the whole limit is still admitted into an empty
        // window: refusing it would refuse it forever.
        if tpm.is_some_and(|limit| w.tokens > 0 && w.tokens.saturating_add(tokens) > limit) {
            return Err(Refusal::Tokens { retry_after_s });
        }
        Ok(Window { requests: w.requests.saturating_add(1), tokens: w.tokens.saturating_add(tokens), ..w })
    }

    /// Replaces a reservation made in the window starting `reserved_in_s` by
    /// the real usage; a window that has passed keeps what it had.
    pub fn correct(self, now_s: u64, reserved_in_s: u64, reserved: u64, actual: u64) -> Window {
        let w = self.at(now_s);
        if w.start_s != reserved_in_s {
            return w;
        }
        Window { tokens: w.tokens.saturating_sub(reserved).saturating_add(actual), ..w }
    }
}

/// What a tenant spent in the current budget period, in micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub period: u64,
    pub micro_usd: u64,
}

impl Spend {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        put(&mut out, 0, &self.period.to_le_bytes());
        put(&mut out, 8, &self.micro_usd.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Spend {
        let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        match (u64_at(0), u64_at(8)) {
            (Some(period), Some(micro_usd)) => Spend { period, micro_usd },
            _ => Spend::default(),
        }
    }

    fn at(self, now_s: u64, per: BudgetPeriod) -> Spend {
        let period = period_of(now_s, per);
        if self.period == period {
            self
        } else {
            Spend { period, micro_usd: 0 }
        }
    }

    /// What was spent in the period `now_s` falls in (0 once a new one began).
    pub fn in_period(self, now_s: u64, per: BudgetPeriod) -> u64 {
        self.at(now_s, per).micro_usd
    }

    /// Refuses while the period's spend has reached `limit_usd`.
    pub fn check(self, now_s: u64, per: BudgetPeriod, limit_usd: f64) -> Result<(), Refusal> {
        if (self.at(now_s, per).micro_usd as f64) < limit_usd * 1e6 {
            Ok(())
        } else {
            Err(Refusal::Budget { retry_after_s: period_end_s(now_s, per).saturating_sub(now_s).max(1) })
        }
    }

    pub fn add(self, now_s: u64, per: BudgetPeriod, micro_usd: u64) -> Spend {
        let s = self.at(now_s, per);
        Spend { micro_usd: s.micro_usd.saturating_add(micro_usd), ..s }
    }
}

const DAY_S: u64 = 86_400;

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31); Howard Hinnant's civil_from_days.
pub(crate) fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, doy - (153 * mp + 2) / 5 + 1)
}

/// (year, month) -> days since 1970-01-01 of its first day; days_from_civil.
fn first_day(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * m + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// Which UTC day or month `now_s` falls in.
pub fn period_of(now_s: u64, per: BudgetPeriod) -> u64 {
    match per {
        BudgetPeriod::Day => now_s / DAY_S,
        BudgetPeriod::Month => {
            let (year, month, _) = civil(now_s / DAY_S);
            year * 12 + month
        }
    }
}

/// When the period containing `now_s` ends (s since the epoch).
pub fn period_end_s(now_s: u64, per: BudgetPeriod) -> u64 {
    match per {
        BudgetPeriod::Day => (now_s / DAY_S + 1) * DAY_S,
        BudgetPeriod::Month => {
            let (year, month, _) = civil(now_s / DAY_S);
            let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            first_day(y, m) * DAY_S
        }
    }
}

/// What `prompt` and `completion` tokens cost at per-million-token prices, in micro-USD.
pub fn cost_micro_usd(prompt: u64, completion: u64, input_per_mtok: f64, output_per_mtok: f64) -> u64 {
    let micro = prompt as f64 * input_per_mtok + completion as f64 * output_per_mtok;
    if micro.is_finite() && micro > 0.0 {
        micro.round() as u64
    } else {
        0
    }
}

/// Requests in flight: admits one more while under `max`.
pub fn admit_parallel(in_flight: u32, max: u32) -> Result<u32, Refusal> {
    if in_flight >= max {
        Err(Refusal::Parallel)
    } else {
        Ok(in_flight + 1)
    }
}

/// OpenAI's rate-limit headers for a tenant's answer, from its window after
/// this request was counted: limit, remaining and reset (e.g. `42s`).
pub fn rate_headers(rpm: Option<u32>, tpm: Option<u64>, window: &Window, now_s: u64) -> Vec<(&'static str, String)> {
    let reset = format!("{}s", window.reset_in_s(now_s));
    let mut out = Vec::with_capacity(6);
    if let Some(limit) = rpm {
        out.push(("x-ratelimit-limit-requests", limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", limit.saturating_sub(window.requests).to_string()));
        out.push(("x-ratelimit-reset-requests", reset.clone()));
    }
    if let Some(limit) = tpm {
        out.push(("x-ratelimit-limit-tokens", limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", limit.saturating_sub(window.tokens).to_string()));
        out.push(("x-ratelimit-reset-tokens", reset));
    }
    out
}

/// Everything counted for one tenant, in one shared-data entry: admitting a
/// request is one read and one compare-and-swap, and so is settling it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantState {
    pub window: Window,
    pub in_flight: u32,
    pub spend: Spend,
}

/// How a request that was admitted ended, for `TenantState::settle`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settlement {
    /// It held a parallel slot.
    pub parallel_held: bool,
    /// Its token reservation (window start, tokens reserved) and the real usage.
    pub tokens: Option<(u64, u64, u64)>,
    /// Its cost in micro-USD, for the budget.
    pub spend_micro_usd: u64,
}

impl TenantState {
    const ENCODED_LEN: usize = Window::ENCODED_LEN + 4 + 16;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        put(&mut out, 0, &self.window.encode());
        put(&mut out, Window::ENCODED_LEN, &self.in_flight.to_le_bytes());
        put(&mut out, Window::ENCODED_LEN + 4, &self.spend.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> TenantState {
        let at = Window::ENCODED_LEN;
        match (bytes.get(at..at + 4).and_then(|b| b.try_into().ok()), bytes.get(at + 4..)) {
            (Some(in_flight), Some(spend)) => TenantState {
                window: Window::decode(bytes),
                in_flight: u32::from_le_bytes(in_flight),
                spend: Spend::decode(spend),
            },
            _ => TenantState::default(),
        }
    }

    /// Admits one request reserving `tokens`, checking the budget, then
    /// requests in flight, then this minute's requests and tokens.
    pub fn admit(self, tenant: &Tenant, now_s: u64, tokens: u64) -> Result<TenantState, Refusal> {
        if let Some(budget) = &tenant.budget {
            self.spend.check(now_s, budget.per, budget.limit_usd)?;
        }
        let in_flight = match tenant.max_parallel {
            Some(max) => admit_parallel(self.in_flight, max)?,
            None => self.in_flight,
        };
        let window = self.window.admit(now_s, tenant.rpm, tenant.tpm, tokens)?;
        Ok(TenantState { window, in_flight, spend: self.spend })
    }

    /// A request ended: its slot is free, its reservation becomes its usage,
    /// its cost counts against the budget.
    pub fn settle(self, tenant: &Tenant, now_s: u64, end: &Settlement) -> TenantState {
        let in_flight = if end.parallel_held { self.in_flight.saturating_sub(1) } else { self.in_flight };
        let window = match end.tokens {
            Some((reserved_in_s, reserved, actual)) => self.window.correct(now_s, reserved_in_s, reserved, actual),
            None => self.window,
        };
        let spend = match &tenant.budget {
            Some(budget) if end.spend_micro_usd > 0 => self.spend.add(now_s, budget.per, end.spend_micro_usd),
            _ => self.spend,
        };
        TenantState { window, in_flight, spend }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn limited() -> Tenant {
        Tenant {
            name: "t".into(),
            key_hashes: Vec::new(),
            allow: None,
            rpm: Some(2),
            tpm: Some(1_000),
            max_parallel: Some(1),
            budget: Some(crate::tenant::Budget { per: BudgetPeriod::Day, limit_usd: 1.0 }),
        }
    }

    #[test]
    fn one_state_admits_checks_every_limit_and_settles() {
        let tenant = limited();
        let now = 1_700_000_020;
        let s = TenantState::default().admit(&tenant, now, 300).unwrap();
        assert_eq!((s.in_flight, s.window.requests, s.window.tokens), (1, 1, 300));
        assert_eq!(TenantState::decode(&s.encode()), s);
        // One in flight is the limit: a second is refused before it counts.
        assert_eq!(s.admit(&tenant, now, 300), Err(Refusal::Parallel));
        let end =
            Settlement { parallel_held: true, tokens: Some((s.window.start_s, 300, 120)), spend_micro_usd: 1_000_000 };
        let s = s.settle(&tenant, now + 1, &end);
        assert_eq!((s.in_flight, s.window.tokens, s.spend.micro_usd), (0, 120, 1_000_000));
        // The budget ($1) is spent: refused until the day turns.
        assert!(matches!(s.admit(&tenant, now + 1, 10), Err(Refusal::Budget { .. })));
        let unlimited_spend = Tenant { budget: None, ..limited() };
        let s = s.admit(&unlimited_spend, now + 1, 10).unwrap();
        assert_eq!(
            s.admit(&Tenant { max_parallel: None, ..unlimited_spend }, now + 1, 10),
            Err(Refusal::Requests { retry_after_s: 19 })
        );
        assert_eq!(TenantState::decode(b"short"), TenantState::default());
    }

    #[test]
    fn rpm_admits_exactly_the_limit_per_minute() {
        let mut w = Window::default();
        let now = 1_699_999_990; // 10 s into a minute
        for _ in 0..3 {
            w = w.admit(now, Some(3), None, 0).unwrap();
        }
        assert_eq!(w.admit(now, Some(3), None, 0), Err(Refusal::Requests { retry_after_s: 50 }));
        // The next minute starts empty.
        assert_eq!(w.admit(now + 50, Some(3), None, 0).unwrap().requests, 1);
        assert_eq!(Window::decode(&w.encode()), w);
    }

    #[test]
    fn tokens_are_reserved_then_corrected() {
        let now = 1_700_000_020; // 40 s into a minute
        let w = Window::default().admit(now, None, Some(1_000), 600).unwrap();
        assert_eq!(w.admit(now, None, Some(1_000), 600), Err(Refusal::Tokens { retry_after_s: 20 }));
        // The answer used 100 tokens, not 600: room again.
        let w = w.correct(now + 1, w.start_s, 600, 100);
        assert_eq!(w.tokens, 100);
        assert!(w.admit(now + 1, None, Some(1_000), 600).is_ok());
        // A correction after the minute turned leaves the new window alone.
        assert_eq!(w.correct(now + 30, w.start_s, 600, 5_000).tokens, 0);
        // A single request bigger than the limit is admitted into an empty window.
        assert!(Window::default().admit(now, None, Some(10), 50).is_ok());
    }

    #[test]
    fn budgets_turn_with_the_utc_day_and_month() {
        // 2026-12-31T23:00:00Z
        let now = 1_798_758_000;
        let spend = Spend::default().add(now, BudgetPeriod::Day, 50_000_000);
        assert_eq!(spend.check(now, BudgetPeriod::Day, 50.0), Err(Refusal::Budget { retry_after_s: 3_600 }));
        assert!(spend.check(now + 3_600, BudgetPeriod::Day, 50.0).is_ok());
        let month = Spend::default().add(now, BudgetPeriod::Month, 10_000_000);
        assert_eq!(month.check(now, BudgetPeriod::Month, 10.0), Err(Refusal::Budget { retry_after_s: 3_600 }));
        assert_eq!(period_end_s(1_771_891_200, BudgetPeriod::Month), 1_772_323_200); // 2026-02-24 -> 2026-03-01
        assert_eq!(Spend::decode(&month.encode()), month);
    }

    #[test]
    fn openai_rate_limit_headers() {
        let w = Window { start_s: 1_699_999_980, requests: 2, tokens: 300 };
        let h = rate_headers(Some(10), Some(1_000), &w, 1_699_999_990);
        assert_eq!(
            h,
            vec![
                ("x-ratelimit-limit-requests", "10".to_string()),
                ("x-ratelimit-remaining-requests", "8".to_string()),
                ("x-ratelimit-reset-requests", "50s".to_string()),
                ("x-ratelimit-limit-tokens", "1000".to_string()),
                ("x-ratelimit-remaining-tokens", "700".to_string()),
                ("x-ratelimit-reset-tokens", "50s".to_string()),
            ]
        );
        assert!(rate_headers(None, None, &w, 0).is_empty());
    }

    #[test]
    fn cost_from_usage_and_prices() {
        // 1,000 prompt tokens at $2.50/M and 200 completion tokens at $10/M: $0.0045.
        assert_eq!(cost_micro_usd(1_000, 200, 2.5, 10.0), 4_500);
        assert_eq!(cost_micro_usd(5, 5, 0.0, 0.0), 0);
    }

    #[test]
    fn parallel_limit() {
        assert_eq!(admit_parallel(1, 2), Ok(2));
        assert_eq!(admit_parallel(2, 2), Err(Refusal::Parallel));
    }
}
