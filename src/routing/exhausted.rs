//! What to tell a client when every attempt failed: the status and the
//! `Retry-After` that say truthfully when trying again makes sense, and
//! whether it should retry at all (`x-should-retry`, which the OpenAI SDKs
//! honour). The gateway has already walked the pool; a client retrying at
//! once would only walk it again and multiply upstream calls.

/// The answer to a request whose attempts all failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// 429 when every attempt was rate limited, else 503.
    pub status: u16,
    /// Seconds until a tried member takes requests again, when the gateway knows.
    pub retry_after_s: Option<u64>,
    /// Retrying helps only once a member is back; until then it repeats the same failures.
    pub should_retry: bool,
}

/// `statuses`: each attempt's upstream status (0: no response).
/// `back_at_ms`: for each tried member, when it takes requests again (None:
/// it would take one now). `now_ms`: the current time.
pub fn exhausted(statuses: &[u16], back_at_ms: impl IntoIterator<Item = Option<u64>>, now_ms: u64) -> Exhausted {
    let rate_limited = !statuses.is_empty() && statuses.iter().all(|s| *s == 429);
    // The earliest a tried member is back; unknown as soon as one is usable now.
    let mut earliest: Option<u64> = None;
    let mut any_usable_now = false;
    for back in back_at_ms {
        match back {
            Some(at) if at > now_ms => earliest = Some(earliest.map_or(at, |e| e.min(at))),
            _ => any_usable_now = true,
        }
    }
    let retry_after_s = earliest.filter(|_| !any_usable_now).map(|at| (at - now_ms).div_ceil(1000).max(1));
    Exhausted { status: if rate_limited { 429 } else { 503 }, retry_after_s, should_retry: retry_after_s.is_some() }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn all_rate_limited_is_429_with_the_earliest_retry_after() {
        let v = exhausted(&[429, 429], [Some(8_000), Some(4_500)], 1_000);
        assert_eq!(v, Exhausted { status: 429, retry_after_s: Some(4), should_retry: true });
    }

    #[test]
    fn mixed_failures_are_503() {
        assert_eq!(exhausted(&[429, 503], [Some(5_000), Some(9_000)], 0).status, 503);
        assert_eq!(exhausted(&[0], [Some(2_000)], 0).retry_after_s, Some(2));
    }

    #[test]
    fn no_known_return_time_means_do_not_retry_now() {
        // A member that failed but is not held out: the gateway already tried it.
        let v = exhausted(&[503, 503], [None, Some(10_000)], 0);
        assert_eq!(v, Exhausted { status: 503, retry_after_s: None, should_retry: false });
        let v = exhausted(&[429], [None], 0);
        assert_eq!(v, Exhausted { status: 429, retry_after_s: None, should_retry: false });
        // Nothing tried (deadline already passed): nothing known either.
        assert_eq!(exhausted(&[], [], 0), Exhausted { status: 503, retry_after_s: None, should_retry: false });
    }

    #[test]
    fn sub_second_waits_round_up() {
        assert_eq!(exhausted(&[503], [Some(1_001)], 1_000).retry_after_s, Some(1));
        assert_eq!(exhausted(&[503], [Some(2_001)], 1_000).retry_after_s, Some(2));
    }
}
