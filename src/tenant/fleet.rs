//! Fleet mode's allowance slices (docs/fleet.md): a proxy takes a slice of
//! a tenant's allowance from the state service (`state-service/`), admits
//! from it locally while it lasts, and gives back what it did not use when
//! it comes for the next one. This module is the slice's arithmetic and the
//! plain-text protocol (a query string, a one-line answer). No proxy-wasm calls.

use crate::encoding::hex;

use super::limits::{limit_micro_usd, period_of, Refusal, Settlement, Spend, Window};
use super::Tenant;

/// This proxy's slice of one tenant's allowance (all its workers share it).
/// Every count the fleet has given it is either here, held by its requests
/// in flight, or spent and not told yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// Who holds it in Redis (random, per proxy process).
    pub holder: u64,
    /// The minute its requests and tokens belong to (Redis's clock).
    pub window_start_s: u64,
    /// Admitting from it stops then (this proxy's clock): the minute's end,
    /// or half the holder's lease, whichever comes first.
    pub until_ms: u64,
    pub requests: u64,
    pub tokens: u64,
    /// Tokens used over their reservation, to be added to the minute.
    pub tokens_over: u64,
    /// The minute's counts in Redis at the last grant (slices included).
    pub fleet_requests: u64,
    pub fleet_tokens: u64,
    pub slots: u64,
    pub in_flight: u64,
    /// The budget period its micro-USD belong to.
    pub period: u64,
    pub micro_usd: u64,
    /// Spent by ended requests, not told yet (still held in Redis).
    pub unsettled_micro_usd: u64,
}

/// What a proxy gives back to the fleet: unused parts of its slice, and what it spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Back {
    pub window_start_s: u64,
    pub requests: u64,
    pub tokens: u64,
    pub tokens_over: u64,
    pub slots: u64,
    pub micro_usd: u64,
    pub spent_micro_usd: u64,
}

/// A slice granted: the window's counts after it, and what it holds
/// (each including the asking request's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant {
    pub fleet_requests: u64,
    pub fleet_tokens: u64,
    pub window_start_s: u64,
    /// Redis's time (ms) when it granted.
    pub now_ms: u64,
    pub requests: u64,
    pub tokens: u64,
    pub slots: u64,
    pub micro_usd: u64,
}

impl Slice {
    fn fields(&mut self) -> [&mut u64; 13] {
        [
            &mut self.holder,
            &mut self.window_start_s,
            &mut self.until_ms,
            &mut self.requests,
            &mut self.tokens,
            &mut self.tokens_over,
            &mut self.fleet_requests,
            &mut self.fleet_tokens,
            &mut self.slots,
            &mut self.in_flight,
            &mut self.period,
            &mut self.micro_usd,
            &mut self.unsettled_micro_usd,
        ]
    }

    pub fn encode(mut self) -> Vec<u8> {
        self.fields().iter().flat_map(|f| f.to_le_bytes()).collect()
    }

    /// A stored slice; an empty one for anything else.
    pub fn decode(bytes: &[u8]) -> Slice {
        let mut s = Slice::default();
        if bytes.len() == 13 * 8 {
            for (field, b) in s.fields().into_iter().zip(bytes.chunks_exact(8)) {
                *field = u64::from_le_bytes(b.try_into().unwrap_or_default());
            }
        }
        s
    }

    /// The minute as this proxy knows it: the fleet's counts at the last
    /// grant, less what this slice has not used yet.
    fn view(&self) -> Window {
        Window {
            start_s: self.window_start_s,
            requests: u32::try_from(self.fleet_requests.saturating_sub(self.requests)).unwrap_or(u32::MAX),
            tokens: self.fleet_tokens.saturating_sub(self.tokens),
        }
    }

    /// Admits one request of `tenant` from the slice, if it has room for
    /// all its limits: the minute as known here.
    pub fn take(&mut self, tenant: &Tenant, now_ms: u64, tokens: u64, worst_micro_usd: u64) -> Option<Window> {
        let fits = now_ms < self.until_ms
            && budget_period(tenant, now_ms) == self.period
            && (tenant.rpm.is_none() || self.requests >= 1)
            && (tenant.tpm.is_none() || self.tokens >= tokens)
            && (tenant.max_parallel.is_none() || self.slots > self.in_flight)
            && (tenant.budget.is_none() || self.micro_usd >= worst_micro_usd);
        if !fits {
            return None;
        }
        self.requests = self.requests.saturating_sub(1);
        self.tokens = self.tokens.saturating_sub(tokens);
        self.in_flight += u64::from(tenant.max_parallel.is_some());
        self.micro_usd = self.micro_usd.saturating_sub(worst_micro_usd);
        Some(self.view())
    }

    /// Everything unused, and what was spent, out of the slice: to give back.
    pub fn give_back(&mut self) -> Back {
        let back = Back {
            window_start_s: self.window_start_s,
            requests: std::mem::take(&mut self.requests),
            tokens: std::mem::take(&mut self.tokens),
            tokens_over: std::mem::take(&mut self.tokens_over),
            slots: self.slots.saturating_sub(self.in_flight),
            micro_usd: std::mem::take(&mut self.micro_usd),
            spent_micro_usd: std::mem::take(&mut self.unsettled_micro_usd),
        };
        self.slots = self.slots.min(self.in_flight);
        back
    }

    /// What was to be given back but could not be (no answer): kept again.
    pub fn restore(&mut self, back: &Back) {
        if back.window_start_s == self.window_start_s {
            self.requests += back.requests;
            self.tokens += back.tokens;
            self.tokens_over += back.tokens_over;
        }
        self.slots += back.slots;
        self.micro_usd += back.micro_usd;
        self.unsettled_micro_usd += back.spent_micro_usd;
    }

    /// A new slice granted to a request of `tenant` that needs `tokens` and
    /// `worst_micro_usd`: the request takes its part, the slice keeps the rest.
    pub fn granted(
        &mut self,
        g: &Grant,
        tenant: &Tenant,
        now_ms: u64,
        ttl_ms: u64,
        tokens: u64,
        worst_micro_usd: u64,
    ) -> Window {
        if g.window_start_s != self.window_start_s {
            self.window_start_s = g.window_start_s;
            (self.requests, self.tokens, self.tokens_over, self.fleet_requests, self.fleet_tokens) = (0, 0, 0, 0, 0);
        }
        self.requests += g.requests.saturating_sub(1);
        self.tokens += g.tokens.saturating_sub(tokens);
        self.fleet_requests = self.fleet_requests.max(g.fleet_requests);
        self.fleet_tokens = self.fleet_tokens.max(g.fleet_tokens);
        self.slots += g.slots;
        self.in_flight += u64::from(tenant.max_parallel.is_some());
        self.micro_usd += g.micro_usd.saturating_sub(worst_micro_usd);
        self.period = budget_period(tenant, now_ms);
        let minute_left_ms = (g.window_start_s * 1000 + 60_000).saturating_sub(g.now_ms);
        self.until_ms = now_ms + minute_left_ms.min(ttl_ms / 2);
        self.view()
    }

    /// A request admitted from this slice ended: its slot, the tokens it
    /// did not use and the worst case it did not spend come back here; its
    /// cost waits to be told. What to tell the fleet now: slots idle beyond
    /// an eighth of `max_parallel`, and the spend once it outgrows what is
    /// left (so a tight budget counts every cost at once).
    pub fn release(&mut self, tenant: &Tenant, end: &Settlement) -> Option<Back> {
        self.in_flight = self.in_flight.saturating_sub(u64::from(end.parallel_held));
        if let Some((_, reserved, used)) = end.tokens.filter(|t| t.0 == self.window_start_s) {
            self.tokens += reserved.saturating_sub(used);
            self.tokens_over += used.saturating_sub(reserved);
        }
        self.micro_usd += end.budget_reserved_micro_usd.saturating_sub(end.spend_micro_usd);
        self.unsettled_micro_usd += end.spend_micro_usd;
        let mut back = Back::default();
        let idle = self.slots.saturating_sub(self.in_flight);
        if idle > tenant.max_parallel.map_or(0, |p| u64::from(p) / 8) {
            back.slots = idle;
            self.slots = self.in_flight;
        }
        if self.unsettled_micro_usd > self.micro_usd {
            back.spent_micro_usd = std::mem::take(&mut self.unsettled_micro_usd);
        }
        (back != Back::default()).then_some(back)
    }
}

fn budget_period(tenant: &Tenant, now_ms: u64) -> u64 {
    tenant.budget.as_ref().map_or(0, |b| period_of(now_ms / 1000, b.per))
}

/// `POST` path to the service: take a slice for a request of `tenant` that
/// needs `tokens` and `worst_micro_usd` (`grant`), or only give `back`.
#[allow(clippy::too_many_arguments)]
pub fn slice_path(
    grant: bool,
    tenant: &Tenant,
    holder: u64,
    ttl_ms: u64,
    tokens: u64,
    worst_micro_usd: u64,
    now_s: u64,
    back: &Back,
) -> String {
    use std::fmt::Write;
    let budget = tenant.budget.as_ref();
    let fields = [
        ("rpm", tenant.rpm.map_or(0, u64::from)),
        ("tpm", tenant.tpm.unwrap_or(0)),
        ("par", tenant.max_parallel.map_or(0, u64::from)),
        ("bl", budget.map_or(0, |b| limit_micro_usd(b.limit_usd))),
        ("bp", budget.map_or(0, |b| period_of(now_s, b.per))),
        ("tok", tokens),
        ("bw", worst_micro_usd),
        ("ws", back.window_start_s),
        ("br", back.requests),
        ("bk", back.tokens),
        ("ko", back.tokens_over),
        ("bpar", back.slots),
        ("bb", back.micro_usd),
        ("cost", back.spent_micro_usd),
    ];
    let step = if grant { "admit" } else { "settle" };
    let mut path = format!("/v1/{step}?t={}&h={holder:x}&ttl={ttl_ms}", hex(tenant.name.as_bytes()));
    for (name, v) in fields.into_iter().filter(|f| f.1 > 0) {
        let _ = write!(path, "&{name}={v}");
    }
    path
}

/// The service's answer to a grant: the slice, or why the request is
/// refused; `None` when the answer is not one.
pub fn slice_answer(body: &[u8], tenant: &Tenant, now_s: u64, worst_micro_usd: u64) -> Option<Result<Grant, Refusal>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut words = text.split_ascii_whitespace();
    let verdict = words.next()?;
    let mut n = [0u64; 8];
    let mut count = 0;
    for (slot, word) in n.iter_mut().zip(words) {
        *slot = word.parse().ok()?;
        count += 1;
    }
    let [fleet_requests, fleet_tokens, window_start_s, now_ms, requests, tokens, slots, micro_usd] = n;
    let [a, b, ..] = n;
    Some(match (verdict, count) {
        ("ok", 8) => {
            Ok(Grant { fleet_requests, fleet_tokens, window_start_s, now_ms, requests, tokens, slots, micro_usd })
        }
        ("rpm", 1..) => Err(Refusal::Requests { retry_after_s: a }),
        ("tpm", 1..) => Err(Refusal::Tokens { retry_after_s: a }),
        ("par", _) => Err(Refusal::Parallel),
        ("budget", 2..) => Err(budget_refusal(tenant, now_s, a, b, worst_micro_usd)?),
        _ => return None,
    })
}

/// What the service's budget refusal (`spent`, `held` by the fleet's
/// slices and requests in flight) means here: the same rule's refusal,
/// with the 429's numbers.
#[inline(never)]
fn budget_refusal(tenant: &Tenant, now_s: u64, spent: u64, held: u64, worst_micro_usd: u64) -> Option<Refusal> {
    let budget = tenant.budget.as_ref()?;
    let spend = Spend { period: period_of(now_s, budget.per), micro_usd: spent, reserved_micro_usd: held };
    spend.reserve(now_s, budget.per, budget.limit_usd, worst_micro_usd).err()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::tenant::limits::BudgetShort;
    use crate::tenant::{Budget, BudgetPeriod};

    fn tenant() -> Tenant {
        Tenant {
            name: "t".into(),
            key_hashes: Vec::new(),
            allow: None,
            rpm: Some(60),
            tpm: None,
            max_parallel: Some(4),
            budget: Some(Budget { per: BudgetPeriod::Day, limit_usd: 0.05 }),
        }
    }

    const NOON: u64 = 1_796_644_800;

    #[test]
    fn asks_with_every_limit_the_tenant_has_and_what_it_gives_back() {
        let back = Back { window_start_s: NOON, requests: 2, slots: 1, spent_micro_usd: 5_000, ..Back::default() };
        assert_eq!(
            slice_path(true, &tenant(), 0xab, 600_000, 30, 6_000, NOON, &back),
            "/v1/admit?t=74&h=ab&ttl=600000&rpm=60&par=4&bl=50000&bp=20794&tok=30&bw=6000&ws=1796644800&br=2&bpar=1&cost=5000"
        );
        assert_eq!(
            slice_path(false, &tenant(), 1, 1000, 0, 0, NOON, &Back::default()),
            "/v1/settle?t=74&h=1&ttl=1000&rpm=60&par=4&bl=50000&bp=20794"
        );
    }

    #[test]
    fn reads_each_verdict() {
        let t = tenant();
        assert_eq!(
            slice_answer(b"ok 7 90 1796644800 1796644810000 7 30 1 6250", &t, NOON, 0),
            Some(Ok(Grant {
                fleet_requests: 7,
                fleet_tokens: 90,
                window_start_s: NOON,
                now_ms: 1_796_644_810_000,
                requests: 7,
                tokens: 30,
                slots: 1,
                micro_usd: 6_250
            }))
        );
        assert_eq!(slice_answer(b"rpm 17", &t, NOON, 0), Some(Err(Refusal::Requests { retry_after_s: 17 })));
        assert_eq!(slice_answer(b"par 4", &t, NOON, 0), Some(Err(Refusal::Parallel)));
        // $0.048 spent, nothing held: a $0.006 worst case does not fit until the day turns.
        let Some(Err(Refusal::Budget(short))) = slice_answer(b"budget 48000 0 1796644800", &t, NOON, 6_000) else {
            panic!()
        };
        assert_eq!(
            short,
            BudgetShort {
                retry_after_s: 43_200,
                worst_micro_usd: 6_000,
                spent_micro_usd: 48_000,
                held_micro_usd: 0,
                limit_micro_usd: 50_000
            }
        );
        // Held by requests in flight: retry in a second.
        let Some(Err(Refusal::Budget(held))) = slice_answer(b"budget 6000 42000 0", &t, NOON, 6_000) else { panic!() };
        assert_eq!(held.retry_after_s, 1);
        for junk in [&b""[..], b"ok 1 2 3", b"what 1", b"rpm x", b"\xff"] {
            assert_eq!(slice_answer(junk, &t, NOON, 0), None);
        }
    }

    const NOON_MS: u64 = NOON * 1000;

    fn grant(fleet_requests: u64, requests: u64, slots: u64, micro_usd: u64) -> Grant {
        Grant {
            fleet_requests,
            window_start_s: NOON,
            now_ms: NOON_MS + 10_000,
            requests,
            slots,
            micro_usd,
            ..Grant::default()
        }
    }

    #[test]
    fn a_slice_admits_locally_until_one_limit_runs_out_then_gives_the_rest_back() {
        let t = tenant();
        let mut s = Slice::decode(&Slice { holder: 9, ..Slice::default() }.encode());
        assert_eq!(s.holder, 9);
        assert_eq!(s.take(&t, NOON_MS, 0, 6_000), None, "nothing granted yet");
        // 3 requests, 2 slots and $0.013 granted, 1 request / 1 slot / $0.006 for the asking request.
        let w = s.granted(&grant(10, 3, 2, 13_000), &t, NOON_MS + 1, 600_000, 0, 6_000);
        // Remaining as known here: 60 - 10 counted in the fleet + 2 unused in this slice.
        assert_eq!(w, Window { start_s: NOON, requests: 8, tokens: 0 });
        assert_eq!(s.until_ms, NOON_MS + 1 + 50_000, "the minute's end on Redis's clock");
        assert_eq!(s.take(&t, NOON_MS + 2, 0, 6_000).map(|w| w.requests), Some(9));
        // Two in flight of two slots: the third asks.
        assert_eq!(s.take(&t, NOON_MS + 3, 0, 0), None);
        let back = s.give_back();
        assert_eq!(back, Back { window_start_s: NOON, requests: 1, micro_usd: 1_000, ..Back::default() });
        s.restore(&back);
        assert_eq!((s.requests, s.micro_usd), (1, 1_000));
        // The minute is over: nothing is admitted from it.
        assert_eq!(s.take(&t, NOON_MS + 50_001, 0, 0), None);
    }

    #[test]
    fn an_ended_request_frees_its_slot_for_the_fleet_and_tells_a_tight_budget_its_cost() {
        let t = tenant();
        let mut s = Slice::default();
        s.granted(&grant(1, 1, 1, 6_000), &t, NOON_MS, 600_000, 0, 6_000);
        let end = Settlement {
            parallel_held: true,
            spend_micro_usd: 5_000,
            budget_reserved_micro_usd: 6_000,
            ..Settlement::default()
        };
        // max_parallel 4 keeps no idle slot; $0.005 spent is more than the $0.001 left.
        assert_eq!(s.release(&t, &end), Some(Back { slots: 1, spent_micro_usd: 5_000, ..Back::default() }));
        assert_eq!((s.slots, s.in_flight, s.micro_usd, s.unsettled_micro_usd), (0, 0, 1_000, 0));
        // A large max_parallel keeps idle slots (an eighth of it) for the next requests.
        let wide = Tenant { max_parallel: Some(100_000), budget: None, ..tenant() };
        let mut s = Slice::default();
        s.granted(&grant(1, 1, 64, 0), &wide, NOON_MS, 600_000, 0, 0);
        assert_eq!(s.release(&wide, &Settlement { parallel_held: true, ..Settlement::default() }), None);
        assert!(s.take(&wide, NOON_MS + 1, 0, 0).is_none(), "rpm 60: its one request was the asker's");
    }

    #[test]
    fn tokens_over_or_under_their_reservation_stay_with_the_slice_minute() {
        let t = Tenant { tpm: Some(1_000), rpm: None, max_parallel: None, budget: None, ..tenant() };
        let mut s = Slice::default();
        let g = Grant { fleet_tokens: 400, tokens: 400, ..grant(1, 1, 0, 0) };
        s.granted(&g, &t, NOON_MS, 600_000, 100, 0);
        assert_eq!(s.tokens, 300);
        s.release(&t, &Settlement { tokens: Some((NOON, 100, 40)), ..Settlement::default() });
        s.release(&t, &Settlement { tokens: Some((NOON, 100, 130)), ..Settlement::default() });
        s.release(&t, &Settlement { tokens: Some((NOON - 60, 100, 0)), ..Settlement::default() });
        assert_eq!((s.tokens, s.tokens_over), (360, 30));
    }
}
