//! `GET /v1/models`: pools, routers and direct models in OpenAI list format,
//! with the APIpie pool fields (`type`, `subtype`, `provider`, `model`,
//! `description`, `max_response_tokens`). Built once per configuration.

use serde::Serialize;

use crate::config::Config;

#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    subtype: &'static str,
    provider: &'a str,
    model: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_response_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<&'a str>,
    /// For routers: the pools its rules, default and learned split can choose.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<&'a str>,
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Entry<'a>>,
}

/// Precomputed listing bodies.
#[derive(Debug, Clone)]
pub struct ModelListing {
    all: Vec<u8>,
    pools: Vec<u8>,
    routers: Vec<u8>,
    direct: Vec<u8>,
    /// Each entry alone, for `GET /v1/models/{id}`.
    entries: Vec<(String, Vec<u8>)>,
}

impl ModelListing {
    pub fn build(config: &Config) -> ModelListing {
        Self::build_for(config, &|_| true)
    }

    /// The listing of what `allowed` lets a client use (a tenant's `allow`).
    pub fn build_for(config: &Config, allowed: &dyn Fn(&str) -> bool) -> ModelListing {
        let pools: Vec<Entry<'_>> = config
            .listed_pools()
            .filter(|p| allowed(&p.name))
            .map(|p| Entry {
                id: &p.name,
                object: "model",
                created: 0,
                owned_by: "switchboard",
                kind: "llm",
                subtype: "pool",
                provider: "pool",
                model: &p.name,
                description: &p.description,
                max_response_tokens: p.max_response_tokens,
                members: p.members.iter().map(|m| m.id.as_str()).collect(),
                pools: Vec::new(),
            })
            .collect();
        let routers: Vec<Entry<'_>> = config
            .routers
            .iter()
            .map(|r| {
                let mut pools: Vec<&str> = Vec::new();
                let learned = r.learned.iter().flat_map(|l| [l.strong, l.weak]);
                for index in r.rules.iter().map(|rule| rule.pool).chain(r.default).chain(learned) {
                    if let Some(pool) = config.pool_at(index) {
                        if !pools.contains(&pool.name.as_str()) {
                            pools.push(&pool.name);
                        }
                    }
                }
                Entry {
                    id: &r.name,
                    object: "model",
                    created: 0,
                    owned_by: "switchboard",
                    kind: "llm",
                    subtype: "router",
                    provider: "router",
                    model: &r.name,
                    description: &r.description,
                    max_response_tokens: None,
                    members: Vec::new(),
                    pools,
                }
            })
            .collect();
        let direct: Vec<Entry<'_>> = config
            .direct_models()
            .filter(|p| allowed(&p.name))
            .filter_map(|p| {
                let member = p.members.first()?;
                let provider = config.provider(member.provider)?;
                Some(Entry {
                    id: &p.name,
                    object: "model",
                    created: 0,
                    owned_by: &provider.name,
                    kind: "llm",
                    subtype: "model",
                    provider: &provider.name,
                    model: &member.model,
                    description: "",
                    max_response_tokens: None,
                    members: Vec::new(),
                    pools: Vec::new(),
                })
            })
            .collect();
        let entries = pools
            .iter()
            .chain(&routers)
            .chain(&direct)
            .map(|e| (e.id.to_string(), serde_json::to_vec(e).unwrap_or_default()))
            .collect();
        let render = |data: Vec<Entry<'_>>| serde_json::to_vec(&List { object: "list", data }).unwrap_or_default();
        let pools_json = render(pools);
        let routers_json = render(routers);
        let direct_json = render(direct);
        // Merge the lists without re-serializing: each is `{"object":"list","data":[...]}`.
        let all = merge_lists(&[&pools_json, &routers_json, &direct_json]);
        ModelListing { all, pools: pools_json, routers: routers_json, direct: direct_json, entries }
    }

    /// One model, pool or router by id (`GET /v1/models/{id}`, the SDKs' `models.retrieve`).
    pub fn entry(&self, id: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(e, _)| e == id).map(|(_, body)| body.as_slice())
    }

    /// The body for a query string; `subtype=pool` (or `provider=pool`) keeps pools only,
    /// `subtype=router` routers only, `subtype=model` direct models only.
    pub fn body(&self, query: &str) -> &[u8] {
        for pair in query.split('&') {
            match pair {
                "subtype=pool" | "provider=pool" => return &self.pools,
                "subtype=router" | "provider=router" => return &self.routers,
                "subtype=model" => return &self.direct,
                _ => {}
            }
        }
        &self.all
    }
}

fn merge_lists(lists: &[&[u8]]) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"object\":\"list\",\"data\":[";
    let mut out = HEAD.to_vec();
    let mut first = true;
    for list in lists {
        let inner = list.strip_prefix(HEAD).and_then(|r| r.strip_suffix(b"]}")).unwrap_or_default();
        if inner.is_empty() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(inner);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::tests::{sample_config, ENV};
    use serde_json::Value;

    #[test]
    fn pool_listing_matches_apipie_shape() {
        let cfg = Config::parse(sample_config().as_bytes(), &ENV).unwrap();
        let listing = ModelListing::build(&cfg);
        let v: Value = serde_json::from_slice(listing.body("subtype=pool")).unwrap();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["type"], "llm");
        assert_eq!(data[0]["subtype"], "pool");
        assert_eq!(data[0]["provider"], "pool");
        assert_eq!(data[0]["model"], "gpt4o_16k");
        assert_eq!(data[0]["id"], "gpt4o_16k");
        assert_eq!(data[0]["max_response_tokens"], 16384);
        assert_eq!(data[0]["description"], "GPT-4o class models");

        let all: Value = serde_json::from_slice(listing.body("")).unwrap();
        let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["gpt4o_16k", "gpt-4o", "gpt-4o-2024-08-06"]);
        let routers: Value = serde_json::from_slice(listing.body("subtype=router")).unwrap();
        assert_eq!(routers["data"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn routers_are_listed_with_subtype_router() {
        let json = sample_config().replacen(
            "\"pools\": {",
            r#""routers": {"auto": {"description": "by size", "rules": [{"name": "long", "when": {"min_prompt_tokens": 9000}, "pool": "gpt-4o"}], "default": "gpt4o_16k"}}, "pools": {"#,
            1,
        );
        let cfg = Config::parse(json.as_bytes(), &ENV).unwrap();
        let listing = ModelListing::build(&cfg);
        let v: Value = serde_json::from_slice(listing.body("subtype=router")).unwrap();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], "auto");
        assert_eq!(data[0]["subtype"], "router");
        assert_eq!(data[0]["description"], "by size");
        assert_eq!(data[0]["pools"], serde_json::json!(["gpt-4o", "gpt4o_16k"]));
        let all: Value = serde_json::from_slice(listing.body("")).unwrap();
        let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["gpt4o_16k", "auto", "gpt-4o", "gpt-4o-2024-08-06"]);
        let pools: Value = serde_json::from_slice(listing.body("subtype=pool")).unwrap();
        assert_eq!(pools["data"].as_array().unwrap().len(), 1, "routers are not pools");
    }
}
