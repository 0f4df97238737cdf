//! One client request's route: resolve the requested name (router -> pool,
//! pool, or direct model), then per stage (the pool, its `fallback_pools`,
//! the request's `fallback` list) the candidate members (filters), then the
//! pool's strategy picks one. Tracks attempts so failover never re-picks a
//! member that already failed this request.

use crate::api::ErrorCode;
use std::fmt;

use crate::api::request::ParsedRequest;
use crate::api::ApiError;
use crate::config::{Config, Member, MemberRef, Pool, Strategy, Target};

use super::filter::{self, NativeOnly, Needs, Unfit};
use super::health::Availability;
use super::router::{self, Headers, LearnedScorer, Miss, RouteChoice};
use super::select::{self, Candidate, LatencyKind, LiveStats};

/// Header carrying the tags a request's members must have.
pub const REQUIRE_TAGS_HEADER: &str = "x-switchboard-require-tags";
/// Header naming the parameters members may drop rather than refuse (`true` for all).
pub const DROP_PARAMS_HEADER: &str = "x-switchboard-drop-params";
/// Output tokens assumed for a cost estimate when neither the request nor the pool bounds them.
pub const DEFAULT_EXPECTED_OUTPUT_TOKENS: u32 = 256;

/// One upstream attempt and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub pool: usize,
    pub member: usize,
    pub member_id: String,
    /// HTTP status, or 0 when no response came (reset, connect failure, timeout).
    pub status: u16,
}

impl Attempt {
    pub fn at(&self) -> MemberRef {
        MemberRef::new(self.pool, self.member)
    }
}

/// What routing reads from a request besides its body.
#[derive(Clone, Copy)]
pub struct RouteInput<'r, 'a> {
    pub request: &'r ParsedRequest<'a>,
    /// Request headers by lower-case name (rule conditions, `x-switchboard-require-tags`).
    pub headers: Headers<'r>,
    /// The host's learned scorer, for `learned` routers.
    pub scorer: Option<&'r dyn LearnedScorer>,
    /// Kinds that get a front door's own body (`api::params::kind_bit`s).
    pub native_kinds: u8,
}

impl<'r, 'a> RouteInput<'r, 'a> {
    pub fn new(request: &'r ParsedRequest<'a>) -> Self {
        RouteInput { request, headers: &router::NoHeaders, scorer: None, native_kinds: 0 }
    }
}

/// Why a member of a stage is or is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Candidate,
    /// Already attempted by this request (in any pool).
    Tried,
    /// The request restricted the pool to another provider.
    OtherProvider,
    Unfit(Unfit),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Candidate => f.write_str("kept"),
            Verdict::Tried => f.write_str("dropped: already tried"),
            Verdict::OtherProvider => f.write_str("dropped: request restricted to another provider"),
            Verdict::Unfit(u) => write!(f, "dropped: {u}"),
        }
    }
}

/// One stage as the plan sees it now: every member's verdict, the
/// candidates with their live facts, and the strategy's order.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub pool: usize,
    pub verdicts: Vec<(usize, Verdict)>,
    pub candidates: Vec<Candidate>,
    /// Member indexes, most preferred first.
    pub ranking: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Pool indexes in the order they are tried.
    pools: Vec<usize>,
    /// Position in `pools`.
    stage: usize,
    /// Attempts made in the current stage.
    stage_attempts: u32,
    /// Restrict members to this provider index (`"provider": "<name>"`).
    provider: Option<usize>,
    needs: Needs,
    stream: bool,
    /// Set when the requested name is a router.
    pub route: Option<RouteChoice>,
    pub attempts: Vec<Attempt>,
    /// Members not tried because they were ejected or held (their stage was
    /// passed over with none usable): when they are back says when to retry.
    pub passed_over: Vec<MemberRef>,
    /// Absolute deadline, ms since the epoch.
    pub deadline_ms: u64,
}

fn unknown_fallback(config: &Config, name: &str) -> ApiError {
    let mut e = config.unknown_target(name, "fallback");
    if e.code == ErrorCode::ModelNotFound {
        e.message = format!(
            "The fallback model `{name}` does not exist: it is neither a pool nor a model served by this gateway."
        );
    }
    e
}

impl Plan {
    /// A plan from the body alone (no headers, no learned scorer).
    pub fn new(config: &Config, request: &ParsedRequest<'_>, now_ms: u64) -> Result<Plan, ApiError> {
        Plan::for_request(config, RouteInput::new(request), now_ms)
    }

    /// Resolves the request's target (through its router, if it names one) and
    /// fallbacks, and checks that some stage has a member fit for the request.
    /// Unknown names are errors (404), never silently skipped; a request no
    /// member can serve is a 400 naming why.
    pub fn for_request(config: &Config, input: RouteInput<'_, '_>, now_ms: u64) -> Result<Plan, ApiError> {
        Plan::build(config, input, now_ms, |_, _, _| {})
    }

    /// As [`Plan::for_request`]; `missed(router, rule, why)` hears why each
    /// rule before the chosen one did not match (explanations).
    pub fn build<'r>(
        config: &'r Config,
        input: RouteInput<'r, '_>,
        now_ms: u64,
        mut missed: impl FnMut(usize, usize, Miss<'r>),
    ) -> Result<Plan, ApiError> {
        let request = input.request;
        let resolve = |name: &str, missed: &mut dyn FnMut(usize, usize, Miss<'r>)| match config.target(name)? {
            Target::Pool(p) => Some((p, None)),
            Target::Router(r) => {
                let router = config.router_at(r)?;
                let choice =
                    router::route(r, router, request, input.headers, input.scorer, |rule, why| missed(r, rule, why));
                Some((choice.pool, Some(choice)))
            }
        };
        let (primary, route) =
            resolve(&request.target, &mut missed).ok_or_else(|| config.unknown_target(&request.target, "model"))?;
        let pool = config.pool_at(primary).ok_or_else(|| config.unknown_target(&request.target, "model"))?;
        let provider = match &request.provider {
            None => None,
            Some(name) => {
                let index = config.providers.iter().position(|p| &p.name == name).ok_or_else(|| {
                    ApiError::invalid_request(
                        ErrorCode::InvalidProvider,
                        format!("Unknown provider `{name}`; use \"pool\" or a configured provider name."),
                    )
                })?;
                if !pool.members.iter().any(|m| m.provider == index) {
                    return Err(ApiError::invalid_request(
                        ErrorCode::InvalidProvider,
                        format!("`{}` has no member from provider `{name}`.", request.target),
                    ));
                }
                Some(index)
            }
        };
        let mut pools = vec![primary];
        for &f in &pool.fallback_pools {
            if !pools.contains(&f) {
                pools.push(f);
            }
        }
        for name in &request.fallback {
            let (index, _) = resolve(name, &mut |_, _, _| {}).ok_or_else(|| unknown_fallback(config, name))?;
            if !pools.contains(&index) {
                pools.push(index);
            }
        }
        let tags = input.headers.header(REQUIRE_TAGS_HEADER);
        let mut needs = Needs::of(config, request, tags);
        needs.native_kinds = input.native_kinds;
        if let Some(names) = input.headers.header(DROP_PARAMS_HEADER) {
            needs.drop = crate::api::params::drop_mask(&mut names.split(',')).map_err(|name| {
                ApiError::invalid_request(
                    ErrorCode::InvalidValue,
                    format!("{DROP_PARAMS_HEADER}: `{name}` is not a parameter the gateway knows; name chat parameters, or send `true`."),
                )
            })?;
        }
        let plan = Plan {
            pools,
            stage: 0,
            stage_attempts: 0,
            provider,
            needs,
            stream: request.stream,
            route,
            attempts: Vec::new(),
            passed_over: Vec::new(),
            deadline_ms: now_ms.saturating_add(pool.retry.timeout_ms),
        };
        plan.check_fit(config, &request.target)?;
        Ok(plan)
    }

    /// Keeps the request on members of providers of some kinds (a feature only
    /// they serve): the others become unfit, and a 400 naming the feature when
    /// no stage has such a member.
    pub fn require_native(&mut self, config: &Config, native: NativeOnly, target: &str) -> Result<(), ApiError> {
        self.needs.native_only = Some(native);
        self.check_fit(config, target)
    }

    /// Some stage must have a member fit for the request; else the 400 that says why.
    fn check_fit(&self, config: &Config, target: &str) -> Result<(), ApiError> {
        let mut unfit: Vec<(&str, Unfit)> = Vec::new();
        for (stage, &p) in self.pools.iter().enumerate() {
            let Some(pool) = config.pool_at(p) else { continue };
            for m in &pool.members {
                if stage == 0 && self.provider.is_some_and(|provider| provider != m.provider) {
                    continue;
                }
                match filter::check(m, pool, &self.needs) {
                    Ok(()) => return Ok(()),
                    Err(u) => {
                        if !unfit.iter().any(|(id, _)| *id == m.id) {
                            unfit.push((&m.id, u));
                        }
                    }
                }
            }
        }
        Err(filter::no_fit_error(target, &self.needs, &unfit))
    }

    pub fn primary_pool(&self) -> usize {
        self.pools.first().copied().unwrap_or(0)
    }

    /// What the request needs from members.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// Pool indexes in the order they are tried.
    pub fn stages(&self) -> &[usize] {
        &self.pools
    }

    /// Every member this plan may try, in any stage: those fit for the
    /// request, health aside (it can change before a failover). What a
    /// tenant's budget reserves for (the dearest of them).
    pub fn members_it_may_try<'c>(&'c self, config: &'c Config) -> impl Iterator<Item = &'c Member> + 'c {
        let pools = self.pools.iter().filter_map(|&p| config.pool_at(p));
        pools.flat_map(move |pool| pool.members.iter().filter(move |m| filter::check(m, pool, &self.needs).is_ok()))
    }

    /// `(router, rule)` names for answer headers (`x-switchboard-router`,
    /// `x-switchboard-rule`) when the request named a router.
    pub fn router_headers<'c>(&self, config: &'c Config) -> Option<(&'c str, &'c str)> {
        let choice = self.route?;
        let router = config.router_at(choice.router)?;
        Some((&router.name, choice.rule_name(router)))
    }

    /// Chooses the next member to try, or `None` when every stage is exhausted.
    pub fn next_member(&mut self, config: &Config, stats: &impl LiveStats, random: u64) -> Option<MemberRef> {
        let mut candidates = Vec::new();
        while let Some(&pool_index) = self.pools.get(self.stage) {
            let Some(pool) = config.pool_at(pool_index) else {
                self.advance();
                continue;
            };
            if self.stage_attempts < pool.retry.max_attempts {
                candidates.clear();
                self.candidates(pool, stats, &mut candidates, |_, _| {});
                let picked = select::pick(pool.strategy, pool.explore, &candidates, random);
                if let Some(c) = picked.and_then(|i| candidates.get(i)) {
                    self.stage_attempts += 1;
                    return Some(MemberRef::new(pool_index, c.member));
                }
                // None usable: every candidate is ejected or held.
                self.passed_over.extend(candidates.iter().map(|c| MemberRef::new(pool_index, c.member)));
            }
            self.advance();
        }
        None
    }

    /// [`Plan::next_member`] as a `(pool, member)` pair, with health-only stats.
    pub fn next(
        &mut self,
        config: &Config,
        availability: impl Fn(&Member) -> Availability,
        random: u64,
    ) -> Option<(usize, usize)> {
        self.next_member(config, &availability, random).map(|r| (r.pool, r.member))
    }

    fn advance(&mut self) {
        self.stage += 1;
        self.stage_attempts = 0;
        // The provider restriction applies to the requested pool only.
        self.provider = None;
    }

    /// The members of `pool` this request may use now, with what its strategy
    /// looks at; `note` hears every member's verdict.
    fn candidates(
        &self,
        pool: &Pool,
        stats: &impl LiveStats,
        out: &mut Vec<Candidate>,
        mut note: impl FnMut(usize, Verdict),
    ) {
        out.reserve(pool.members.len());
        let kind = if self.stream { LatencyKind::FirstByte } else { LatencyKind::PerOutputToken };
        let output = self.needs.output_in(pool);
        for (index, m) in pool.members.iter().enumerate() {
            let verdict = if self.provider.is_some_and(|p| p != m.provider) {
                Verdict::OtherProvider
            } else if self.attempts.iter().any(|a| a.member_id == m.id) {
                Verdict::Tried
            } else if let Err(u) = filter::check(m, pool, &self.needs) {
                Verdict::Unfit(u)
            } else {
                Verdict::Candidate
            };
            note(index, verdict);
            if verdict != Verdict::Candidate {
                continue;
            }
            let mut c = Candidate {
                member: index,
                weight: if m.canary.is_some() && stats.rolled_back(m) { 0 } else { m.weight },
                availability: stats.availability(m),
                in_flight: 0,
                latency_ms: None,
                cost: None,
                priority: m.priority,
            };
            // Only what the strategy reads: live stats can cost a shared-data read.
            match pool.strategy {
                Strategy::LeastBusy => c.in_flight = stats.in_flight(m),
                Strategy::LowestLatency => c.latency_ms = stats.latency_ms(m, kind),
                Strategy::LowestCost => {
                    let prompt = f64::from(self.needs.prompt_tokens.unwrap_or(0));
                    let output = if output == 0 { DEFAULT_EXPECTED_OUTPUT_TOKENS } else { output };
                    c.cost = match (m.input_cost_per_mtok, m.output_cost_per_mtok) {
                        (Some(i), Some(o)) => Some((prompt * i + f64::from(output) * o) / 1e6),
                        _ => None,
                    };
                }
                Strategy::Weighted | Strategy::Priority => {}
            }
            out.push(c);
        }
    }

    /// Every stage still ahead (the current one first), as the next pick would see it.
    pub fn explain(&self, config: &Config, stats: &impl LiveStats) -> Vec<StageReport> {
        let mut reports = Vec::new();
        for (offset, &pool_index) in self.pools.iter().enumerate().skip(self.stage) {
            let Some(pool) = config.pool_at(pool_index) else { continue };
            // Later stages lift the provider restriction, as `advance` does.
            let view = Plan { provider: if offset == self.stage { self.provider } else { None }, ..self.clone() };
            let mut verdicts = Vec::with_capacity(pool.members.len());
            let mut candidates = Vec::new();
            view.candidates(pool, stats, &mut candidates, |i, v| verdicts.push((i, v)));
            let ranking = select::rank(pool.strategy, &candidates)
                .into_iter()
                .filter_map(|i| candidates.get(i).map(|c| c.member))
                .collect();
            reports.push(StageReport { pool: pool_index, verdicts, candidates, ranking });
        }
        reports
    }

    pub fn record_attempt(&mut self, config: &Config, at: MemberRef, status: u16) {
        let member_id = config.member(at).map(|m| m.id.clone()).unwrap_or_default();
        self.attempts.push(Attempt { pool: at.pool, member: at.member, member_id, status });
    }

    /// [`Plan::record_attempt`] with a `(pool, member)` pair.
    pub fn record(&mut self, config: &Config, pool: usize, member: usize, status: u16) {
        self.record_attempt(config, MemberRef::new(pool, member), status);
    }

    /// `member:status` pairs, e.g. `alpha/gpt-4o:503,beta/gpt-4o:200`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&a.member_id);
            out.push(':');
            if a.status == 0 {
                out.push_str("no_response");
            } else {
                out.push_str(&a.status.to_string());
            }
        }
        out
    }

    /// The answer when every attempt failed: 503 listing what was tried.
    pub fn exhausted_error(&self, target: &str) -> ApiError {
        let tried = match (self.attempts.is_empty(), self.passed_over.is_empty()) {
            (true, true) => "no member could be tried".to_string(),
            (true, false) => "every member is ejected or held back by its provider's Retry-After".to_string(),
            (false, true) => self.summary(),
            (false, false) => format!("{}; the others are ejected or held back", self.summary()),
        };
        ApiError::unavailable(format!(
            "All upstreams for `{target}` failed ({} attempt{}): {tried}.",
            self.attempts.len(),
            if self.attempts.len() == 1 { "" } else { "s" }
        ))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::api::Endpoint;
    use crate::config::tests::ENV;

    /// A configuration with providers `a` and `b` and the given pools (and more top-level entries).
    fn two_providers(pools_and_more: &str) -> Config {
        let json = format!(
            r#"{{"providers": {{
                  "a": {{"cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"}},
                  "b": {{"cluster": "b", "host": "b", "api_key_env": "BETA_KEY"}}
                }}, {pools_and_more}}}"#
        );
        Config::parse(json.as_bytes(), &ENV).unwrap()
    }

    fn config() -> Config {
        two_providers(
            r#""pools": {
            "main": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}], "max_attempts": 2, "fallback_pools": ["backup"]},
            "backup": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m3"}]},
            "other": {"members": [{"provider": "b", "model": "m4"}]}
          }"#,
        )
    }

    fn plan_for(cfg: &Config, body: &str) -> Result<Plan, ApiError> {
        let body = body.to_string();
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions)?;
        Plan::new(cfg, &req, 1_000)
    }

    fn id(cfg: &Config, (p, m): (usize, usize)) -> String {
        cfg.resolve(MemberRef::new(p, m)).unwrap().1.id.clone()
    }

    #[test]
    fn fails_over_within_pool_then_fallback_pools_then_request_fallbacks() {
        let cfg = config();
        let mut plan = plan_for(&cfg, r#"{"model":"main","messages":[],"fallback":["other"]}"#).unwrap();
        let mut order = Vec::new();
        while let Some((p, m)) = plan.next(&cfg, |_| Availability::Healthy, 0) {
            order.push(id(&cfg, (p, m)));
            plan.record(&cfg, p, m, 503);
        }
        // a/m1 tried in main is not retried in backup.
        assert_eq!(order, vec!["a/m1", "b/m2", "b/m3", "b/m4"]);
        let e = plan.exhausted_error("main");
        assert_eq!(e.status, 503);
        assert!(e.message.contains("a/m1:503,b/m2:503,b/m3:503,b/m4:503"), "{}", e.message);
    }

    #[test]
    fn max_attempts_bounds_each_stage() {
        let cfg = config();
        let mut plan = plan_for(&cfg, r#"{"model":"other","messages":[]}"#).unwrap();
        let first = plan.next(&cfg, |_| Availability::Healthy, 0).unwrap();
        plan.record(&cfg, first.0, first.1, 0);
        assert_eq!(plan.next(&cfg, |_| Availability::Healthy, 0), None);
        assert!(plan.exhausted_error("other").message.contains("b/m4:no_response"));
    }

    #[test]
    fn unknown_target_or_fallback_is_404() {
        let cfg = config();
        assert_eq!(plan_for(&cfg, r#"{"model":"nope","messages":[]}"#).unwrap_err().code, "model_not_found");
        let e = plan_for(&cfg, r#"{"model":"main","messages":[],"fallback":["nope"]}"#).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("fallback"));
    }

    #[test]
    fn provider_restricts_members_of_requested_pool() {
        let cfg = config();
        let mut plan = plan_for(&cfg, r#"{"model":"main","provider":"b","messages":[]}"#).unwrap();
        for _ in 0..20 {
            let mut p = plan.clone();
            assert_eq!(id(&cfg, p.next(&cfg, |_| Availability::Healthy, 12345).unwrap()), "b/m2");
        }
        let first = plan.next(&cfg, |_| Availability::Healthy, 1).unwrap();
        plan.record(&cfg, first.0, first.1, 500);
        // Restriction lifted for fallback pools.
        assert_eq!(id(&cfg, plan.next(&cfg, |_| Availability::Healthy, 0).unwrap()), "a/m1");
        assert_eq!(
            plan_for(&cfg, r#"{"model":"other","provider":"a","messages":[]}"#).unwrap_err().code,
            "invalid_provider"
        );
        assert_eq!(
            plan_for(&cfg, r#"{"model":"other","provider":"zzz","messages":[]}"#).unwrap_err().code,
            "invalid_provider"
        );
    }

    #[test]
    fn direct_model_names_route() {
        let cfg = config();
        let mut plan = plan_for(&cfg, r#"{"model":"m4","messages":[]}"#).unwrap();
        assert_eq!(id(&cfg, plan.next(&cfg, |_| Availability::Healthy, 0).unwrap()), "b/m4");
    }

    fn facts_config() -> Config {
        two_providers(
            r#""pools": {
            "small": {"members": [
                {"provider": "a", "model": "s8k", "context_window": 8000, "capabilities": [], "tags": ["eu"]},
                {"provider": "b", "model": "s8k-vision", "context_window": 8000, "capabilities": ["vision"]}
              ], "fallback_pools": ["large"]},
            "large": {"members": [{"provider": "b", "model": "l128k", "context_window": 128000, "tags": ["eu"]}]},
            "tiny": {"members": [{"provider": "a", "model": "t1k", "context_window": 1000, "capabilities": []}]},
            "tiers": {"strategy": "priority", "members": [
                {"provider": "a", "model": "primary", "priority": 0},
                {"provider": "b", "model": "secondary", "priority": 1}
              ]}
          },
          "routers": {"auto": {"rules": [
              {"name": "images", "when": {"has_images": true}, "pool": "small"},
              {"name": "confidential", "when": {"header": {"name": "x-data-class", "equals": "confidential"}}, "pool": "tiers"}
            ], "default": "tiny"}}"#,
        )
    }

    fn prompt_of(words: usize) -> String {
        format!(r#"{{"role":"user","content":"{}"}}"#, "word ".repeat(words))
    }

    fn ids(cfg: &Config, plan: &mut Plan) -> Vec<String> {
        let mut order = Vec::new();
        while let Some(at) = plan.next_member(cfg, &|_: &Member| Availability::Healthy, 3) {
            order.push(cfg.member(at).unwrap().id.clone());
            plan.record_attempt(cfg, at, 503);
        }
        order
    }

    #[test]
    fn filtered_members_are_not_attempts_and_fallback_pools_catch_long_prompts() {
        let cfg = facts_config();
        let body = format!(r#"{{"model":"small","messages":[{}]}}"#, prompt_of(20_000));
        let mut plan = plan_for(&cfg, &body).unwrap();
        assert!(plan.needs().prompt_tokens.unwrap() > 8000);
        assert_eq!(ids(&cfg, &mut plan), vec!["b/l128k"]);
        assert_eq!(plan.attempts.len(), 1, "the 8k members were never attempts");
    }

    #[test]
    fn nothing_fits_is_400_with_the_reason_code() {
        let cfg = facts_config();
        let body = format!(r#"{{"model":"tiny","messages":[{}]}}"#, prompt_of(5_000));
        let e = plan_for(&cfg, &body).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "context_length_exceeded"), "{}", e.message);
        // ... unless the request's own fallback can take it.
        let body = format!(r#"{{"model":"tiny","messages":[{}],"fallback":["large"]}}"#, prompt_of(5_000));
        assert!(plan_for(&cfg, &body).is_ok());
        let e = plan_for(&cfg, r#"{"model":"tiny","messages":[],"tools":[{"type":"function"}]}"#).unwrap_err();
        assert_eq!(e.code, "unsupported_parameter");
    }

    #[test]
    fn image_requests_skip_members_without_vision() {
        let cfg = facts_config();
        let body = r#"{"model":"small","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        for r in 0..50 {
            let mut plan = plan_for(&cfg, body).unwrap();
            let at = plan.next_member(&cfg, &|_: &Member| Availability::Healthy, r).unwrap();
            assert_eq!(cfg.member(at).unwrap().id, "b/s8k-vision");
        }
    }

    #[test]
    fn require_tags_header_narrows_members() {
        let cfg = facts_config();
        let req = ParsedRequest::parse(br#"{"model":"small","messages":[]}"#, Endpoint::ChatCompletions).unwrap();
        let headers = [(REQUIRE_TAGS_HEADER, "eu")];
        let input = RouteInput { request: &req, headers: &headers, scorer: None, native_kinds: 0 };
        let mut plan = Plan::for_request(&cfg, input, 0).unwrap();
        assert_eq!(ids(&cfg, &mut plan), vec!["a/s8k", "b/l128k"]);
        let headers = [(REQUIRE_TAGS_HEADER, "onprem")];
        let input = RouteInput { request: &req, headers: &headers, scorer: None, native_kinds: 0 };
        assert_eq!(Plan::for_request(&cfg, input, 0).unwrap_err().code, "no_member_with_tags");
    }

    #[test]
    fn priority_pool_fails_over_to_the_next_tier() {
        let cfg = facts_config();
        let mut plan = plan_for(&cfg, r#"{"model":"tiers","messages":[]}"#).unwrap();
        assert_eq!(ids(&cfg, &mut plan), vec!["a/primary", "b/secondary"]);
    }

    #[test]
    fn routers_choose_the_pool_and_name_the_rule() {
        let cfg = facts_config();
        let req = ParsedRequest::parse(br#"{"model":"auto","messages":[]}"#, Endpoint::ChatCompletions).unwrap();
        let headers = [("X-Data-Class", "confidential")];
        let mut misses = Vec::new();
        let input = RouteInput { request: &req, headers: &headers, scorer: None, native_kinds: 0 };
        let mut plan = Plan::build(&cfg, input, 0, |r, rule, why| misses.push((r, rule, why))).unwrap();
        assert_eq!(plan.router_headers(&cfg), Some(("auto", "confidential")));
        assert_eq!(misses, vec![(0, 0, Miss::HasImages { images: 0 })]);
        assert_eq!(ids(&cfg, &mut plan)[0], "a/primary");
        let mut plan = plan_for(&cfg, r#"{"model":"auto","messages":[]}"#).unwrap();
        assert_eq!(plan.router_headers(&cfg), Some(("auto", "default")));
        assert_eq!(ids(&cfg, &mut plan), vec!["a/t1k"]);
        // Direct pools carry no router headers.
        assert_eq!(plan_for(&cfg, r#"{"model":"tiny","messages":[]}"#).unwrap().router_headers(&cfg), None);
    }

    #[test]
    fn explain_reports_every_member_and_the_ranking() {
        let cfg = facts_config();
        let body = format!(r#"{{"model":"small","messages":[{}]}}"#, prompt_of(20_000));
        let mut plan = plan_for(&cfg, &body).unwrap();
        let reports = plan.explain(&cfg, &|_: &Member| Availability::Healthy);
        assert_eq!(reports.len(), 2);
        assert!(reports[0].verdicts.iter().all(|(_, v)| matches!(v, Verdict::Unfit(Unfit::Context { .. }))));
        assert!(reports[0].ranking.is_empty());
        assert_eq!(reports[1].verdicts, vec![(0, Verdict::Candidate)]);
        assert_eq!(reports[1].ranking, vec![0]);
        let at = plan.next_member(&cfg, &|_: &Member| Availability::Healthy, 0).unwrap();
        plan.record_attempt(&cfg, at, 500);
        let reports = plan.explain(&cfg, &|_: &Member| Availability::Healthy);
        assert_eq!(reports.last().unwrap().verdicts, vec![(0, Verdict::Tried)]);
    }

    struct Busy;
    impl LiveStats for Busy {
        fn availability(&self, _: &Member) -> Availability {
            Availability::Healthy
        }
        fn in_flight(&self, m: &Member) -> u32 {
            if m.id == "a/m1" {
                9
            } else {
                0
            }
        }
    }

    #[test]
    fn live_stats_reach_the_strategy() {
        let cfg = two_providers(
            r#""pools": {"p": {"strategy": "least_busy", "members": [{"provider": "a", "model": "m1", "weight": 100}, {"provider": "b", "model": "m2"}]}}"#,
        );
        for r in 0..20 {
            let mut plan = plan_for(&cfg, r#"{"model":"p","messages":[]}"#).unwrap();
            assert_eq!(cfg.member(plan.next_member(&cfg, &Busy, r).unwrap()).unwrap().id, "b/m2");
        }
    }
}
