//! The `tenants` section: who may call, with which keys (SHA-256 only), what
//! they may use and their limits.

use switchboard_schema::{Named, RawPeriod, RawTenant};

use crate::tenant::{parse_hash, Budget, BudgetPeriod, Tenant};

use super::{err, ConfigError};

/// Validates tenants; `known(name)` says whether a name in `allow` is something a client may address.
pub(super) fn validate(raw: Named<RawTenant>, known: impl Fn(&str) -> bool) -> Result<Vec<Tenant>, ConfigError> {
    let mut tenants: Vec<Tenant> = Vec::with_capacity(raw.len());
    for (name, t) in raw {
        let field = |f: &str| format!("tenants.{name}.{f}");
        if t.keys_sha256.is_empty() {
            return Err(err(field("keys_sha256"), "a tenant needs at least one key hash"));
        }
        let mut key_hashes = Vec::with_capacity(t.keys_sha256.len());
        for (i, hex) in t.keys_sha256.iter().enumerate() {
            let hash = parse_hash(hex.trim()).ok_or_else(|| {
                err(format!("tenants.{name}.keys_sha256[{i}]"), "must be a hex SHA-256 (64 hex digits), never a key")
            })?;
            if let Some(other) = tenants.iter().find(|o| o.key_hashes.contains(&hash)) {
                return Err(err(
                    format!("tenants.{name}.keys_sha256[{i}]"),
                    format!("the same key also belongs to tenant \"{}\"", other.name),
                ));
            }
            key_hashes.push(hash);
        }
        if let Some(allow) = &t.allow {
            for (i, model) in allow.iter().enumerate() {
                if !known(model) {
                    return Err(err(
                        format!("tenants.{name}.allow[{i}]"),
                        format!("\"{model}\" is neither a pool, a router nor a model served by this gateway"),
                    ));
                }
            }
        }
        for (f, zero) in
            [("rpm", t.rpm == Some(0)), ("tpm", t.tpm == Some(0)), ("max_parallel", t.max_parallel == Some(0))]
        {
            if zero {
                return Err(err(field(f), "must be > 0 (leave it out for no limit)"));
            }
        }
        let budget = match t.budget_usd {
            None => None,
            Some(b) if !(b.limit.is_finite() && b.limit > 0.0) => {
                return Err(err(field("budget_usd.limit"), "must be a positive amount of USD"))
            }
            Some(b) => Some(Budget {
                per: match b.per {
                    RawPeriod::Day => BudgetPeriod::Day,
                    RawPeriod::Month => BudgetPeriod::Month,
                },
                limit_usd: b.limit,
            }),
        };
        tenants.push(Tenant {
            name,
            key_hashes,
            allow: t.allow,
            rpm: t.rpm,
            tpm: t.tpm,
            max_parallel: t.max_parallel,
            budget,
        });
    }
    Ok(tenants)
}
