//! The flat lifecycle façade of the seed (coordinator.md §8.2): thin translations onto the
//! zone routes, with the same authentication, errors and status codes, `Idempotency-Key`
//! forwarded and `Idempotency-Replayed` echoed, and a per-IP limit.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use serval_kit::http::body::RawBody;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::App;

use crate::http::{object, Fields};
use crate::{delegations, sessions};

async fn limited(app: &App, conn: Option<&ConnectInfo<SocketAddr>>) -> Result<(), ApiError> {
    let ip = crate::auth::client_ip(conn);
    if serval_kit::rate_limit::minute_exceeded(app, "coord-v1", &ip, app.cfg.v1_rate_limit_per_min)
        .await
    {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    }
    Ok(())
}

/// The body, its `zone_id`, and the fields the façade reads (`invalid_body` otherwise).
fn read(
    headers: &HeaderMap,
    raw: &[u8],
    required: &[&str],
) -> Result<(Map<String, Value>, String), ApiError> {
    let body = object(headers, raw)?;
    let mut f = Fields::new(&body);
    let zone = f.nonempty("zone_id", true).unwrap_or_default();
    for r in required {
        f.nonempty(r, true);
    }
    f.finish()?;
    Ok((body, zone))
}

/// The façade is not on the operator allowlist (§2.3): there the operator token is a JWT
/// like any other bearer, and fails as one.
fn refuse_operator(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (bearer, app.cfg.coordinator_token.as_deref()) {
        (Some(b), Some(t)) if !t.is_empty() && b == t => {
            Err(ApiError::unauthorized("invalid_token"))
        }
        _ => Ok(()),
    }
}

fn json_headers(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

fn pick(body: &Map<String, Value>, fields: &[(&str, &str)]) -> Bytes {
    let mut out = Map::new();
    for (from, to) in fields {
        if let Some(v) = body.get(*from) {
            out.insert((*to).to_owned(), v.clone());
        }
    }
    Bytes::from(Value::Object(out).to_string())
}

fn into(r: Result<impl IntoResponse, ApiError>) -> Response {
    match r {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

const SESSION_FIELDS: [(&str, &str); 7] = [
    ("application_id", "application_id"),
    ("subject_session_id", "subject_session_id"),
    ("lifecycle", "lifecycle"),
    ("labels", "labels"),
    ("ttl_seconds", "ttl_seconds"),
    ("metadata", "metadata"),
    ("parent_id", "parent_id"),
];

/// What every façade route does first: the per-IP limit, the operator token refused where
/// the zone route would accept it (`refuse_operator`), the body with its `zone_id` and
/// `required` fields.
async fn admit(
    app: &App,
    conn: &ConnectInfo<SocketAddr>,
    headers: &HeaderMap,
    raw: &[u8],
    required: &[&str],
    refuse_op: bool,
) -> Result<(Map<String, Value>, String), ApiError> {
    limited(app, Some(conn)).await?;
    if refuse_op {
        refuse_operator(app, headers)?;
    }
    read(headers, raw, required)
}

fn text(body: &Map<String, Value>, field: &str) -> String {
    body.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `POST /zones/{zone}/agents` with the translated body.
async fn start(
    app: App,
    rid: RequestId,
    headers: &HeaderMap,
    zone: String,
    body: Bytes,
) -> Response {
    into(
        sessions::start(
            State(app),
            Path(zone),
            rid,
            json_headers(headers),
            RawBody(body),
        )
        .await,
    )
}

/// `POST /zones/{zone}/delegations` with the translated body.
async fn create(
    app: App,
    rid: RequestId,
    headers: &HeaderMap,
    zone: String,
    body: Bytes,
) -> Response {
    into(
        delegations::create(
            State(app),
            Path(zone),
            rid,
            json_headers(headers),
            RawBody(body),
        )
        .await,
    )
}

/// `POST /v1/begin`.
pub async fn begin(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let required = ["application_id", "subject_session_id"];
    match admit(&app, &conn, &headers, &raw, &required, false).await {
        Ok((body, zone)) => start(app, rid, &headers, zone, pick(&body, &SESSION_FIELDS)).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/spawn-child`.
pub async fn spawn_child(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let required = [
        "application_id",
        "subject_session_id",
        "parent_agent_session_id",
    ];
    match admit(&app, &conn, &headers, &raw, &required, false).await {
        Ok((body, zone)) => {
            let mut fields: Vec<(&str, &str)> = SESSION_FIELDS[..6].to_vec();
            fields.push(("parent_agent_session_id", "parent_id"));
            start(app, rid, &headers, zone, pick(&body, &fields)).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/end`: `204` like the zone route.
pub async fn end(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let (body, zone) = match admit(&app, &conn, &headers, &raw, &["agent_session_id"], true).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let query = match body.get("reason") {
        None => None,
        Some(Value::String(r)) if (1..=256).contains(&r.chars().count()) => {
            Some(format!("reason={}", encode(r)))
        }
        Some(_) => {
            return crate::http::invalid_body(vec![crate::http::issue(
                "reason",
                "1-256 characters",
            )])
            .into_response()
        }
    };
    let mut h = headers.clone();
    h.remove(header::CONTENT_TYPE);
    let id = text(&body, "agent_session_id");
    into(
        sessions::terminate(
            State(app),
            Path((zone, id)),
            RawQuery(query),
            rid,
            h,
            RawBody(Bytes::new()),
        )
        .await,
    )
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const EXCHANGE_FIELDS: [(&str, &str); 7] = [
    ("issuer_application_id", "issuer_application_id"),
    ("receiver_application_id", "receiver_application_id"),
    ("resource_id", "resource_id"),
    ("scopes", "scopes"),
    ("constraints_json", "constraints_json"),
    ("expires_at", "expires_at"),
    ("source_session_id", "source_session_id"),
];

/// `POST /v1/exchange`: creates a Delegation (not an STS exchange).
pub async fn exchange(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let required = ["source_session_id", "target_session_id", "expires_at"];
    match admit(&app, &conn, &headers, &raw, &required, false).await {
        Ok((body, zone)) => {
            let mut fields = EXCHANGE_FIELDS.to_vec();
            fields.push(("target_session_id", "target_session_id"));
            create(app, rid, &headers, zone, pick(&body, &fields)).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/delegate-to-existing-agent`.
pub async fn delegate_to_existing(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    let required = ["from_agent_session_id", "to_agent_session_id", "expires_at"];
    match admit(&app, &conn, &headers, &raw, &required, false).await {
        Ok((body, zone)) => {
            let mut fields = EXCHANGE_FIELDS[..6].to_vec();
            fields.push(("from_agent_session_id", "source_session_id"));
            fields.push(("to_agent_session_id", "target_session_id"));
            create(app, rid, &headers, zone, pick(&body, &fields)).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/revoke-delegation`.
pub async fn revoke_delegation(
    State(app): State<App>,
    conn: ConnectInfo<SocketAddr>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Response {
    match admit(&app, &conn, &headers, &raw, &["delegation_edge_id"], true).await {
        Ok((body, zone)) => {
            let id = text(&body, "delegation_edge_id");
            into(delegations::revoke(State(app), Path((zone, id)), rid, headers).await)
        }
        Err(e) => e.into_response(),
    }
}
