//! The approval plane of the STS (sts.md §7.3, §7.5): `GET /approvals/{id}?wait=N`, the
//! unauthenticated status long-poll official clients use, and
//! `POST /approvals/{id}/decision`, a Federated user's decision with a session mandate.
//! The legacy `/step-up/…` names are aliases.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use serval_domain::catalog::runtime::{Decision, DecisionRefused, REASON_MAX_CHARS};
use serval_domain::catalog::step_up;
use serval_domain::catalog::{CatalogCommand, Entity, EntityData};
use serval_kit::freshness::{self, Dep};
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::catalog as read;
use serval_schema::projections;
use serval_streams::LogStream;

use crate::exchange::approval::hold_of;
use crate::exchange::error::StsError;
use crate::exchange::Appended;

/// Longest a status call is held open.
const MAX_WAIT_SECS: u64 = 25;
/// A held call re-reads the hold at least this often (a missed wake-up costs this much).
const REREAD: Duration = Duration::from_secs(5);
/// Ancestors of an authority record followed when comparing lineages.
const MAX_LINEAGE: usize = 32;
/// Status calls held open at once per process; past it a call answers at once (the
/// official clients poll again).
const MAX_WAITERS: usize = 1_024;

fn waiters() -> &'static tokio::sync::Semaphore {
    static W: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    W.get_or_init(|| tokio::sync::Semaphore::new(MAX_WAITERS))
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/approvals/{id}", get(status))
        .route("/approvals/{id}/decision", post(decide))
        .route("/step-up/{id}", get(status))
        .route("/step-up/{id}/decision", post(decide))
}

fn not_found() -> StsError {
    StsError::new(
        StatusCode::NOT_FOUND,
        "resource_not_found",
        "approval not found",
    )
}

/// A hold by id in any zone, as of every write acknowledged before this call.
async fn find(app: &App, id: &str) -> Result<Entity, StsError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(not_found());
    }
    let ids = [id.to_owned()];
    let projected = read::load_many(&app.pool, &ids)
        .await
        .map_err(ApiError::from)?
        .remove(id)
        .filter(|e| hold_of(e).is_some())
        .map(|e| e.zone_id);
    let zone = match projected {
        Some(zone) => zone,
        // Issued a moment ago, perhaps through another process: its zone is on record
        // in Redis, and the wait below brings that zone's read model up to the hold.
        None => {
            let key = app
                .store
                .keys()
                .approval_zone(&crate::exchange::approval::hold_digest(id));
            let zone: Option<String> = redis::AsyncCommands::get(&mut app.redis.clone(), key)
                .await
                .map_err(ApiError::from)?;
            zone.ok_or_else(not_found)?
        }
    };
    freshness::ensure(
        app,
        &[Dep::new(
            projections::CATALOG,
            LogStream::Zone(zone.clone()),
        )],
    )
    .await?;
    read::load(&app.pool, &zone, id)
        .await
        .map_err(ApiError::from)?
        .filter(|e| hold_of(e).is_some())
        .ok_or_else(not_found)
}

fn status_body(e: &Entity, now: DateTime<Utc>) -> Value {
    let (state, expires) = hold_of(e).map_or(("expired", now), |h| (h.state(now), h.expires_at));
    json!({
        "id": e.id,
        "state": state,
        "expires_at": expires.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

/// `wait`: a non-negative integer, capped.
fn wait_of(query: Option<&str>) -> Result<u64, StsError> {
    let bad = || StsError::new(StatusCode::BAD_REQUEST, "invalid_token", "invalid wait");
    let mut wait = 0;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "wait" {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            wait = v.parse::<u64>().unwrap_or(u64::MAX).min(MAX_WAIT_SECS);
        }
    }
    Ok(wait)
}

async fn status(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match held_status(&app, &id, query.as_deref()).await {
        Ok(v) => {
            let mut resp = Json(v).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.respond(""),
    }
}

/// Answers at once unless the hold is pending and `wait` asks to hold the call; then
/// every catalog commit of the hold's zone (a decision is one) re-reads it.
async fn held_status(app: &App, id: &str, query: Option<&str>) -> Result<Value, StsError> {
    let mut wait = wait_of(query)?;
    let mut e = find(app, id).await?;
    let _permit = if wait > 0 {
        let p = waiters().try_acquire().ok();
        if p.is_none() {
            wait = 0;
        }
        p
    } else {
        None
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut commits = app.visibility.subscribe(
        projections::CATALOG,
        &app.store.keys().log(&LogStream::Zone(e.zone_id.clone())),
    );
    loop {
        let now = Utc::now();
        let pending = hold_of(&e).is_some_and(|h| h.state(now) == "pending");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !pending || left.is_zero() {
            return Ok(status_body(&e, now));
        }
        // Wake on a commit, at the re-read bound, at the hold's expiry or at the deadline.
        let expiry = hold_of(&e)
            .and_then(|h| (h.expires_at - now).to_std().ok())
            .unwrap_or_default()
            + Duration::from_millis(10);
        let nap = left.min(REREAD).min(expiry);
        let _ = tokio::time::timeout(nap, commits.changed()).await;
        e = read::load(&app.pool, &e.zone_id, id)
            .await
            .map_err(ApiError::from)?
            .filter(|e| hold_of(e).is_some())
            .ok_or_else(not_found)?;
    }
}

struct DecisionBody {
    decision: Decision,
    binding: String,
    reason: Option<String>,
}

fn parse_body(raw: &[u8]) -> Result<DecisionBody, StsError> {
    let bad = |d: &str| StsError::new(StatusCode::BAD_REQUEST, "invalid_token", d);
    let v: Value = serde_json::from_slice(raw).map_err(|_| bad("malformed JSON body"))?;
    let decision = match v.get("decision").and_then(Value::as_str) {
        Some("approved") => Decision::Approve,
        Some("rejected") => Decision::Reject,
        _ => return Err(bad("decision must be approved or rejected")),
    };
    let binding = match v.get("binding") {
        Some(Value::String(b)) => b.clone(),
        _ => return Err(bad("binding is required")),
    };
    let reason = match v.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.len() <= REASON_MAX_CHARS => Some(r.clone()),
        Some(_) => return Err(bad("reason must be a string of at most 500 bytes")),
    };
    Ok(DecisionBody {
        decision,
        binding,
        reason,
    })
}

async fn decide(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match subject_decision(&app, &id, &headers, &body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut resp = e.respond("");
            if unauthorized {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"caracal-sts\""),
                );
            }
            resp
        }
    }
}

fn forbidden(d: &str) -> StsError {
    StsError::access_denied(StatusCode::FORBIDDEN, d)
}

/// §7.3's guards in their order, then one conditional append of the decided hold (its
/// `step_up_decided` frame is published from the log by the relay; the catalog commit
/// wakes the long-polls).
async fn subject_decision(
    app: &App,
    id: &str,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Value, StsError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            StsError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "missing bearer token",
            )
        })?
        .to_owned();
    let body = parse_body(raw)?;
    let e = find(app, id).await?;
    let zone = e.zone_id.clone();
    let invalid = || {
        StsError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "invalid session mandate",
        )
    };
    let claims = app
        .mandates
        .verify(app, &zone, &token, &["exp", "iat"])
        .await
        .map_err(|_| invalid())?;
    if claims.str("use") != Some("session") {
        return Err(invalid());
    }
    if claims.text("sub_type") != Some("user") {
        return Err(forbidden("approval decisions require a user session"));
    }
    let Some(h) = hold_of(&e).cloned() else {
        return Err(not_found());
    };
    let Some(application) = h.application_id.clone() else {
        return Err(forbidden("approval has no application"));
    };
    let now = Utc::now();
    let sub = claims.text("sub").unwrap_or_default().to_owned();
    let sid = claims.text("sid").unwrap_or_default().to_owned();
    let record = load_record(app, &zone, &sid).await?;
    let record_ok = record
        .as_ref()
        .is_some_and(|r| r.is_active(now) && r.subject_id == sub && r.record_type == "user")
        && claims.text("client_id") == Some(application.as_str());
    if !record_ok {
        return Err(forbidden(
            "session mandate is not an active record of this application",
        ));
    }
    if h.approver_class == "operator" {
        return Err(forbidden("this approval requires an operator decision"));
    }
    // The user the request acts for decides it: same `sub` from the same issuer.
    let anchor_text = |k: &str| {
        h.metadata_json
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(anchor) = &h.subject_anchor {
        let issuer = record
            .as_ref()
            .and_then(|r| r.federated_user_issuer.clone());
        if *anchor != sub || issuer != anchor_text("subject_anchor_issuer") {
            return Err(forbidden("approval belongs to another subject"));
        }
    }
    // Neither the requester's record nor the record of the user it acts for may decide.
    let requester = [
        Some(h.session_id.clone()),
        anchor_text("subject_anchor_record"),
    ];
    for r in requester.iter().flatten() {
        if shares_lineage(app, &zone, &sid, r).await? {
            return Err(forbidden("an approver cannot decide its own request"));
        }
    }
    if h.binding != body.binding || body.binding.is_empty() {
        return Err(StsError::access_denied(
            StatusCode::CONFLICT,
            "binding does not match the approval",
        ));
    }
    let approver = match h.privacy_mode.as_str() {
        "anonymous" => "subject:redacted".to_owned(),
        "pseudonymous" => {
            let mut key = app.secrets.audit_key.clone();
            key.extend_from_slice(zone.as_bytes());
            format!("subject:pseudonym:{}", step_up::pseudonym(&key, &sub))
        }
        _ => format!("subject:{sub}"),
    };
    let not_pending = || StsError::access_denied(StatusCode::CONFLICT, "approval is not pending");
    let next = h
        .decided_by_subject(body.decision, &approver, &sid, body.reason.as_deref(), now)
        .map_err(|r| match r {
            DecisionRefused::OperatorOnly => {
                forbidden("this approval requires an operator decision")
            }
            _ => not_pending(),
        })?;
    let mut changed = vec![
        "approver_session_id".to_owned(),
        "approver_subject_id".to_owned(),
        match body.decision {
            Decision::Approve => "satisfied_at",
            Decision::Reject => "rejected_at",
        }
        .to_owned(),
    ];
    if body.reason.is_some() {
        changed.push("decision_reason".into());
    }
    changed.sort();
    // The decision's request id is the approval's (§7.3), as its `step_up_decided` frame's.
    let appended = crate::exchange::append_catalog(
        app,
        &e.id,
        (&zone, &e.id),
        Some(&e),
        &CatalogCommand::Replace {
            data: EntityData::Approval(next.clone()),
            changed_fields: changed,
            secret_rotated: false,
        },
        &format!("subject:{sid}"),
    )
    .await;
    match appended {
        Ok(()) => {}
        // Another decision or the consumption got there first.
        Err(Appended::Conflict) => return Err(not_pending()),
        Err(Appended::Failed(e)) => return Err(e),
    }
    let decided = Entity {
        data: EntityData::Approval(next),
        ..e
    };
    Ok(status_body(&decided, now))
}

async fn load_record(
    app: &App,
    zone: &str,
    id: &str,
) -> Result<Option<serval_domain::catalog::AuthorityRecordData>, StsError> {
    if id.is_empty() {
        return Ok(None);
    }
    let e = read::load(&app.pool, zone, id)
        .await
        .map_err(ApiError::from)?;
    Ok(match e.map(|e| e.data) {
        Some(EntityData::AuthorityRecord(r)) => Some(r),
        _ => None,
    })
}

/// The record and its ancestors (`parent_id`), nearest first.
async fn lineage(app: &App, zone: &str, id: &str) -> Result<Vec<String>, StsError> {
    let mut out = Vec::new();
    let mut next = Some(id.to_owned()).filter(|s| !s.is_empty());
    while let Some(id) = next {
        if out.contains(&id) || out.len() >= MAX_LINEAGE {
            break;
        }
        let Some(r) = load_record(app, zone, &id).await? else {
            return Err(StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "authority lineage unknown",
            ));
        };
        out.push(id);
        next = r.parent_id;
    }
    Ok(out)
}

/// Whether the approver's record and the requester's share any record of their lineage.
async fn shares_lineage(
    app: &App,
    zone: &str,
    approver: &str,
    requester: &str,
) -> Result<bool, StsError> {
    if requester.is_empty() {
        return Ok(false);
    }
    let a = lineage(app, zone, approver).await?;
    let r = lineage(app, zone, requester).await?;
    Ok(a.iter().any(|x| r.contains(x)))
}
