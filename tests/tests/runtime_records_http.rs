//! Authority records (§14.3), sessions under both names (§14.4) and approvals under both
//! names (§15) over HTTP, with the records produced into the log as the STS and the
//! Coordinator produce them; the grant-revocation cascade and the reaper of §18.

mod common;

use chrono::{DateTime, Utc};
use common::{eventually, produce, Admin, Options, Server};
use serde_json::{json, Value};
use serval_domain::catalog::runtime::{ApprovalData, AuthorityRecordData, SessionData};
use serval_domain::catalog::{CatalogEvent, Created, EntityData, Stamp};

fn created(zone: &str, data: EntityData, by: &str) -> CatalogEvent {
    CatalogEvent::Created(Created {
        zone_id: zone.to_owned(),
        data,
        stamp: Stamp {
            by: by.to_owned(),
            via_operator: false,
        },
    })
}

fn record(kind: &str, subject: &str, expires_at: DateTime<Utc>) -> EntityData {
    EntityData::AuthorityRecord(AuthorityRecordData {
        record_type: kind.into(),
        subject_id: subject.into(),
        application_id: Some("app-1".into()),
        federated_user_issuer: (kind == "user").then(|| "https://idp.example".into()),
        parent_id: None,
        status: "active".into(),
        expires_at,
        authenticated_at: Utc::now(),
        revoked_at: None,
        revoked_reason: None,
        revoked_by_grant: None,
    })
}

fn session(parent: Option<&str>, lifecycle: &str, status: &str, labels: &[&str]) -> EntityData {
    EntityData::Session(SessionData {
        application_id: "app-1".into(),
        parent_session_id: parent.map(str::to_owned),
        status: status.into(),
        lifecycle: lifecycle.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        depth: u32::from(parent.is_some()),
        subject_authority_record_id: Some("ar-1".into()),
        subject_id: Some("alice".into()),
        federated_user_id: None,
        federated_user_issuer: None,
        last_active_at: Utc::now(),
        terminated_at: (status == "terminated").then(Utc::now),
        termination_reason: (status == "terminated").then(|| "requested".into()),
        ttl_seconds: Some(600),
        ..Default::default()
    })
}

fn hold(class: &str, tier: &str, binding: &str, expires_in: i64) -> ApprovalData {
    ApprovalData {
        session_id: "ar-1".into(),
        principal_id: "app-1".into(),
        application_id: Some("app-1".into()),
        approval_type: "human_approval".into(),
        tier: tier.into(),
        approver_class: class.into(),
        privacy_mode: "standard".into(),
        subject_anchor: None,
        binding: binding.into(),
        metadata_json: json!({"resource": "docs"}),
        decision_reason: None,
        expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        principal_federated: false,
        agent_labels: vec!["team:a".into()],
        consumed_record_id: None,
        approver_session_id: None,
    }
}

async fn zone(admin: &Admin, name: &str) -> String {
    let (s, z) = admin.post("/v1/zones", json!({"name": name})).await;
    assert_eq!(s, 201, "{z}");
    z["id"].as_str().unwrap().to_owned()
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i.get("authority_record_id")
                .or_else(|| i.get("session_id"))
                .filter(|_| i.get("binding").is_none())
                .or_else(|| i.get("id"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Walks a list to its end with `limit`, returning every id in order.
async fn walk(admin: &Admin, base: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut path = format!("{base}{sep}limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = admin.get(&path).await;
        assert_eq!(s, 200, "{page}");
        let got = ids(&page);
        assert!(got.len() <= limit);
        out.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn csv(admin: &Admin, path: &str) -> Vec<Vec<String>> {
    let resp = admin.req(reqwest::Method::GET, path).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let body = resp.text().await.unwrap();
    assert!(body.ends_with("\r\n"));
    body.trim_end_matches("\r\n")
        .split("\r\n")
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn authority_records_list_filter_page_and_export() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, "records").await;
    let hour = chrono::Duration::hours(1);
    let seeds = [
        ("ar-a1", record("user", "alice", Utc::now() + hour)),
        ("ar-a2", record("user", "alice", Utc::now() + hour)),
        ("ar-app", record("application", "app-1", Utc::now() + hour)),
        (
            "ar-old",
            record("user", "bob", Utc::now() - chrono::Duration::minutes(1)),
        ),
    ];
    for (id, data) in seeds {
        produce(server, &z, id, 0, created(&z, data, "sts"), "sts").await;
    }
    let base = format!("/v1/zones/{z}/authority-records");
    let all = eventually(10, || async {
        let (_, v) = admin.get(&base).await;
        (v["items"].as_array().map(Vec::len) == Some(4)).then_some(v)
    })
    .await;
    // Newest first.
    assert_eq!(ids(&all), ["ar-old", "ar-app", "ar-a2", "ar-a1"]);
    let a1 = &all["items"][3];
    assert_eq!(a1["authority_record_type"], "user");
    assert_eq!(a1["federated_user_issuer"], "https://idp.example");
    assert_eq!(a1["status"], "active");
    assert_eq!(a1["zone_id"], z.as_str());
    for f in [
        "parent_authority_record_id",
        "revoked_at",
        "revoked_reason",
        "expires_at",
        "authenticated_at",
        "created_at",
    ] {
        assert!(a1.get(f).is_some(), "{f} missing: {a1}");
    }
    // Expiry is read against the clock before the reaper writes it.
    assert_eq!(all["items"][0]["status"], "expired");

    for (query, want) in [
        ("status=active", vec!["ar-app", "ar-a2", "ar-a1"]),
        ("status=expired", vec!["ar-old"]),
        ("status=revoked", vec![]),
        ("kind=application", vec!["ar-app"]),
        ("subject_id=alice", vec!["ar-a2", "ar-a1"]),
        ("authority_record_id=ar-a2", vec!["ar-a2"]),
        ("kind=user&status=active", vec!["ar-a2", "ar-a1"]),
    ] {
        let (s, v) = admin.get(&format!("{base}?{query}")).await;
        assert_eq!(s, 200, "{query}: {v}");
        assert_eq!(ids(&v), want, "{query}");
    }
    for bad in [
        "status=live",
        "kind=robot",
        "limit=0",
        "limit=1001",
        "format=xml",
    ] {
        let (s, v) = admin.get(&format!("{base}?{bad}")).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }
    let (s, v) = admin.get(&format!("{base}?cursor=nope")).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_cursor")));
    assert_eq!(
        walk(&admin, &base, 1).await,
        ["ar-old", "ar-app", "ar-a2", "ar-a1"]
    );
    assert_eq!(walk(&admin, &base, 3).await.len(), 4);

    let rows = csv(&admin, &format!("{base}?format=csv")).await;
    assert_eq!(
        rows[0],
        [
            "authority_record_id",
            "zone_id",
            "authority_record_type",
            "subject_id",
            "federated_user_issuer",
            "parent_authority_record_id",
            "status",
            "expires_at",
            "authenticated_at",
            "created_at",
            "revoked_at",
            "revoked_reason"
        ]
    );
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[1][0], "ar-old");
    assert_eq!(rows[1][6], "expired");
    assert_eq!(rows[4][3], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_answer_under_both_names_with_every_filter() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, "sessions").await;
    let seeds = [
        (
            "s-root",
            session(None, "service", "active", &["team:a", "nightly"]),
        ),
        (
            "s-c1",
            session(Some("s-root"), "task", "active", &["team:a"]),
        ),
        ("s-c2", session(Some("s-root"), "task", "suspended", &[])),
        ("s-done", session(None, "task", "terminated", &["team"])),
    ];
    for (id, data) in seeds {
        produce(
            server,
            &z,
            id,
            0,
            created(&z, data, "coordinator"),
            "coordinator",
        )
        .await;
    }
    for name in ["sessions", "agent-sessions"] {
        let base = format!("/v1/zones/{z}/{name}");
        let all = eventually(10, || async {
            let (_, v) = admin.get(&base).await;
            (v["items"].as_array().map(Vec::len) == Some(4)).then_some(v)
        })
        .await;
        assert_eq!(ids(&all), ["s-done", "s-c2", "s-c1", "s-root"], "{name}");
        let root = &all["items"][3];
        assert_eq!(root["child_count"], 2);
        assert_eq!(root["depth"], 0);
        assert_eq!(root["labels"], json!(["team:a", "nightly"]));
        assert_eq!(all["items"][1]["parent_session_id"], "s-root");
        assert_eq!(all["items"][0]["termination_reason"], "requested");
        assert!(all["items"][0]["terminated_at"].is_string());
        for (query, want) in [
            ("status=active", vec!["s-c1", "s-root"]),
            ("status=suspended", vec!["s-c2"]),
            ("status=expired", vec![]),
            ("lifecycle=service", vec!["s-root"]),
            ("lifecycle=task", vec!["s-done", "s-c2", "s-c1"]),
            ("label=team:a", vec!["s-c1", "s-root"]),
            // Exact element match: "team" is not "team:a".
            ("label=team", vec!["s-done"]),
            ("parent_session_id=s-root", vec!["s-c2", "s-c1"]),
            ("parent_id=s-root", vec!["s-c2", "s-c1"]),
            ("application_id=app-1&status=active", vec!["s-c1", "s-root"]),
            ("subject_id=alice&lifecycle=service", vec!["s-root"]),
            ("subject_id=bob", vec![]),
        ] {
            let (s, v) = admin.get(&format!("{base}?{query}")).await;
            assert_eq!(s, 200, "{query}: {v}");
            assert_eq!(ids(&v), want, "{name}?{query}");
        }
        let long = "x".repeat(65);
        for bad in [
            "status=gone".to_owned(),
            "lifecycle=cron".to_owned(),
            format!("label={long}"),
            "limit=abc".to_owned(),
        ] {
            let (s, v) = admin.get(&format!("{base}?{bad}")).await;
            assert_eq!(
                (s, v["error"].as_str()),
                (400, Some("invalid_query")),
                "{bad}"
            );
        }
        assert_eq!(
            walk(&admin, &base, 1).await,
            ["s-done", "s-c2", "s-c1", "s-root"]
        );
        let rows = csv(&admin, &format!("{base}?format=csv&lifecycle=task")).await;
        assert_eq!(
            rows[0],
            [
                "session_id",
                "application_id",
                "parent_session_id",
                "status",
                "lifecycle",
                "labels",
                "depth",
                "child_count",
                "subject_authority_record_id",
                "subject_id",
                "federated_user_id",
                "federated_user_issuer",
                "started_at",
                "last_active_at",
                "terminated_at",
                "termination_reason",
                "ttl_seconds"
            ]
        );
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3][0], "s-c1");
        assert_eq!(rows[3][2], "s-root");
        assert_eq!(rows[3][5], "team:a");
        assert_eq!(rows[3][16], "600");
    }
}

async fn make_token(admin: &Admin, zone: &str, capability: &str) -> Admin {
    let (s, t) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": format!("t-{capability}"), "scope": "zone", "zone_id": zone,
                   "capability": capability}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    admin.with_token(t["token"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_list_and_decide_under_both_names() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, "approvals").await;
    let t0 = Utc::now();
    let mut approved_earlier = hold("operator", "high", "b-shared", 600);
    approved_earlier.satisfied_at = Some(Utc::now());
    approved_earlier.approver_subject_id = Some("admin:someone".into());
    let seeds = [
        ("h-old", approved_earlier),
        ("h-op", hold("operator", "high", "b-shared", 600)),
        ("h-subj", hold("subject", "low", "b-2", 600)),
        ("h-exp", hold("any", "low", "b-3", -5)),
        ("h-any", hold("any", "low", "b-4", 600)),
    ];
    for (id, data) in seeds {
        produce(
            server,
            &z,
            id,
            0,
            created(&z, EntityData::Approval(data), "sts"),
            "sts",
        )
        .await;
    }
    let base = format!("/v1/zones/{z}/approvals");
    let all = eventually(10, || async {
        let (_, v) = admin.get(&base).await;
        (v["items"].as_array().map(Vec::len) == Some(5)).then_some(v)
    })
    .await;
    assert_eq!(ids(&all), ["h-any", "h-exp", "h-subj", "h-op", "h-old"]);
    let op = &all["items"][3];
    assert_eq!(op["state"], "pending");
    assert_eq!(op["prior_approved"], 1);
    assert_eq!(op["prior_rejected"], 0);
    assert_eq!(op["metadata_json"], json!({"resource": "docs"}));
    assert_eq!(all["items"][4]["prior_approved"], 0);
    assert_eq!(all["items"][1]["state"], "expired");
    // The seed's name lists the same holds.
    let (_, seed) = admin
        .get(&format!("/v1/zones/{z}/step-up-challenges"))
        .await;
    assert_eq!(ids(&seed), ids(&all));
    let until = (Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let since =
        (t0 - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (query, want) in [
        ("state=pending".to_owned(), vec!["h-any", "h-subj", "h-op"]),
        ("state=approved".to_owned(), vec!["h-old"]),
        ("state=expired".to_owned(), vec!["h-exp"]),
        ("tier=high".to_owned(), vec!["h-op", "h-old"]),
        (
            "principal=app-1&tier=low&state=pending".to_owned(),
            vec!["h-any", "h-subj"],
        ),
        ("principal=nobody".to_owned(), vec![]),
        (
            format!("since={since}&until={until}"),
            vec!["h-any", "h-exp", "h-subj", "h-op", "h-old"],
        ),
        (format!("until={since}"), vec![]),
    ] {
        let (s, v) = admin.get(&format!("{base}?{query}")).await;
        assert_eq!(s, 200, "{query}: {v}");
        assert_eq!(ids(&v), want, "{query}");
    }
    for bad in [
        "state=maybe".to_owned(),
        format!("tier={}", "t".repeat(65)),
        format!("principal={}", "p".repeat(129)),
        "since=yesterday".to_owned(),
        "since=2026-01-01T00:00:00%2B01:00".to_owned(),
        "limit=501".to_owned(),
    ] {
        let (s, v) = admin.get(&format!("{base}?{bad}")).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }
    assert_eq!(walk(&admin, &base, 2).await.len(), 5);
    let (s, counts) = admin.get(&format!("{base}/counts")).await;
    assert_eq!(s, 200);
    assert_eq!(
        counts,
        json!({"pending": 3, "approved": 1, "rejected": 0, "expired": 1, "consumed": 0})
    );

    let (s, got) = admin.get(&format!("{base}/h-op")).await;
    assert_eq!((s, got["id"].as_str()), (200, Some("h-op")));
    let (s, got) = admin
        .get(&format!("/v1/zones/{z}/step-up-challenges/h-op"))
        .await;
    assert_eq!((s, got["tier"].as_str()), (200, Some("high")));
    let (s, e) = admin.get(&format!("{base}/h-missing")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("approval_not_found")));

    // Capabilities (§3.2): only `approve` tokens (and the bootstrap token) decide.
    let writer = make_token(&admin, &z, "write").await;
    let reader = make_token(&admin, &z, "read").await;
    let approver = make_token(&admin, &z, "approve").await;
    let (s, e) = writer
        .post(&format!("{base}/h-op/approve"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (403, Some("approve_capability_required"))
    );
    let (s, e) = reader
        .post(&format!("{base}/h-op/approve"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (403, Some("admin_token_read_only"))
    );
    let (s, e) = approver
        .post(&format!("/v1/zones/{z}/applications"), json!({"name": "x"}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (403, Some("admin_token_approve_only"))
    );

    // Body rules.
    let (s, e) = approver
        .post(
            &format!("{base}/h-op/approve"),
            json!({"reason": "r".repeat(501)}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_body")));
    let (s, e) = approver
        .post(&format!("{base}/h-op/approve"), json!({"reason": 7}))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_body")));
    let (s, e) = approver
        .post(&format!("{base}/h-missing/approve"), json!({}))
        .await;
    assert_eq!((s, e["error"].as_str()), (404, Some("approval_not_found")));

    let (s, d) = approver
        .post(
            &format!("{base}/h-op/approve"),
            json!({"reason": "looks right"}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["id"], "h-op");
    assert_eq!(d["state"], "approved");
    assert!(d["satisfied_at"].is_string());
    assert_eq!(d["rejected_at"], Value::Null);
    let approver_id = d["approver_subject_id"].as_str().unwrap().to_owned();
    assert!(approver_id.starts_with("admin:"), "{approver_id}");
    let (_, got) = admin.get(&format!("{base}/h-op")).await;
    assert_eq!(got["state"], "approved");
    assert_eq!(got["decision_reason"], "looks right");
    // A decided hold is not decidable again.
    let (s, e) = approver
        .post(&format!("{base}/h-op/reject"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"].as_str(), e["state"].as_str()),
        (409, Some("approval_not_decidable"), Some("approved"))
    );
    let (s, e) = approver
        .post(&format!("{base}/h-exp/approve"), json!({}))
        .await;
    assert_eq!((s, e["state"].as_str()), (409, Some("expired")));
    let (s, e) = approver
        .post(&format!("{base}/h-subj/reject"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (403, Some("subject_approval_required"))
    );

    // The bootstrap token rejects; the seed's `satisfy` approves.
    let (s, d) = admin.post(&format!("{base}/h-any/reject"), json!({})).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(
        (d["state"].as_str(), d["satisfied_at"].clone()),
        (Some("rejected"), Value::Null)
    );
    let (s, e) = approver
        .post(
            &format!("/v1/zones/{z}/step-up-challenges/h-any/satisfy"),
            json!({}),
        )
        .await;
    assert_eq!((s, e["state"].as_str()), (409, Some("rejected")));

    // Each decision is an audit frame on caracal.audit.events, ingested into the ledger.
    let frames = eventually(15, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{z}/audit?event_type=step_up_decided"))
            .await;
        (v["items"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await;
    let decisions: Vec<&str> = frames["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["decision"].as_str().unwrap())
        .collect();
    assert!(
        decisions.contains(&"approved") && decisions.contains(&"rejected"),
        "{frames}"
    );
    let approved = frames["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["decision"] == "approved")
        .unwrap();
    let meta = &approved["metadata_json"];
    assert_eq!(meta["challenge_id"], "h-op", "{approved}");
    assert_eq!(meta["approver_plane"], "operator");
    assert_eq!(meta["approver_subject_id"], approver_id.as_str());
    assert_eq!(meta["reason"], "looks right");
    assert_eq!(meta["binding"], "b-shared");
    assert_eq!(meta["agent_labels"], json!(["team:a"]));
    let (_, counts) = admin.get(&format!("{base}/counts")).await;
    assert_eq!(
        counts,
        json!({"pending": 1, "approved": 2, "rejected": 1, "expired": 1, "consumed": 0})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_grant_revokes_its_subjects_records_and_the_reaper_expires() {
    let server = Server::start(Options {
        env: vec![("SERVAL_RECORD_REAPER_INTERVAL_SECS".into(), "1".into())],
        ..Options::default()
    })
    .await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "cascade").await;
    let (_, app) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "bot", "registration_method": "managed"}),
        )
        .await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (_, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "up", "kind": "caracal_mandate"}),
        )
        .await;
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/resources"),
            json!({"name": "docs", "scopes": ["docs:read"], "upstream_url": "https://docs.example",
                   "credential_provider_id": p["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let (s, g) = admin
        .post(
            &format!("/v1/zones/{z}/grants"),
            json!({"application_id": app_id, "user_id": "alice", "resource_id": r["id"], "scopes": ["docs:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    let hour = chrono::Duration::hours(1);
    for (id, data) in [
        ("ar-a1", record("user", "alice", Utc::now() + hour)),
        ("ar-a2", record("user", "alice", Utc::now() + hour)),
        ("ar-b", record("user", "bob", Utc::now() + hour)),
        (
            "ar-due",
            record("user", "carol", Utc::now() + chrono::Duration::seconds(1)),
        ),
    ] {
        produce(&server, &z, id, 0, created(&z, data, "sts"), "sts").await;
    }
    let base = format!("/v1/zones/{z}/authority-records");
    eventually(10, || async {
        let (_, v) = admin.get(&base).await;
        (v["items"].as_array().map(Vec::len) == Some(4)).then_some(())
    })
    .await;

    let (s, _) = admin.delete(&format!("/v1/zones/{z}/grants/{gid}")).await;
    assert_eq!(s, 204);
    let (_, revoked) = admin.get(&format!("{base}?status=revoked")).await;
    assert_eq!(ids(&revoked), ["ar-a2", "ar-a1"]);
    for item in revoked["items"].as_array().unwrap() {
        assert_eq!(item["revoked_reason"], "grant_revoked");
        assert!(item["revoked_at"].is_string());
    }
    let (_, bob) = admin.get(&format!("{base}?subject_id=bob")).await;
    assert_eq!(bob["items"][0]["status"], "active");
    // Repeating the revoke is a no-op (204 again, nothing more revoked).
    let (s, _) = admin.delete(&format!("/v1/zones/{z}/grants/{gid}")).await;
    assert_eq!(s, 204);

    // Each revoked record is announced on caracal.sessions.revoke with the grant id.
    let topic = format!("{}:caracal.sessions.revoke", server.prefix);
    let conn = serval_streams::RedisClient::open(&server.redis_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let messages = eventually(10, || {
        let mut conn = conn.clone();
        let topic = topic.clone();
        async move {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&topic)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .ok()?;
            (entries.len() == 2).then_some(entries)
        }
    })
    .await;
    let mut anchors: Vec<String> = Vec::new();
    for (_, fields) in &messages {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        assert_eq!(get("zone_id").as_deref(), Some(z.as_str()));
        assert_eq!(get("reason").as_deref(), Some("grant_revoked"));
        assert_eq!(get("grant_id").as_deref(), Some(gid.as_str()));
        assert!(get("_sig").is_some() && get("outbox_id").is_some());
        anchors.push(get("session_id").unwrap());
    }
    anchors.sort();
    assert_eq!(anchors, ["ar-a1", "ar-a2"]);

    // The reaper writes `expired` into the record itself (not only the read-time view).
    let pool = common::pool(&server.db_url).await;
    let stored = eventually(15, || {
        let pool = pool.clone();
        async move {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT doc #>> '{data,authority_record,status}' FROM catalog_objects WHERE id = 'ar-due'",
            )
            .fetch_optional(&pool)
            .await
            .ok()?;
            status.filter(|s| s == "expired")
        }
    })
    .await;
    assert_eq!(stored, "expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn dcr_revoke_live_cascades_to_records_and_sessions() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin
        .post(
            "/v1/zones",
            json!({"name": "dcr shutdown", "dcr_enabled": true}),
        )
        .await;
    let z = z["id"].as_str().unwrap().to_owned();
    let (s, dcr) = admin
        .post(
            &format!("/v1/zones/{z}/applications/dcr"),
            json!({"name": "dyn"}),
        )
        .await;
    assert_eq!(s, 201, "{dcr}");
    let dcr_id = dcr["id"].as_str().unwrap().to_owned();
    let (_, managed) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "kept", "registration_method": "managed"}),
        )
        .await;
    let managed_id = managed["id"].as_str().unwrap().to_owned();
    let hour = Utc::now() + chrono::Duration::hours(1);
    let app_record = |app: &str, parent: Option<&str>, kind: &str| {
        let mut d = record(kind, app, hour);
        if let EntityData::AuthorityRecord(r) = &mut d {
            r.application_id = Some(app.to_owned());
            r.parent_id = parent.map(str::to_owned);
        }
        d
    };
    let app_session = |app: &str, parent: Option<&str>, status: &str| {
        let mut d = session(parent, "task", status, &[]);
        if let EntityData::Session(s) = &mut d {
            s.application_id = app.to_owned();
            s.subject_authority_record_id = Some("ar-dcr".into());
        }
        d
    };
    let seeds = [
        ("ar-dcr", app_record(&dcr_id, None, "application")),
        ("ar-child", app_record("someone", Some("ar-dcr"), "user")),
        ("ar-kept", app_record(&managed_id, None, "application")),
        ("s-1", app_session(&dcr_id, None, "active")),
        ("s-2", app_session(&managed_id, Some("s-1"), "suspended")),
        ("s-kept", app_session(&managed_id, None, "active")),
    ];
    for (id, data) in seeds {
        produce(&server, &z, id, 0, created(&z, data, "sts"), "sts").await;
    }
    eventually(10, || async {
        let (_, v) = admin.get(&format!("/v1/zones/{z}/sessions")).await;
        (v["items"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;

    let (s, e) = admin
        .patch(&format!("/v1/zones/{z}"), json!({"dcr_enabled": false}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("dcr_shutdown_required")),
        "{e}"
    );
    let (s, zone) = admin
        .patch(
            &format!("/v1/zones/{z}"),
            json!({"dcr_enabled": false, "dcr_shutdown": "revoke_live"}),
        )
        .await;
    assert_eq!(s, 200, "{zone}");
    assert_eq!(zone["dcr_enabled"], false);

    let (s, _) = admin
        .get(&format!("/v1/zones/{z}/applications/{dcr_id}"))
        .await;
    assert_eq!(s, 404, "the DCR application is archived");
    let (s, _) = admin
        .get(&format!("/v1/zones/{z}/applications/{managed_id}"))
        .await;
    assert_eq!(s, 200);
    let (_, records) = admin
        .get(&format!("/v1/zones/{z}/authority-records?status=revoked"))
        .await;
    let mut revoked = ids(&records);
    revoked.sort();
    assert_eq!(revoked, ["ar-child", "ar-dcr"]);
    assert!(records["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["revoked_reason"] == "dcr_shutdown"));
    let (_, sessions) = admin
        .get(&format!("/v1/zones/{z}/sessions?status=terminated"))
        .await;
    let mut terminated = ids(&sessions);
    terminated.sort();
    assert_eq!(terminated, ["s-1", "s-2"]);
    assert_eq!(sessions["items"][0]["termination_reason"], "dcr_shutdown");
    let (_, live) = admin
        .get(&format!("/v1/zones/{z}/sessions?status=active"))
        .await;
    assert_eq!(ids(&live), ["s-kept"]);

    // The named admin-audit action with its counts.
    let (_, audit) = admin
        .get(&format!("/v1/zones/{z}/admin-audit?limit=1000"))
        .await;
    let shutdown = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "DCR shutdown revoke_live")
        .unwrap_or_else(|| panic!("{audit}"))
        .clone();
    let p = &shutdown["payload_json"];
    assert_eq!(p["dcr_registration_disabled"], true, "{shutdown}");
    assert_eq!(p["dcr_shutdown_mode"], "revoke_live");
    assert_eq!(p["live_dcr_applications"], 1);
    assert_eq!(p["revoked_applications"], 1);
    assert_eq!(p["revoked_authority_records"], 2);
    assert_eq!(p["terminated_sessions"], 2);

    // Each terminated session is announced on caracal.agents.lifecycle (after the spawn of
    // each of the three).
    let topic = format!("{}:caracal.agents.lifecycle", server.prefix);
    let conn = serval_streams::RedisClient::open(&server.redis_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let entries = eventually(10, || {
        let (mut conn, topic) = (conn.clone(), topic.clone());
        async move {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&topic)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .ok()?;
            let ends: Vec<_> = entries
                .into_iter()
                .filter(|(_, f)| f.iter().any(|(k, v)| k == "event" && v == "terminate"))
                .collect();
            (ends.len() == 2).then_some(ends)
        }
    })
    .await;
    for (_, fields) in entries {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        assert_eq!(get("event").as_deref(), Some("terminate"));
        assert_eq!(get("reason").as_deref(), Some("dcr_shutdown"));
    }
}

/// sts.md §7.4: holds that ended (expired, consumed, rejected) more than a day ago are
/// archived by the purge job; live holds and holds that ended recently stay listed.
#[tokio::test(flavor = "multi_thread")]
async fn holds_that_ended_a_day_ago_are_purged() {
    let server = Server::start(Options {
        env: vec![("SERVAL_APPROVAL_PURGE_INTERVAL_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "purge").await;
    let day = 86_400 + 3_600;
    let mut consumed = hold("operator", "t", "b4", 3_600);
    consumed.satisfied_at = Some(Utc::now() - chrono::Duration::seconds(day + 60));
    consumed.consumed_at = Some(Utc::now() - chrono::Duration::seconds(day));
    let mut rejected_recently = hold("operator", "t", "b5", 3_600);
    rejected_recently.rejected_at = Some(Utc::now() - chrono::Duration::hours(2));
    let seeds = [
        ("h-old-expired", hold("operator", "t", "b1", -day)),
        ("h-recent-expired", hold("operator", "t", "b2", -3_600)),
        ("h-pending", hold("operator", "t", "b3", 3_600)),
        ("h-old-consumed", consumed),
        ("h-recent-rejected", rejected_recently),
    ];
    for (id, h) in seeds {
        let data = EntityData::Approval(h);
        produce(&server, &z, id, 0, created(&z, data, "sts"), "sts").await;
    }
    let base = format!("/v1/zones/{z}/approvals");
    let left = eventually(20, || async {
        let (_, v) = admin.get(&base).await;
        let mut got = ids(&v);
        got.sort();
        (got.len() == 3).then_some(got)
    })
    .await;
    assert_eq!(left, ["h-pending", "h-recent-expired", "h-recent-rejected"]);
}
