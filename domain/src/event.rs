//! The event catalogue shared by every aggregate, and the metadata `evolve` receives.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::admin_audit::AdminAuditEvent;
use crate::admin_token::AdminTokenEvent;
use crate::audit::AuditEvent;
use crate::catalog::CatalogEvent;
use crate::delegation::DelegationEvent;
use crate::policy::policies::PolicyEvent;
use crate::policy::policy_sets::PolicySetEvent;
use crate::zone::ZoneEvent;

/// The kinds of aggregate whose events live in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Zone,
    AdminToken,
    Policy,
    /// A zone's policy sets and active binding (one aggregate per zone).
    PolicySets,
    Application,
    Provider,
    Resource,
    Grant,
    ProviderConnection,
    AuthorityRecord,
    Session,
    Approval,
    /// A zone's mandate signing key (catalog kind `signing_key`).
    SigningKey,
    /// One admin audit record (each its own single-event aggregate).
    AdminAudit,
    /// One ingested audit-ledger record (single-event aggregate, id = the producer's id).
    Audit,
    /// A zone's Delegation graph (one aggregate per zone; its version is the graph epoch).
    DelegationGraph,
    /// A long-lived service registration (catalog kind `agent_service`).
    AgentService,
    /// A Coordinator invocation (catalog kind `invocation`).
    Invocation,
    /// A zone's wrapped data key (catalog kind `data_key`).
    DataKey,
    /// A Federated user issuer (catalog kind `subject_issuer`).
    SubjectIssuer,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Zone => "zone",
            AggregateKind::AdminToken => "admin_token",
            AggregateKind::Policy => "policy",
            AggregateKind::PolicySets => "policy_sets",
            AggregateKind::Application => "application",
            AggregateKind::Provider => "provider",
            AggregateKind::Resource => "resource",
            AggregateKind::Grant => "grant",
            AggregateKind::ProviderConnection => "provider_connection",
            AggregateKind::AuthorityRecord => "authority_record",
            AggregateKind::Session => "session",
            AggregateKind::Approval => "approval",
            AggregateKind::SigningKey => "signing_key",
            AggregateKind::AdminAudit => "admin_audit",
            AggregateKind::Audit => "audit",
            AggregateKind::DelegationGraph => "delegation_graph",
            AggregateKind::AgentService => "agent_service",
            AggregateKind::Invocation => "invocation",
            AggregateKind::DataKey => "data_key",
            AggregateKind::SubjectIssuer => "subject_issuer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zone" => Some(AggregateKind::Zone),
            "admin_token" => Some(AggregateKind::AdminToken),
            "policy" => Some(AggregateKind::Policy),
            "policy_sets" => Some(AggregateKind::PolicySets),
            "application" => Some(AggregateKind::Application),
            "provider" => Some(AggregateKind::Provider),
            "resource" => Some(AggregateKind::Resource),
            "grant" => Some(AggregateKind::Grant),
            "provider_connection" => Some(AggregateKind::ProviderConnection),
            "authority_record" => Some(AggregateKind::AuthorityRecord),
            "session" => Some(AggregateKind::Session),
            "approval" => Some(AggregateKind::Approval),
            "signing_key" => Some(AggregateKind::SigningKey),
            "admin_audit" => Some(AggregateKind::AdminAudit),
            "audit" => Some(AggregateKind::Audit),
            "delegation_graph" => Some(AggregateKind::DelegationGraph),
            "agent_service" => Some(AggregateKind::AgentService),
            "invocation" => Some(AggregateKind::Invocation),
            "data_key" => Some(AggregateKind::DataKey),
            "subject_issuer" => Some(AggregateKind::SubjectIssuer),
            _ => None,
        }
    }

    /// Zone-less aggregates live in the system stream; everything else in its zone's stream.
    pub fn is_zone_less(self) -> bool {
        matches!(self, AggregateKind::Zone | AggregateKind::AdminToken)
    }

    /// Admin-audit records of zone-less requests go on the global chain in the system
    /// stream; those of a zone's requests on the zone's own chain.
    pub fn zone_optional(self) -> bool {
        matches!(self, AggregateKind::AdminAudit)
    }
}

/// Every domain event, across aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Zone(ZoneEvent),
    AdminToken(AdminTokenEvent),
    Policy(PolicyEvent),
    PolicySet(PolicySetEvent),
    /// Applications, providers, resources, grants, provider connections.
    Catalog(CatalogEvent),
    AdminAudit(AdminAuditEvent),
    Audit(AuditEvent),
    Delegation(DelegationEvent),
}

impl Event {
    /// The dotted event type recorded in the envelope (e.g. `zone.created`).
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Zone(e) => e.event_type(),
            Event::AdminToken(e) => e.event_type(),
            Event::Policy(e) => e.event_type(),
            Event::PolicySet(e) => e.event_type(),
            Event::Catalog(e) => e.event_type(),
            Event::AdminAudit(e) => e.event_type(),
            Event::Audit(e) => e.event_type(),
            Event::Delegation(e) => e.event_type(),
        }
    }

    pub fn aggregate_kind(&self) -> AggregateKind {
        match self {
            Event::Zone(_) => AggregateKind::Zone,
            Event::AdminToken(_) => AggregateKind::AdminToken,
            Event::Policy(_) => AggregateKind::Policy,
            Event::PolicySet(_) => AggregateKind::PolicySets,
            Event::Catalog(e) => e.kind().aggregate_kind(),
            Event::AdminAudit(_) => AggregateKind::AdminAudit,
            Event::Audit(_) => AggregateKind::Audit,
            Event::Delegation(_) => AggregateKind::DelegationGraph,
        }
    }
}

/// What `evolve` knows about an event besides its payload: taken from the signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's own id (UUIDv7), so read models can point back into the log.
    pub event_id: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event (1 for the first event).
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
}
