//! The STS's error body (sts.md §1, §10): `{"error", "error_description", "requestId"}`,
//! empty members omitted.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use serval_kit::http::ApiError;

#[derive(Debug)]
pub struct StsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    /// Extra members (e.g. an approval hold's).
    pub extra: Map<String, Value>,
}

impl StsError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        StsError {
            status,
            code,
            description: description.into(),
            extra: Map::new(),
        }
    }

    pub fn access_denied(status: StatusCode, description: impl Into<String>) -> Self {
        Self::new(status, "access_denied", description)
    }

    pub fn invalid_client() -> Self {
        Self::access_denied(StatusCode::UNAUTHORIZED, "invalid client credentials")
    }

    /// Answers with `request_id` in the body and the `X-Request-Id` header.
    pub fn respond(self, request_id: &str) -> Response {
        let mut body = self.extra;
        body.insert("error".into(), Value::String(self.code.into()));
        if !self.description.is_empty() {
            body.insert("error_description".into(), Value::String(self.description));
        }
        if !request_id.is_empty() {
            body.insert("requestId".into(), Value::String(request_id.to_owned()));
        }
        let hold = self.code == "interaction_required";
        let mut resp = (self.status, Json(Value::Object(body))).into_response();
        if hold {
            resp.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer error=\"interaction_required\""),
            );
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }
}

/// Failures of the shared plumbing (Postgres, Redis, custody) are the STS's `500`; the
/// detail was logged where the `ApiError` was made. A read model that could not be brought
/// up to date (`503 read_model_unavailable`) is the STS's retryable `503 sts_unavailable`.
impl From<ApiError> for StsError {
    fn from(e: ApiError) -> Self {
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            return StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "the service's state could not be brought up to date; retry the request",
            );
        }
        StsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "The service failed to process the request",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_read_model_is_a_retryable_503_and_other_plumbing_a_500() {
        let e = StsError::from(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_model_unavailable",
        ));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "sts_unavailable")
        );
        let e = StsError::from(ApiError::internal("postgres went away"));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        );
        assert!(!e.description.contains("postgres"));
    }
}
