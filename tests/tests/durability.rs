//! Acknowledged writes survive `kill -9` of a Redis configured as supported (AOF,
//! `appendfsync always`).

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Admin, Options, Server};
use serde_json::json;
use serval_streams::read::{read_range, verify_entry};
use serval_streams::LogStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/setup.sh installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_of_redis() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis_proc = start_redis(port, dir.path());
    let url = format!("redis://127.0.0.1:{port}");
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
    redis_proc.kill().unwrap();
    redis_proc.wait().unwrap();
    let mut redis_proc = start_redis(port, dir.path());

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
    let _ = redis_proc.kill();
    let _ = redis_proc.wait();
}
