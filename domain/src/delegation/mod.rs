//! The Delegation graph of a zone (coordinator.md §7, §11–§13): edges that hand a narrower
//! part of one Session's authority to another.
//!
//! A zone's graph is **one aggregate** (`delegations:<zone>`): its version is the zone's
//! graph epoch (§11.2), every change bumps it once, and because creations are decided on one
//! versioned snapshot no two concurrent creations can close a cycle between them. A decision
//! needs only the part of the graph it looks at (the source's inbound edges, what the target
//! reaches, what a revocation walks), so the services load that part of the read model at
//! the aggregate's version and `decide` runs on it as on the whole.

pub mod constraints;
pub mod lineage;
mod narrowing;
mod walk;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::event::EventMeta;
pub use constraints::Constraints;
pub use narrowing::{check_narrowing, ResolvedResource};
pub use walk::{
    effective_authority, impact, reachable, revoke_walk, traverse, EffectiveAuthority, Hop, Impact,
};

/// `end_reason` prefix of an edge ended because a Session at one of its ends ended.
pub const SESSION_ENDED: &str = "session_ended:";

/// Traversal, impact and revocation walks stop at this many edges (§11.4).
pub const WALK_LIMIT: u32 = 10;

/// The aggregate id of a zone's graph.
pub fn graph_id(zone_id: &str) -> String {
    format!("delegations:{zone_id}")
}

/// One Delegation edge as the graph holds it (§3.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub id: String,
    pub zone_id: String,
    pub source_session_id: String,
    pub target_session_id: String,
    pub issuer_application_id: String,
    pub receiver_application_id: String,
    pub parent_edge_id: Option<String>,
    /// Canonical resource row id.
    pub resource_id: Option<String>,
    /// The public identifier of `resource_id` (what effective authority reports).
    #[serde(default)]
    pub resource_identifier: Option<String>,
    /// Sorted, distinct.
    pub scopes: Vec<String>,
    /// The normalized constraint object (§7.1).
    pub constraints_json: Value,
    /// `active` | `revoked` | `expired`.
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub edge_version: u64,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Why an edge ended: `delegation_revoked` (the revoke route's walk),
    /// `session_ended:<reason>` (a Session at one end ended), `expired`.
    #[serde(default)]
    pub end_reason: Option<String>,
}

impl Edge {
    /// Live iff `active` and unexpired (§3.4).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.status == "active" && self.expires_at > now
    }

    pub fn constraints(&self) -> Result<Constraints, DelegationRefusal> {
        constraints::parse(&self.constraints_json)
    }

    /// A resource-unbound edge (`broad_reason` set by creation).
    pub fn broad_reason(&self) -> Option<&str> {
        self.constraints_json
            .get("broad_reason")
            .and_then(Value::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeCreated {
    pub edge: Edge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgesRevoked {
    /// In walk order; the named edge first on the revoke route.
    pub edge_ids: Vec<String>,
    pub reason: String,
    /// The edge the revoke route named (absent for a terminate cascade).
    pub named_edge: Option<String>,
    pub at: DateTime<Utc>,
    /// The revoke route's fan-out (§12.4): the target Sessions still running when it was
    /// decided, each announced on `caracal.sessions.revoke` with its subject record unless
    /// that record is exempt.
    #[serde(default)]
    pub revoked_subjects: Vec<RevokedSubject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSubject {
    /// The authority record (`session_id` on the wire); `None` when the record is exempt
    /// (application-typed, or still used by another open Session): the message then
    /// names only the Session and the Delegation.
    pub record_id: Option<String>,
    pub agent_session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgesExpired {
    pub edge_ids: Vec<String>,
    pub at: DateTime<Utc>,
}

// Events are built one at a time and moved into the log; boxing the edge would only add an
// allocation to every creation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DelegationEvent {
    EdgeCreated(EdgeCreated),
    EdgesRevoked(EdgesRevoked),
    EdgesExpired(EdgesExpired),
}

impl DelegationEvent {
    pub const TYPES: [&'static str; 3] = [
        "delegation.edge_created",
        "delegation.edges_revoked",
        "delegation.edges_expired",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            DelegationEvent::EdgeCreated(_) => Self::TYPES[0],
            DelegationEvent::EdgesRevoked(_) => Self::TYPES[1],
            DelegationEvent::EdgesExpired(_) => Self::TYPES[2],
        }
    }
}

/// The edges of a zone a decision looks at (the whole graph in tests), by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    pub edges: BTreeMap<String, Edge>,
}

impl Graph {
    pub fn from_edges(edges: impl IntoIterator<Item = Edge>) -> Self {
        Graph {
            edges: edges.into_iter().map(|e| (e.id.clone(), e)).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Edge> {
        self.edges.get(id)
    }

    /// Live edges into a Session, by id.
    pub fn live_inbound(&self, session: &str, now: DateTime<Utc>) -> Vec<&Edge> {
        self.edges
            .values()
            .filter(|e| e.target_session_id == session && e.is_live(now))
            .collect()
    }

    /// Edges (any status) that name a Session at either end and are still `active`.
    pub fn active_touching<'a>(&'a self, sessions: &'a [String]) -> impl Iterator<Item = &'a Edge> {
        self.edges.values().filter(move |e| {
            e.status == "active"
                && (sessions.contains(&e.source_session_id)
                    || sessions.contains(&e.target_session_id))
        })
    }
}

/// Why a graph command is refused; the variant names the wire error (§7.1, §7.9).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DelegationRefusal {
    /// `400 invalid_delegation_constraint` / `invalid_<field>` / `invalid_max_hops`.
    #[error("{0}")]
    InvalidConstraint(String),
    /// `403 parent_delegation_not_active`.
    #[error("parent_delegation_not_active")]
    ParentNotActive,
    /// `409 parent_delegation_ambiguous`.
    #[error("parent_delegation_ambiguous")]
    ParentAmbiguous,
    /// `403 delegation_exceeds_parent_authority`, with the dimension that failed.
    #[error("delegation_exceeds_parent_authority: {0}")]
    ExceedsParent(&'static str),
    /// `409 delegation_cycle_denied`.
    #[error("delegation_cycle_denied")]
    Cycle,
    /// `400 delegation_expired`.
    #[error("delegation_expired")]
    Expired,
    /// `400 self_delegation_denied`.
    #[error("self_delegation_denied")]
    SelfDelegation,
    /// `409 conflict`: the id is taken.
    #[error("edge id already in use")]
    AlreadyExists,
    /// `404 delegation_not_found`.
    #[error("delegation_not_found")]
    NotFound,
}

/// A new edge as the create route (or an inherited mirror, §11.5) asks for it; the service
/// has resolved resources and checked everything that reads other aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEdge {
    pub edge: Edge,
    /// The resolved resources of the edge (`resource_id` and `constraints.resources`).
    pub resolved: Vec<ResolvedResource>,
    /// `parent_edge_id` as sent.
    pub requested_parent: Option<String>,
    /// An inherited mirror: no narrowing, no cycle check (§11.5); the parent is given.
    pub mirror: bool,
    pub now: DateTime<Utc>,
}

/// What a creation decided besides its event: the parent used and the edges considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateDecision {
    pub event: DelegationEvent,
    pub parent: Option<String>,
    pub parents_considered: Vec<String>,
}

/// Decides a creation (§7.1 from parent selection on, §11.1, §11.3).
pub fn decide_create(graph: &Graph, cmd: &CreateEdge) -> Result<CreateDecision, DelegationRefusal> {
    let mut edge = cmd.edge.clone();
    if graph.get(&edge.id).is_some() {
        return Err(DelegationRefusal::AlreadyExists);
    }
    if edge.source_session_id == edge.target_session_id {
        return Err(DelegationRefusal::SelfDelegation);
    }
    let child = edge.constraints()?;
    let mut parents: Vec<&Edge> = graph.live_inbound(&edge.source_session_id, cmd.now);
    parents.sort_by(|a, b| a.id.cmp(&b.id));
    let considered: Vec<String> = parents.iter().map(|e| e.id.clone()).collect();
    let parent = if cmd.mirror {
        let named = cmd.requested_parent.as_deref().and_then(|id| graph.get(id));
        match named {
            Some(p) if p.is_live(cmd.now) => Some(p),
            _ => return Err(DelegationRefusal::ParentNotActive),
        }
    } else if parents.is_empty() {
        None
    } else if let Some(named) = &cmd.requested_parent {
        match parents.iter().find(|p| &p.id == named) {
            Some(p) => Some(*p),
            None => return Err(DelegationRefusal::ParentNotActive),
        }
    } else if parents.len() == 1 {
        Some(parents[0])
    } else {
        return Err(DelegationRefusal::ParentAmbiguous);
    };
    if edge.expires_at <= cmd.now {
        return Err(if parent.is_some() && !cmd.mirror {
            DelegationRefusal::ExceedsParent("expiry")
        } else {
            DelegationRefusal::Expired
        });
    }
    if let Some(p) = parent {
        if !cmd.mirror {
            check_narrowing(p, &edge, &child, &cmd.resolved)?;
        }
    }
    if !cmd.mirror
        && reachable(
            graph,
            &edge.target_session_id,
            &edge.source_session_id,
            cmd.now,
        )
    {
        return Err(DelegationRefusal::Cycle);
    }
    edge.parent_edge_id = parent.map(|p| p.id.clone());
    edge.status = "active".into();
    edge.edge_version = 0;
    edge.revoked_at = None;
    edge.end_reason = None;
    Ok(CreateDecision {
        event: DelegationEvent::EdgeCreated(EdgeCreated { edge }),
        parent: parent.map(|p| p.id.clone()),
        parents_considered: if cmd.mirror { Vec::new() } else { considered },
    })
}

/// Decides the revoke route (§7.9, §12.4): the named edge must be `active` (an active edge
/// past its expiry can still be revoked); it and every active edge downstream are revoked.
pub fn decide_revoke(
    graph: &Graph,
    edge_id: &str,
    at: DateTime<Utc>,
) -> Result<DelegationEvent, DelegationRefusal> {
    match graph.get(edge_id) {
        Some(e) if e.status == "active" => {}
        _ => return Err(DelegationRefusal::NotFound),
    }
    Ok(DelegationEvent::EdgesRevoked(EdgesRevoked {
        edge_ids: revoke_walk(graph, edge_id),
        reason: "delegation_revoked".into(),
        named_edge: Some(edge_id.to_owned()),
        at,
        revoked_subjects: Vec::new(),
    }))
}

/// The terminate cascade's part of the graph (§12.3): every still-`active` edge (expired
/// ones included) with an ended Session at either end; `None` when there is none.
pub fn decide_end_sessions(
    graph: &Graph,
    ended: &[String],
    reason: &str,
    at: DateTime<Utc>,
) -> Option<DelegationEvent> {
    let ids: Vec<String> = graph.active_touching(ended).map(|e| e.id.clone()).collect();
    (!ids.is_empty()).then(|| {
        DelegationEvent::EdgesRevoked(EdgesRevoked {
            edge_ids: ids,
            reason: reason.to_owned(),
            named_edge: None,
            at,
            revoked_subjects: Vec::new(),
        })
    })
}

/// The cleaner's expiry batch (§10.4): active edges past `expires_at`.
pub fn decide_expire(graph: &Graph, now: DateTime<Utc>) -> Option<DelegationEvent> {
    let ids: Vec<String> = graph
        .edges
        .values()
        .filter(|e| e.status == "active" && e.expires_at <= now)
        .map(|e| e.id.clone())
        .collect();
    (!ids.is_empty()).then_some(DelegationEvent::EdgesExpired(EdgesExpired {
        edge_ids: ids,
        at: now,
    }))
}

/// Applies one event to the graph (the projection does the same to its rows).
pub fn evolve(graph: &mut Graph, _meta: &EventMeta, event: &DelegationEvent) {
    match event {
        DelegationEvent::EdgeCreated(c) => {
            graph.edges.insert(c.edge.id.clone(), c.edge.clone());
        }
        DelegationEvent::EdgesRevoked(r) => {
            // The revoke route's walk ends its targets; a Session's end only ends the edges
            // touching it. The reason tells a repair which is which.
            let reason = match &r.named_edge {
                Some(_) => r.reason.clone(),
                None => format!("{SESSION_ENDED}{}", r.reason),
            };
            for id in &r.edge_ids {
                if let Some(e) = graph.edges.get_mut(id) {
                    if e.status == "active" {
                        e.status = "revoked".into();
                        e.revoked_at = Some(r.at);
                        e.edge_version += 1;
                        e.end_reason = Some(reason.clone());
                    }
                }
            }
        }
        DelegationEvent::EdgesExpired(x) => {
            for id in &x.edge_ids {
                if let Some(e) = graph.edges.get_mut(id) {
                    if e.status == "active" {
                        e.status = "expired".into();
                        e.end_reason = Some("expired".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
