//! Properties of the Delegation graph over random sequences of creations and revocations:
//! authority only narrows, a revocation ends exactly what `impact` predicted, no cycle ever
//! forms.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::json;
use serval_domain::delegation::lineage::{self, MintAsk, SessionFacts};
use serval_domain::delegation::{
    decide_create, decide_revoke, evolve, impact, CreateEdge, DelegationEvent, Edge, Graph,
};
use serval_domain::EventMeta;

const SCOPES: [&str; 4] = ["a", "b", "c", "d"];

fn now() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(1_800_000_000)
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        from: u8,
        to: u8,
        scopes: u8,
        hops: u32,
        minutes: i64,
        parent_pick: Option<u8>,
    },
    Revoke(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, 0u8..8, 0u8..16, 1u32..=10, 1i64..120, proptest::option::of(0u8..8)).prop_map(
            |(from, to, scopes, hops, minutes, parent_pick)| Op::Create { from, to, scopes, hops, minutes, parent_pick }
        ),
        1 => (0u8..32).prop_map(Op::Revoke),
    ]
}

fn meta(v: u64) -> EventMeta {
    EventMeta {
        event_id: format!("e{v}"),
        aggregate_id: "delegations:z".into(),
        aggregate_version: v,
        occurred_at: now(),
    }
}

fn has_live_cycle(g: &Graph) -> bool {
    // Depth-first search for a back edge over live edges.
    let mut adj: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in g.edges.values().filter(|e| e.is_live(now())) {
        adj.entry(&e.source_session_id)
            .or_default()
            .push(&e.target_session_id);
    }
    fn visit<'a>(
        n: &'a str,
        adj: &HashMap<&'a str, Vec<&'a str>>,
        on: &mut HashSet<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> bool {
        if on.contains(n) {
            return true;
        }
        if !done.insert(n) {
            return false;
        }
        on.insert(n);
        let found = adj
            .get(n)
            .into_iter()
            .flatten()
            .any(|m| visit(m, adj, on, done));
        on.remove(n);
        found
    }
    let mut done = HashSet::new();
    adj.keys()
        .any(|n| visit(n, &adj, &mut HashSet::new(), &mut done))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn authority_only_narrows_and_the_graph_stays_acyclic(ops in proptest::collection::vec(op(), 1..60)) {
        let mut g = Graph::default();
        let mut version = 0u64;
        let mut ids: Vec<String> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create { from, to, scopes, hops, minutes, parent_pick } => {
                    let id = format!("e{n:03}");
                    let scopes: Vec<String> = SCOPES.iter().enumerate()
                        .filter(|(i, _)| scopes & (1 << i) != 0).map(|(_, s)| s.to_string()).collect();
                    let edge = Edge {
                        id: id.clone(),
                        zone_id: "z".into(),
                        source_session_id: format!("s{from}"),
                        target_session_id: format!("s{to}"),
                        issuer_application_id: "app".into(),
                        receiver_application_id: "app".into(),
                        parent_edge_id: None,
                        resource_id: None,
                        resource_identifier: None,
                        scopes,
                        constraints_json: json!({"max_hops": hops}),
                        status: "active".into(),
                        expires_at: now() + Duration::minutes(minutes),
                        edge_version: 0,
                        revoked_at: None,
                        created_at: now(),
                        end_reason: None,
                    };
                    let requested_parent = parent_pick.and_then(|i| ids.get(i as usize).cloned());
                    let cmd = CreateEdge { edge, resolved: vec![], requested_parent, mirror: false, now: now() };
                    if let Ok(d) = decide_create(&g, &cmd) {
                        let DelegationEvent::EdgeCreated(c) = &d.event else { unreachable!() };
                        if let Some(p) = &d.parent {
                            let parent = g.get(p).unwrap();
                            prop_assert!(parent.is_live(now()));
                            prop_assert!(c.edge.scopes.iter().all(|s| parent.scopes.contains(s)));
                            let ph = parent.constraints().unwrap().hops();
                            prop_assert!(c.edge.constraints().unwrap().hops() < ph);
                            prop_assert!(c.edge.expires_at <= parent.expires_at);
                            prop_assert_eq!(c.edge.parent_edge_id.as_deref(), Some(p.as_str()));
                        } else {
                            prop_assert!(g.live_inbound(&c.edge.source_session_id, now()).is_empty());
                        }
                        version += 1;
                        evolve(&mut g, &meta(version), &d.event);
                        ids.push(id);
                    }
                }
                Op::Revoke(i) => {
                    let Some(id) = ids.get(i as usize).cloned() else { continue };
                    let predicted = impact(&g, &id, now());
                    match decide_revoke(&g, &id, now()) {
                        Ok(ev) => {
                            let DelegationEvent::EdgesRevoked(r) = &ev else { unreachable!() };
                            // Every edge here is unexpired, so the walk over active edges is
                            // the walk over live ones: exactly what impact named.
                            let predicted: HashSet<String> = predicted.unwrap().affected_edges.into_iter().map(|h| h.id).collect();
                            let revoked: HashSet<String> = r.edge_ids.iter().cloned().collect();
                            prop_assert_eq!(&predicted, &revoked);
                            let before = g.clone();
                            version += 1;
                            evolve(&mut g, &meta(version), &ev);
                            for (eid, e) in &g.edges {
                                let was = &before.edges[eid];
                                if revoked.contains(eid) {
                                    prop_assert_eq!(e.status.as_str(), "revoked");
                                } else {
                                    prop_assert_eq!(e, was);
                                }
                            }
                        }
                        Err(_) => prop_assert!(predicted.is_none()),
                    }
                }
            }
            prop_assert!(!has_live_cycle(&g));
        }
        lineage_never_widens(&g)?;
    }
}

/// A delegated mint resting on any edge of the graph, for every scope set it could ask:
/// allowed only with the requested scopes inside the edge's, on a live edge whose every
/// ancestor is live, within the edge's hop budget; the path ends at the edge.
fn lineage_never_widens(g: &Graph) -> Result<(), TestCaseError> {
    let edges: HashMap<String, Edge> = g.edges.clone().into_iter().collect();
    let sessions: HashMap<String, SessionFacts> = (0..8)
        .map(|i| {
            (
                format!("s{i}"),
                SessionFacts {
                    application_id: "app".into(),
                    live: true,
                },
            )
        })
        .collect();
    for e in g.edges.values() {
        for mask in 0u8..16 {
            let requested: Vec<String> = SCOPES
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.to_string())
                .collect();
            let ask = MintAsk {
                edge_id: &e.id,
                agent_session_id: &e.target_session_id,
                caller: "app",
                requested: &requested,
                ttl_seconds: 0,
                now: now(),
            };
            let mut ancestors_live = true;
            let mut depth = 1u32;
            let mut cur = e;
            while let Some(p) = &cur.parent_edge_id {
                cur = &g.edges[p];
                ancestors_live &= cur.is_live(now());
                depth += 1;
            }
            match lineage::validate(&edges, &sessions, &ask) {
                Ok(l) => {
                    prop_assert!(!requested.is_empty());
                    prop_assert!(requested.iter().all(|s| e.scopes.contains(s)));
                    prop_assert!(e.is_live(now()) && ancestors_live);
                    prop_assert_eq!(l.path.last(), Some(&e.id));
                    prop_assert!(l.path.len() as u32 <= e.constraints().unwrap().hops());
                    prop_assert_eq!(l.chain.len(), l.path.len() + 1);
                    prop_assert!(l.deadline <= e.expires_at);
                }
                Err(_) => prop_assert!(
                    requested.is_empty()
                        || !requested.iter().all(|s| e.scopes.contains(s))
                        || !e.is_live(now())
                        || !ancestors_live
                        || depth > e.constraints().unwrap().hops()
                ),
            }
        }
    }
    Ok(())
}
