//! Request ids (management-api.md §1): adopt a well-formed `x-request-id`, else mint a
//! UUID; echo it on every response; add the `/v1` security headers; complete internal
//! error bodies with `requestId`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use serval_domain::validation::is_valid_identifier;

use super::error::NeedsRequestId;
use crate::metrics::METRICS;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string())))
    }
}

pub async fn layer(State(service): State<&'static str>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_identifier(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let is_v1 = req.uri().path().starts_with("/v1/") || req.uri().path() == "/v1";
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if resp.extensions().get::<NeedsRequestId>().is_some() {
        resp = complete_internal_error(resp, &id).await;
    }
    let h = resp.headers_mut();
    // A handler that answers with its own id (the STS token endpoint adopts any inbound id
    // verbatim, sts.md §1) keeps it.
    if !h.contains_key(&X_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
    }
    if is_v1 {
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    METRICS
        .http_responses
        .with_label_values(&[service, class])
        .inc();
    resp
}

async fn complete_internal_error(resp: Response, id: &str) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("requestId".into(), Value::String(id.to_owned()));
    }
    let mut out = Json(value).into_response();
    *out.status_mut() = parts.status;
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
