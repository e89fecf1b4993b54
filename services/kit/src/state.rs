//! The state every service shares (config, keys, pools, the event store, caches) and the
//! connections it is built from: Postgres (migrated), Redis (durability checked).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serval_projector::Visibility;
use serval_streams::{EventStore, KeySpace, RedisClient, RedisConn, Signer};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::watch;

use crate::auth::TokenCache;
use crate::config::{Config, Secrets};
use crate::policy_engine::PolicyEngines;

pub type App = Arc<AppState>;

pub struct AppState {
    pub cfg: Config,
    pub secrets: Secrets,
    pub pool: PgPool,
    pub store: EventStore,
    pub redis: RedisConn,
    /// Where Redis is (one node or a cluster), for connections of their own.
    pub redis_client: RedisClient,
    pub visibility: Arc<Visibility>,
    pub tokens: TokenCache,
    pub draining: AtomicBool,
    /// Compiled policy bundles (the STS's engine cache).
    pub engines: PolicyEngines,
    /// This process serves the STS, so `engines` follows invalidations.
    pub sts_local: AtomicBool,
    /// Sealed-secret custody (per-zone data keys under `SECRET_STORE_KEK`).
    pub custody: crate::secrets::Custody,
    /// Verifies STS mandates in process (Coordinator, Gateway).
    pub mandates: crate::mandate::MandateVerifier,
    /// List answers kept while their read models have not moved (`read_cache`).
    pub read_cache: crate::read_cache::ReadCache,
    /// Shared reads of the log's stream heads (`freshness`).
    pub heads: crate::freshness::HeadReader,
    /// Log ranges already found skippable by a reader (`freshness::ensure_skipping`).
    pub skips: crate::freshness::SkipMemo,
    /// Zone rows kept while the zones read model has not moved (`read_cache::zone`).
    pub zone_rows: crate::read_cache::ZoneRows,
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

    /// The Gateway↔STS request key (`GATEWAY_STS_HMAC_KEY`, hex ≥ 32 bytes). Development
    /// mode without one derives it from the streams key, so the Gateway and STS of one dev
    /// deployment agree; published modes have none until it is configured.
    pub fn gateway_key(&self) -> Option<Vec<u8>> {
        if let Some(k) = crate::gateway_hmac::key(self.cfg.gateway_sts_hmac_key.as_deref()) {
            return Some(k);
        }
        self.dev_key("serval.gateway-sts.dev")
            .map(|k| hex::encode(k).into_bytes())
    }

    /// A key development mode derives from the streams key for a purpose whose key was not
    /// configured, so one dev deployment's processes agree on it; `None` outside dev mode.
    pub fn dev_key(&self, purpose: &str) -> Option<[u8; 32]> {
        use hmac::Mac;
        if self.secrets.mode != crate::config::Mode::Dev {
            return None;
        }
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secrets.streams_key).ok()?;
        m.update(purpose.as_bytes());
        Some(m.finalize().into_bytes().into())
    }

    /// Where the Gateway reaches the STS: `STS_URL`, else the issuer (one deployment).
    pub fn sts_url(&self) -> &str {
        self.cfg
            .sts_url
            .as_deref()
            .unwrap_or(&self.cfg.issuer_url)
            .trim_end_matches('/')
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

pub async fn connect_redis(url: &str) -> anyhow::Result<(RedisClient, RedisConn)> {
    let client = RedisClient::open(url).context("REDIS_URL is not a valid Redis URL")?;
    let conn = client
        .connect()
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
) -> Option<RedisConn> {
    loop {
        let connected = match RedisClient::open(url) {
            Ok(client) => client
                .connect_blocking(Duration::from_secs(1))
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match connected {
            Ok(c) => return Some(c),
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
async fn check_redis_durability(conn: &mut RedisConn) {
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
    let (redis_client, mut redis) = connect_redis(&cfg.redis_url).await?;
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
    let store = EventStore::with_connections(conns, keys.clone(), signer);
    let custody = crate::secrets::Custody::new(
        secrets.kek.clone(),
        keys,
        redis.clone(),
        pool.clone(),
        store.clone(),
    );
    Ok(Arc::new(AppState {
        cfg,
        secrets,
        pool,
        store,
        redis,
        redis_client,
        visibility: Visibility::new(),
        tokens: TokenCache::default(),
        draining: AtomicBool::new(false),
        engines: PolicyEngines::default(),
        sts_local: AtomicBool::new(false),
        custody,
        mandates: Default::default(),
        read_cache: Default::default(),
        heads: Default::default(),
        skips: Default::default(),
        zone_rows: Default::default(),
    }))
}
