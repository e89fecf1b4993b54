//! Configuration: environment variables with Caracal's names (operations.md §3–§4), every
//! one also a flag. With nothing set, development defaults and generated keys.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Service {
    Api,
    Coordinator,
    Sts,
    Gateway,
    Audit,
    /// Projections, the archiver and the topic relay.
    Projector,
}

impl Service {
    pub const HTTP: [Service; 5] = [
        Service::Api,
        Service::Coordinator,
        Service::Sts,
        Service::Gateway,
        Service::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Api => "api",
            Service::Coordinator => "coordinator",
            Service::Sts => "sts",
            Service::Gateway => "gateway",
            Service::Audit => "audit",
            Service::Projector => "projector",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Dev,
    Rc,
    Stable,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/serval"
    )]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// `dev`, `rc` or `stable`. Unset: `stable` when every required key is configured,
    /// otherwise development mode with generated keys (announced loudly).
    #[arg(long, env = "CARACAL_MODE", value_enum)]
    pub mode: Option<Mode>,
    #[arg(long, env = "CARACAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "STREAMS_HMAC_KEY", hide_env_values = true)]
    pub streams_hmac_key: Option<String>,
    #[arg(long, env = "STREAMS_HMAC_KEY_PREVIOUS", hide_env_values = true)]
    pub streams_hmac_key_previous: Option<String>,
    #[arg(long, env = "AUDIT_HMAC_KEY", hide_env_values = true)]
    pub audit_hmac_key: Option<String>,
    #[arg(long, env = "SECRET_STORE_KEK", hide_env_values = true)]
    pub secret_store_kek: Option<String>,
    #[arg(long, env = "METRICS_BEARER", hide_env_values = true)]
    pub metrics_bearer: Option<String>,
    /// Signs internal calls to the STS (`/internal/policy/*`); unset = those routes answer
    /// `503 config_missing`.
    #[arg(long, env = "GATEWAY_STS_HMAC_KEY", hide_env_values = true)]
    pub gateway_sts_hmac_key: Option<String>,
    #[arg(long, env = "ISSUER_URL", default_value = "http://localhost:8080")]
    pub issuer_url: String,
    /// The control resource's audience: control-key exchanges mint for it (sts.md §4.6).
    #[arg(long, env = "CONTROL_AUDIENCE", default_value = "caracal-control")]
    pub control_audience: String,
    /// Audit frames another consumer has left pending this long are claimed (and looked
    /// for this often), milliseconds.
    #[arg(long, env = "SERVAL_AUDIT_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub audit_claim_idle_ms: u64,
    /// Signs the audit ledger's checkpoints: hex Ed25519 seed (32 bytes). Development mode
    /// without one derives it from the streams key.
    #[arg(long, env = "AUDIT_CHECKPOINT_KEY", hide_env_values = true)]
    pub audit_checkpoint_key: Option<String>,
    /// How often grown ledgers get a published checkpoint, seconds.
    #[arg(
        long,
        env = "SERVAL_AUDIT_CHECKPOINT_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub audit_checkpoint_interval_secs: u64,
    /// The Audit service's `/api/audit/*` bearer (unset: those routes answer 404).
    #[arg(long, env = "AUDIT_ADMIN_TOKEN", hide_env_values = true)]
    pub audit_admin_token: Option<String>,
    /// The STS the Gateway exchanges with (default: `ISSUER_URL`).
    #[arg(long, env = "STS_URL")]
    pub sts_url: Option<String>,
    /// The Gateway's request body limit (gateway.md §14).
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Time to upstream response headers, seconds.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value_t = 30)]
    pub upstream_timeout_secs: u64,
    /// Idle cut-off of every upstream body read, seconds.
    #[arg(long, env = "STREAM_IDLE_TIMEOUT", default_value_t = 60)]
    pub stream_idle_timeout_secs: u64,
    /// Comma-separated upstream host allow-list (empty = any host that passes the safety rule).
    #[arg(long, env = "UPSTREAM_HOST_ALLOWLIST", default_value = "")]
    pub upstream_host_allowlist: String,
    /// Enables `POST /internal/zones/{zone}/signing-key/rotate` on the STS (404 when unset).
    #[arg(long, env = "STS_ADMIN_TOKEN", hide_env_values = true)]
    pub sts_admin_token: Option<String>,
    /// A zone's signing key is rotated this long after its newest key began signing
    /// (sts.md §13; the next key is published ahead of signing). 0 turns the schedule off.
    #[arg(long, env = "STS_KEY_ROTATION_SECS", default_value_t = 30 * 86_400)]
    pub sts_key_rotation_secs: u64,
    /// Where development keys and the generated admin token are kept (git-ignored).
    #[arg(long, env = "SERVAL_DATA_DIR", default_value = ".serval")]
    pub data_dir: PathBuf,
    /// Prefix of every Redis key Serval owns (tests use one per test).
    #[arg(long, env = "SERVAL_KEY_PREFIX", default_value = "serval")]
    pub key_prefix: String,
    /// Prefix of the public `caracal.*` topic keys (empty in production).
    #[arg(long, env = "SERVAL_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "SERVAL_API_PORT", default_value_t = 3000)]
    pub api_port: u16,
    #[arg(long, env = "SERVAL_COORDINATOR_PORT", default_value_t = 4000)]
    pub coordinator_port: u16,
    #[arg(long, env = "SERVAL_STS_PORT", default_value_t = 8080)]
    pub sts_port: u16,
    #[arg(long, env = "SERVAL_GATEWAY_PORT", default_value_t = 8081)]
    pub gateway_port: u16,
    #[arg(long, env = "SERVAL_AUDIT_PORT", default_value_t = 9090)]
    pub audit_port: u16,
    #[arg(long, env = "DB_POOL_MAX", default_value_t = 20)]
    pub db_pool_max: u32,
    #[arg(long, env = "API_BODY_LIMIT_BYTES", default_value_t = 1_048_576)]
    pub body_limit_bytes: usize,
    /// How long a write waits for its read model before answering "not yet projected".
    #[arg(
        long,
        env = "SERVAL_WRITE_VISIBILITY_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub write_visibility_timeout_ms: u64,
    /// One write's whole budget: conflict retries and read-model waits included. Past it, a
    /// write that appended nothing answers `503 write_deadline_exceeded` (safe to retry); a
    /// retried idempotent request answered from a read model that did not catch up in time
    /// is marked `X-Serval-Projection: pending`.
    #[arg(long, env = "SERVAL_WRITE_DEADLINE_MS", default_value_t = 10_000)]
    pub write_deadline_ms: u64,
    /// Unauthenticated `/v1` refusals are counted and recorded as one admin-audit record
    /// per window of this many seconds (`refusal_tally`).
    #[arg(
        long,
        env = "SERVAL_UNAUTHENTICATED_AUDIT_WINDOW_SECS",
        default_value_t = 60
    )]
    pub unauthenticated_audit_window_secs: u64,
    /// Seconds between runs of the DCR cleanup job (§18; 0 disables it).
    #[arg(long, env = "SERVAL_DCR_CLEANUP_INTERVAL_SECS", default_value_t = 60)]
    pub dcr_cleanup_interval_secs: u64,
    /// How long past `expires_at` a DCR application is archived by the cleanup job.
    #[arg(long, env = "SERVAL_DCR_CLEANUP_GRACE_SECS", default_value_t = 86_400)]
    pub dcr_cleanup_grace_secs: u64,
    /// Seconds between runs of the authority-record reaper (§18; 0 disables it).
    #[arg(
        long,
        env = "SERVAL_RECORD_REAPER_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub record_reaper_interval_secs: u64,
    /// How often terminal approval holds that ended more than a day ago are archived
    /// (sts.md §7.4's hourly purge); 0 turns it off.
    #[arg(
        long,
        env = "SERVAL_APPROVAL_PURGE_INTERVAL_SECS",
        default_value_t = 3_600
    )]
    pub approval_purge_interval_secs: u64,
    /// Requests per minute on `/v1/` per client IP and per admin token (0 disables).
    #[arg(long, env = "API_V1_RATE_LIMIT_PER_MIN", default_value_t = 600)]
    pub api_v1_rate_limit_per_min: u64,
    /// Failed authentications per minute per client IP before `429` replaces `401`.
    #[arg(long, env = "ADMIN_AUTH_FAIL_LIMIT_PER_MIN", default_value_t = 60)]
    pub admin_auth_fail_limit_per_min: u64,
    /// STS: failed client authentications per minute per application id before the id is
    /// locked out for a minute (`429 provider_rate_limited`; 0 disables).
    #[arg(long, env = "STS_AUTH_FAIL_LIMIT_PER_MIN", default_value_t = 60)]
    pub sts_auth_fail_limit_per_min: u64,
    /// STS: mints per minute per (zone, resource, application); over it the resource is
    /// skipped (`rate_limited`; 0 disables).
    #[arg(long, env = "STS_MINT_RATE_LIMIT_PER_MIN", default_value_t = 1000)]
    pub sts_mint_rate_limit_per_min: u64,
    /// `/ready` requests per minute per client IP (0 disables).
    #[arg(long, env = "READY_RATE_LIMIT_PER_MIN", default_value_t = 120)]
    pub ready_rate_limit_per_min: u64,
    /// Readiness fails when a projection trails the log by more than this.
    #[arg(long, env = "SERVAL_READY_LAG_MAX_MS", default_value_t = 30_000)]
    pub ready_lag_max_ms: u64,
    /// The Coordinator's operator token (coordinator.md §2.3); unset = no operator access.
    #[arg(long, env = "CARACAL_COORDINATOR_TOKEN", hide_env_values = true)]
    pub coordinator_token: Option<String>,
    /// The scope a runtime bearer needs on the Coordinator (§2.1).
    #[arg(
        long,
        env = "AGENT_COORDINATOR_SCOPE",
        default_value = "agent:lifecycle"
    )]
    pub agent_coordinator_scope: String,
    /// Coordinator requests per minute per client IP (0 disables).
    #[arg(long, env = "COORDINATOR_RATE_LIMIT_PER_MIN", default_value_t = 600)]
    pub coordinator_rate_limit_per_min: u64,
    /// `POST /v1/verify` per client IP per minute (0 disables).
    #[arg(long, env = "VERIFY_RATE_LIMIT_PER_MIN", default_value_t = 60)]
    pub verify_rate_limit_per_min: u64,
    /// Invocation mutations per zone and `client_id` per minute (0 disables).
    #[arg(long, env = "INVOCATION_RATE_LIMIT_PER_MIN", default_value_t = 120)]
    pub invocation_rate_limit_per_min: u64,
    /// The flat `/v1/*` lifecycle façade per client IP per minute (0 disables).
    #[arg(long, env = "V1_RATE_LIMIT_PER_MIN", default_value_t = 300)]
    pub v1_rate_limit_per_min: u64,
    #[arg(long, env = "MAX_AGENTS_PER_ZONE", default_value_t = 50)]
    pub max_agents_per_zone: u64,
    #[arg(long, env = "MAX_AGENTS_PER_APP", default_value_t = 200)]
    pub max_agents_per_app: u64,
    #[arg(long, env = "SERVICE_AGENT_LEASE_SECONDS", default_value_t = 120)]
    pub service_agent_lease_seconds: u64,
    /// Keys idempotency receipts (HMAC-SHA-256); unset = derived from `STREAMS_HMAC_KEY`.
    #[arg(long, env = "IDEMPOTENCY_HMAC_KEY", hide_env_values = true)]
    pub idempotency_hmac_key: Option<String>,
    /// The key before the last rotation: receipts named under it are still found (§14).
    #[arg(long, env = "IDEMPOTENCY_HMAC_KEY_PREVIOUS", hide_env_values = true)]
    pub idempotency_hmac_key_previous: Option<String>,
    #[arg(long, env = "IDEMPOTENCY_RETENTION_SECONDS", default_value_t = 604_800)]
    pub idempotency_retention_seconds: u64,
    #[arg(
        long,
        env = "GENERATED_IDEMPOTENCY_RETENTION_SECONDS",
        default_value_t = 86_400
    )]
    pub generated_idempotency_retention_seconds: u64,
    /// Seconds between Coordinator sweeps (TTL, leases, deadlines, edge expiry; 0 disables).
    #[arg(
        long,
        env = "SERVAL_COORDINATOR_SWEEP_INTERVAL_SECS",
        default_value_t = 5
    )]
    pub coordinator_sweep_interval_secs: u64,
}

/// Keys and tokens after resolving `_FILE` forms and development defaults.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub mode: Mode,
    pub admin_token: Option<String>,
    pub streams_key: Vec<u8>,
    pub streams_key_previous: Option<Vec<u8>>,
    pub audit_key: Vec<u8>,
    pub kek: Vec<u8>,
    pub metrics_bearer: Option<String>,
    /// Development mode generated something; say so loudly.
    pub generated: Vec<&'static str>,
    /// The admin token was generated just now and must be shown once.
    pub show_admin_token: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DevSecrets {
    admin_token: Option<String>,
    streams_hmac_key: Option<String>,
    audit_hmac_key: Option<String>,
    secret_store_kek: Option<String>,
}

/// `NAME_FILE` support: when `NAME` is empty and `NAME_FILE` names a file, its trimmed
/// content is the value. An unreadable or empty file is fatal.
fn from_file(name: &str, direct: &Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(v) = direct.as_ref().filter(|v| !v.trim().is_empty()) {
        return Ok(Some(v.trim().to_owned()));
    }
    let Ok(path) = std::env::var(format!("{name}_FILE")) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{name}_FILE={path} is unreadable"))?;
    let text = text.trim_end().to_owned();
    if text.is_empty() {
        bail!("{name}_FILE={path} is empty");
    }
    Ok(Some(text))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn load_dev(path: &Path) -> anyhow::Result<DevSecrets> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DevSecrets::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_dev(path: &Path, s: &DevSecrets) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn decode_key(name: &str, hex_key: &str, exact: Option<usize>) -> anyhow::Result<Vec<u8>> {
    let bytes = hex::decode(hex_key.trim()).with_context(|| format!("{name} is not hex"))?;
    match exact {
        Some(n) if bytes.len() != n => bail!("{name} must decode to exactly {n} bytes"),
        None if bytes.len() < 32 => bail!("{name} must decode to at least 32 bytes"),
        _ => Ok(bytes),
    }
}

impl Config {
    pub fn resolve_secrets(&self) -> anyhow::Result<Secrets> {
        let admin = from_file("CARACAL_ADMIN_TOKEN", &self.admin_token)?;
        let streams = from_file("STREAMS_HMAC_KEY", &self.streams_hmac_key)?;
        let streams_prev = from_file("STREAMS_HMAC_KEY_PREVIOUS", &self.streams_hmac_key_previous)?;
        let audit = from_file("AUDIT_HMAC_KEY", &self.audit_hmac_key)?;
        let kek = from_file("SECRET_STORE_KEK", &self.secret_store_kek)?;
        let metrics_bearer = from_file("METRICS_BEARER", &self.metrics_bearer)?;
        let complete = streams.is_some() && audit.is_some() && kek.is_some();
        let mode = match self.mode {
            Some(m) => m,
            None if complete => Mode::Stable,
            None => Mode::Dev,
        };
        if mode != Mode::Dev && !complete {
            bail!("CARACAL_MODE={mode:?}: STREAMS_HMAC_KEY, AUDIT_HMAC_KEY and SECRET_STORE_KEK are required");
        }
        let mut generated = Vec::new();
        let mut show_admin_token = false;
        let (admin, streams, audit, kek) = if mode == Mode::Dev {
            let path = self.data_dir.join("dev-secrets.json");
            let mut dev = load_dev(&path)?;
            let mut changed = false;
            let mut fill = |slot: &mut Option<String>,
                            given: Option<String>,
                            what: &'static str,
                            make: fn() -> String| {
                if let Some(v) = given {
                    return v;
                }
                if slot.is_none() {
                    *slot = Some(make());
                    changed = true;
                    generated.push(what);
                }
                slot.clone().unwrap_or_default()
            };
            let had_admin = dev.admin_token.is_some();
            let admin_v = fill(
                &mut dev.admin_token,
                admin.clone(),
                "CARACAL_ADMIN_TOKEN",
                || random_hex(32),
            );
            let streams_v = fill(
                &mut dev.streams_hmac_key,
                streams,
                "STREAMS_HMAC_KEY",
                || random_hex(32),
            );
            let audit_v = fill(&mut dev.audit_hmac_key, audit, "AUDIT_HMAC_KEY", || {
                random_hex(32)
            });
            let kek_v = fill(&mut dev.secret_store_kek, kek, "SECRET_STORE_KEK", || {
                random_hex(32)
            });
            show_admin_token = admin.is_none() && !had_admin;
            if changed {
                save_dev(&path, &dev)?;
            }
            (Some(admin_v), streams_v, audit_v, kek_v)
        } else {
            (
                admin,
                streams.unwrap_or_default(),
                audit.unwrap_or_default(),
                kek.unwrap_or_default(),
            )
        };
        Ok(Secrets {
            mode,
            admin_token: admin,
            streams_key: decode_key("STREAMS_HMAC_KEY", &streams, None)?,
            streams_key_previous: streams_prev
                .map(|k| decode_key("STREAMS_HMAC_KEY_PREVIOUS", &k, None))
                .transpose()?,
            audit_key: decode_key("AUDIT_HMAC_KEY", &audit, None)?,
            kek: decode_key("SECRET_STORE_KEK", &kek, Some(32))?,
            metrics_bearer,
            generated,
            show_admin_token,
        })
    }

    pub fn port(&self, service: Service) -> u16 {
        match service {
            Service::Api => self.api_port,
            Service::Coordinator => self.coordinator_port,
            Service::Sts => self.sts_port,
            Service::Gateway => self.gateway_port,
            Service::Audit => self.audit_port,
            Service::Projector => 0,
        }
    }
}
