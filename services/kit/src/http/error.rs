//! The Caracal error body (management-api.md §2): `{"error": code, ...}`.
//!
//! Route errors are a bare `{"error": code}` unless a route documents more. Internal errors
//! never leak their detail: they are logged, and the client gets `internal_error` with the
//! request id (filled in by the request-id layer, which knows it).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Map<String, Value>,
}

/// Marks a response whose body the request-id layer completes with `requestId`.
#[derive(Debug, Clone, Copy)]
pub struct NeedsRequestId;

impl ApiError {
    pub fn new(status: StatusCode, code: &str) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(code.into()));
        ApiError { status, body }
    }

    pub fn bad_request(code: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code)
    }

    pub fn not_found(code: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code)
    }

    pub fn conflict(code: &str) -> Self {
        Self::new(StatusCode::CONFLICT, code)
    }

    pub fn forbidden(code: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, code)
    }

    pub fn unauthorized(code: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code)
    }

    /// The wire `error` code.
    pub fn code(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.body
            .insert("error_description".into(), Value::String(text.into()));
        self
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.body.insert(key.into(), value);
        self
    }

    /// A framework-level failure (§2): logged here, answered without detail.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            .description("The service failed to process the request")
    }

    /// A framework-level failure with its own status (malformed input, 413, 415).
    pub fn framework(status: StatusCode, description: &str) -> Self {
        Self::new(status, "internal_error").description(description)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Framework failures and schema-exception bodies (§2) carry the request id.
        let code = self.body.get("error").and_then(Value::as_str);
        let needs_id = code == Some("internal_error")
            || (code == Some("invalid_body") && self.body.contains_key("details"));
        let mut resp = (self.status, Json(Value::Object(self.body))).into_response();
        if needs_id {
            resp.extensions_mut().insert(NeedsRequestId);
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("postgres: {e}"))
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::internal(format!("redis: {e}"))
    }
}

/// The fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found")
}

pub fn issues(path: &[&str], message: &str) -> Value {
    json!({ "issues": [ { "path": path, "message": message } ] })
}
