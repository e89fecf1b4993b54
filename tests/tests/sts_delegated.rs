//! The STS's delegated mint (sts.md §4.3, §5.4, §8.2–§8.4) against the real binary: a
//! governed Session presents the Delegation it received and gets a single-use
//! `use=gateway` mandate whose claims carry the lineage read from the Coordinator's graph;
//! every break in that lineage is refused with nothing minted.

mod common;

use common::runtime::{
    bootstrap, call_json, claims, exchange, server, zone, Zone, GRANT, RESOURCE,
};
use common::{eventually, Admin};
use serde_json::{json, Value};

fn mint<'a>(
    z: &'a Zone,
    session: &'a str,
    edge: &'a str,
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", &z.id),
        ("application_id", &z.app),
        ("client_secret", &z.secret),
        ("resource", RESOURCE),
        ("scope", scope),
        ("agent_session_id", session),
        ("delegation_edge_id", edge),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_mint_carries_its_lineage_and_every_broken_lineage_is_refused() {
    let (server, issuer) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let (s, _, boot) = eventually(20, || async {
        let r = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{boot}");
    let lifecycle = boot["access_token"].as_str().unwrap().to_owned();
    let base = server.url("coordinator").to_owned();
    let post = |path: String, body: Value| {
        let (base, lifecycle) = (base.clone(), lifecycle.clone());
        async move { call_json(&base, &lifecycle, reqwest::Method::POST, &path, Some(body)).await }
    };
    let zp = format!("/zones/{}", z.id);
    // Sessions labelled with the grant's role (`agent`), and one whose label grants nothing.
    let mut ids = Vec::new();
    for labels in [
        json!(["agent"]),
        json!(["agent"]),
        json!(["agent"]),
        json!(["visitor"]),
    ] {
        let (s, v) = post(
            format!("{zp}/agents"),
            json!({"application_id": z.app, "labels": labels}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["agent_session_id"].as_str().unwrap().to_owned());
    }
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let edge = |from: &str, to: &str, constraints: Value, ttl: u32| {
        json!({"source_session_id": from, "target_session_id": to,
               "issuer_application_id": z.app, "receiver_application_id": z.app,
               "scopes": ["tickets:read"], "constraints": constraints, "ttl_seconds": ttl})
    };
    let dz = format!("{zp}/delegations");
    let (s, ab) = post(
        dz.clone(),
        edge(a, b, json!({"resources": [RESOURCE], "max_hops": 3}), 900),
    )
    .await;
    assert_eq!(s, 201, "{ab}");
    let ab = ab["delegation_edge_id"].as_str().unwrap().to_owned();
    let (s, bc) = post(
        dz.clone(),
        edge(
            b,
            c,
            json!({"resources": [RESOURCE], "max_hops": 2, "ttl_seconds": 300}),
            600,
        ),
    )
    .await;
    assert_eq!(s, 201, "{bc}");
    let bc = bc["delegation_edge_id"].as_str().unwrap().to_owned();
    let (s, ad) = post(
        dz.clone(),
        edge(a, d, json!({"resources": [RESOURCE]}), 900),
    )
    .await;
    assert_eq!(s, 201, "{ad}");
    let ad = ad["delegation_edge_id"].as_str().unwrap().to_owned();

    // C mints through A → B → C.
    let (s, _, v) = exchange(&issuer, &mint(&z, c, &bc, "tickets:read")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scope"], "tickets:read");
    assert_eq!(v["target_resources"], json!([RESOURCE]));
    // The `ttl_seconds` constraint of B → C (and the edge's remaining life, which it also
    // bounds) caps the default lifetime.
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!((295..=300).contains(&expires_in), "{v}");
    let m = claims(v["access_token"].as_str().unwrap());
    assert_eq!(m["use"], "gateway");
    assert_eq!(m["sub"], z.app.as_str());
    assert_eq!(m["sub_type"], "application");
    assert_eq!(m["aud"], json!([issuer]));
    assert_eq!(m["scope"], "tickets:read");
    assert_eq!(m["target"], json!([RESOURCE]));
    assert_eq!(m["agent_session_id"], c.as_str());
    assert_eq!(m["delegation_edge_id"], bc.as_str());
    assert_eq!(m["source_session_id"], b.as_str());
    assert_eq!(m["target_session_id"], c.as_str());
    assert_eq!(m["delegation_path"], json!([ab, bc]));
    assert_eq!(m["hop_count"], 2);
    assert_eq!(
        m["delegation_chain"],
        json!([
            {"application_id": z.app, "agent_session_id": a, "delegation_edge_id": ab},
            {"application_id": z.app, "agent_session_id": b, "delegation_edge_id": bc},
            {"application_id": z.app, "agent_session_id": c},
        ])
    );
    assert!(m["delegation_graph_epoch"].as_u64().unwrap() >= 3, "{m}");
    assert_eq!(m["sid"], m["root_sid"]);
    assert_eq!(
        m["exp"].as_i64().unwrap() - m["iat"].as_i64().unwrap(),
        expires_in
    );

    // Refusals, each with its description; nothing minted.
    let refused = |fields: Vec<(String, String)>| {
        let issuer = issuer.clone();
        async move {
            let f: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            exchange(&issuer, &f).await
        }
    };
    let owned = |f: Vec<(&str, &str)>| -> Vec<(String, String)> {
        f.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let expect = |r: (u16, Option<String>, Value), status: u16, text: &str| {
        assert_eq!(r.0, status, "{}", r.2);
        assert!(r.1.is_some());
        assert!(
            r.2["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains(text),
            "{text}: {}",
            r.2
        );
        assert!(r.2.get("access_token").is_none());
    };
    let mut no_session = owned(mint(&z, c, &bc, "tickets:read"));
    no_session.retain(|(k, _)| *k != "agent_session_id");
    expect(
        refused(no_session).await,
        403,
        "delegation requires a target Session",
    );
    expect(
        refused(owned(mint(&z, b, &bc, "tickets:read"))).await,
        403,
        "does not target the Session",
    );
    expect(
        refused(owned(mint(&z, c, "no-such-edge", "tickets:read"))).await,
        403,
        "delegation edge not found",
    );
    expect(
        refused(owned(mint(&z, c, &bc, "tickets:write"))).await,
        403,
        "requested scopes exceed the delegation",
    );
    let mut long = owned(mint(&z, c, &bc, "tickets:read"));
    long.push(("ttl_seconds".into(), "301".into()));
    expect(refused(long).await, 403, "ttl_seconds constraint");
    // A label without the grant's role: the contract denies.
    expect(
        refused(owned(mint(&z, d, &ad, "tickets:read"))).await,
        403,
        "policy denied (role_scope_mismatch)",
    );

    // Revoking the root ends the lineage: C's edge is revoked with it.
    let (s, v) = call_json(
        &base,
        &lifecycle,
        reqwest::Method::PATCH,
        &format!("{dz}/{ab}/revoke"),
        None,
    )
    .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    // Read-your-writes through the STS's in-memory zone view: the mint right after the
    // acknowledged revocation already sees it (the view moves with the zone's config).
    let r = exchange(&issuer, &mint(&z, c, &bc, "tickets:read")).await;
    expect(r, 403, "delegation edge is not active");
}
