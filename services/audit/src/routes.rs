//! The Audit service's routes (events-and-audit.md §12): the ledger search in chain order and
//! the dead-letter queue of `caracal.audit.events` (list, one, replay), behind
//! `AUDIT_ADMIN_TOKEN` (unset: `404`; wrong: `401` with `WWW-Authenticate`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use serval_kit::App;
use serval_projector::audit as ledger;

use crate::checkpoint;
use serval_kit::http::ops::bearer_ok;
use serval_streams::topics;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// DLQ reasons whose frames may be re-offered to the ingestor (the others would fail again).
const REPLAYABLE: [&str; 2] = ["transient_exceeded_max_deliveries:", "pg_permanent_error:"];

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// `503 unavailable`: a store this route reads cannot answer.
fn unavailable(what: &str) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", what)
}

/// `None` when the bearer is right; otherwise the refusal.
fn refused(app: &App, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = app
        .cfg
        .audit_admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Some((StatusCode::NOT_FOUND, "404 page not found").into_response());
    };
    if bearer_ok(headers, token) {
        return None;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid audit admin token",
    );
    resp.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"caracal-audit\""),
    );
    Some(resp)
}

/// `limit` (default 100, at most 1000); `None` when it is not a positive integer.
fn limit(q: &HashMap<String, String>) -> Option<i64> {
    match q.get("limit") {
        None => Some(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| n.min(MAX_LIMIT)),
    }
}

fn bad_limit() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "limit must be a positive integer",
    )
}

/// `GET /api/audit/search`.
async fn search(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let Some(zone) = q.get("zone_id").filter(|z| !z.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "zone_id is required",
        );
    };
    let now = Utc::now();
    // An unparsable bound falls back to its default, as Caracal's does.
    let at = |k: &str| {
        q.get(k)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let since = at("since").unwrap_or(now - Duration::hours(24));
    let until = at("until").unwrap_or(now);
    let limit = q
        .get("limit")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map_or(DEFAULT_LIMIT, |n| n.min(MAX_LIMIT));
    let cursor = q
        .get("cursor")
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(0);
    let rows = match ledger::search(
        &app.pool,
        zone,
        (since, until),
        q.get("decision")
            .map(String::as_str)
            .filter(|d| !d.is_empty()),
        q.get("request_id")
            .map(String::as_str)
            .filter(|r| !r.is_empty()),
        cursor,
        limit,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "audit search failed");
            return unavailable("audit ledger unavailable");
        }
    };
    let next = rows
        .last()
        .map(|r| r.chain_seq.to_string())
        .unwrap_or_default();
    let events: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "Event": r.row.wire(),
                "IngestedAt": r.row.ingested_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                "ContentSHA256": r.row.content_sha256,
                "PrevContentSHA256": r.prev_content_sha256,
                "ChainHMAC": r.chain_hmac,
                "ChainSeq": r.chain_seq,
            })
        })
        .collect();
    Json(json!({
        "events": if events.is_empty() { Value::Null } else { Value::Array(events) },
        "next_cursor": next,
    }))
    .into_response()
}

type Entry = (String, HashMap<String, String>);

async fn dlq_range(
    app: &App,
    start: &str,
    end: &str,
    count: i64,
) -> redis::RedisResult<Vec<Entry>> {
    let key = app.store.keys().topic(topics::AUDIT_EVENTS_DLQ);
    let mut conn = app.redis.clone();
    redis::cmd("XRANGE")
        .arg(&key)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await
}

fn replayable(reason: &str) -> bool {
    REPLAYABLE.iter().any(|p| reason.starts_with(p))
}

/// One DLQ entry as the list shows it.
fn summary((id, f): &Entry) -> Value {
    let ms: i64 = id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let received = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let event: Map<String, Value> = f
        .get("data")
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    let pick = |k: &str| event.get(k).cloned().unwrap_or(Value::Null);
    let reason = f.get("reason").cloned().unwrap_or_default();
    json!({
        "id": id,
        "source_id": f.get("source_entry_id"),
        "reason": reason,
        "received_at": received.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "age_seconds": (Utc::now() - received).num_seconds().max(0),
        "replayable": replayable(&reason) && f.contains_key("data"),
        "event_id": pick("id"),
        "zone_id": pick("zone_id"),
        "event_type": pick("event_type"),
        "request_id": pick("request_id"),
        "decision": pick("decision"),
        "source_sig": f.get("sig"),
    })
}

/// `GET /api/audit/dlq`.
async fn dlq_list(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let Some(limit) = limit(&q) else {
        return bad_limit();
    };
    let start = q.get("start").map_or("-", String::as_str);
    match dlq_range(&app, start, "+", limit).await {
        Ok(entries) => Json(json!({
            "entries": entries.iter().map(summary).collect::<Vec<_>>(),
            "next_cursor": entries.last().map(|e| e.0.clone()).unwrap_or_default(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "DLQ unreadable");
            unavailable("dead-letter queue unavailable")
        }
    }
}

/// `GET /api/audit/dlq/{id}`.
async fn dlq_one(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    // Only a stream id is a valid range bound.
    let valid = id
        .split_once('-')
        .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
    if !valid {
        return error(StatusCode::NOT_FOUND, "not_found", "no such dead letter");
    }
    match dlq_range(&app, &id, &id, 1).await {
        Ok(entries) => match entries.first() {
            Some(e) => {
                let mut v = summary(e);
                v["source_event"] =
                    e.1.get("data")
                        .and_then(|d| serde_json::from_str(d).ok())
                        .unwrap_or(Value::Null);
                v["fields"] = json!(e.1);
                Json(v).into_response()
            }
            None => error(StatusCode::NOT_FOUND, "not_found", "no such dead letter"),
        },
        Err(e) => {
            tracing::error!(error = %e, "DLQ unreadable");
            unavailable("dead-letter queue unavailable")
        }
    }
}

/// `POST /api/audit/dlq/replay`: the oldest entries; replayable ones go back to
/// `caracal.audit.events` (`data` + `sig`, signed like every frame) and leave the DLQ.
async fn dlq_replay(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let Some(limit) = limit(&q) else {
        return bad_limit();
    };
    let entries = match dlq_range(&app, "-", "+", limit).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "DLQ unreadable");
            return unavailable("dead-letter queue unavailable");
        }
    };
    let topic = app.store.keys().topic(topics::AUDIT_EVENTS);
    let dlq = app.store.keys().topic(topics::AUDIT_EVENTS_DLQ);
    let mut conn = app.redis.clone();
    let (mut replayed, mut skipped) = (0u64, 0u64);
    for (id, f) in &entries {
        let reason = f.get("reason").map(String::as_str).unwrap_or_default();
        let Some(data) = f.get("data").filter(|_| replayable(reason)) else {
            skipped += 1;
            continue;
        };
        let fields = vec![
            ("id".to_owned(), f.get("id").cloned()),
            ("data".to_owned(), Some(data.clone())),
            ("sig".to_owned(), f.get("sig").cloned()),
        ];
        // Re-added first, deleted after: a crash between the two replays it twice, and the
        // ingestor drops the duplicate by its event id.
        if let Err(e) =
            topics::publish(&mut conn, &topic, Some(&app.secrets.streams_key), &fields).await
        {
            tracing::error!(error = %e, "DLQ replay failed");
            return unavailable("audit topic unavailable");
        }
        let _: redis::RedisResult<i64> = redis::cmd("XDEL")
            .arg(&dlq)
            .arg(id)
            .query_async(&mut conn)
            .await;
        replayed += 1;
    }
    Json(json!({"scanned": entries.len(), "replayed": replayed, "skipped": skipped}))
        .into_response()
}

/// `GET /api/audit/checkpoint/key` (public): the checkpoint signing key's public half.
async fn checkpoint_key(State(app): State<App>) -> Response {
    match checkpoint::signing_key(&app) {
        Some(k) => Json(json!({
            "algorithm": "Ed25519",
            "public_key": hex::encode(k.verifying_key().as_bytes()),
            "key_id": checkpoint::key_id(&k),
        }))
        .into_response(),
        None => no_checkpoint_key(),
    }
}

fn no_checkpoint_key() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "config_missing",
        "AUDIT_CHECKPOINT_KEY is not configured",
    )
}

/// The zone's leaves up to `size` (all when absent); refusals as answers.
async fn tree(
    app: &App,
    q: &HashMap<String, String>,
    size_field: &str,
) -> Result<(String, Vec<ledger::ChainedRow>), Response> {
    let Some(zone) = q.get("zone_id").filter(|z| !z.is_empty()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "zone_id is required",
        ));
    };
    let size = match q.get(size_field) {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("{size_field} must be a positive integer"),
                ))
            }
        },
    };
    let rows = checkpoint::rows(app, zone, size).await.map_err(|e| {
        tracing::error!(error = ?e, "ledger unreadable");
        unavailable("audit ledger unavailable")
    })?;
    if size.is_some_and(|s| s > rows.len() as i64) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{size_field} exceeds the ledger's size ({})", rows.len()),
        ));
    }
    Ok((zone.clone(), rows))
}

/// `GET /api/audit/checkpoint`: a signed tree head at `tree_size` (default: now).
async fn checkpoint_head(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let Some(key) = checkpoint::signing_key(&app) else {
        return no_checkpoint_key();
    };
    match tree(&app, &q, "tree_size").await {
        Ok((zone, rows)) => {
            Json(checkpoint::head(&key, &zone, &checkpoint::leaves(&rows))).into_response()
        }
        Err(r) => r,
    }
}

/// `GET /api/audit/proof/inclusion`: the audit path of `event_id` in the tree of
/// `tree_size` leaves.
async fn inclusion(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let (_, rows) = match tree(&app, &q, "tree_size").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(index) = q
        .get("event_id")
        .and_then(|id| rows.iter().position(|r| &r.row.id == id))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such event in that tree",
        );
    };
    let leaves = checkpoint::leaves(&rows);
    let path = serval_domain::merkle::inclusion_proof(&leaves, index).unwrap_or_default();
    Json(json!({
        "leaf_index": index,
        "tree_size": leaves.len(),
        "leaf_hash": hex::encode(leaves[index]),
        "audit_path": path.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /api/audit/proof/consistency`: the proof that the tree of `first` leaves is a
/// prefix of the tree of `second`.
async fn consistency(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let (_, rows) = match tree(&app, &q, "second").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let first = q
        .get("first")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let leaves = checkpoint::leaves(&rows);
    let Some(proof) = serval_domain::merkle::consistency_proof(&leaves, first) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "first must be between 1 and second",
        );
    };
    Json(json!({
        "first": first,
        "second": leaves.len(),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /api/audit/export`: the zone's ledger as JSON lines in chain order, each row with
/// every field its content digest covers (up to `tree_size` rows).
async fn export(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    match tree(&app, &q, "tree_size").await {
        Ok((_, rows)) => {
            let mut body = String::new();
            for r in &rows {
                body.push_str(&checkpoint::export_row(r).to_string());
                body.push('\n');
            }
            ([("content-type", "application/x-ndjson")], body).into_response()
        }
        Err(r) => r,
    }
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/audit/checkpoint/key", get(checkpoint_key))
        .route("/api/audit/checkpoint", get(checkpoint_head))
        .route("/api/audit/proof/inclusion", get(inclusion))
        .route("/api/audit/proof/consistency", get(consistency))
        .route("/api/audit/export", get(export))
        .route("/api/audit/search", get(search))
        .route("/api/audit/dlq", get(dlq_list))
        .route("/api/audit/dlq/replay", post(dlq_replay))
        .route("/api/audit/dlq/{id}", get(dlq_one))
        .layer(axum::middleware::from_fn(
            serval_kit::http::query::refuse_nul,
        ))
}
