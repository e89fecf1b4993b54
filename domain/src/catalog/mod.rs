//! The zone catalog: applications, providers, resources, grants and provider connections
//! (spec: management-api.md §6, §7, §8, §12, §13), and the run-time records the STS and
//! Coordinator create (authority records, sessions, approvals: §14.3, §14.4, §15).
//!
//! These five share one life cycle — created in a zone, replaced by later writes, archived —
//! so they share one event shape: every `created`/`updated` event carries the object's whole
//! new data (a state-carrying event). `evolve` is then the same for all of them, and an
//! auditor reading one event sees the full object without folding history. What differs per
//! kind — which fields exist and the rules they obey — lives in the kind's module and is
//! applied before the command reaches `decide`.
//!
//! Secrets never enter the data in plaintext: client secrets arrive as Argon2id hashes and
//! sealed copies, provider credentials and connection tokens as AES-256-GCM envelopes (made
//! by the services, which hold the keys).

pub mod agent_service;
pub mod application;
pub mod connection;
pub mod control_key;
pub mod data_key;
pub mod grant;
pub mod invocation;
pub mod provider;
pub mod provider_config;
pub mod resource;
pub mod runtime;
pub mod signing_key;
pub mod step_up;
pub mod subject_issuer;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::event::{AggregateKind, EventMeta};

pub use agent_service::AgentServiceData;
pub use application::ApplicationData;
pub use connection::ConnectionData;
pub use data_key::DataKeyData;
pub use grant::GrantData;
pub use invocation::InvocationData;
pub use provider::ProviderData;
pub use resource::ResourceData;
pub use runtime::{ApprovalData, AuthorityRecordData, SessionData};
pub use signing_key::SigningKeyData;
pub use subject_issuer::SubjectIssuerData;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    Application,
    Provider,
    Resource,
    Grant,
    ProviderConnection,
    AuthorityRecord,
    Session,
    Approval,
    SigningKey,
    AgentService,
    Invocation,
    /// A zone's wrapped data key (`data_key.rs`).
    DataKey,
    /// A Federated user issuer (`subject_issuer.rs`).
    SubjectIssuer,
}

impl CatalogKind {
    pub const ALL: [CatalogKind; 13] = [
        CatalogKind::Application,
        CatalogKind::Provider,
        CatalogKind::Resource,
        CatalogKind::Grant,
        CatalogKind::ProviderConnection,
        CatalogKind::AuthorityRecord,
        CatalogKind::Session,
        CatalogKind::Approval,
        CatalogKind::SigningKey,
        CatalogKind::AgentService,
        CatalogKind::Invocation,
        CatalogKind::DataKey,
        CatalogKind::SubjectIssuer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CatalogKind::Application => "application",
            CatalogKind::Provider => "provider",
            CatalogKind::Resource => "resource",
            CatalogKind::Grant => "grant",
            CatalogKind::ProviderConnection => "provider_connection",
            CatalogKind::AuthorityRecord => "authority_record",
            CatalogKind::Session => "session",
            CatalogKind::Approval => "approval",
            CatalogKind::SigningKey => "signing_key",
            CatalogKind::AgentService => "agent_service",
            CatalogKind::Invocation => "invocation",
            CatalogKind::DataKey => "data_key",
            CatalogKind::SubjectIssuer => "subject_issuer",
        }
    }

    pub fn aggregate_kind(self) -> AggregateKind {
        match self {
            CatalogKind::Application => AggregateKind::Application,
            CatalogKind::Provider => AggregateKind::Provider,
            CatalogKind::Resource => AggregateKind::Resource,
            CatalogKind::Grant => AggregateKind::Grant,
            CatalogKind::ProviderConnection => AggregateKind::ProviderConnection,
            CatalogKind::AuthorityRecord => AggregateKind::AuthorityRecord,
            CatalogKind::Session => AggregateKind::Session,
            CatalogKind::Approval => AggregateKind::Approval,
            CatalogKind::SigningKey => AggregateKind::SigningKey,
            CatalogKind::AgentService => AggregateKind::AgentService,
            CatalogKind::Invocation => AggregateKind::Invocation,
            CatalogKind::DataKey => AggregateKind::DataKey,
            CatalogKind::SubjectIssuer => AggregateKind::SubjectIssuer,
        }
    }

    /// The dotted event types of this kind: created, updated, archived, secret revealed.
    pub fn event_types(self) -> [&'static str; 4] {
        match self {
            CatalogKind::Application => [
                "application.created",
                "application.updated",
                "application.archived",
                "application.secret_revealed",
            ],
            CatalogKind::Provider => [
                "provider.created",
                "provider.updated",
                "provider.archived",
                "provider.secret_revealed",
            ],
            CatalogKind::Resource => [
                "resource.created",
                "resource.updated",
                "resource.archived",
                "resource.secret_revealed",
            ],
            CatalogKind::Grant => [
                "grant.created",
                "grant.updated",
                "grant.archived",
                "grant.secret_revealed",
            ],
            CatalogKind::ProviderConnection => [
                "provider_connection.created",
                "provider_connection.updated",
                "provider_connection.archived",
                "provider_connection.secret_revealed",
            ],
            CatalogKind::AuthorityRecord => [
                "authority_record.created",
                "authority_record.updated",
                "authority_record.archived",
                "authority_record.secret_revealed",
            ],
            CatalogKind::Session => [
                "session.created",
                "session.updated",
                "session.archived",
                "session.secret_revealed",
            ],
            CatalogKind::Approval => [
                "approval.created",
                "approval.updated",
                "approval.archived",
                "approval.secret_revealed",
            ],
            CatalogKind::SigningKey => [
                "signing_key.created",
                "signing_key.updated",
                "signing_key.archived",
                "signing_key.secret_revealed",
            ],
            CatalogKind::AgentService => [
                "agent_service.created",
                "agent_service.updated",
                "agent_service.archived",
                "agent_service.secret_revealed",
            ],
            CatalogKind::Invocation => [
                "invocation.created",
                "invocation.updated",
                "invocation.archived",
                "invocation.secret_revealed",
            ],
            CatalogKind::DataKey => [
                "data_key.created",
                "data_key.updated",
                "data_key.archived",
                "data_key.secret_revealed",
            ],
            CatalogKind::SubjectIssuer => [
                "subject_issuer.created",
                "subject_issuer.updated",
                "subject_issuer.archived",
                "subject_issuer.secret_revealed",
            ],
        }
    }
}

/// The data of one catalog object; the variant is its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityData {
    Application(ApplicationData),
    Provider(ProviderData),
    Resource(ResourceData),
    Grant(GrantData),
    ProviderConnection(ConnectionData),
    AuthorityRecord(AuthorityRecordData),
    Session(SessionData),
    Approval(ApprovalData),
    SigningKey(SigningKeyData),
    AgentService(AgentServiceData),
    Invocation(InvocationData),
    DataKey(DataKeyData),
    SubjectIssuer(SubjectIssuerData),
}

impl EntityData {
    pub fn kind(&self) -> CatalogKind {
        match self {
            EntityData::Application(_) => CatalogKind::Application,
            EntityData::Provider(_) => CatalogKind::Provider,
            EntityData::Resource(_) => CatalogKind::Resource,
            EntityData::Grant(_) => CatalogKind::Grant,
            EntityData::ProviderConnection(_) => CatalogKind::ProviderConnection,
            EntityData::AuthorityRecord(_) => CatalogKind::AuthorityRecord,
            EntityData::Session(_) => CatalogKind::Session,
            EntityData::Approval(_) => CatalogKind::Approval,
            EntityData::SigningKey(_) => CatalogKind::SigningKey,
            EntityData::DataKey(_) => CatalogKind::DataKey,
            EntityData::AgentService(_) => CatalogKind::AgentService,
            EntityData::Invocation(_) => CatalogKind::Invocation,
            EntityData::SubjectIssuer(_) => CatalogKind::SubjectIssuer,
        }
    }

    /// The same data with sealed custody copies removed (what an archive leaves behind).
    fn without_custody(mut self) -> Self {
        match &mut self {
            EntityData::Application(a) => a.sealed_secret = None,
            EntityData::Provider(p) => p.sealed_secrets = None,
            _ => {}
        }
        self
    }
}

/// Who wrote an object: the attribution block's inputs (§1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub by: String,
    pub via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub zone_id: String,
    pub data: EntityData,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Updated {
    pub data: EntityData,
    pub stamp: Stamp,
    /// Sorted names of the body fields the write changed (secret names excluded).
    pub changed_fields: Vec<String>,
    pub secret_rotated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archived {
    pub kind: CatalogKind,
    pub by: String,
}

/// A stored credential was revealed (§6 client-secret; §16 `credential_revealed`). The
/// object does not change; the event exists so the reveal is on the record and audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRevealed {
    pub kind: CatalogKind,
    pub by: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogEvent {
    Created(Created),
    Updated(Updated),
    Archived(Archived),
    SecretRevealed(SecretRevealed),
}

impl CatalogEvent {
    pub fn kind(&self) -> CatalogKind {
        match self {
            CatalogEvent::Created(c) => c.data.kind(),
            CatalogEvent::Updated(u) => u.data.kind(),
            CatalogEvent::Archived(a) => a.kind,
            CatalogEvent::SecretRevealed(r) => r.kind,
        }
    }

    pub fn event_type(&self) -> &'static str {
        let [created, updated, archived, revealed] = self.kind().event_types();
        match self {
            CatalogEvent::Created(_) => created,
            CatalogEvent::Updated(_) => updated,
            CatalogEvent::Archived(_) => archived,
            CatalogEvent::SecretRevealed(_) => revealed,
        }
    }
}

/// A catalog object as `evolve` builds it and the read model stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub id: String,
    pub zone_id: String,
    pub data: EntityData,
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: Option<String>,
    pub updated_via_operator: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: u64,
}

impl Entity {
    pub fn kind(&self) -> CatalogKind {
        self.data.kind()
    }

    pub fn is_live(&self) -> bool {
        self.archived_at.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogCommand {
    Create {
        zone_id: String,
        data: EntityData,
    },
    /// Replace the object's data (PATCH, rotation, revocation…).
    Replace {
        data: EntityData,
        changed_fields: Vec<String>,
        secret_rotated: bool,
    },
    Archive {
        kind: CatalogKind,
    },
    RevealSecret {
        kind: CatalogKind,
        credential: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogError {
    #[error("{0:?} not found")]
    NotFound(CatalogKind),
    #[error("id already in use")]
    AlreadyExists,
}

/// Decides a catalog command against the object's current state. The kind's own rules have
/// already shaped `data`; what is left is life cycle: creates need no object, everything
/// else needs a live one of the same kind.
pub fn decide(
    state: Option<&Entity>,
    command: &CatalogCommand,
    stamp: &Stamp,
) -> Result<Vec<CatalogEvent>, CatalogError> {
    let live = |kind: CatalogKind| match state {
        Some(e) if e.is_live() && e.kind() == kind => Ok(e),
        _ => Err(CatalogError::NotFound(kind)),
    };
    match command {
        CatalogCommand::Create { zone_id, data } => {
            if state.is_some() {
                return Err(CatalogError::AlreadyExists);
            }
            Ok(vec![CatalogEvent::Created(Created {
                zone_id: zone_id.clone(),
                data: data.clone(),
                stamp: stamp.clone(),
            })])
        }
        CatalogCommand::Replace {
            data,
            changed_fields,
            secret_rotated,
        } => {
            live(data.kind())?;
            Ok(vec![CatalogEvent::Updated(Updated {
                data: data.clone(),
                stamp: stamp.clone(),
                changed_fields: changed_fields.clone(),
                secret_rotated: *secret_rotated,
            })])
        }
        CatalogCommand::Archive { kind } => {
            live(*kind)?;
            Ok(vec![CatalogEvent::Archived(Archived {
                kind: *kind,
                by: stamp.by.clone(),
            })])
        }
        CatalogCommand::RevealSecret { kind, credential } => {
            live(*kind)?;
            Ok(vec![CatalogEvent::SecretRevealed(SecretRevealed {
                kind: *kind,
                by: stamp.by.clone(),
                credential: credential.clone(),
            })])
        }
    }
}

/// Applies one event. Events that do not fit the state leave it unchanged.
pub fn evolve(state: Option<Entity>, meta: &EventMeta, event: &CatalogEvent) -> Option<Entity> {
    match (state, event) {
        (None, CatalogEvent::Created(c)) => Some(Entity {
            id: meta.aggregate_id.clone(),
            zone_id: c.zone_id.clone(),
            data: c.data.clone(),
            created_by: c.stamp.by.clone(),
            created_via_operator: c.stamp.via_operator,
            updated_by: None,
            updated_via_operator: false,
            created_at: meta.occurred_at,
            updated_at: None,
            archived_at: None,
            version: meta.aggregate_version,
        }),
        (Some(mut e), CatalogEvent::Updated(u)) if u.data.kind() == e.kind() => {
            e.data = u.data.clone();
            e.updated_by = Some(u.stamp.by.clone());
            e.updated_via_operator = u.stamp.via_operator;
            e.updated_at = Some(meta.occurred_at);
            e.version = meta.aggregate_version;
            Some(e)
        }
        (Some(mut e), CatalogEvent::Archived(a)) if a.kind == e.kind() => {
            // §18: archiving deletes the custody copies of secrets.
            e.data = e.data.without_custody();
            e.archived_at = Some(meta.occurred_at);
            e.updated_at = Some(meta.occurred_at);
            e.version = meta.aggregate_version;
            Some(e)
        }
        (Some(mut e), CatalogEvent::SecretRevealed(_)) => {
            e.version = meta.aggregate_version;
            Some(e)
        }
        (state, _) => state,
    }
}

/// Reservation kinds in the zone's slot (values are SHA-256 hex of the unique key).
pub const APPLICATION_NAME: &str = "application_name";
pub const PROVIDER_IDENTIFIER: &str = "provider_identifier";
pub const RESOURCE_IDENTIFIER: &str = "resource_identifier";
pub const CONNECTION_KEY: &str = "provider_connection";

pub fn reservation_value(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The uniqueness reservation a live object holds, if its kind has one: managed application
/// names (case-insensitive), provider and resource identifiers, the active connection of a
/// (subject, provider) pair.
pub fn reservation(e: &Entity) -> Option<(&'static str, String)> {
    if !e.is_live() {
        return None;
    }
    match &e.data {
        EntityData::Application(a) => a.name_reservation(),
        EntityData::Provider(p) => Some((PROVIDER_IDENTIFIER, reservation_value(&p.identifier))),
        EntityData::Resource(r) => Some((RESOURCE_IDENTIFIER, reservation_value(&r.identifier))),
        EntityData::ProviderConnection(c) => c.key_reservation(),
        EntityData::SigningKey(k) => Some((
            signing_key::GENERATION,
            reservation_value(&k.generation.to_string()),
        )),
        EntityData::AgentService(a) => Some((
            agent_service::ENDPOINT,
            agent_service::endpoint_key(&a.application_id, &a.endpoint_url),
        )),
        EntityData::SubjectIssuer(i) => {
            Some((subject_issuer::ISSUER, reservation_value(&i.issuer)))
        }
        EntityData::Invocation(_)
        | EntityData::Grant(_)
        | EntityData::AuthorityRecord(_)
        | EntityData::Session(_)
        | EntityData::Approval(_)
        | EntityData::DataKey(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{given, CatalogAggregate, Given};

    fn none() -> Given<CatalogAggregate> {
        given([])
    }

    fn grant(status: &str) -> EntityData {
        EntityData::Grant(GrantData {
            application_id: "app".into(),
            user_id: "u".into(),
            resource_id: "r".into(),
            scopes: vec!["read".into()],
            status: status.into(),
        })
    }

    fn stamp() -> Stamp {
        Stamp {
            by: "admin:t".into(),
            via_operator: false,
        }
    }

    #[test]
    fn create_replace_archive_fold() {
        let create = CatalogCommand::Create {
            zone_id: "z".into(),
            data: grant("active"),
        };
        let g = none().and(&create, &stamp());
        let e = g.state().unwrap();
        assert_eq!(e.zone_id, "z");
        assert_eq!(e.updated_at, None);
        let g = g.when(&create, &stamp());
        assert_eq!(g.result(), &Err(CatalogError::AlreadyExists));
        let replace = CatalogCommand::Replace {
            data: grant("revoked"),
            changed_fields: vec!["status".into()],
            secret_rotated: false,
        };
        let g = g.history().and(&replace, &stamp());
        let e = g.state().unwrap();
        assert_eq!(e.data, grant("revoked"));
        assert_eq!(e.version, 2);
        assert!(e.updated_at.is_some());
        let archive = CatalogCommand::Archive {
            kind: CatalogKind::Grant,
        };
        let g = g.and(&archive, &stamp());
        assert!(!g.state().unwrap().is_live());
        g.when(&archive, &stamp())
            .then_error(CatalogError::NotFound(CatalogKind::Grant));
    }

    #[test]
    fn a_command_for_another_kind_finds_nothing() {
        none()
            .and(
                &CatalogCommand::Create {
                    zone_id: "z".into(),
                    data: grant("active"),
                },
                &stamp(),
            )
            .when(
                &CatalogCommand::Archive {
                    kind: CatalogKind::Provider,
                },
                &stamp(),
            )
            .then_error(CatalogError::NotFound(CatalogKind::Provider));
    }

    #[test]
    fn event_types_follow_the_kind() {
        let ev = CatalogEvent::Archived(Archived {
            kind: CatalogKind::Resource,
            by: "x".into(),
        });
        assert_eq!(ev.event_type(), "resource.archived");
    }
}
