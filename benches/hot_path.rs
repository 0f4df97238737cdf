//! Per-request pure work of the filter, natively: what switchboard computes for
//! every chat completion before Envoy forwards it (no proxy-wasm host calls).
//!
//!     cargo bench --bench hot_path
//!     cargo bench --bench hot_path -- parse      # one group
//!
//! Native numbers are a lower bound: in Envoy the same code runs as wasm under V8
//! (typically 1.3-2x slower), plus the host calls that copy headers and the body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::hint::black_box;

    use criterion::{BatchSize, Criterion, Throughput};
    use switchboard::api::request::ParsedRequest;
    use switchboard::api::Endpoint;
    use switchboard::config::{Config, Member};
    use switchboard::providers::{build_request, BuildContext};
    use switchboard::routing::plan::REQUIRE_TAGS_HEADER;
    use switchboard::routing::select::pick_weighted as pick;
    use switchboard::routing::{Availability, LatencyKind, LiveStats, Plan, Rng, RouteInput};

    const DEMO: &str = include_str!("../examples/demo/switchboard.json");

    fn env(name: &str) -> Option<String> {
        Some(format!("test-key-{name}"))
    }

    pub fn demo_config() -> Config {
        Config::parse(DEMO.as_bytes(), &env).expect("demo config parses")
    }

    /// The benchmark's request: a 1,024-byte chat completion for pool `gpt4o_16k`
    /// (the same shape bench/run.py sends through Envoy).
    pub fn body_1k() -> Vec<u8> {
        let render = |pad: &str| {
            format!(
                concat!(
                    r#"{{"model":"gpt4o_16k","messages":[{{"role":"system","content":"You are a concise assistant. "#,
                    r#"Answer in one short paragraph."}},{{"role":"user","content":"Summarise the following notes "#,
                    r#"for a status update: {}"}}],"temperature":0.2,"max_tokens":64,"user":"bench"}}"#
                ),
                pad
            )
        };
        let words = "the gateway routes each request to a pool member by weight and fails over on errors ";
        let base = render("").len();
        let pad: String = words.repeat(1024 / words.len() + 2).chars().take(1024 - base).collect();
        let body = render(&pad).into_bytes();
        assert_eq!(body.len(), 1024);
        body
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                provider: 0,
                model: format!("model-{i}"),
                deployment: format!("model-{i}"),
                weight: 1 + (i as u32 % 7),
                id: format!("p/model-{i}"),
                ..Member::default()
            })
            .collect()
    }

    fn config_lookup(c: &mut Criterion) {
        let cfg = demo_config();
        let mut g = c.benchmark_group("config");
        g.bench_function("pool_hit", |b| b.iter(|| cfg.pool(black_box("gpt4o_16k")).map(|(i, _)| i)));
        g.bench_function("pool_miss", |b| b.iter(|| cfg.pool(black_box("no-such-pool")).map(|(i, _)| i)));
        g.finish();
    }

    fn selection(c: &mut Criterion) {
        let mut g = c.benchmark_group("pick");
        for n in [2usize, 100] {
            let m = members(n);
            let mut rng = Rng::from_seed(42);
            g.bench_function(format!("{n}_members"), |b| {
                b.iter(|| pick(black_box(&m), &[], |_| Availability::Healthy, rng.next_u64()))
            });
            // Failover: the first member already tried and one ejected.
            let tried = [0usize];
            g.bench_function(format!("{n}_members_failover"), |b| {
                b.iter(|| {
                    pick(
                        black_box(&m),
                        &tried,
                        |i| if i == 1 { Availability::Unavailable { until_ms: 5 } } else { Availability::Healthy },
                        rng.next_u64(),
                    )
                })
            });
        }
        g.bench_function("rng_next_u64", |b| {
            let mut rng = Rng::from_seed(1);
            b.iter(|| rng.next_u64())
        });
        g.finish();
    }

    fn request(c: &mut Criterion) {
        let body = body_1k();
        let mut g = c.benchmark_group("request_1k");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("parse", |b| {
            b.iter(|| ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).map(|r| r.stream))
        });
        let parsed = ParsedRequest::parse(&body, Endpoint::ChatCompletions).unwrap();
        g.bench_function("openai_body", |b| b.iter(|| parsed.openai_body(black_box("gpt-4o"))));
        g.bench_function("parse_and_rewrite", |b| {
            b.iter(|| {
                let p = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                p.openai_body("gpt-4o")
            })
        });
        // Baseline: what a full serde_json::Value round trip would cost.
        g.bench_function("serde_value_roundtrip_baseline", |b| {
            b.iter(|| {
                let mut v: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
                v["model"] = serde_json::Value::from("gpt-4o");
                serde_json::to_vec(&v).unwrap()
            })
        });
        g.finish();
    }

    fn upstream(c: &mut Criterion) {
        let cfg = demo_config();
        let body = body_1k();
        let (_, pool) = cfg.pool("gpt4o_16k").unwrap();
        let member = &pool.members[0];
        let provider = cfg.provider(member.provider).unwrap();
        let ctx = BuildContext { now_unix_s: 1_700_000_000, max_response_tokens: pool.max_response_tokens };
        let parsed = ParsedRequest::parse(&body, Endpoint::ChatCompletions).unwrap();
        let mut g = c.benchmark_group("upstream");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("build_request", |b| {
            b.iter(|| build_request(provider, member, Endpoint::ChatCompletions, black_box(&parsed), &ctx).unwrap())
        });
        // Everything the filter computes for one routed request, end to end:
        // parse, plan (pool lookup), weighted pick, upstream request.
        let mut rng = Rng::from_seed(7);
        g.bench_function("full_route", |b| {
            b.iter(|| {
                let parsed = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                let mut plan = Plan::new(&cfg, &parsed, 1_700_000_000_000).unwrap();
                let at = plan.next_member(&cfg, &|_: &Member| Availability::Healthy, rng.next_u64()).unwrap();
                let (_, member, provider) = cfg.resolve(at).unwrap();
                build_request(provider, member, Endpoint::ChatCompletions, &parsed, &ctx).unwrap()
            })
        });
        // The failover path's pure work: record the failed attempt, re-parse the
        // kept body, pick another member, build its request.
        g.bench_function("failover_step", |b| {
            b.iter_batched(
                || {
                    let parsed = ParsedRequest::parse(&body, Endpoint::ChatCompletions).unwrap();
                    let mut plan = Plan::new(&cfg, &parsed, 0).unwrap();
                    let first = plan.next(&cfg, |_| Availability::Healthy, 0).unwrap();
                    (plan, first)
                },
                |(mut plan, (p0, m0))| {
                    plan.record(&cfg, p0, m0, 503);
                    let parsed = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                    let at = plan.next_member(&cfg, &|_: &Member| Availability::Healthy, 1).unwrap();
                    let (_, member, provider) = cfg.resolve(at).unwrap();
                    build_request(provider, member, Endpoint::ChatCompletions, &parsed, &ctx).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }

    /// A router with 20 rules (the last one matches; keyword rules scan the
    /// prompt), a 100-member `lowest_latency` pool whose members declare
    /// context windows, capabilities and tags, and a 2 KB prompt.
    fn decision_config() -> Config {
        let members: Vec<String> = (0..100)
            .map(|i| {
                let caps = if i % 3 == 0 { r#"["tools"]"# } else { r#"["vision", "tools", "json_schema"]"# };
                let tags = if i % 2 == 0 { r#"["eu", "zero_retention"]"# } else { r#"["us"]"# };
                format!(
                    r#"{{"provider": "p", "model": "m{i}", "weight": {}, "context_window": {}, "capabilities": {caps}, "tags": {tags}}}"#,
                    1 + i % 5,
                    if i % 4 == 0 { 4000 } else { 128000 }
                )
            })
            .collect();
        let mut rules: Vec<String> = (0..19)
            .map(|i| match i % 4 {
                0 => format!(r#"{{"name": "h{i}", "when": {{"header": {{"name": "x-class-{i}", "equals": "x"}}}}, "pool": "small"}}"#),
                1 => format!(r#"{{"name": "k{i}", "when": {{"any_keywords": ["kw{i}", "phrase number {i}", "sql"]}}, "pool": "small"}}"#),
                2 => format!(r#"{{"name": "m{i}", "when": {{"metadata": {{"team": "t{i}"}}}}, "pool": "small"}}"#),
                _ => format!(r#"{{"name": "t{i}", "when": {{"min_prompt_tokens": 30000, "has_images": true}}, "pool": "small"}}"#),
            })
            .collect();
        rules.push(r#"{"name": "status", "when": {"any_keywords": ["status update"]}, "pool": "big"}"#.to_string());
        let json = format!(
            r#"{{"providers": {{"p": {{"cluster": "p", "host": "p", "api_key_env": "K"}}}},
                "pools": {{"big": {{"strategy": "lowest_latency", "members": [{}]}},
                          "small": {{"members": [{{"provider": "p", "model": "s"}}]}}}},
                "routers": {{"auto": {{"rules": [{}], "default": "small"}}}}}}"#,
            members.join(","),
            rules.join(",")
        );
        Config::parse(json.as_bytes(), &env).expect("decision config parses")
    }

    fn body_2k() -> Vec<u8> {
        let body = String::from_utf8(body_1k()).unwrap().replace("gpt4o_16k", "auto");
        let words = " the gateway routes each request to a pool member by weight and fails over on errors";
        let pad = words.repeat(1024 / words.len() + 1);
        body.replacen("for a status update: ", &format!("for a status update: {}", &pad[..1024]), 1).into_bytes()
    }

    struct Latencies;
    impl LiveStats for Latencies {
        fn availability(&self, _: &Member) -> Availability {
            Availability::Healthy
        }
        fn latency_ms(&self, m: &Member, _: LatencyKind) -> Option<f64> {
            Some(m.model.len() as f64 * 10.0 + (m.model.as_bytes()[1] % 7) as f64)
        }
    }

    fn decision(c: &mut Criterion) {
        let cfg = decision_config();
        let body = body_2k();
        assert!((2000..2200).contains(&body.len()), "{}", body.len());
        let headers = [(REQUIRE_TAGS_HEADER, "eu")];
        let mut rng = Rng::from_seed(5);
        let mut g = c.benchmark_group("decision");
        g.bench_function("router20_filters_lowest_latency_100", |b| {
            b.iter(|| {
                let parsed = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                let input = RouteInput { request: &parsed, headers: &headers, scorer: None, native_kinds: 0 };
                let mut plan = Plan::for_request(&cfg, input, 0).unwrap();
                plan.next_member(&cfg, &Latencies, rng.next_u64()).unwrap()
            })
        });
        // The decision alone, from a parsed request (reading the messages is part of it).
        g.bench_function("router20_filters_lowest_latency_100_parsed", |b| {
            b.iter_batched(
                || ParsedRequest::parse(&body, Endpoint::ChatCompletions).unwrap(),
                |parsed| {
                    let input = RouteInput { request: &parsed, headers: &headers, scorer: None, native_kinds: 0 };
                    let mut plan = Plan::for_request(&cfg, input, 0).unwrap();
                    plan.next_member(&cfg, &Latencies, 11).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        // The parts, to see where the time goes.
        g.bench_function("part_parse_2k", |b| {
            b.iter(|| ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap().stream)
        });
        g.bench_function("part_parse_and_content_2k", |b| {
            b.iter(|| {
                let parsed = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                parsed.content().prompt_tokens
            })
        });
        g.bench_function("part_plan_2k", |b| {
            b.iter(|| {
                let parsed = ParsedRequest::parse(black_box(&body), Endpoint::ChatCompletions).unwrap();
                let input = RouteInput { request: &parsed, headers: &headers, scorer: None, native_kinds: 0 };
                Plan::for_request(&cfg, input, 0).unwrap().deadline_ms
            })
        });
        let text = String::from_utf8(body.clone()).unwrap();
        g.bench_function("part_estimate_2k", |b| b.iter(|| switchboard::api::tokens::estimate(black_box(&text))));
        let set = &cfg.routers[0].keywords.set;
        g.bench_function("part_keywords_2k", |b| {
            b.iter(|| {
                let mut found = [0u64; 1];
                set.find(std::iter::once(black_box(text.as_str())), &mut found);
                found[0]
            })
        });
        let parsed = ParsedRequest::parse(&body, Endpoint::ChatCompletions).unwrap();
        let input = RouteInput { request: &parsed, headers: &headers, scorer: None, native_kinds: 0 };
        let plan = Plan::for_request(&cfg, input, 0).unwrap();
        g.bench_function("part_pick_100", |b| {
            b.iter(|| plan.clone().next_member(&cfg, &Latencies, rng.next_u64()).unwrap())
        });
        g.finish();
    }

    fn config_parse(c: &mut Criterion) {
        // Not per request (once per VM start / config push), for scale.
        c.bench_function("config/parse_demo", |b| b.iter(|| Config::parse(black_box(DEMO.as_bytes()), &env).is_ok()));
    }

    pub fn run() {
        let mut c = Criterion::default().configure_from_args();
        config_lookup(&mut c);
        selection(&mut c);
        request(&mut c);
        upstream(&mut c);
        decision(&mut c);
        config_parse(&mut c);
        c.final_summary();
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    native::run();
}

#[cfg(target_arch = "wasm32")]
fn main() {}
