//! Shared helpers for black-box tests: a fresh database and key prefix per test, and the
//! real `serval` binary started on ephemeral ports.
#![allow(dead_code)]

pub mod runtime;
pub mod upstream;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serval_streams::{EventStore, KeySpace, Signer};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub fn base_db_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/serval".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Every Redis key a test writes starts with this (scripts/test deletes leftovers).
pub const KEY_PREFIX: &str = "svtest";

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("DATABASE_URL has a database");
    format!("{base}/{db}")
}

/// Creates a fresh, empty database and returns its URL.
pub async fn fresh_db() -> String {
    let name = unique("st_");
    let admin = with_db(&base_db_url(), "postgres");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    pool.close().await;
    with_db(&base_db_url(), &name)
}

pub async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .expect("connect test database")
}

fn hex_key(byte: u8) -> String {
    hex::encode([byte; 32])
}

/// Key material shared by a test and the server it starts.
#[derive(Clone)]
pub struct Keys {
    pub streams: String,
    pub audit: String,
    pub kek: String,
    pub admin_token: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            streams: hex_key(0x5a),
            audit: hex_key(0xa5),
            kek: hex_key(0x42),
            admin_token: format!("test-admin-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Keys {
    pub fn signer(&self) -> Arc<Signer> {
        Arc::new(Signer::new(hex::decode(&self.streams).unwrap(), None).unwrap())
    }
}

#[derive(Default)]
pub struct Options {
    pub db_url: Option<String>,
    pub redis_url: Option<String>,
    pub prefix: Option<String>,
    pub keys: Keys,
    /// Empty = `serval up`.
    pub services: Vec<&'static str>,
    pub env: Vec<(String, String)>,
}

fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join(name);
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    bin
}

impl Options {
    /// A process sharing one deployment's database, key prefix and keys with others,
    /// running `services` (empty = `serval up`).
    pub fn sharing(
        db_url: &str,
        prefix: &str,
        keys: &Keys,
        services: Vec<&'static str>,
    ) -> Options {
        Options {
            db_url: Some(db_url.to_owned()),
            prefix: Some(prefix.to_owned()),
            keys: keys.clone(),
            services,
            ..Default::default()
        }
    }
}

pub fn serval_bin() -> PathBuf {
    workspace_bin("serval", "serval")
}

pub fn replay_bin() -> PathBuf {
    workspace_bin("serval-replay", "serval-replay")
}

pub struct Server {
    child: Option<Child>,
    /// The write end of the shared server's watchdog pipe (see [`Server::shared`]): held
    /// for the life of the test process, closed by its exit.
    lifeline: Option<std::process::ChildStdin>,
    pub urls: HashMap<String, String>,
    pub db_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub keys: Keys,
    pub log: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

/// The data directory of each key prefix's deployment while a server of it lives: a
/// process restarted on the same prefix uses the same `SERVAL_DATA_DIR`, as a restart on one
/// host does (its projector takes its own worker lease back at once).
static DATA_DIRS: std::sync::Mutex<Vec<(String, std::sync::Weak<tempfile::TempDir>)>> =
    std::sync::Mutex::new(Vec::new());

fn data_dir(prefix: &str) -> Arc<tempfile::TempDir> {
    let mut dirs = DATA_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    dirs.retain(|(_, d)| d.strong_count() > 0);
    if let Some(dir) = dirs
        .iter()
        .find(|(p, _)| p == prefix)
        .and_then(|(_, d)| d.upgrade())
    {
        return dir;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    dirs.push((prefix.to_owned(), Arc::downgrade(&dir)));
    dir
}

/// The server a test binary's zone-isolated tests share (see [`Server::shared`]).
static SHARED: tokio::sync::OnceCell<Server> = tokio::sync::OnceCell::const_new();

impl Server {
    /// One `serval up` per test binary, for tests that isolate themselves by zone (they
    /// create their own zones and read nothing global: zone lists, the global admin audit,
    /// topics, metrics, readiness, restarts) and produce ids no other test of the binary
    /// produces (catalog ids are unique across zones). It is started once, by whichever
    /// test comes first, under a watchdog that stops it when the test process exits (a
    /// static is never dropped): `sh` waits on a pipe the test process holds, then kills
    /// the server and removes its data directory.
    pub async fn shared() -> &'static Server {
        SHARED
            .get_or_init(|| Server::launch(Options::default(), true))
            .await
    }

    pub async fn start(opts: Options) -> Server {
        Server::launch(opts, false).await
    }

    async fn launch(opts: Options, watchdog: bool) -> Server {
        let db_url = match opts.db_url {
            Some(u) => u,
            None => fresh_db().await,
        };
        let redis_url = opts.redis_url.unwrap_or_else(redis_url);
        let prefix = opts.prefix.unwrap_or_else(|| unique(KEY_PREFIX));
        let dir = data_dir(&prefix);
        let log = dir.path().join(format!("serval-{}.log", unique("run")));
        let mut cmd = if watchdog {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(
                    r#"dir=$1; shift; "$@" </dev/null & pid=$!; cat >/dev/null; kill "$pid"; wait "$pid"; rm -rf "$dir""#,
                )
                .arg("serval-watchdog")
                .arg(dir.path())
                .arg(serval_bin())
                .stdin(Stdio::piped());
            c
        } else {
            Command::new(serval_bin())
        };
        if opts.services.is_empty() {
            cmd.arg("up");
        } else {
            cmd.arg("serve").args(&opts.services);
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db_url)
            .env("REDIS_URL", &redis_url)
            .env("CARACAL_MODE", "dev")
            .env("CARACAL_ADMIN_TOKEN", &opts.keys.admin_token)
            .env("STREAMS_HMAC_KEY", &opts.keys.streams)
            .env("AUDIT_HMAC_KEY", &opts.keys.audit)
            .env("SECRET_STORE_KEK", &opts.keys.kek)
            .env("SERVAL_DATA_DIR", dir.path())
            .env("SERVAL_KEY_PREFIX", &prefix)
            .env("SERVAL_TOPIC_PREFIX", format!("{prefix}:"))
            .env("SERVAL_API_PORT", "0")
            .env("SERVAL_COORDINATOR_PORT", "0")
            .env("SERVAL_STS_PORT", "0")
            .env("SERVAL_GATEWAY_PORT", "0")
            .env("SERVAL_AUDIT_PORT", "0")
            .env("DB_POOL_MAX", "8")
            .env("LOG_LEVEL", "info")
            // Tests send bursts far above the production budgets; tests/rate_limits.rs
            // turns them back on with small values.
            .env("API_V1_RATE_LIMIT_PER_MIN", "0")
            .env("READY_RATE_LIMIT_PER_MIN", "0")
            .env("ADMIN_AUTH_FAIL_LIMIT_PER_MIN", "0")
            .env("COORDINATOR_RATE_LIMIT_PER_MIN", "0")
            .env("VERIFY_RATE_LIMIT_PER_MIN", "0")
            .env("V1_RATE_LIMIT_PER_MIN", "0")
            .env("INVOCATION_RATE_LIMIT_PER_MIN", "0")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("spawn serval");
        let lifeline = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut urls = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "serval: ready" => break,
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("serval: ") {
                        if let Some((svc, url)) = rest.split_once(" listening on ") {
                            urls.insert(svc.to_owned(), url.to_owned());
                        }
                    }
                }
                Err(_) => {
                    if watchdog {
                        // Closing the pipe makes the watchdog stop the server it started.
                        drop(lifeline);
                        let _ = child.wait();
                    } else {
                        let _ = child.kill();
                    }
                    panic!(
                        "serval did not start:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Server {
            child: Some(child),
            lifeline,
            urls,
            db_url,
            redis_url,
            prefix,
            keys: opts.keys,
            log,
            _dir: dir,
        }
    }

    pub fn api(&self) -> &str {
        &self.urls["api"]
    }

    pub fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }

    pub fn token(&self) -> &str {
        &self.keys.admin_token
    }

    pub fn key_space(&self) -> KeySpace {
        KeySpace::new(self.prefix.clone(), format!("{}:", self.prefix))
    }

    pub async fn store(&self) -> EventStore {
        let client = serval_streams::RedisClient::open(&self.redis_url).unwrap();
        let conn = client.connect().await.unwrap();
        EventStore::new(conn, self.key_space(), self.keys.signer())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the checkpoint Postgres holds for each of `projections` on each log
    /// stream of this server's key prefix is that stream's head — for a test about to stop
    /// the projector and start a process that learns positions only from Postgres
    /// (positions moved over unwanted entries are stored lazily).
    pub async fn checkpointed(&self, projections: &[&str]) {
        let store = self.store().await;
        let mut conn = store.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*:log", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        let heads = store.last_entry_ids(&keys).await.unwrap();
        let pool = pool(&self.db_url).await;
        for (key, head) in keys.iter().zip(heads) {
            for projection in projections {
                eventually(10, || {
                    let (pool, key) = (pool.clone(), key.clone());
                    async move {
                        (checkpoint(&pool, projection, &key).await == Some(head.to_string()))
                            .then_some(())
                    }
                })
                .await;
            }
        }
    }

    /// Runs `serval-replay` against this server's database, Redis and keys.
    pub fn replay(&self, args: &[&str]) -> (bool, String, String) {
        replay_with(
            &self.db_url,
            &self.redis_url,
            &self.prefix,
            &self.keys,
            args,
        )
    }

    /// Waits until the archiver has copied every entry of the system log.
    pub async fn wait_archived(&self) {
        let store = self.store().await;
        let pattern = format!("{}:*:log", store.keys().prefix());
        let pool = pool(&self.db_url).await;
        eventually(30, || async {
            let mut conn = store.connection();
            // Every log stream: the system one and each zone's.
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut n: i64 = 0;
            for key in keys {
                let len: i64 = redis::cmd("XLEN")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                n += len;
            }
            let a: i64 = sqlx::query_scalar("SELECT count(*) FROM event_archive")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == a).then_some(())
        })
        .await;
        pool.close().await;
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        self.lifeline = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let c = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client with the admin token.
#[derive(Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Admin {
    pub fn new(server: &Server) -> Self {
        Admin {
            http: reqwest::Client::new(),
            base: server.api().to_owned(),
            token: server.token().to_owned(),
        }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Admin {
            http: self.http.clone(),
            base: self.base.clone(),
            token: token.to_owned(),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Returns once the read models have passed every write acknowledged so far on the
    /// system stream and on `zones`' streams: writes answer at their durable append, and a
    /// read through the API waits for its read models. For a test that then inspects
    /// Postgres directly or stops the server.
    pub async fn settle(&self, zones: &[&str]) {
        let (s, b) = self.get("/v1/zones?limit=1").await;
        assert_eq!(s, 200, "{b}");
        for z in zones {
            let (s, b) = self
                .get(&format!("/v1/zones/{z}/admin-audit?limit=1"))
                .await;
            assert_eq!(s, 200, "{b}");
        }
    }
}

/// The checkpoint Postgres holds for `projection` on the log stream `key` (`ms-seq`).
pub async fn checkpoint(pool: &sqlx::PgPool, projection: &str, key: &str) -> Option<String> {
    let at: Option<(i64, i64)> = sqlx::query_as(
        "SELECT last_ms, last_seq FROM projection_checkpoints
          WHERE projection = $1 AND stream = $2",
    )
    .bind(projection)
    .bind(key)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    at.map(|(ms, seq)| format!("{ms}-{seq}"))
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn replay_with(
    db_url: &str,
    redis_url: &str,
    prefix: &str,
    keys: &Keys,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(replay_bin())
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url)
        .env("STREAMS_HMAC_KEY", &keys.streams)
        .env("AUDIT_HMAC_KEY", &keys.audit)
        .env("SERVAL_KEY_PREFIX", prefix)
        .env("SERVAL_TOPIC_PREFIX", format!("{prefix}:"))
        .output()
        .expect("run serval-replay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port for a process a test starts on a port it must know in advance (an STS where
/// `ISSUER_URL` says, a Redis a test restarts). It is drawn below the kernel's ephemeral
/// range, so no process binding port 0 (every other server in the tests) can take it
/// between this check and the bind, or while a test restarts its owner; tests draw at
/// random so two test processes rarely try the same one, and a port in use is skipped.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    );
    loop {
        let n = seed.wrapping_add(NEXT.fetch_add(7_919, Ordering::Relaxed));
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A Redis server owned by one test (its own port and data directory); killed on drop,
/// including when the test panics.
pub struct OwnedRedis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl OwnedRedis {
    pub fn start(dir: &std::path::Path, aof: bool) -> OwnedRedis {
        Self::start_on(dir, reserved_port(), aof)
    }

    pub fn start_on(dir: &std::path::Path, port: u16, aof: bool) -> OwnedRedis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        if aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
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
        OwnedRedis {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no final flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The virtualenv's Python that scripts/test creates (`SERVAL_PYTHON` overrides it).
pub fn python() -> PathBuf {
    let p = std::env::var("SERVAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which creates the virtualenv",
        p.display()
    );
    p
}

/// Runs `tests/interop/<script>` with the virtualenv's Python and `env`; fails the test with
/// the script's output and the server's log unless it succeeds.
pub fn run_interop(server: &Server, script: &str, env: &[(&str, &str)]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .env("CARACAL_API_URL", server.api())
        .env("CARACAL_ADMIN_TOKEN", server.token())
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
}

/// Every entry of the system log stream, verified and decoded (envelope only).
#[allow(dead_code)]
pub async fn system_log(server: &Server) -> Vec<serval_streams::read::RecordedEvent> {
    let store = server.store().await;
    let stream = serval_streams::LogStream::System;
    let key = store.keys().log(&stream);
    let mut conn = store.connection();
    let entries = serval_streams::read::read_range(&mut conn, &key, "-", "+", 100_000)
        .await
        .unwrap();
    entries
        .iter()
        .map(|(id, fields)| {
            serval_streams::read::verify_entry(store.signer(), &key, &stream, *id, fields)
                .expect("every entry verifies")
        })
        .collect()
}

/// Appends the creation of a run-time record (authority record, session, approval hold) to
/// a zone's log as its producer (the STS or the Coordinator) does, signed with the
/// server's key, and hints the projector. Returns the aggregate version after the append.
#[allow(dead_code)]
pub async fn produce(
    server: &Server,
    zone: &str,
    id: &str,
    expected_version: u64,
    event: serval_domain::catalog::CatalogEvent,
    actor: &str,
) -> u64 {
    use serval_streams::{AppendOutcome, AppendRequest, LogStream};
    let store = server.store().await;
    let stream = LogStream::Zone(zone.to_owned());
    let req = AppendRequest::new(
        stream.clone(),
        Some(zone.to_owned()),
        id,
        expected_version,
        vec![serval_domain::Event::Catalog(event)],
        actor.to_owned(),
    );
    match store.append(&req).await.expect("append") {
        AppendOutcome::Appended { .. } => {}
        AppendOutcome::Duplicate(_) => panic!("no idempotency key, no duplicate"),
    }
    store.hint_activity(&stream).await.expect("hint");
    expected_version + 1
}

/// Appends `req` as its producer would (events a route does not write) and hints the
/// projector.
#[allow(dead_code)]
pub async fn append_hinted(store: &EventStore, req: &serval_streams::AppendRequest) {
    store.append(req).await.expect("append");
    store.hint_activity(&req.stream).await.expect("hint");
}

/// The length of a stream.
#[allow(dead_code)]
pub async fn xlen(conn: &serval_streams::RedisConn, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async::<u64>(&mut conn.clone())
        .await
        .unwrap()
}
