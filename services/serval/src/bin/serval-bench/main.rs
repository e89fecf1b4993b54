//! `serval-bench`: throughput and latency of the write path on this machine.
//!
//! * `append`  — conditional-append throughput (events/s) straight into the log, many
//!   concurrent writers pipelined over one multiplexed connection.
//! * `visible` — write→visible latency: append one event, wait until the in-process zones
//!   projection has committed it (p50/p90/p99).
//! * `http`    — end-to-end against a running `serval up`: POST /v1/zones then GET it.
//!
//! Uses `DATABASE_URL` / `REDIS_URL` like `serval`; keys are namespaced under a fresh prefix
//! (and a fresh database for `visible`), so a benchmark never touches real data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
mod coordinator;
mod gateway;

use clap::{Parser, Subcommand};
use serval_domain::zone::{ZoneCreated, ZoneEvent, ZoneUpdated};
use serval_domain::Event;
use serval_projector::zones::ZonesProjection;
use serval_projector::{ProjectorConfig, Runner, Visibility};
use serval_streams::{AppendOutcome, AppendRequest, EventStore, KeySpace, LogStream, Signer};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "serval-bench")]
struct Cli {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/serval"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Append {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Events per append call (one command's events).
        #[arg(long, default_value_t = 1)]
        per_call: usize,
        /// Key prefix to write under (default: a fresh random one).
        #[arg(long)]
        prefix: Option<String>,
        /// Redis connections the store spreads appends over.
        #[arg(long, default_value_t = serval_kit::state::DEFAULT_REDIS_CONNECTIONS)]
        connections: usize,
        /// Spread the writers over this many zone streams (0: all in the system stream),
        /// as a deployment's writes spread over its zones (on a cluster, over its nodes).
        #[arg(long, default_value_t = 0)]
        zones: usize,
    },
    Visible {
        #[arg(long, default_value_t = 2_000)]
        samples: usize,
    },
    Http {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, env = "CARACAL_ADMIN_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 1_000)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// Coordinator: Session create+close cycles, Delegation create, effective authority at
    /// the end of a depth-10 chain, traverse and impact in a zone of `--edges` edges.
    Coordinator {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value = "http://127.0.0.1:4000")]
        coordinator: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        sts: String,
        #[arg(long, env = "CARACAL_ADMIN_TOKEN")]
        token: String,
        #[arg(long, env = "CARACAL_COORDINATOR_TOKEN")]
        operator: String,
        #[arg(long, default_value_t = 4_000)]
        cycles: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 2_000)]
        samples: usize,
        #[arg(long, default_value_t = 10_000)]
        edges: usize,
    },
    /// Governed requests: delegated mint at the STS + a call through the Gateway to a local
    /// echo upstream, against a running stack; and the same echo called directly.
    Gateway {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value = "http://127.0.0.1:4000")]
        coordinator: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        sts: String,
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        gateway: String,
        #[arg(long, env = "CARACAL_ADMIN_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 2_000)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Revocations measured (revoke → first refused call at the Gateway).
        #[arg(long, default_value_t = 100)]
        revocations: usize,
    },
    /// Management API latency: create-provider (an `api_key` provider, its key sealed) and
    /// list-applications (a page of 50), against a running stack.
    Catalog {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, env = "CARACAL_ADMIN_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 1_000)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
}

fn zone_created(i: usize) -> Event {
    Event::Zone(ZoneEvent::Created(ZoneCreated {
        name: format!("bench {i}"),
        slug: format!("bench-{i}"),
        dcr_enabled: false,
        operator_coauthor_badge: true,
        operator_governed: false,
        created_by: "admin:bench".into(),
        created_via_operator: false,
    }))
}

fn zone_updated(n: usize) -> Event {
    Event::Zone(ZoneEvent::Updated(ZoneUpdated {
        name: Some(format!("renamed {n}")),
        slug: None,
        dcr_enabled: None,
        operator_coauthor_badge: None,
        operator_governed: None,
        dcr_shutdown: None,
        updated_by: "admin:bench".into(),
        updated_via_operator: false,
    }))
}

fn request(id: &str, expected: u64, events: Vec<Event>) -> AppendRequest {
    request_in(LogStream::System, id, expected, events)
}

fn request_in(stream: LogStream, id: &str, expected: u64, events: Vec<Event>) -> AppendRequest {
    AppendRequest::new(
        stream,
        Some(id.to_owned()),
        id,
        expected,
        events,
        "admin:bench",
    )
}

pub(crate) fn percentiles(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let p = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "n={} p50={:.2}ms p90={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
        xs.len(),
        p(0.50).as_secs_f64() * 1e3,
        p(0.90).as_secs_f64() * 1e3,
        p(0.95).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        xs[xs.len() - 1].as_secs_f64() * 1e3
    )
}

async fn store(
    redis_url: &str,
    prefix: &str,
    connections: usize,
) -> anyhow::Result<(serval_streams::RedisClient, EventStore)> {
    let (client, conn) = serval_kit::state::connect_redis(redis_url).await?;
    let mut conns = vec![conn];
    for _ in 1..connections {
        conns.push(serval_kit::state::connect_redis(redis_url).await?.1);
    }
    let signer = Arc::new(Signer::new(vec![0x5a; 32], None)?);
    Ok((
        client,
        EventStore::with_connections(conns, KeySpace::new(prefix, ""), signer),
    ))
}

async fn redis_persistence(store: &EventStore) -> String {
    let mut c = store.connection();
    let a: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    let f: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    format!(
        "appendonly={} appendfsync={}",
        a.get(1).map(String::as_str).unwrap_or("?"),
        f.get(1).map(String::as_str).unwrap_or("?")
    )
}

async fn bench_append(
    redis_url: &str,
    events: usize,
    concurrency: usize,
    per_call: usize,
    connections: usize,
    prefix: Option<String>,
    zones: usize,
) -> anyhow::Result<()> {
    let prefix = prefix
        .unwrap_or_else(|| format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let (_, store) = store(redis_url, &prefix, connections).await?;
    println!("redis {} ({})", redis_url, redis_persistence(&store).await);
    let calls = events / per_call / concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let stream = match zones {
                0 => LogStream::System,
                n => LogStream::Zone(format!("bench-zone-{}", w % n)),
            };
            let mut version = 0u64;
            for c in 0..calls {
                let evs: Vec<Event> = (0..per_call)
                    .map(|k| {
                        if version == 0 && k == 0 {
                            zone_created(w)
                        } else {
                            zone_updated(c)
                        }
                    })
                    .collect();
                match store
                    .append(&request_in(stream.clone(), &id, version, evs))
                    .await?
                {
                    AppendOutcome::Appended { entry_ids, .. } => version += entry_ids.len() as u64,
                    AppendOutcome::Duplicate(_) => anyhow::bail!("unexpected duplicate"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = calls * concurrency * per_call;
    println!(
        "append: {total} events in {:.2}s = {:.0} events/s ({:.0} calls/s; concurrency {concurrency}, {connections} connections, {per_call} event(s)/call)",
        secs,
        total as f64 / secs,
        (calls * concurrency) as f64 / secs
    );
    Ok(())
}

async fn bench_visible(database_url: &str, redis_url: &str, samples: usize) -> anyhow::Result<()> {
    let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (client, store) = store(redis_url, &prefix, 1).await?;
    println!("redis {} ({})", redis_url, redis_persistence(&store).await);
    let (base, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL has a database")?;
    let mut cfg = serval_kit::config::Config {
        database_url: format!("{base}/{prefix}"),
        ..serval::cli::Cli::parse_from(["serval", "migrate"]).config
    };
    cfg.db_pool_max = 8;
    let pool = serval_kit::state::connect_pg(&cfg).await?;
    serval_schema::migrate(&pool).await?;
    let visibility = Visibility::new();
    let pcfg = Arc::new(ProjectorConfig::new(
        store.keys().clone(),
        store.signer().clone(),
    ));
    let runner = Runner::new(
        ZonesProjection,
        pool.clone(),
        client,
        pcfg,
        visibility.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(runner.run(stop_rx));
    let key = store.keys().log(&LogStream::System);
    let id = uuid::Uuid::now_v7().to_string();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let version = i as u64;
        let ev = if version == 0 {
            zone_created(0)
        } else {
            zone_updated(i)
        };
        let t0 = Instant::now();
        let AppendOutcome::Appended { entry_ids, .. } =
            store.append(&request(&id, version, vec![ev])).await?
        else {
            anyhow::bail!("unexpected duplicate");
        };
        let ok = visibility
            .wait(&pool, "zones", &key, entry_ids[0], Duration::from_secs(5))
            .await;
        anyhow::ensure!(ok, "event not visible within 5 s");
        if i >= 50 {
            lat.push(t0.elapsed()); // the first 50 warm connections and caches
        }
    }
    println!(
        "write->visible (append + projection commit): {}",
        percentiles(lat)
    );
    let _ = stop_tx.send(true);
    let _ = task.await;
    pool.close().await;
    Ok(())
}

async fn bench_http(
    url: &str,
    token: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let http = reqwest_free::Client::new(url, token);
    let per = requests / concurrency;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut create = Vec::new();
            let mut read = Vec::new();
            for i in 0..per {
                let t0 = Instant::now();
                let id = http.create_zone(&format!("bench {w}-{i}")).await?;
                create.push(t0.elapsed());
                let t1 = Instant::now();
                http.get_zone(&id).await?;
                read.push(t1.elapsed());
            }
            anyhow::Ok((create, read))
        }));
    }
    let (mut create, mut read) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, r) = t.await??;
        create.extend(c);
        read.extend(r);
    }
    println!(
        "POST /v1/zones (write, visible on return): {}",
        percentiles(create)
    );
    println!(
        "GET /v1/zones/:id right after:            {}",
        percentiles(read)
    );
    Ok(())
}

async fn bench_catalog(
    url: &str,
    token: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let http = reqwest_free::Client::new(url, token);
    let zone = http.create_zone("bench catalog").await?;
    let apps = format!("/v1/zones/{zone}/applications");
    for i in 0..50 {
        let body =
            serde_json::json!({"name": format!("app-{i}"), "registration_method": "managed"});
        http.expect("POST", &apps, Some(body), 201).await?;
    }
    // Warm connections, caches and the zone's data key.
    for i in 0..20 {
        http.expect("GET", &apps, None, 200).await?;
        let body = provider_body(&format!("warm-{i}"));
        http.expect(
            "POST",
            &format!("/v1/zones/{zone}/providers"),
            Some(body),
            201,
        )
        .await?;
    }
    let per = (requests / concurrency).max(1);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (http, zone, apps) = (http.clone(), zone.clone(), apps.clone());
        tasks.push(tokio::spawn(async move {
            let (mut create, mut list) = (Vec::new(), Vec::new());
            for i in 0..per {
                let body = provider_body(&format!("p-{w}-{i}"));
                let t0 = Instant::now();
                http.expect(
                    "POST",
                    &format!("/v1/zones/{zone}/providers"),
                    Some(body),
                    201,
                )
                .await?;
                create.push(t0.elapsed());
                let t1 = Instant::now();
                http.expect("GET", &apps, None, 200).await?;
                list.push(t1.elapsed());
            }
            anyhow::Ok((create, list))
        }));
    }
    let (mut create, mut list) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, l) = t.await??;
        create.extend(c);
        list.extend(l);
    }
    println!(
        "POST /v1/zones/:z/providers (api_key, sealed, durable on return): {}",
        percentiles(create)
    );
    println!(
        "GET /v1/zones/:z/applications (50 rows):                          {}",
        percentiles(list)
    );
    Ok(())
}

fn provider_body(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "kind": "api_key",
        "config_json": {"header_name": "X-Api-Key", "api_key": format!("sk_bench_{name}_0123456789")},
    })
}

/// A minimal HTTP/1.1 client over hyper-free std+tokio sockets would be overkill; axum's
/// dependency tree already carries hyper, so use it through a tiny wrapper.
pub(crate) mod reqwest_free {
    use anyhow::Context;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::rt::TokioExecutor;

    #[derive(Clone)]
    pub struct Client {
        inner: HyperClient<HttpConnector, Full<Bytes>>,
        base: String,
        token: String,
    }

    impl Client {
        pub fn new(base: &str, token: &str) -> Self {
            Client {
                inner: HyperClient::builder(TokioExecutor::new()).build_http(),
                base: base.trim_end_matches('/').to_owned(),
                token: token.to_owned(),
            }
        }

        /// The same base URL with another bearer.
        pub fn with_token(&self, token: &str) -> Self {
            Client {
                inner: self.inner.clone(),
                base: self.base.clone(),
                token: token.to_owned(),
            }
        }

        /// The same connection pool against another base URL and bearer.
        pub fn with(&self, base: &str, token: &str) -> Self {
            Client {
                inner: self.inner.clone(),
                base: base.trim_end_matches('/').to_owned(),
                token: token.to_owned(),
            }
        }

        pub async fn send(
            &self,
            method: &str,
            path: &str,
            body: Option<String>,
        ) -> anyhow::Result<(u16, Bytes)> {
            self.send_typed(method, path, body, "application/json")
                .await
        }

        pub async fn send_typed(
            &self,
            method: &str,
            path: &str,
            body: Option<String>,
            content_type: &str,
        ) -> anyhow::Result<(u16, Bytes)> {
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(format!("{}{}", self.base, path))
                .header("authorization", format!("Bearer {}", self.token));
            // Like the SDKs: no content type on a body-less call.
            if body.is_some() {
                req = req.header("content-type", content_type);
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok((status, bytes))
        }

        /// A request with extra headers (a body-less one when `body` is `None`).
        pub async fn send_with(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<String>,
        ) -> anyhow::Result<(u16, Bytes)> {
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(format!("{}{}", self.base, path))
                .header("authorization", format!("Bearer {}", self.token));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok((status, bytes))
        }

        /// Sends a request and fails unless it answers `want`.
        pub async fn expect(
            &self,
            method: &str,
            path: &str,
            body: Option<serde_json::Value>,
            want: u16,
        ) -> anyhow::Result<Bytes> {
            let (status, bytes) = self.send(method, path, body.map(|b| b.to_string())).await?;
            anyhow::ensure!(
                status == want,
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            Ok(bytes)
        }

        pub async fn create_zone(&self, name: &str) -> anyhow::Result<String> {
            let (status, body) = self
                .send(
                    "POST",
                    "/v1/zones",
                    Some(serde_json::json!({ "name": name }).to_string()),
                )
                .await?;
            anyhow::ensure!(
                status == 201,
                "create answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            Ok(v["id"].as_str().context("zone id")?.to_owned())
        }

        pub async fn get_zone(&self, id: &str) -> anyhow::Result<()> {
            let (status, _) = self.send("GET", &format!("/v1/zones/{id}"), None).await?;
            anyhow::ensure!(status == 200, "get answered {status}");
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Append {
            events,
            concurrency,
            per_call,
            connections,
            prefix,
            zones,
        } => {
            bench_append(
                &cli.redis_url,
                events,
                concurrency,
                per_call.max(1),
                connections.max(1),
                prefix,
                zones,
            )
            .await
        }
        Cmd::Visible { samples } => bench_visible(&cli.database_url, &cli.redis_url, samples).await,
        Cmd::Http {
            url,
            token,
            requests,
            concurrency,
        } => bench_http(&url, &token, requests, concurrency.max(1)).await,
        Cmd::Catalog {
            url,
            token,
            requests,
            concurrency,
        } => bench_catalog(&url, &token, requests, concurrency.max(1)).await,
        Cmd::Gateway {
            url,
            coordinator,
            sts,
            gateway,
            token,
            requests,
            concurrency,
            revocations,
        } => {
            gateway::run(gateway::Targets {
                api: url,
                coordinator,
                sts,
                gateway,
                token,
                requests: requests.max(1),
                concurrency: concurrency.max(1),
                revocations,
            })
            .await
        }
        Cmd::Coordinator {
            url,
            coordinator,
            sts,
            token,
            operator,
            cycles,
            concurrency,
            samples,
            edges,
        } => {
            coordinator::run(coordinator::Targets {
                api: url,
                coordinator,
                sts,
                token,
                operator,
                cycles,
                concurrency: concurrency.max(1),
                samples: samples.max(1),
                edges,
            })
            .await
        }
    }
}
