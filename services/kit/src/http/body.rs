//! Request bodies: size limit, content type, JSON, strict schemas — each failure mapped to
//! the route's documented error code, never to a 500.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The raw body, with the limit applied (`413 payload_too_large` beyond it).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                        .description("request body exceeds the size limit")
                } else {
                    ApiError::framework(StatusCode::BAD_REQUEST, "request body could not be read")
                }
            })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    is_json_type(headers.get(header::CONTENT_TYPE))
}

/// Whether a `Content-Type` value names JSON (`application/json` or `…+json`).
pub fn is_json_type(content_type: Option<&axum::http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

/// A non-empty body with a content type must be JSON (`415` otherwise).
pub fn check_content_type(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    if !body.is_empty() && headers.contains_key(header::CONTENT_TYPE) && !is_json(headers) {
        return Err(ApiError::framework(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type; send application/json",
        ));
    }
    Ok(())
}

/// The path of the first key or string value of a JSON object body holding a NUL character.
///
/// Postgres text and jsonb cannot hold U+0000, so a NUL that reached an event would be
/// acknowledged and then refused by every projection; no field has a use for one, so every
/// JSON body is refused at the door instead.
pub fn nul_path(body: &Map<String, Value>) -> Option<Vec<String>> {
    fn in_map(map: &Map<String, Value>, path: &mut Vec<String>) -> bool {
        map.iter().any(|(k, item)| {
            path.push(k.clone());
            let found = k.contains('\0') || in_value(item, path);
            if !found {
                path.pop();
            }
            found
        })
    }
    fn in_value(v: &Value, path: &mut Vec<String>) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.push(i.to_string());
                let found = in_value(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            Value::Object(map) => in_map(map, path),
            _ => false,
        }
    }
    let mut path = Vec::new();
    in_map(body, &mut path).then_some(path)
}

fn refuse_nul(body: &Map<String, Value>, code: &str) -> Result<(), ApiError> {
    match nul_path(body) {
        None => Ok(()),
        Some(p) => Err(ApiError::bad_request(code)
            .description(format!("{} must not contain NUL characters", p.join(".")))),
    }
}

/// Parses a JSON object body for a route whose validation failures answer `400 <code>`.
/// Top-level `null` values are refused (no schema of these routes is nullable).
pub fn parse_object<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    code: &str,
) -> Result<T, ApiError> {
    check_content_type(headers, body)?;
    let value: Value = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|_| {
            ApiError::bad_request(code).description("request body is not valid JSON")
        })?
    };
    let Value::Object(map) = &value else {
        return Err(ApiError::bad_request(code).description("request body must be a JSON object"));
    };
    if let Some((k, _)) = map.iter().find(|(_, v)| v.is_null()) {
        return Err(ApiError::bad_request(code).description(format!("{k} must not be null")));
    }
    refuse_nul(map, code)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(code).description(e.to_string()))
}

/// Parses a JSON object body for a lenient schema (unknown fields are the caller's to
/// ignore); non-JSON or non-object bodies answer `400 <code>`.
pub fn parse_lenient(
    headers: &HeaderMap,
    body: &[u8],
    code: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    check_content_type(headers, body)?;
    if body.is_empty() {
        return Ok(Default::default());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => refuse_nul(&map, code).map(|()| map),
        Ok(_) => Err(ApiError::bad_request(code).description("request body must be a JSON object")),
        Err(_) => Err(ApiError::bad_request(code).description("request body is not valid JSON")),
    }
}
