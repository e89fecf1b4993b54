//! Shared state and start-up: connect, migrate, start the projector, seed the bootstrap
//! token, then serve the requested services.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serval_projector::admin_audit::AdminAuditProjection;
use serval_projector::admin_tokens::AdminTokensProjection;
use serval_projector::archive::ArchiveProjection;
use serval_projector::catalog::CatalogProjection;
use serval_projector::policies::PoliciesProjection;
use serval_projector::relay::RelayProjection;
use serval_projector::zones::ZonesProjection;
use serval_projector::{Projection, ProjectorConfig, Runner, Visibility};
use serval_streams::{EventStore, KeySpace, Signer};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::watch;

use crate::auth::TokenCache;
use crate::config::{Config, Mode, Secrets, Service};
use crate::http;
use crate::policy_engine::{self, PolicyEngines};

pub type App = Arc<AppState>;

pub struct AppState {
    pub cfg: Config,
    pub secrets: Secrets,
    pub pool: PgPool,
    pub store: EventStore,
    pub redis: ConnectionManager,
    pub visibility: Arc<Visibility>,
    pub tokens: TokenCache,
    pub draining: AtomicBool,
    /// Compiled policy bundles (the STS's engine cache).
    pub engines: PolicyEngines,
    /// This process serves the STS, so `engines` follows invalidations.
    pub sts_local: AtomicBool,
    /// Sealed-secret custody (per-zone data keys under `SECRET_STORE_KEK`).
    pub custody: crate::secrets::Custody,
}

impl AppState {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.write_visibility_timeout_ms)
    }

    pub fn sts_local(&self) -> bool {
        self.sts_local.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Every projection this build runs, by name (for readiness and lag).
pub const PROJECTIONS: [&str; 7] = [
    serval_schema::projections::ADMIN_AUDIT,
    serval_schema::projections::ZONES,
    serval_schema::projections::POLICIES,
    serval_schema::projections::CATALOG,
    serval_schema::projections::ADMIN_TOKENS,
    serval_schema::projections::ARCHIVE,
    serval_schema::projections::RELAY,
];

/// Creates the database named in the URL when it does not exist (development convenience).
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let opts: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let Some(db) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if opts.clone().connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = opts
        .database("postgres")
        .connect()
        .await
        .context("cannot reach Postgres")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = db.replace('"', "\"\"");
        // CREATE DATABASE races with a concurrent start; the loser sees "already exists".
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut admin)
            .await
        {
            tracing::debug!(error = %e, "create database");
        }
    }
    Ok(())
}

pub async fn connect_pg(cfg: &Config) -> anyhow::Result<PgPool> {
    ensure_database(&cfg.database_url).await?;
    let opts: PgConnectOptions = cfg.database_url.parse()?;
    let opts = opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .options(serval_projector::runner::PG_SESSION_OPTIONS);
    let pool = PgPoolOptions::new()
        .max_connections(cfg.db_pool_max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    Ok(pool)
}

/// Redis connections the event store spreads appends over (see `EventStore`).
pub const DEFAULT_REDIS_CONNECTIONS: usize = 8;

pub async fn connect_redis(url: &str) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(Duration::from_secs(5))
        .set_number_of_retries(3);
    let conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    Ok((client, conn))
}

/// A Redis connection of its own for a blocking reader (a blocking read would stall every
/// command multiplexed on a shared one), retried every second until `stop` (then `None`).
pub async fn connect_dedicated(
    url: &str,
    who: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<ConnectionManager> {
    loop {
        match connect_redis(url).await {
            Ok((_, c)) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "{who} cannot connect to Redis; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return None,
                }
            }
        }
    }
}

/// Warns when Redis would not keep an acknowledged write through a crash.
async fn check_redis_durability(conn: &mut ConnectionManager) {
    let aof: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(conn)
        .await;
    let fsync: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(conn)
        .await;
    match (aof, fsync) {
        (Ok(a), Ok(f)) if a.get(1).map(String::as_str) == Some("yes") && f.get(1).map(String::as_str) == Some("always") => {}
        (Ok(a), Ok(f)) => tracing::warn!(
            appendonly = a.get(1).map(String::as_str).unwrap_or("?"),
            appendfsync = f.get(1).map(String::as_str).unwrap_or("?"),
            "Redis is not in the supported durable configuration (appendonly yes, appendfsync always): \
             an acknowledged write can be lost if Redis crashes; see README"
        ),
        _ => tracing::warn!("cannot read Redis persistence settings (CONFIG GET refused)"),
    }
}

pub async fn build_state(cfg: Config, secrets: Secrets) -> anyhow::Result<App> {
    let pool = connect_pg(&cfg).await?;
    serval_schema::migrate(&pool)
        .await
        .context("migrations failed")?;
    let (_, mut redis) = connect_redis(&cfg.redis_url).await?;
    check_redis_durability(&mut redis).await;
    let signer = Arc::new(Signer::new(
        secrets.streams_key.clone(),
        secrets.streams_key_previous.clone(),
    )?);
    let keys = KeySpace::new(cfg.key_prefix.clone(), cfg.topic_prefix.clone());
    let mut conns = vec![redis.clone()];
    for _ in 1..DEFAULT_REDIS_CONNECTIONS {
        conns.push(connect_redis(&cfg.redis_url).await?.1);
    }
    let custody = crate::secrets::Custody::new(secrets.kek.clone(), keys.clone(), redis.clone());
    let store = EventStore::with_connections(conns, keys, signer);
    Ok(Arc::new(AppState {
        cfg,
        secrets,
        pool,
        store,
        redis,
        visibility: Visibility::new(),
        tokens: TokenCache::default(),
        draining: AtomicBool::new(false),
        engines: PolicyEngines::default(),
        sts_local: AtomicBool::new(false),
        custody,
    }))
}

fn spawn_runner<P: Projection>(
    app: &App,
    client: &redis::Client,
    cfg: &Arc<ProjectorConfig>,
    p: P,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let runner = Runner::new(
        p,
        app.pool.clone(),
        client.clone(),
        cfg.clone(),
        app.visibility.clone(),
    );
    tokio::spawn(runner.run(stop.clone()))
}

pub async fn start_projector(
    app: &App,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (client, relay_conn) = connect_redis(&app.cfg.redis_url).await?;
    let mut cfg = ProjectorConfig::new(app.store.keys().clone(), app.store.signer().clone());
    cfg.crash_after = app.cfg.crash_hook()?;
    let cfg = Arc::new(cfg);
    let relay_key = Some(app.secrets.streams_key.clone());
    Ok(vec![
        spawn_runner(app, &client, &cfg, ZonesProjection, stop),
        spawn_runner(app, &client, &cfg, AdminTokensProjection, stop),
        spawn_runner(app, &client, &cfg, PoliciesProjection, stop),
        spawn_runner(app, &client, &cfg, CatalogProjection, stop),
        spawn_runner(
            app,
            &client,
            &cfg,
            AdminAuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(
            app,
            &client,
            &cfg,
            serval_projector::audit::AuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(app, &client, &cfg, ArchiveProjection, stop),
        spawn_runner(
            app,
            &client,
            &cfg,
            RelayProjection::new(
                relay_conn,
                app.store.keys().clone(),
                relay_key,
                Some(app.secrets.audit_key.clone()),
            ),
            stop,
        ),
    ])
}

pub fn router(app: &App, service: Service) -> Router {
    let style = match service {
        Service::Api | Service::Coordinator => http::ops::ReadyStyle::Node,
        _ => http::ops::ReadyStyle::Go,
    };
    let mut r: Router<App> = http::ops::router(style);
    if service == Service::Api {
        r = r.merge(crate::api::router(app.clone()));
    }
    if service == Service::Sts {
        r = r.merge(crate::sts::router());
    }
    r.fallback(http::error::not_found)
        .layer(DefaultBodyLimit::max(app.cfg.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            service.name(),
            http::request_id::layer,
        ))
        .with_state(app.clone())
}

fn banner(secrets: &Secrets, cfg: &Config) {
    if secrets.mode != Mode::Dev {
        return;
    }
    eprintln!("==================================================================");
    eprintln!(" SERVAL IS RUNNING IN DEVELOPMENT MODE");
    eprintln!(
        " Keys live in {} (never use them in production).",
        cfg.data_dir.join("dev-secrets.json").display()
    );
    for g in &secrets.generated {
        eprintln!(" generated {g}");
    }
    if secrets.show_admin_token {
        if let Some(t) = &secrets.admin_token {
            eprintln!(" Admin token (shown once): {t}");
        }
    } else {
        eprintln!(" Admin token: see CARACAL_ADMIN_TOKEN or the dev-secrets file.");
    }
    eprintln!("==================================================================");
}

/// Runs the given services (and the projector if listed) until SIGINT/SIGTERM.
pub async fn run(cfg: Config, services: HashSet<Service>) -> anyhow::Result<()> {
    let secrets = cfg.resolve_secrets()?;
    banner(&secrets, &cfg);
    let app = build_state(cfg, secrets).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if services.contains(&Service::Projector) {
        tasks.extend(start_projector(&app, &stop_rx).await?);
    } else {
        tokio::spawn(app.visibility.clone().listen(app.pool.clone()));
    }
    if services.contains(&Service::Sts) {
        app.sts_local.store(true, Ordering::Relaxed);
        tasks.push(tokio::spawn(policy_engine::listen(
            app.clone(),
            stop_rx.clone(),
        )));
        tokio::spawn(policy_engine::warm(app.clone()));
    }
    if services.contains(&Service::Audit) {
        tasks.push(tokio::spawn(crate::audit_ingest::run(
            app.clone(),
            stop_rx.clone(),
        )));
    }
    if services.contains(&Service::Api) {
        crate::bootstrap::seed_admin_token(&app).await?;
        tasks.push(tokio::spawn(crate::jobs::dcr_cleanup(
            app.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::jobs::record_reaper(
            app.clone(),
            stop_rx.clone(),
        )));
    }
    let mut servers = Vec::new();
    for service in Service::HTTP {
        if !services.contains(&service) {
            continue;
        }
        let addr: SocketAddr = format!("{}:{}", app.cfg.host, app.cfg.port(service))
            .parse()
            .context("HOST and ports must form a socket address")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for {}", service.name()))?;
        let bound = listener.local_addr()?;
        // Tests and scripts parse this line to find ephemeral ports.
        println!("serval: {} listening on http://{bound}", service.name());
        let router = router(&app, service);
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await
        }));
    }
    println!("serval: ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    app.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn migrate_only(cfg: &Config) -> anyhow::Result<()> {
    let pool = connect_pg(cfg).await?;
    serval_schema::migrate(&pool).await?;
    println!("serval: migrations applied");
    Ok(())
}
