//! A zone-scoped admin token cannot read or write another zone: every zone route, every
//! method, against real objects of the other zone (management-api.md §3.2 step 6).

mod common;

use chrono::Utc;
use common::{Admin, Options, Server};
use reqwest::Method;
use serde_json::{json, Value};
use serval_domain::catalog::runtime::{ApprovalData, AuthorityRecordData, SessionData};
use serval_domain::catalog::{CatalogEvent, Created, EntityData, Stamp};

struct Ids {
    zone: String,
    app: String,
    provider: String,
    resource: String,
    grant: String,
    policy: String,
    set: String,
    approval: String,
}

/// A zone holding one of each object (created with the bootstrap token).
async fn furnished(server: &Server, admin: &Admin, name: &str) -> Ids {
    let (_, z) = admin
        .post("/v1/zones", json!({"name": name, "dcr_enabled": true}))
        .await;
    let zone = z["id"].as_str().unwrap().to_owned();
    let b = format!("/v1/zones/{zone}");
    let id = |v: &Value| v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned();
    let (_, a) = admin
        .post(
            &format!("{b}/applications"),
            json!({"name": "agent", "registration_method": "managed"}),
        )
        .await;
    let (_, p) = admin
        .post(
            &format!("{b}/providers"),
            json!({"name": "gh", "kind": "oauth2_authorization_code", "config_json": {
                "authorization_endpoint": "https://gh.example/a", "token_endpoint": "https://gh.example/t",
                "redirect_uri": "https://s.example/cb", "client_id": "c", "client_secret": "s3cr3t-value"}}),
        )
        .await;
    let (_, r) = admin
        .post(
            &format!("{b}/resources"),
            json!({"name": "docs", "scopes": ["d:read"], "upstream_url": "https://d.example",
                   "credential_provider_id": id(&p)}),
        )
        .await;
    let (_, g) = admin
        .post(
            &format!("{b}/grants"),
            json!({"application_id": id(&a), "user_id": "u", "resource_id": id(&r), "scopes": ["d:read"]}),
        )
        .await;
    admin
        .post(
            &format!("{b}/provider-connections"),
            json!({"provider_id": id(&p), "access_token": "tok"}),
        )
        .await;
    let (_, pol) = admin
        .post(
            &format!("{b}/policies"),
            json!({"name": "p", "content": "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\napp_ids := {}\n"}),
        )
        .await;
    let (_, set) = admin
        .post(&format!("{b}/policy-sets"), json!({"name": "s"}))
        .await;
    // Run-time records, produced as the STS and the Coordinator produce them.
    let approval = format!("h-{name}");
    for (rid, data) in runtime_records() {
        let rid = if rid == "h" {
            approval.clone()
        } else {
            format!("{rid}-{name}")
        };
        let event = CatalogEvent::Created(Created {
            zone_id: zone.clone(),
            data,
            stamp: Stamp {
                by: "sts".into(),
                via_operator: false,
            },
        });
        common::produce(server, &zone, &rid, 0, event, "sts").await;
    }
    common::eventually(10, || async {
        let (s, _) = admin.get(&format!("{b}/approvals/{approval}")).await;
        (s == 200).then_some(())
    })
    .await;
    Ids {
        zone,
        app: id(&a),
        provider: id(&p),
        resource: id(&r),
        grant: id(&g),
        policy: id(&pol),
        set: id(&set),
        approval,
    }
}

fn runtime_records() -> Vec<(&'static str, EntityData)> {
    let later = Utc::now() + chrono::Duration::hours(1);
    vec![
        (
            "ar",
            EntityData::AuthorityRecord(AuthorityRecordData {
                record_type: "user".into(),
                subject_id: "u".into(),
                application_id: None,
                federated_user_issuer: None,
                parent_id: None,
                status: "active".into(),
                expires_at: later,
                authenticated_at: Utc::now(),
                revoked_at: None,
                revoked_reason: None,
                revoked_by_grant: None,
            }),
        ),
        (
            "s",
            EntityData::Session(SessionData {
                application_id: "a".into(),
                parent_session_id: None,
                status: "active".into(),
                lifecycle: "task".into(),
                labels: vec![],
                depth: 0,
                subject_authority_record_id: None,
                subject_id: None,
                federated_user_id: None,
                federated_user_issuer: None,
                last_active_at: Utc::now(),
                terminated_at: None,
                termination_reason: None,
                ttl_seconds: None,
                ..Default::default()
            }),
        ),
        (
            "h",
            EntityData::Approval(ApprovalData {
                session_id: "ar".into(),
                principal_id: "a".into(),
                application_id: None,
                approval_type: "human_approval".into(),
                tier: "t".into(),
                approver_class: "operator".into(),
                privacy_mode: "standard".into(),
                subject_anchor: None,
                binding: "b".into(),
                metadata_json: Value::Null,
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
        ),
    ]
}

/// Every admin-token route below `/v1/zones/<zone>`, with a body fit for each write.
fn routes(i: &Ids) -> Vec<(Method, String, Value)> {
    let z = format!("/v1/zones/{}", i.zone);
    let body = json!({"name": "x"});
    let conn = json!({"provider_id": i.provider, "access_token": "t"});
    let mut r = vec![
        (Method::GET, z.clone(), Value::Null),
        (Method::PATCH, z.clone(), body.clone()),
        (Method::DELETE, z.clone(), Value::Null),
        (Method::GET, format!("{z}/dcr-status"), Value::Null),
        (Method::GET, format!("{z}/admin-audit"), Value::Null),
        (Method::GET, format!("{z}/applications"), Value::Null),
        (
            Method::POST,
            format!("{z}/applications"),
            json!({"name": "x", "registration_method": "managed"}),
        ),
        (Method::POST, format!("{z}/applications/dcr"), body.clone()),
        (
            Method::GET,
            format!("{z}/applications/{}", i.app),
            Value::Null,
        ),
        (
            Method::PATCH,
            format!("{z}/applications/{}", i.app),
            body.clone(),
        ),
        (
            Method::DELETE,
            format!("{z}/applications/{}", i.app),
            Value::Null,
        ),
        (
            Method::POST,
            format!("{z}/applications/{}/rotate-secret", i.app),
            json!({}),
        ),
        (
            Method::GET,
            format!("{z}/applications/{}/client-secret", i.app),
            Value::Null,
        ),
        (Method::GET, format!("{z}/providers"), Value::Null),
        (
            Method::POST,
            format!("{z}/providers"),
            json!({"name": "x", "kind": "none"}),
        ),
        (
            Method::GET,
            format!("{z}/providers/{}", i.provider),
            Value::Null,
        ),
        (
            Method::PATCH,
            format!("{z}/providers/{}", i.provider),
            body.clone(),
        ),
        (
            Method::DELETE,
            format!("{z}/providers/{}", i.provider),
            Value::Null,
        ),
        (Method::GET, format!("{z}/resources"), Value::Null),
        (
            Method::POST,
            format!("{z}/resources"),
            json!({"name": "x", "scopes": ["s"]}),
        ),
        (
            Method::GET,
            format!("{z}/resources/{}", i.resource),
            Value::Null,
        ),
        (
            Method::PATCH,
            format!("{z}/resources/{}", i.resource),
            body.clone(),
        ),
        (
            Method::DELETE,
            format!("{z}/resources/{}", i.resource),
            Value::Null,
        ),
        (Method::GET, format!("{z}/grants"), Value::Null),
        (
            Method::POST,
            format!("{z}/grants"),
            json!({"application_id": i.app, "user_id": "v", "resource_id": i.resource, "scopes": ["d:read"]}),
        ),
        (Method::GET, format!("{z}/grants/{}", i.grant), Value::Null),
        (
            Method::DELETE,
            format!("{z}/grants/{}", i.grant),
            Value::Null,
        ),
        (Method::GET, format!("{z}/policies"), Value::Null),
        (
            Method::POST,
            format!("{z}/policies"),
            json!({"name": "x", "content": "package caracal.authz\n"}),
        ),
        (
            Method::GET,
            format!("{z}/policies/{}", i.policy),
            Value::Null,
        ),
        (
            Method::DELETE,
            format!("{z}/policies/{}", i.policy),
            Value::Null,
        ),
        (
            Method::POST,
            format!("{z}/policies/{}/versions", i.policy),
            json!({"content": "package caracal.authz\n"}),
        ),
        (Method::GET, format!("{z}/policy-sets"), Value::Null),
        (Method::POST, format!("{z}/policy-sets"), body.clone()),
        (
            Method::GET,
            format!("{z}/policy-sets/{}", i.set),
            Value::Null,
        ),
        (
            Method::DELETE,
            format!("{z}/policy-sets/{}", i.set),
            Value::Null,
        ),
        (
            Method::GET,
            format!("{z}/policy-sets/{}/versions", i.set),
            Value::Null,
        ),
        (
            Method::POST,
            format!("{z}/policy-sets/{}/versions", i.set),
            json!({"policy_version_ids": []}),
        ),
        (
            Method::GET,
            format!("{z}/policy-sets/{}/versions/v1", i.set),
            Value::Null,
        ),
        (
            Method::POST,
            format!("{z}/policy-sets/{}/activate", i.set),
            json!({"version_id": "v1"}),
        ),
        (
            Method::GET,
            format!("{z}/policy-sets/{}/activation-status", i.set),
            Value::Null,
        ),
        (
            Method::POST,
            format!("{z}/policy-sets/{}/simulate", i.set),
            json!({"input": {}}),
        ),
    ];
    for name in [
        "authority-records",
        "sessions",
        "agent-sessions",
        "approvals/counts",
    ] {
        r.push((Method::GET, format!("{z}/{name}"), Value::Null));
    }
    for name in ["approvals", "step-up-challenges"] {
        r.push((Method::GET, format!("{z}/{name}"), Value::Null));
        r.push((
            Method::GET,
            format!("{z}/{name}/{}", i.approval),
            Value::Null,
        ));
    }
    for action in [
        "approvals/{id}/approve",
        "approvals/{id}/reject",
        "step-up-challenges/{id}/satisfy",
    ] {
        let path = format!("{z}/{}", action.replace("{id}", &i.approval));
        r.push((Method::POST, path, json!({"reason": "r"})));
    }
    for name in ["provider-connections", "provider-grants"] {
        r.push((Method::GET, format!("{z}/{name}"), Value::Null));
        r.push((Method::POST, format!("{z}/{name}"), conn.clone()));
        r.push((
            Method::POST,
            format!("{z}/{name}/oauth/authorize"),
            json!({"provider_id": i.provider}),
        ));
        r.push((
            Method::POST,
            format!("{z}/{name}/revoke"),
            json!({"provider_id": i.provider}),
        ));
    }
    r
}

fn is_decision(path: &str) -> bool {
    path.ends_with("/approve") || path.ends_with("/reject") || path.ends_with("/satisfy")
}

/// What the bootstrap token sees of a zone (everything but its admin audit, which records
/// the refusals themselves).
async fn snapshot(admin: &Admin, i: &Ids) -> Vec<Value> {
    let mut out = Vec::new();
    for (m, p, _) in routes(i) {
        if m == Method::GET && !p.ends_with("/admin-audit") && !p.ends_with("/client-secret") {
            out.push(admin.get(&p).await.1);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zone_token_reaches_nothing_of_another_zone() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let mine = furnished(&server, &admin, "mine").await;
    let theirs = furnished(&server, &admin, "theirs").await;
    let mut tokens = Vec::new();
    for capability in ["write", "read", "approve"] {
        let (s, t) = admin
            .post(
                "/v1/admin-tokens",
                json!({"name": format!("zone-{capability}"), "scope": "zone",
                       "zone_id": mine.zone, "capability": capability}),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        tokens.push((capability, admin.with_token(t["token"].as_str().unwrap())));
    }
    let before = snapshot(&admin, &theirs).await;

    let all = routes(&theirs);
    assert!(all.len() >= 50, "{} routes", all.len());
    for (capability, token) in &tokens {
        for (m, p, body) in &all {
            let body = (!body.is_null()).then(|| body.clone());
            let (s, e) = token.call(m.clone(), p, body).await;
            // §3.2 checks the capability (steps 3-5) before the scope (step 6).
            let decision = is_decision(p);
            let want = match *capability {
                "read" if *m != Method::GET => "admin_token_read_only",
                "approve" if *m != Method::GET && !decision => "admin_token_approve_only",
                "write" if decision => "approve_capability_required",
                _ => "admin_token_zone_mismatch",
            };
            assert_eq!(
                (s, e),
                (403, json!({ "error": want })),
                "{capability} token: {m} {p}"
            );
        }
    }
    assert_eq!(
        snapshot(&admin, &theirs).await,
        before,
        "the other zone is unchanged"
    );

    // The same routes of its own zone are not refused for scope; a read token still
    // cannot write there.
    let (_, write) = &tokens[0];
    let (_, read) = &tokens[1];
    let (_, approve) = &tokens[2];
    for (m, p, body) in routes(&mine) {
        if is_decision(&p) {
            // Only the approve capability decides; the hold takes one decision.
            let (s, e) = approve.call(m.clone(), &p, Some(body.clone())).await;
            assert!(
                s == 200 || e["error"] == "approval_not_decidable",
                "{m} {p}: {s} {e}"
            );
            continue;
        }
        if m == Method::DELETE || (m == Method::PATCH && p.ends_with(&mine.zone)) {
            continue; // keep the zone and its objects for the remaining calls
        }
        let payload = (!body.is_null()).then(|| body.clone());
        let (s, e) = write.call(m.clone(), &p, payload.clone()).await;
        assert_ne!(e["error"], "admin_token_zone_mismatch", "{m} {p}: {s}");
        let (s, e) = read.call(m.clone(), &p, payload).await;
        if m == Method::GET {
            assert_ne!(s, 403, "{m} {p}: {e}");
        } else {
            assert_eq!(
                (s, e),
                (403, json!({"error": "admin_token_read_only"})),
                "{m} {p}"
            );
        }
    }
}
