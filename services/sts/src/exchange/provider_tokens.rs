//! Tokens the STS fetches for the Gateway's upstream directive (gateway.md §6.3):
//! client-credentials tokens from the provider's token endpoint, kept in memory until 30 s
//! before they expire, and the Subject's authorization-code connection, refreshed when it
//! expires within 30 s and written back as the connection's next version.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Map, Value};
use serval_domain::catalog::connection::ConnectionData;
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use serval_kit::oauth::{self, ExchangeError};
use serval_kit::secrets::Binding;
use serval_kit::App;
use serval_projector::catalog::{self as read, Filter, Status};

use super::error::StsError;
use super::provider_circuit;
use super::Appended;

/// A fetched token is used until this long before it expires.
const EARLY: Duration = Duration::from_secs(30);
/// A token answer without `expires_in` (or a longer one) is kept at most this long.
const MAX_TOKEN_SECS: u64 = 3_600;
/// A connection expiring within this is refreshed before use.
const REFRESH_AHEAD_SECS: i64 = 30;
/// The sealing purpose of a connection's tokens (the Management API seals them).
pub const CONNECTION_TOKENS: &str = "provider_connection_tokens";
/// Cached client-credentials tokens kept at most (a zone cannot grow the map forever).
const MAX_CACHED: usize = 10_000;

/// Client-credentials tokens by provider id and version (a changed provider is a new key).
/// A provider as of one version (a changed provider is a new key).
type ProviderKey = (String, u64);

#[derive(Default)]
pub struct ProviderTokens {
    cached: Mutex<HashMap<ProviderKey, (String, Instant)>>,
    /// One fetch per provider at a time: concurrent requests at expiry wait for it.
    fetching: Mutex<HashMap<ProviderKey, Arc<tokio::sync::Mutex<()>>>>,
}

fn unavailable(identifier: &str, reason: &str) -> StsError {
    StsError::new(
        StatusCode::BAD_GATEWAY,
        "http_request_failed",
        format!("upstream credential for resource {identifier} is unavailable: {reason}"),
    )
}

/// The provider's token endpoint failed repeatedly: no fetch until its circuit closes.
fn circuit_open(identifier: &str) -> StsError {
    unavailable(
        identifier,
        "the provider's token endpoint is failing (circuit open, retry in 30 s)",
    )
}

fn exchange_reason(e: &ExchangeError) -> String {
    match e {
        ExchangeError::Failed(why) | ExchangeError::Refused(why) => {
            format!("token endpoint failed: {why}")
        }
        ExchangeError::NotAllowed(why) => why.clone(),
        ExchangeError::Invalid => "token endpoint answered no access token".into(),
        ExchangeError::TokenType(t) => format!("token type {t} needs an auth_scheme"),
    }
}

impl ProviderTokens {
    fn fresh(&self, key: &ProviderKey) -> Option<String> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(token, _)| token.clone())
    }

    /// The provider's client-credentials token, fetched when none is cached.
    pub async fn client_credentials(
        &self,
        app: &App,
        provider: &Entity,
        identifier: &str,
        cfg: &Map<String, Value>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, StsError> {
        let key = (provider.id.clone(), provider.version);
        if let Some(token) = self.fresh(&key) {
            return Ok(token);
        }
        let flight = {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() >= MAX_CACHED && !f.contains_key(&key) {
                f.clear();
            }
            f.entry(key.clone()).or_default().clone()
        };
        let _turn = flight.lock().await;
        // Another request may have fetched it while this one waited.
        if let Some(token) = self.fresh(&key) {
            return Ok(token);
        }
        if provider_circuit::is_open(app, &provider.zone_id, &provider.id).await {
            return Err(circuit_open(identifier));
        }
        let tokens = match oauth::client_credentials(cfg, secrets).await {
            Ok(t) => t,
            Err(e) => {
                // A client-credentials token is the provider's, not a Subject's: every
                // answer that reached the endpoint and gave no usable token counts.
                if !matches!(e, ExchangeError::NotAllowed(_)) {
                    provider_circuit::failed(app, &provider.zone_id, &provider.id).await;
                }
                return Err(unavailable(identifier, &exchange_reason(&e)));
            }
        };
        let life = tokens
            .expires_in
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(MAX_TOKEN_SECS)
            .min(MAX_TOKEN_SECS);
        let until = Instant::now() + Duration::from_secs(life).saturating_sub(EARLY);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cached.retain(|_, (_, until)| *until > now);
        if cached.len() < MAX_CACHED {
            cached.insert(key, (tokens.access_token.clone(), until));
        }
        Ok(tokens.access_token)
    }
}

fn connection_of(e: &Entity) -> Option<&ConnectionData> {
    match &e.data {
        EntityData::ProviderConnection(c) => Some(c),
        _ => None,
    }
}

async fn open_tokens(app: &App, e: &Entity) -> Option<BTreeMap<String, String>> {
    let sealed = connection_of(e)?.sealed_tokens.as_ref()?;
    let binding = Binding {
        zone_id: &e.zone_id,
        object_id: &e.id,
        purpose: CONNECTION_TOKENS,
    };
    let plain = app.custody.open(&binding, sealed).await.ok()?;
    serde_json::from_slice(&plain).ok()
}

fn not_renewable(identifier: &str) -> StsError {
    StsError::new(
        StatusCode::FORBIDDEN,
        "credential_expired_not_renewable",
        format!(
            "the provider connection for resource {identifier} expired and cannot be refreshed"
        ),
    )
}

/// The access token of `subject`'s active connection to `provider` (and the connection's
/// id), refreshed first when it expires within 30 s.
pub async fn connection_token(
    app: &App,
    (zone, provider): (&str, &str),
    subject: &str,
    identifier: &str,
    cfg: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Result<(String, String), StsError> {
    let Some(e) = connection(app, (zone, provider), subject, "active", identifier).await? else {
        // One marked expired (it could not be refreshed) still says so: consent again.
        let expired = connection(app, (zone, provider), subject, "expired", identifier).await;
        if matches!(expired, Ok(Some(_))) {
            return Err(not_renewable(identifier));
        }
        return Err(StsError::access_denied(
            StatusCode::FORBIDDEN,
            format!("no provider connection of the subject for resource {identifier}"),
        ));
    };
    let Some(c) = connection_of(&e).cloned() else {
        return Err(unavailable(identifier, "connection unreadable"));
    };
    let tokens = open_tokens(app, &e)
        .await
        .ok_or_else(|| unavailable(identifier, "connection tokens cannot be opened"))?;
    let access = tokens.get("access_token").filter(|t| !t.is_empty());
    let now = Utc::now();
    let fresh = c
        .expires_at
        .is_none_or(|at| (at - now).num_seconds() > REFRESH_AHEAD_SECS);
    if let (true, Some(a)) = (fresh, access) {
        return Ok((a.clone(), e.id.clone()));
    }
    if tokens.get("refresh_token").is_none_or(|t| t.is_empty()) {
        mark_expired(app, &e, &c).await;
        return Err(not_renewable(identifier));
    }
    // One refresh per connection at a time across processes: a provider that rotates
    // refresh tokens revokes the family when one is used twice.
    let lease = app.store.keys().connection_refresh_lease(zone, &e.id);
    let holder = uuid::Uuid::new_v4().to_string();
    let mut conn = app.redis.clone();
    let leased: bool = redis::cmd("SET")
        .arg(&lease)
        .arg(&holder)
        .arg("NX")
        .arg("PX")
        .arg(LEASE_MS)
        .query_async::<Option<String>>(&mut conn)
        .await
        .map_err(|_| unavailable(identifier, "refresh lease unavailable"))?
        .is_some();
    if !leased {
        return refreshed_elsewhere(app, (zone, &e.id), &c, identifier).await;
    }
    let result = refresh_leased(app, &e, &c, identifier, cfg, secrets).await;
    super::release_if_held(app, &lease, &holder).await;
    result
}

/// A live connection of `subject` to `provider` in `status`.
async fn connection(
    app: &App,
    (zone, provider): (&str, &str),
    subject: &str,
    status: &str,
    identifier: &str,
) -> Result<Option<Entity>, StsError> {
    let rows = read::list(
        &app.pool,
        zone,
        CatalogKind::ProviderConnection,
        Status::Live,
        &[
            Filter::Eq("subject_id", subject.to_owned()),
            Filter::Eq("provider_id", provider.to_owned()),
            Filter::Eq("status", status.to_owned()),
        ],
        None,
        1,
    )
    .await
    .map_err(|_| unavailable(identifier, "connection unreadable"))?;
    Ok(rows.into_iter().next())
}

/// gateway.md §6.3: a connection that cannot be refreshed is marked `expired` (which frees
/// its place for a new consent). A concurrent change of the connection wins.
async fn mark_expired(app: &App, e: &Entity, c: &ConnectionData) {
    let next = ConnectionData {
        status: "expired".into(),
        renewable: false,
        ..c.clone()
    };
    let appended = super::append_catalog(
        app,
        &uuid::Uuid::now_v7().to_string(),
        (&e.zone_id, &e.id),
        Some(e),
        &CatalogCommand::Replace {
            data: EntityData::ProviderConnection(next),
            changed_fields: vec!["status".into()],
            secret_rotated: false,
        },
        "system:sts",
    )
    .await;
    if let Err(super::Appended::Failed(err)) = appended {
        tracing::warn!(connection = %e.id, error = ?err.code, "connection not marked expired");
    }
}

/// How long a refresh lease lasts (a refresh is bounded well below it).
const LEASE_MS: u64 = 15_000;
/// How long a request waits for another process's refresh to be written back.
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(5);

/// Holding the lease: the connection read again (a refresh may just have landed), then
/// refreshed and written back.
async fn refresh_leased(
    app: &App,
    e: &Entity,
    c: &ConnectionData,
    identifier: &str,
    cfg: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Result<(String, String), StsError> {
    let current = reload(app, &e.zone_id, &e.id).await?;
    let (e, c) = match &current {
        Some((ce, cc)) if cc.refresh_token_version > c.refresh_token_version => {
            if let Some(t) = usable_token(app, ce, cc).await {
                return Ok((t, ce.id.clone()));
            }
            (ce, cc)
        }
        _ => (e, c),
    };
    let tokens = open_tokens(app, e)
        .await
        .ok_or_else(|| unavailable(identifier, "connection tokens cannot be opened"))?;
    let Some(refresh_token) = tokens.get("refresh_token").filter(|t| !t.is_empty()) else {
        return Err(not_renewable(identifier));
    };
    let provider = &c.provider_id;
    if provider_circuit::is_open(app, &e.zone_id, provider).await {
        return Err(circuit_open(identifier));
    }
    let refreshed = match oauth::refresh(cfg, secrets, refresh_token).await {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(connection = %e.id, reason = %exchange_reason(&err), "connection refresh failed");
            // Only an endpoint that is down or overloaded counts: one Subject's refused or
            // oddly answered refresh says nothing about the others'.
            if matches!(err, ExchangeError::Failed(_)) {
                provider_circuit::failed(app, &e.zone_id, provider).await;
            }
            // A refused grant stays refused: the connection is over until a new consent.
            if matches!(err, ExchangeError::Refused(_)) {
                mark_expired(app, e, c).await;
            }
            return Err(not_renewable(identifier));
        }
    };
    let mut next_tokens = BTreeMap::new();
    next_tokens.insert("access_token".to_owned(), refreshed.access_token.clone());
    // A provider that does not rotate refresh tokens keeps the one it had.
    let kept = refreshed
        .refresh_token
        .clone()
        .unwrap_or(refresh_token.clone());
    next_tokens.insert("refresh_token".to_owned(), kept);
    write_back(app, e, c, &next_tokens, refreshed.expires_in).await?;
    Ok((refreshed.access_token, e.id.clone()))
}

/// The connection `id` as the read model holds it now.
async fn reload(
    app: &App,
    zone: &str,
    id: &str,
) -> Result<Option<(Entity, ConnectionData)>, StsError> {
    let e = read::load(&app.pool, zone, id)
        .await
        .map_err(|err| StsError::from(serval_kit::http::ApiError::from(err)))?;
    Ok(e.and_then(|e| {
        let c = connection_of(&e)?.clone();
        (c.status == "active" && e.is_live()).then_some((e, c))
    }))
}

/// The access token of a connection that does not need a refresh.
async fn usable_token(app: &App, e: &Entity, c: &ConnectionData) -> Option<String> {
    let fresh = c
        .expires_at
        .is_none_or(|at| (at - Utc::now()).num_seconds() > REFRESH_AHEAD_SECS);
    if !fresh {
        return None;
    }
    open_tokens(app, e)
        .await?
        .get("access_token")
        .filter(|t| !t.is_empty())
        .cloned()
}

/// Another process holds the lease: wait for its write-back to reach the read model.
async fn refreshed_elsewhere(
    app: &App,
    (zone, id): (&str, &str),
    before: &ConnectionData,
    identifier: &str,
) -> Result<(String, String), StsError> {
    let deadline = Instant::now() + WAIT_FOR_REFRESH;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some((e, c)) = reload(app, zone, id).await? {
            if c.refresh_token_version > before.refresh_token_version {
                if let Some(t) = usable_token(app, &e, &c).await {
                    return Ok((t, e.id.clone()));
                }
            }
        }
    }
    Err(unavailable(
        identifier,
        "connection refresh in progress elsewhere",
    ))
}

/// The refreshed tokens as the connection's next version. A concurrent refresh that got
/// there first wins; this request still uses the token it was given.
async fn write_back(
    app: &App,
    e: &Entity,
    c: &ConnectionData,
    tokens: &BTreeMap<String, String>,
    expires_in: Option<i64>,
) -> Result<(), StsError> {
    let plain = serde_json::to_vec(tokens)
        .map_err(|err| StsError::from(serval_kit::http::ApiError::internal(err)))?;
    let binding = Binding {
        zone_id: &e.zone_id,
        object_id: &e.id,
        purpose: CONNECTION_TOKENS,
    };
    let sealed = app
        .custody
        .seal(&binding, &plain)
        .await
        .map_err(|err| StsError::from(serval_kit::http::ApiError::internal(err.to_string())))?;
    let now = Utc::now();
    // A provider's `expires_in` is clamped to a year, so no answer overflows the clock.
    let expires_at = expires_in
        .map(|s| s.clamp(1, MAX_EXPIRES_IN))
        .and_then(|s| now.checked_add_signed(chrono::Duration::seconds(s)));
    let mut e = e.clone();
    let mut c = c.clone();
    // A lost write loses the rotated refresh token: retried, and on a conflict applied to
    // the connection's newer version unless its tokens were replaced meanwhile.
    for _ in 0..3 {
        let next = ConnectionData {
            sealed_tokens: Some(sealed.clone()),
            renewable: true,
            expires_at,
            refreshed_at: Some(now),
            refresh_token_version: c.refresh_token_version + 1,
            ..c.clone()
        };
        let appended = super::append_catalog(
            app,
            &uuid::Uuid::now_v7().to_string(),
            (&e.zone_id, &e.id),
            Some(&e),
            &CatalogCommand::Replace {
                data: EntityData::ProviderConnection(next),
                changed_fields: vec!["expires_at".into(), "tokens".into()],
                secret_rotated: true,
            },
            "system:sts",
        )
        .await;
        match appended {
            Ok(()) => return Ok(()),
            Err(Appended::Conflict) => {
                super::catch_up_catalog(app, &e.zone_id).await;
                match reload(app, &e.zone_id, &e.id).await? {
                    Some((ne, nc)) if nc.refresh_token_version == c.refresh_token_version => {
                        e = ne;
                        c = nc;
                    }
                    // Replaced (a new consent) or ended: the newer state stands.
                    _ => return Ok(()),
                }
            }
            Err(Appended::Failed(err)) => {
                tracing::error!(connection = %e.id, "refreshed tokens not written back; retrying");
                match reload(app, &e.zone_id, &e.id).await? {
                    Some((ne, nc)) => {
                        e = ne;
                        c = nc;
                    }
                    None => return Err(err),
                }
            }
        }
    }
    tracing::error!(connection = %e.id, "refreshed tokens could not be written back");
    Ok(())
}

/// The longest `expires_in` taken from a provider (a year).
const MAX_EXPIRES_IN: i64 = 365 * 86_400;
