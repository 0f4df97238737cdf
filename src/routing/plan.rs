//! One client request's route through pools: the target pool, then its
//! `fallback_pools`, then the request's own `fallback` list. Tracks attempts
//! so failover never re-picks a member that already failed this request.

use crate::api::request::ParsedRequest;
use crate::api::ApiError;
use crate::config::{Config, Member, Pool};

use super::{pick, Availability};

/// One upstream attempt and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub pool: usize,
    pub member: usize,
    pub member_id: String,
    /// HTTP status, or 0 when no response came (reset, connect failure, timeout).
    pub status: u16,
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
    pub attempts: Vec<Attempt>,
    /// Absolute deadline, ms since the epoch.
    pub deadline_ms: u64,
}

impl Plan {
    /// Resolves the request's target and fallbacks. Unknown names are errors
    /// (404), never silently skipped.
    pub fn new(config: &Config, request: &ParsedRequest<'_>, now_ms: u64) -> Result<Plan, ApiError> {
        let (primary, pool) = config.pool(&request.target).ok_or_else(|| ApiError::model_not_found(&request.target))?;
        let provider = match &request.provider {
            None => None,
            Some(name) => {
                let index = config.providers.iter().position(|p| &p.name == name).ok_or_else(|| {
                    ApiError::invalid_request(
                        "invalid_provider",
                        format!("Unknown provider `{name}`; use \"pool\" or a configured provider name."),
                    )
                })?;
                if !pool.members.iter().any(|m| m.provider == index) {
                    return Err(ApiError::invalid_request(
                        "invalid_provider",
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
            let (index, _) = config.pool(name).ok_or_else(|| {
                let mut e = ApiError::model_not_found(name);
                e.message = format!("The fallback model `{name}` does not exist: it is neither a pool nor a model served by this gateway.");
                e
            })?;
            if !pools.contains(&index) {
                pools.push(index);
            }
        }
        Ok(Plan {
            pools,
            stage: 0,
            stage_attempts: 0,
            provider,
            attempts: Vec::new(),
            deadline_ms: now_ms.saturating_add(pool.retry.timeout_ms),
        })
    }

    pub fn primary_pool(&self) -> usize {
        self.pools.first().copied().unwrap_or(0)
    }

    /// Chooses the next member to try, or `None` when every stage is exhausted.
    /// `availability(pool, member)` reports health.
    pub fn next(
        &mut self,
        config: &Config,
        availability: impl Fn(&Member) -> Availability,
        random: u64,
    ) -> Option<(usize, usize)> {
        while let Some(&pool_index) = self.pools.get(self.stage) {
            let Some(pool) = config.pool_at(pool_index) else {
                self.advance();
                continue;
            };
            if self.stage_attempts < pool.retry.max_attempts {
                let excluded = self.excluded(pool);
                if let Some(member) = pick(
                    &pool.members,
                    &excluded,
                    |i| pool.members.get(i).map_or(Availability::Unavailable { until_ms: u64::MAX }, &availability),
                    random,
                ) {
                    self.stage_attempts += 1;
                    return Some((pool_index, member));
                }
            }
            self.advance();
        }
        None
    }

    fn advance(&mut self) {
        self.stage += 1;
        self.stage_attempts = 0;
        // The provider restriction applies to the requested pool only.
        self.provider = None;
    }

    /// Members not to pick: other providers' (when restricted) and any member
    /// that already took an attempt of this request, in any pool.
    fn excluded(&self, pool: &Pool) -> Vec<usize> {
        pool.members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                self.provider.is_some_and(|p| p != m.provider) || self.attempts.iter().any(|a| a.member_id == m.id)
            })
            .map(|(i, _)| i)
            .collect()
    }

    pub fn record(&mut self, config: &Config, pool: usize, member: usize, status: u16) {
        let member_id =
            config.pool_at(pool).and_then(|p| p.members.get(member)).map(|m| m.id.clone()).unwrap_or_default();
        self.attempts.push(Attempt { pool, member, member_id, status });
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
        let tried = if self.attempts.is_empty() { "no member could be tried".to_string() } else { self.summary() };
        ApiError::unavailable(format!(
            "All upstreams for `{target}` failed ({} attempt{}): {tried}.",
            self.attempts.len(),
            if self.attempts.len() == 1 { "" } else { "s" }
        ))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::api::Endpoint;
    use crate::config::tests::ENV;

    fn config() -> Config {
        let json = r#"{
          "providers": {
            "a": {"cluster": "a", "host": "a", "api_key_env": "ALPHA_KEY"},
            "b": {"cluster": "b", "host": "b", "api_key_env": "BETA_KEY"}
          },
          "pools": {
            "main": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}], "max_attempts": 2, "fallback_pools": ["backup"]},
            "backup": {"members": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m3"}]},
            "other": {"members": [{"provider": "b", "model": "m4"}]}
          }
        }"#;
        Config::parse(json.as_bytes(), &ENV).unwrap()
    }

    fn plan_for(cfg: &Config, body: &str) -> Result<Plan, ApiError> {
        let body = body.to_string();
        let req = ParsedRequest::parse(body.as_bytes(), Endpoint::ChatCompletions)?;
        Plan::new(cfg, &req, 1_000)
    }

    fn id(cfg: &Config, (p, m): (usize, usize)) -> String {
        cfg.pool_at(p).unwrap().members[m].id.clone()
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
}
