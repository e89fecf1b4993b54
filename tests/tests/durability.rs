//! Acknowledged writes survive `kill -9` of a Redis configured as supported (AOF,
//! `appendfsync always`).

mod common;

use std::collections::BTreeSet;

use common::{Admin, Options, Server};
use serde_json::json;
use serval_streams::read::{read_range, verify_entry};
use serval_streams::LogStream;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_of_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis_proc = common::OwnedRedis::start(dir.path(), true);
    let port = redis_proc.port;
    let url = redis_proc.url();
    let server = Server::start(Options {
        redis_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);

    let mut tasks = Vec::new();
    for i in 0..40 {
        let a = admin.with_token(&admin.token);
        tasks.push(tokio::spawn(async move {
            a.post("/v1/zones", json!({"name": format!("durable {i}")}))
                .await
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        let (s, z) = t.await.unwrap();
        assert_eq!(s, 201);
        acked.insert(z["id"].as_str().unwrap().to_owned());
    }

    // SIGKILL: no shutdown, no final flush.
    redis_proc.kill9();
    let _redis_proc = common::OwnedRedis::start_on(dir.path(), port, true);

    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let entries = read_range(&mut conn, &key, "-", "+", 10_000).await.unwrap();
    let logged: BTreeSet<String> = entries
        .iter()
        .map(|(id, f)| verify_entry(store.signer(), &key, &LogStream::System, *id, f).unwrap())
        .filter(|r| r.envelope.event_type == "zone.created")
        .map(|r| r.envelope.aggregate_id)
        .collect();
    assert_eq!(logged, acked, "every acknowledged zone is still in the log");

    // Serval reconnects and keeps serving writes.
    let (s, z) = common::eventually(30, || async {
        let (s, z) = admin
            .post("/v1/zones", json!({"name": "after restart"}))
            .await;
        (s == 201).then_some((s, z))
    })
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        admin
            .get(&format!("/v1/zones/{}", z["id"].as_str().unwrap()))
            .await
            .0,
        200
    );
    drop(server);
}
