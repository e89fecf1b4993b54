//! Serval on a 3-master Redis Cluster with two `serval` processes sharing one deployment:
//! management and run-time writes and reads through both (each read through the process
//! that did not write), a governed call through each Gateway, then one process is
//! `SIGKILL`ed mid-load. The survivor takes the dead worker's streams over; no acknowledged
//! write is lost, no event is applied twice (every read model equals a fresh rebuild from
//! the cluster's log), and `serval-replay verify` passes.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::runtime::{governed, mint, RESOURCE, STS_ADMIN};
use common::{eventually, Admin, Options, Server};
use serde_json::{json, Value};

/// Three cluster-enabled Redis nodes of this test (own ports, buses and data), with every
/// slot assigned; killed on drop.
struct OwnedCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl OwnedCluster {
    fn start() -> OwnedCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let (port, bus) = (common::reserved_port(), common::reserved_port());
            let data = dir.path().join(i.to_string());
            std::fs::create_dir_all(&data).unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--bind", "127.0.0.1", "--save", ""])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/setup.sh installs it)");
            nodes.push(child);
            ports.push(port);
        }
        let cluster = OwnedCluster {
            nodes,
            ports,
            _dir: dir,
        };
        for p in &cluster.ports {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for p in &cluster.ports {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "cluster not ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// An upstream that answers every request and counts them.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"ok": true}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, hits)
}

/// The workers holding a live lease.
async fn members(server: &Server) -> Vec<String> {
    let client = serval_streams::RedisClient::open(&server.redis_url).unwrap();
    let mut conn = client.connect().await.unwrap();
    let key = server.key_space().workers();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&key)
        .arg(now_ms)
        .arg("+inf")
        .query_async(&mut conn)
        .await
        .unwrap();
    live
}

async fn governed_call(gateway: &str, mandate: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{gateway}/v1/tickets"))
        .header("authorization", format!("Bearer {mandate}"))
        .header("x-caracal-resource", RESOURCE)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every row of `table` in `schema`, as sorted text.
async fn rows(pool: &sqlx::PgPool, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT t::text FROM {schema}.{table} t ORDER BY 1"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_a_redis_cluster_share_the_work_and_survive_a_sigkill() {
    let cluster = OwnedCluster::start();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let keys = common::Keys::default();
    let sts_port = common::reserved_port();
    let issuer = format!("http://127.0.0.1:{sts_port}");
    let process = |env: Vec<(String, String)>| Options {
        redis_url: Some(cluster.url()),
        env,
        ..Options::sharing(&db, &prefix, &keys, vec![])
    };
    let issuer_env = |extra: Vec<(String, String)>| {
        let mut env = vec![
            ("ISSUER_URL".to_owned(), issuer.clone()),
            ("STS_ADMIN_TOKEN".to_owned(), STS_ADMIN.to_owned()),
        ];
        env.extend(extra);
        env
    };
    let a = Server::start(process(issuer_env(vec![(
        "SERVAL_STS_PORT".to_owned(),
        sts_port.to_string(),
    )])))
    .await;
    let worker_a = members(&a).await.pop().unwrap();
    let mut b = Server::start(process(issuer_env(vec![]))).await;
    let admins = [Admin::new(&a), Admin::new(&b)];

    // Both processes hold a worker lease: the log's streams are shared between them.
    let both = eventually(20, || async {
        let m = members(&a).await;
        (m.len() == 2).then_some(m)
    })
    .await;
    let worker_b = both.iter().find(|m| **m != worker_a).unwrap().clone();

    // Management writes through one process are read at once through the other.
    let mut zones = Vec::new();
    for i in 0..6 {
        let (s, z) = admins[i % 2]
            .post("/v1/zones", json!({"name": format!("cluster zone {i}")}))
            .await;
        assert_eq!(s, 201, "{z}");
        let id = z["id"].as_str().unwrap().to_owned();
        let (s, seen) = admins[(i + 1) % 2].get(&format!("/v1/zones/{id}")).await;
        assert_eq!(
            s,
            200,
            "read through the other process: {seen}\nA:\n{}\nB:\n{}",
            a.logs(),
            b.logs()
        );
        zones.push(id);
    }
    // Until B owns a zone's stream (the test is about taking B's streams over).
    let space = a.key_space();
    let stream = |zone: &str| space.log(&serval_streams::LogStream::Zone(zone.to_owned()));
    let owned_by_b = |zones: &[String]| -> Vec<String> {
        zones
            .iter()
            .filter(|z| {
                serval_projector::share::owner(&both, &stream(z)) == Some(worker_b.as_str())
            })
            .cloned()
            .collect()
    };
    while owned_by_b(&zones).is_empty() {
        let (s, z) = admins[0]
            .post("/v1/zones", json!({"name": "one more zone"}))
            .await;
        assert_eq!(s, 201, "{z}");
        zones.push(z["id"].as_str().unwrap().to_owned());
    }
    let b_zones = owned_by_b(&zones);

    // The run-time path across both: management and Coordinator writes through B, the
    // mandates from A's STS, a governed call through each Gateway.
    let (upstream_url, hits) = upstream().await;
    let (z, session, edge, _) = governed(&b, &issuer, &upstream_url).await;
    for gateway in [a.url("gateway"), b.url("gateway")] {
        let mandate = mint(&issuer, &z, &session, &edge).await;
        let status = eventually(20, || async {
            let s = governed_call(gateway, &mandate).await;
            (s == 200).then_some(s)
        })
        .await;
        assert_eq!(status, 200);
    }
    assert!(hits.load(Ordering::SeqCst) >= 2);

    // Load through both processes; B is killed in the middle of it.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let apis = [a.api().to_owned(), b.api().to_owned()];
    let token = keys.admin_token.clone();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (apis, token, zones, acked) =
            (apis.clone(), token.clone(), zones.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..30 {
                let zone = &zones[(t + i) % zones.len()];
                let api = &apis[i % 2];
                let sent = http
                    .post(format!("{api}/v1/zones/{zone}/applications"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"name": format!("load-{t}-{i}"), "registration_method": "managed"}),
                    )
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let v: Value = r.json().await.unwrap();
                        let id = v["id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push((zone.clone(), id));
                    }
                    // The survivor answers every write.
                    Ok(r) if i % 2 == 0 => {
                        panic!("{}: {}", r.status(), r.text().await.unwrap_or_default())
                    }
                    Err(e) if i % 2 == 0 => panic!("the survivor did not answer: {e}"),
                    // The killed process refuses or drops what it had not acknowledged.
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 60,
        "most writes acknowledged: {}",
        acked.len()
    );

    // The survivor's lease is the only one left, and it applies the dead worker's streams:
    // every acknowledged write is in its read models, and new writes in every zone too.
    eventually(20, || async {
        (members(&a).await == vec![worker_a.clone()]).then_some(())
    })
    .await;
    let survivor = &admins[0];
    // B's zones were written through both processes, so A read them only once it took
    // B's streams over.
    assert!(
        acked.iter().any(|(z, _)| b_zones.contains(z)),
        "writes landed in the zones B owned"
    );
    for (zone, id) in &acked {
        let path = format!("/v1/zones/{zone}/applications/{id}");
        eventually(30, || async {
            let (s, _) = survivor.get(&path).await;
            (s == 200).then_some(())
        })
        .await;
    }
    for zone in &zones {
        let (s, app) = survivor
            .post(
                &format!("/v1/zones/{zone}/applications"),
                json!({"name": "after the kill", "registration_method": "managed"}),
            )
            .await;
        assert_eq!(s, 201, "{app}");
        let (s, _) = survivor
            .get(&format!(
                "/v1/zones/{zone}/applications/{}",
                app["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(s, 200);
    }
    let mandate = mint(&issuer, &z, &session, &edge).await;
    assert_eq!(governed_call(a.url("gateway"), &mandate).await, 200);

    // No event applied twice, none missing: the read models equal a rebuild from the log.
    a.wait_archived().await;
    a.checkpointed(&["zones", "catalog", "policies", "admin_tokens"])
        .await;
    let as_of = chrono::Utc::now().to_rfc3339();
    let (ok, out, err) = a.replay(&["replay", "--as-of", &as_of, "--schema", "rebuilt"]);
    assert!(ok, "{out}{err}");
    let pool = common::pool(&db).await;
    for table in [
        "zones",
        "admin_tokens",
        "catalog_objects",
        "delegation_edges",
        "delegation_graphs",
        "policies",
        "policy_versions",
        "policy_sets",
    ] {
        let live = rows(&pool, "public", table).await;
        let rebuilt = rows(&pool, "rebuilt", table).await;
        assert_eq!(
            live, rebuilt,
            "{table}: the live read model differs from a rebuild"
        );
    }
    for (_, id) in &acked {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rebuilt.catalog_objects WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(n, 1, "acknowledged application {id} is in the log");
    }
    let (ok, out, err) = a.replay(&["verify", "--json"]);
    assert!(ok, "{out}{err}");
    drop(a);
    drop(cluster);
}
