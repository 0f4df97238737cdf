//! Finding a hung member without cutting a slow one.
//!
//! A member that accepts connections and never answers produces no failure
//! the gateway can see: non-streaming answers have no first-byte deadline by
//! default (their headers come only with the whole generation, which may
//! take minutes), so such requests end when the client gives up. A client
//! that gives up is not, alone, evidence against the member: the generation
//! may be long. It becomes evidence when another member of the same pool
//! answered recently in well under the time this one stayed silent: then the
//! abort counts as the silent member's failure (its streak, ejection and
//! half-open trial, as any failure). No request is ever cut by this rule.

/// A client must have waited at least this long: a quick cancel says nothing.
pub const MIN_SILENCE_MS: u64 = 1_000;
/// How recent a peer's answer must be to vouch for the pool.
pub const EVIDENCE_WINDOW_MS: u64 = 60_000;

/// One member's last successful answer, as one worker saw it or as the
/// workers published it to each other (once a second, on tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastAnswer {
    /// When it ended (ms since the epoch); 0: none seen.
    pub at_ms: u64,
    /// How long it took from the attempt's start.
    pub took_ms: u64,
}

impl LastAnswer {
    /// The newer of two observations of the same member.
    pub fn newer(self, other: LastAnswer) -> LastAnswer {
        if other.at_ms > self.at_ms {
            other
        } else {
            self
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.at_ms.to_le_bytes());
        out[8..].copy_from_slice(&self.took_ms.to_le_bytes());
        out
    }

    /// A value that is not 16 bytes reads as no answer.
    pub fn decode(bytes: &[u8]) -> LastAnswer {
        let word = |range: std::ops::Range<usize>| {
            bytes.get(range).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
        };
        if bytes.len() != 16 {
            return LastAnswer::default();
        }
        LastAnswer { at_ms: word(0..8), took_ms: word(8..16) }
    }

    /// Whether this answer shows that a member silent for `waited_ms` until
    /// `now_ms` is slower than the pool can be: recent, and at most half that long.
    fn outpaces(&self, waited_ms: u64, now_ms: u64) -> bool {
        self.at_ms != 0
            && now_ms.saturating_sub(self.at_ms) <= EVIDENCE_WINDOW_MS
            && self.took_ms.saturating_mul(2) <= waited_ms
    }
}

/// Whether a client's abort after `waited_ms` with no answer from the member
/// counts as that member's failure, given the last answers of the pool's
/// other members.
pub fn abort_is_failure(waited_ms: u64, now_ms: u64, peers: impl IntoIterator<Item = LastAnswer>) -> bool {
    waited_ms >= MIN_SILENCE_MS && peers.into_iter().any(|p| p.outpaces(waited_ms, now_ms))
}

#[cfg(test)]
mod tests {

    use super::*;

    const NOW: u64 = 1_000_000;

    fn answer(ago_ms: u64, took_ms: u64) -> LastAnswer {
        LastAnswer { at_ms: NOW - ago_ms, took_ms }
    }

    #[test]
    fn an_abort_counts_when_a_peer_answered_recently_and_much_faster() {
        assert!(abort_is_failure(4_000, NOW, [answer(2_000, 50)]));
        assert!(abort_is_failure(4_000, NOW, [LastAnswer::default(), answer(59_000, 2_000)]));
    }

    #[test]
    fn answers_travel_between_workers_intact() {
        let a = answer(1_500, 42);
        assert_eq!(LastAnswer::decode(&a.encode()), a);
        assert_eq!(LastAnswer::decode(b"short"), LastAnswer::default());
        assert_eq!(a.newer(answer(10, 7)), answer(10, 7));
        assert_eq!(a.newer(LastAnswer::default()), a);
    }

    #[test]
    fn no_evidence_no_failure() {
        // No peer answered (a one-member pool, or a pool where all are slow).
        assert!(!abort_is_failure(4_000, NOW, []));
        assert!(!abort_is_failure(4_000, NOW, [LastAnswer::default()]));
        // The peer's answer is old, or not much faster than the wait.
        assert!(!abort_is_failure(4_000, NOW, [answer(61_000, 50)]));
        assert!(!abort_is_failure(4_000, NOW, [answer(1_000, 2_001)]));
        // A quick cancel says nothing about the member.
        assert!(!abort_is_failure(900, NOW, [answer(10, 5)]));
    }
}
