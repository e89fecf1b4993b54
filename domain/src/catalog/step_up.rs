//! What a gated mint's hold is made of (sts.md §7.1–§7.2): the tier declarations of every
//! allowed resource merged into one hold shape, and the binding that ties a retry to the
//! exact request the approver saw.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One `approval_tiers` entry as the decision's `step_up_required` diagnostic carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierDeclaration {
    pub tier: String,
    /// `operator` | `subject` | `any` (absent = `operator`).
    pub approver: String,
    pub ttl_seconds: Option<i64>,
    /// `identified` | `pseudonymous` | `anonymous` (absent = `identified`).
    pub privacy: String,
}

impl TierDeclaration {
    /// The declarations a decision's diagnostics carry (`step_up_required.tiers`); entries
    /// the contract would not have produced are skipped.
    pub fn from_diagnostics(diagnostics: &Value) -> Vec<TierDeclaration> {
        let Some(items) = diagnostics.as_array() else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|d| d.get("step_up_required")?.get("tiers")?.as_array())
            .flatten()
            .filter_map(|t| {
                Some(TierDeclaration {
                    tier: t.get("tier")?.as_str()?.to_owned(),
                    approver: t
                        .get("approver")
                        .and_then(Value::as_str)
                        .unwrap_or("operator")
                        .to_owned(),
                    ttl_seconds: t.get("ttl_seconds").and_then(Value::as_i64),
                    privacy: t
                        .get("privacy")
                        .and_then(Value::as_str)
                        .unwrap_or("identified")
                        .to_owned(),
                })
            })
            .collect()
    }
}

/// The merged shape of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldShape {
    /// Sorted distinct tiers joined by `,`.
    pub tier: String,
    pub approver_class: String,
    pub privacy_mode: String,
    pub window_seconds: i64,
}

/// Declarations that cannot make one hold: an operator and a subject would both have to
/// decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassConflict;

const PRIVACY_ORDER: [&str; 3] = ["identified", "pseudonymous", "anonymous"];

/// §7.2: `any` yields to a specific class, `operator` with `subject` conflicts; privacy is
/// the most protective; the window is the shortest declared TTL, else the class default,
/// clamped to the class bounds.
pub fn merge(decls: &[TierDeclaration]) -> Result<Option<HoldShape>, ClassConflict> {
    if decls.is_empty() {
        return Ok(None);
    }
    let mut tiers: Vec<&str> = decls.iter().map(|d| d.tier.as_str()).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let has = |c: &str| decls.iter().any(|d| d.approver == c);
    let class = match (has("operator"), has("subject")) {
        (true, true) => return Err(ClassConflict),
        (true, false) => "operator",
        (false, true) => "subject",
        (false, false) => "any",
    };
    let privacy = decls
        .iter()
        .filter_map(|d| PRIVACY_ORDER.iter().position(|p| *p == d.privacy))
        .max()
        .map_or("identified", |i| PRIVACY_ORDER[i]);
    let (default, max) = match class {
        "operator" => (4 * 3_600, 7 * 86_400),
        _ => (900, 86_400),
    };
    let window = decls
        .iter()
        .filter_map(|d| d.ttl_seconds)
        .min()
        .unwrap_or(default)
        .clamp(60, max);
    Ok(Some(HoldShape {
        tier: tiers.join(","),
        approver_class: class.to_owned(),
        privacy_mode: privacy.to_owned(),
        window_seconds: window,
    }))
}

/// Everything a hold is bound to (§7.2).
#[derive(Debug, Clone, Default)]
pub struct BindingInput<'a> {
    pub resources: &'a [String],
    pub scopes: &'a [String],
    pub principal: &'a str,
    pub authority_record: &'a str,
    pub session: &'a str,
    pub delegation: &'a str,
    pub application: &'a str,
    pub policy_set_version: &'a str,
    pub manifest_sha256: &'a str,
    pub contract_version: &'a str,
    pub contract_sha256: &'a str,
}

fn canonical(items: &[String], lower: bool) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            if lower {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Lowercase hex SHA-256 over the canonical request: resources (lower-cased) and scopes
/// trimmed, deduplicated and sorted, then the other parts in a fixed order. A JSON array
/// keeps the parts apart (no separator a value could contain).
pub fn binding(b: &BindingInput<'_>) -> String {
    let doc = json!([
        canonical(b.resources, true),
        canonical(b.scopes, false),
        b.principal,
        b.authority_record,
        b.session,
        b.delegation,
        b.application,
        b.policy_set_version,
        b.manifest_sha256,
        b.contract_version,
        b.contract_sha256,
    ]);
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// The pseudonym a `pseudonymous` hold records for its approver: a zone-keyed hash, so
/// one subject reads the same within a zone and differently across zones.
pub fn pseudonym(zone_key: &[u8], subject: &str) -> String {
    let mut h = Sha256::new();
    h.update((zone_key.len() as u64).to_be_bytes());
    h.update(zone_key);
    h.update(subject.as_bytes());
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(tier: &str, approver: &str, ttl: Option<i64>, privacy: &str) -> TierDeclaration {
        TierDeclaration {
            tier: tier.into(),
            approver: approver.into(),
            ttl_seconds: ttl,
            privacy: privacy.into(),
        }
    }

    #[test]
    fn declarations_merge_into_one_hold() {
        assert_eq!(merge(&[]), Ok(None));
        let h = merge(&[
            d("payments", "any", Some(30), "identified"),
            d("admin", "subject", None, "pseudonymous"),
            d("payments", "any", Some(7_200), "identified"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(h.tier, "admin,payments");
        assert_eq!(h.approver_class, "subject");
        assert_eq!(h.privacy_mode, "pseudonymous");
        // The shortest declared window, raised to the class minimum.
        assert_eq!(h.window_seconds, 60);
        let op = merge(&[d("t", "operator", None, "anonymous")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (op.window_seconds, op.privacy_mode.as_str()),
            (14_400, "anonymous")
        );
        let long = merge(&[d("t", "any", Some(10 * 86_400), "identified")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (long.approver_class.as_str(), long.window_seconds),
            ("any", 86_400)
        );
        assert_eq!(
            merge(&[
                d("a", "operator", None, "identified"),
                d("b", "subject", None, "identified")
            ]),
            Err(ClassConflict)
        );
    }

    #[test]
    fn the_binding_is_canonical_and_covers_every_part() {
        let r = vec![" resource://A ".to_owned(), "resource://a".to_owned()];
        let s = vec!["x".to_owned(), "w".to_owned(), "x".to_owned()];
        let base = BindingInput {
            resources: &r,
            scopes: &s,
            principal: "app",
            policy_set_version: "v1",
            ..Default::default()
        };
        let r2 = vec!["resource://a".to_owned()];
        let s2 = vec!["w".to_owned(), "x".to_owned()];
        let same = BindingInput {
            resources: &r2,
            scopes: &s2,
            ..base.clone()
        };
        assert_eq!(binding(&base), binding(&same));
        assert_eq!(binding(&base).len(), 64);
        let changed = BindingInput {
            policy_set_version: "v2",
            ..base.clone()
        };
        assert_ne!(binding(&base), binding(&changed));
        // Parts do not run into each other.
        let a = BindingInput {
            principal: "ab",
            authority_record: "",
            ..base.clone()
        };
        let b = BindingInput {
            principal: "a",
            authority_record: "b",
            ..base
        };
        assert_ne!(binding(&a), binding(&b));
    }

    #[test]
    fn diagnostics_name_their_tiers() {
        let diag = json!([
            {"step_up_required": {"type": "human_approval",
              "tiers": [{"tier": "pay", "approver": "subject", "ttl_seconds": 120},
                        {"tier": "ops"}]}},
            {"risk": [{"scope": "s", "tier": "pay"}]}
        ]);
        assert_eq!(
            TierDeclaration::from_diagnostics(&diag),
            vec![
                d("pay", "subject", Some(120), "identified"),
                d("ops", "operator", None, "identified")
            ]
        );
        assert!(TierDeclaration::from_diagnostics(&json!([{"risk": []}])).is_empty());
    }

    #[test]
    fn pseudonyms_are_per_zone() {
        assert_eq!(pseudonym(b"k1", "alice"), pseudonym(b"k1", "alice"));
        assert_ne!(pseudonym(b"k1", "alice"), pseudonym(b"k2", "alice"));
        assert_eq!(pseudonym(b"k1", "alice").len(), 16);
    }
}
