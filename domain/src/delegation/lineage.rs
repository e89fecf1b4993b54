//! What a delegated mint may rest on (sts.md §5.4, §8.2): the presented edge, the chain of
//! `parent_edge_id` links from a root edge down to it, and the Sessions at their ends — all
//! live, continuous and within the edge's constraints. The result becomes the mandate's
//! `delegation_path`, `delegation_chain` and lifetime bound.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;

use super::{Constraints, Edge, WALK_LIMIT};

/// What a mint needs to know of a Session on the lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    pub application_id: String,
    /// Live as §5.4 says: a task within its TTL, a service with a future lease deadline,
    /// its subject record (if any) active.
    pub live: bool,
}

/// One actor of `delegation_chain` (§8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHop {
    pub application_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation_edge_id: Option<String>,
}

/// A validated lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct Lineage {
    /// Edge ids, root first, ending with the presented edge.
    pub path: Vec<String>,
    pub chain: Vec<ChainHop>,
    pub edge: Edge,
    pub constraints: Constraints,
    /// The latest instant a mandate resting on this edge may live to: the edge's expiry and
    /// its `expires_at` constraint.
    pub deadline: DateTime<Utc>,
}

/// Why a lineage cannot carry a mint; the text is the `403 access_denied` description.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineageRefusal {
    #[error("delegation edge not found")]
    NotFound,
    #[error("delegation edge is not active")]
    NotLive,
    #[error("delegation edge does not target the Session")]
    WrongTarget,
    #[error("delegation Session is not live")]
    SessionNotLive,
    #[error("Session is not owned by the caller")]
    NotOwned,
    #[error("delegation edge applications do not match its Sessions")]
    OwnerMismatch,
    #[error("delegation constraints are invalid")]
    InvalidConstraints,
    #[error("requested scopes exceed the delegation")]
    ScopeExceeded,
    #[error("ttl_seconds exceeds the delegation ttl_seconds constraint")]
    TtlExceeded,
    #[error("delegation lineage exceeds max_hops")]
    TooManyHops,
    #[error("delegation lineage is broken")]
    Broken,
}

/// What the mint asks of the lineage.
#[derive(Debug, Clone, Copy)]
pub struct MintAsk<'a> {
    pub edge_id: &'a str,
    pub agent_session_id: &'a str,
    /// The acting application.
    pub caller: &'a str,
    pub requested: &'a [String],
    /// `ttl_seconds` as sent (`0` = absent).
    pub ttl_seconds: i64,
    pub now: DateTime<Utc>,
}

/// Validates the lineage of `ask.edge_id`. `edges` holds at least the presented edge and its
/// ancestors; `sessions` the Sessions at their ends (a missing Session is not live).
pub fn validate(
    edges: &HashMap<String, Edge>,
    sessions: &HashMap<String, SessionFacts>,
    ask: &MintAsk<'_>,
) -> Result<Lineage, LineageRefusal> {
    let edge = edges.get(ask.edge_id).ok_or(LineageRefusal::NotFound)?;
    if !edge.is_live(ask.now) {
        return Err(LineageRefusal::NotLive);
    }
    if edge.target_session_id != ask.agent_session_id {
        return Err(LineageRefusal::WrongTarget);
    }
    let target = sessions
        .get(&edge.target_session_id)
        .ok_or(LineageRefusal::SessionNotLive)?;
    if target.application_id != ask.caller {
        return Err(LineageRefusal::NotOwned);
    }
    let constraints = edge
        .constraints()
        .map_err(|_| LineageRefusal::InvalidConstraints)?;
    if ask.requested.is_empty() || !ask.requested.iter().all(|s| edge.scopes.contains(s)) {
        return Err(LineageRefusal::ScopeExceeded);
    }
    if let Some(cap) = constraints.ttl_seconds {
        if ask.ttl_seconds > i64::from(cap) {
            return Err(LineageRefusal::TtlExceeded);
        }
    }
    // Leaf to root; every hop live, owned by the applications its Sessions belong to and
    // continuous with the one below it.
    let mut rev: Vec<&Edge> = vec![edge];
    let mut cur = edge;
    while let Some(parent_id) = &cur.parent_edge_id {
        if rev.len() as u32 >= WALK_LIMIT {
            return Err(LineageRefusal::TooManyHops);
        }
        let parent = edges.get(parent_id).ok_or(LineageRefusal::Broken)?;
        if rev.iter().any(|e| e.id == parent.id) {
            return Err(LineageRefusal::Broken);
        }
        let continuous = parent.receiver_application_id == cur.issuer_application_id
            && parent.target_session_id == cur.source_session_id;
        if !parent.is_live(ask.now) || !continuous {
            return Err(LineageRefusal::Broken);
        }
        rev.push(parent);
        cur = parent;
    }
    if constraints.hops() < rev.len() as u32 {
        return Err(LineageRefusal::TooManyHops);
    }
    for e in &rev {
        let owner = |id: &str| -> Result<&SessionFacts, LineageRefusal> {
            sessions
                .get(id)
                .filter(|s| s.live)
                .ok_or(LineageRefusal::SessionNotLive)
        };
        let source = owner(&e.source_session_id)?;
        let target = owner(&e.target_session_id)?;
        if source.application_id != e.issuer_application_id
            || target.application_id != e.receiver_application_id
        {
            return Err(LineageRefusal::OwnerMismatch);
        }
    }
    rev.reverse();
    let mut chain: Vec<ChainHop> = rev
        .iter()
        .map(|e| ChainHop {
            application_id: e.issuer_application_id.clone(),
            agent_session_id: Some(e.source_session_id.clone()),
            delegation_edge_id: Some(e.id.clone()),
        })
        .collect();
    chain.push(ChainHop {
        application_id: edge.receiver_application_id.clone(),
        agent_session_id: Some(edge.target_session_id.clone()),
        delegation_edge_id: None,
    });
    let deadline = constraints
        .expires_at
        .map_or(edge.expires_at, |c| c.min(edge.expires_at));
    Ok(Lineage {
        path: rev.iter().map(|e| e.id.clone()).collect(),
        chain,
        edge: edge.clone(),
        constraints,
        deadline,
    })
}

impl Lineage {
    /// Whether a resource (row id, public identifier) is inside the Delegation (§5.2): the
    /// edge's bound resource, and its `constraints.resources` list when it has one.
    pub fn covers(&self, resource_id: &str, identifier: &str) -> bool {
        if self
            .edge
            .resource_id
            .as_deref()
            .is_some_and(|r| r != resource_id)
        {
            return false;
        }
        self.constraints
            .resources
            .as_ref()
            .is_none_or(|list| list.iter().any(|i| i == identifier))
    }

    /// The mandate lifetime in seconds: `wanted`, cut to the `ttl_seconds` constraint and
    /// to what is left before the deadline; `None` when nothing is left.
    pub fn lifetime(&self, wanted: i64, now: DateTime<Utc>) -> Option<i64> {
        let left = (self.deadline - now).num_seconds();
        let ttl = self
            .constraints
            .ttl_seconds
            .map_or(wanted, |c| wanted.min(i64::from(c)))
            .min(left);
        (ttl > 0).then_some(ttl)
    }
}
