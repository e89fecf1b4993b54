//! Invocations (coordinator.md §6, §10.3): create (idempotency mandatory), get, list, and
//! the start / cancel / complete transitions.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};
use serval_domain::catalog::invocation::{self as inv, Refused};
use serval_domain::catalog::{CatalogKind, Entity, EntityData, InvocationData};
use serval_kit::http::body::RawBody;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::write::{Failure, Outcome};
use serval_kit::App;
use serval_projector::catalog as read;
use serval_streams::LogStream;

use crate::auth::{authenticate, Operator, Principal};
use crate::http::{object, path_ids, Fields, ListQuery};
use crate::idempotency::{self, Receipt, INVOCATION_CREATE};
use crate::render::{self, session_data};
use crate::sessions::writer;
use crate::store;

fn forbidden() -> ApiError {
    ApiError::forbidden("invoker_ownership_required")
}

fn not_found() -> ApiError {
    ApiError::not_found("invocation_not_found")
}

async fn rate_limited(app: &App, zone: &str, p: &Principal) -> Result<(), ApiError> {
    let subject = format!("{zone}\n{}", p.client_id);
    if serval_kit::rate_limit::minute_exceeded(
        app,
        "coord-invoke",
        &subject,
        app.cfg.invocation_rate_limit_per_min,
    )
    .await
    {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    }
    Ok(())
}

/// A source or target Session: an active task inside its TTL.
async fn task_session(app: &App, zone: &str, id: &str) -> Result<Entity, ApiError> {
    let e = read::load(&app.pool, zone, id)
        .await?
        .ok_or_else(|| ApiError::not_found("session_not_found"))?;
    let now = Utc::now();
    let ok = session_data(&e).is_some_and(|s| {
        s.status == "active" && !s.is_service() && s.is_live(render::started_at(&e, s), now)
    });
    if ok {
        Ok(e)
    } else {
        Err(ApiError::not_found("session_not_found"))
    }
}

/// `POST /zones/:zoneId/invocations`.
pub async fn create(
    State(app): State<App>,
    Path(zone): Path<String>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body = object(&headers, &raw)?;
    let p = authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone])?;
    let mut f = Fields::new(&body);
    let service_id = f.nonempty("service_id", true).unwrap_or_default();
    let source = f.string("source_session_id", false, true);
    let target = f.string("target_session_id", false, true);
    let key = f.string("idempotency_key", true, false).unwrap_or_default();
    if f.present("idempotency_key") && !idempotency::valid_key(&key) {
        f.fail("idempotency_key", "Invalid idempotency key");
    }
    let method = f.nonempty("method", true).unwrap_or_default();
    let params = f.raw("params").cloned().unwrap_or_else(|| json!({}));
    let metadata = f.object("metadata").unwrap_or_default();
    let timeout_ms = f.int("timeout_ms", 1, 900_000).unwrap_or(30_000) as u64;
    let retry = f.object("retry_policy").unwrap_or_default();
    let mut rf = Fields::new(&retry);
    let max_attempts = rf.int("max_attempts", 1, 10).unwrap_or(3) as u32;
    let backoff_ms = rf.int("backoff_ms", 0, 300_000).unwrap_or(1000) as u64;
    if rf.finish().is_err() {
        f.fail("retry_policy", "Invalid retry policy");
    }
    f.finish()?;
    let service = read::load(&app.pool, &zone, &service_id).await?;
    let service_app = match service.as_ref().map(|e| &e.data) {
        Some(EntityData::AgentService(a)) => a.application_id.clone(),
        _ => return Err(ApiError::not_found("agent_service_not_found")),
    };
    let mut owner = service_app.clone();
    if let Some(s) = &source {
        let e = task_session(&app, &zone, s).await?;
        owner = session_data(&e)
            .map(|d| d.application_id.clone())
            .unwrap_or(owner);
    }
    if let Some(t) = &target {
        task_session(&app, &zone, t).await?;
    }
    if !p.may(&owner, "coordinator.invoke_from", true) {
        return Err(forbidden());
    }
    let fingerprint = json!({
        "principal": {"client_id": p.client_id, "subject": p.subject},
        "service_id": service_id, "source_session_id": source, "target_session_id": target,
        "method": method, "params": params, "metadata": metadata, "timeout_ms": timeout_ms,
        "retry_policy": {"max_attempts": max_attempts, "backoff_ms": backoff_ms},
    });
    let receipt = Receipt::new(
        &app,
        INVOCATION_CREATE,
        &zone,
        &owner,
        &key,
        false,
        &fingerprint,
    );
    receipt.check_limit(&app).await?;
    let stream = LogStream::Zone(zone.clone());
    // A replay is answered before the rate limit (§6.1).
    if let Some(idempotency::Found {
        aggregate_id: id,
        answer,
        ..
    }) = receipt.peek(&app).await?
    {
        return match answer {
            Some((status, body)) => Ok(idempotency::replayed(status, &body)),
            None => replay_created(&app, &zone, &id).await,
        };
    }
    rate_limited(&app, &zone, &p).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let data = InvocationData {
        service_id: service_id.clone(),
        application_id: owner.clone(),
        service_application_id: service_app,
        source_session_id: source,
        target_session_id: target,
        method,
        params,
        metadata: Value::Object(metadata),
        status: "pending".into(),
        attempts: 0,
        max_attempts,
        timeout_ms,
        backoff_ms,
        deadline_at: None,
        cancel_requested_at: None,
        started_at: None,
        completed_at: None,
        error_json: Value::Null,
        idempotency_digest: Some(receipt.idem.key_digest.clone()),
    };
    let w = writer(&p, &rid);
    let outcome = store::create(
        &app,
        &w,
        &zone,
        &id,
        EntityData::Invocation(data),
        Vec::new(),
        Some(receipt.idem.clone()),
    )
    .await;
    let e = match outcome {
        Ok(o @ Outcome::Applied { .. }) => o
            .folded(None)
            .flatten()
            .ok_or_else(|| ApiError::internal("invocation not folded"))?,
        Ok(Outcome::Replay { status, body }) => return Ok(idempotency::replayed(status, &body)),
        Ok(Outcome::ReplayUnrecorded { aggregate_id, .. }) => {
            return replay_created(&app, &zone, &aggregate_id).await
        }
        Err(Failure::Api(e)) => return Err(idempotency::map_conflict(e)),
        Err(f) => return Err(f.into()),
    };
    receipt.count(&app).await;
    let EntityData::Invocation(i) = &e.data else {
        return Err(not_found());
    };
    let idem = Some(receipt.idem.clone());
    Ok(serval_kit::write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::CREATED,
        Some(render::invocation(&e, i, false)),
        true,
    )
    .await)
}

/// A creation whose answer was not recorded, answered from the read model.
async fn replay_created(app: &App, zone: &str, id: &str) -> Result<Response, ApiError> {
    let e = read::load(&app.pool, zone, id)
        .await?
        .ok_or_else(not_found)?;
    match &e.data {
        EntityData::Invocation(i) => Ok(idempotency::replayed(
            201,
            &render::invocation(&e, i, false).to_string(),
        )),
        _ => Err(not_found()),
    }
}

fn invocation_of(e: &Entity) -> Result<&InvocationData, ApiError> {
    match &e.data {
        EntityData::Invocation(i) => Ok(i),
        _ => Err(not_found()),
    }
}

/// `GET /zones/:zoneId/invocations/:id`.
pub async fn get(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone, &id])?;
    let e = read::load(&app.pool, &zone, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(render::invocation(&e, invocation_of(&e)?, false)))
}

/// `GET /zones/:zoneId/invocations`.
pub async fn list(
    State(app): State<App>,
    Path(zone): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone])?;
    let lq = ListQuery::parse(
        raw.as_deref(),
        &[
            ("status", |v| inv::STATUSES.contains(&v)),
            ("service_id", |v| !v.is_empty()),
            ("session_id", |v| !v.is_empty()),
        ],
    )?;
    if let Some(c) = &lq.cursor {
        let ok = matches!(
            read::load(&app.pool, &zone, c).await?.map(|e| e.data),
            Some(EntityData::Invocation(_))
        );
        if !ok {
            return Err(ApiError::bad_request("invalid_cursor"));
        }
    }
    let mut eq = Vec::new();
    if let Some(s) = lq.get("status") {
        eq.push(("status", s));
    }
    if let Some(s) = lq.get("service_id") {
        eq.push(("service_id", s));
    }
    let either = lq
        .get("session_id")
        .map(|s| ("source_session_id", "target_session_id", s));
    let rows = serval_projector::sessions::kind_page(
        &app.pool,
        &zone,
        CatalogKind::Invocation,
        &eq,
        either,
        lq.cursor.as_deref(),
        lq.limit,
    )
    .await?;
    let items = rows
        .iter()
        .filter_map(|e| match &e.data {
            EntityData::Invocation(i) => Some(render::invocation(e, i, true)),
            _ => None,
        })
        .collect();
    Ok(Json(crate::http::page(
        items,
        rows.iter().map(|e| e.id.clone()).collect(),
        lq.limit,
    )))
}

#[derive(Clone, Copy)]
enum Transition {
    Start,
    Cancel,
    Complete,
}

async fn transition(
    app: &App,
    zone: &str,
    id: &str,
    rid: &RequestId,
    headers: &HeaderMap,
    raw: &[u8],
    t: Transition,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(app, headers, zone, Operator::Refused).await?;
    path_ids(&[zone, id])?;
    rate_limited(app, zone, &p).await?;
    let body = object(headers, raw)?;
    let mut f = Fields::new(&body);
    let (reason, succeeded, error, metadata) = match t {
        Transition::Start => (None, false, Value::Null, None),
        Transition::Cancel => (f.nonempty("reason", false), false, Value::Null, None),
        Transition::Complete => {
            let status = f.one_of("status", &["succeeded", "failed"]);
            if !f.present("status") {
                f.fail("status", "Required");
            }
            let error = match f.raw("error") {
                None | Some(Value::Null) => Value::Null,
                Some(Value::Object(m)) => Value::Object(m.clone()),
                Some(_) => {
                    f.fail("error", "Expected object");
                    Value::Null
                }
            };
            let metadata = f.object("metadata");
            (
                None,
                status.as_deref() == Some("succeeded"),
                error,
                metadata,
            )
        }
    };
    f.finish()?;
    let e = read::load(&app.pool, zone, id)
        .await?
        .ok_or_else(not_found)?;
    let i = invocation_of(&e)?;
    if !p.may(&i.service_application_id, "coordinator.invoke_from", true) {
        return Err(forbidden());
    }
    let refused = std::sync::Mutex::new(None);
    let updated = store::update(app, &writer(&p, rid), zone, id, &["status"], |cur| {
        let EntityData::Invocation(i) = &cur.data else {
            return None;
        };
        let now = Utc::now();
        let next = match t {
            Transition::Start => i.started(now),
            Transition::Cancel => i.cancelled(now, reason.as_deref()),
            Transition::Complete => i.completed(now, succeeded, error.clone(), metadata.as_ref()),
        };
        match next {
            Ok(n) => Some(EntityData::Invocation(n)),
            Err(r) => {
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                None
            }
        }
    })
    .await?;
    let Some(e) = updated else {
        return Err(
            match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(Refused::NotStartable) => ApiError::conflict("invocation_not_startable"),
                Some(Refused::NotCancelable) => ApiError::conflict("invocation_not_cancelable"),
                Some(Refused::NotCompletable) => ApiError::conflict("invocation_not_completable"),
                None => not_found(),
            },
        );
    };
    Ok(Json(render::invocation(&e, invocation_of(&e)?, false)))
}

pub async fn start(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    transition(&app, &zone, &id, &rid, &headers, &raw, Transition::Start).await
}

pub async fn cancel(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    transition(&app, &zone, &id, &rid, &headers, &raw, Transition::Cancel).await
}

pub async fn complete(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    transition(&app, &zone, &id, &rid, &headers, &raw, Transition::Complete).await
}
