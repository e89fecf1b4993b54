//! Crash safety of the projector and refusal of tampered log entries.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{Admin, Keys, Options, Server};
use serde_json::json;
use serval_domain::zone::{self, Zone, ZoneCommand, ZoneContext, ZonePatch};
use serval_domain::{Actor, Event};
use serval_projector::zones::ZonesProjection;
use serval_projector::{ProjectorConfig, Runner, Visibility};
use serval_streams::codec::Upcasters;
use serval_streams::read::{read_range, verify_entry};
use serval_streams::{AppendOutcome, AppendRequest, EventStore, LogStream};
use sqlx::Row;

fn ctx() -> ZoneContext {
    ZoneContext {
        actor: Actor {
            id: "admin:seed".into(),
            is_bootstrap: false,
            via_operator_header: false,
        },
        live_dcr_applications: 0,
    }
}

fn req(id: &str, expected: u64, events: Vec<zone::ZoneEvent>) -> AppendRequest {
    AppendRequest::new(
        LogStream::System,
        Some(id.to_owned()),
        id,
        expected,
        events.into_iter().map(Event::Zone).collect(),
        "admin:seed",
    )
}

/// Appends `zones` zones with `updates` renames each, concurrently per zone.
async fn seed(store: &EventStore, zones: usize, updates: usize) {
    let mut tasks = Vec::new();
    for z in 0..zones {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let create = ZoneCommand::Create {
                name: format!("zone {z}"),
                slug: format!("zone-{z}"),
                dcr_enabled: z % 2 == 0,
            };
            let events = zone::decide(None, &create, &ctx()).unwrap();
            store.append(&req(&id, 0, events)).await.unwrap();
            for u in 0..updates {
                let patch = ZoneCommand::Update(ZonePatch {
                    name: Some(format!("zone {z} v{u}")),
                    operator_governed: Some(u % 3 == 0),
                    ..Default::default()
                });
                // decide needs a live zone; the events only depend on the patch here.
                let live = Zone {
                    id: id.clone(),
                    name: "x".into(),
                    slug: "x".into(),
                    dcr_enabled: false,
                    operator_coauthor_badge: true,
                    operator_governed: false,
                    created_by: "x".into(),
                    created_via_operator: false,
                    updated_by: "x".into(),
                    updated_via_operator: false,
                    created_at: chrono::Utc::now(),
                    updated_at: chrono::Utc::now(),
                    archived_at: None,
                    version: u as u64 + 1,
                    last_event_id: None,
                };
                let events = zone::decide(Some(&live), &patch, &ctx()).unwrap();
                let out = store.append(&req(&id, u as u64 + 1, events)).await.unwrap();
                assert!(matches!(out, AppendOutcome::Appended { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Folds the system log up to `until` (inclusive) with `evolve`.
async fn fold_log(store: &EventStore, until: &str) -> BTreeMap<String, Zone> {
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let entries = read_range(&mut conn, &key, "-", until, 1_000_000)
        .await
        .unwrap();
    let mut zones: BTreeMap<String, Zone> = BTreeMap::new();
    for (id, fields) in entries {
        let rec = verify_entry(store.signer(), &key, &LogStream::System, id, &fields).unwrap();
        if let Event::Zone(e) = rec.decode(&Upcasters::default()).unwrap() {
            let meta = rec.meta();
            let next = zone::evolve(zones.remove(&meta.aggregate_id), &meta, &e);
            if let Some(z) = next {
                zones.insert(meta.aggregate_id.clone(), z);
            }
        }
    }
    zones
}

async fn read_model(url: &str) -> BTreeMap<String, Zone> {
    let pool = common::pool(url).await;
    let all = serval_projector::zones::all(&pool).await.unwrap();
    pool.close().await;
    all.into_iter().map(|z| (z.id.clone(), z)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_batch_the_projector_resumes_and_equals_a_fresh_rebuild() {
    let keys = Keys::default();
    let prefix = common::unique(common::KEY_PREFIX);
    let db = common::fresh_db().await;
    let client = redis::Client::open(common::redis_url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let store = EventStore::new(
        conn,
        serval_streams::KeySpace::new(prefix.clone(), format!("{prefix}:")),
        keys.signer(),
    );
    seed(&store, 300, 9).await; // 3,000 events

    // First run: abort inside the transaction once 1,500 events were applied (mid-batch).
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(common::serval_bin())
        .args(["serve", "projector"])
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", common::redis_url())
        .env("CARACAL_MODE", "dev")
        .env("STREAMS_HMAC_KEY", &keys.streams)
        .env("AUDIT_HMAC_KEY", &keys.audit)
        .env("SECRET_STORE_KEK", &keys.kek)
        .env("SERVAL_DATA_DIR", dir.path())
        .env("SERVAL_KEY_PREFIX", &prefix)
        .env("SERVAL_TEST_CRASH_AFTER_EVENTS", "zones:1500")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the projector aborted");

    let pool = common::pool(&db).await;
    let row = sqlx::query("SELECT last_ms, last_seq, events_applied FROM projection_checkpoints WHERE projection = 'zones' AND stream = $1")
        .bind(store.keys().log(&LogStream::System))
        .fetch_one(&pool)
        .await
        .unwrap();
    let applied: i64 = row.get(2);
    assert!(
        applied < 1500 && applied > 0,
        "the crashed batch did not commit (checkpoint at {applied})"
    );
    let cp = format!("{}-{}", row.get::<i64, _>(0), row.get::<i64, _>(1));
    // Exactly the checkpointed prefix of the log is in the read model: nothing more, nothing less.
    assert_eq!(read_model(&db).await, fold_log(&store, &cp).await);

    // Restart without the hook; it resumes from the checkpoint.
    let server = Server::start(Options::sharing(&db, &prefix, &keys, vec!["projector"])).await;
    let head = store
        .last_entry_id(&store.keys().log(&LogStream::System))
        .await
        .unwrap();
    common::eventually(60, || async {
        let r = sqlx::query("SELECT last_ms, last_seq FROM projection_checkpoints WHERE projection = 'zones' AND stream = $1")
            .bind(store.keys().log(&LogStream::System))
            .fetch_one(&pool)
            .await
            .unwrap();
        let at = serval_streams::EntryId::new(r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64);
        (at >= head).then_some(())
    })
    .await;
    drop(server);
    let resumed = read_model(&db).await;
    assert_eq!(resumed.len(), 300);

    // A fresh rebuild from the log into an empty database, in process.
    let fresh = common::fresh_db().await;
    let fresh_pool = common::pool(&fresh).await;
    serval_schema::migrate(&fresh_pool).await.unwrap();
    let cfg = Arc::new(ProjectorConfig::new(store.keys().clone(), keys.signer()));
    let mut runner = Runner::new(
        ZonesProjection,
        fresh_pool.clone(),
        client,
        cfg,
        Visibility::new(),
    );
    let n = runner.catch_up().await.unwrap();
    assert_eq!(n, 3000);
    assert_eq!(read_model(&fresh).await, resumed, "row for row");
    assert_eq!(resumed, fold_log(&store, "+").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_entry_is_dead_lettered_never_applied_and_reported() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (s, _) = admin.post("/v1/zones", json!({"name": "honest"})).await;
    assert_eq!(s, 201);

    // Take a genuine entry, change one byte of the envelope, keep its signature: a forgery.
    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let entries = read_range(&mut conn, &key, "-", "+", 100).await.unwrap();
    let (_, fields) = entries.last().unwrap();
    let genuine = verify_entry(
        store.signer(),
        &key,
        &LogStream::System,
        entries.last().unwrap().0,
        fields,
    )
    .unwrap();
    let forged_id = uuid::Uuid::now_v7().to_string();
    let mut envelope = genuine.envelope.clone();
    envelope.aggregate_id = forged_id.clone();
    envelope.zone_id = Some(forged_id.clone());
    let body = envelope.encode().unwrap();
    let sig = hex::encode(&genuine.sig);
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("env")
        .arg(body.as_slice())
        .arg("kid")
        .arg(&genuine.kid)
        .arg("sig")
        .arg(&sig)
        .query_async(&mut conn)
        .await
        .unwrap();

    let ready = common::eventually(10, || async {
        let r = reqwest::get(format!("{}/ready", server.api()))
            .await
            .unwrap();
        (r.status() == 503).then_some(r)
    })
    .await;
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"], "dead_letters");
    assert!(body["deadCount"].as_i64().unwrap() >= 1);
    let sts: serde_json::Value = reqwest::get(format!("{}/ready", server.url("sts")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // More projections may refuse the entry meanwhile: the count only grows.
    assert!(sts["deadCount"].as_i64().unwrap() >= body["deadCount"].as_i64().unwrap());
    let mut sts = sts;
    sts.as_object_mut().unwrap().remove("deadCount");
    assert_eq!(
        sts,
        json!({"ok": false, "ready": false, "reason": "dead_letters", "dependency": "projector"})
    );

    // Every projection refuses the entry on its own; /ready reports the first of them.
    let metrics = common::eventually(10, || async {
        let m = reqwest::get(format!("{}/metrics", server.api()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains(
            "serval_projection_dead_letters_total{projection=\"zones\",reason=\"bad_signature\"} 1",
        )
        .then_some(m)
    })
    .await;
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("serval_dead_letters ") && !l.ends_with(" 0")));

    let dead = read_range(&mut conn, &store.keys().dead_letters(), "-", "+", 100)
        .await
        .unwrap();
    assert!(!dead.is_empty());
    let (s, e) = admin.get(&format!("/v1/zones/{forged_id}")).await;
    assert_eq!(
        (s, e),
        (404, json!({"error": "zone_not_found"})),
        "never applied"
    );
    let pool = common::pool(&server.db_url).await;
    let archived: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_archive WHERE aggregate_id = $1")
            .bind(&forged_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(archived, 0, "not archived as a genuine event");

    // The projector keeps going past the refused entry.
    let (s, z) = admin.post("/v1/zones", json!({"name": "after"})).await;
    assert_eq!(s, 201);
    assert_eq!(
        admin
            .get(&format!("/v1/zones/{}", z["id"].as_str().unwrap()))
            .await
            .0,
        200
    );
}
