//! The audit ledger end to end: frames on `caracal.audit.events` (from Serval's own relay and
//! from other producers) are verified and ingested by the Audit service, chained per zone, and
//! read through `/v1/zones/:zone/audit` (filters, pagination, CSV), by request and explained.

mod common;

use common::{Admin, Options, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

fn sign(key_hex: &str, data: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn publish(server: &Server, fields: &[(&str, String)]) {
    let store = server.store().await;
    let mut conn = store.connection();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(format!("{}:caracal.audit.events", server.prefix))
        .arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v);
    }
    let _: String = cmd.query_async(&mut conn).await.unwrap();
}

/// A signed frame as STS or Gateway would publish it.
async fn frame(server: &Server, event: &Value) {
    let data = event.to_string();
    let sig = sign(&server.keys.audit, &data);
    publish(
        server,
        &[
            ("id", event["id"].as_str().unwrap().to_owned()),
            ("data", data),
            ("sig", sig),
        ],
    )
    .await;
}

fn exchange(zone: &str, id: &str, request: &str, decision: &str, at: &str, extra: Value) -> Value {
    let mut metadata = json!({
        "application_id": "app-1",
        "application_name": "billing-agent",
        "resource": "resource://ledger",
        "requested_scopes": ["ledger:read"],
        "agent_session_id": "gs-1",
        "agent_labels": ["billing", "eu"],
        "session_id": "ar-1",
        "delegation_edge_id": "edge-1",
        "access_token": "must-not-show",
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut metadata, extra) {
        m.extend(x);
    }
    json!({
        "id": id, "zone_id": zone, "event_type": "token_exchange", "request_id": request,
        "decision": decision, "policy_set_id": "ps-1", "policy_set_version_id": "psv-1",
        "evaluation_status": "complete",
        "determining_policies_json": [{"policy": "application-grants"}],
        "diagnostics_json": if decision == "deny" { json!([{"code": "scope_not_granted"}]) } else { json!([]) },
        "metadata_json": metadata,
        "occurred_at": at,
    })
}

async fn dlq_reasons(server: &Server) -> Vec<String> {
    let store = server.store().await;
    let mut conn = store.connection();
    let key = format!("{}:caracal.audit.events.dlq", server.prefix);
    serval_streams::read::read_range(&mut conn, &key, "-", "+", 100)
        .await
        .unwrap()
        .iter()
        .map(|(_, f)| {
            String::from_utf8(
                serval_streams::read::field_bytes(f, "reason")
                    .unwrap()
                    .to_vec(),
            )
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_are_verified_ingested_chained_and_served() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "ledger"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let audit = format!("/v1/zones/{z}/audit");

    // Serval's own producer: a secret reveal travels relay → topic → ingester → ledger.
    let (_, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "agent", "registration_method": "managed"}),
        )
        .await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    admin
        .get(&format!(
            "/v1/zones/{z}/applications/{app_id}/client-secret"
        ))
        .await;

    // Other producers: one request allowed then denied, one more request, and bad frames.
    let e1 = exchange(
        &z,
        "ev-1",
        "req-1",
        "allow",
        "2026-11-30T10:00:00Z",
        json!({}),
    );
    let e2 = exchange(
        &z,
        "ev-2",
        "req-1",
        "deny",
        "2026-11-30T10:00:01Z",
        json!({}),
    );
    let e3 = exchange(
        &z,
        "ev-3",
        "req-2",
        "allow",
        "2026-11-30T11:00:00Z",
        json!({"application_id": "app-2", "agent_labels": ["ops"], "agent_session_id": "gs-2"}),
    );
    for e in [&e1, &e2, &e3] {
        frame(&server, e).await;
    }
    // Re-delivery of the same frame: a benign duplicate.
    frame(&server, &e1).await;
    // The same id with other content: tampering on replay.
    let mut forged = e1.clone();
    forged["decision"] = json!("deny");
    frame(&server, &forged).await;
    let data = exchange(
        &z,
        "ev-9",
        "req-9",
        "allow",
        "2026-11-30T12:00:00Z",
        json!({}),
    )
    .to_string();
    publish(
        &server,
        &[
            ("id", "x".into()),
            ("data", data.clone()),
            ("sig", "00".repeat(32)),
        ],
    )
    .await;
    publish(&server, &[("id", "x".into())]).await;
    let no_zone = json!({"id": "ev-8", "occurred_at": "2026-11-30T12:00:00Z"}).to_string();
    let sig = sign(&server.keys.audit, &no_zone);
    publish(
        &server,
        &[("id", "x".into()), ("data", no_zone), ("sig", sig)],
    )
    .await;
    let other_zone = exchange(
        "no-such-zone",
        "ev-7",
        "req-7",
        "allow",
        "2026-11-30T12:00:00Z",
        json!({}),
    );
    frame(&server, &other_zone).await;

    let mut reasons = common::eventually(20, || async {
        let r = dlq_reasons(&server).await;
        (r.len() == 5).then_some(r)
    })
    .await;
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "hmac_verify_failed",
            "json_parse_error:missing zone_id",
            "missing_data_field",
            "tamper_on_replay",
            "unknown_zone"
        ]
    );
    let all = common::eventually(20, || async {
        let (_, list) = admin.get(&format!("{audit}?limit=1000")).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 4).then_some(items)
    })
    .await;
    // Newest first; the reveal is the newest (it happened now).
    assert_eq!(all[0]["event_type"], "credential_revealed");
    assert_eq!(all[0]["metadata_json"]["application_id"], app_id.as_str());
    let ids: Vec<&str> = all[1..].iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ev-3", "ev-2", "ev-1"]);
    let e = &all[3];
    assert_eq!(e["decision"], "allow", "the forged copy did not replace it");
    assert_eq!(e["metadata_json"]["access_token"], "[redacted]");
    assert_eq!(
        e["determining_policies_json"],
        json!([{"policy": "application-grants"}])
    );
    assert_eq!(e["occurred_at"], "2026-11-30T10:00:00.000Z");
    assert!(e["ingested_at"].is_string());

    // Filters.
    let count = |q: &'static str| {
        let admin = &admin;
        let audit = &audit;
        async move {
            let (s, v) = admin.get(&format!("{audit}?{q}")).await;
            assert_eq!(s, 200, "{q}: {v}");
            v["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("decision=deny").await, 1);
    assert_eq!(count("event_type=token_exchange").await, 3);
    assert_eq!(
        count("event_type=token_exchange,credential_revealed").await,
        4
    );
    assert_eq!(count("application_id=app-2").await, 1);
    assert_eq!(count("session_id=gs-1").await, 2);
    assert_eq!(count("authority_record_id=ar-1").await, 3);
    assert_eq!(count("label=billing").await, 2);
    assert_eq!(count("label=ops").await, 1);
    assert_eq!(count("request_id=req-1").await, 2);
    assert_eq!(
        count("since=2026-11-30T10:00:01Z&until=2026-11-30T11:00:00Z").await,
        1,
        "until is exclusive"
    );
    for (q, code) in [
        ("decision=maybe", "invalid_query"),
        ("since=yesterday", "invalid_query"),
        ("format=xml", "invalid_query"),
        ("fields=id,secret", "invalid_fields"),
    ] {
        let (s, v) = admin.get(&format!("{audit}?{q}")).await;
        assert_eq!((s, v["error"].as_str()), (400, Some(code)), "{q}");
    }
    // Pagination to the end.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = admin.get(&format!("{audit}?limit=1{cursor}")).await;
        for i in page["items"].as_array().unwrap() {
            seen.push(i["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    // Flat fields and CSV.
    let (_, flat) = admin
        .get(&format!(
            "{audit}?fields=id,decision,determining_policies,agent_labels&request_id=req-1"
        ))
        .await;
    assert_eq!(
        flat["items"][0],
        json!({"id": "ev-2", "decision": "deny", "determining_policies": ["application-grants"],
               "agent_labels": ["billing", "eu"]})
    );
    let resp = admin
        .req(
            reqwest::Method::GET,
            &format!(
                "{audit}?format=csv&fields=id,decision,agent_labels&event_type=token_exchange"
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-disposition"],
        format!("attachment; filename=\"audit-{z}.csv\"").as_str()
    );
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        "id,decision,agent_labels\r\nev-3,allow,ops\r\nev-2,deny,billing eu\r\nev-1,allow,billing eu\r\n"
    );

    // By request, oldest first; explain.
    let (s, events) = admin.get(&format!("{audit}/by-request/req-1")).await;
    assert_eq!(s, 200);
    let order: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["ev-1", "ev-2"]);
    let (s, e) = admin.get(&format!("{audit}/by-request/nope")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("request_not_found")));
    let (s, x) = admin
        .get(&format!("{audit}/by-request/req-1/explain"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(x["final_decision"], "deny");
    assert_eq!(x["events"].as_array().unwrap().len(), 2);
    let d = &x["denied"][0];
    assert_eq!(d["event_id"], "ev-2");
    assert_eq!(d["diagnostics"], json!([{"code": "scope_not_granted"}]));
    let input = &d["policy_input"];
    assert_eq!(input["principal"]["id"], "app-1");
    assert_eq!(input["principal"]["labels"], json!(["billing", "eu"]));
    assert_eq!(
        input["resource"],
        json!({"type": "Resource", "identifier": "resource://ledger", "scopes": ["ledger:read"]})
    );
    assert_eq!(input["action"], json!({"id": "TokenExchange"}));
    assert_eq!(input["context"]["challenge_resolved"], false);
    assert_eq!(input["session"], json!({"id": "ar-1"}));
    assert_eq!(input["delegation_edge"], json!({"id": "edge-1"}));
    let (_, allowed) = admin
        .get(&format!("{audit}/by-request/req-2/explain"))
        .await;
    assert_eq!(allowed["final_decision"], "allow");
    assert_eq!(allowed["denied"], json!([]));

    // The ledger is rebuilt from the log alone, chain included.
    let pool = common::pool(&server.db_url).await;
    let chain = || ledger(&pool, &z);
    let before = chain().await;
    assert_eq!(before.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for w in before.windows(2) {
        assert_eq!(w[1].3, w[0].2, "each row links to the previous digest");
    }
    assert!(before.iter().all(|r| r.4.is_some()));
    let (_, listed) = admin.get(&format!("{audit}?limit=1000")).await;
    let (ok, out, err) = server.replay(&["rebuild", "--projection", "audit"]);
    assert!(ok, "{out}{err}");
    assert_eq!(chain().await, before);
    assert_eq!(admin.get(&format!("{audit}?limit=1000")).await.1, listed);
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_a_crashed_consumer_left_pending_are_claimed_and_ingested() {
    let server = Server::start(Options {
        env: vec![("SERVAL_AUDIT_CLAIM_IDLE_MS".into(), "300".into())],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "claims"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let event = exchange(
        &z,
        "claimed-1",
        "req-claimed",
        "allow",
        "2026-07-11T12:00:00Z",
        json!({}),
    );
    let data = event.to_string();
    let sig = sign(&server.keys.audit, &data);
    let topic = format!("{}:caracal.audit.events", server.prefix);
    // Delivered to a consumer that then dies: the add and its delivery are one transaction,
    // so the running ingestor never reads it itself.
    let store = server.store().await;
    let mut conn = store.connection();
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("id")
        .arg("claimed-1")
        .arg("data")
        .arg(&data)
        .arg("sig")
        .arg(&sig)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit-ingestor")
        .arg("crashed-consumer")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&topic)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let path = format!("/v1/zones/{z}/audit/by-request/req-claimed");
    let events = common::eventually(30, || async {
        let (s, v) = admin.get(&path).await;
        (s == 200).then_some(v)
    })
    .await;
    assert_eq!(events[0]["id"], "claimed-1", "{events}");
    // Acknowledged by its new owner: nothing is left pending.
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&topic)
        .arg("audit-ingestor")
        .query_async(&mut conn)
        .await
        .unwrap();
    let count = match &pending {
        redis::Value::Array(v) => v.first().cloned(),
        _ => None,
    };
    assert_eq!(count, Some(redis::Value::Int(0)), "{pending:?}");
}

/// Issue 14 item 8: ingested frames and admin-audit records are single-event aggregates:
/// they add no field to the zone's versions index (which is never trimmed), and a
/// re-delivered frame is still recognised (a duplicate) while a different frame under a
/// used id is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn frames_and_admin_records_do_not_grow_the_versions_index() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "ledger"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let store = server.store().await;
    let versions = store
        .keys()
        .versions(&serval_streams::LogStream::Zone(z.clone()));
    let fields = || {
        let (mut conn, key) = (store.connection(), versions.clone());
        async move {
            redis::cmd("HLEN")
                .arg(&key)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let before = fields().await;
    let n = 50;
    for i in 0..n {
        let e = exchange(
            &z,
            &format!("grow-{i}"),
            &format!("rq-{i}"),
            "allow",
            "2026-11-30T10:00:00Z",
            json!({}),
        );
        frame(&server, &e).await;
        // Each refused request of an authenticated caller is an admin-audit record too.
        let (s, _) = admin
            .get(&format!("/v1/zones/{z}/applications/not-an-app-{i}"))
            .await;
        assert_eq!(s, 404);
    }
    let again = exchange(
        &z,
        "grow-0",
        "rq-0",
        "allow",
        "2026-11-30T10:00:00Z",
        json!({}),
    );
    frame(&server, &again).await;
    let forged = exchange(
        &z,
        "grow-1",
        "rq-1",
        "deny",
        "2026-11-30T10:00:00Z",
        json!({}),
    );
    frame(&server, &forged).await;
    let audit = format!("/v1/zones/{z}/audit?limit=500");
    common::eventually(30, || async {
        let (_, v) = admin.get(&audit).await;
        (v["items"].as_array().map(Vec::len) >= Some(n)).then_some(())
    })
    .await;
    common::eventually(30, || async {
        dlq_reasons(&server)
            .await
            .iter()
            .any(|r| r.starts_with("tamper_on_replay"))
            .then_some(())
    })
    .await;
    let (_, v) = admin.get(&audit).await;
    let ours = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with("grow-")))
        .count();
    assert_eq!(
        ours, n,
        "each frame once: the re-delivery and the forgery were not added"
    );
    assert_eq!(
        fields().await,
        before,
        "no versions-index field per frame or record"
    );

    // Frame ids are unique per zone: another zone's frame under a used id is its own.
    let (_, z2) = admin.post("/v1/zones", json!({"name": "ledger two"})).await;
    let z2 = z2["id"].as_str().unwrap().to_owned();
    let theirs = exchange(
        &z2,
        "grow-0",
        "rq-z2",
        "allow",
        "2026-11-30T10:00:00Z",
        json!({}),
    );
    frame(&server, &theirs).await;
    common::eventually(30, || async {
        let (_, v) = admin.get(&format!("/v1/zones/{z2}/audit")).await;
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["id"] == "grow-0"))
            .then_some(())
    })
    .await;
}

/// A zone's ledger in chain order: id, `chain_seq`, `content_sha256`, `prev_content_sha256`,
/// `chain_hmac`.
async fn ledger(
    pool: &sqlx::PgPool,
    zone: &str,
) -> Vec<(String, i64, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id, chain_seq, content_sha256, prev_content_sha256, chain_hmac FROM audit_events
          WHERE zone_id = $1 ORDER BY chain_seq",
    )
    .bind(zone)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A record as the ingester appends it (the projection reads nothing else of it).
fn record(zone: &str, id: &str) -> serval_domain::audit::AuditRecord {
    serval_domain::audit::AuditRecord {
        id: id.to_owned(),
        zone_id: zone.to_owned(),
        event_type: "token_exchange".into(),
        request_id: format!("rq-{id}"),
        decision: "allow".into(),
        policy_set_id: None,
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: "evaluated".into(),
        determining_policies_json: "[]".into(),
        diagnostics_json: "null".into(),
        metadata_json: format!("{{\"application_id\":\"{id}\"}}"),
        occurred_at: chrono::Utc::now(),
        ingest_signature: None,
    }
}

/// The ledger's projection hands chain positions out per batch: a record whose id the ledger
/// already holds (a frame ingested again once its idempotency record lapsed), a repeat inside
/// the batch and a record found outside its zone's stream get none, so each zone's chain stays
/// contiguous, each id is there once per zone, and another zone's same id is its own.
#[tokio::test]
async fn records_already_in_the_ledger_take_no_chain_position() {
    use serval_domain::audit::AuditEvent;
    use serval_domain::Event;
    use serval_streams::append::Rider;
    use serval_streams::{AppendRequest, LogStream};

    let server = Server::shared().await;
    let admin = Admin::new(server);
    let mut zones = Vec::new();
    for name in ["ledger-batch", "ledger-batch-other"] {
        let (_, v) = admin.post("/v1/zones", json!({"name": name})).await;
        zones.push(v["id"].as_str().unwrap().to_owned());
    }
    let (z, y) = (zones[0].as_str(), zones[1].as_str());
    let store = server.store().await;
    let event = |zone: &str, id: &str| Event::Audit(AuditEvent::Ingested(record(zone, id)));
    // The ingester's append of one frame, on its zone's stream.
    let ingested = |zone: &str, id: &str| {
        AppendRequest::new(
            LogStream::Zone(zone.to_owned()),
            Some(zone.to_owned()),
            id,
            0,
            vec![event(zone, id)],
            "system:audit-ingestor",
        )
        .one_shot()
    };
    common::append_hinted(&store, &ingested(z, "dup-a")).await;
    let pool = common::pool(&server.db_url).await;
    common::eventually(20, || async {
        (ledger(&pool, z).await.len() == 1).then_some(())
    })
    .await;

    // The other zone's record under an id this zone is about to use.
    common::append_hinted(&store, &ingested(y, "dup-b")).await;
    // One atomic append: the known id again (other content: its time differs), a new one
    // twice, a record of the other zone, another new one.
    let mut again = ingested(z, "dup-a");
    again.riders = [(z, "dup-b"), (z, "dup-b"), (y, "dup-y"), (z, "dup-c")]
        .iter()
        .enumerate()
        .map(|(i, (zone, id))| Rider {
            aggregate_id: format!("rider-{i}"),
            event: event(zone, id),
        })
        .collect();
    common::append_hinted(&store, &again).await;
    let chain = common::eventually(20, || async {
        let r = ledger(&pool, z).await;
        (r.len() == 3).then_some(r)
    })
    .await;
    let ids: Vec<&str> = chain.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["dup-a", "dup-b", "dup-c"]);
    let seqs: Vec<i64> = chain.iter().map(|r| r.1).collect();
    assert_eq!(seqs, [1, 2, 3], "no gap where the skipped records were");
    assert_eq!(chain[0].3, "", "the chain starts empty");
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1].3, pair[0].2,
            "each row names its predecessor's digest"
        );
    }
    let other = common::eventually(20, || async {
        let r = ledger(&pool, y).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let other: Vec<(&str, i64)> = other.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(
        other,
        [("dup-b", 1)],
        "the same id in another zone is that zone's; a record outside its stream is not chained"
    );
}
