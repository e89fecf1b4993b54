//! The policy aggregate: a named data document with immutable, numbered versions (§10).
//!
//! Name uniqueness among a zone's live policies spans aggregates, so it is a reservation in
//! the zone's slot (kind [`NAME_RESERVATION`], value = SHA-256 of the name), taken at create
//! and released at archive. Version content is validated here, before anything is recorded.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::bundle::INPUT_SCHEMA_VERSION;
use super::document::{self, DocumentError};
use crate::actor::Actor;
use crate::event::EventMeta;
use crate::validation::has_prefix_ci;

pub const NAME_RESERVATION: &str = "policy_name";
pub const RESERVED_NAME_PREFIX: &str = "caracal.sys/";
pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2_000;

/// The policy header as the read model stores it (versions are rows of their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: String,
    pub updated_via_operator: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// The newest version number (1, 2, …).
    pub latest_version: u64,
    /// Aggregate version in the log.
    pub version: u64,
}

/// One immutable policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub id: String,
    pub policy_id: String,
    pub zone_id: String,
    pub version: u64,
    pub content: String,
    pub content_sha256: String,
    pub schema_version: String,
    pub created_by: String,
    pub created_via_operator: bool,
    pub created_at: DateTime<Utc>,
}

/// Lowercase hex SHA-256 of a version's content (`content_sha256`).
pub fn content_sha256(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// The reservation value of a name: names are unbounded text, keys are not.
pub fn name_reservation_value(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

/// The uniqueness reservations a policy holds: its name while it is live.
pub fn reservations(p: &Policy) -> Vec<(&'static str, String)> {
    match p.archived_at {
        None => vec![(NAME_RESERVATION, name_reservation_value(&p.name))],
        Some(_) => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecorded {
    pub version_id: String,
    pub version: u64,
    pub content: String,
    pub content_sha256: String,
    pub schema_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCreated {
    pub zone_id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_via_operator: bool,
    pub first_version: VersionRecorded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionAdded {
    pub version: VersionRecorded,
    pub created_by: String,
    pub created_via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyArchived {
    pub archived_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyEvent {
    Created(PolicyCreated),
    VersionAdded(PolicyVersionAdded),
    Archived(PolicyArchived),
}

impl PolicyEvent {
    pub const CREATED: &'static str = "policy.created";
    pub const VERSION_ADDED: &'static str = "policy.version_added";
    pub const ARCHIVED: &'static str = "policy.archived";

    pub fn event_type(&self) -> &'static str {
        match self {
            PolicyEvent::Created(_) => Self::CREATED,
            PolicyEvent::VersionAdded(_) => Self::VERSION_ADDED,
            PolicyEvent::Archived(_) => Self::ARCHIVED,
        }
    }

    /// The version an event records, if any.
    pub fn recorded_version(&self) -> Option<&VersionRecorded> {
        match self {
            PolicyEvent::Created(c) => Some(&c.first_version),
            PolicyEvent::VersionAdded(v) => Some(&v.version),
            PolicyEvent::Archived(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyCommand {
    Create {
        zone_id: String,
        name: String,
        description: Option<String>,
        content: String,
        version_id: String,
    },
    AddVersion {
        content: String,
        version_id: String,
    },
    Archive,
}

/// Facts from outside the aggregate the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyContext {
    pub actor: Actor,
    /// The zone's `operator_coauthor_badge` (decides `*_via_operator`, §1).
    pub zone_operator_coauthor_badge: bool,
}

impl PolicyContext {
    fn via_operator(&self) -> bool {
        self.actor.via_operator_header && self.zone_operator_coauthor_badge
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("policy not found")]
    NotFound,
    #[error("policy already exists")]
    AlreadyExists,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("invalid_rego: {0}")]
    InvalidRego(DocumentError),
    #[error("the caracal.sys namespace is reserved")]
    ReservedNamespace,
}

/// Checks a name: non-empty after trimming, at most 200 characters.
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    if name.trim().is_empty() {
        return Err(PolicyError::Invalid("name must not be empty"));
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(PolicyError::Invalid("name must be at most 200 characters"));
    }
    Ok(())
}

pub fn validate_description(d: &Option<String>) -> Result<(), PolicyError> {
    match d {
        Some(d) if d.chars().count() > DESCRIPTION_MAX_CHARS => Err(PolicyError::Invalid(
            "description must be at most 2000 characters",
        )),
        _ => Ok(()),
    }
}

fn record(version_id: &str, version: u64, content: &str) -> Result<VersionRecorded, PolicyError> {
    document::validate(content).map_err(PolicyError::InvalidRego)?;
    Ok(VersionRecorded {
        version_id: version_id.to_owned(),
        version,
        content: content.to_owned(),
        content_sha256: content_sha256(content),
        schema_version: INPUT_SCHEMA_VERSION.to_owned(),
    })
}

pub fn decide(
    state: Option<&Policy>,
    command: &PolicyCommand,
    ctx: &PolicyContext,
) -> Result<Vec<PolicyEvent>, PolicyError> {
    match command {
        PolicyCommand::Create {
            zone_id,
            name,
            description,
            content,
            version_id,
        } => {
            if state.is_some() {
                return Err(PolicyError::AlreadyExists);
            }
            validate_name(name)?;
            validate_description(description)?;
            if has_prefix_ci(name, RESERVED_NAME_PREFIX) && !ctx.actor.is_bootstrap {
                return Err(PolicyError::ReservedNamespace);
            }
            let first_version = record(version_id, 1, content)?;
            Ok(vec![PolicyEvent::Created(PolicyCreated {
                zone_id: zone_id.clone(),
                name: name.clone(),
                description: description.clone(),
                created_by: ctx.actor.id.clone(),
                created_via_operator: ctx.via_operator(),
                first_version,
            })])
        }
        PolicyCommand::AddVersion {
            content,
            version_id,
        } => {
            // Content is checked before existence (§10).
            document::validate(content).map_err(PolicyError::InvalidRego)?;
            let p = state
                .filter(|p| p.archived_at.is_none())
                .ok_or(PolicyError::NotFound)?;
            Ok(vec![PolicyEvent::VersionAdded(PolicyVersionAdded {
                version: record(version_id, p.latest_version + 1, content)?,
                created_by: ctx.actor.id.clone(),
                created_via_operator: ctx.via_operator(),
            })])
        }
        PolicyCommand::Archive => {
            state
                .filter(|p| p.archived_at.is_none())
                .ok_or(PolicyError::NotFound)?;
            Ok(vec![PolicyEvent::Archived(PolicyArchived {
                archived_by: ctx.actor.id.clone(),
            })])
        }
    }
}

pub fn evolve(state: Option<Policy>, meta: &EventMeta, event: &PolicyEvent) -> Option<Policy> {
    match (state, event) {
        (None, PolicyEvent::Created(c)) => Some(Policy {
            id: meta.aggregate_id.clone(),
            zone_id: c.zone_id.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            created_by: c.created_by.clone(),
            created_via_operator: c.created_via_operator,
            updated_by: c.created_by.clone(),
            updated_via_operator: c.created_via_operator,
            created_at: meta.occurred_at,
            updated_at: meta.occurred_at,
            archived_at: None,
            latest_version: c.first_version.version,
            version: meta.aggregate_version,
        }),
        (Some(mut p), PolicyEvent::VersionAdded(v)) => {
            p.latest_version = p.latest_version.max(v.version.version);
            p.updated_by = v.created_by.clone();
            p.updated_via_operator = v.created_via_operator;
            p.updated_at = meta.occurred_at;
            p.version = meta.aggregate_version;
            Some(p)
        }
        (Some(mut p), PolicyEvent::Archived(_)) => {
            p.archived_at.get_or_insert(meta.occurred_at);
            p.updated_at = meta.occurred_at;
            p.version = meta.aggregate_version;
            Some(p)
        }
        (state, _) => state,
    }
}

/// The version row an event records (for the projection and for folding an answer).
pub fn version_row(
    policy: &Policy,
    meta: &EventMeta,
    event: &PolicyEvent,
) -> Option<PolicyVersion> {
    let (v, by, via) = match event {
        PolicyEvent::Created(c) => (&c.first_version, &c.created_by, c.created_via_operator),
        PolicyEvent::VersionAdded(a) => (&a.version, &a.created_by, a.created_via_operator),
        PolicyEvent::Archived(_) => return None,
    };
    Some(PolicyVersion {
        id: v.version_id.clone(),
        policy_id: policy.id.clone(),
        zone_id: policy.zone_id.clone(),
        version: v.version,
        content: v.content.clone(),
        content_sha256: v.content_sha256.clone(),
        schema_version: v.schema_version.clone(),
        created_by: by.clone(),
        created_via_operator: via,
        created_at: meta.occurred_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{given, meta, Given, PolicyAggregate};

    const DOC: &str =
        "# caracal:data-document\npackage caracal.authz\nimport rego.v1\napp_ids := {}\n";

    fn ctx(bootstrap: bool) -> PolicyContext {
        PolicyContext {
            actor: Actor {
                id: "admin:t".into(),
                is_bootstrap: bootstrap,
                via_operator_header: true,
            },
            zone_operator_coauthor_badge: true,
        }
    }

    fn create(name: &str) -> PolicyCommand {
        PolicyCommand::Create {
            zone_id: "z".into(),
            name: name.into(),
            description: None,
            content: DOC.into(),
            version_id: "v1".into(),
        }
    }

    fn none() -> Given<PolicyAggregate> {
        given([])
    }

    #[test]
    fn create_version_archive() {
        let created = none().and(&create("grants"), &ctx(false));
        let p = created.state().unwrap().clone();
        assert_eq!(p.latest_version, 1);
        assert!(p.created_via_operator);
        let add = PolicyCommand::AddVersion {
            content: DOC.replace("{}", "{\"a\": \"b\"}"),
            version_id: "v2".into(),
        };
        let (history, ev2) = created.when(&add, &ctx(false)).events();
        let row = version_row(&p, &meta(2), &ev2[0]).unwrap();
        assert_eq!(row.version, 2);
        assert_eq!(row.content_sha256, content_sha256(&row.content));
        let archived = history
            .and(&add, &ctx(false))
            .and(&PolicyCommand::Archive, &ctx(false));
        let p = archived.state().unwrap();
        assert!(p.archived_at.is_some());
        assert!(reservations(p).is_empty());
        archived
            .when(&PolicyCommand::Archive, &ctx(false))
            .then_error(PolicyError::NotFound);
    }

    #[test]
    fn content_is_checked_before_existence() {
        let add = PolicyCommand::AddVersion {
            content: "package x".into(),
            version_id: "v".into(),
        };
        assert!(matches!(
            none().when(&add, &ctx(false)).result(),
            Err(PolicyError::InvalidRego(_))
        ));
    }

    #[test]
    fn reserved_names_need_the_bootstrap_token() {
        none()
            .when(&create(" CARACAL.SYS/x"), &ctx(false))
            .then_error(PolicyError::ReservedNamespace);
        assert!(none()
            .when(&create("caracal.sys/x"), &ctx(true))
            .result()
            .is_ok());
    }
}
