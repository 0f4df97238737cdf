//! Picking one member among a pool's candidates: the strategies, as pure
//! functions over candidates carrying the live facts the host injected.
//!
//! Every strategy orders candidates by a preference key and picks by weight
//! among the best ones, under the same availability rule: usable members
//! (healthy or trial) with weight > 0 first, then weight-0 standbys; ejected
//! or held members never (the stage is passed over, see `Plan::next_member`).

use crate::config::{Member, Strategy};
use crate::encoding::random_bytes;

use super::Availability;

/// Which latency average a request is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    /// Time to first byte (streams).
    FirstByte,
    /// Milliseconds per output token (non-streaming answers).
    PerOutputToken,
}

/// Live facts about members, supplied by the host (shared data across
/// workers). Offline (`explain`) nothing is known: the defaults.
pub trait LiveStats {
    fn availability(&self, member: &Member) -> Availability;
    /// Requests in flight to this member, across workers.
    fn in_flight(&self, _member: &Member) -> u32 {
        0
    }
    /// Moving average in ms; `None` while the member has no data.
    fn latency_ms(&self, _member: &Member, _kind: LatencyKind) -> Option<f64> {
        None
    }
    /// A canary that was rolled back has weight 0 whatever its configuration says.
    fn rolled_back(&self, _member: &Member) -> bool {
        false
    }
}

/// Any `Fn(&Member) -> Availability` is stats with health only.
impl<F: Fn(&Member) -> Availability> LiveStats for F {
    fn availability(&self, member: &Member) -> Availability {
        self(member)
    }
}

/// One member a request may use, with what the strategy looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index in the pool's members.
    pub member: usize,
    pub weight: u32,
    pub availability: Availability,
    /// Filled only for strategies that use them.
    pub in_flight: u32,
    pub latency_ms: Option<f64>,
    /// Expected USD for this request (`lowest_cost`).
    pub cost: Option<f64>,
    pub priority: i32,
}

impl Candidate {
    fn usable(&self) -> bool {
        matches!(self.availability, Availability::Healthy | Availability::Trial)
    }
}

/// Availability class, then the strategy's key: lower is preferred.
pub fn preference(strategy: Strategy, c: &Candidate) -> (u8, u64) {
    match c.availability {
        Availability::Unavailable { until_ms } => return (2, until_ms),
        Availability::Healthy | Availability::Trial => {}
    }
    let class = if c.weight == 0 { 1 } else { 0 };
    let key = match strategy {
        Strategy::Weighted => 0,
        Strategy::LeastBusy => u64::from(c.in_flight),
        // No data sorts first so new or recovered members get measured.
        Strategy::LowestLatency => c.latency_ms.map_or(0, |ms| (ms.max(0.0) * 1000.0) as u64 + 1),
        // Nano-dollars: equal prices compare equal.
        Strategy::LowestCost => c.cost.map_or(u64::MAX, |usd| (usd.max(0.0) * 1e9).round() as u64),
        Strategy::Priority => (i64::from(c.priority) - i64::from(i32::MIN)) as u64,
    };
    (class, key)
}

/// A second independent draw from one random number (exploration decision).
fn remix(random: u64) -> u64 {
    let t = u128::from(random ^ 0x2d35_8dcc_aa6c_78a5) * u128::from(random | 1);
    ((t >> 64) as u64) ^ (t as u64)
}

/// A candidate's share of a weighted draw: weight-0 members count 1.
fn share(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// Weighted pick among `candidates` for which `eligible` holds; weight-0 members count 1.
fn weighted(candidates: &[Candidate], eligible: impl Fn(&Candidate) -> bool, random: u64) -> Option<usize> {
    let total: u64 = candidates.iter().filter(|c| eligible(c)).map(share).sum();
    draw(candidates, eligible, total, random)
}

/// The weighted draw among the `eligible` candidates, whose shares sum to `total`.
fn draw(candidates: &[Candidate], eligible: impl Fn(&Candidate) -> bool, total: u64, random: u64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let mut ticket = random % total;
    for (i, c) in candidates.iter().enumerate().filter(|(_, c)| eligible(c)) {
        if ticket < share(c) {
            return Some(i);
        }
        ticket -= share(c);
    }
    None
}

/// The position in `candidates` of the member to try.
pub fn pick(strategy: Strategy, explore: f64, candidates: &[Candidate], random: u64) -> Option<usize> {
    if strategy == Strategy::Weighted {
        // The common case in one pass per class, no keys.
        for class in 0..2u8 {
            let found = weighted(candidates, |c| c.usable() && (c.weight == 0) == (class == 1), random);
            if found.is_some() {
                return found;
            }
        }
        return None;
    }
    // The best preference and the best members' total weight in one pass.
    let mut best = None;
    let mut best_total = 0u64;
    for c in candidates {
        let p = preference(strategy, c);
        match best {
            Some(b) if p > b => {}
            Some(b) if p == b => best_total += share(c),
            _ => (best, best_total) = (Some(p), share(c)),
        }
    }
    let best = best?;
    if strategy == Strategy::LowestLatency && best.0 == 0 && best.1 != 0 && explore > 0.0 {
        // Every usable member has data: a small share goes elsewhere so slow members stay measured.
        let roll = (remix(random) >> 11) as f64 / (1u64 << 53) as f64;
        if roll < explore {
            let others = |c: &Candidate| c.usable() && c.weight > 0 && preference(strategy, c) != best;
            if let Some(i) = weighted(candidates, others, random) {
                return Some(i);
            }
        }
    }
    if best.0 == 2 {
        // Every candidate is ejected or held: none is tried before it is back,
        // so the wait the client is told is what the gateway does.
        return None;
    }
    draw(candidates, |c| preference(strategy, c) == best, best_total, random)
}

/// Candidates in the strategy's order of preference (best first; heavier
/// weight first among equals), as positions in `candidates`. For explanations:
/// the actual pick is random by weight among the best.
pub fn rank(strategy: Strategy, candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        candidates
            .get(i)
            .map(|c| (preference(strategy, c), std::cmp::Reverse(c.weight)))
            .unwrap_or(((3, 0), std::cmp::Reverse(0)))
    });
    order
}

/// Picks a member index by weight among healthy or trial members that are not
/// in `tried`; see [`pick`] for the availability rule. Kept for callers that
/// hold a plain member list.
pub fn pick_weighted(
    members: &[Member],
    tried: &[usize],
    availability: impl Fn(usize) -> Availability,
    random: u64,
) -> Option<usize> {
    let candidates: Vec<Candidate> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| !tried.contains(i))
        .map(|(i, m)| Candidate {
            member: i,
            weight: m.weight,
            availability: availability(i),
            in_flight: 0,
            latency_ms: None,
            cost: None,
            priority: m.priority,
        })
        .collect();
    pick(Strategy::Weighted, 0.0, &candidates, random).and_then(|i| candidates.get(i)).map(|c| c.member)
}

/// A small fast PRNG (wyrand) seeded once per VM from the host's entropy; a
/// syscall per request is not needed for load balancing.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn from_entropy() -> Self {
        // Fall back to a fixed seed: selection stays weighted, only less random across VMs.
        let bytes = random_bytes::<8>().unwrap_or(0x9e37_79b9_7f4a_7c15u64.to_le_bytes());
        Rng(u64::from_le_bytes(bytes))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                provider: 0,
                model: format!("m{i}"),
                deployment: format!("m{i}"),
                weight: *w,
                id: format!("p/m{i}"),
                ..Member::default()
            })
            .collect()
    }

    fn cand(member: usize, weight: u32) -> Candidate {
        Candidate {
            member,
            weight,
            availability: Availability::Healthy,
            in_flight: 0,
            latency_ms: None,
            cost: None,
            priority: 0,
        }
    }

    /// Share of picks per candidate over many random draws.
    fn shares(strategy: Strategy, explore: f64, c: &[Candidate]) -> Vec<f64> {
        let mut rng = Rng::from_seed(9);
        let mut counts = vec![0u32; c.len()];
        for _ in 0..20_000 {
            counts[pick(strategy, explore, c, rng.next_u64()).unwrap()] += 1;
        }
        counts.iter().map(|n| f64::from(*n) / 20_000.0).collect()
    }

    #[test]
    fn a_keyed_pick_is_the_weighted_pick_among_the_best() {
        let mut rng = Rng::from_seed(3);
        for round in 0..300 {
            let c: Vec<Candidate> = (0..1 + round % 9)
                .map(|i| {
                    let r = rng.next_u64();
                    let availability = match r % 7 {
                        0 => Availability::Unavailable { until_ms: r % 5 },
                        1 => Availability::Trial,
                        _ => Availability::Healthy,
                    };
                    let latency_ms = (!r.is_multiple_of(3)).then_some(((r >> 8) % 4) as f64 * 10.0);
                    Candidate {
                        availability,
                        in_flight: ((r >> 16) % 3) as u32,
                        latency_ms,
                        ..cand(i, ((r >> 24) % 4) as u32)
                    }
                })
                .collect();
            for strategy in [Strategy::LeastBusy, Strategy::LowestLatency, Strategy::Priority] {
                let best = c.iter().map(|x| preference(strategy, x)).min().unwrap();
                let random = rng.next_u64();
                let expected =
                    if best.0 == 2 { None } else { weighted(&c, |x| preference(strategy, x) == best, random) };
                assert_eq!(pick(strategy, 0.0, &c, random), expected, "{strategy:?} round {round}");
            }
        }
    }

    #[test]
    fn weights_are_respected_statistically() {
        let m = members(&[3, 1]);
        let mut rng = Rng::from_seed(42);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            let i = pick_weighted(&m, &[], |_| Availability::Healthy, rng.next_u64()).unwrap();
            counts[i] += 1;
        }
        let share = f64::from(counts[0]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "share of weight-3 member was {share}");
    }

    #[test]
    fn tried_members_are_skipped() {
        let m = members(&[1, 1, 1]);
        for r in 0..100 {
            let i = pick_weighted(&m, &[0, 2], |_| Availability::Healthy, r).unwrap();
            assert_eq!(i, 1);
        }
        assert_eq!(pick_weighted(&m, &[0, 1, 2], |_| Availability::Healthy, 7), None);
    }

    #[test]
    fn unavailable_members_are_skipped_while_others_are_usable() {
        let m = members(&[100, 1]);
        for r in 0..100 {
            let i = pick_weighted(
                &m,
                &[],
                |i| if i == 0 { Availability::Unavailable { until_ms: 10 } } else { Availability::Healthy },
                r,
            );
            assert_eq!(i, Some(1));
        }
    }

    #[test]
    fn trial_members_are_usable() {
        let m = members(&[1]);
        assert_eq!(pick_weighted(&m, &[], |_| Availability::Trial, 3), Some(0));
    }

    #[test]
    fn all_ejected_picks_none() {
        let m = members(&[1, 1, 1]);
        let until = [300u64, 100, 200];
        assert_eq!(pick_weighted(&m, &[], |i| Availability::Unavailable { until_ms: until[i] }, 5), None);
        // The same rule under every strategy.
        let c: Vec<Candidate> = (0..3)
            .map(|i| Candidate { availability: Availability::Unavailable { until_ms: until[i] }, ..cand(i, 1) })
            .collect();
        for s in [Strategy::LeastBusy, Strategy::LowestLatency, Strategy::LowestCost, Strategy::Priority] {
            assert_eq!(pick(s, 0.5, &c, 77), None, "{s:?}");
        }
    }

    #[test]
    fn zero_weight_members_are_standbys() {
        let m = members(&[0, 2]);
        for r in 0..50 {
            assert_eq!(pick_weighted(&m, &[], |_| Availability::Healthy, r), Some(1));
        }
        assert_eq!(pick_weighted(&m, &[1], |_| Availability::Healthy, 1), Some(0));
        // A standby beats an ejected weighted member, under any strategy.
        let c = [Candidate { availability: Availability::Unavailable { until_ms: 1 }, ..cand(0, 5) }, cand(1, 0)];
        for s in [Strategy::Weighted, Strategy::LeastBusy, Strategy::Priority] {
            assert_eq!(pick(s, 0.0, &c, 3), Some(1), "{s:?}");
        }
    }

    #[test]
    fn hundred_members_all_reachable() {
        let m = members(&[1; 100]);
        let mut rng = Rng::from_seed(7);
        let mut seen = [false; 100];
        for _ in 0..5_000 {
            seen[pick_weighted(&m, &[], |_| Availability::Healthy, rng.next_u64()).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn least_busy_takes_fewest_in_flight_ties_by_weight() {
        let c = [
            Candidate { in_flight: 4, ..cand(0, 10) },
            Candidate { in_flight: 1, ..cand(1, 3) },
            Candidate { in_flight: 1, ..cand(2, 1) },
        ];
        let s = shares(Strategy::LeastBusy, 0.0, &c);
        assert_eq!(s[0], 0.0);
        assert!((s[1] - 0.75).abs() < 0.02, "{s:?}");
        assert_eq!(rank(Strategy::LeastBusy, &c), vec![1, 2, 0]);
    }

    #[test]
    fn lowest_latency_prefers_members_without_data_then_the_fastest_with_exploration() {
        let fast = Candidate { latency_ms: Some(10.0), ..cand(0, 1) };
        let slow = Candidate { latency_ms: Some(200.0), ..cand(1, 1) };
        let fresh = cand(2, 1);
        assert_eq!(shares(Strategy::LowestLatency, 0.05, &[fast, slow, fresh])[2], 1.0, "no data goes first");
        let s = shares(Strategy::LowestLatency, 0.05, &[fast, slow]);
        assert!((s[1] - 0.05).abs() < 0.01, "exploration share {s:?}");
        assert_eq!(shares(Strategy::LowestLatency, 0.0, &[fast, slow]), vec![1.0, 0.0]);
        // When the fast member slows down, traffic moves.
        let slowed = Candidate { latency_ms: Some(400.0), ..fast };
        assert!(shares(Strategy::LowestLatency, 0.05, &[slowed, slow])[1] > 0.9);
    }

    #[test]
    fn lowest_cost_picks_cheapest_weighted_among_equals() {
        let c = [
            Candidate { cost: Some(0.002), ..cand(0, 1) },
            Candidate { cost: Some(0.001), ..cand(1, 1) },
            Candidate { cost: Some(0.001), ..cand(2, 3) },
        ];
        let s = shares(Strategy::LowestCost, 0.0, &c);
        assert_eq!(s[0], 0.0);
        assert!((s[2] - 0.75).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn priority_uses_the_best_tier_with_a_usable_member() {
        let ejected = Availability::Unavailable { until_ms: 9 };
        let c = [
            Candidate { priority: 0, availability: ejected, ..cand(0, 1) },
            Candidate { priority: 1, ..cand(1, 1) },
            Candidate { priority: 1, ..cand(2, 1) },
            Candidate { priority: 2, ..cand(3, 100) },
        ];
        let s = shares(Strategy::Priority, 0.0, &c);
        assert_eq!((s[0], s[3]), (0.0, 0.0));
        assert!((s[1] - 0.5).abs() < 0.02, "{s:?}");
        let c = [Candidate { priority: -1, ..cand(0, 1) }, Candidate { priority: 0, ..cand(1, 1) }];
        assert_eq!(shares(Strategy::Priority, 0.0, &c), vec![1.0, 0.0], "negative priorities sort first");
    }

    #[test]
    fn rng_is_not_constant() {
        let mut rng = Rng::from_seed(0);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
    }
}
