use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::*;

pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(1_800_000_000)
}

pub(crate) fn edge(id: &str, from: &str, to: &str, scopes: &[&str], hops: u32) -> Edge {
    Edge {
        id: id.into(),
        zone_id: "z".into(),
        source_session_id: from.into(),
        target_session_id: to.into(),
        issuer_application_id: "a".into(),
        receiver_application_id: "a".into(),
        parent_edge_id: None,
        resource_id: None,
        resource_identifier: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        constraints_json: json!({"max_hops": hops}),
        status: "active".into(),
        expires_at: t0() + Duration::hours(1),
        edge_version: 0,
        revoked_at: None,
        created_at: t0(),
        end_reason: None,
    }
}

fn create(
    graph: &Graph,
    e: Edge,
    parent: Option<&str>,
) -> Result<CreateDecision, DelegationRefusal> {
    decide_create(
        graph,
        &CreateEdge {
            edge: e,
            resolved: Vec::new(),
            requested_parent: parent.map(str::to_owned),
            mirror: false,
            now: t0(),
        },
    )
}

fn add(graph: &mut Graph, e: Edge, parent: Option<&str>) {
    let d = create(graph, e, parent).unwrap();
    apply(graph, &d.event);
}

fn apply(graph: &mut Graph, ev: &DelegationEvent) {
    evolve(graph, &crate::given::meta(1), ev);
}

#[test]
fn a_root_edge_then_a_narrower_child() {
    let mut g = Graph::default();
    let d = create(&g, edge("e1", "s1", "s2", &["read", "write"], 3), None).unwrap();
    assert_eq!(d.parent, None);
    apply(&mut g, &d.event);
    let d = create(&g, edge("e2", "s2", "s3", &["read"], 2), None).unwrap();
    assert_eq!(d.parent.as_deref(), Some("e1"));
    assert_eq!(d.parents_considered, vec!["e1".to_string()]);
    apply(&mut g, &d.event);
    assert_eq!(g.get("e2").unwrap().parent_edge_id.as_deref(), Some("e1"));
}

#[test]
fn wider_children_are_refused_per_dimension() {
    let mut g = Graph::default();
    let d = create(&g, edge("e1", "s1", "s2", &["read"], 3), None).unwrap();
    apply(&mut g, &d.event);
    assert_eq!(
        create(&g, edge("e2", "s2", "s3", &["read", "write"], 1), None).unwrap_err(),
        DelegationRefusal::ExceedsParent("scopes")
    );
    assert_eq!(
        create(&g, edge("e2", "s2", "s3", &["read"], 3), None).unwrap_err(),
        DelegationRefusal::ExceedsParent("max_hops")
    );
    let mut later = edge("e2", "s2", "s3", &["read"], 1);
    later.expires_at = t0() + Duration::hours(2);
    assert_eq!(
        create(&g, later, None).unwrap_err(),
        DelegationRefusal::ExceedsParent("expiry")
    );
}

#[test]
fn a_parent_with_one_hop_cannot_be_narrowed() {
    let mut g = Graph::default();
    add(&mut g, edge("e1", "s1", "s2", &["read"], 1), None);
    assert_eq!(
        create(&g, edge("e2", "s2", "s3", &["read"], 1), None).unwrap_err(),
        DelegationRefusal::ExceedsParent("max_hops")
    );
}

#[test]
fn parent_selection() {
    let mut g = Graph::default();
    add(&mut g, edge("e1", "s1", "s3", &["read"], 3), None);
    add(&mut g, edge("e2", "s2", "s3", &["read"], 3), None);
    assert_eq!(
        create(&g, edge("e3", "s3", "s4", &["read"], 1), None).unwrap_err(),
        DelegationRefusal::ParentAmbiguous
    );
    assert_eq!(
        create(&g, edge("e3", "s3", "s4", &["read"], 1), Some("nope")).unwrap_err(),
        DelegationRefusal::ParentNotActive
    );
    let d = create(&g, edge("e3", "s3", "s4", &["read"], 1), Some("e2")).unwrap();
    assert_eq!(d.parent.as_deref(), Some("e2"));
}

#[test]
fn cycles_of_any_length_are_refused() {
    let mut g = Graph::default();
    // Built backwards, so every edge is a root (its source has no inbound edge yet).
    for i in (0..12).rev() {
        let e = edge(
            &format!("e{i:02}"),
            &format!("s{i}"),
            &format!("s{}", i + 1),
            &[],
            10,
        );
        let d = create(&g, e, None).unwrap();
        apply(&mut g, &d.event);
    }
    let back = edge("ex", "s12", "s0", &[], 1);
    assert_eq!(
        create(&g, back, None).unwrap_err(),
        DelegationRefusal::Cycle
    );
    assert_eq!(
        create(&g, edge("ey", "s3", "s3", &[], 1), None).unwrap_err(),
        DelegationRefusal::SelfDelegation
    );
}

#[test]
fn revoke_walks_downstream_and_impact_agrees() {
    let mut g = Graph::default();
    add(&mut g, edge("e1", "s1", "s2", &["r"], 4), None);
    add(&mut g, edge("e2", "s2", "s3", &["r"], 3), None);
    add(&mut g, edge("e3", "s3", "s4", &["r"], 2), None);
    let imp = impact(&g, "e1", t0()).unwrap();
    assert_eq!(
        imp.affected_edges
            .iter()
            .map(|h| h.depth)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(imp.affected_sessions, vec!["s2", "s3", "s4"]);
    let ev = decide_revoke(&g, "e2", t0()).unwrap();
    apply(&mut g, &ev);
    assert_eq!(g.get("e1").unwrap().status, "active");
    assert_eq!(g.get("e2").unwrap().status, "revoked");
    assert_eq!(g.get("e2").unwrap().edge_version, 1);
    assert_eq!(g.get("e3").unwrap().status, "revoked");
    assert_eq!(
        decide_revoke(&g, "e2", t0()),
        Err(DelegationRefusal::NotFound)
    );
    assert!(traverse(&g, "e2", t0()).is_empty());
}

#[test]
fn effective_authority_intersects() {
    let a = edge("e1", "s1", "s3", &["a", "b"], 3);
    let mut b = edge("e2", "s2", "s3", &["b", "c"], 2);
    b.constraints_json = json!({"max_hops": 2, "ttl_seconds": 60, "resources": ["resource://x"]});
    b.expires_at = t0() + Duration::minutes(5);
    let ea = effective_authority(&[&a, &b]);
    assert_eq!(ea.effective_scopes, vec!["b"]);
    assert_eq!(ea.effective_max_hops, Some(2));
    assert_eq!(ea.effective_ttl_seconds, Some(60));
    assert_eq!(ea.effective_resources, vec!["resource://x"]);
    assert_eq!(ea.earliest_expires_at, Some(t0() + Duration::minutes(5)));
    let none = effective_authority(&[]);
    assert_eq!(none.effective_max_hops, Some(0));
    assert!(none.considered.is_none());
}

#[test]
fn ending_sessions_revokes_their_active_edges() {
    let mut g = Graph::default();
    add(&mut g, edge("e1", "s1", "s2", &["r"], 4), None);
    add(&mut g, edge("e2", "s3", "s4", &["r"], 4), None);
    let ev = decide_end_sessions(&g, &["s2".to_string()], "requested", t0()).unwrap();
    apply(&mut g, &ev);
    assert_eq!(g.get("e1").unwrap().status, "revoked");
    assert_eq!(g.get("e2").unwrap().status, "active");
    assert!(decide_end_sessions(&g, &["s2".to_string()], "requested", t0()).is_none());
    let later = t0() + Duration::hours(2);
    let ev = decide_expire(&g, later).unwrap();
    apply(&mut g, &ev);
    assert_eq!(g.get("e2").unwrap().status, "expired");
}
