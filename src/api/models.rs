//! `GET /v1/models`: pools and direct models in OpenAI list format, with the
//! APIpie pool fields (`type`, `subtype`, `provider`, `model`, `description`,
//! `max_response_tokens`). Built once per configuration.

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
    direct: Vec<u8>,
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
                })
            })
            .collect();
        let render = |data: Vec<Entry<'_>>| serde_json::to_vec(&List { object: "list", data }).unwrap_or_default();
        let pools_json = render(pools);
        let direct_json = render(direct);
        // Merge the two lists without re-serializing: both are `{"object":"list","data":[...]}`.
        let all = merge_lists(&pools_json, &direct_json);
        ModelListing { all, pools: pools_json, direct: direct_json }
    }

    /// The body for a query string; `subtype=pool` (or `provider=pool`) keeps pools only,
    /// `subtype=model` direct models only.
    pub fn body(&self, query: &str) -> &[u8] {
        for pair in query.split('&') {
            match pair {
                "subtype=pool" | "provider=pool" => return &self.pools,
                "subtype=model" => return &self.direct,
                _ => {}
            }
        }
        &self.all
    }
}

fn merge_lists(a: &[u8], b: &[u8]) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"object\":\"list\",\"data\":[";
    let inner = |x: &[u8]| -> Vec<u8> {
        x.strip_prefix(HEAD).and_then(|r| r.strip_suffix(b"]}")).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let (ia, ib) = (inner(a), inner(b));
    let mut out = HEAD.to_vec();
    out.extend_from_slice(&ia);
    if !ia.is_empty() && !ib.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(&ib);
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
    }
}
