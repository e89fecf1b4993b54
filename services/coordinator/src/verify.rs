//! `POST /v1/verify` (coordinator.md §8.1): language-neutral mandate verification, public,
//! rate limited per client IP, strict body, camelCase claims out.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use serval_domain::validation::is_valid_identifier;
use serval_kit::http::body::RawBody;
use serval_kit::mandate::MAX_TOKEN_CHARS;
use serval_kit::App;

const FIELDS: [&str; 6] = [
    "zone_id",
    "token",
    "authorization",
    "required_scope",
    "require_session",
    "require_delegation",
];
const REQUIRED: [&str; 12] = [
    "exp",
    "iat",
    "jti",
    "sub",
    "client_id",
    "sid",
    "root_sid",
    "use",
    "sub_type",
    "iss",
    "aud",
    "zone_id",
];
const MAX_HOPS: u64 = 10;

fn answer(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "valid": false, "error": error }))).into_response()
}

fn invalid_request() -> Response {
    answer(StatusCode::BAD_REQUEST, "invalid_request")
}

fn token_invalid() -> Response {
    answer(StatusCode::UNAUTHORIZED, "token_invalid")
}

pub async fn verify(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let ip = crate::auth::client_ip(Some(&conn));
    if serval_kit::rate_limit::minute_exceeded(
        &app,
        "coord-verify",
        &ip,
        app.cfg.verify_rate_limit_per_min,
    )
    .await
    {
        return answer(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
    let Ok(body) = crate::http::object(&headers, &raw) else {
        return invalid_request();
    };
    if body.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        return invalid_request();
    }
    let str_field = |k: &str| -> Result<Option<String>, ()> {
        match body.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(()),
        }
    };
    let bool_field = |k: &str| -> Result<bool, ()> {
        match body.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(()),
        }
    };
    let (
        Ok(Some(zone)),
        Ok(token),
        Ok(authorization),
        Ok(required_scope),
        Ok(req_session),
        Ok(req_delegation),
    ) = (
        str_field("zone_id"),
        str_field("token"),
        str_field("authorization"),
        str_field("required_scope"),
        bool_field("require_session"),
        bool_field("require_delegation"),
    )
    else {
        return invalid_request();
    };
    if !is_valid_identifier(&zone) {
        return invalid_request();
    }
    let token = token.or_else(|| {
        authorization.map(|a| a.strip_prefix("Bearer ").map(str::to_owned).unwrap_or(a))
    });
    let Some(token) = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) else {
        return answer(StatusCode::BAD_REQUEST, "missing_token");
    };
    if token.len() > MAX_TOKEN_CHARS {
        return token_invalid();
    }
    let Ok(claims) = app.mandates.verify(&app, &zone, &token, &REQUIRED).await else {
        return token_invalid();
    };
    let c = &claims.0;
    let text = |k: &str| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let ok = ["jti", "sub", "client_id", "sid", "root_sid"]
        .iter()
        .all(|k| text(k).is_some())
        && matches!(text("use"), Some("session" | "resource"))
        && matches!(text("sub_type"), Some("user" | "application"))
        && c.get("scope")
            .is_none_or(|s| s.as_str().is_some_and(|s| !s.is_empty()))
        && c.get("hop_count")
            .is_none_or(|h| h.as_u64().is_some_and(|h| h <= MAX_HOPS))
        && c.get("delegation_graph_epoch")
            .is_none_or(|h| h.as_u64().is_some());
    if !ok {
        return token_invalid();
    }
    if let Some(scope) = &required_scope {
        if !claims.scopes().iter().any(|s| s == scope) {
            return token_invalid();
        }
    }
    if req_session && text("agent_session_id").is_none() {
        return token_invalid();
    }
    if req_delegation && text("delegation_edge_id").is_none() {
        return token_invalid();
    }
    let mut out = Map::new();
    let names = [
        ("sub", "sub"),
        ("zone_id", "zoneId"),
        ("client_id", "clientId"),
        ("sid", "authorityRecordId"),
        ("root_sid", "rootAuthorityRecordId"),
        ("use", "use"),
        ("sub_type", "subType"),
        ("jti", "jti"),
        ("iat", "issuedAt"),
        ("exp", "expiresAt"),
        ("target", "targetResources"),
        ("agent_session_id", "sessionId"),
        ("delegation_edge_id", "delegationId"),
        ("source_session_id", "sourceSessionId"),
        ("target_session_id", "targetSessionId"),
        ("delegation_path", "delegationPath"),
        ("delegation_graph_epoch", "graphEpoch"),
        ("hop_count", "hopCount"),
    ];
    for (from, to) in names {
        if let Some(v) = c.get(from) {
            out.insert(to.into(), v.clone());
        }
    }
    out.insert(
        "scope".into(),
        c.get("scope").cloned().unwrap_or_else(|| json!("")),
    );
    if let Some(Value::Array(chain)) = c.get("delegation_chain") {
        let items: Vec<Value> = chain
            .iter()
            .map(|h| {
                let mut m = Map::new();
                for (from, to) in [
                    ("application_id", "applicationId"),
                    ("agent_session_id", "sessionId"),
                    ("delegation_edge_id", "delegationId"),
                ] {
                    if let Some(v) = h.get(from) {
                        m.insert(to.into(), v.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        out.insert("delegationChain".into(), Value::Array(items));
    }
    (
        StatusCode::OK,
        Json(json!({ "valid": true, "claims": out })),
    )
        .into_response()
}
