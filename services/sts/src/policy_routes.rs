//! The STS's internal policy routes (sts.md §14): status, simulate, and Serval's decide,
//! signed with the Gateway HMAC key.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};
use serval_domain::validation::is_valid_identifier;

use serval_kit::http::body::RawBody;
use serval_kit::http::pagination;
use serval_kit::http::ApiError;
use serval_kit::policy_engine::{compile_blocking, EngineError};
use serval_kit::state::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/internal/policy/status/{zone}", get(status))
        .route("/internal/policy/simulate", post(simulate))
        .route("/internal/policy/decide/{zone}", post(decide))
}

fn eval_failed(status: StatusCode, description: &str) -> ApiError {
    ApiError::new(status, "policy_eval_failed").description(description)
}

fn zone_param(uri: &Uri, prefix: &str) -> Result<String, ApiError> {
    let zone = uri.path().strip_prefix(prefix).unwrap_or_default();
    if !is_valid_identifier(zone) {
        return Err(ApiError::bad_request("invalid_request").description("invalid zone id"));
    }
    Ok(zone.to_owned())
}

fn json_body(raw: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(raw)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_request").description("body must be a JSON object")
        })
}

async fn status(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::internal_auth::verify(&app, &headers, &method, uri.path(), b"")?;
    let zone = zone_param(&uri, "/internal/policy/status/")?;
    Ok(Json(match app.engines.loaded(&zone) {
        Some(l) => json!({
            "zone_id": zone, "loaded": true, "policy_set_version_id": l.version_id,
            "manifest_sha256": l.manifest_sha256, "loaded_at": pagination::ts(l.loaded_at),
            "age_seconds": (Utc::now() - l.loaded_at).num_seconds().max(0),
        }),
        None => json!({ "zone_id": zone, "loaded": false }),
    }))
}

/// Compiles the given policies and evaluates one input (the Management API's bundle check).
async fn simulate(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    crate::internal_auth::verify(&app, &headers, &method, uri.path(), &raw)?;
    let body = json_body(&raw)?;
    let policies = body
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if policies.is_empty() {
        return Err(
            ApiError::bad_request("invalid_request").description("policies must not be empty")
        );
    }
    let docs: Vec<(String, String)> = policies
        .iter()
        .map(|p| {
            match (
                p.get("id").and_then(Value::as_str),
                p.get("content").and_then(Value::as_str),
            ) {
                (Some(id), Some(c)) => Ok((id.to_owned(), c.to_owned())),
                _ => Err(ApiError::bad_request("invalid_request")
                    .description("each policy needs a string id and content")),
            }
        })
        .collect::<Result<_, _>>()?;
    let bundle = compile_blocking(docs)
        .await
        .map_err(|e| eval_failed(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()))?;
    let input = body.get("input").cloned().unwrap_or_else(|| json!({}));
    let result = bundle.evaluate(&input).map_err(|_| {
        eval_failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy evaluation unavailable",
        )
    })?;
    Ok(Json(json!({
        "policy_set_id": body.get("policy_set_id"),
        "version_id": body.get("version_id"),
        "manifest_sha256": body.get("manifest_sha256"),
        "result": result,
    }))
    .into_response())
}

/// Evaluates `input` under the zone's active bundle — the decision the token exchange
/// makes. No active policy set: `503 policy_eval_failed` (fail closed).
async fn decide(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    crate::internal_auth::verify(&app, &headers, &method, uri.path(), &raw)?;
    let zone = zone_param(&uri, "/internal/policy/decide/")?;
    let body = json_body(&raw)?;
    let input = body.get("input").cloned().unwrap_or_else(|| json!({}));
    match app.engines.decide(&app.pool, &zone, &input).await {
        Ok(d) => Ok(Json(json!({
            "zone_id": zone,
            "policy_set_id": d.loaded.policy_set_id,
            "policy_set_version_id": d.loaded.version_id,
            "manifest_sha256": d.loaded.manifest_sha256,
            "result": d.result,
        }))),
        Err(EngineError::NoPolicy) => Err(eval_failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy evaluation unavailable: the zone has no active policy set",
        )),
        Err(EngineError::Postgres(e)) => Err(ApiError::from(e)),
        Err(e) => {
            tracing::warn!(zone = %zone, error = %e, "policy evaluation failed");
            Err(eval_failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "policy evaluation unavailable",
            ))
        }
    }
}
