//! The log holds signed events; the archive holds the same bytes; concurrency loses nothing.

mod common;

use std::collections::BTreeSet;

use common::{system_log, Admin, Options, Server};
use serde_json::json;
use serval_domain::zone::ZoneEvent;
use serval_domain::Event;
use serval_streams::codec::Upcasters;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn appended_events_are_signed_and_archived_byte_for_byte() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "alpha"})).await;
    let id = z["id"].as_str().unwrap();
    admin
        .patch(&format!("/v1/zones/{id}"), json!({"name": "beta"}))
        .await;
    admin.delete(&format!("/v1/zones/{id}")).await;

    let log = system_log(&server).await;
    let zone_events: Vec<_> = log
        .iter()
        .filter(|r| r.envelope.aggregate_id == id)
        .collect();
    let types: Vec<_> = zone_events
        .iter()
        .map(|r| r.envelope.event_type.as_str())
        .collect();
    assert_eq!(types, ["zone.created", "zone.updated", "zone.archived"]);
    let versions: Vec<_> = zone_events
        .iter()
        .map(|r| r.envelope.aggregate_version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    for r in &zone_events {
        assert_eq!(r.envelope.zone_id.as_deref(), Some(id));
        assert!(r.envelope.actor.starts_with("admin:"));
        assert!(r.envelope.request_id.is_some());
        assert_eq!(
            uuid::Uuid::parse_str(&r.envelope.event_id)
                .unwrap()
                .get_version_num(),
            7
        );
    }
    let decoded = zone_events[1].decode(&Upcasters::default()).unwrap();
    let Event::Zone(ZoneEvent::Updated(u)) = decoded else {
        panic!("zone.updated")
    };
    assert_eq!(u.name.as_deref(), Some("beta"));

    // A signature made with another key does not verify.
    let wrong = serval_streams::Signer::new(vec![9; 32], None).unwrap();
    assert!(!wrong.verify(
        &zone_events[0].kid,
        &zone_events[0].body,
        &zone_events[0].sig
    ));

    let pool = common::pool(&server.db_url).await;
    let rows = common::eventually(10, || async {
        // Zone streams (here: the zone's admin-audit records) are archived too; this
        // compares the system stream's rows.
        let rows: Vec<_> = sqlx::query("SELECT entry_ms, entry_seq, event_id, envelope, sig, key_id FROM event_archive WHERE stream LIKE '%:{sys}:log' ORDER BY entry_ms, entry_seq")
            .fetch_all(&pool)
            .await
            .unwrap();
        (rows.len() == log.len()).then_some(rows)
    })
    .await;
    for (row, rec) in rows.iter().zip(&log) {
        assert_eq!(row.get::<i64, _>(0) as u64, rec.entry_id.ms);
        assert_eq!(row.get::<i64, _>(1) as u64, rec.entry_id.seq);
        assert_eq!(row.get::<String, _>(2), rec.envelope.event_id);
        assert_eq!(
            row.get::<Vec<u8>, _>(3),
            rec.body,
            "archive holds the exact signed bytes"
        );
        assert_eq!(row.get::<Vec<u8>, _>(4), rec.sig);
        assert_eq!(row.get::<String, _>(5), rec.kid);
    }
    // The archive is append-only.
    let err = sqlx::query("DELETE FROM event_archive")
        .execute(&pool)
        .await;
    assert!(err.is_err());
    let err = sqlx::query("UPDATE event_archive SET sig = ''")
        .execute(&pool)
        .await;
    assert!(err.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_patches_lose_no_update() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "contended"})).await;
    let id = z["id"].as_str().unwrap().to_owned();

    let mut tasks = Vec::new();
    for i in 0..50 {
        let a = admin.with_token(&admin.token);
        let path = format!("/v1/zones/{id}");
        tasks.push(tokio::spawn(async move {
            // A client retries a conflict; the server already retries internally.
            loop {
                let (s, body) = a.patch(&path, json!({"name": format!("writer {i}")})).await;
                match s {
                    200 => return body,
                    409 => continue,
                    other => panic!("unexpected {other}: {body}"),
                }
            }
        }));
    }
    let mut answered = BTreeSet::new();
    for t in tasks {
        let body = t.await.unwrap();
        answered.insert(body["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered.len(), 50, "each PATCH answered with its own write");

    let log = system_log(&server).await;
    let updates: Vec<_> = log
        .iter()
        .filter(|r| r.envelope.aggregate_id == id && r.envelope.event_type == "zone.updated")
        .collect();
    assert_eq!(updates.len(), 50, "every PATCH is one event");
    let versions: Vec<u64> = updates
        .iter()
        .map(|r| r.envelope.aggregate_version)
        .collect();
    assert_eq!(
        versions,
        (2..=51).collect::<Vec<_>>(),
        "contiguous versions: each applied on the version it read"
    );
    let names: BTreeSet<String> = updates
        .iter()
        .map(|r| match r.decode(&Upcasters::default()).unwrap() {
            Event::Zone(ZoneEvent::Updated(u)) => u.name.unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(names, answered);
    let (_, now) = admin.get(&format!("/v1/zones/{id}")).await;
    let last = match updates
        .last()
        .unwrap()
        .decode(&Upcasters::default())
        .unwrap()
    {
        Event::Zone(ZoneEvent::Updated(u)) => u.name.unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(
        now["name"],
        last.as_str(),
        "the read model ends on the last event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_slug_under_concurrency_yields_exactly_one_zone() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let a = admin.with_token(&admin.token);
        tasks.push(tokio::spawn(async move {
            a.post(
                "/v1/zones",
                json!({"name": format!("racer {i}"), "slug": "the-one"}),
            )
            .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (s, body) = t.await.unwrap();
        match s {
            201 => created += 1,
            409 => assert_eq!(body["error"], "zone_slug_conflict"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 1);
    // Generated slugs under concurrency are distinct too.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let a = admin.with_token(&admin.token);
        tasks.push(tokio::spawn(async move {
            a.post("/v1/zones", json!({"name": "Same Name"})).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 201);
    }
    // Writes answer at their durable append; a read through the API waits for the read
    // model to pass them, after which Postgres can be inspected directly.
    assert_eq!(admin.get("/v1/zones").await.0, 200);
    let pool = common::pool(&server.db_url).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM zones WHERE slug = 'the-one'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT slug FROM zones GROUP BY slug HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);
    let same: i64 = sqlx::query_scalar("SELECT count(*) FROM zones WHERE slug LIKE 'same-name%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(same, 20);
}
