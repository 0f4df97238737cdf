//! Root context: loads configuration (refusing invalid configuration at load),
//! creates one HTTP context per request, and on each tick hands counters to
//! Envoy, refreshes health gauges and runs the active probes.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::Config;
use crate::routing::Availability;

use super::filter::Filter;
use super::metrics::set_gauge;
use super::probes::Prober;
use super::runtime::Runtime;
use super::{abi, health_store, shadow, tenant_store, wake};

/// Counters, health gauges and probes run once a second, however finely the root ticks.
const SLOW_TICK_MS: u64 = 1_000;

pub struct Root {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    prober: Prober,
    last_slow_tick_ms: u64,
    tick_ms: u64,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        super::fleet::set_root(context_id);
        Root { context_id, runtime: None, prober: Prober::new(), last_slow_tick_ms: 0, tick_ms: SLOW_TICK_MS }
    }
}

/// Identifies a configuration's text (canary windows start afresh when it changes).
fn fingerprint(raw: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(raw);
    h.finish()
}

/// The tick period: requests' timers are checked on each tick. A hedge
/// starts up to one tick late, so a pool that hedges ticks at a 32nd of its
/// `hedge_after_ms` (at least 5 ms: a fine tick only wakes the requests due);
/// a stream idle limit needs less precision (an eighth, at least 20 ms);
/// shadow copies leave on the tick after their request, within 100 ms;
/// fleet mode polls the fleet every `sync_ms`; learned routers' decisions are
/// published for other workers' feedback within `LEARNED_TICK_MS`; otherwise
/// once a second.
fn tick_period_ms(config: &Config) -> u64 {
    let hedges = config.pools.iter().filter_map(|p| p.retry.hedge_after_ms).map(|ms| (ms / 32).clamp(5, SLOW_TICK_MS));
    let idles =
        config.pools.iter().filter_map(|p| p.retry.stream_idle_timeout_ms).map(|ms| (ms / 8).clamp(20, SLOW_TICK_MS));
    let shadows = config.pools.iter().filter(|p| p.shadow.is_some()).map(|_| SHADOW_TICK_MS);
    let fleet = config.shared_state.iter().map(|s| s.sync_ms.min(SLOW_TICK_MS));
    let learned = config.routers.iter().filter(|r| r.learned.is_some()).map(|_| LEARNED_TICK_MS);
    hedges.chain(idles).chain(shadows).chain(fleet).chain(learned).min().unwrap_or(SLOW_TICK_MS)
}

const SHADOW_TICK_MS: u64 = 100;
/// Below `learning::FEEDBACK_WAIT_MS` less `PUBLISH_AFTER_MS`: a score that
/// reaches another worker first finds its decision after one wait.
const LEARNED_TICK_MS: u64 = 50;

/// Whether the healthy-members gauge counts a member: it is in rotation, or
/// its cooldown has ended and the next request it is picked for goes to it
/// (the half-open trial). Not counted: ejected or held (a provider's
/// `Retry-After`) until a time still to come, or a trial in flight. So the
/// gauge rises on the tick the cooldown ends, not when a request next
/// happens to reach the member; a failed trial ejects it again.
fn in_rotation(availability: Availability) -> bool {
    matches!(availability, Availability::Healthy | Availability::Trial)
}

impl Context for Root {
    /// The plugin is going away (its VM with it): its feedback lane is free at once.
    fn on_done(&mut self) -> bool {
        if let Some(rt) = &self.runtime {
            rt.journal.release(&abi::Data);
        }
        true
    }

    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        if let Some(rt) = &self.runtime {
            if !super::fleet::sync_answered(rt, token_id, num_headers, body_size)
                && !self.prober.on_response(rt, token_id, num_headers)
                && !shadow::answered(rt, token_id, num_headers, body_size)
            {
                wake::call_answered(self.context_id, token_id, num_headers, body_size, num_trailers);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("switchboard: cannot read plugin configuration (status {status})");
                return false;
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        match Config::parse(&raw, &env) {
            Ok(config) => {
                log::info!(
                    "switchboard: configured {} pools ({} direct models), {} providers",
                    config.listed_pools().count(),
                    config.direct_models().count(),
                    config.providers.len()
                );
                let period = tick_period_ms(&config);
                self.tick_ms = period;
                match Runtime::new(config) {
                    Ok(mut rt) => {
                        rt.canary_generation = fingerprint(&raw);
                        // Configured again in place: the lane and its decisions stay.
                        if let Some(old) = &self.runtime {
                            rt.journal = old.journal.clone();
                        }
                        rt.refresh_canaries();
                        self.runtime = Some(Rc::new(rt));
                    }
                    Err(e) => {
                        log::error!("switchboard: {e}");
                        return false;
                    }
                }
                if let Err(status) = abi::set_tick_period_ms(period as u32) {
                    log::warn!("switchboard: cannot set tick period (status {status}); health gauges will not refresh");
                }
                true
            }
            Err(e) => {
                log::error!("switchboard: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(rt) = &self.runtime else { return };
        let Ok(now) = abi::now_ms() else { return };
        wake::tick(self.context_id, now);
        rt.journal.tick(&abi::Data, now);
        shadow::send_queued(rt, now);
        super::fleet::sync(rt, now);
        // Finer ticks run the once-a-second work on the tick that completes a second.
        if self.tick_ms < SLOW_TICK_MS && now.saturating_sub(self.last_slow_tick_ms) + self.tick_ms / 2 < SLOW_TICK_MS {
            return;
        }
        self.last_slow_tick_ms = now;
        rt.flush_successes();
        rt.publish_answers();
        rt.refresh_canaries();
        rt.metrics.flush();
        for (index, pool) in rt.config.pools.iter().enumerate() {
            let healthy = pool.members.iter().filter(|m| in_rotation(health_store::availability(&m.id, now))).count();
            if let Some(pm) = rt.metrics.pool(index) {
                set_gauge(pm.healthy_members, healthy as u64);
            }
        }
        let tenants = rt.config.tenants.iter().flatten();
        for (tenant, stats) in tenants.zip(&rt.metrics.tenants) {
            if stats.budget_spent.is_some() {
                set_gauge(stats.budget_spent, tenant_store::spent_micro_usd(tenant, now / 1000).unwrap_or(0));
            }
        }
        self.prober.tick(rt, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy refuses the plugin, so this is a fallback only.
        let filter = Rc::new(RefCell::new(Filter::new(context_id, self.runtime.clone())));
        filter.borrow_mut().set_handle(wake::Handle::of(&filter));
        Some(Box::new(Shared(filter)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl wake::Woken for Filter {
    fn context_id(&self) -> u32 {
        Filter::context_id(self)
    }

    fn on_timer(&mut self, now: u64) {
        Filter::on_timer(self, now);
    }

    fn on_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        Context::on_http_call_response(self, token, num_headers, body_size, num_trailers);
    }
}

/// The HTTP context Envoy holds: the filter behind an `Rc`, so the root
/// context can reach it for timers and answers.
struct Shared(Rc<RefCell<Filter>>);

impl Shared {
    fn with<T>(&self, fallback: T, run: impl FnOnce(&mut Filter) -> T) -> T {
        match self.0.try_borrow_mut() {
            Ok(mut f) => run(&mut f),
            Err(_) => fallback,
        }
    }
}

impl Context for Shared {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        self.with((), |f| f.on_http_call_response(token_id, num_headers, body_size, num_trailers));
    }
}

impl HttpContext for Shared {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_headers(num_headers, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.with(Action::Continue, |f| f.on_http_request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_response_headers(num_headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| f.on_http_response_body(body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.with((), HttpContext::on_log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::MemberHealth;

    #[test]
    fn a_member_counts_healthy_again_the_moment_its_cooldown_ends() {
        let ejected = MemberHealth { ejected_until_ms: 10_000, ejections: 1, ..MemberHealth::default() };
        assert!(in_rotation(MemberHealth::default().availability(5_000)));
        assert!(!in_rotation(ejected.availability(9_999)), "ejected");
        assert!(in_rotation(ejected.availability(10_000)), "cooldown over: offered the next request");
        let trying = MemberHealth { trial_until_ms: 12_000, ..ejected };
        assert!(!in_rotation(trying.availability(11_000)), "a trial in flight is not yet a recovery");
        assert!(in_rotation(trying.availability(12_000)));
    }
}
