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
    Budget(BudgetShort),
}

/// A budget refusal, with what the 429 says: this request's worst case
/// against what is spent and held, in micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetShort {
    pub retry_after_s: u64,
    pub worst_micro_usd: u64,
    pub spent_micro_usd: u64,
    pub held_micro_usd: u64,
    pub limit_micro_usd: u64,
}

/// Micro-USD as dollars: `$88.00`, `$0.000032`.
fn usd(micro: u64) -> String {
    let (whole, frac) = (micro / 1_000_000, micro % 1_000_000);
    let cents = format!("{frac:06}");
    let digits = cents.trim_end_matches('0');
    format!("${whole}.{:0<2}", digits)
}

impl BudgetShort {
    /// Only what requests in flight hold stands in the way: their end can
    /// make room (this request fits once they have settled, or runs alone).
    pub fn waits_for_in_flight(&self) -> bool {
        let (worst, limit) = (self.worst_micro_usd, self.limit_micro_usd);
        self.held_micro_usd > 0
            && self.spent_micro_usd < limit
            && (worst > limit || self.spent_micro_usd.saturating_add(worst) <= limit)
    }

    /// Why tenant `name` was refused, and what can help.
    pub fn message(&self, name: &str) -> String {
        let (worst, spent, held, limit) =
            (usd(self.worst_micro_usd), usd(self.spent_micro_usd), usd(self.held_micro_usd), usd(self.limit_micro_usd));
        let renews = self.retry_after_s;
        if self.spent_micro_usd >= self.limit_micro_usd {
            format!(
                "Tenant `{name}` has spent its budget for this period ({spent} of {limit}); it renews in {renews} s."
            )
        } else if self.waits_for_in_flight() {
            format!(
                "Tenant `{name}`'s budget cannot hold this request's worst-case cost ({worst}) now: {spent} spent and \
                 {held} held by requests in flight, of {limit}; retry when they end (each gives back what it did not spend)."
            )
        } else {
            format!(
                "This request's worst-case cost ({worst}) does not fit in what is left of tenant `{name}`'s budget \
                 ({spent} spent and {held} held, of {limit}); lower `max_tokens`, or retry in {renews} s when it renews."
            )
        }
    }
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

/// What a tenant spent in the current budget period, and the worst-case
/// costs its requests in flight hold (see `reserve`), in micro-USD.
///
/// Admission keeps `spent + reserved <= limit`; a request ending gives back
/// its reservation and adds its real cost. Reservations outlive the period
/// they were taken in (a request in flight at midnight holds its worst case
/// in the new day too), so the new period's admissions see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub period: u64,
    pub micro_usd: u64,
    pub reserved_micro_usd: u64,
}

/// A budget in micro-USD (whole micro-dollars, rounded down).
pub fn limit_micro_usd(limit_usd: f64) -> u64 {
    let micro = (limit_usd * 1e6).floor();
    if micro.is_finite() && micro > 0.0 {
        micro as u64
    } else {
        0
    }
}

impl Spend {
    const ENCODED_LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        put(&mut out, 0, &self.period.to_le_bytes());
        put(&mut out, 8, &self.micro_usd.to_le_bytes());
        put(&mut out, 16, &self.reserved_micro_usd.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Spend {
        let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        // The layout before reservations (16 bytes) keeps its spend across an upgrade.
        match (u64_at(0), u64_at(8)) {
            (Some(period), Some(micro_usd)) => Spend { period, micro_usd, reserved_micro_usd: u64_at(16).unwrap_or(0) },
            _ => Spend::default(),
        }
    }

    /// This period's spend (a new period starts at 0), with every reservation still held.
    fn at(self, now_s: u64, per: BudgetPeriod) -> Spend {
        let period = period_of(now_s, per);
        if self.period == period {
            self
        } else {
            Spend { period, micro_usd: 0, ..self }
        }
    }

    /// What was spent in the period `now_s` falls in (0 once a new one began).
    pub fn in_period(self, now_s: u64, per: BudgetPeriod) -> u64 {
        self.at(now_s, per).micro_usd
    }

    /// Refuses while the period's spend has reached `limit_usd`.
    pub fn check(self, now_s: u64, per: BudgetPeriod, limit_usd: f64) -> Result<(), Refusal> {
        let s = self.at(now_s, per);
        let limit = limit_micro_usd(limit_usd);
        if s.micro_usd < limit {
            Ok(())
        } else {
            Err(Refusal::Budget(BudgetShort {
                retry_after_s: period_end_s(now_s, per).saturating_sub(now_s).max(1),
                worst_micro_usd: 0,
                spent_micro_usd: s.micro_usd,
                held_micro_usd: s.reserved_micro_usd,
                limit_micro_usd: limit,
            }))
        }
    }

    /// Holds `worst_micro_usd` for one request, or says why not:
    /// - admitted while `spent + reserved + worst <= limit`;
    /// - a request whose worst case exceeds the whole limit could never fit:
    ///   it is admitted alone (nothing else reserved) while `spent < limit`,
    ///   as `tpm` admits a request larger than its limit into an empty window;
    /// - refused otherwise: `Retry-After` is 1 s when what is held by requests
    ///   in flight stands in the way (their end can make room), else the end
    ///   of the period.
    pub fn reserve(
        self,
        now_s: u64,
        per: BudgetPeriod,
        limit_usd: f64,
        worst_micro_usd: u64,
    ) -> Result<Spend, Refusal> {
        let s = self.at(now_s, per);
        let limit = limit_micro_usd(limit_usd);
        let held = s.micro_usd.saturating_add(s.reserved_micro_usd);
        let fits = s.micro_usd < limit && held.saturating_add(worst_micro_usd) <= limit;
        let alone = s.micro_usd < limit && s.reserved_micro_usd == 0 && worst_micro_usd > limit;
        if fits || alone {
            return Ok(Spend { reserved_micro_usd: s.reserved_micro_usd.saturating_add(worst_micro_usd), ..s });
        }
        let mut short = BudgetShort {
            retry_after_s: period_end_s(now_s, per).saturating_sub(now_s).max(1),
            worst_micro_usd,
            spent_micro_usd: s.micro_usd,
            held_micro_usd: s.reserved_micro_usd,
            limit_micro_usd: limit,
        };
        if short.waits_for_in_flight() {
            short.retry_after_s = 1;
        }
        Err(Refusal::Budget(short))
    }

    /// A request ended: its reservation is given back, its real cost counts
    /// in the period it ended in.
    pub fn settle(self, now_s: u64, per: BudgetPeriod, reserved_micro_usd: u64, spent_micro_usd: u64) -> Spend {
        let s = self.at(now_s, per);
        Spend {
            micro_usd: s.micro_usd.saturating_add(spent_micro_usd),
            reserved_micro_usd: s.reserved_micro_usd.saturating_sub(reserved_micro_usd),
            ..s
        }
    }

    pub fn add(self, now_s: u64, per: BudgetPeriod, micro_usd: u64) -> Spend {
        self.settle(now_s, per, 0, micro_usd)
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
    micro_usd(prompt as f64 * input_per_mtok + completion as f64 * output_per_mtok)
}

/// Tokens x USD per million tokens as whole micro-USD (0 when not a positive number).
pub fn micro_usd(micro: f64) -> u64 {
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
    /// The worst-case cost it held against the budget, given back.
    pub budget_reserved_micro_usd: u64,
}

impl TenantState {
    const ENCODED_LEN: usize = Window::ENCODED_LEN + 4 + Spend::ENCODED_LEN;

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

    /// Admits one request reserving `tokens` and `worst_micro_usd` of the
    /// budget, checking the budget, then requests in flight, then this
    /// minute's requests and tokens. All or nothing: a refusal changes nothing.
    pub fn admit(self, tenant: &Tenant, now_s: u64, tokens: u64, worst_micro_usd: u64) -> Result<TenantState, Refusal> {
        let spend = match &tenant.budget {
            Some(budget) => self.spend.reserve(now_s, budget.per, budget.limit_usd, worst_micro_usd)?,
            None => self.spend,
        };
        let in_flight = match tenant.max_parallel {
            Some(max) => admit_parallel(self.in_flight, max)?,
            None => self.in_flight,
        };
        let window = self.window.admit(now_s, tenant.rpm, tenant.tpm, tokens)?;
        Ok(TenantState { window, in_flight, spend })
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
            Some(budget) if end.spend_micro_usd > 0 || end.budget_reserved_micro_usd > 0 => {
                self.spend.settle(now_s, budget.per, end.budget_reserved_micro_usd, end.spend_micro_usd)
            }
            _ => self.spend,
        };
        TenantState { window, in_flight, spend }
    }
}

#[cfg(test)]
mod tests {

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
        let s = TenantState::default().admit(&tenant, now, 300, 0).unwrap();
        assert_eq!((s.in_flight, s.window.requests, s.window.tokens), (1, 1, 300));
        assert_eq!(TenantState::decode(&s.encode()), s);
        // One in flight is the limit: a second is refused before it counts.
        assert_eq!(s.admit(&tenant, now, 300, 0), Err(Refusal::Parallel));
        let end = Settlement {
            parallel_held: true,
            tokens: Some((s.window.start_s, 300, 120)),
            spend_micro_usd: 1_000_000,
            budget_reserved_micro_usd: 0,
        };
        let s = s.settle(&tenant, now + 1, &end);
        assert_eq!((s.in_flight, s.window.tokens, s.spend.micro_usd), (0, 120, 1_000_000));
        // The budget ($1) is spent: refused until the day turns.
        assert!(matches!(s.admit(&tenant, now + 1, 10, 0), Err(Refusal::Budget { .. })));
        let unlimited_spend = Tenant { budget: None, ..limited() };
        let s = s.admit(&unlimited_spend, now + 1, 10, 0).unwrap();
        assert_eq!(
            s.admit(&Tenant { max_parallel: None, ..unlimited_spend }, now + 1, 10, 0),
            Err(Refusal::Requests { retry_after_s: 19 })
        );
        assert_eq!(TenantState::decode(b"short"), TenantState::default());
    }

    /// The `Retry-After` of a budget refusal.
    fn retry<T>(r: Result<T, Refusal>) -> Option<u64> {
        match r {
            Err(Refusal::Budget(b)) => Some(b.retry_after_s),
            _ => None,
        }
    }

    #[test]
    fn budget_refusals_say_what_is_spent_held_and_needed() {
        let s = Spend::default().reserve(NOON, DAY, 100.0, 88_000_000).unwrap();
        let Err(Refusal::Budget(held)) = s.reserve(NOON, DAY, 100.0, 22_000_000) else { panic!() };
        assert_eq!(
            held.message("t"),
            "Tenant `t`'s budget cannot hold this request's worst-case cost ($22.00) now: $0.00 spent and $88.00 \
             held by requests in flight, of $100.00; retry when they end (each gives back what it did not spend)."
        );
        let s = s.settle(NOON, DAY, 88_000_000, 88_000_000);
        let Err(Refusal::Budget(short)) = s.reserve(NOON, DAY, 100.0, 22_000_000) else { panic!() };
        assert!(short.message("t").starts_with("This request's worst-case cost ($22.00) does not fit"), "{short:?}");
        let s = s.settle(NOON, DAY, 0, 12_000_032);
        let Err(Refusal::Budget(spent)) = s.reserve(NOON, DAY, 100.0, 1) else { panic!() };
        assert_eq!(
            spent.message("t"),
            "Tenant `t` has spent its budget for this period ($100.000032 of $100.00); it renews in 43200 s."
        );
        assert_eq!(usd(10), "$0.00001");
    }

    const DAY: BudgetPeriod = BudgetPeriod::Day;
    /// 2026-12-07T12:00:00Z
    const NOON: u64 = 1_796_644_800;

    #[test]
    fn a_budget_reserves_each_requests_worst_case_before_it_goes_upstream() {
        // $100 a day, 50 concurrent requests of $22 each: 4 fit ($88), the 5th would make $110.
        let mut s = Spend::default();
        let mut admitted = 0;
        let mut refusals = Vec::new();
        for _ in 0..50 {
            match s.reserve(NOON, DAY, 100.0, 22_000_000) {
                Ok(next) => (s, admitted) = (next, admitted + 1),
                Err(r) => refusals.push(r),
            }
        }
        assert_eq!((admitted, s.micro_usd, s.reserved_micro_usd), (4, 0, 88_000_000));
        // What stands in the way ends by itself (a request in flight may cost less): retry soon.
        assert!(refusals.iter().all(|r| matches!(r, Refusal::Budget(b) if b.retry_after_s == 1)));
        // Each ends costing exactly its reservation: $88 spent, and $22 no longer fits today.
        for _ in 0..4 {
            s = s.settle(NOON + 5, DAY, 22_000_000, 22_000_000);
        }
        assert_eq!((s.micro_usd, s.reserved_micro_usd), (88_000_000, 0));
        assert_eq!(retry(s.reserve(NOON + 5, DAY, 100.0, 22_000_000)), Some(43_195));
        // A request of $12 or less still fits, exactly.
        assert!(s.reserve(NOON + 5, DAY, 100.0, 12_000_000).is_ok());
        assert!(s.reserve(NOON + 5, DAY, 100.0, 12_000_001).is_err());
        assert_eq!(Spend::decode(&s.encode()), s);
    }

    #[test]
    fn a_released_reservation_lets_the_next_request_in() {
        let s = Spend::default().reserve(NOON, DAY, 30.0, 22_000_000).unwrap();
        assert_eq!(retry(s.reserve(NOON, DAY, 30.0, 22_000_000)), Some(1));
        // Failed, aborted or refused upstream: nothing spent, all given back.
        let s = s.settle(NOON + 1, DAY, 22_000_000, 0);
        assert_eq!(s, Spend { period: period_of(NOON, DAY), micro_usd: 0, reserved_micro_usd: 0 });
        // Answered for $4: $26 left, the next $22 fits.
        let s = s.reserve(NOON + 1, DAY, 30.0, 22_000_000).unwrap().settle(NOON + 2, DAY, 22_000_000, 4_000_000);
        assert!(s.reserve(NOON + 2, DAY, 30.0, 22_000_000).is_ok());
    }

    #[test]
    fn a_request_dearer_than_the_whole_budget_runs_alone() {
        // $0.05 a day; each request's worst case ($41) exceeds it: one at a time, while under the limit.
        let s = Spend::default().reserve(NOON, DAY, 0.05, 41_000_000).unwrap();
        assert_eq!(retry(s.reserve(NOON, DAY, 0.05, 41_000_000)), Some(1));
        assert_eq!(retry(s.reserve(NOON, DAY, 0.05, 1)), Some(1));
        // It really cost $0.03: the next one runs (alone), and ends past the limit.
        let s = s.settle(NOON + 1, DAY, 41_000_000, 30_000);
        let s = s.reserve(NOON + 1, DAY, 0.05, 41_000_000).unwrap().settle(NOON + 2, DAY, 41_000_000, 30_000);
        assert_eq!(s.micro_usd, 60_000);
        // Spent: refused until the day turns, whatever the size.
        assert_eq!(retry(s.reserve(NOON + 2, DAY, 0.05, 41_000_000)), Some(43_198));
        assert_eq!(retry(s.reserve(NOON + 2, DAY, 0.05, 0)), Some(43_198));
    }

    #[test]
    fn reservations_outlive_the_period_they_were_taken_in() {
        let before_midnight = NOON + 43_199;
        let s = Spend::default().reserve(before_midnight, DAY, 100.0, 60_000_000).unwrap();
        // The new day starts with nothing spent, but the request in flight still holds $60.
        let tomorrow = before_midnight + 2;
        assert_eq!(retry(s.reserve(tomorrow, DAY, 100.0, 50_000_000)), Some(1));
        let s = s.settle(tomorrow, DAY, 60_000_000, 10_000_000);
        assert_eq!((s.period, s.micro_usd, s.reserved_micro_usd), (period_of(tomorrow, DAY), 10_000_000, 0));
        // The layout before reservations keeps its spend; garbage reads as nothing spent.
        let old = [7u64.to_le_bytes(), 5_000u64.to_le_bytes()].concat();
        assert_eq!(Spend::decode(&old), Spend { period: 7, micro_usd: 5_000, reserved_micro_usd: 0 });
        assert_eq!(Spend::decode(&[1; 9]), Spend::default());
        let old_state = [&[0u8; 24][..], &old].concat();
        assert_eq!(TenantState::decode(&old_state).spend.micro_usd, 5_000);
        assert_eq!(limit_micro_usd(f64::NAN), 0);
        assert_eq!(limit_micro_usd(100.0), 100_000_000);
    }

    #[test]
    fn the_tenant_state_reserves_and_gives_back_the_budget_with_its_other_limits() {
        let tenant = Tenant { rpm: None, tpm: None, max_parallel: None, ..limited() };
        let s = TenantState::default().admit(&tenant, NOON, 10, 600_000).unwrap();
        assert_eq!(s.spend.reserved_micro_usd, 600_000);
        // $1: a second $0.60 does not fit; a refusal changes nothing.
        assert_eq!(retry(s.admit(&tenant, NOON, 10, 600_000)), Some(1));
        let end = Settlement { budget_reserved_micro_usd: 600_000, spend_micro_usd: 250_000, ..Settlement::default() };
        let s = s.settle(&tenant, NOON + 1, &end);
        assert_eq!((s.spend.micro_usd, s.spend.reserved_micro_usd), (250_000, 0));
        assert!(s.admit(&tenant, NOON + 1, 10, 600_000).is_ok());
        assert_eq!(TenantState::decode(&s.encode()), s);
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
        assert_eq!(retry(spend.check(now, BudgetPeriod::Day, 50.0)), Some(3_600));
        assert!(spend.check(now + 3_600, BudgetPeriod::Day, 50.0).is_ok());
        let month = Spend::default().add(now, BudgetPeriod::Month, 10_000_000);
        assert_eq!(retry(month.check(now, BudgetPeriod::Month, 10.0)), Some(3_600));
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
