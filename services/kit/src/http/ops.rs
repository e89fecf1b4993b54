//! `/health`, `/ready` and `/metrics` on every service (management-api.md §4,
//! operations.md §5–§6).
//!
//! Readiness checks Postgres, Redis, projection lag and dead letters. The API and
//! Coordinator answer Caracal's Node shape (`{"ok":false,"error":…,"dependency":…}`), the
//! STS, Gateway and Audit its Go shape (`{"ok":false,"ready":false,"reason":…}`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use serde_json::{json, Map, Value};
use serval_projector::status;
use subtle::ConstantTimeEq;

use crate::config::Mode;
use crate::metrics::METRICS;
use crate::state::{App, PROJECTIONS};

#[derive(Debug, Clone, Copy)]
pub enum ReadyStyle {
    Node,
    Go,
}

/// A service's own readiness checks, run after the shared ones: `Err(reason)` answers `503`
/// with that reason (e.g. the Gateway's `revocation_snapshot_stale`, `sts_unreachable`).
pub type ExtraCheck = std::sync::Arc<
    dyn Fn(
            App,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), &'static str>> + Send>>
        + Send
        + Sync,
>;

pub fn router(style: ReadyStyle, extra: Option<ExtraCheck>) -> Router<App> {
    Router::new()
        .route("/health", get(health))
        .route(
            "/ready",
            get(
                move |s: State<App>, peer: ConnectInfo<SocketAddr>| async move {
                    let ip = crate::rate_limit::ip_subject(Some(peer.0.ip()));
                    if crate::rate_limit::exceeded(&s.0, crate::rate_limit::Bucket::ReadyIp, &ip)
                        .await
                    {
                        return crate::auth::rate_limited();
                    }
                    ready(s, style, extra.clone()).await
                },
            ),
        )
        .route("/metrics", get(metrics))
}

async fn health() -> Json<Value> {
    Json(json!({ "ok": true }))
}

/// Why a service is not ready: a reason code plus extra members for the body.
struct NotReady {
    reason: &'static str,
    extra: Map<String, Value>,
}

impl NotReady {
    fn new(reason: &'static str) -> Self {
        NotReady {
            reason,
            extra: Map::new(),
        }
    }
    fn with(mut self, k: &str, v: Value) -> Self {
        self.extra.insert(k.into(), v);
        self
    }
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn check(app: &App) -> Result<(), NotReady> {
    if app.is_draining() {
        return Err(NotReady::new("draining"));
    }
    let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&app.pool)).await;
    if !matches!(pg, Ok(Ok(_))) {
        return Err(NotReady::new("postgres_unreachable").with("dependency", json!("postgres")));
    }
    let mut conn = app.redis.clone();
    let ping: Result<Result<String, _>, _> =
        tokio::time::timeout(CHECK_TIMEOUT, redis::cmd("PING").query_async(&mut conn)).await;
    if !matches!(ping, Ok(Ok(_))) {
        return Err(NotReady::new("redis_unreachable").with("dependency", json!("redis")));
    }
    let dead = status::dead_letter_count(&app.pool).await.unwrap_or(0);
    METRICS.dead_letters.set(dead);
    if dead > 0 {
        return Err(NotReady::new("dead_letters")
            .with("dependency", json!("projector"))
            .with("deadCount", json!(dead)));
    }
    let lags = tokio::time::timeout(
        CHECK_TIMEOUT,
        status::lag(&app.pool, &mut conn, app.store.keys(), &PROJECTIONS),
    )
    .await;
    let Ok(Ok(lags)) = lags else {
        return Err(
            NotReady::new("projection_status_unavailable").with("dependency", json!("projector"))
        );
    };
    let worst = lags.iter().max_by_key(|l| l.lag_ms());
    if let Some(l) = worst.filter(|l| l.lag_ms() > app.cfg.ready_lag_max_ms) {
        return Err(NotReady::new("projection_lag")
            .with("dependency", json!("projector"))
            .with("projection", json!(l.projection))
            .with("lag_ms", json!(l.lag_ms())));
    }
    Ok(())
}

async fn ready(State(app): State<App>, style: ReadyStyle, extra: Option<ExtraCheck>) -> Response {
    let mut checked = check(&app).await;
    if let (Ok(()), Some(extra)) = (&checked, extra) {
        checked = tokio::time::timeout(CHECK_TIMEOUT, extra(app.clone()))
            .await
            .unwrap_or(Err("readiness_timeout"))
            .map_err(NotReady::new);
    }
    match (checked, style) {
        (Ok(()), ReadyStyle::Node) => Json(json!({ "ok": true })).into_response(),
        (Ok(()), ReadyStyle::Go) => Json(json!({ "ok": true, "ready": true })).into_response(),
        (Err(n), style) => {
            let mut body = Map::new();
            body.insert("ok".into(), json!(false));
            match style {
                ReadyStyle::Node if n.reason == "draining" => {
                    body.insert("draining".into(), json!(true));
                }
                ReadyStyle::Node => {
                    body.insert("error".into(), json!(n.reason));
                }
                ReadyStyle::Go => {
                    body.insert("ready".into(), json!(false));
                    body.insert("reason".into(), json!(n.reason));
                }
            }
            body.extend(n.extra);
            (StatusCode::SERVICE_UNAVAILABLE, Json(Value::Object(body))).into_response()
        }
    }
}

/// Whether the request carries `Bearer <expected>` (compared in constant time).
pub fn bearer_ok(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| bool::from(t.trim().as_bytes().ct_eq(expected.as_bytes())))
        .unwrap_or(false)
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let open = match &app.secrets.metrics_bearer {
        Some(b) => bearer_ok(&headers, b),
        // Published modes without a bearer never expose metrics (§4).
        None => app.secrets.mode == Mode::Dev,
    };
    if !open {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    }
    let mut conn = app.redis.clone();
    if let Ok(lags) = status::lag(&app.pool, &mut conn, app.store.keys(), &PROJECTIONS).await {
        for p in PROJECTIONS {
            let worst = lags
                .iter()
                .filter(|l| l.projection == p)
                .map(|l| l.lag_ms())
                .max()
                .unwrap_or(0);
            METRICS
                .projection_lag_ms
                .with_label_values(&[p])
                .set(worst as i64);
        }
    }
    if let Ok(dead) = status::dead_letter_count(&app.pool).await {
        METRICS.dead_letters.set(dead);
    }
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut buf) {
        return crate::http::ApiError::internal(e).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}
