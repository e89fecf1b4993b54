//! Who is calling (coordinator.md §2): an STS session mandate verified in process, or the
//! operator token on its allowlisted routes; then the scope rules of §2.2 and §2.4.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::Utc;
use serval_domain::catalog::EntityData;
use serval_domain::validation::is_valid_identifier;
use serval_kit::http::ApiError;
use serval_kit::mandate::{unverified_zone, MAX_TOKEN_CHARS};
use serval_kit::App;
use subtle::ConstantTimeEq;

pub const ADMIN: &str = "coordinator.admin";
pub const OPERATOR: &str = "caracal-operator";

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub zone_id: String,
    pub scopes: Vec<String>,
    pub subject: String,
    pub client_id: String,
    pub session_id: Option<String>,
    pub delegation_edge_id: Option<String>,
    pub authority_record_id: Option<String>,
    pub operator: bool,
}

impl Principal {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn admin(&self) -> bool {
        self.has(ADMIN)
    }

    pub fn owns(&self, application: &str) -> bool {
        self.client_id == application
    }

    /// Owner, `<scope>:<app>` holder, or (when `admin_counts`) `coordinator.admin`.
    pub fn may(&self, application: &str, scope: &str, admin_counts: bool) -> bool {
        self.owns(application)
            || self.has(&format!("{scope}:{application}"))
            || (admin_counts && self.admin())
    }

    /// The reader application of Delegation lists (`None` for admins: zone-wide).
    pub fn reader(&self) -> Option<&str> {
        (!self.admin()).then_some(self.client_id.as_str())
    }
}

/// Whether the operator token is accepted on a route (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Allowed,
    Refused,
}

fn missing_token() -> ApiError {
    ApiError::unauthorized("missing_token")
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid_token")
}

/// The bearer of a request: `Bearer ` (case-sensitive), trimmed, non-empty, ≤ 4096 chars.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing_token)?;
    let token = raw
        .strip_prefix("Bearer ")
        .ok_or_else(missing_token)?
        .trim();
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
        return Err(missing_token());
    }
    Ok(token)
}

fn is_operator(app: &App, token: &str) -> bool {
    app.cfg
        .coordinator_token
        .as_deref()
        .is_some_and(|t| !t.is_empty() && bool::from(t.as_bytes().ct_eq(token.as_bytes())))
}

/// Authenticates a request for the zone `path_zone` (checked against the token's zone).
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    path_zone: &str,
    operator: Operator,
) -> Result<Principal, ApiError> {
    authenticate_for(app, headers, path_zone, operator, None).await
}

/// [`authenticate`] for a request whose only reads of the Delegation graph are the
/// decision of its graph write (`store::graph_write`), which is made on the graph at the
/// log's version of it: graph events (and admin-audit records) not yet projected are not
/// waited for — everything else in the zone's log is.
pub async fn authenticate_graph_write(
    app: &App,
    headers: &HeaderMap,
    path_zone: &str,
    operator: Operator,
) -> Result<Principal, ApiError> {
    authenticate_for(
        app,
        headers,
        path_zone,
        operator,
        Some(crate::rows::NOT_CATALOG_ROWS),
    )
    .await
}

async fn authenticate_for(
    app: &App,
    headers: &HeaderMap,
    path_zone: &str,
    operator: Operator,
    skip: Option<serval_kit::freshness::Skippable>,
) -> Result<Principal, ApiError> {
    let token = bearer(headers)?;
    if operator == Operator::Allowed && is_valid_identifier(path_zone) && is_operator(app, token) {
        let p = Principal {
            zone_id: path_zone.to_owned(),
            scopes: vec![app.cfg.agent_coordinator_scope.clone(), ADMIN.to_owned()],
            subject: OPERATOR.to_owned(),
            client_id: OPERATOR.to_owned(),
            session_id: None,
            delegation_edge_id: None,
            authority_record_id: None,
            operator: true,
        };
        fresh_catalog(app, path_zone, skip).await?;
        crate::audit::note(&p);
        return Ok(p);
    }
    let zone = unverified_zone(token).map_err(|_| invalid_token())?;
    let claims = app
        .mandates
        .verify(app, &zone, token, &[])
        .await
        .map_err(|e| match e {
            serval_kit::mandate::Invalid::Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable")
            }
            _ => invalid_token(),
        })?;
    if claims.str("use") != Some("session") {
        return Err(invalid_token());
    }
    let subject = claims.text("sub").ok_or_else(invalid_token)?.to_owned();
    let scopes = claims.scopes();
    if !scopes.iter().any(|s| s == &app.cfg.agent_coordinator_scope) {
        return Err(ApiError::forbidden("missing_scope"));
    }
    if zone != path_zone {
        return Err(ApiError::forbidden("zone_mismatch"));
    }
    let client_id = claims
        .text("client_id")
        .ok_or_else(invalid_token)?
        .to_owned();
    let sid = claims.text("sid").map(str::to_owned);
    identity_live(app, &zone, &client_id, sid.as_deref(), skip).await?;
    let p = Principal {
        zone_id: zone,
        scopes,
        subject,
        client_id,
        session_id: claims.text("agent_session_id").map(str::to_owned),
        delegation_edge_id: claims.text("delegation_edge_id").map(str::to_owned),
        authority_record_id: sid,
        operator: false,
    };
    crate::audit::note(&p);
    Ok(p)
}

/// §2.1's last row: the application is live in the zone and unexpired, and the `sid`
/// record (when present) is active in the zone and unexpired. One query.
async fn identity_live(
    app: &App,
    zone: &str,
    client_id: &str,
    sid: Option<&str>,
    skip: Option<serval_kit::freshness::Skippable>,
) -> Result<(), ApiError> {
    let mut ids = vec![client_id.to_owned()];
    ids.extend(sid.map(str::to_owned));
    fresh_catalog(app, zone, skip).await?;
    let range = match skip {
        Some(_) => crate::rows::Range::Read,
        None => crate::rows::Range::Remembered,
    };
    let rows = identity_rows(app, zone, ids, range).await?;
    let now = Utc::now();
    let revoked = || ApiError::unauthorized("identity_revoked");
    match rows.get(client_id) {
        Some(e) if e.zone_id == zone && e.is_live() => match &e.data {
            EntityData::Application(a) if a.is_unexpired(now) => {}
            _ => return Err(revoked()),
        },
        _ => return Err(revoked()),
    }
    if let Some(sid) = sid {
        match rows.get(sid) {
            Some(e) if e.zone_id == zone => match &e.data {
                EntityData::AuthorityRecord(r) if r.is_active(now) => {}
                _ => return Err(revoked()),
            },
            _ => return Err(revoked()),
        }
    }
    Ok(())
}

type Rows = std::collections::HashMap<String, serval_domain::catalog::Entity>;

fn identity_cache() -> &'static crate::rows::AtPosition<Vec<String>, Rows> {
    static CACHE: std::sync::OnceLock<crate::rows::AtPosition<Vec<String>, Rows>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The caller's application and `sid` record as the fresh read model has them: from memory
/// while nothing that changes a catalog row has been projected since they were read
/// (`rows.rs`), else one query. Expiry is judged by the caller at the time of each request.
async fn identity_rows(
    app: &App,
    zone: &str,
    ids: Vec<String>,
    range: crate::rows::Range,
) -> Result<Rows, ApiError> {
    let read = async { Ok(serval_projector::catalog::load_many(&app.pool, &ids).await?) };
    identity_cache()
        .get_or_read(app, zone, ids.clone(), range, |_| true, read)
        .await
}

/// Read-your-writes for the whole request: the zone's catalog read model (Sessions, the
/// graph, records) has passed every entry in the zone's log when the request arrived — an
/// archive or revocation the Management API acknowledged, the record the STS appended a
/// moment ago, and this service's own writes, which answer before they are projected.
async fn fresh_catalog(
    app: &App,
    zone: &str,
    skip: Option<serval_kit::freshness::Skippable>,
) -> Result<(), ApiError> {
    let deps = [serval_kit::freshness::Dep::new(
        serval_schema::projections::CATALOG,
        serval_streams::LogStream::Zone(zone.to_owned()),
    )];
    match skip {
        Some(skip) => serval_kit::freshness::ensure_skipping(app, &deps, skip).await,
        None => serval_kit::freshness::ensure(app, &deps).await,
    }
}

/// `/metrics` and `/stats`: the operator token only (§2.3).
pub fn operator_only(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers)?;
    if is_operator(app, token) {
        Ok(())
    } else {
        Err(ApiError::forbidden("operator_token_required"))
    }
}

/// The client address for per-IP limits.
pub fn client_ip(conn: Option<&ConnectInfo<SocketAddr>>) -> String {
    serval_kit::rate_limit::ip_subject(conn.map(|c| c.0.ip()))
}
