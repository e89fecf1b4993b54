//! Rebuilding every management projection from the log reproduces every `GET` answer: in
//! place with `serval-replay rebuild`, and from scratch by a deployment on an empty database
//! reading the same log.

mod common;

use common::{Admin, Options, Server};
use serde_json::{json, Value};

/// Builds a zone with one of everything, changed a few times.
async fn populate(server: &Server, admin: &Admin) -> String {
    let (_, z) = admin
        .post("/v1/zones", json!({"name": "rebuilt", "dcr_enabled": true}))
        .await;
    let z = z["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{z}");
    produce_runtime(server, &z).await;
    common::eventually(10, || async {
        let (s, _) = admin.get(&format!("{base}/approvals/h-2")).await;
        (s == 200).then_some(())
    })
    .await;
    let (s, d) = admin
        .post(
            &format!("{base}/approvals/h-1/approve"),
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let mut app_ids = Vec::new();
    for i in 0..3 {
        let (s, a) = admin
            .post(
                &format!("{base}/applications"),
                json!({"name": format!("agent-{i}"), "registration_method": "managed", "traits": ["team:a"]}),
            )
            .await;
        assert_eq!(s, 201);
        app_ids.push(a["id"].as_str().unwrap().to_owned());
    }
    admin
        .patch(
            &format!("{base}/applications/{}", app_ids[0]),
            json!({"name": "renamed", "traits": ["team:b"]}),
        )
        .await;
    admin
        .post(
            &format!("{base}/applications/{}/rotate-secret", app_ids[1]),
            json!({}),
        )
        .await;
    let (s, _) = admin
        .get(&format!("{base}/applications/{}/client-secret", app_ids[1]))
        .await;
    assert_eq!(s, 200);
    admin
        .delete(&format!("{base}/applications/{}", app_ids[2]))
        .await;
    admin
        .post(&format!("{base}/applications/dcr"), json!({"name": "dyn"}))
        .await;
    let (_, p) = admin
        .post(
            &format!("{base}/providers"),
            json!({"name": "Stripe", "kind": "api_key", "config_json": {"header_name": "X-K", "api_key": "sk_123456"}}),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    admin
        .patch(
            &format!("{base}/providers/{pid}"),
            json!({"config_json": {"header_name": "X-K2"}}),
        )
        .await;
    let (_, oauth) = admin
        .post(
            &format!("{base}/providers"),
            json!({"name": "GitHub", "kind": "oauth2_authorization_code", "config_json": {
                "authorization_endpoint": "https://gh.example/a", "token_endpoint": "https://gh.example/t",
                "redirect_uri": "https://s.example/cb", "client_id": "c", "client_secret": "cs_abcdef"}}),
        )
        .await;
    let oauth_id = oauth["id"].as_str().unwrap().to_owned();
    let (_, r) = admin
        .post(
            &format!("{base}/resources"),
            json!({"name": "Billing", "scopes": ["a:read", "a:write"], "upstream_url": "https://b.example",
                   "credential_provider_id": pid,
                   "operations": [{"method": "GET", "path": "/x", "scope": "a:read"}]}),
        )
        .await;
    let rid = r["id"].as_str().unwrap().to_owned();
    admin
        .patch(
            &format!("{base}/resources/{rid}"),
            json!({"scopes": ["a:read", "a:write", "a:admin"]}),
        )
        .await;
    for user in ["alice", "bob"] {
        let (s, g) = admin
            .post(
                &format!("{base}/grants"),
                json!({"application_id": app_ids[0], "user_id": user, "resource_id": rid, "scopes": ["a:read"]}),
            )
            .await;
        assert_eq!(s, 201, "{g}");
        if user == "bob" {
            admin
                .delete(&format!("{base}/grants/{}", g["id"].as_str().unwrap()))
                .await;
        }
    }
    for subject in ["caracal:shared", "alice", "caracal:shared"] {
        admin
            .post(
                &format!("{base}/provider-connections"),
                json!({"provider_id": oauth_id, "subject_id": subject, "access_token": "t0k3n",
                       "expires_at": "2031-05-01T10:00:00Z"}),
            )
            .await;
    }
    admin
        .post(
            &format!("{base}/provider-connections/revoke"),
            json!({"provider_id": oauth_id, "subject_id": "alice"}),
        )
        .await;
    z
}

/// Authority records of alice and bob, a session tree and two approval holds, produced as
/// the STS and the Coordinator produce them.
async fn produce_runtime(server: &Server, z: &str) {
    use chrono::Utc;
    use serval_domain::catalog::runtime::{ApprovalData, AuthorityRecordData, SessionData};
    use serval_domain::catalog::{CatalogEvent, Created, EntityData};
    let later = Utc::now() + chrono::Duration::hours(2);
    let mut seeds = Vec::new();
    for subject in ["alice", "bob"] {
        seeds.push((
            format!("ar-{subject}"),
            EntityData::AuthorityRecord(AuthorityRecordData {
                record_type: "user".into(),
                subject_id: subject.into(),
                application_id: None,
                federated_user_issuer: Some("https://idp.example".into()),
                parent_id: None,
                status: "active".into(),
                expires_at: later,
                authenticated_at: Utc::now(),
                revoked_at: None,
                revoked_reason: None,
                revoked_by_grant: None,
            }),
        ));
    }
    for (id, parent) in [("s-1", None), ("s-2", Some("s-1"))] {
        seeds.push((
            id.to_owned(),
            EntityData::Session(SessionData {
                application_id: "a".into(),
                parent_session_id: parent.map(str::to_owned),
                status: "active".into(),
                lifecycle: "task".into(),
                labels: vec!["l".into()],
                depth: u32::from(parent.is_some()),
                subject_authority_record_id: Some("ar-alice".into()),
                subject_id: Some("alice".into()),
                federated_user_id: None,
                federated_user_issuer: None,
                last_active_at: Utc::now(),
                terminated_at: None,
                termination_reason: None,
                ttl_seconds: Some(60),
                ..Default::default()
            }),
        ));
    }
    for id in ["h-1", "h-2"] {
        seeds.push((
            id.to_owned(),
            EntityData::Approval(ApprovalData {
                session_id: "ar-alice".into(),
                principal_id: "a".into(),
                application_id: None,
                approval_type: "human_approval".into(),
                tier: "t".into(),
                approver_class: "any".into(),
                privacy_mode: "standard".into(),
                subject_anchor: None,
                binding: "b".into(),
                metadata_json: json!({"k": 1}),
                decision_reason: None,
                expires_at: later,
                satisfied_at: None,
                rejected_at: None,
                consumed_at: None,
                approver_subject_id: None,
                principal_federated: false,
                agent_labels: vec![],
                consumed_record_id: None,
                approver_session_id: None,
            }),
        ));
    }
    for (id, data) in seeds {
        let event = CatalogEvent::Created(Created {
            zone_id: z.to_owned(),
            data,
            stamp: serval_domain::catalog::Stamp {
                by: "sts".into(),
                via_operator: false,
            },
        });
        common::produce(server, z, &id, 0, event, "sts").await;
    }
}

/// Every management `GET` of the zone (lists, each object, filtered and CSV views).
async fn answers(admin: &Admin, z: &str) -> Vec<(String, Value)> {
    let base = format!("/v1/zones/{z}");
    let mut paths = vec![
        "/v1/zones".to_owned(),
        base.clone(),
        format!("{base}/dcr-status"),
        format!("{base}/provider-connections"),
        format!("{base}/provider-connections?status=revoked"),
        format!("{base}/provider-grants?subject_id=caracal:shared"),
        format!("{base}/grants?status=revoked"),
        format!("{base}/grants?user_id=alice"),
        format!("{base}/admin-audit?limit=1000"),
        format!("{base}/admin-audit?entity_type=applications&method=POST"),
        format!("{base}/admin-audit?format=csv&limit=1000"),
        format!("{base}/authority-records"),
        format!("{base}/authority-records?status=revoked&format=csv"),
        format!("{base}/sessions"),
        format!("{base}/agent-sessions?parent_id=s-1&format=csv"),
        format!("{base}/approvals"),
        format!("{base}/approvals/counts"),
        format!("{base}/approvals/h-1"),
        format!("{base}/step-up-challenges/h-2"),
    ];
    for (collection, extra) in [
        ("applications", "?status=archived"),
        ("providers", ""),
        ("resources", ""),
        ("grants", ""),
    ] {
        let (s, list) = admin.get(&format!("{base}/{collection}")).await;
        assert_eq!(s, 200);
        for item in list["items"].as_array().unwrap() {
            paths.push(format!(
                "{base}/{collection}/{}",
                item["id"].as_str().unwrap()
            ));
        }
        paths.push(format!("{base}/{collection}"));
        if !extra.is_empty() {
            paths.push(format!("{base}/{collection}{extra}"));
        }
    }
    let mut out = Vec::new();
    for p in paths {
        let (s, v) = admin.get(&p).await;
        assert_eq!(s, 200, "{p}: {v}");
        out.push((p, v));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuilding_reproduces_every_get() {
    let mut server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let z = populate(&server, &admin).await;
    // Refusals are audited after the answer; nothing here was refused, so the log is still.
    server.wait_archived().await;
    let before = answers(&admin, &z).await;
    assert!(before.len() > 20);
    // The grant revocation cascaded into bob's authority record.
    let revoked = &before
        .iter()
        .find(|(p, _)| p.ends_with("status=revoked&format=csv"))
        .unwrap()
        .1;
    assert!(revoked.to_string().contains("ar-bob"), "{revoked}");

    // In place, while the deployment runs.
    let (ok, out, err) = server.replay(&["rebuild"]);
    assert!(ok, "{out}{err}");
    for p in ["zones", "catalog", "admin_audit"] {
        assert!(out.contains(&format!("rebuilt {p}:")), "{out}");
    }
    let after = answers(&admin, &z).await;
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{p} after an in-place rebuild");
    }
    assert_eq!(before.len(), after.len());

    // From scratch: an empty database, the same log.
    let (prefix, keys, redis_url) = (
        server.prefix.clone(),
        server.keys.clone(),
        server.redis_url.clone(),
    );
    server.kill();
    let fresh = Server::start(Options {
        redis_url: Some(redis_url),
        prefix: Some(prefix),
        keys,
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&fresh);
    let n = before.len();
    let rebuilt = common::eventually(30, || async {
        let (_, audit) = admin
            .get(&format!("/v1/zones/{z}/admin-audit?limit=1000"))
            .await;
        let want = before
            .iter()
            .find(|(p, _)| p.ends_with("admin-audit?limit=1000"));
        if Some(&audit) != want.map(|(_, v)| v) {
            return None;
        }
        let got = answers(&admin, &z).await;
        (got.len() == n).then_some(got)
    })
    .await;
    for ((p, a), (_, b)) in before.iter().zip(&rebuilt) {
        assert_eq!(a, b, "{p} on a database rebuilt from the log");
    }
}
