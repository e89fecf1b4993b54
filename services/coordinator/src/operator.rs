//! Operator routes and the per-IP limit (coordinator.md §9, §15).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use serval_kit::http::ApiError;
use serval_kit::App;

use crate::auth::{authenticate, operator_only, Operator};

/// Every route but the exact `/health` counts against the per-IP minute budget.
pub async fn ip_limit(State(app): State<App>, req: Request, next: Next) -> Response {
    let exempt = req.uri().path() == "/health" && req.uri().query().is_none();
    if !exempt {
        let ip = crate::auth::client_ip(req.extensions().get::<ConnectInfo<SocketAddr>>());
        if serval_kit::rate_limit::minute_exceeded(
            &app,
            "coord-ip",
            &ip,
            app.cfg.coordinator_rate_limit_per_min,
        )
        .await
        {
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response();
        }
    }
    next.run(req).await
}

/// `POST /zones/:zoneId/outbox/:id/requeue`. Serval has no outbox table: topics are
/// published from the log by the relay, which never gives up on a message (a refused log
/// entry is a projection dead letter, see `/ready`), so no dead outbox row ever exists.
pub async fn requeue(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    if !p.admin() {
        return Err(ApiError::forbidden("coordinator_admin_required"));
    }
    if uuid::Uuid::parse_str(&zone).is_err() || uuid::Uuid::parse_str(&id).is_err() {
        return Err(crate::http::invalid_body(vec![crate::http::issue(
            "id",
            "Invalid uuid",
        )]));
    }
    Err(ApiError::not_found("dead_outbox_not_found"))
}

/// `GET /stats` (operator only).
pub async fn stats(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    operator_only(&app, &headers)?;
    let counts = serval_projector::sessions::coordinator_counts(&app.pool).await?;
    Ok(Json(json!({
        "invocations": counts.invocations,
        "sessions": counts.sessions,
        "delegations": counts.delegations,
        "outbox": {"pending": 0, "dead": 0},
        "idempotency": {"rows": Value::Null},
    })))
}
