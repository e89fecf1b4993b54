//! Signed checkpoints of the audit ledger: an auditor holding only the checkpoint public key
//! and an export verifies an event's inclusion and the consistency of two tree heads with
//! `docs/examples/verify_checkpoint.py` (Python's standard library + `cryptography`); a
//! changed ledger row makes the verification fail and names the row.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::runtime::{bootstrap, exchange, server_with, zone, Zone};
use common::{eventually, Admin, Server};
use serde_json::Value;

const TOKEN: &str = "audit-admin-token-for-checkpoints";

async fn get(server: &Server, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", server.url("audit")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn json(server: &Server, path: &str) -> Value {
    let (s, body) = get(server, path).await;
    assert_eq!(s, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn mint(issuer: &str, z: &Zone) {
    eventually(20, || async {
        let r = exchange(issuer, &bootstrap(z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(())
    })
    .await;
}

/// The ledger's size once it holds at least `n` rows.
async fn size_at_least(server: &Server, zone: &str, n: u64) -> u64 {
    eventually(20, || async {
        let h = json(server, &format!("/api/audit/checkpoint?zone_id={zone}")).await;
        let size = h["tree_size"].as_u64().unwrap();
        (size >= n).then_some(size)
    })
    .await
}

fn verify(args: &[(&str, &str)]) -> (bool, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/verify_checkpoint.py");
    let mut cmd = Command::new(common::python());
    cmd.arg(script);
    for (k, v) in args {
        cmd.arg(k).arg(v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_verifies_inclusion_and_consistency_and_a_changed_row_is_named() {
    let (server, issuer) = server_with(&[("AUDIT_ADMIN_TOKEN", TOKEN)]).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    for _ in 0..3 {
        mint(&issuer, &z).await;
    }
    let first_size = size_at_least(&server, &z.id, 3).await;
    let earlier = json(
        &server,
        &format!(
            "/api/audit/checkpoint?zone_id={}&tree_size={first_size}",
            z.id
        ),
    )
    .await;
    for _ in 0..4 {
        mint(&issuer, &z).await;
    }
    let size = size_at_least(&server, &z.id, first_size + 4).await;
    let head = json(
        &server,
        &format!("/api/audit/checkpoint?zone_id={}&tree_size={size}", z.id),
    )
    .await;
    assert_eq!(head["tree_size"], size);
    let proof = json(
        &server,
        &format!(
            "/api/audit/proof/consistency?zone_id={}&first={first_size}&second={size}",
            z.id
        ),
    )
    .await;
    let (s, export) = get(
        &server,
        &format!("/api/audit/export?zone_id={}&tree_size={size}", z.id),
    )
    .await;
    assert_eq!(s, 200);
    let first_event: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    let event_id = first_event["id"].as_str().unwrap().to_owned();
    let inclusion = json(
        &server,
        &format!(
            "/api/audit/proof/inclusion?zone_id={}&event_id={event_id}&tree_size={size}",
            z.id
        ),
    )
    .await;
    // The public half needs no token.
    let key: Value = reqwest::get(format!("{}/api/audit/checkpoint/key", server.url("audit")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
    assert_eq!(key["key_id"], head["key_id"]);
    let public_key = key["public_key"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let files = (
        write("head.json", &head.to_string()),
        write("earlier.json", &earlier.to_string()),
        write("consistency.json", &proof.to_string()),
        write("inclusion.json", &inclusion.to_string()),
        write("ledger.ndjson", &export),
    );
    let args = |export: &str| {
        vec![
            ("--public-key", public_key.clone()),
            ("--export", export.to_owned()),
            ("--checkpoint", files.0.clone()),
            ("--earlier-checkpoint", files.1.clone()),
            ("--consistency-proof", files.2.clone()),
            ("--inclusion-proof", files.3.clone()),
            ("--event-id", event_id.clone()),
        ]
    };
    let run = |a: Vec<(&str, String)>| {
        let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
        verify(&a)
    };
    let (ok, out) = run(args(&files.4));
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: consistency") && out.contains("is included"),
        "{out}"
    );
    // serval-replay does the same from the same files.
    let replay = |a: Vec<(&str, String)>| {
        let mut cmd = Command::new(common::replay_bin());
        cmd.arg("checkpoint");
        for (k, v) in &a {
            cmd.arg(k).arg(v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = replay(args(&files.4));
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: consistency") && out.contains("is included"),
        "{out}"
    );

    // Someone edits one row of the ledger in Postgres: the export taken after no longer
    // verifies, and the verifier names the row.
    let pool = sqlx::PgPool::connect(&server.db_url).await.unwrap();
    let (tampered_id,): (String,) = sqlx::query_as(
        "UPDATE audit_events SET metadata_json = '{\"edited\":true}'
          WHERE zone_id = $1 AND chain_seq = 2 RETURNING id",
    )
    .bind(&z.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let (_, edited) = get(
        &server,
        &format!("/api/audit/export?zone_id={}&tree_size={size}", z.id),
    )
    .await;
    let edited = write("edited.ndjson", &edited);
    let (ok, out) = run(args(&edited));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("chain_seq=2 id={tampered_id}")),
        "the verifier did not name the row: {out}"
    );
    let (ok, out) = replay(args(&edited));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("chain_seq=2 id={tampered_id}")),
        "serval-replay did not name the row: {out}"
    );
    // A forged signature is refused too.
    let mut forged = head.clone();
    forged["root_hash"] = Value::String("00".repeat(32));
    let forged = write("forged.json", &forged.to_string());
    let mut a = args(&files.4);
    a[2] = ("--checkpoint", forged);
    let (ok, out) = run(a);
    assert!(!ok && out.contains("not signed by this key"), "{out}");
}
