//! Read-your-writes across processes (LISTEN/NOTIFY), the durable answer when the read
//! model lags, and topic publication with Caracal's `_sig`.

mod common;

use common::{Admin, Keys, Options, Server};
use reqwest::Method;
use serde_json::json;
use serval_streams::topics;

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_visible_when_the_projector_runs_in_another_process() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let projector = Server::start(Options::sharing(&db, &prefix, &keys, vec!["projector"])).await;
    let api = Server::start(Options::sharing(&db, &prefix, &keys, vec!["api"])).await;
    let admin = Admin::new(&api);
    for i in 0..10 {
        let resp = admin
            .req(Method::POST, "/v1/zones")
            .json(&json!({"name": format!("remote {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert!(
            resp.headers().get("x-serval-projection").is_none(),
            "visible before the answer"
        );
        let z: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            admin
                .get(&format!("/v1/zones/{}", z["id"].as_str().unwrap()))
                .await
                .0,
            200
        );
    }
    drop(projector);
}

/// Writes answer at the durable append, without waiting for any projection; a read whose
/// read model has not passed them waits, and past its bound is refused (never answered
/// from the older state) until a projector catches up.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_durable_before_its_projection_and_reads_wait_for_it() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let opts = |services: Vec<&'static str>, env: Vec<(String, String)>| Options {
        env,
        ..Options::sharing(&db, &prefix, &keys, services)
    };
    let mut first = Server::start(opts(vec![], vec![])).await;
    let admin = Admin::new(&first);
    let (_, z) = admin.post("/v1/zones", json!({"name": "before"})).await;
    let id = z["id"].as_str().unwrap().to_owned();
    first
        .checkpointed(&["zones", "admin_tokens", "catalog", "policies"])
        .await;
    first.kill();

    // API alone: nothing projects.
    let api = Server::start(opts(
        vec!["api"],
        vec![("SERVAL_WRITE_VISIBILITY_TIMEOUT_MS".into(), "300".into())],
    ))
    .await;
    let admin = Admin::new(&api);
    let resp = admin
        .req(Method::PATCH, &format!("/v1/zones/{id}"))
        .json(&json!({"name": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-serval-projection").is_none());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "after", "answered from the aggregate state");
    let (s, b) = admin.get(&format!("/v1/zones/{id}")).await;
    assert_eq!(s, 503, "never the state before the write: {b}");
    assert_eq!(b["error"], "read_model_unavailable");
    let (s, b) = admin.get("/v1/zones").await;
    assert_eq!(s, 503, "{b}");

    let _projector = Server::start(opts(vec!["projector"], vec![])).await;
    common::eventually(20, || async {
        let (_, z) = admin.get(&format!("/v1/zones/{id}")).await;
        (z["name"] == "after").then_some(())
    })
    .await;
}

/// Issue 18: every kind of read sees a write acknowledged through another process — a
/// single object, the references another write checks, an admin token minted there, the
/// admin-audit feed — whether the reading process runs the projector or not.
#[tokio::test(flavor = "multi_thread")]
async fn reads_through_another_process_see_every_acknowledged_write() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let full = Server::start(Options::sharing(&db, &prefix, &keys, vec![])).await;
    let api = Server::start(Options::sharing(&db, &prefix, &keys, vec!["api"])).await;
    let (a, b) = (Admin::new(&full), Admin::new(&api));
    for round in 0..30 {
        let (w, r) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (s, z) = w
            .post("/v1/zones", json!({"name": format!("z{round}")}))
            .await;
        assert_eq!(s, 201, "{z}");
        let z = z["id"].as_str().unwrap().to_owned();
        let (s, got) = r.get(&format!("/v1/zones/{z}")).await;
        assert_eq!(s, 200, "zone written elsewhere: {got}");

        let (s, p) = w
            .post(
                &format!("/v1/zones/{z}/providers"),
                json!({"name": format!("p{round}"), "kind": "caracal_mandate"}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let pid = p["id"].as_str().unwrap();
        let (s, got) = r.get(&format!("/v1/zones/{z}/providers/{pid}")).await;
        assert_eq!(s, 200, "provider written elsewhere: {got}");
        // A write that checks a reference written through the other process.
        let (s, res) = r
            .post(
                &format!("/v1/zones/{z}/resources"),
                json!({"name": format!("r{round}"), "scopes": ["read"],
                       "upstream_url": "https://api.example.com/v1",
                       "credential_provider_id": pid}),
            )
            .await;
        assert_eq!(
            s, 201,
            "resource naming a provider written elsewhere: {res}"
        );
        let rid = res["id"].as_str().unwrap();
        let (s, got) = w.get(&format!("/v1/zones/{z}/resources/{rid}")).await;
        assert_eq!(s, 200, "{got}");

        // A token minted through one process authenticates at once through the other.
        let (s, tok) = w
            .post(
                "/v1/admin-tokens",
                json!({"name": format!("t{round}"), "scope": "zone", "zone_id": z,
                       "capability": "read"}),
            )
            .await;
        assert_eq!(s, 201, "{tok}");
        let reader = r.with_token(tok["token"].as_str().unwrap());
        let (s, got) = reader.get(&format!("/v1/zones/{z}")).await;
        assert_eq!(s, 200, "token minted elsewhere: {got}");

        // The resource create's admin-audit record went to the log with it.
        let (s, feed) = w.get(&format!("/v1/zones/{z}/admin-audit")).await;
        assert_eq!(s, 200, "{feed}");
        let actions: Vec<&str> = feed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["action"].as_str())
            .collect();
        assert!(
            actions.contains(&format!("POST /v1/zones/{z}/resources").as_str()),
            "{actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn published_topic_messages_verify_like_caracal_consumers_expect() {
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let stream = format!(
        "{}:{}",
        common::unique(common::KEY_PREFIX),
        topics::POLICY_INVALIDATE
    );
    let key = vec![0x11; 32];
    let fields = vec![
        (
            "outbox_id".to_owned(),
            Some("0190f5a2-7c1e-7b3a-9a10-3f2d1c0b9e88".to_owned()),
        ),
        ("zone_id".to_owned(), Some("z-demo".to_owned())),
        ("policy_set_id".to_owned(), Some("ps-demo".to_owned())),
        (
            "policy_set_version_id".to_owned(),
            Some("psv-demo-3".to_owned()),
        ),
        ("omitted".to_owned(), None),
    ];
    topics::publish(&mut conn, &stream, Some(&key), &fields)
        .await
        .unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry = &reply.ids[0];
    let received: Vec<(String, Option<String>)> = entry
        .map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Some(redis::from_redis_value::<String>(v).unwrap()),
            )
        })
        .collect();
    assert!(
        !received.iter().any(|(k, _)| k == "omitted"),
        "null fields are omitted"
    );
    assert!(topics::verify(&key, &stream, &received));
    let sig = received
        .iter()
        .find(|(k, _)| k == "_sig")
        .unwrap()
        .1
        .clone()
        .unwrap();
    assert_eq!(sig, topics::sign(&key, &stream, &fields));
    assert_eq!(sig, sig.to_lowercase());
}

#[test]
fn serval_migrate_applies_the_schema() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::fresh_db());
    let status = std::process::Command::new(common::serval_bin())
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let n: i64 = rt.block_on(async {
        let pool = common::pool(&db).await;
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    assert!(n >= 1);
}

/// A projection that wants nothing of a zone's events moves past them without a
/// transaction; its stored checkpoint still reaches the log head once the writes stop.
#[tokio::test(flavor = "multi_thread")]
async fn projections_store_positions_they_passed_without_applying() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "passed"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        let (s, _) = admin
            .post(
                &format!("/v1/zones/{z}/applications"),
                json!({"name": format!("app {i}"), "registration_method": "managed"}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let stream = server
        .key_space()
        .log(&serval_streams::LogStream::Zone(z.clone()));
    let client = serval_streams::RedisClient::open(server.redis_url.as_str()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let head: Vec<(String, std::collections::HashMap<String, redis::Value>)> =
        redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    let head = head[0].0.clone();
    let pool = common::pool(&server.db_url).await;
    // `zones` and `policies` want none of these events; `catalog` wants them all.
    for projection in ["zones", "policies", "catalog"] {
        common::eventually(10, || {
            let (pool, stream, head) = (pool.clone(), stream.clone(), head.clone());
            async move {
                (common::checkpoint(&pool, projection, &stream)
                    .await
                    .as_deref()
                    == Some(head.as_str()))
                .then_some(())
            }
        })
        .await;
    }
}

/// Issue 14 item 10: a write whose read model is stuck answers within its bound with a
/// documented answer, instead of 64 conflict rounds each waiting for the read model.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_cannot_complete_answers_at_its_deadline() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let opts = |services: Vec<&'static str>, env: Vec<(String, String)>| Options {
        env,
        ..Options::sharing(&db, &prefix, &keys, services)
    };
    let mut first = Server::start(opts(vec![], vec![])).await;
    let admin = Admin::new(&first);
    let (_, z) = admin.post("/v1/zones", json!({"name": "before"})).await;
    let id = z["id"].as_str().unwrap().to_owned();
    first
        .checkpointed(&["zones", "admin_tokens", "catalog", "policies"])
        .await;
    first.kill();

    let api = Server::start(opts(
        vec!["api"],
        vec![
            ("SERVAL_WRITE_VISIBILITY_TIMEOUT_MS".into(), "1000".into()),
            ("SERVAL_WRITE_DEADLINE_MS".into(), "2500".into()),
        ],
    ))
    .await;
    let admin = Admin::new(&api);
    // Appended, never projected: the read model now holds an old version of the zone.
    let (s, _) = admin
        .patch(&format!("/v1/zones/{id}"), json!({"name": "second"}))
        .await;
    assert_eq!(s, 200);
    // Every attempt now conflicts and waits for a read model that never moves.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = client
        .patch(format!("{}/v1/zones/{id}", api.api()))
        .bearer_auth(api.token())
        .json(&json!({"name": "third"}))
        .send()
        .await
        .expect("answered well before the client's timeout");
    // The write's read model never reaches the log head, so the request is refused at
    // the read bound (1 s) with nothing written, well within its write deadline.
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "read_model_unavailable", "{body}");
}

/// Issue 18: list answers are cached per process, invalidated by projection commits, and a
/// read never answers a state older than a write acknowledged before it began — through the
/// same process or another, with the projector in the reading process or not. 8 clients,
/// each alternating the process it writes through and the one it reads through, 1,040
/// write-then-read interleavings over the zones and the applications lists.
#[tokio::test(flavor = "multi_thread")]
async fn cached_lists_never_answer_older_than_an_acknowledged_write() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    // The projector runs in `full` only: `api` learns of commits through Postgres.
    let full = Server::start(Options::sharing(&db, &prefix, &keys, vec![])).await;
    let api = Server::start(Options::sharing(&db, &prefix, &keys, vec!["api"])).await;
    let (a, b) = (Admin::new(&full), Admin::new(&api));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let (s, z) = a.post("/v1/zones", json!({"name": format!("c{c}")})).await;
            assert_eq!(s, 201);
            let zone = z["id"].as_str().unwrap().to_owned();
            let (s, app) = a
                .post(
                    &format!("/v1/zones/{zone}/applications"),
                    json!({"name": format!("c{c}-app"), "registration_method": "managed"}),
                )
                .await;
            assert_eq!(s, 201, "{app}");
            let app = app["id"].as_str().unwrap().to_owned();
            for r in 0..65 {
                let (w, rd) = if r % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let name = format!("c{c}-r{r}");
                let (s, _) = w
                    .patch(&format!("/v1/zones/{zone}"), json!({"name": name}))
                    .await;
                assert_eq!(s, 200);
                let (s, list) = rd.get("/v1/zones?limit=100").await;
                assert_eq!(s, 200, "{list}");
                let seen = list["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|z| z["id"] == zone.as_str())
                    .map(|z| z["name"].clone());
                assert_eq!(seen, Some(json!(name)), "zones list older than the write");

                let (s, _) = w
                    .patch(
                        &format!("/v1/zones/{zone}/applications/{app}"),
                        json!({"name": format!("{name}-app")}),
                    )
                    .await;
                assert_eq!(s, 200);
                let (s, list) = rd.get(&format!("/v1/zones/{zone}/applications")).await;
                assert_eq!(s, 200, "{list}");
                assert_eq!(
                    list["items"][0]["name"],
                    json!(format!("{name}-app")),
                    "applications list older than the write"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A process killed (`SIGKILL`) and restarted on the same data directory takes its own
/// projection work back at once: its worker lease is not left to lapse (5 s) with the
/// streams it owned, so reads right after the restart are answered within a visibility
/// bound shorter than the lease. Eight zones: all owned by the dead worker's stale lease
/// under a fresh id, none would be read in time (each a coin toss without the fix).
#[tokio::test(flavor = "multi_thread")]
async fn a_process_restarted_after_a_crash_projects_its_streams_at_once() {
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let mut first = Server::start(Options::sharing(&db, &prefix, &keys, vec![])).await;
    let admin = Admin::new(&first);
    let mut zones = Vec::new();
    for i in 0..8 {
        let (s, z) = admin
            .post("/v1/zones", json!({"name": format!("restart {i}")}))
            .await;
        assert_eq!(s, 201, "{z}");
        zones.push(z["id"].as_str().unwrap().to_owned());
    }
    first.kill();
    let second = Server::start(Options {
        env: vec![("SERVAL_WRITE_VISIBILITY_TIMEOUT_MS".into(), "2000".into())],
        ..Options::sharing(&db, &prefix, &keys, vec![])
    })
    .await;
    let admin = Admin::new(&second);
    // A write into each zone, then a read of it, each through the restarted process.
    for (i, z) in zones.iter().enumerate() {
        let (s, app) = admin
            .post(
                &format!("/v1/zones/{z}/applications"),
                json!({"name": format!("after-{i}"), "registration_method": "managed"}),
            )
            .await;
        assert_eq!(s, 201, "{app}");
        let (s, list) = admin.get(&format!("/v1/zones/{z}/applications")).await;
        assert_eq!(s, 200, "zone {i} not served after the restart: {list}");
        assert!(list.to_string().contains(&format!("after-{i}")), "{list}");
    }
    let members: Vec<String> = {
        let client = serval_streams::RedisClient::open(&second.redis_url).unwrap();
        let mut conn = client.connect().await.unwrap();
        redis::cmd("ZRANGE")
            .arg(second.key_space().workers())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(
        members.len(),
        1,
        "the restarted process has its old lease: {members:?}"
    );
}
