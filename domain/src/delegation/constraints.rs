//! The typed constraints of a Delegation (coordinator.md §7.1): parsed strictly, because an
//! unknown key is an authority the issuer believes it set and nobody enforces.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::DelegationRefusal;

/// Hop and depth budgets range over 1..=10 (`MAX_DEPTH`).
pub const MAX_HOPS: u32 = 10;
pub const MAX_TTL_SECONDS: u32 = 86_400;
pub const MAX_RESOURCES: usize = 64;
pub const MAX_BUDGET: u32 = 64;
/// `broad_reason` recorded on resource-unbound edges when the caller gives none.
pub const DEFAULT_BROAD_REASON: &str = "resource_null_delegation";

/// The constraint object of an edge, as parsed from `constraints_json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    pub resources: Option<Vec<String>>,
    pub max_hops: Option<u32>,
    pub ttl_seconds: Option<u32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub budget: Option<u32>,
    pub policy_approved: Option<bool>,
    pub broad_reason: Option<String>,
}

impl Constraints {
    /// The hop budget, default 1 when absent.
    pub fn hops(&self) -> u32 {
        self.max_hops.unwrap_or(1)
    }
}

/// An ISO-8601 UTC instant with a `Z` suffix (any fractional precision); offsets refused.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    if !s.ends_with('Z') {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn int_in(v: &Value, lo: u64, hi: u64) -> Option<u32> {
    v.as_u64()
        .filter(|n| (lo..=hi).contains(n))
        .and_then(|n| u32::try_from(n).ok())
}

fn bad(field: &str) -> DelegationRefusal {
    DelegationRefusal::InvalidConstraint(format!("invalid_{field}"))
}

/// Parses a stored or requested constraint object strictly.
pub fn parse(value: &Value) -> Result<Constraints, DelegationRefusal> {
    let Some(obj) = value.as_object() else {
        return Err(DelegationRefusal::InvalidConstraint(
            "invalid_delegation_constraint".into(),
        ));
    };
    let mut c = Constraints::default();
    let mut max_depth = None;
    for (k, v) in obj {
        match k.as_str() {
            "resources" => {
                let list = v.as_array().ok_or_else(|| bad("resources"))?;
                // An empty list would bind no resource without being a (permissioned) broad
                // edge.
                if list.is_empty() || list.len() > MAX_RESOURCES {
                    return Err(bad("resources"));
                }
                let mut out = Vec::with_capacity(list.len());
                for item in list {
                    let s = item
                        .as_str()
                        .filter(|s| !s.trim().is_empty() && s.len() <= 512)
                        .ok_or_else(|| bad("resources"))?;
                    out.push(s.to_owned());
                }
                c.resources = Some(out);
            }
            "max_hops" => {
                c.max_hops = Some(int_in(v, 1, MAX_HOPS.into()).ok_or_else(|| bad("max_hops"))?)
            }
            "max_depth" => {
                max_depth = Some(int_in(v, 1, MAX_HOPS.into()).ok_or_else(|| bad("max_depth"))?)
            }
            "ttl_seconds" => {
                c.ttl_seconds =
                    Some(int_in(v, 1, MAX_TTL_SECONDS.into()).ok_or_else(|| bad("ttl_seconds"))?)
            }
            "expires_at" => {
                c.expires_at = Some(
                    v.as_str()
                        .and_then(parse_utc)
                        .ok_or_else(|| bad("expires_at"))?,
                )
            }
            "budget" => {
                c.budget = Some(int_in(v, 1, MAX_BUDGET.into()).ok_or_else(|| bad("budget"))?)
            }
            "policy_approved" => {
                c.policy_approved = Some(v.as_bool().ok_or_else(|| bad("policy_approved"))?)
            }
            "broad_reason" => {
                c.broad_reason = Some(
                    v.as_str()
                        .filter(|s| (1..=256).contains(&s.chars().count()))
                        .ok_or_else(|| bad("broad_reason"))?
                        .to_owned(),
                )
            }
            _ => {
                return Err(DelegationRefusal::InvalidConstraint(
                    "invalid_delegation_constraint".into(),
                ))
            }
        }
    }
    match (c.max_hops, max_depth) {
        (Some(h), Some(d)) if h != d => {
            return Err(DelegationRefusal::InvalidConstraint(
                "invalid_max_hops".into(),
            ))
        }
        (None, Some(d)) => c.max_hops = Some(d),
        _ => {}
    }
    Ok(c)
}

/// The stored form (§7.1 normalization): `constraints_json` merged with `constraints`
/// (the latter wins per key), `max_depth` copied into `max_hops`, a top-level `ttl_seconds`
/// copied in when absent, and for broad edges `broad_reason` defaulted and
/// `policy_approved` forced to `true`.
pub fn normalize(
    constraints_json: Option<&Map<String, Value>>,
    constraints: Option<&Map<String, Value>>,
    top_ttl_seconds: Option<u32>,
) -> Map<String, Value> {
    let mut merged = constraints_json.cloned().unwrap_or_default();
    if let Some(c) = constraints {
        for (k, v) in c {
            merged.insert(k.clone(), v.clone());
        }
    }
    if !merged.contains_key("max_hops") {
        if let Some(d) = merged.get("max_depth").cloned() {
            merged.insert("max_hops".into(), d);
        }
    }
    if let Some(t) = top_ttl_seconds {
        merged.entry("ttl_seconds").or_insert(Value::from(t));
    }
    merged
}

/// Marks a normalized constraint object as a broad (resource-unbound) edge's.
pub fn mark_broad(merged: &mut Map<String, Value>) {
    merged
        .entry("broad_reason")
        .or_insert(Value::from(DEFAULT_BROAD_REASON));
    merged.insert("policy_approved".into(), Value::Bool(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert_eq!(
            parse(&json!({"colour": 1})),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_delegation_constraint".into()
            ))
        );
        assert_eq!(
            parse(&json!([])),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_delegation_constraint".into()
            ))
        );
        assert_eq!(
            parse(&json!({"max_hops": 11})),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_max_hops".into()
            ))
        );
        assert_eq!(
            parse(&json!({"resources": []})),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_resources".into()
            ))
        );
        assert_eq!(
            parse(&json!({"max_hops": 2, "max_depth": 3})),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_max_hops".into()
            ))
        );
        assert_eq!(
            parse(&json!({"expires_at": "2026-01-01T00:00:00+05:30"})),
            Err(DelegationRefusal::InvalidConstraint(
                "invalid_expires_at".into()
            ))
        );
    }

    #[test]
    fn depth_is_an_alias_of_hops() {
        let c = parse(&json!({"max_depth": 3, "ttl_seconds": 60})).unwrap();
        assert_eq!(c.max_hops, Some(3));
        assert_eq!(c.ttl_seconds, Some(60));
        assert_eq!(Constraints::default().hops(), 1);
    }

    #[test]
    fn normalization_merges_and_copies() {
        let a = json!({"max_depth": 2, "budget": 3});
        let b = json!({"budget": 4});
        let mut m = normalize(a.as_object(), b.as_object(), Some(60));
        assert_eq!(
            Value::Object(m.clone()),
            json!({"max_depth": 2, "max_hops": 2, "budget": 4, "ttl_seconds": 60})
        );
        mark_broad(&mut m);
        assert_eq!(m["broad_reason"], json!(DEFAULT_BROAD_REASON));
        assert_eq!(m["policy_approved"], json!(true));
    }
}
