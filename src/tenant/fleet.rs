//! Fleet mode's protocol with the state service (`state-service/`): what a
//! proxy asks before a tenant's request goes upstream and tells when it ends.
//! Plain text both ways (a query string, a one-line answer): a few bytes,
//! nothing to parse but numbers. No proxy-wasm calls.

use crate::encoding::hex;

use super::limits::{limit_micro_usd, period_of, Refusal, Settlement, Spend, Window};
use super::Tenant;

/// `POST` path asking to admit one request of `tenant` reserving `tokens`
/// and `worst_micro_usd` of its budget, under lease `lease` held for `ttl_ms`.
pub fn admit_path(tenant: &Tenant, lease: u64, ttl_ms: u64, tokens: u64, worst_micro_usd: u64, now_s: u64) -> String {
    let budget = tenant.budget.as_ref();
    let fields = [
        ("rpm", tenant.rpm.map(u64::from)),
        ("tpm", tenant.tpm),
        ("par", tenant.max_parallel.map(u64::from)),
        ("bl", budget.map(|b| limit_micro_usd(b.limit_usd))),
        ("bp", budget.map(|b| period_of(now_s, b.per))),
        ("bw", budget.map(|_| worst_micro_usd)),
    ];
    let mut path = format!("/v1/admit?t={}&l={lease:x}&ttl={ttl_ms}&tok={tokens}", hex(tenant.name.as_bytes()));
    for (name, value) in fields {
        if let Some(v) = value {
            push_field(&mut path, name, v);
        }
    }
    path
}

/// The service's answer to [`admit_path`]: the tenant's window after counting
/// the request, or why it was refused; `None` when the answer is not one.
pub fn admit_answer(body: &[u8], tenant: &Tenant, now_s: u64, worst_micro_usd: u64) -> Option<Result<Window, Refusal>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut words = text.split_ascii_whitespace();
    let verdict = words.next()?;
    let mut n = [0u64; 3];
    let mut count = 0;
    for (slot, word) in n.iter_mut().zip(words) {
        *slot = word.parse().ok()?;
        count += 1;
    }
    let [a, b, c] = n;
    Some(match (verdict, count) {
        ("ok", 3) => Ok(Window { start_s: c, requests: u32::try_from(a).unwrap_or(u32::MAX), tokens: b }),
        ("rpm", 1..) => Err(Refusal::Requests { retry_after_s: a }),
        ("tpm", 1..) => Err(Refusal::Tokens { retry_after_s: a }),
        ("par", _) => Err(Refusal::Parallel),
        ("budget", 2..) => Err(budget_refusal(tenant, now_s, a, b, worst_micro_usd)?),
        _ => return None,
    })
}

/// What the service's budget refusal (`spent`, `held` by requests in flight)
/// means here: the same rule's refusal, with the 429's numbers.
#[inline(never)]
fn budget_refusal(tenant: &Tenant, now_s: u64, spent: u64, held: u64, worst_micro_usd: u64) -> Option<Refusal> {
    let budget = tenant.budget.as_ref()?;
    let spend = Spend { period: period_of(now_s, budget.per), micro_usd: spent, reserved_micro_usd: held };
    spend.reserve(now_s, budget.per, budget.limit_usd, worst_micro_usd).err()
}

/// `POST` path settling lease `lease` of `tenant` as `end` says, at `now_s`.
pub fn settle_path(tenant: &Tenant, lease: u64, end: &Settlement, now_s: u64) -> String {
    let mut path = format!("/v1/settle?t={}&l={lease:x}", hex(tenant.name.as_bytes()));
    if let Some((start_s, reserved, used)) = end.tokens {
        for (name, v) in [("ws", start_s), ("res", reserved), ("act", used)] {
            push_field(&mut path, name, v);
        }
    }
    if let Some(b) = tenant.budget.as_ref().filter(|_| end.spend_micro_usd > 0) {
        push_field(&mut path, "bp", period_of(now_s, b.per));
        push_field(&mut path, "cost", end.spend_micro_usd);
    }
    path
}

fn push_field(path: &mut String, name: &str, value: u64) {
    use std::fmt::Write;
    let _ = write!(path, "&{name}={value}");
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
    fn asks_with_every_limit_the_tenant_has() {
        assert_eq!(
            admit_path(&tenant(), 0xab, 600_000, 30, 6_000, NOON),
            "/v1/admit?t=74&l=ab&ttl=600000&tok=30&rpm=60&par=4&bl=50000&bp=20794&bw=6000"
        );
        let end = Settlement { tokens: Some((NOON, 30, 12)), spend_micro_usd: 5_000, ..Settlement::default() };
        assert_eq!(
            settle_path(&tenant(), 0xab, &end, NOON),
            "/v1/settle?t=74&l=ab&ws=1796644800&res=30&act=12&bp=20794&cost=5000"
        );
        assert_eq!(settle_path(&tenant(), 1, &Settlement::default(), NOON), "/v1/settle?t=74&l=1");
    }

    #[test]
    fn reads_each_verdict() {
        let t = tenant();
        assert_eq!(
            admit_answer(b"ok 3 90 1796644800 1796644810", &t, NOON, 0),
            Some(Ok(Window { start_s: NOON, requests: 3, tokens: 90 }))
        );
        assert_eq!(admit_answer(b"rpm 17", &t, NOON, 0), Some(Err(Refusal::Requests { retry_after_s: 17 })));
        assert_eq!(admit_answer(b"par 4", &t, NOON, 0), Some(Err(Refusal::Parallel)));
        // $0.048 spent, nothing held: a $0.006 worst case does not fit until the day turns.
        let Some(Err(Refusal::Budget(short))) = admit_answer(b"budget 48000 0 1796644800", &t, NOON, 6_000) else {
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
        let Some(Err(Refusal::Budget(held))) = admit_answer(b"budget 6000 42000 0", &t, NOON, 6_000) else { panic!() };
        assert_eq!(held.retry_after_s, 1);
        for junk in [&b""[..], b"ok 1", b"what 1", b"rpm x", b"\xff"] {
            assert_eq!(admit_answer(junk, &t, NOON, 0), None);
        }
    }
}
