//! Tenants: who calls. A tenant is found by the SHA-256 of the key its client
//! sends (`Authorization: Bearer`, `api-key` or `x-api-key`, as the OpenAI,
//! Azure and Anthropic SDKs send it); the configuration holds only hashes.
//! Then: what it may use (`allow`) and its limits (`limits`). No proxy-wasm calls.

pub mod fleet;
pub mod limits;
pub mod reserve;

use crate::api::ErrorCode;
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// Spend window of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub per: BudgetPeriod,
    pub limit_usd: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub key_hashes: Vec<[u8; 32]>,
    /// Pools, routers and direct model names it may use; `None`: all.
    pub allow: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    pub budget: Option<Budget>,
}

impl Tenant {
    pub fn allows(&self, name: &str) -> bool {
        self.allow.as_ref().is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// Whether any limit needs per-request state.
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_parallel.is_some() || self.budget.is_some()
    }
}

/// The key a client presents, from the headers the SDKs use.
pub fn presented_key<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
    if let Some(auth) = header("authorization") {
        let auth = auth.trim_start();
        let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).unwrap_or(auth);
        if !token.trim().is_empty() {
            return Some(token.trim());
        }
    }
    ["api-key", "x-api-key"].into_iter().filter_map(&header).map(str::trim).find(|k| !k.is_empty())
}

pub fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tenant whose key hash matches, comparing against every configured
/// hash so the time taken does not depend on which (if any) matched.
pub fn authenticate(tenants: &[Tenant], key: Option<&str>) -> Result<usize, ApiError> {
    let Some(key) = key else {
        return Err(ApiError::new(
            401,
            ErrorCode::InvalidApiKey,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `api-key` / `x-api-key`).",
        ));
    };
    let hash = sha256(key);
    let mut found = None;
    for (index, tenant) in tenants.iter().enumerate() {
        for known in &tenant.key_hashes {
            if constant_time_eq(known, &hash) && found.is_none() {
                found = Some(index);
            }
        }
    }
    found.ok_or_else(|| ApiError::new(401, ErrorCode::InvalidApiKey, "Incorrect API key provided."))
}

pub fn not_allowed(tenant: &Tenant, name: &str) -> ApiError {
    ApiError::new(
        403,
        ErrorCode::ModelNotAllowed,
        format!("Tenant `{}` may not use `{name}`; GET /v1/models lists what it may use.", tenant.name),
    )
    .with_param("model")
}

/// Parses a hex SHA-256 (64 hex digits, either case).
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        let (hi, lo) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn tenant(name: &str, key: &str) -> Tenant {
        Tenant {
            name: name.into(),
            key_hashes: vec![sha256(key)],
            allow: Some(vec!["gpt4o_16k".into()]),
            rpm: None,
            tpm: None,
            max_parallel: None,
            budget: None,
        }
    }

    #[test]
    fn keys_from_each_sdk_header() {
        let from = |pairs: &'static [(&'static str, &'static str)]| {
            presented_key(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
        };
        assert_eq!(from(&[("authorization", "Bearer sk-a")]), Some("sk-a"));
        assert_eq!(from(&[("api-key", "az-key")]), Some("az-key"));
        assert_eq!(from(&[("x-api-key", "ant-key")]), Some("ant-key"));
        assert_eq!(from(&[("authorization", "Bearer  "), ("x-api-key", "k")]), Some("k"));
        assert_eq!(from(&[]), None);
    }

    #[test]
    fn authenticates_by_hash_only() {
        let tenants = vec![tenant("a", "key-a"), tenant("b", "key-b")];
        assert_eq!(authenticate(&tenants, Some("key-b")), Ok(1));
        let e = authenticate(&tenants, Some("key-c")).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (401, "invalid_api_key"));
        assert_eq!(authenticate(&tenants, None).unwrap_err().code, "invalid_api_key");
        assert_eq!(e.kind().as_str(), "authentication_error");
    }

    #[test]
    fn allow_list_and_403() {
        let t = tenant("a", "k");
        assert!(t.allows("gpt4o_16k") && !t.allows("other"));
        let e = not_allowed(&t, "other");
        assert_eq!((e.status, e.code.as_str(), e.kind().as_str()), (403, "model_not_allowed", "permission_error"));
        assert!(Tenant { allow: None, ..t }.allows("anything"));
    }

    #[test]
    fn hex_hashes_parse_in_either_case() {
        let h = sha256("abc");
        let hex = crate::encoding::hex(&h);
        assert_eq!(parse_hash(&hex), Some(h));
        assert_eq!(parse_hash(&hex.to_uppercase()), Some(h));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(parse_hash(&"zz".repeat(32)), None);
    }
}
