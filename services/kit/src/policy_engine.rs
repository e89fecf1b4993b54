//! The compiled-engine cache (sts.md §6.1): each zone's active bundle, compiled once per
//! activated policy-set version and shared by every request and thread.
//!
//! Changes arrive through the log: the relay publishes `caracal.policy.invalidate` for
//! every activation and for the deletion of an active set, and [`listen`] takes each
//! message (verified `_sig`) as a hint only: once the policies read model has passed the
//! zone's log head it reloads the zone's binding from it, so a signed copy of an old message
//! (or one naming another zone's version) can never install a version the log did not
//! decide for that zone. The request path never polls: it reads the
//! cached bundle, and only a zone seen for the first time is loaded from the read model.
//! A per-zone generation keeps such a first load from overwriting a newer invalidation.
//! A zone without an active set has no bundle, and its decisions fail closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::Value;
use serval_domain::policy::{Bundle, BundleDocument, BundleError};
use serval_projector::policies as read;
use serval_streams::read::field_str;
use serval_streams::topics;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::http::ApiError;
use crate::metrics::METRICS;
use crate::state::App;

/// Compiled bundles kept by policy-set version id (immutable, so never stale).
const COMPILED_CACHE_MAX: usize = 1_024;

/// A zone's loaded bundle.
#[derive(Clone)]
pub struct Loaded {
    pub policy_set_id: String,
    pub version_id: String,
    pub manifest_sha256: String,
    pub bundle: Arc<Bundle>,
    pub loaded_at: DateTime<Utc>,
}

#[derive(Clone)]
enum ZoneState {
    /// Known to have no active policy set: deny everything.
    NoPolicy,
    /// Shared, so a request takes a reference count, not a copy.
    Loaded(Arc<Loaded>),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The zone has no active policy set (fail closed).
    #[error("the zone has no active policy set")]
    NoPolicy,
    #[error("the active policy set version {0} is missing from the read model")]
    MissingVersion(String),
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("evaluation: {0}")]
    Eval(String),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// What a decision answered, and the bundle that made it.
pub struct Decided {
    pub result: Value,
    pub loaded: Arc<Loaded>,
}

#[derive(Default)]
pub struct PolicyEngines {
    zones: RwLock<HashMap<String, ZoneState>>,
    generations: Mutex<HashMap<String, u64>>,
    compiled: Mutex<HashMap<String, Arc<Bundle>>>,
}

impl PolicyEngines {
    fn generation(&self, zone: &str) -> u64 {
        *self
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(zone)
            .unwrap_or(&0)
    }

    fn bump(&self, zone: &str) -> u64 {
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(zone.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    fn install(&self, zone: &str, state: ZoneState, only_if_generation: Option<u64>) {
        // Generation check and write under the zones lock, so a newer invalidation that
        // bumped the generation cannot be overwritten by an older load.
        let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = only_if_generation {
            if self.generation(zone) != g {
                return;
            }
        }
        zones.insert(zone.to_owned(), state);
    }

    fn cached(&self, zone: &str) -> Option<ZoneState> {
        self.zones
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(zone)
            .cloned()
    }

    /// A version's bundle if this process compiled it already.
    pub fn compiled(&self, version_id: &str) -> Option<Arc<Bundle>> {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(version_id)
            .cloned()
    }

    /// Keeps a bundle compiled elsewhere (version create) for its version id.
    pub fn remember(&self, version_id: &str, bundle: Arc<Bundle>) {
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= COMPILED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(version_id.to_owned(), bundle);
    }

    /// Compiles the policy versions of a manifest, in manifest order.
    pub async fn compile_manifest(
        &self,
        pool: &PgPool,
        manifest: &[String],
    ) -> Result<Bundle, EngineError> {
        let docs = read::policy_versions_by_id(pool, manifest).await?;
        let contents: Vec<(String, String)> = manifest
            .iter()
            .map(|id| {
                docs.get(id)
                    .map(|d| (id.clone(), d.content.clone()))
                    .ok_or_else(|| EngineError::MissingVersion(id.clone()))
            })
            .collect::<Result<_, _>>()?;
        let bundle = compile_blocking(contents).await?;
        METRICS.bundles_compiled.inc();
        Ok(bundle)
    }

    /// The bundle of a policy-set version, compiled at most once per process.
    pub async fn compile_version(
        &self,
        pool: &PgPool,
        version: &read::SetVersionRow,
    ) -> Result<Arc<Bundle>, EngineError> {
        if let Some(b) = self.compiled(&version.id) {
            return Ok(b);
        }
        let bundle = Arc::new(self.compile_manifest(pool, &version.manifest).await?);
        self.remember(&version.id, bundle.clone());
        Ok(bundle)
    }

    async fn load(&self, pool: &PgPool, zone: &str) -> Result<ZoneState, EngineError> {
        let Some(b) = read::binding(pool, zone).await? else {
            return Ok(ZoneState::NoPolicy);
        };
        let version = read::load_set_version(pool, &b.version_id)
            .await?
            .ok_or_else(|| EngineError::MissingVersion(b.version_id.clone()))?;
        let bundle = self.compile_version(pool, &version).await?;
        Ok(ZoneState::Loaded(Arc::new(Loaded {
            policy_set_id: b.policy_set_id,
            version_id: b.version_id,
            manifest_sha256: b.manifest_sha256,
            bundle,
            loaded_at: Utc::now(),
        })))
    }

    /// The zone's active bundle; loads a zone seen for the first time.
    pub async fn active(&self, pool: &PgPool, zone: &str) -> Result<Arc<Loaded>, EngineError> {
        let state = match self.cached(zone) {
            Some(s) => s,
            None => {
                let g = self.generation(zone);
                let s = self.load(pool, zone).await?;
                self.install(zone, s.clone(), Some(g));
                s
            }
        };
        match state {
            ZoneState::Loaded(l) => Ok(l),
            ZoneState::NoPolicy => Err(EngineError::NoPolicy),
        }
    }

    /// Evaluates `input` under the zone's active bundle (fails closed without one).
    pub async fn decide(
        &self,
        pool: &PgPool,
        zone: &str,
        input: &Value,
    ) -> Result<Decided, EngineError> {
        let l = match self.active(pool, zone).await {
            Ok(l) => l,
            Err(e) => {
                METRICS
                    .policy_decisions
                    .with_label_values(&["no_policy"])
                    .inc();
                return Err(e);
            }
        };
        let result = l.bundle.evaluate(input).map_err(|e| {
            METRICS.policy_decisions.with_label_values(&["error"]).inc();
            EngineError::Eval(e.to_string())
        })?;
        let outcome = if serval_domain::policy::bundle::is_allow(&result) {
            "allow"
        } else {
            "deny"
        };
        METRICS.policy_decisions.with_label_values(&[outcome]).inc();
        Ok(Decided { result, loaded: l })
    }

    /// What this process has loaded for a zone (for status routes), without loading.
    pub fn loaded(&self, zone: &str) -> Option<Arc<Loaded>> {
        match self.cached(zone) {
            Some(ZoneState::Loaded(l)) => Some(l),
            _ => None,
        }
    }

    /// Reloads a zone's active bundle from the read model (the binding the log decided).
    pub async fn reload(&self, pool: &PgPool, zone: &str) -> Result<(), EngineError> {
        let g = self.bump(zone);
        let state = self.load(pool, zone).await;
        match state {
            Ok(s) => {
                self.install(zone, s, Some(g));
                Ok(())
            }
            Err(e) => {
                self.forget(zone);
                Err(e)
            }
        }
    }

    /// Drops what this process holds for a zone: its next request loads it.
    pub fn forget(&self, zone: &str) {
        self.zones
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(zone);
    }
}

/// Compiles on the blocking pool: compilation evaluates the documents and takes
/// milliseconds, which must not stall the request runtime.
pub async fn compile_blocking(docs: Vec<(String, String)>) -> Result<Bundle, BundleError> {
    tokio::task::spawn_blocking(move || {
        let docs: Vec<BundleDocument<'_>> = docs
            .iter()
            .map(|(id, content)| BundleDocument {
                policy_version_id: id,
                content,
            })
            .collect();
        Bundle::compile(&docs)
    })
    .await
    .unwrap_or_else(|e| Err(BundleError::Bundle(format!("compilation aborted: {e}"))))
}

/// Follows `caracal.policy.invalidate` from its current end and applies every verified
/// message to `app.engines`, until `stop` turns true.
pub async fn listen(app: App, mut stop: watch::Receiver<bool>) {
    let key = app.store.keys().topic(topics::POLICY_INVALIDATE);
    let Some(mut conn) = crate::state::connect_dedicated(
        &app.cfg.redis_url,
        "policy invalidation listener",
        &mut stop,
    )
    .await
    else {
        return;
    };
    // Start after the topic's current end, read now: the start-up warm-up loads the state
    // as of later than this point, and every change after it is applied below.
    let head: Result<redis::streams::StreamRangeReply, _> =
        conn.xrevrange_count(&key, "+", "-", 1).await;
    let mut last = match head {
        Ok(r) => r
            .ids
            .first()
            .map(|e| e.id.clone())
            .unwrap_or_else(|| "0-0".to_owned()),
        Err(_) => "$".to_owned(),
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let opts = StreamReadOptions::default().block(1_000).count(100);
        let keys = [key.as_str()];
        let ids = [last.as_str()];
        let read = tokio::select! {
            r = conn.xread_options::<_, _, StreamReadReply>(&keys, &ids, &opts) => r,
            _ = stop.changed() => return,
        };
        let reply = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "policy invalidation listener: redis error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for s in reply.keys {
            for entry in s.ids {
                last = entry.id.clone();
                let pairs: Vec<(String, Option<String>)> = entry
                    .map
                    .keys()
                    .map(|k| (k.clone(), field_str(&entry.map, k)))
                    .collect();
                if !topics::verify(&app.secrets.streams_key, &key, &pairs) {
                    tracing::warn!(entry = %entry.id, "policy invalidation with a bad _sig ignored");
                    continue;
                }
                let (Some(zone), Some(set)) = (
                    field_str(&entry.map, "zone_id"),
                    field_str(&entry.map, "policy_set_id"),
                ) else {
                    continue;
                };
                let version = field_str(&entry.map, "policy_set_version_id");
                if !serval_domain::validation::is_valid_identifier(&zone) {
                    continue;
                }
                // The message is a hint, never the truth: a signed copy of an older one must
                // not roll a zone back. Once the read model has passed the zone's log head,
                // the zone's binding is read from it; the message's version must agree.
                let stream = serval_streams::LogStream::Zone(zone.clone());
                let caught =
                    crate::write::catch_up(&app, serval_schema::projections::POLICIES, &stream)
                        .await;
                let reloaded = if caught {
                    app.engines.reload(&app.pool, &zone).await
                } else {
                    app.engines.forget(&zone);
                    Ok(())
                };
                if let Err(e) = reloaded {
                    tracing::warn!(zone = %zone, error = %e, "policy bundle reload failed");
                }
                if let Some(l) = app.engines.loaded(&zone) {
                    if version.as_deref() != Some(l.version_id.as_str()) || l.policy_set_id != set {
                        tracing::warn!(zone = %zone, message_version = ?version, active = %l.version_id,
                            "a policy invalidation named another version than the zone's active one");
                    }
                }
            }
        }
    }
}

/// Loads every zone's active bundle at start, so status routes report `loaded` after a
/// restart without waiting for a first request.
pub async fn warm(app: App) {
    let bindings = match read::all_bindings(&app.pool).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot warm policy bundles");
            return;
        }
    };
    for b in bindings {
        if let Err(e) = app.engines.active(&app.pool, &b.zone_id).await {
            tracing::warn!(zone = %b.zone_id, error = %e, "cannot load the zone's policy bundle");
        }
    }
}

/// `422 invalid_policy_contract`: the decision contract did not compile with the bundle.
pub fn contract_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy_contract")
        .description(e.to_string())
}

/// The answer to a bundle that does not compile (§11).
pub fn bundle_error(e: BundleError) -> ApiError {
    match e {
        BundleError::Contract { .. } => contract_error(e),
        BundleError::Bundle(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy_bundle")
                .description(e.to_string())
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Bundle(b) => bundle_error(b),
            EngineError::MissingVersion(v) => {
                ApiError::conflict("referenced_policy_version_missing")
                    .description(format!("policy version {v} is missing"))
            }
            other => ApiError::internal(other),
        }
    }
}
