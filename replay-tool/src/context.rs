//! Connections and keys, configured like `serval` (same variable names, same dev defaults).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use serval_streams::{KeySpace, Signer};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;
use sqlx::PgPool;

#[derive(Debug, Clone, Args)]
pub struct Connection {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/serval"
    )]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, env = "STREAMS_HMAC_KEY", hide_env_values = true)]
    pub streams_hmac_key: Option<String>,
    #[arg(long, env = "STREAMS_HMAC_KEY_PREVIOUS", hide_env_values = true)]
    pub streams_hmac_key_previous: Option<String>,
    /// Where `serval` keeps development keys (used when no key is given).
    #[arg(long, env = "SERVAL_DATA_DIR", default_value = ".serval")]
    pub data_dir: PathBuf,
    #[arg(long, env = "SERVAL_KEY_PREFIX", default_value = "serval")]
    pub key_prefix: String,
    #[arg(long, env = "SERVAL_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

pub struct Context {
    pub keys: KeySpace,
    pub signer: Arc<Signer>,
    pub redis: serval_streams::RedisClient,
    pub conn: serval_streams::RedisConn,
    pub database_url: String,
    /// `AUDIT_HMAC_KEY` (signs the admin audit chains when they are rebuilt).
    pub audit_key: Option<Vec<u8>>,
}

impl Connection {
    /// `AUDIT_HMAC_KEY` from the environment, else the development secrets file.
    fn audit_key(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let text = match std::env::var("AUDIT_HMAC_KEY") {
            Ok(k) if !k.trim().is_empty() => Some(k),
            _ => std::fs::read_to_string(self.data_dir.join("dev-secrets.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["audit_hmac_key"].as_str().map(str::to_owned)),
        };
        text.map(|t| hex::decode(t.trim()).context("AUDIT_HMAC_KEY is not hex"))
            .transpose()
    }

    fn streams_key(&self) -> anyhow::Result<String> {
        if let Some(k) = &self.streams_hmac_key {
            return Ok(k.clone());
        }
        let path = self.data_dir.join("dev-secrets.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "STREAMS_HMAC_KEY is not set and {} is unreadable",
                path.display()
            )
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["streams_hmac_key"]
            .as_str()
            .map(str::to_owned)
            .context("no streams_hmac_key in the dev secrets")
    }

    pub async fn open(&self) -> anyhow::Result<Context> {
        let current = serval_streams::signing::parse_hex_key(&self.streams_key()?)?;
        let previous = self
            .streams_hmac_key_previous
            .as_deref()
            .map(serval_streams::signing::parse_hex_key)
            .transpose()?;
        let redis = serval_streams::RedisClient::open(self.redis_url.as_str())?;
        let conn = redis
            .connect_blocking(std::time::Duration::from_secs(60))
            .await
            .context("cannot reach Redis")?;
        Ok(Context {
            keys: KeySpace::new(self.key_prefix.clone(), self.topic_prefix.clone()),
            signer: Arc::new(Signer::new(current, previous)?),
            redis,
            conn,
            database_url: self.database_url.clone(),
            audit_key: self.audit_key()?,
        })
    }
}

impl Context {
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        self.pool_in(None).await
    }

    /// A pool whose `search_path` is `schema` (for shadow and point-in-time schemas).
    pub async fn pool_in(&self, schema: Option<&str>) -> anyhow::Result<PgPool> {
        let mut opts: PgConnectOptions = self.database_url.parse()?;
        // Long archive scans are expected here; keep sqlx's slow-statement warnings quiet.
        opts = opts.log_slow_statements(
            tracing::log::LevelFilter::Debug,
            std::time::Duration::from_secs(1),
        );
        opts = opts.options(serval_projector::runner::PG_SESSION_OPTIONS);
        if let Some(s) = schema {
            opts = opts.options([("search_path", s)]);
        }
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .context("cannot reach Postgres")
    }
}
