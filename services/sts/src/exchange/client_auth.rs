//! Client authentication: the client secret (sts.md §11.1) or, as an addition Caracal's
//! clients never use, an RFC 7523 client assertion signed by a key the application registered
//! ([`serval_kit::client_assertion`]). Client-secret authentication: the application must exist in `zone_id`,
//! be live and unexpired and have a stored Argon2id hash. A verified secret is remembered
//! for an hour as SHA-256 of the presented secret keyed by the stored hash, so a rotation
//! (a new hash) invalidates it by construction; cold verifications (64 MiB each) run at most
//! [`COLD_VERIFICATIONS`] at a time on the blocking pool, so a flood of wrong secrets can
//! neither exhaust memory nor starve the runtime.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use serval_domain::catalog::{ApplicationData, Entity, EntityData};
use serval_projector::catalog as read;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use serval_kit::client_assertion;
use serval_kit::secrets::verify_client_secret;
use serval_kit::App;

use super::error::StsError;
use super::form::TokenForm;
use super::zone_cache::ZoneView;

pub const COLD_VERIFICATIONS: usize = 2;
const CACHE_MAX: usize = 8_192;
const CACHE_TTL: Duration = Duration::from_secs(3_600);
/// How long a cold verification waits for a permit before the exchange is refused as
/// retryable (a flood of wrong secrets must not queue everyone else's forever).
const COLD_WAIT: Duration = Duration::from_secs(2);

/// An authenticated application.
pub struct Client {
    pub id: String,
    pub zone_id: String,
    pub data: ApplicationData,
}

pub struct SecretVerifier {
    verified: Mutex<HashMap<String, ([u8; 32], Instant)>>,
    cold: Semaphore,
}

impl Default for SecretVerifier {
    fn default() -> Self {
        SecretVerifier {
            verified: Mutex::default(),
            cold: Semaphore::new(COLD_VERIFICATIONS),
        }
    }
}

/// The application `id` in any zone; kept in the zone's view when it is the request's
/// zone's (another zone's application is only ever refused).
async fn application(
    app: &App,
    zone: &str,
    id: &str,
    view: Option<&ZoneView>,
) -> Result<Option<Entity>, StsError> {
    if let Some(Some(e)) = view.and_then(|v| v.app(id)) {
        return Ok(Some(e));
    }
    let found = read::load_many(&app.pool, &[id.to_owned()])
        .await
        .map_err(|e| StsError::from(serval_kit::http::ApiError::from(e)))?
        .into_values()
        .next()
        .filter(|e| matches!(e.data, EntityData::Application(_)));
    if let (Some(v), Some(e)) = (view, found.as_ref().filter(|e| e.zone_id == zone)) {
        v.keep_app(id, Some(e.clone()));
    }
    Ok(found)
}

/// A deleted (archived) zone's applications mint nothing.
async fn live_zone(app: &App, zone: &str) -> Result<(), StsError> {
    let row = serval_kit::read_cache::zone(app, zone).await?;
    if row.is_none_or(|z| z.archived_at.is_some()) {
        return Err(StsError::invalid_client());
    }
    Ok(())
}

/// RFC 7523: a JWT signed by one of the application's registered keys, for the token
/// endpoint, short-lived, its `jti` consumed here once per application (Redis unavailable →
/// refused as retryable, never accepted twice).
async fn verify_assertion(
    app: &App,
    app_id: &str,
    zone: &str,
    data: &ApplicationData,
    jwt: &str,
) -> Result<(), StsError> {
    let issuer = app.cfg.issuer_url.trim_end_matches('/');
    let audiences = [
        format!("{issuer}/oauth/2/token"),
        issuer.to_owned(),
        format!("{issuer}/"),
    ];
    let now = Utc::now().timestamp();
    let verified = client_assertion::verify(jwt, data.jwks.as_deref(), app_id, &audiences, now)
        .map_err(|e| {
            tracing::info!(application_id = app_id, reason = %e, "client assertion refused");
            StsError::invalid_client()
        })?;
    // The jti is the client's; only its digest (with the application) names the key.
    let digest = hex::encode(Sha256::digest(format!("{app_id}\n{}", verified.jti)));
    let key = app.store.keys().client_assertion_jti(zone, &digest);
    // Remembered well past the last second it could be accepted in (exp + leeway), with room
    // for clocks of other STS processes.
    let ttl = (verified.exp - now).max(0) + 2 * client_assertion::LEEWAY_SECS + 5;
    let mut conn = app.redis.clone();
    let fresh: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(verified.exp)
        .arg("NX")
        .arg("EX")
        .arg(ttl)
        .query_async(&mut conn)
        .await
        .map_err(|_| {
            StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "client assertion registry unavailable; retry",
            )
        })?;
    if fresh.is_none() {
        tracing::info!(application_id = app_id, "client assertion jti reused");
        return Err(StsError::invalid_client());
    }
    Ok(())
}

impl SecretVerifier {
    async fn verify(&self, secret: &str, stored: &str) -> Result<bool, StsError> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some((digest, at)) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stored)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(bool::from(digest.ct_eq(&presented)));
            }
        }
        let busy = || {
            StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "client authentication is busy; retry",
            )
        };
        let _permit = match tokio::time::timeout(COLD_WAIT, self.cold.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Err(busy()),
        };
        let (s, h) = (secret.to_owned(), stored.to_owned());
        let ok = tokio::task::spawn_blocking(move || verify_client_secret(&s, &h))
            .await
            .unwrap_or(false);
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            if cache.len() >= CACHE_MAX {
                // Drop the oldest eighth rather than everything: a full cache must not send
                // every client through the cold path at once.
                let mut ages: Vec<Instant> = cache.values().map(|(_, at)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 8];
                cache.retain(|_, (_, at)| *at > cut);
            }
            cache.insert(stored.to_owned(), (presented, Instant::now()));
        }
        Ok(ok)
    }

    /// The Gateway path (§11.2): the request's HMAC authenticated it, so the application is
    /// identified, not authenticated: it must exist in `zone_id`, unarchived and unexpired,
    /// in a live zone.
    pub async fn identify(
        &self,
        app: &App,
        form: &TokenForm,
        view: Option<&ZoneView>,
    ) -> Result<Client, StsError> {
        let (Some(app_id), Some(zone)) = (form.get("application_id"), form.get("zone_id")) else {
            return Err(StsError::invalid_client());
        };
        let found = application(app, zone, app_id, view)
            .await?
            .filter(|e| e.zone_id == zone);
        let Some(entity) = found.filter(|e| e.archived_at.is_none()) else {
            return Err(StsError::invalid_client());
        };
        let EntityData::Application(data) = entity.data else {
            return Err(StsError::invalid_client());
        };
        if !data.is_unexpired(Utc::now()) {
            return Err(StsError::invalid_client());
        }
        live_zone(app, &entity.zone_id).await?;
        Ok(Client {
            id: entity.id,
            zone_id: entity.zone_id,
            data,
        })
    }

    /// §5.1 step 3: `401 access_denied` "invalid client credentials" for every failure,
    /// except valid credentials of another zone (`403 zone_invalid`).
    pub async fn authenticate(
        &self,
        app: &App,
        form: &TokenForm,
        view: Option<&ZoneView>,
    ) -> Result<Client, StsError> {
        let (Some(app_id), Some(zone)) = (form.get("application_id"), form.get("zone_id")) else {
            return Err(StsError::invalid_client());
        };
        let assertion = form.get("client_assertion");
        let secret = form.get("client_secret");
        if assertion.is_none() && secret.is_none() {
            return Err(StsError::invalid_client());
        }
        let Some(entity) = application(app, zone, app_id, view).await? else {
            return Err(StsError::invalid_client());
        };
        let EntityData::Application(data) = entity.data else {
            return Err(StsError::invalid_client());
        };
        if entity.archived_at.is_some() || !data.is_unexpired(Utc::now()) {
            return Err(StsError::invalid_client());
        }
        match (assertion, secret) {
            (Some(jwt), _) => {
                verify_assertion(app, &entity.id, &entity.zone_id, &data, jwt).await?
            }
            (None, Some(secret)) => {
                let Some(stored) = data.secret_hash.as_deref() else {
                    return Err(StsError::invalid_client());
                };
                if !self.verify(secret, stored).await? {
                    return Err(StsError::invalid_client());
                }
            }
            (None, None) => return Err(StsError::invalid_client()),
        }
        live_zone(app, &entity.zone_id).await?;
        if entity.zone_id != zone {
            return Err(StsError::new(
                StatusCode::FORBIDDEN,
                "zone_invalid",
                format!(
                    "application {app_id} belongs to zone {}, not {zone}",
                    entity.zone_id
                ),
            ));
        }
        Ok(Client {
            id: entity.id,
            zone_id: entity.zone_id,
            data,
        })
    }
}
