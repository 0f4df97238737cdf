//! Weighted member selection among the members a request may still use.

use crate::config::Member;

use super::Availability;

/// Picks a member index by weight among healthy or trial members that are not
/// in `tried`. When none is usable, returns the untried member whose ejection
/// ends first, so an all-ejected pool still tries rather than failing closed.
/// Members with weight 0 are standbys: used only when no weighted member is usable.
pub fn pick(
    members: &[Member],
    tried: &[usize],
    availability: impl Fn(usize) -> Availability,
    random: u64,
) -> Option<usize> {
    let mut total: u64 = 0;
    let mut standby: Option<usize> = None;
    let mut soonest: Option<(u64, usize)> = None;
    // Availability can touch shared data: compute it once per member.
    let mut usable: Vec<(usize, u64)> = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        if tried.contains(&index) {
            continue;
        }
        match availability(index) {
            Availability::Healthy | Availability::Trial => {
                if member.weight == 0 {
                    standby.get_or_insert(index);
                } else {
                    total += u64::from(member.weight);
                    usable.push((index, u64::from(member.weight)));
                }
            }
            Availability::Unavailable { until_ms } => {
                if soonest.is_none_or(|(t, _)| until_ms < t) {
                    soonest = Some((until_ms, index));
                }
            }
        }
    }
    if total > 0 {
        let mut ticket = random % total;
        for (index, weight) in &usable {
            if ticket < *weight {
                return Some(*index);
            }
            ticket -= weight;
        }
    }
    standby.or(soonest.map(|(_, index)| index))
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
        let mut bytes = [0u8; 8];
        // Fall back to a fixed seed: selection stays weighted, only less random across VMs.
        if getrandom::getrandom(&mut bytes).is_err() {
            bytes = 0x9e37_79b9_7f4a_7c15u64.to_le_bytes();
        }
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
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
            })
            .collect()
    }

    #[test]
    fn weights_are_respected_statistically() {
        let m = members(&[3, 1]);
        let mut rng = Rng::from_seed(42);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            let i = pick(&m, &[], |_| Availability::Healthy, rng.next_u64()).unwrap();
            counts[i] += 1;
        }
        let share = f64::from(counts[0]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "share of weight-3 member was {share}");
    }

    #[test]
    fn tried_members_are_skipped() {
        let m = members(&[1, 1, 1]);
        for r in 0..100 {
            let i = pick(&m, &[0, 2], |_| Availability::Healthy, r).unwrap();
            assert_eq!(i, 1);
        }
        assert_eq!(pick(&m, &[0, 1, 2], |_| Availability::Healthy, 7), None);
    }

    #[test]
    fn unavailable_members_are_skipped_while_others_are_usable() {
        let m = members(&[100, 1]);
        for r in 0..100 {
            let i = pick(
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
        assert_eq!(pick(&m, &[], |_| Availability::Trial, 3), Some(0));
    }

    #[test]
    fn all_ejected_picks_the_one_whose_ejection_ends_first() {
        let m = members(&[1, 1, 1]);
        let until = [300u64, 100, 200];
        let i = pick(&m, &[], |i| Availability::Unavailable { until_ms: until[i] }, 5);
        assert_eq!(i, Some(1));
        let i = pick(&m, &[1], |i| Availability::Unavailable { until_ms: until[i] }, 5);
        assert_eq!(i, Some(2));
    }

    #[test]
    fn zero_weight_members_are_standbys() {
        let m = members(&[0, 2]);
        for r in 0..50 {
            assert_eq!(pick(&m, &[], |_| Availability::Healthy, r), Some(1));
        }
        assert_eq!(pick(&m, &[1], |_| Availability::Healthy, 1), Some(0));
    }

    #[test]
    fn hundred_members_all_reachable() {
        let m = members(&[1; 100]);
        let mut rng = Rng::from_seed(7);
        let mut seen = [false; 100];
        for _ in 0..5_000 {
            seen[pick(&m, &[], |_| Availability::Healthy, rng.next_u64()).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn rng_is_not_constant() {
        let mut rng = Rng::from_seed(0);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
    }
}
