//! The Gateway (:8081): verifies every governed call, re-exchanges its mandate at the STS,
//! injects the upstream credential and streams the answer (gateway.md).
//!
//! * [`pipeline`]: the checks of §3 in their order, the upstream call and the streamed
//!   answer (§9), the audit events (§13).
//! * [`sts_client`]: the HMAC-signed exchange and its circuit breaker (§4).
//! * [`upstream`]: the address rule, URL, headers and credential injection (§6–§8).
//! * [`revocation`]: the in-memory revocation state, fed by the topics and snapshots (§10).

pub mod error;
pub mod pipeline;
pub mod revocation;
pub mod sts_client;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;
use serval_kit::http::ops::bearer_ok;
use serval_kit::App;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the Gateway keeps besides the shared state.
pub struct Gateway {
    pub revocations: Arc<revocation::Revocations>,
    pub breaker: sts_client::Breaker,
    /// To the STS: no redirects, `STS_TIMEOUT` (5 s).
    pub sts: reqwest::Client,
    /// To upstreams: no redirects, headers within `UPSTREAM_TIMEOUT`.
    pub upstream: reqwest::Client,
    pub allowlist: Vec<String>,
    /// The STS's router when it runs in this process and `STS_URL` is not set: the
    /// re-exchange is handed to it instead of crossing the loopback.
    pub local_sts: std::sync::OnceLock<axum::Router>,
}

impl Gateway {
    pub fn new(app: &App) -> Arc<Gateway> {
        let sts = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(100)
            .build()
            .unwrap_or_default();
        let upstream = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(100)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Arc::new(Gateway {
            revocations: Arc::default(),
            breaker: sts_client::Breaker::default(),
            sts,
            upstream,
            allowlist: app
                .cfg
                .upstream_host_allowlist
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            local_sts: std::sync::OnceLock::new(),
        })
    }
}

/// The Gateway's own readiness (gateway.md §2, in its order after Redis): a stale
/// revocation state, an open STS breaker, an STS whose `/health` does not answer 2xx.
pub fn readiness(gw: Arc<Gateway>) -> serval_kit::http::ops::ExtraCheck {
    Arc::new(move |app: App| {
        let gw = gw.clone();
        Box::pin(async move {
            if !gw.revocations.fresh() {
                return Err("revocation_snapshot_stale");
            }
            if gw.breaker.open() {
                return Err("sts_unavailable");
            }
            // The STS the exchanges go to: the one in this process when they are handed
            // to it, else `STS_URL` (or `ISSUER_URL`).
            let healthy = match gw.local_sts.get() {
                Some(router) => sts_client::local_health(router).await,
                None => gw
                    .sts
                    .get(format!("{}/health", app.sts_url()))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
            };
            if healthy {
                Ok(())
            } else {
                Err("sts_unreachable")
            }
        })
    })
}

/// Starts the revocation follower and snapshots.
pub fn start(app: &App, gw: &Arc<Gateway>, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    revocation::start(app, gw.revocations.clone(), stop)
}

/// Every path the operational routes do not answer is a governed call; `POST
/// /internal/revocations/reload` is the Gateway's own (other methods there are proxied).
pub fn router(gw: Arc<Gateway>) -> Router<App> {
    Router::new()
        .route(
            "/internal/revocations/reload",
            post(reload).fallback(pipeline::proxy),
        )
        .fallback(pipeline::proxy)
        .layer(Extension(gw))
}

/// gateway.md §1: reloads the revocation snapshot now (`Bearer CARACAL_ADMIN_TOKEN`; a
/// missing or wrong token is a plain `404`, as if the route did not exist).
async fn reload(
    State(app): State<App>,
    Extension(gw): Extension<Arc<Gateway>>,
    headers: HeaderMap,
) -> Response {
    let authorized = app
        .secrets
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .is_some_and(|t| bearer_ok(&headers, t));
    if !authorized {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(5), gw.revocations.reload(&app)).await {
        Ok(Ok(n)) => Json(json!({"ok": true, "revocations": n})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "ready": false, "reason": "revocation_reload_failed"})),
        )
            .into_response(),
    }
}
