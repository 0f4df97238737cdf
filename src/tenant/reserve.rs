//! A request's worst-case cost, reserved against its tenant's budget before
//! it goes upstream and settled with the real usage when it ends (see
//! `limits::Spend`). No proxy-wasm calls.
//!
//! Worst case on one member: prompt tokens x its input price + output tokens
//! x its output price, where the output is the request's `max_tokens` /
//! `max_completion_tokens` (a door's `max_tokens` / `max_output_tokens`),
//! else the member's `max_output_tokens`, else [`DEFAULT_RESERVED_OUTPUT_TOKENS`].
//!
//! Several members can serve one request (a pool's members, failover to its
//! `fallback_pools` and the request's `fallback`): the reservation is the
//! dearest of every member the plan may try, taken once at admission.
//! Re-reserving on failover would hold less while the cheap member answers,
//! but a failover could then be refused halfway through a request the client
//! was already told nothing about; the dearest candidate keeps admission one
//! decision, and the settlement gives back the difference when it ends.

use super::limits::{cost_micro_usd, micro_usd};
use crate::api::usage::Tokens;

/// Output tokens reserved when neither the request nor the member bounds them.
/// An answer longer than this (possible only then) can spend past the budget:
/// see docs/tenants.md, "Budgets".
pub const DEFAULT_RESERVED_OUTPUT_TOKENS: u32 = 4_096;

/// What a member charges and how much it can write: its `input_cost_per_mtok`,
/// `output_cost_per_mtok`, `cached_input_cost_per_mtok`,
/// `cache_write_cost_per_mtok` (USD per million tokens) and `max_output_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prices {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    /// Input read from the provider's cache; the input price when unset.
    pub cached_input_per_mtok: Option<f64>,
    /// Input written to the provider's cache; the input price when unset.
    pub cache_write_per_mtok: Option<f64>,
    pub max_output_tokens: Option<u32>,
}

impl Prices {
    /// Output tokens this member can spend on a request asking for `requested`.
    pub fn worst_output(&self, requested: Option<u32>) -> u32 {
        requested.or(self.max_output_tokens).unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS)
    }

    /// Whether the member has a price at all (else its answers have no cost).
    pub fn priced(&self) -> bool {
        [self.input_per_mtok, self.output_per_mtok, self.cached_input_per_mtok, self.cache_write_per_mtok]
            .iter()
            .any(Option::is_some)
    }

    /// `used` tokens at these prices, in micro-USD (0 when unpriced): cache
    /// reads and writes at their own prices, the rest of the input at the input price.
    pub fn cost(&self, used: Tokens) -> u64 {
        let input = self.input_per_mtok.unwrap_or(0.0);
        let at = |tokens: Option<u64>, price: Option<f64>| tokens.unwrap_or(0) as f64 * price.unwrap_or(input);
        micro_usd(
            used.uncached_prompt() as f64 * input
                + at(used.cached, self.cached_input_per_mtok)
                + at(used.cache_write, self.cache_write_per_mtok)
                + used.completion as f64 * self.output_per_mtok.unwrap_or(0.0),
        )
    }

    /// The most a request can cost on this member, in micro-USD: every
    /// prompt token at the dearer of the input and cache-write prices.
    pub fn worst_cost(&self, prompt_tokens: u64, requested: Option<u32>) -> u64 {
        let input = self.input_per_mtok.unwrap_or(0.0).max(self.cache_write_per_mtok.unwrap_or(0.0));
        let output = self.output_per_mtok.unwrap_or(0.0);
        cost_micro_usd(prompt_tokens, u64::from(self.worst_output(requested)), input, output)
    }
}

/// What one admitted request holds against its tenant's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Worst-case cost held, in micro-USD (0 when nothing was reserved).
    pub micro_usd: u64,
    /// The prompt estimate it was computed from.
    pub prompt_tokens: u64,
    /// The request's own output limit, if it gave one.
    pub requested_output: Option<u32>,
}

impl Reservation {
    /// The dearest worst case among `candidates`, the members the request may
    /// be served by (every fit member of every stage of its plan).
    pub fn dearest(candidates: impl IntoIterator<Item = Prices>, prompt_tokens: u64, requested: Option<u32>) -> Self {
        let micro_usd = candidates.into_iter().map(|p| p.worst_cost(prompt_tokens, requested)).max().unwrap_or(0);
        Reservation { micro_usd, prompt_tokens, requested_output: requested }
    }

    /// What the request cost on the member that answered: its usage at the
    /// member's prices, else (no usage reported) its worst case there.
    pub fn spent_on(&self, member: Prices, usage: Option<Tokens>) -> u64 {
        match usage {
            Some(used) => member.cost(used),
            None => member.worst_cost(self.prompt_tokens, self.requested_output),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::request::ParsedRequest;
    use crate::api::Endpoint;
    use crate::config::{Config, Member};
    use crate::routing::Plan;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes(), &|_| Some("key".into())).unwrap()
    }

    const CONFIG: &str = r#"{
        "cluster_header": "x-c",
        "providers": {"a": {"kind": "openai", "cluster": "a", "host": "a", "api_key_env": "K"},
                      "b": {"kind": "openai", "cluster": "b", "host": "b", "api_key_env": "K"}},
        "pools": {
            "cheap": {"members": [
                {"provider": "a", "model": "small", "input_cost_per_mtok": 1, "output_cost_per_mtok": 2, "max_output_tokens": 1000},
                {"provider": "b", "model": "free"}],
                "fallback_pools": ["dear"]},
            "dear": {"members": [
                {"provider": "b", "model": "big", "input_cost_per_mtok": 5, "output_cost_per_mtok": 20, "max_output_tokens": 500},
                {"provider": "a", "model": "huge", "input_cost_per_mtok": 100, "output_cost_per_mtok": 100, "context_window": 50}]}
        }
    }"#;

    fn prices(m: &Member) -> Prices {
        m.prices()
    }

    fn reserve(cfg: &Config, body: &str, prompt: u64) -> Reservation {
        let parsed = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let plan = Plan::new(cfg, &parsed, 0).unwrap();
        Reservation::dearest(plan.members_it_may_try(cfg).map(prices), prompt, parsed.max_output_tokens)
    }

    #[test]
    fn cache_reads_and_writes_have_their_own_prices_else_the_input_price() {
        // 10,000 prompt tokens: 6,000 read from the cache, 3,000 written to it, 1,000 neither; 100 out.
        let used = Tokens { cached: Some(6_000), cache_write: Some(3_000), ..Tokens::new(10_000, 100) };
        let mut p = Prices { input_per_mtok: Some(3.0), output_per_mtok: Some(15.0), ..Prices::default() };
        // Unpriced cache: all 10,000 at $3/M (30,000) + 100 at $15/M (1,500).
        assert_eq!(p.cost(used), 31_500);
        p.cached_input_per_mtok = Some(0.3);
        p.cache_write_per_mtok = Some(3.75);
        // 1,000 x 3 + 6,000 x 0.3 + 3,000 x 3.75 + 100 x 15 = 3,000 + 1,800 + 11,250 + 1,500.
        assert_eq!(p.cost(used), 17_550);
        assert!(p.priced() && !Prices::default().priced());
        // The worst case prices every prompt token as a cache write, the dearer.
        assert_eq!(p.worst_cost(1_000, Some(0)), 3_750);
        // A budget settles at the same prices.
        assert_eq!(Reservation::dearest([p], 10_000, Some(100)).spent_on(p, Some(used)), 17_550);
    }

    #[test]
    fn worst_output_is_requested_else_the_members_limit_else_the_default() {
        let mut p = Prices { output_per_mtok: Some(10.0), ..Prices::default() };
        assert_eq!(p.worst_output(Some(7)), 7);
        assert_eq!(p.worst_output(None), DEFAULT_RESERVED_OUTPUT_TOKENS);
        p.max_output_tokens = Some(300);
        assert_eq!(p.worst_output(None), 300);
        // 1,000 prompt tokens at $0 and 300 output at $10/M: $0.003.
        assert_eq!(p.worst_cost(1_000, None), 3_000);
        assert_eq!(Prices::default().worst_cost(1_000_000, Some(1_000_000)), 0);
        assert_eq!(Reservation::dearest([], 5, None).micro_usd, 0);
    }

    #[test]
    fn the_dearest_member_the_plan_may_try_is_reserved() {
        let cfg = config(CONFIG);
        // Prompt 1,000 tokens, max_tokens 100: small $0.0012, big $0.007; huge
        // ($0.11) cannot take 100 output tokens in a 50-token window: not a candidate.
        let r =
            reserve(&cfg, r#"{"model":"cheap","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#, 1_000);
        assert_eq!(r, Reservation { micro_usd: 7_000, prompt_tokens: 1_000, requested_output: Some(100) });
        // Without max_tokens each member's own limit, else the default: `huge` now fits the
        // short prompt and may take 4,096 output tokens, 5,096 x $100/M = $0.5096.
        let short = r#"{"model":"cheap","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(reserve(&cfg, short, 1_000).micro_usd, 509_600);
        // Restricted to the cheap pool's members (no fallback pools): `small`'s 1,000 x $2/M + $0.001.
        let mut cheap_only = cfg.clone();
        if let Some(p) = cheap_only.pools.iter_mut().find(|p| p.name == "cheap") {
            p.fallback_pools.clear();
        }
        assert_eq!(reserve(&cheap_only, short, 1_000).micro_usd, 3_000);
        // Asking for more than `big` or `small` gives: only the unpriced member remains.
        assert_eq!(reserve(&cfg, r#"{"model":"free","messages":[],"max_tokens":5000}"#, 10).micro_usd, 0);
    }

    #[test]
    fn spend_is_the_usage_else_the_worst_case_on_the_member_that_answered() {
        let big = Prices {
            input_per_mtok: Some(5.0),
            output_per_mtok: Some(20.0),
            max_output_tokens: Some(500),
            ..Prices::default()
        };
        let r = Reservation { micro_usd: 7_000, prompt_tokens: 1_000, requested_output: Some(100) };
        // 400 prompt and 50 completion tokens: $0.002 + $0.001.
        assert_eq!(r.spent_on(big, Some(Tokens::new(400, 50))), 3_000);
        assert_eq!(r.spent_on(big, None), 7_000);
        let open = Reservation { requested_output: None, ..r };
        assert_eq!(open.spent_on(big, None), 15_000);
    }
}
