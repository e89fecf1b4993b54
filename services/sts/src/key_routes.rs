//! `GET /.well-known/jwks.json?zone_id=` and `POST /internal/zones/{zone}/signing-key/rotate`
//! (sts.md §13, §14). The JWKS is served from memory (the key set refreshes every 30 s).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use serval_domain::validation::is_valid_identifier;
use subtle::ConstantTimeEq;

use serval_kit::App;

use crate::exchange::error::StsError;
use crate::Sts;

pub fn router() -> Router<App> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/internal/zones/{zone}/signing-key/rotate", post(rotate))
}

#[derive(Deserialize)]
struct JwksQuery {
    zone_id: Option<String>,
}

async fn jwks(
    State(app): State<App>,
    Extension(sts): Extension<Arc<Sts>>,
    Query(q): Query<JwksQuery>,
) -> Response {
    let Some(zone) = q.zone_id.filter(|z| !z.is_empty()) else {
        return StsError::new(StatusCode::BAD_REQUEST, "invalid_token", "zone_id required")
            .respond("");
    };
    let not_found = || {
        StsError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "zone has no signing key",
        )
        .respond("")
    };
    if !is_valid_identifier(&zone) {
        return not_found();
    }
    match sts.keys.jwks(&app, &zone).await {
        Ok(Some(doc)) => {
            let mut resp = Json(doc).into_response();
            let h = resp.headers_mut();
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300, must-revalidate"),
            );
            resp
        }
        Ok(None) => not_found(),
        Err(e) => StsError::from(e).respond(""),
    }
}

/// `Authorization: Bearer <STS_ADMIN_TOKEN>`; plain `404` when the token is not configured,
/// plain-text `401` on a mismatch. Answers the new key's id: it is published now and signs
/// once verifiers' caches have had time to learn it.
async fn rotate(
    State(app): State<App>,
    Extension(sts): Extension<Arc<Sts>>,
    axum::extract::Path(zone): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(expected) = app.cfg.sts_admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized",
        )
            .into_response();
    }
    if !is_valid_identifier(&zone) {
        return StsError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "zone not found",
        )
        .respond("");
    }
    match serval_projector::zones::load(&app.pool, &zone).await {
        Ok(Some(z)) if z.archived_at.is_none() => {}
        Ok(_) => {
            return StsError::new(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                "zone not found",
            )
            .respond("")
        }
        Err(e) => return StsError::from(serval_kit::http::ApiError::from(e)).respond(""),
    }
    match sts.keys.rotate(&app, &zone).await {
        Ok(kid) => Json(json!({ "rotated": true, "zone_id": zone, "kid": kid })).into_response(),
        Err(e) => StsError::from(e).respond(""),
    }
}
