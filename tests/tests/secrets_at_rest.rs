//! No secret ever appears in plaintext in any stream, archive row, read-model row, log line
//! or list response: every secret a client sends or receives is grepped for everywhere
//! Serval keeps bytes.

mod common;

use common::{Admin, Options, Server};
use serde_json::{json, Value};

/// Every value of every key under the test's prefix (streams entry by entry), as bytes.
async fn redis_bytes(server: &Server) -> Vec<(String, Vec<u8>)> {
    let store = server.store().await;
    let mut conn = store.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", server.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = match kind.as_str() {
            "stream" => redis::cmd("XRANGE"),
            "hash" => redis::cmd("HGETALL"),
            "string" => redis::cmd("GET"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE"),
            "list" => redis::cmd("LRANGE"),
            other => panic!("unexpected key type {other} at {key}"),
        };
        cmd.arg(&key);
        match kind.as_str() {
            "stream" => {
                cmd.arg("-").arg("+");
            }
            "zset" | "list" => {
                cmd.arg(0).arg(-1);
            }
            _ => {}
        }
        let v: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        let mut bytes = Vec::new();
        flatten(&v, &mut bytes);
        out.push((key, bytes));
    }
    out
}

fn flatten(v: &redis::Value, out: &mut Vec<u8>) {
    match v {
        redis::Value::BulkString(b) => {
            out.extend_from_slice(b);
            out.push(0);
        }
        redis::Value::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|i| flatten(i, out))
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        _ => {}
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_appear_nowhere_in_plaintext() {
    let server = Server::start(Options {
        env: vec![("LOG_LEVEL".into(), "debug".into())],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let (_, z) = admin
        .post("/v1/zones", json!({"name": "vault", "dcr_enabled": true}))
        .await;
    let z = z["id"].as_str().unwrap().to_owned();
    let mut secrets: Vec<String> = Vec::new();

    // Secrets we generate: creation, rotation, reveal, DCR.
    let apps = format!("/v1/zones/{z}/applications");
    let (_, a) = admin
        .post(
            &apps,
            json!({"name": "agent", "registration_method": "managed"}),
        )
        .await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    secrets.push(a["client_secret"].as_str().unwrap().to_owned());
    let (_, r) = admin
        .post(&format!("{apps}/{app_id}/rotate-secret"), json!({}))
        .await;
    secrets.push(r["client_secret"].as_str().unwrap().to_owned());
    // The same, under an Idempotency-Key, retried (issue 14 item 2: the record keeps no
    // secret).
    for path in [apps.clone(), format!("{apps}/{app_id}/rotate-secret")] {
        let body = if path == apps {
            json!({"name": "idempotent-agent", "registration_method": "managed"})
        } else {
            json!({})
        };
        for _ in 0..2 {
            let r = admin
                .req(reqwest::Method::POST, &path)
                .header("idempotency-key", format!("k-{}", path.len()))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let v: Value = r.json().await.unwrap();
            if let Some(sec) = v["client_secret"].as_str() {
                secrets.push(sec.to_owned());
            }
        }
    }
    let (s, shown) = admin.get(&format!("{apps}/{app_id}/client-secret")).await;
    assert_eq!(s, 200, "{shown}");
    let (_, d) = admin
        .post(&format!("{apps}/dcr"), json!({"name": "self-registered"}))
        .await;
    secrets.push(d["client_secret"].as_str().unwrap().to_owned());
    // A secret the operator chooses.
    let own = "operator-chosen-secret-9f8e7d6c5b4a39281706";
    let (s, _) = admin
        .patch(&format!("{apps}/{app_id}"), json!({"client_secret": own}))
        .await;
    assert_eq!(s, 200);
    secrets.push(own.to_owned());

    // Upstream credentials of every secret-bearing provider kind.
    let providers = format!("/v1/zones/{z}/providers");
    let kinds = [
        (
            "api_key",
            json!({"header_name": "X-Key", "api_key": "sk_live_apikey_0a1b2c3d4e5f"}),
        ),
        (
            "bearer_token",
            json!({"bearer_token": "bt_plain_bearer_0a1b2c3d4e5f"}),
        ),
        (
            "http_basic",
            json!({"username": "svc", "password": "basic_password_0a1b2c3d4e5f"}),
        ),
        (
            "oauth2_client_credentials",
            json!({"token_endpoint": "https://idp.example/token", "client_id": "c",
                   "client_secret": "cc_client_secret_0a1b2c3d4e5f"}),
        ),
        (
            "oauth2_authorization_code",
            json!({"authorization_endpoint": "https://idp.example/authorize",
                   "token_endpoint": "https://idp.example/token", "client_id": "c",
                   "redirect_uri": "https://serval.example/cb",
                   "client_secret": "ac_client_secret_0a1b2c3d4e5f"}),
        ),
    ];
    let mut auth_code_provider = String::new();
    for (kind, config) in kinds {
        for (k, v) in config.as_object().unwrap() {
            if ["api_key", "bearer_token", "password", "client_secret"].contains(&k.as_str()) {
                secrets.push(v.as_str().unwrap().to_owned());
            }
        }
        let (s, p) = admin
            .post(
                &providers,
                json!({"name": kind, "kind": kind, "config_json": config}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        auth_code_provider = p["id"].as_str().unwrap().to_owned();
    }
    // A PATCH that replaces a sealed secret.
    let (_, list) = admin.get(&providers).await;
    let key_provider = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "api_key")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = "sk_live_rotated_9z8y7x6w5v";
    let (s, _) = admin
        .patch(
            &format!("{providers}/{key_provider}"),
            json!({"kind": "api_key", "config_json": {"header_name": "X-Key", "api_key": rotated}}),
        )
        .await;
    assert_eq!(s, 200);
    secrets.push(rotated.to_owned());
    // Stored upstream account tokens.
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{z}/provider-connections"),
            json!({"provider_id": auth_code_provider, "access_token": "gho_access_0a1b2c3d4e5f",
                   "refresh_token": "ghr_refresh_0a1b2c3d4e5f"}),
        )
        .await;
    assert_eq!(s, 201);
    secrets.push("gho_access_0a1b2c3d4e5f".into());
    secrets.push("ghr_refresh_0a1b2c3d4e5f".into());
    // A refused request that carried a secret is audited too.
    let (s, _) = admin
        .post(
            &providers,
            json!({"name": "bad", "kind": "bearer_token",
                                 "config_json": {"bearer_token": "Bearer refused_0a1b2c3d4e5f"}}),
        )
        .await;
    assert_eq!(s, 400);
    secrets.push("refused_0a1b2c3d4e5f".into());

    // List and get answers.
    let mut answers = String::new();
    for path in [
        apps.clone(),
        format!("{apps}/{app_id}"),
        providers.clone(),
        format!("{providers}/{key_provider}"),
        format!("/v1/zones/{z}/provider-connections"),
        format!("/v1/zones/{z}/admin-audit?limit=1000"),
    ] {
        let (s, v): (u16, Value) = admin.get(&path).await;
        assert_eq!(s, 200, "{path}");
        answers.push_str(&v.to_string());
    }
    server.wait_archived().await;
    // Refusals are audited off the request path: wait for the last one.
    common::eventually(10, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{z}/admin-audit?limit=1000"))
            .await;
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["status_code"] == 400))
            .then_some(())
    })
    .await;

    let pool = common::pool(&server.db_url).await;
    // Every table the deployment writes, as text (bytea as its raw bytes).
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut db = Vec::new();
    for t in &tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{t}\" t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        for r in rows {
            db.extend_from_slice(r.as_bytes());
        }
        let archived: Vec<Vec<u8>> = if t == "event_archive" {
            sqlx::query_scalar("SELECT envelope FROM event_archive")
                .fetch_all(&pool)
                .await
                .unwrap()
        } else {
            Vec::new()
        };
        archived.iter().for_each(|b| db.extend_from_slice(b));
    }
    assert!(tables.contains(&"event_archive".to_owned()));
    assert!(contains(&db, "vault"), "the grep sees the database");
    let redis = redis_bytes(&server).await;
    assert!(
        redis.iter().any(|(_, b)| contains(b, "vault")),
        "the grep sees the streams"
    );
    let log = server.logs();
    assert!(!log.is_empty());

    for secret in &secrets {
        assert!(!contains(&db, secret), "{secret} is in the database");
        for (key, bytes) in &redis {
            assert!(!contains(bytes, secret), "{secret} is in Redis at {key}");
        }
        assert!(!log.contains(secret.as_str()), "{secret} is in the log");
        assert!(
            !answers.contains(secret.as_str()),
            "{secret} is in a list or get answer"
        );
    }
}
