//! Crash safety of the projector and refusal of tampered log entries.

mod common;

use std::collections::BTreeMap;
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
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let conn = client.connect().await.unwrap();
    let store = EventStore::new(
        conn,
        serval_streams::KeySpace::new(prefix.clone(), format!("{prefix}:")),
        keys.signer(),
    );
    seed(&store, 300, 9).await; // 3,000 events

    // First run: killed (SIGKILL) inside a batch's transaction. The production binary has no
    // crash hook: a trigger holds the 1,500th row write of the zones read model, and the
    // process is killed while its transaction is open.
    let pool = common::pool(&db).await;
    serval_schema::migrate(&pool).await.unwrap();
    sqlx::raw_sql(
        "CREATE SEQUENCE crash_gate_rows;
         CREATE FUNCTION crash_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('crash_gate_rows') = 1500 THEN PERFORM pg_sleep(600); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER crash_gate BEFORE INSERT OR UPDATE ON zones
           FOR EACH ROW EXECUTE FUNCTION crash_gate();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut first = Server::start(Options::sharing(&db, &prefix, &keys, vec!["projector"])).await;
    let db_name = db.rsplit('/').next().unwrap().to_owned();
    common::eventually(60, || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%zones%'
               AND wait_event = 'PgSleep'",
        )
        .bind(&db_name)
        .fetch_one(&pool)
        .await
        .unwrap();
        (held > 0).then_some(())
    })
    .await;
    first.kill();
    // The backend sleeping for the dead process goes with it (Postgres notices a vanished
    // client only when the sleep ends).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND wait_event = 'PgSleep'",
    )
    .bind(&db_name)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql("DROP TRIGGER crash_gate ON zones; DROP FUNCTION crash_gate();")
        .execute(&pool)
        .await
        .unwrap();

    let row = sqlx::query("SELECT last_ms, last_seq, events_applied FROM projection_checkpoints WHERE projection = 'zones' AND stream = $1")
        .bind(store.keys().log(&LogStream::System))
        .fetch_one(&pool)
        .await
        .unwrap();
    let applied: i64 = row.get(2);
    assert!(
        applied < 3000 && applied > 0,
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

/// Issue 14 item 1: a genuine entry added to the log again (a byte-identical, validly
/// signed copy) is refused by the projections as `replayed` (the archive skips it by its
/// event id): the read model does not roll back, the archiver goes on with later entries,
/// and `serval-replay verify` names it.
#[tokio::test(flavor = "multi_thread")]
async fn a_genuine_entry_added_to_the_log_again_is_refused_not_applied_again() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (s, z) = admin.post("/v1/zones", json!({"name": "first"})).await;
    assert_eq!(s, 201);
    let id = z["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/zones/{id}");
    assert_eq!(admin.patch(&path, json!({"name": "second"})).await.0, 200);
    assert_eq!(admin.patch(&path, json!({"name": "third"})).await.0, 200);

    // The entry that renamed the zone to "second", appended again verbatim.
    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let entries = read_range(&mut conn, &key, "-", "+", 1000).await.unwrap();
    let (old_id, fields) = entries
        .iter()
        .find(|(id, f)| {
            let r = verify_entry(store.signer(), &key, &LogStream::System, *id, f).unwrap();
            r.envelope.aggregate_id == id_of(&z) && r.envelope.aggregate_version == 2
        })
        .cloned()
        .unwrap();
    let field = |name: &str| {
        serval_streams::read::field_bytes(&fields, name)
            .unwrap()
            .to_vec()
    };
    let copy: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("env")
        .arg(field("env"))
        .arg("kid")
        .arg(field("kid"))
        .arg("sig")
        .arg(field("sig"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(copy, old_id.to_string());
    // A later genuine write goes through every projection, the archiver included.
    assert_eq!(admin.patch(&path, json!({"name": "fourth"})).await.0, 200);

    assert_eq!(admin.get(&path).await.1["name"], "fourth", "no rollback");
    let pool = common::pool(&server.db_url).await;
    let refused: Vec<(String, String)> = common::eventually(20, || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT projection, detail FROM dead_letters WHERE entry_id = $1 AND reason = 'replayed'",
        )
        .bind(&copy)
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.iter().any(|(p, _)| p == "zones").then_some(rows)
    })
    .await;
    assert!(
        refused.iter().any(|(q, _)| q == "zones"),
        "zones refused it: {refused:?}"
    );
    assert!(
        refused[0].1.contains("already applied up to version 3"),
        "{refused:?}"
    );
    // The archiver went on past the copy: the later genuine write is archived, the copy not.
    let archived: i64 = common::eventually(20, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_archive WHERE aggregate_id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        (n >= 4).then_some(n)
    })
    .await;
    assert_eq!(archived, 4, "the genuine four, not the copy");

    let (ok, out, err) = server.replay(&["verify", "--json", "--skip-archive"]);
    assert!(!ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["first_break"]["entry_id"], copy, "{report}");
}

fn id_of(z: &serde_json::Value) -> String {
    z["id"].as_str().unwrap().to_owned()
}

/// A signed entry whose content Postgres cannot store (here a NUL in a text column, which
/// the HTTP intake refuses but an older or foreign producer could append) is dead-lettered
/// as `unappliable` by each projection that wants it; the entries around it are applied and
/// the projection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_postgres_cannot_store_is_dead_lettered_and_the_projection_goes_on() {
    use serval_domain::catalog::{AuthorityRecordData, CatalogEvent, Created, EntityData, Stamp};
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "poison"})).await;
    let zone = z["id"].as_str().unwrap().to_owned();
    let record = |subject: &str| {
        CatalogEvent::Created(Created {
            zone_id: zone.clone(),
            data: EntityData::AuthorityRecord(AuthorityRecordData {
                record_type: "user".into(),
                subject_id: subject.into(),
                application_id: None,
                federated_user_issuer: None,
                parent_id: None,
                status: "active".into(),
                expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
                authenticated_at: chrono::Utc::now(),
                revoked_at: None,
                revoked_reason: None,
                revoked_by_grant: None,
            }),
            stamp: Stamp {
                by: "sts".into(),
                via_operator: false,
            },
        })
    };
    common::produce(&server, &zone, "ar-before", 0, record("alice"), "sts").await;
    common::produce(&server, &zone, "ar-poison", 0, record("a\u{0}b"), "sts").await;
    common::produce(&server, &zone, "ar-after", 0, record("bob"), "sts").await;
    let listed = common::eventually(15, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{zone}/authority-records"))
            .await;
        (v["items"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["authority_record_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"ar-before") && ids.contains(&"ar-after"),
        "{ids:?}"
    );
    let pool = common::pool(&server.db_url).await;
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, detail FROM dead_letters WHERE projection = 'catalog'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "unappliable");
    assert!(dead[0].1.contains("ar-poison"), "{}", dead[0].1);
    // The projection is current: a new write is visible at once.
    let resp = admin
        .req(
            reqwest::Method::POST,
            &format!("/v1/zones/{zone}/providers"),
        )
        .json(&json!({"name": "after", "kind": "api_key",
                      "config_json": {"api_key": "k", "header_name": "X-Key"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let p: serde_json::Value = resp.json().await.unwrap();
    let (s, got) = admin
        .get(&format!(
            "/v1/zones/{zone}/providers/{}",
            p["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "the catalog projection goes on: {got}");
}
