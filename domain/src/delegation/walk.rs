//! Walks over the graph: traversal and impact (§13.2), the revoke walk (§12.4), cycle
//! reachability (§11.3) and effective authority (§13.1).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Edge, Graph, WALK_LIMIT};

/// One edge reached by a walk, at its depth (the start edge is depth 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub id: String,
    pub source_session_id: String,
    pub target_session_id: String,
    pub depth: u32,
}

/// The edges accepted by `follow`, by source Session (built once per walk, so a walk costs
/// the edges it looks at, not edges × Sessions).
fn by_source(graph: &Graph, follow: impl Fn(&Edge) -> bool) -> HashMap<&str, Vec<&Edge>> {
    let mut out: HashMap<&str, Vec<&Edge>> = HashMap::new();
    for e in graph.edges.values().filter(|e| follow(e)) {
        out.entry(e.source_session_id.as_str()).or_default().push(e);
    }
    out
}

/// Breadth-first from `start` over edges accepted by `follow`, never revisiting an edge,
/// depth capped at [`WALK_LIMIT`]; sorted by `(depth, id)`.
fn walk(graph: &Graph, start: &Edge, follow: impl Fn(&Edge) -> bool) -> Vec<Hop> {
    let next_of = by_source(graph, follow);
    let mut seen: HashSet<&str> = HashSet::from([start.id.as_str()]);
    let mut out = vec![Hop {
        id: start.id.clone(),
        source_session_id: start.source_session_id.clone(),
        target_session_id: start.target_session_id.clone(),
        depth: 1,
    }];
    let mut queue = VecDeque::from([(start, 1u32)]);
    while let Some((e, depth)) = queue.pop_front() {
        if depth >= WALK_LIMIT {
            continue;
        }
        for next in next_of
            .get(e.target_session_id.as_str())
            .into_iter()
            .flatten()
            .copied()
        {
            if seen.insert(next.id.as_str()) {
                out.push(Hop {
                    id: next.id.clone(),
                    source_session_id: next.source_session_id.clone(),
                    target_session_id: next.target_session_id.clone(),
                    depth: depth + 1,
                });
                queue.push_back((next, depth + 1));
            }
        }
    }
    out.sort_by(|a, b| (a.depth, &a.id).cmp(&(b.depth, &b.id)));
    out
}

/// §13.2: the live edges reached from a live start edge; empty when it is not live.
pub fn traverse(graph: &Graph, edge_id: &str, now: DateTime<Utc>) -> Vec<Hop> {
    match graph.get(edge_id) {
        Some(start) if start.is_live(now) => walk(graph, start, |e| e.is_live(now)),
        _ => Vec::new(),
    }
}

/// The edges the revoke route ends (§12.4): the named edge and every `active` edge
/// downstream (expired-but-active included), in walk order.
pub fn revoke_walk(graph: &Graph, edge_id: &str) -> Vec<String> {
    match graph.get(edge_id) {
        Some(start) => walk(graph, start, |e| e.status == "active")
            .into_iter()
            .map(|h| h.id)
            .collect(),
        None => Vec::new(),
    }
}

/// The impact prediction of a revocation (§7.7); `None` when the start edge is not live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Impact {
    pub edge_id: String,
    pub affected_edges: Vec<Hop>,
    /// Distinct target Sessions, in walk order.
    pub affected_sessions: Vec<String>,
}

pub fn impact(graph: &Graph, edge_id: &str, now: DateTime<Utc>) -> Option<Impact> {
    let hops = traverse(graph, edge_id, now);
    if hops.is_empty() {
        return None;
    }
    let mut seen = HashSet::new();
    let sessions = hops
        .iter()
        .filter(|h| seen.insert(h.target_session_id.clone()))
        .map(|h| h.target_session_id.clone())
        .collect();
    Some(Impact {
        edge_id: edge_id.to_owned(),
        affected_edges: hops,
        affected_sessions: sessions,
    })
}

/// Whether `to` is reachable from `from` over live edges. Unbounded (Caracal stops at 10
/// edges, which lets an 11-edge cycle close): the graph may hold no cycle of any length.
pub fn reachable(graph: &Graph, from: &str, to: &str, now: DateTime<Utc>) -> bool {
    let next_of = by_source(graph, |e| e.is_live(now));
    let mut seen: HashSet<&str> = HashSet::from([from]);
    let mut queue = VecDeque::from([from]);
    while let Some(s) = queue.pop_front() {
        if s == to {
            return true;
        }
        for e in next_of.get(s).into_iter().flatten() {
            if seen.insert(e.target_session_id.as_str()) {
                queue.push_back(e.target_session_id.as_str());
            }
        }
    }
    false
}

/// §13.1 over the live inbound edges of a Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveAuthority {
    pub inbound_edges: Vec<String>,
    /// `None` when no edge was considered (the answer then omits the resource-id fields).
    pub considered: Option<Considered>,
    pub effective_scopes: Vec<String>,
    pub effective_resources: Vec<String>,
    /// `None` with edges that all failed to parse; 0 with no edge at all.
    pub effective_max_hops: Option<u32>,
    pub effective_ttl_seconds: Option<u32>,
    pub earliest_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered {
    pub effective_resource_ids: Vec<String>,
    pub effective_resource_constrained: bool,
}

pub fn effective_authority(inbound: &[&Edge]) -> EffectiveAuthority {
    let mut inbound: Vec<&Edge> = inbound.to_vec();
    inbound.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<String> = inbound.iter().map(|e| e.id.clone()).collect();
    if inbound.is_empty() {
        return EffectiveAuthority {
            inbound_edges: ids,
            considered: None,
            effective_scopes: Vec::new(),
            effective_resources: Vec::new(),
            effective_max_hops: Some(0),
            effective_ttl_seconds: None,
            earliest_expires_at: None,
        };
    }
    let parsed: Vec<(&Edge, super::Constraints)> = inbound
        .iter()
        .filter_map(|e| e.constraints().ok().map(|c| (*e, c)))
        .collect();
    if parsed.is_empty() {
        return EffectiveAuthority {
            inbound_edges: ids,
            considered: Some(Considered {
                effective_resource_ids: Vec::new(),
                effective_resource_constrained: false,
            }),
            effective_scopes: Vec::new(),
            effective_resources: Vec::new(),
            effective_max_hops: None,
            effective_ttl_seconds: None,
            earliest_expires_at: inbound.first().map(|e| e.expires_at),
        };
    }
    let mut scopes: Option<BTreeSet<String>> = None;
    let mut resource_ids = BTreeSet::new();
    let mut resources = BTreeSet::new();
    let mut constrained = false;
    let mut hops = u32::MAX;
    let mut ttl: Option<u32> = None;
    let mut earliest: Option<DateTime<Utc>> = None;
    for (e, c) in &parsed {
        let mine: BTreeSet<String> = e.scopes.iter().cloned().collect();
        scopes = Some(match scopes {
            None => mine,
            Some(s) => s.intersection(&mine).cloned().collect(),
        });
        if let Some(r) = &e.resource_id {
            resource_ids.insert(r.clone());
            resources.insert(e.resource_identifier.clone().unwrap_or_else(|| r.clone()));
            constrained = true;
        }
        for r in c.resources.iter().flatten() {
            resources.insert(r.clone());
        }
        hops = hops.min(c.hops());
        if let Some(t) = c.ttl_seconds {
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
        }
        earliest = Some(earliest.map_or(e.expires_at, |x| x.min(e.expires_at)));
    }
    EffectiveAuthority {
        inbound_edges: ids,
        considered: Some(Considered {
            effective_resource_ids: resource_ids.into_iter().collect(),
            effective_resource_constrained: constrained,
        }),
        effective_scopes: scopes.unwrap_or_default().into_iter().collect(),
        effective_resources: resources.into_iter().collect(),
        effective_max_hops: Some(hops),
        effective_ttl_seconds: ttl,
        earliest_expires_at: earliest,
    }
}
