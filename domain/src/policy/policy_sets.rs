//! A zone's policy sets and its active binding (§11), as **one aggregate per zone**
//! (aggregate id [`catalog_id`]): at most one active set-version per zone, set-name
//! uniqueness among live sets, "deleting the active set clears the binding" and "an
//! archived set cannot be activated" are then decided atomically by one `decide`, with no
//! cross-aggregate transaction. Set writes of one zone serialize on the catalog's version,
//! which is cheap: they are rare.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::bundle::INPUT_SCHEMA_VERSION;
use crate::actor::Actor;

pub const MANIFEST_MAX: usize = 256;
pub const NAME_MAX_CHARS: usize = 200;

/// The catalog aggregate's id for a zone.
pub fn catalog_id(zone_id: &str) -> String {
    format!("policy-sets:{zone_id}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    pub id: String,
    pub name: String,
    pub archived: bool,
    pub latest_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVersionSummary {
    pub policy_set_id: String,
    pub version: u64,
    pub manifest_sha256: String,
}

/// What `decide` needs of a zone's catalog (loaded from the read model at one version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Aggregate version (0 = no set was ever created in the zone).
    pub version: u64,
    pub sets: BTreeMap<String, SetSummary>,
    /// `(policy_set_id, version_id)` of the active binding.
    pub active: Option<(String, String)>,
    /// Versions by id: at least those of the set a command targets.
    pub versions: BTreeMap<String, SetVersionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetCreated {
    pub policy_set_id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetVersionAdded {
    pub policy_set_id: String,
    pub version_id: String,
    pub version: u64,
    /// Policy-version ids, in manifest order.
    pub manifest: Vec<String>,
    pub manifest_sha256: String,
    pub schema_version: String,
    pub created_by: String,
    pub created_via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetActivated {
    pub policy_set_id: String,
    pub version_id: String,
    pub manifest_sha256: String,
    /// The set that was active before, when another one (its pointer is cleared).
    pub deactivated_policy_set_id: Option<String>,
    pub activated_by: String,
    pub via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetArchived {
    pub policy_set_id: String,
    pub archived_by: String,
    /// The set was active: the zone now has no policy (deny all).
    pub cleared_binding: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicySetEvent {
    Created(PolicySetCreated),
    VersionAdded(PolicySetVersionAdded),
    Activated(PolicySetActivated),
    Archived(PolicySetArchived),
}

impl PolicySetEvent {
    pub const CREATED: &'static str = "policy_set.created";
    pub const VERSION_ADDED: &'static str = "policy_set.version_added";
    pub const ACTIVATED: &'static str = "policy_set.activated";
    pub const ARCHIVED: &'static str = "policy_set.archived";

    pub fn event_type(&self) -> &'static str {
        match self {
            PolicySetEvent::Created(_) => Self::CREATED,
            PolicySetEvent::VersionAdded(_) => Self::VERSION_ADDED,
            PolicySetEvent::Activated(_) => Self::ACTIVATED,
            PolicySetEvent::Archived(_) => Self::ARCHIVED,
        }
    }

    pub fn policy_set_id(&self) -> &str {
        match self {
            PolicySetEvent::Created(e) => &e.policy_set_id,
            PolicySetEvent::VersionAdded(e) => &e.policy_set_id,
            PolicySetEvent::Activated(e) => &e.policy_set_id,
            PolicySetEvent::Archived(e) => &e.policy_set_id,
        }
    }
}

/// A manifest whose contract was checked by the caller (see [`check_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedManifest {
    pub policy_version_ids: Vec<String>,
    pub manifest_sha256: String,
    pub schema_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySetCommand {
    Create {
        policy_set_id: String,
        name: String,
        description: Option<String>,
    },
    AddVersion {
        policy_set_id: String,
        version_id: String,
        manifest: CheckedManifest,
    },
    Activate {
        policy_set_id: String,
        version_id: String,
    },
    Archive {
        policy_set_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetContext {
    pub actor: Actor,
    pub zone_operator_coauthor_badge: bool,
}

impl PolicySetContext {
    fn via_operator(&self) -> bool {
        self.actor.via_operator_header && self.zone_operator_coauthor_badge
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicySetError {
    #[error("policy set not found")]
    NotFound,
    #[error("policy set version not found")]
    VersionNotFound,
    #[error("a live policy set with this name exists")]
    NameConflict,
    #[error("policy set already exists")]
    AlreadyExists,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Why a manifest breaks the contract (§11); `Display` is the wire description.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    #[error("manifest must have 1-256 entries")]
    Size,
    #[error("manifest entry {0}: policy_version_id must be a non-empty string")]
    EmptyId(usize),
    #[error("duplicate policy version in manifest: {0}")]
    Duplicate(String),
    #[error("unknown policy version: {0}")]
    Unknown(String),
    #[error("policy version {0} belongs to another zone")]
    OtherZone(String),
    #[error("manifest mixes schema versions")]
    MixedSchemas,
    #[error("unsupported schema version {0}")]
    UnsupportedSchema(String),
}

/// Trims the ids and checks size and duplicates.
pub fn normalize_manifest(ids: &[String]) -> Result<Vec<String>, ManifestError> {
    if ids.is_empty() || ids.len() > MANIFEST_MAX {
        return Err(ManifestError::Size);
    }
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let id = id.trim();
        if id.is_empty() {
            return Err(ManifestError::EmptyId(i));
        }
        if out.iter().any(|o| o == id) {
            return Err(ManifestError::Duplicate(id.to_owned()));
        }
        out.push(id.to_owned());
    }
    Ok(out)
}

/// Hex SHA-256 of the compact JSON of the normalized manifest
/// (`[{"policy_version_id":"…"},…]`, in manifest order).
pub fn manifest_sha256(ids: &[String]) -> String {
    let entries: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({ "policy_version_id": id }))
        .collect();
    let compact = serde_json::Value::Array(entries).to_string();
    hex::encode(Sha256::digest(compact.as_bytes()))
}

/// What the read model says of one referenced policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencedVersion {
    pub zone_id: String,
    pub schema_version: String,
}

/// The manifest contract: every id exists, belongs to `zone_id`, and all share one
/// supported schema version (which the set version inherits).
pub fn check_manifest(
    zone_id: &str,
    ids: &[String],
    lookup: impl Fn(&str) -> Option<ReferencedVersion>,
) -> Result<CheckedManifest, ManifestError> {
    let ids = normalize_manifest(ids)?;
    let mut schema: Option<String> = None;
    for id in &ids {
        let v = lookup(id).ok_or_else(|| ManifestError::Unknown(id.clone()))?;
        if v.zone_id != zone_id {
            return Err(ManifestError::OtherZone(id.clone()));
        }
        match &schema {
            Some(s) if *s != v.schema_version => return Err(ManifestError::MixedSchemas),
            _ => schema = Some(v.schema_version),
        }
    }
    let schema = schema.unwrap_or_else(|| INPUT_SCHEMA_VERSION.to_owned());
    if schema != INPUT_SCHEMA_VERSION {
        return Err(ManifestError::UnsupportedSchema(schema));
    }
    Ok(CheckedManifest {
        manifest_sha256: manifest_sha256(&ids),
        policy_version_ids: ids,
        schema_version: schema,
    })
}

pub fn validate_name(name: &str) -> Result<(), PolicySetError> {
    if name.trim().is_empty() {
        return Err(PolicySetError::Invalid("name must not be empty"));
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(PolicySetError::Invalid(
            "name must be at most 200 characters",
        ));
    }
    Ok(())
}

fn live_set<'a>(c: &'a Catalog, id: &str) -> Result<&'a SetSummary, PolicySetError> {
    c.sets
        .get(id)
        .filter(|s| !s.archived)
        .ok_or(PolicySetError::NotFound)
}

pub fn decide(
    c: &Catalog,
    command: &PolicySetCommand,
    ctx: &PolicySetContext,
) -> Result<Vec<PolicySetEvent>, PolicySetError> {
    match command {
        PolicySetCommand::Create {
            policy_set_id,
            name,
            description,
        } => {
            validate_name(name)?;
            if description
                .as_ref()
                .is_some_and(|d| d.chars().count() > super::policies::DESCRIPTION_MAX_CHARS)
            {
                return Err(PolicySetError::Invalid(
                    "description must be at most 2000 characters",
                ));
            }
            if c.sets.contains_key(policy_set_id) {
                return Err(PolicySetError::AlreadyExists);
            }
            if c.sets.values().any(|s| !s.archived && s.name == *name) {
                return Err(PolicySetError::NameConflict);
            }
            Ok(vec![PolicySetEvent::Created(PolicySetCreated {
                policy_set_id: policy_set_id.clone(),
                name: name.clone(),
                description: description.clone(),
                created_by: ctx.actor.id.clone(),
                created_via_operator: ctx.via_operator(),
            })])
        }
        PolicySetCommand::AddVersion {
            policy_set_id,
            version_id,
            manifest,
        } => {
            let set = live_set(c, policy_set_id)?;
            Ok(vec![PolicySetEvent::VersionAdded(PolicySetVersionAdded {
                policy_set_id: policy_set_id.clone(),
                version_id: version_id.clone(),
                version: set.latest_version + 1,
                manifest: manifest.policy_version_ids.clone(),
                manifest_sha256: manifest.manifest_sha256.clone(),
                schema_version: manifest.schema_version.clone(),
                created_by: ctx.actor.id.clone(),
                created_via_operator: ctx.via_operator(),
            })])
        }
        PolicySetCommand::Activate {
            policy_set_id,
            version_id,
        } => {
            live_set(c, policy_set_id)?;
            let v = c
                .versions
                .get(version_id)
                .filter(|v| v.policy_set_id == *policy_set_id)
                .ok_or(PolicySetError::VersionNotFound)?;
            let deactivated = c
                .active
                .as_ref()
                .map(|(set, _)| set.clone())
                .filter(|set| set != policy_set_id);
            Ok(vec![PolicySetEvent::Activated(PolicySetActivated {
                policy_set_id: policy_set_id.clone(),
                version_id: version_id.clone(),
                manifest_sha256: v.manifest_sha256.clone(),
                deactivated_policy_set_id: deactivated,
                activated_by: ctx.actor.id.clone(),
                via_operator: ctx.via_operator(),
            })])
        }
        PolicySetCommand::Archive { policy_set_id } => {
            live_set(c, policy_set_id)?;
            let cleared = c
                .active
                .as_ref()
                .is_some_and(|(set, _)| set == policy_set_id);
            Ok(vec![PolicySetEvent::Archived(PolicySetArchived {
                policy_set_id: policy_set_id.clone(),
                archived_by: ctx.actor.id.clone(),
                cleared_binding: cleared,
            })])
        }
    }
}

/// Folds an event into the catalog summary.
pub fn evolve(mut c: Catalog, aggregate_version: u64, event: &PolicySetEvent) -> Catalog {
    match event {
        PolicySetEvent::Created(e) => {
            c.sets.insert(
                e.policy_set_id.clone(),
                SetSummary {
                    id: e.policy_set_id.clone(),
                    name: e.name.clone(),
                    archived: false,
                    latest_version: 0,
                },
            );
        }
        PolicySetEvent::VersionAdded(e) => {
            if let Some(s) = c.sets.get_mut(&e.policy_set_id) {
                s.latest_version = s.latest_version.max(e.version);
            }
            c.versions.insert(
                e.version_id.clone(),
                SetVersionSummary {
                    policy_set_id: e.policy_set_id.clone(),
                    version: e.version,
                    manifest_sha256: e.manifest_sha256.clone(),
                },
            );
        }
        PolicySetEvent::Activated(e) => {
            c.active = Some((e.policy_set_id.clone(), e.version_id.clone()));
        }
        PolicySetEvent::Archived(e) => {
            if let Some(s) = c.sets.get_mut(&e.policy_set_id) {
                s.archived = true;
            }
            if e.cleared_binding {
                c.active = None;
            }
        }
    }
    c.version = aggregate_version;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{given, Given, PolicySetsAggregate};

    fn ctx() -> PolicySetContext {
        PolicySetContext {
            actor: Actor {
                id: "admin:t".into(),
                is_bootstrap: false,
                via_operator_header: false,
            },
            zone_operator_coauthor_badge: true,
        }
    }

    fn manifest(ids: &[&str]) -> CheckedManifest {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        check_manifest("z", &ids, |_| {
            Some(ReferencedVersion {
                zone_id: "z".into(),
                schema_version: INPUT_SCHEMA_VERSION.into(),
            })
        })
        .unwrap()
    }

    fn sets() -> Given<PolicySetsAggregate> {
        given([])
    }

    #[test]
    fn one_active_set_and_delete_clears_it() {
        let mut c = sets();
        for (set, name) in [("a", "A"), ("b", "B")] {
            c = c
                .and(
                    &PolicySetCommand::Create {
                        policy_set_id: set.into(),
                        name: name.into(),
                        description: None,
                    },
                    &ctx(),
                )
                .and(
                    &PolicySetCommand::AddVersion {
                        policy_set_id: set.into(),
                        version_id: format!("{set}1"),
                        manifest: manifest(&["pv1"]),
                    },
                    &ctx(),
                );
        }
        let c = c.and(
            &PolicySetCommand::Activate {
                policy_set_id: "a".into(),
                version_id: "a1".into(),
            },
            &ctx(),
        );
        let activate_b = PolicySetCommand::Activate {
            policy_set_id: "b".into(),
            version_id: "b1".into(),
        };
        let (c, ev) = c.when(&activate_b, &ctx()).events();
        let PolicySetEvent::Activated(a) = &ev[0] else {
            panic!()
        };
        assert_eq!(a.deactivated_policy_set_id.as_deref(), Some("a"));
        // A version of another set is not this set's version.
        let c = c.when(
            &PolicySetCommand::Activate {
                policy_set_id: "b".into(),
                version_id: "a1".into(),
            },
            &ctx(),
        );
        assert_eq!(c.result(), &Err(PolicySetError::VersionNotFound));
        let c = sets_after(c).and(
            &PolicySetCommand::Archive {
                policy_set_id: "a".into(),
            },
            &ctx(),
        );
        assert_eq!(c.state().unwrap().active, None);
        c.when(
            &PolicySetCommand::Activate {
                policy_set_id: "a".into(),
                version_id: "a1".into(),
            },
            &ctx(),
        )
        .then_error(PolicySetError::NotFound);
    }

    /// The history a refused decision was taken on (a refusal changes nothing).
    fn sets_after(w: crate::given::When<PolicySetsAggregate>) -> Given<PolicySetsAggregate> {
        w.history()
    }

    #[test]
    fn names_are_unique_among_live_sets() {
        let create = |id: &str| PolicySetCommand::Create {
            policy_set_id: id.into(),
            name: "same".into(),
            description: None,
        };
        let c = sets().and(&create("a"), &ctx());
        let c = c.when(&create("b"), &ctx());
        assert_eq!(c.result(), &Err(PolicySetError::NameConflict));
        let c = sets_after(c).and(
            &PolicySetCommand::Archive {
                policy_set_id: "a".into(),
            },
            &ctx(),
        );
        assert!(c.when(&create("b"), &ctx()).result().is_ok());
    }

    #[test]
    fn manifest_rules_and_digest() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(normalize_manifest(&[]), Err(ManifestError::Size));
        assert_eq!(
            normalize_manifest(&ids(&["a", " a "])),
            Err(ManifestError::Duplicate("a".into()))
        );
        let other = check_manifest("z", &ids(&["x"]), |_| {
            Some(ReferencedVersion {
                zone_id: "y".into(),
                schema_version: INPUT_SCHEMA_VERSION.into(),
            })
        });
        assert_eq!(other, Err(ManifestError::OtherZone("x".into())));
        assert_eq!(
            check_manifest("z", &ids(&["x"]), |_| None),
            Err(ManifestError::Unknown("x".into()))
        );
        // sha256 of `[{"policy_version_id":"a"}]`
        assert_eq!(
            manifest_sha256(&ids(&["a"])),
            hex::encode(Sha256::digest(br#"[{"policy_version_id":"a"}]"#))
        );
    }
}
