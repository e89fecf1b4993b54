//! Admin authentication and the authorization matrix on `/v1` (management-api.md §3).
//!
//! Tokens are looked up by SHA-256 digest among live tokens. A verified token is cached
//! under the `admin_tokens` projection's position on the system stream when it was looked
//! up, and served only while that position has not moved (so a revocation committed
//! anywhere invalidates it; the request's freshness layer has already brought the position
//! up to its start), and for at most 5 s; failures are never cached.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serval_domain::admin_token::{AdminToken, Capability, TokenScope};
use serval_domain::validation::is_valid_attribution;
use serval_domain::Actor;
use serval_streams::{EntryId, LogStream};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::ApiError;
use crate::rate_limit::{self, Bucket};
use crate::state::App;

/// `429 {"error":"rate_limited"}` (no `Retry-After`, §3.5).
pub fn rate_limited() -> Response {
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response()
}

const CACHE_TTL: Duration = Duration::from_secs(5);

/// When a token was read, the admin-tokens position it was read at, and the token.
type CachedToken = (Instant, EntryId, Arc<AdminToken>);

#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, CachedToken>>,
}

impl TokenCache {
    fn get(&self, digest: &str, position: EntryId) -> Option<Arc<AdminToken>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest)
            .filter(|(at, pos, _)| *pos == position && at.elapsed() < CACHE_TTL)
            .map(|(_, _, t)| t.clone())
    }

    fn put(&self, digest: String, position: EntryId, token: Arc<AdminToken>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (at, pos, _)| *pos == position && at.elapsed() < CACHE_TTL);
        }
        map.insert(digest, (Instant::now(), position, token));
    }

    /// Forgets a token at once (used when this process revokes it).
    pub fn forget(&self, token_id: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, _, t)| t.id != token_id);
    }
}

/// Where the admin-tokens read model stands, in this process's view.
fn tokens_position(app: &App) -> EntryId {
    app.visibility.current(
        serval_schema::projections::ADMIN_TOKENS,
        &app.store.keys().log(&LogStream::System),
    )
}

pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The authenticated admin principal of a `/v1` request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Shared: a request's principal is copied into its request and response extensions.
    pub token: Arc<AdminToken>,
}

impl Principal {
    pub fn is_bootstrap(&self) -> bool {
        self.token.is_bootstrap()
    }

    /// The actor for attribution (§1): a valid `x-caracal-authorized-by` wins, else
    /// `admin:<token-id>`.
    pub fn actor(&self, headers: &HeaderMap) -> Actor {
        let id = headers
            .get("x-caracal-authorized-by")
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_valid_attribution(v))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("admin:{}", self.token.id));
        let via_operator_header = headers
            .get("x-caracal-created-via")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "operator");
        Actor {
            id,
            is_bootstrap: self.is_bootstrap(),
            via_operator_header,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("invalid_admin_token"))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = raw.strip_prefix("Bearer ")?.trim();
    (1..=4096).contains(&token.len()).then_some(token)
}

async fn authenticate(app: &App, token: &str) -> Result<Option<Arc<AdminToken>>, ApiError> {
    let digest = digest_hex(token);
    // Taken before the lookup: the row read is at least this new.
    let position = tokens_position(app);
    if let Some(t) = app.tokens.get(&digest, position) {
        return Ok(Some(t));
    }
    let found = serval_projector::admin_tokens::find_live_by_digest(&app.pool, &digest).await?;
    Ok(found
        .map(Arc::new)
        .filter(|t| bool::from(t.token_sha256.as_bytes().ct_eq(digest.as_bytes())))
        .inspect(|t| {
            app.tokens.put(digest, position, t.clone());
        }))
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `/v1/zones/<id>/…` → the zone id, percent-decoded as the router decodes it for the
/// handler: authorization, the audit record and freshness must name the zone the handler
/// acts on (`%73ys…` is the zone `sys…`).
pub fn zone_of_path(path: &str) -> Option<Cow<'_, str>> {
    let rest = path.strip_prefix("/v1/zones/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| percent_encoding::percent_decode_str(id).decode_utf8_lossy())
}

fn is_approval_decision(method: &Method, path: &str) -> bool {
    method == Method::POST
        && zone_of_path(path).is_some()
        && ((path.contains("/approvals/")
            && (path.ends_with("/approve") || path.ends_with("/reject")))
            || (path.contains("/step-up-challenges/") && path.ends_with("/satisfy")))
}

/// Checks the authorization matrix (§3.2 steps 3–7) for an authenticated token.
async fn authorize(app: &App, p: &Principal, method: &Method, path: &str) -> Result<(), ApiError> {
    let t = &p.token;
    let validate = method == Method::POST && path == "/v1/policies/validate";
    let templates = is_read(method) && path == "/v1/policy-templates";
    match t.capability {
        Capability::Read if !is_read(method) && !validate => {
            return Err(ApiError::forbidden("admin_token_read_only"));
        }
        Capability::Approve if !is_read(method) && !is_approval_decision(method, path) => {
            return Err(ApiError::forbidden("admin_token_approve_only"));
        }
        Capability::Write if is_approval_decision(method, path) && !p.is_bootstrap() => {
            return Err(ApiError::forbidden("approve_capability_required"));
        }
        _ => {}
    }
    if t.scope == TokenScope::Zone && !(validate || templates) {
        let own = t.zone_id.as_deref().unwrap_or_default();
        if zone_of_path(path).as_deref() != Some(own) {
            return Err(ApiError::forbidden("admin_token_zone_mismatch"));
        }
    }
    if !is_read(method) && !p.is_bootstrap() {
        if let Some(zone_id) = zone_of_path(path) {
            let zone = serval_projector::zones::load(&app.pool, &zone_id).await?;
            if zone.is_some_and(|z| z.is_system()) {
                return Err(ApiError::forbidden("system_zone_read_only"));
            }
        }
    }
    Ok(())
}

/// Middleware for every `/v1` route.
pub async fn require_admin(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let ip = rate_limit::ip_subject(
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip()),
    );
    if rate_limit::exceeded(&app, Bucket::V1Ip, &ip).await {
        return rate_limited();
    }
    let principal = match bearer(req.headers()).map(str::to_owned) {
        Some(token) => match authenticate(&app, &token).await {
            Ok(found) => found.map(|t| Principal { token: t }),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let Some(principal) = principal else {
        // §3.2 step 2: the per-IP failure budget turns the 401 into a 429 once spent.
        if rate_limit::exceeded(&app, Bucket::AuthFailIp, &ip).await {
            return rate_limited();
        }
        return ApiError::unauthorized("invalid_admin_token").into_response();
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Err(e) = authorize(&app, &principal, &method, &path).await {
        let mut resp = e.into_response();
        resp.extensions_mut().insert(principal);
        return resp;
    }
    // §3.2 step 10: the per-actor budget.
    if rate_limit::exceeded(&app, Bucket::V1Token, &principal.token.id).await {
        return rate_limited();
    }
    req.extensions_mut().insert(principal.clone());
    crate::admin_audit::note_principal(&principal);
    let mut resp = next.run(req).await;
    // The admin audit (an outer layer) attributes the request to this principal.
    resp.extensions_mut().insert(principal);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_is_taken_from_the_path() {
        assert_eq!(zone_of_path("/v1/zones/z1").as_deref(), Some("z1"));
        assert_eq!(
            zone_of_path("/v1/zones/z1/dcr-status").as_deref(),
            Some("z1")
        );
        assert_eq!(zone_of_path("/v1/zones/%7A%31/x").as_deref(), Some("z1"));
        assert_eq!(zone_of_path("/v1/zones"), None);
        assert_eq!(zone_of_path("/v1/zones/"), None);
    }
}
