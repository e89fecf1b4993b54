//! `serval-replay` end to end: verify pinpoints breaks, restore, replay as of, rebuild with
//! a schema change under concurrent readers, tail through a group, export.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{Admin, Options, Server};
use serde_json::{json, Value};
use serval_streams::read::{field_bytes, read_range, RawEntry};
use serval_streams::RedisConn as ConnectionManager;
use serval_streams::{EntryId, LogStream};

async fn populate(admin: &Admin, zones: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..zones {
        let (s, z) = admin
            .post("/v1/zones", json!({"name": format!("hist {i}")}))
            .await;
        assert_eq!(s, 201);
        let id = z["id"].as_str().unwrap().to_owned();
        for n in 0..2 {
            let (s, _) = admin
                .patch(
                    &format!("/v1/zones/{id}"),
                    json!({"name": format!("hist {i} r{n}")}),
                )
                .await;
            assert_eq!(s, 200);
        }
        ids.push(id);
    }
    admin.settle(&[]).await;
    ids
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}"))
}

/// Rewrites a stream from `from` (inclusive) onward: delete those entries, move the stream's
/// last id back, and re-add the entries `f` returns (with their ids).
async fn rewrite(
    conn: &mut ConnectionManager,
    key: &str,
    from: EntryId,
    f: impl FnOnce(Vec<RawEntry>) -> Vec<RawEntry>,
) {
    let tail = read_range(conn, key, &from.to_string(), "+", 100_000)
        .await
        .unwrap();
    for (id, _) in &tail {
        let _: i64 = redis::cmd("XDEL")
            .arg(key)
            .arg(id.to_string())
            .query_async(conn)
            .await
            .unwrap();
    }
    let before = read_range(conn, key, "-", "+", 100_000).await.unwrap();
    let last = before
        .last()
        .map(|(id, _)| *id)
        .unwrap_or(EntryId::new(0, 1));
    let _: () = redis::cmd("XSETID")
        .arg(key)
        .arg(last.to_string())
        .query_async(conn)
        .await
        .unwrap();
    for (id, fields) in f(tail) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg(id.to_string());
        for name in ["env", "kid", "sig"] {
            cmd.arg(name).arg(field_bytes(&fields, name).unwrap());
        }
        let _: String = cmd.query_async(conn).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_accepts_a_whole_log_and_pinpoints_each_kind_of_break() {
    let mut server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    populate(&admin, 4).await;
    server.wait_archived().await;
    server.kill();

    let (ok, out, err) = server.replay(&["verify", "--json"]);
    assert!(ok, "{out}{err}");
    let r = report(&out);
    assert_eq!(r["first_break"], Value::Null);
    assert_eq!(r["events"], 13);
    let (ok, out, _) = server.replay(&["verify"]);
    assert!(ok && out.contains("OK"), "{out}");

    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let mut conn = store.connection();
    let entries = read_range(&mut conn, &key, "-", "+", 1000).await.unwrap();
    let event_id = |e: &RawEntry| {
        serval_streams::Envelope::decode(field_bytes(&e.1, "env").unwrap())
            .unwrap()
            .event_id
    };
    let target = entries[5].clone(); // zone 1, version 2 of 3

    // 1. A flipped byte in one event's payload.
    rewrite(&mut conn, &key, target.0, |mut tail| {
        let mut env = field_bytes(&tail[0].1, "env").unwrap().to_vec();
        let n = env.len();
        env[n - 3] ^= 0x01;
        tail[0]
            .1
            .insert("env".into(), redis::Value::BulkString(env));
        tail
    })
    .await;
    let (ok, out, _) = server.replay(&["verify", "--json"]);
    assert!(!ok);
    let b = &report(&out)["first_break"];
    assert_eq!(b["stream"], key.as_str());
    assert_eq!(b["entry_id"], target.0.to_string());
    assert!(
        b["what"]
            .as_str()
            .unwrap()
            .contains("signature does not verify"),
        "{b}"
    );
    rewrite(&mut conn, &key, target.0, |_| entries[5..].to_vec()).await;
    assert!(server.replay(&["verify"]).0, "restored to whole");

    // 2. A deleted entry.
    let _: i64 = redis::cmd("XDEL")
        .arg(&key)
        .arg(target.0.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, out, _) = server.replay(&["verify", "--json"]);
    assert!(!ok);
    let b = &report(&out)["first_break"];
    assert_eq!(b["entry_id"], target.0.to_string());
    assert_eq!(b["event_id"], event_id(&target).as_str());
    assert!(
        b["what"].as_str().unwrap().contains("missing from Redis"),
        "{b}"
    );
    let (ok, out, _) = server.replay(&["verify", "--json", "--skip-archive"]);
    assert!(!ok);
    let b = &report(&out)["first_break"];
    assert_eq!(
        b["entry_id"],
        entries[6].0.to_string(),
        "without the archive: the gap shows at the next event"
    );
    assert!(
        b["what"].as_str().unwrap().contains("jumps from version"),
        "{b}"
    );
    rewrite(&mut conn, &key, target.0, |_| entries[5..].to_vec()).await;
    assert!(server.replay(&["verify"]).0);

    // 2b. The last entry deleted: no gap, but the versions index knows better.
    let last = entries.last().unwrap().clone();
    let _: i64 = redis::cmd("XDEL")
        .arg(&key)
        .arg(last.0.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, out, _) = server.replay(&["verify", "--json", "--skip-archive"]);
    assert!(!ok);
    assert!(
        report(&out)["first_break"]["what"]
            .as_str()
            .unwrap()
            .contains("versions index"),
        "{out}"
    );
    rewrite(&mut conn, &key, last.0, |_| vec![last.clone()]).await;
    assert!(server.replay(&["verify"]).0);

    // 3. Two entries of one aggregate swapped (reordered).
    let (a, b_) = (entries[5].clone(), entries[6].clone());
    rewrite(&mut conn, &key, a.0, |tail| {
        let mut t = tail;
        t[0].1 = b_.1.clone();
        t[1].1 = a.1.clone();
        t
    })
    .await;
    let (ok, out, _) = server.replay(&["verify", "--json"]);
    assert!(!ok);
    let b = &report(&out)["first_break"];
    assert_eq!(b["entry_id"], a.0.to_string());
    assert_eq!(b["event_id"], event_id(&b_).as_str());
    rewrite(&mut conn, &key, a.0, |_| entries[5..].to_vec()).await;
    assert!(server.replay(&["verify"]).0);

    // 4. An archive row that differs from Redis.
    let pool = common::pool(&server.db_url).await;
    sqlx::query("ALTER TABLE event_archive DISABLE TRIGGER event_archive_append_only")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE event_archive SET sig = decode(repeat('00', 32), 'hex') WHERE entry_ms = $1 AND entry_seq = $2")
        .bind(entries[9].0.ms as i64)
        .bind(entries[9].0.seq as i64)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, out, _) = server.replay(&["verify", "--json"]);
    assert!(!ok);
    let b = &report(&out)["first_break"];
    assert_eq!(b["entry_id"], entries[9].0.to_string());
    assert!(
        b["what"].as_str().unwrap().contains("archive differs"),
        "{b}"
    );
    let (ok, out, _) = server.replay(&["verify", "--json", "--from-archive"]);
    assert!(!ok, "the archive's own copy fails its signature");
    assert_eq!(
        report(&out)["first_break"]["entry_id"],
        entries[9].0.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_after_flushall_brings_back_a_log_that_verifies_and_rebuilds_the_same() {
    // A Redis of our own: FLUSHALL must not touch other tests' keys.
    let dir = tempfile::tempdir().unwrap();
    let _redis = common::OwnedRedis::start(dir.path(), false);
    let url = _redis.url();
    let mut server = Server::start(Options {
        redis_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let ids = populate(&admin, 5).await;
    let (_, before) = admin.get("/v1/zones").await;
    server.wait_archived().await;
    let db = server.db_url.clone();
    let prefix = server.prefix.clone();
    let keys = server.keys.clone();
    server.kill();

    let client = serval_streams::RedisClient::open(url.as_str()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (ok, _, _) = common::replay_with(&db, &url, &prefix, &keys, &["verify"]);
    assert!(!ok, "an empty log disagrees with the archive");

    // With Redis empty, the read models can still be rebuilt from the archive alone:
    // 16 zone and token events and 15 admin-audit records (one per write).
    let (ok, out, err) =
        common::replay_with(&db, &url, &prefix, &keys, &["rebuild", "--from-archive"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("rebuilt zones: 31 events"), "{out}");

    let (ok, out, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = common::replay_with(&db, &url, &prefix, &keys, &["verify", "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(report(&out)["events"], 16);
    let (ok, _, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore"]);
    assert!(!ok && err.contains("refusing"), "{err}");
    let (ok, _, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore", "--force"]);
    assert!(ok, "{err}");

    // The restored log rebuilds the same read models (fresh database, same log).
    let server = Server::start(Options {
        redis_url: Some(url.clone()),
        prefix: Some(prefix.clone()),
        keys: keys.clone(),
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let after = common::eventually(20, || async {
        let (_, list) = admin.get("/v1/zones").await;
        (list["items"].as_array().map(|a| a.len()) == Some(ids.len())).then_some(list)
    })
    .await;
    assert_eq!(after, before);
    // Slug reservations came back with the log: a clash is still a clash.
    let (s, e) = admin
        .post(
            "/v1/zones",
            json!({"name": "x", "slug": before["items"][0]["slug"]}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("zone_slug_conflict")));
    // Versions came back: the next PATCH lands on the right version.
    let (s, _) = admin
        .patch(
            &format!("/v1/zones/{}", ids[0]),
            json!({"name": "after restore"}),
        )
        .await;
    assert_eq!(s, 200);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_as_of_answers_with_the_state_before_a_later_change() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "original"})).await;
    let id = z["id"].as_str().unwrap().to_owned();
    let store = server.store().await;
    let key = store.keys().log(&LogStream::System);
    let created_at = store.last_entry_id(&key).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    admin
        .patch(&format!("/v1/zones/{id}"), json!({"name": "changed"}))
        .await;
    admin.settle(&[]).await;

    let pool = common::pool(&server.db_url).await;
    for (schema, as_of) in [
        ("asof_entry", created_at.to_string()),
        ("asof_time", between.to_rfc3339()),
    ] {
        let (ok, out, err) = server.replay(&["replay", "--as-of", &as_of, "--schema", schema]);
        assert!(ok, "{out}{err}");
        let name: String =
            sqlx::query_scalar(&format!("SELECT name FROM {schema}.zones WHERE id = $1"))
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(name, "original", "as of {as_of}");
    }
    let live: String = sqlx::query_scalar("SELECT name FROM public.zones WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, "changed", "the live read model is untouched");
    let (ok, _, err) = server.replay(&["replay", "--as-of", "yesterday", "--schema", "x1"]);
    assert!(!ok && err.contains("neither an entry id"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_change_drill_rebuild_swaps_in_while_readers_and_writers_continue() {
    let mut server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let ids = populate(&admin, 30).await;
    server.kill();

    // Roll the database back to the schema before migration 0002, as an older Serval left
    // it, then start the new version: the migration adds the column, empty for old rows.
    let pool = common::pool(&server.db_url).await;
    sqlx::query("ALTER TABLE zones DROP COLUMN last_event_id")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 2")
        .execute(&pool)
        .await
        .unwrap();
    // Reads and writes wait for their read model while the swap holds it (bounded by the
    // visibility timeout, raised here so a slow machine's swap is waited out, not refused).
    let server = Server::start(Options {
        env: vec![("SERVAL_WRITE_VISIBILITY_TIMEOUT_MS".into(), "30000".into())],
        ..Options::sharing(&server.db_url, &server.prefix, &server.keys, vec![])
    })
    .await;
    let admin = Admin::new(&server);
    let (_, before) = admin.get("/v1/zones?limit=500").await;
    let before_items = before["items"].as_array().unwrap().clone();
    assert_eq!(before_items.len(), 30);
    assert!(before_items.iter().all(|z| z["last_event_id"].is_null()));

    // Readers and a writer run through the rebuild and the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let a = admin.with_token(&admin.token);
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (s, list) = a.get("/v1/zones?limit=500").await;
                reads.fetch_add(1, Ordering::Relaxed);
                let n = list["items"].as_array().map(|a| a.len());
                if s != 200 || n != Some(30) {
                    problems.push(format!("{s} {n:?} {list}"));
                }
            }
            problems
        }));
    }
    let writer = {
        let a = admin.with_token(&admin.token);
        let (stop, id) = (stop.clone(), ids[0].clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = a
                    .patch(
                        &format!("/v1/zones/{id}"),
                        json!({"name": format!("moving {n}")}),
                    )
                    .await;
                assert_eq!(s, 200);
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (ok, out, err) = server.replay(&["rebuild", "--projection", "zones", "--batch", "7"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("swapped in atomically"), "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    for r in readers {
        let problems = r.await.unwrap();
        assert!(
            problems.is_empty(),
            "readers saw errors or partial lists: {problems:?}"
        );
    }
    assert!(reads.load(Ordering::Relaxed) > 10 && writes > 0);

    // Every answer is what it was plus the new field (the moving zone also moved on).
    let (_, after) = admin.get("/v1/zones?limit=500").await;
    let after_items = after["items"].as_array().unwrap();
    assert_eq!(after_items.len(), 30);
    for (b, a) in before_items.iter().zip(after_items) {
        assert!(a["last_event_id"].is_string(), "{a}");
        let mut a2 = a.clone();
        a2["last_event_id"] = Value::Null;
        if a["id"] == ids[0].as_str() {
            assert!(a["name"].as_str().unwrap().starts_with("moving"));
            continue;
        }
        assert_eq!(&a2, b);
    }
    // The live projection keeps advancing after the swap.
    let (s, p) = admin
        .patch(
            &format!("/v1/zones/{}", ids[1]),
            json!({"name": "post-swap"}),
        )
        .await;
    assert_eq!((s, p["name"].as_str()), (200, Some("post-swap")));
    assert!(p["last_event_id"].is_string());
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'serval_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leftovers, 0, "shadow and retired schemas are dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_resumes_through_a_consumer_group_and_export_round_trips() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    populate(&admin, 2).await; // 1 bootstrap + 6 zone events

    let args = [
        "tail",
        "--group",
        "auditors",
        "--consumer",
        "a1",
        "--count",
        "4",
        "--idle-exit-ms",
        "500",
    ];
    let (ok, out, err) = server.replay(&args);
    assert!(ok, "{err}");
    let first: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|l| l["sig_ok"] == true));
    assert_eq!(first[1]["event_type"], "zone.created");
    assert_eq!(first[1]["payload"]["name"], "hist 0");
    let (ok, out, _) = server.replay(&args);
    assert!(ok);
    let second: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(second.len(), 3, "resumed after the acknowledged entries");
    assert_ne!(first[3]["entry_id"], second[0]["entry_id"]);

    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("log.jsonl");
    let (ok, _, err) = server.replay(&[
        "export",
        "--format",
        "jsonl",
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let signer = server.keys.signer();
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    use base64::Engine;
    for l in &lines {
        let env = base64::engine::general_purpose::STANDARD
            .decode(l["env"].as_str().unwrap())
            .unwrap();
        let sig = hex::decode(l["sig"].as_str().unwrap()).unwrap();
        assert!(
            signer.verify(l["kid"].as_str().unwrap(), &env, &sig),
            "exported bytes verify offline"
        );
    }
    // Without `--out` (or with `--out -`) the export goes to standard output.
    for args in [&["export"][..], &["export", "--out", "-"][..]] {
        let (ok, out, err) = server.replay(args);
        assert!(ok, "{err}");
        let streamed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(streamed, lines, "stdout export equals the file export");
    }
    let mp = dir.path().join("log.msgpack");
    let to = lines[3]["entry_id"].as_str().unwrap();
    let (ok, _, err) = server.replay(&[
        "export",
        "--format",
        "msgpack",
        "--to-id",
        to,
        "--out",
        mp.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    #[derive(serde::Deserialize)]
    struct Rec {
        entry_id: String,
        kid: String,
        #[serde(with = "serde_bytes")]
        sig: Vec<u8>,
        #[serde(with = "serde_bytes")]
        env: Vec<u8>,
    }
    let bytes = std::fs::read(&mp).unwrap();
    let mut de = rmp_serde::Deserializer::new(&bytes[..]);
    let mut n = 0;
    while let Ok(r) = serde::Deserialize::deserialize(&mut de) {
        let r: Rec = r;
        assert!(signer.verify(&r.kid, &r.env, &r.sig));
        assert_eq!(r.entry_id, lines[n]["entry_id"].as_str().unwrap());
        n += 1;
    }
    assert_eq!(n, 4, "the id range is inclusive");
}

/// Issue 14 item 4: a zone's data key is in the log, so after the Redis loss `restore`
/// exists for, every sealed secret opens again — also on a read model rebuilt from the
/// restored log — and the next seal uses the same key instead of minting another.
#[tokio::test(flavor = "multi_thread")]
async fn sealed_secrets_open_after_redis_is_restored_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = common::OwnedRedis::start(dir.path(), false);
    let url = _redis.url();
    let mut server = Server::start(Options {
        redis_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "vault"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "agent", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let app_id = a["id"].as_str().unwrap().to_owned();
    let secret = a["client_secret"].as_str().unwrap().to_owned();
    let reveal = format!("/v1/zones/{z}/applications/{app_id}/client-secret");
    server.wait_archived().await;
    let (db, prefix, keys) = (
        server.db_url.clone(),
        server.prefix.clone(),
        server.keys.clone(),
    );
    server.kill();

    let client = serval_streams::RedisClient::open(url.as_str()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (ok, out, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore"]);
    assert!(ok, "{out}{err}");

    // The same read model, then one rebuilt from the restored log in a fresh database.
    for db_url in [Some(db.clone()), None] {
        let server = Server::start(Options {
            db_url,
            redis_url: Some(url.clone()),
            prefix: Some(prefix.clone()),
            keys: keys.clone(),
            ..Default::default()
        })
        .await;
        let admin = Admin::new(&server);
        let (s, shown) = common::eventually(20, || async {
            let (s, v) = admin.get(&reveal).await;
            (s != 404).then_some((s, v))
        })
        .await;
        assert_eq!(
            (s, shown["client_secret"].as_str()),
            (200, Some(secret.as_str()))
        );
        // A new seal in the zone uses the recorded key: one key per zone in the log.
        let (s, p) = admin
            .post(
                &format!("/v1/zones/{z}/providers"),
                json!({"name": format!("p-{}", uuid::Uuid::new_v4().simple()), "kind": "api_key",
                       "config_json": {"header_name": "X-Key", "api_key": "sk_after_restore_0123456789"}}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let log = serval_streams::LogStream::Zone(z.clone());
        let store = server.store().await;
        let entries = read_range(
            &mut store.connection(),
            &store.keys().log(&log),
            "-",
            "+",
            10_000,
        )
        .await
        .unwrap();
        let data_keys = entries
            .iter()
            .filter(|(id, f)| {
                serval_streams::read::verify_entry(
                    store.signer(),
                    &store.keys().log(&log),
                    &log,
                    *id,
                    f,
                )
                .unwrap()
                .envelope
                .event_type
                    == "data_key.created"
            })
            .count();
        assert_eq!(data_keys, 1);
    }
}

/// Issue 14 item 5: `restore --force` never removes an entry the archive lacks, refuses
/// (changing nothing) when an archived entry is missing below the live head, and verifies
/// every archived entry before it writes one.
#[tokio::test(flavor = "multi_thread")]
async fn restore_never_drops_an_unarchived_entry_and_verifies_what_it_restores() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = common::OwnedRedis::start(dir.path(), false);
    let url = _redis.url();
    let mut server = Server::start(Options {
        redis_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    populate(&admin, 3).await;
    server.wait_archived().await;
    let (db, prefix, keys) = (
        server.db_url.clone(),
        server.prefix.clone(),
        server.keys.clone(),
    );
    let store = server.store().await;
    server.kill();
    let system = store.keys().log(&LogStream::System);
    let mut conn = store.connection();

    // Acknowledged, not yet archived (the archiver is down): a genuine entry only in Redis.
    let zone = uuid::Uuid::now_v7().to_string();
    let created = serval_domain::zone::decide(
        None,
        &serval_domain::zone::ZoneCommand::Create {
            name: "unarchived".into(),
            slug: "unarchived".into(),
            dcr_enabled: false,
        },
        &serval_domain::zone::ZoneContext {
            actor: serval_domain::Actor {
                id: "admin:test".into(),
                is_bootstrap: false,
                via_operator_header: false,
            },
            live_dcr_applications: 0,
        },
    )
    .unwrap();
    let appended = store
        .append(&serval_streams::AppendRequest::new(
            LogStream::System,
            Some(zone.clone()),
            &zone,
            0,
            created
                .into_iter()
                .map(serval_domain::Event::Zone)
                .collect(),
            "admin:test",
        ))
        .await
        .unwrap();
    let serval_streams::AppendOutcome::Appended { entry_ids, .. } = appended else {
        panic!("appended");
    };
    let len = common::xlen(&conn, &system).await;
    let (ok, out, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore", "--force"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        common::xlen(&conn, &system).await,
        len,
        "nothing removed, nothing doubled"
    );
    let still = read_range(&mut conn, &system, &entry_ids[0].to_string(), "+", 10)
        .await
        .unwrap();
    assert_eq!(still.len(), 1, "the unarchived entry is still there");

    // An archived entry missing below the live head cannot be put back in order: refused.
    let all = read_range(&mut conn, &system, "-", "+", 10_000)
        .await
        .unwrap();
    let lost = all[2].0;
    let _: u64 = redis::cmd("XDEL")
        .arg(&system)
        .arg(lost.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, _, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore", "--force"]);
    assert!(!ok && err.contains(&lost.to_string()), "{err}");
    assert_eq!(
        common::xlen(&conn, &system).await,
        len - 1,
        "nothing changed"
    );

    // A forged archive row: refused before anything is written, naming the entry.
    let pool = common::pool(&db).await;
    sqlx::query("ALTER TABLE event_archive DISABLE TRIGGER event_archive_append_only")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE event_archive SET sig = decode(repeat('00', 32), 'hex') WHERE entry_ms = $1 AND entry_seq = $2")
        .bind(all[5].0.ms as i64)
        .bind(all[5].0.seq as i64)
        .execute(&pool)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&system)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, _, err) = common::replay_with(&db, &url, &prefix, &keys, &["restore", "--force"]);
    assert!(
        !ok && err.contains(&all[5].0.to_string()) && err.contains("does not verify"),
        "{err}"
    );
    assert_eq!(common::xlen(&conn, &system).await, 0, "nothing written");
}
