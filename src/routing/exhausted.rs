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
    /// Seconds until the gateway itself next tries a member of the request's
    /// pools, when no member would be tried now.
    pub retry_after_s: Option<u64>,
    /// False only when retrying cannot help: the gateway walked several
    /// members, none is coming back at a known time, and their failures are
    /// not rate limits or overloads (which a client's own backoff answers).
    pub should_retry: bool,
}

/// A member the request did not try because it was out (ejected or held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassedOver {
    /// When the gateway next sends it a request (None: it would now).
    pub next_try_ms: Option<u64>,
    /// Out because its provider asked (`Retry-After`), not for failures.
    pub held_by_provider: bool,
}

/// `statuses`: each attempt's upstream status (0: no response).
/// `tried_next_try_ms`: for each member tried, when the gateway next sends it
/// a request (None: it would now). `passed_over`: members not tried because
/// they were out. `now_ms`: the current time.
pub fn exhausted(
    statuses: &[u16],
    tried_next_try_ms: impl IntoIterator<Item = Option<u64>>,
    passed_over: &[PassedOver],
    now_ms: u64,
) -> Exhausted {
    // Rate limited: every attempt was a 429 and every member not tried is held by its provider.
    let rate_limited = !(statuses.is_empty() && passed_over.is_empty())
        && statuses.iter().all(|s| *s == 429)
        && passed_over.iter().all(|p| p.held_by_provider);
    // The earliest a member is tried again; unknown as soon as one would be tried now.
    let mut earliest: Option<u64> = None;
    let mut any_usable_now = false;
    for next in tried_next_try_ms.into_iter().chain(passed_over.iter().map(|p| p.next_try_ms)) {
        match next {
            Some(at) if at > now_ms => earliest = Some(earliest.map_or(at, |e| e.min(at))),
            _ => any_usable_now = true,
        }
    }
    let retry_after_s = earliest.filter(|_| !any_usable_now).map(|at| (at - now_ms).div_ceil(1000).max(1));
    let backoff_helps = !statuses.is_empty() && statuses.iter().all(|s| matches!(s, 429 | 529));
    let walked_several = statuses.len() >= 2;
    Exhausted {
        status: if rate_limited { 429 } else { 503 },
        retry_after_s,
        should_retry: retry_after_s.is_some() || backoff_helps || !walked_several,
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn all_rate_limited_is_429_with_the_earliest_retry_after() {
        let v = exhausted(&[429, 429], [Some(8_000), Some(4_500)], &[], 1_000);
        assert_eq!(v, Exhausted { status: 429, retry_after_s: Some(4), should_retry: true });
    }

    #[test]
    fn mixed_failures_are_503() {
        assert_eq!(exhausted(&[429, 503], [Some(5_000), Some(9_000)], &[], 0).status, 503);
        assert_eq!(exhausted(&[0], [Some(2_000)], &[], 0).retry_after_s, Some(2));
    }

    #[test]
    fn no_known_return_time_after_walking_several_members_means_do_not_retry_now() {
        // A member that failed but is not held out: the gateway already tried it.
        let v = exhausted(&[503, 503], [None, Some(10_000)], &[], 0);
        assert_eq!(v, Exhausted { status: 503, retry_after_s: None, should_retry: false });
        // Nothing tried (deadline already passed): nothing known, and a retry may help.
        assert_eq!(exhausted(&[], [], &[], 0), Exhausted { status: 503, retry_after_s: None, should_retry: true });
    }

    #[test]
    fn rate_limits_overloads_and_a_single_attempt_leave_the_backoff_to_the_client() {
        let v = exhausted(&[429], [None], &[], 0);
        assert_eq!(v, Exhausted { status: 429, retry_after_s: None, should_retry: true });
        assert!(exhausted(&[529, 529], [None, None], &[], 0).should_retry);
        assert!(exhausted(&[429, 529], [None, None], &[], 0).should_retry);
        assert!(exhausted(&[500], [None], &[], 0).should_retry, "one member tried: a retry may reach another");
        assert!(!exhausted(&[500, 429], [None, None], &[], 0).should_retry);
    }

    #[test]
    fn members_passed_over_say_when_the_gateway_tries_again() {
        // Nothing tried: both members ejected, the first back in 2.5 s.
        let out = |at, held| PassedOver { next_try_ms: Some(at), held_by_provider: held };
        let v = exhausted(&[], [], &[out(3_500, false), out(9_000, true)], 1_000);
        assert_eq!(v, Exhausted { status: 503, retry_after_s: Some(3), should_retry: true });
        // Every member held by its provider's Retry-After: still a rate limit for the client.
        let v = exhausted(&[], [], &[out(3_500, true), out(9_000, true)], 1_000);
        assert_eq!(v, Exhausted { status: 429, retry_after_s: Some(3), should_retry: true });
        assert_eq!(exhausted(&[429], [Some(5_000)], &[out(3_500, true)], 1_000).status, 429);
        assert_eq!(exhausted(&[503], [Some(5_000)], &[out(3_500, true)], 1_000).status, 503);
    }

    #[test]
    fn sub_second_waits_round_up() {
        assert_eq!(exhausted(&[503], [Some(1_001)], &[], 1_000).retry_after_s, Some(1));
        assert_eq!(exhausted(&[503], [Some(2_001)], &[], 1_000).retry_after_s, Some(2));
    }
}
