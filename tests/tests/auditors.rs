//! The auditor walk-through in docs/auditors.md works against a live log: its Python
//! example (standard `hmac` + `msgpack`) verifies and decodes every entry, and stops at a
//! forged one.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{python, Admin, Options, Server};
use serde_json::{json, Value};
use serval_streams::LogStream;

fn run_example(server: &Server) -> (bool, String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/verify_log.py");
    let out = Command::new(python())
        .arg(script)
        .env("REDIS_URL", &server.redis_url)
        .env("STREAMS_HMAC_KEY", &server.keys.streams)
        .env("SERVAL_KEY_PREFIX", &server.prefix)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_python_example_verifies_a_live_log() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "Audited"})).await;
    admin
        .patch(
            &format!("/v1/zones/{}", z["id"].as_str().unwrap()),
            json!({"name": "Audited 2"}),
        )
        .await;

    let (ok, out, err) = run_example(&server);
    assert!(ok, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["event_type"], "admin_token.created");
    assert_eq!(events[1]["event_type"], "zone.created");
    assert_eq!(events[1]["payload"]["name"], "Audited");
    assert_eq!(events[1]["aggregate_id"], z["id"]);
    assert_eq!(events[2]["payload"]["name"], "Audited 2");
    assert_eq!(events[2]["aggregate_version"], 2);
    assert!(!out.contains(server.token()), "no secret in the log");

    // A forged entry (signed with another key) stops the example.
    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("env")
        .arg(b"\x80".as_slice())
        .arg("kid")
        .arg(store.signer().key_id())
        .arg("sig")
        .arg("00".repeat(32))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, _, err) = run_example(&server);
    assert!(!ok);
    assert!(err.contains("BAD SIGNATURE"), "{err}");
}
