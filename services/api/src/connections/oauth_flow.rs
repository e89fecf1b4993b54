//! The OAuth authorization-code flow of a provider connection (§13): `oauth/authorize`
//! stores the PKCE verifier under the state's digest and answers the provider's URL; the
//! `oauth/callback` (a browser redirect, no admin token) redeems the state once, exchanges
//! the code at the allowlisted token endpoint and upserts the connection.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{self as common, WriteCtx};
use crate::params::PathIds;
use crate::providers;
use serval_kit::http::body::RawBody;
use serval_kit::http::{ApiError, RequestId};
use serval_kit::oauth::{self, AuthorizeError, ExchangeError};
use serval_kit::request::Req;
use serval_kit::state::App;

use super::{auth_code_provider, render, upsert, TargetBody};

#[derive(Debug, Serialize, Deserialize)]
struct PendingAuthorize {
    zone_id: String,
    provider_id: String,
    subject_id: String,
    verifier: String,
    expires_at: DateTime<Utc>,
}

/// Where to send the user's browser to connect the provider account.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Authorization {
    authorization_url: String,
    state: String,
    #[schema(value_type = String)]
    expires_at: DateTime<Utc>,
}

pub(super) async fn authorize(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    const CODE: &str = "invalid_provider_oauth_authorize";
    let (subject, provider) = TargetBody::parse(&req, &raw, CODE)?.resolve(CODE)?;
    let zone = ids.at(0);
    crate::policies::zone_badge(&app, zone).await?;
    let (_, config) = auth_code_provider(&app, zone, &provider).await?;
    let state = oauth::random_token();
    let verifier = oauth::random_token();
    let url = oauth::authorization_url(&config, &state, &oauth::s256_challenge(&verifier))
        .map_err(|e| match e {
            AuthorizeError::Config(key) => ApiError::bad_request("invalid_provider_config")
                .description(format!("the provider config has no {key}")),
            AuthorizeError::Endpoint => {
                ApiError::bad_request("provider_authorization_endpoint_invalid")
                    .description("authorization_endpoint must be an absolute HTTPS URL")
            }
        })?;
    let expires_at = Utc::now() + chrono::Duration::seconds(oauth::STATE_TTL_SECS);
    let pending = PendingAuthorize {
        zone_id: zone.to_owned(),
        provider_id: provider,
        subject_id: subject,
        verifier,
        expires_at,
    };
    let mut conn = app.redis.clone();
    // Kept past its validity so a late callback is told "expired", not "invalid".
    let _: () = conn
        .set_ex(
            app.store.keys().oauth_state(&oauth::state_digest(&state)),
            serde_json::to_string(&pending).map_err(ApiError::internal)?,
            (oauth::STATE_TTL_SECS * 6) as u64,
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(crate::views::to_json(&Authorization {
        authorization_url: url,
        state,
        expires_at,
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept.contains("text/html") && !accept.contains("application/json")
}

fn html_page(title: &str, detail: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{d}</p></body></html>",
        t = esc(title),
        d = esc(detail)
    )
}

pub(super) async fn callback(
    State(app): State<App>,
    RequestId(rid): RequestId,
    ids: PathIds,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let zone = ids.at(0);
    let state = q
        .state
        .filter(|s| (32..=256).contains(&s.len()))
        .ok_or_else(|| {
            ApiError::bad_request("invalid_oauth_callback")
                .description("state must be 32-256 characters")
        })?;
    let mut conn = app.redis.clone();
    // GETDEL: a state is redeemed at most once, whatever happens next.
    let stored: Option<String> = redis::cmd("GETDEL")
        .arg(app.store.keys().oauth_state(&oauth::state_digest(&state)))
        .query_async(&mut conn)
        .await
        .map_err(ApiError::internal)?;
    let pending: PendingAuthorize = stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .ok_or_else(|| {
            ApiError::bad_request("oauth_state_invalid").description("unknown or used state")
        })?;
    // A state an authenticated caller obtained: the callback is attributable, so it is
    // recorded on its own even when it fails (an unknown state is only counted).
    serval_kit::admin_audit::note_attributed();
    if pending.zone_id != zone {
        return Err(ApiError::bad_request("oauth_state_mismatch")
            .description("the state was issued for another zone"));
    }
    if pending.expires_at <= Utc::now() {
        return Err(ApiError::bad_request("oauth_state_expired"));
    }
    if let Some(err) = q.error {
        let desc = q.error_description.unwrap_or(err);
        return Err(ApiError::bad_request("provider_oauth_denied").description(desc));
    }
    let code = q
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("authorization_code_required"))?;
    let ctx = WriteCtx::unauthenticated(&app, zone, &rid, "oauth:callback").await?;
    let (provider, config) = auth_code_provider(&app, zone, &pending.provider_id).await?;
    let token_endpoint = config
        .get("token_endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("invalid_provider_config"))?;
    if !oauth::endpoint_allowed(&config, token_endpoint) {
        return Err(ApiError::bad_request("provider_token_endpoint_not_allowed"));
    }
    let secrets = providers::secrets_of(&app, &provider).await?;
    let tokens = oauth::exchange_code(&config, &secrets, &code, &pending.verifier)
        .await
        .map_err(|e| {
            let gateway = |code: &str| ApiError::new(StatusCode::BAD_GATEWAY, code);
            match e {
                ExchangeError::Failed(why)
                | ExchangeError::Refused(why)
                | ExchangeError::NotAllowed(why) => {
                    tracing::warn!(error = %why, "provider token exchange failed");
                    gateway("provider_token_exchange_failed")
                }
                ExchangeError::Invalid => gateway("provider_token_response_invalid"),
                ExchangeError::TokenType(t) => gateway("provider_token_type_unsupported")
                    .description(format!("token_type {t} is not bearer")),
            }
        })?;
    let expires_at = tokens
        .expires_in
        .map(|s| Utc::now() + chrono::Duration::seconds(s));
    let mut sealed = BTreeMap::new();
    sealed.insert("access_token".to_owned(), tokens.access_token);
    if let Some(r) = tokens.refresh_token {
        sealed.insert("refresh_token".to_owned(), r);
    }
    let w = upsert(
        &app,
        &ctx,
        &pending.subject_id,
        &pending.provider_id,
        sealed,
        expires_at,
    )
    .await?;
    let resp = common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await?;
    if wants_html(&headers) && resp.status() == StatusCode::CREATED {
        return Ok((
            StatusCode::CREATED,
            Html(html_page(
                "Connected",
                "The provider account is connected. You can close this window.",
            )),
        )
            .into_response());
    }
    Ok(resp)
}
