//! The admin audit chain (§14.2): what is recorded, the feed and its export, and the chain's
//! links and signatures.

mod common;

use common::{eventually, Admin, Options, Server};
use serde_json::json;
use serval_domain::admin_audit;

#[tokio::test(flavor = "multi_thread")]
async fn mutations_and_failures_are_chained_per_zone() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (s, z) = admin.post("/v1/zones", json!({"name": "audited"})).await;
    assert_eq!(s, 201);
    let z = z["id"].as_str().unwrap().to_owned();
    let (s, app) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "bot", "registration_method": "managed", "traits": ["a"]}),
        )
        .await;
    assert_eq!(s, 201);
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (s, _) = admin
        .patch(
            &format!("/v1/zones/{z}/applications/{app_id}"),
            json!({"name": "bot2", "client_secret": "x".repeat(40)}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{z}/applications/{app_id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    // A failed GET is recorded too.
    let (s, _) = admin
        .get(&format!("/v1/zones/{z}/applications/missing"))
        .await;
    assert_eq!(s, 404);

    let feed = format!("/v1/zones/{z}/admin-audit");
    let page = eventually(10, || {
        let (admin, feed) = (admin.clone(), feed.clone());
        async move {
            let (s, p) = admin.get(&feed).await;
            (s == 200 && p["items"].as_array().map(Vec::len) == Some(5)).then_some(p)
        }
    })
    .await;
    let items = page["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            format!("GET /v1/zones/{z}/applications/missing"),
            format!("POST /v1/zones/{z}/applications/{app_id}/rotate-secret"),
            format!("PATCH /v1/zones/{z}/applications/{app_id}"),
            format!("POST /v1/zones/{z}/applications"),
            "POST /v1/zones".to_owned(),
        ]
    );
    let create = &items[3];
    assert_eq!(create["entity_type"], "applications");
    assert_eq!(create["entity_id"], app_id.as_str());
    assert_eq!(create["status_code"], 201);
    assert_eq!(create["payload_json"]["change_kind"], "create");
    assert_eq!(create["payload_json"]["rls_mode"], "zone_scoped");
    assert_eq!(
        create["payload_json"]["changed_fields"],
        json!(["name", "registration_method", "traits"])
    );
    assert_eq!(create["signed"], true);
    assert_eq!(create["actor_name"], "bootstrap");
    assert_eq!(create["actor_scope"], "global");
    let patch = &items[2];
    assert_eq!(patch["payload_json"]["changed_fields"], json!(["name"]));
    assert_eq!(patch["payload_json"]["secret_rotated"], true);
    assert_eq!(items[1]["payload_json"]["change_kind"], "secret_rotation");
    assert_eq!(items[0]["status_code"], 404);
    assert_eq!(items[4]["entity_id"], z.as_str());
    let seqs: Vec<&str> = items
        .iter()
        .map(|i| i["chain_seq"].as_str().unwrap())
        .collect();
    assert_eq!(seqs, ["5", "4", "3", "2", "1"]);
    assert!(!page.to_string().contains(&"x".repeat(40)));

    // Filters, fields, CSV.
    let (_, f) = admin.get(&format!("{feed}?method=PATCH")).await;
    assert_eq!(f["items"].as_array().unwrap().len(), 1);
    let (_, f) = admin
        .get(&format!(
            "{feed}?entity_id={app_id}&fields=action,change_kind"
        ))
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        f["items"][2],
        json!({"action": format!("POST /v1/zones/{z}/applications"), "change_kind": "create"})
    );
    let (s, e) = admin.get(&format!("{feed}?fields=nope")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_fields")));
    let (s, e) = admin
        .get(&format!("{feed}?since=2026-01-01T00:00:00+01:00"))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_query")));
    let (s, f) = admin
        .get(&format!("{feed}?until=2000-01-01T00:00:00Z"))
        .await;
    assert_eq!((s, f["items"].as_array().unwrap().len()), (200, 0));
    let resp = admin
        .req(
            reqwest::Method::GET,
            &format!("{feed}?format=csv&entity_id={app_id}&fields=chain_seq,method,changed_fields"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.headers()["content-disposition"],
        format!("attachment; filename=\"admin-audit-{z}.csv\"").as_str()
    );
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "chain_seq,method,changed_fields");
    assert_eq!(lines[1], "4,POST,");
    assert_eq!(lines[2], "3,PATCH,name");
    assert_eq!(lines[3], "2,POST,name registration_method traits");
    assert_eq!(lines.len(), 5);
    assert_eq!(lines.last(), Some(&""));

    // The chain links and HMACs verify against AUDIT_HMAC_KEY.
    let pool = common::pool(&server.db_url).await;
    let rows = serval_projector::admin_audit::chain(&pool, &z)
        .await
        .unwrap();
    let key = hex::decode(&server.keys.audit).unwrap();
    let mut prev = String::new();
    for (i, (seq, content, p, hmac)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(p, &prev);
        assert_eq!(
            hmac.as_deref(),
            Some(admin_audit::chain_hmac(&key, content, &prev).as_str())
        );
        prev = content.clone();
    }
}

/// Issue 14 item 9: refusals of requests without valid credentials are counted into one
/// record per window, not given a log entry each — even with the per-address budget off.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_unauthenticated_requests_add_a_few_log_entries_with_their_count() {
    let server = Server::start(Options {
        env: vec![(
            "SERVAL_UNAUTHENTICATED_AUDIT_WINDOW_SECS".into(),
            "2".into(),
        )],
        ..Default::default()
    })
    .await;
    let store = server.store().await;
    let key = store.keys().log(&serval_streams::LogStream::System);
    let conn = store.connection();
    let before = common::xlen(&conn, &key).await;
    let http = reqwest::Client::new();
    let api = server.api().to_owned();
    let total = 10_000usize;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, api) = (http.clone(), api.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(16) {
                let req = match i % 3 {
                    0 => http.get(format!("{api}/v1/zones")),
                    1 => http
                        .post(format!("{api}/v1/zones"))
                        .bearer_auth("cat_not_a_token")
                        .json(&json!({"name": "x"})),
                    _ => http.get(format!("{api}/v1/zones/{i}/applications")),
                };
                assert_eq!(req.send().await.unwrap().status(), 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pool = common::pool(&server.db_url).await;
    let counted: i64 = eventually(30, || async {
        let counts: Vec<String> = sqlx::query_scalar(
            "SELECT payload_json::text FROM admin_audit WHERE action = 'unauthenticated_refusals'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let n: i64 = counts
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                let v = match v {
                    serde_json::Value::String(s) => serde_json::from_str(&s).unwrap(),
                    v => v,
                };
                v["count"].as_i64().unwrap()
            })
            .sum();
        (n >= total as i64).then_some(n)
    })
    .await;
    assert_eq!(counted, total as i64, "every refusal is counted once");
    let added = common::xlen(&conn, &key).await - before;
    assert!(
        added <= 20,
        "{added} log entries for {total} unauthenticated requests"
    );
    let (s, _) = Admin::new(&server).get("/v1/zones").await;
    assert_eq!(s, 200);
}

/// A path of multi-byte characters is counted like any refusal, never a panic that drops
/// the connection (found in review of the refusal tally).
#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_multi_byte_path_is_answered_not_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::shared().await;
    let addr = server.api().trim_start_matches("http://").to_owned();
    // An odd byte offset: a cut at a fixed byte count lands inside a character.
    let seg = format!("x{}", "é".repeat(60));
    for path in [format!("/v1/{seg}/{seg}"), format!("/v1/zones/{seg}")] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: serval\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let head = String::from_utf8_lossy(&out);
        assert!(head.starts_with("HTTP/1.1 4"), "{path}: {head}");
    }
}

/// The projection hands chain positions out per batch: a record whose id the table already
/// holds (a copy of its entry appended again) and a repeat inside the batch get none, so the
/// zone's chain stays contiguous and each id is there once.
#[tokio::test]
async fn records_already_in_the_chain_take_no_position() {
    use serval_domain::admin_audit::{AdminAuditEvent, AdminAuditRecord};
    use serval_domain::Event;
    use serval_streams::append::Rider;
    use serval_streams::{AppendRequest, LogStream};

    let server = Server::shared().await;
    let admin = Admin::new(server);
    let (_, v) = admin
        .post("/v1/zones", json!({"name": "admin-audit-batch"}))
        .await;
    let z = v["id"].as_str().unwrap().to_owned();
    let store = server.store().await;
    let event = |path: &str| {
        Event::AdminAudit(AdminAuditEvent::Recorded(AdminAuditRecord {
            request_id: format!("rq-{path}"),
            actor_id: Some("tester".into()),
            actor_name: None,
            actor_scope: None,
            action: format!("POST /{path}"),
            method: "POST".into(),
            path: format!("/{path}"),
            zone_id: Some(z.clone()),
            entity_type: None,
            entity_id: None,
            status_code: 201,
            payload_json: "{}".into(),
        }))
    };
    let recorded = |id: &str, path: &str| {
        AppendRequest::new(
            LogStream::Zone(z.clone()),
            Some(z.clone()),
            id,
            0,
            vec![event(path)],
            "tester",
        )
        .one_shot()
    };
    let pool = common::pool(&server.db_url).await;
    let chain = |pool: sqlx::PgPool, z: String| async move {
        sqlx::query_as::<_, (String, i64, String, String)>(
            "SELECT id, chain_seq, content_sha256, prev_content_sha256 FROM admin_audit
              WHERE chain = $1 AND actor_id = 'tester' ORDER BY chain_seq",
        )
        .bind(z)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    common::append_hinted(&store, &recorded("aa-first", "one")).await;
    eventually(20, || async {
        (chain(pool.clone(), z.clone()).await.len() == 1).then_some(())
    })
    .await;
    // One atomic append: the known id again, a new id twice, another new one.
    let mut again = recorded("aa-first", "one-again");
    again.riders = [
        ("aa-second", "two"),
        ("aa-second", "two-again"),
        ("aa-third", "three"),
    ]
    .iter()
    .map(|(id, path)| Rider {
        aggregate_id: (*id).to_owned(),
        event: event(path),
    })
    .collect();
    common::append_hinted(&store, &again).await;
    let rows = eventually(20, || async {
        let r = chain(pool.clone(), z.clone()).await;
        (r.len() == 3).then_some(r)
    })
    .await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["aa-first", "aa-second", "aa-third"]);
    let seqs: Vec<i64> = rows.iter().map(|r| r.1 - rows[0].1).collect();
    assert_eq!(seqs, [0, 1, 2], "no gap where the skipped records were");
    for pair in rows.windows(2) {
        assert_eq!(
            pair[1].3, pair[0].2,
            "each row names its predecessor's digest"
        );
    }
}
