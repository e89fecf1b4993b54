//! The Gateway's error body (gateway.md §12): `{"error","error_description","requestId"}`,
//! JSON, with the request id.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub code: String,
    pub description: String,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: impl Into<String>, description: String) -> Self {
        GatewayError {
            status,
            code: code.into(),
            description,
        }
    }

    pub fn invalid_token(status: StatusCode, description: &str) -> Self {
        Self::new(status, "invalid_token", description.to_owned())
    }

    pub fn internal(status: StatusCode, description: &str) -> Self {
        Self::new(status, "internal_error", description.to_owned())
    }

    pub fn respond(&self, request_id: &str) -> Response {
        let mut resp = (
            self.status,
            Json(json!({
                "error": self.code,
                "error_description": self.description,
                "requestId": request_id,
            })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }
}
