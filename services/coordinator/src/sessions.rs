//! Session routes (coordinator.md §4, §5.3, §5.4): start, list, get, children, suspend,
//! resume, terminate, lease, heartbeat.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, Utc};
use serde_json::{json, Map, Value};
use serval_domain::catalog::runtime::LABEL_MAX_CHARS;
use serval_domain::catalog::{application::RegistrationMethod, Entity, EntityData, SessionData};
use serval_domain::delegation::{self, CreateEdge, Edge};
use serval_kit::http::body::RawBody;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::write::{Failure, Outcome};
use serval_kit::App;
use serval_projector::{catalog as read, delegations as edges, sessions as q};

use crate::auth::{authenticate, Operator, Principal};
use crate::cascade::{self, Ending};
use crate::http::{object, path_ids, Fields, ListQuery};
use crate::idempotency::{self, Receipt, SESSION_START};
use crate::render::{self, session_data, SessionShape};
use crate::store::{self, Scope, Writer};

pub const MAX_CHILDREN: i64 = 10;
pub const MAX_DEPTH: u32 = 10;
pub const MAX_LABELS: usize = 32;
pub const MAX_TTL: i64 = 86_400;
pub const DEFAULT_TTL: u64 = 3_600;

pub fn writer(p: &Principal, request_id: &RequestId) -> Writer {
    Writer {
        actor: if p.operator {
            "operator:coordinator".to_owned()
        } else {
            format!("application:{}", p.client_id)
        },
        request_id: Some(request_id.0.clone()),
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("session_not_found")
}

fn ownership() -> ApiError {
    ApiError::forbidden("application_ownership_required")
}

/// The start request after validation and defaults.
struct Start {
    application_id: String,
    subject: String,
    parent_id: Option<String>,
    lifecycle: String,
    labels: Vec<String>,
    ttl_seconds: Option<u64>,
    inherit: bool,
    inherit_parent_edge_id: Option<String>,
    metadata: Map<String, Value>,
}

fn parse_start(body: &Map<String, Value>, p: &Principal) -> Result<Start, ApiError> {
    let mut f = Fields::new(body);
    let application_id = f.nonempty("application_id", true);
    let subject = f.string("subject_session_id", false, false);
    let parent_id = f.string("parent_id", false, true);
    let lifecycle = f
        .one_of("lifecycle", &["task", "service"])
        .unwrap_or_else(|| "task".into());
    let labels = f
        .strings("labels", MAX_LABELS, |s| {
            let t = s.trim();
            if t.is_empty() || t.chars().count() > LABEL_MAX_CHARS {
                Some("each label must be 1-64 characters")
            } else {
                None
            }
        })
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_owned())
        .collect();
    let ttl = f.int("ttl_seconds", 1, MAX_TTL);
    if f.present("ttl_seconds") && lifecycle == "service" {
        f.fail(
            "ttl_seconds",
            "ttl_seconds is not allowed for service sessions",
        );
    }
    let inherit = f
        .one_of("parent_authority", &["inherit", "none"])
        .map(|a| a == "inherit")
        .unwrap_or(true);
    let inherit_parent_edge_id = f.nonempty("inherit_parent_edge_id", false);
    let metadata = f.object("metadata").unwrap_or_default();
    f.finish()?;
    let subject = subject
        .or_else(|| p.authority_record_id.clone())
        .ok_or_else(|| ApiError::bad_request("subject_session_id_required"))?;
    Ok(Start {
        application_id: application_id.unwrap_or_default(),
        subject,
        parent_id,
        ttl_seconds: (lifecycle == "task").then(|| ttl.map(|t| t as u64).unwrap_or(DEFAULT_TTL)),
        lifecycle,
        labels,
        inherit,
        inherit_parent_edge_id,
        metadata,
    })
}

fn is_dcr(e: &Entity) -> bool {
    matches!(&e.data, EntityData::Application(a) if a.registration_method == RegistrationMethod::Dcr)
}

/// A live application of the zone, or `404 application_not_found`.
pub async fn live_application(app: &App, zone: &str, id: &str) -> Result<Entity, ApiError> {
    let found = read::load(&app.pool, zone, id).await?;
    live_application_of(found.as_ref(), zone)
}

/// `found` as a live, unexpired application of `zone`.
fn live_application_of(found: Option<&Entity>, zone: &str) -> Result<Entity, ApiError> {
    match found {
        Some(e) if e.is_live() && e.zone_id == zone => match &e.data {
            EntityData::Application(a) if a.is_unexpired(Utc::now()) => Ok(e.clone()),
            _ => Err(ApiError::not_found("application_not_found")),
        },
        _ => Err(ApiError::not_found("application_not_found")),
    }
}

/// `POST /zones/:zoneId/agents`.
pub async fn start(
    State(app): State<App>,
    Path(zone): Path<String>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body = object(&headers, &raw)?;
    let p = authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone])?;
    let s = parse_start(&body, &p)?;
    if !p.may(&s.application_id, "coordinator.spawn_for", false) {
        return Err(ownership());
    }
    let receipt = match idempotency::header_key(&headers, &rid.0)? {
        Some((key, generated)) => {
            let fingerprint = json!({
                "principal": {"client_id": p.client_id, "subject": p.subject},
                "application_id": s.application_id,
                "subject_authority_record_id": s.subject,
                "parent_id": s.parent_id,
                "lifecycle": s.lifecycle,
                "labels": s.labels,
                "ttl_seconds": s.ttl_seconds,
                "parent_authority": if s.inherit { "inherit" } else { "none" },
                "inherit_parent_edge_id": s.inherit_parent_edge_id,
                "metadata": s.metadata,
            });
            let r = Receipt::new(
                &app,
                SESSION_START,
                &zone,
                &s.application_id,
                &key,
                generated,
                &fingerprint,
            );
            r.check_limit(&app).await?;
            // A key on record answers before the zone's state is looked at (§4.1 step 3).
            if let Some(idempotency::Found {
                aggregate_id: id,
                answer,
                ..
            }) = r.peek(&app).await?
            {
                return match answer {
                    Some((status, body)) => {
                        replay_if_live(&app, &zone, status, &body, "agent_session_id").await
                    }
                    None => replay_unrecorded(&app, &zone, &id).await,
                };
            }
            Some(r)
        }
        None => None,
    };
    let now = Utc::now();
    // The application and the subject record in one read.
    let rows = read::load_many(&app.pool, &[s.application_id.clone(), s.subject.clone()]).await?;
    let application = live_application_of(rows.get(&s.application_id), &zone)?;
    let dcr = is_dcr(&application);
    if dcr && s.lifecycle == "service" {
        return Err(ApiError::conflict("dcr_application_cannot_host_service"));
    }
    if dcr && s.parent_id.is_some() {
        return Err(ApiError::conflict("dcr_application_cannot_be_child"));
    }
    let record_live = matches!(
        rows.get(&s.subject).filter(|e| e.zone_id == zone).map(|e| &e.data),
        Some(EntityData::AuthorityRecord(r)) if r.is_active(now)
    );
    if !record_live {
        return Err(not_found().with(
            "detail",
            json!("subject authority record is not active in this zone"),
        ));
    }
    let (zone_live, app_live) = q::live_counts(&app.pool, &zone, &s.application_id, now).await?;
    if zone_live as u64 >= app.cfg.max_agents_per_zone {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_zone_limit_exceeded",
        ));
    }
    if dcr && app_live > 0 {
        return Err(ApiError::conflict("dcr_application_already_bound"));
    }
    if app_live as u64 >= app.cfg.max_agents_per_app {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit_exceeded",
        ));
    }
    let mut depth = 0;
    let mut mirror_of: Option<Edge> = None;
    if let Some(parent_id) = &s.parent_id {
        let parent = read::load(&app.pool, &zone, parent_id).await?;
        let Some((parent, ps)) = parent
            .as_ref()
            .and_then(|e| session_data(e).map(|s| (e, s)))
            .filter(|(_, ps)| ps.status == "active")
        else {
            return Err(ApiError::not_found("parent_not_found"));
        };
        let parent_app = live_application(&app, &zone, &ps.application_id).await;
        if parent_app.as_ref().is_ok_and(is_dcr) {
            return Err(ApiError::conflict("dcr_application_cannot_start_child"));
        }
        if ps.lifecycle == "task" && s.lifecycle == "service" {
            return Err(ApiError::conflict("task_session_cannot_start_service"));
        }
        if ps.application_id != s.application_id
            && !p.has(&format!("coordinator.spawn_under:{}", ps.application_id))
        {
            return Err(ApiError::forbidden("parent_ownership_required"));
        }
        if q::open_children(&app.pool, &zone, &parent.id).await? >= MAX_CHILDREN {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "session_children_limit_exceeded",
            ));
        }
        depth = ps.depth + 1;
        if depth > MAX_DEPTH {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "session_depth_limit_exceeded",
            ));
        }
        if s.inherit {
            mirror_of = inherited_edge(&app, &zone, parent_id, &s).await?;
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let lease = Duration::seconds(app.cfg.service_agent_lease_seconds as i64);
    let service = s.lifecycle == "service";
    let data = SessionData {
        application_id: s.application_id.clone(),
        parent_session_id: s.parent_id.clone(),
        status: "active".into(),
        lifecycle: s.lifecycle.clone(),
        labels: s.labels.clone(),
        depth,
        subject_authority_record_id: Some(s.subject.clone()),
        subject_id: None,
        federated_user_id: None,
        federated_user_issuer: None,
        last_active_at: now,
        terminated_at: None,
        termination_reason: None,
        ttl_seconds: s.ttl_seconds,
        metadata: Value::Object(s.metadata.clone()),
        last_heartbeat_at: service.then_some(now),
        heartbeat_deadline_at: service.then(|| now + lease),
        lease_generation: u64::from(service),
        suspension_reason: None,
        started_at: Some(now),
        revokes_subject: None,
    };
    let w = writer(&p, &rid);
    let outcome = store::create(
        &app,
        &w,
        &zone,
        &id,
        EntityData::Session(data),
        Vec::new(),
        receipt.as_ref().map(|r| r.idem.clone()),
    )
    .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(Failure::Api(e)) => return Err(idempotency::map_conflict(e)),
        Err(f) => return Err(f.into()),
    };
    let entity = match &outcome {
        Outcome::Replay { status, body } => {
            return replay_if_live(&app, &zone, *status, body, "agent_session_id").await
        }
        Outcome::ReplayUnrecorded { aggregate_id, .. } => {
            return replay_unrecorded(&app, &zone, aggregate_id).await
        }
        Outcome::Applied { .. } => outcome
            .folded(None)
            .flatten()
            .ok_or_else(|| ApiError::internal("started session not folded"))?,
    };
    let session_id = entity.id.clone();
    if let Some(r) = &receipt {
        r.count(&app).await;
    }
    let mut edge_id = Value::Null;
    if let Some(parent_edge) = mirror_of {
        match mirror(&app, &w, &zone, &parent_edge, &session_id, &s).await {
            Ok(id) => edge_id = json!(id),
            Err(e) => {
                // The start is undone: the Session ends before anyone could use it. It has
                // no child and no edge yet, so ending it is one update of the state it was
                // created with (no read model involved).
                let now = Utc::now();
                store::update_from(
                    &app,
                    &w,
                    &zone,
                    &session_id,
                    Some(entity.clone()),
                    &["status"],
                    |cur| {
                        let mut next = session_data(cur)?.terminated(now, "start_failed")?;
                        next.revokes_subject = Some(false);
                        Some(EntityData::Session(next))
                    },
                )
                .await?;
                return Err(e);
            }
        }
    }
    let sd = session_data(&entity).ok_or_else(|| ApiError::internal("not a session"))?;
    let mut v = render::session(&entity, sd, SessionShape::Start);
    v["delegation_edge_id"] = edge_id;
    let stream = serval_streams::LogStream::Zone(zone.clone());
    let idem = receipt.map(|r| r.idem);
    Ok(serval_kit::write::respond(&app, &stream, &idem, StatusCode::CREATED, Some(v), true).await)
}

/// A replay of a start whose first attempt died before its answer was recorded: answered
/// from the read model while the Session is live.
async fn replay_unrecorded(app: &App, zone: &str, id: &str) -> Result<Response, ApiError> {
    let e = read::load(&app.pool, zone, id).await?;
    match e.as_ref().and_then(|e| session_data(e).map(|s| (e, s))) {
        Some((e, s)) if matches!(s.status.as_str(), "active" | "suspended") => {
            let mut v = render::session(e, s, SessionShape::Start);
            v["delegation_edge_id"] = Value::Null;
            Ok(idempotency::replayed(201, &v.to_string()))
        }
        _ => Err(idempotency::inactive()),
    }
}

/// A replayed creation, only while the object it created is live (§14).
pub async fn replay_if_live(
    app: &App,
    zone: &str,
    status: u16,
    body: &str,
    id_field: &str,
) -> Result<Response, ApiError> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let id = parsed
        .get(id_field)
        .and_then(Value::as_str)
        .unwrap_or_default();
    let now = Utc::now();
    let live = if id_field == "agent_session_id" {
        matches!(read::load(&app.pool, zone, id).await?.as_ref().and_then(session_data),
            Some(s) if matches!(s.status.as_str(), "active" | "suspended"))
    } else {
        edges::load(&app.pool, zone, id)
            .await?
            .is_some_and(|e| e.is_live(now))
    };
    if live {
        Ok(idempotency::replayed(status, body))
    } else {
        Err(idempotency::inactive())
    }
}

/// §11.5: the one live edge into the parent whose receiver is the child's application.
async fn inherited_edge(
    app: &App,
    zone: &str,
    parent: &str,
    s: &Start,
) -> Result<Option<Edge>, ApiError> {
    let now = Utc::now();
    let inbound: Vec<Edge> = edges::all_inbound(&app.pool, zone, parent)
        .await?
        .into_iter()
        .filter(|e| e.receiver_application_id == s.application_id)
        .collect();
    if inbound.is_empty() {
        return Ok(None);
    }
    let candidates: Vec<Edge> = match &s.inherit_parent_edge_id {
        Some(named) => inbound.into_iter().filter(|e| &e.id == named).collect(),
        None => inbound,
    };
    let mut live: Vec<Edge> = candidates.into_iter().filter(|e| e.is_live(now)).collect();
    match live.len() {
        0 => Err(ApiError::conflict("inherit_parent_edge_not_active")),
        1 => Ok(live.pop()),
        _ => Err(ApiError::conflict("inherit_parent_edge_ambiguous")),
    }
}

/// Creates the mirrored edge parent → child (§11.5).
async fn mirror(
    app: &App,
    w: &Writer,
    zone: &str,
    parent_edge: &Edge,
    child: &str,
    s: &Start,
) -> Result<String, ApiError> {
    let now = Utc::now();
    let id = uuid::Uuid::now_v7().to_string();
    let edge = Edge {
        id: id.clone(),
        zone_id: zone.to_owned(),
        source_session_id: parent_edge.target_session_id.clone(),
        target_session_id: child.to_owned(),
        issuer_application_id: parent_edge.receiver_application_id.clone(),
        receiver_application_id: s.application_id.clone(),
        parent_edge_id: Some(parent_edge.id.clone()),
        resource_id: parent_edge.resource_id.clone(),
        resource_identifier: parent_edge.resource_identifier.clone(),
        scopes: parent_edge.scopes.clone(),
        constraints_json: parent_edge.constraints_json.clone(),
        status: "active".into(),
        expires_at: parent_edge.expires_at,
        edge_version: 0,
        revoked_at: None,
        created_at: now,
        end_reason: None,
    };
    let cmd = CreateEdge {
        edge,
        resolved: Vec::new(),
        requested_parent: Some(parent_edge.id.clone()),
        mirror: true,
        now,
    };
    let scope = Scope::Edges(vec![parent_edge.id.clone()]);
    store::graph_write(
        app,
        w,
        zone,
        scope,
        None,
        |view| match delegation::decide_create(&view.graph, &cmd) {
            Ok(d) => Ok(Some((d.event, ()))),
            Err(_) => Err(ApiError::conflict("inherit_parent_edge_not_active")),
        },
    )
    .await?;
    Ok(id)
}

fn session_filters() -> [crate::http::FilterRule; 4] {
    [
        ("status", |v| {
            serval_domain::catalog::runtime::SESSION_STATUSES.contains(&v)
        }),
        ("lifecycle", |v| v == "task" || v == "service"),
        ("application_id", |v| !v.is_empty()),
        ("label", |v| !v.is_empty()),
    ]
}

/// A cursor names a Session of the zone (any filters), else `400 invalid_cursor`.
async fn check_cursor(app: &App, zone: &str, cursor: &Option<String>) -> Result<(), ApiError> {
    if let Some(c) = cursor {
        let ok = read::load(&app.pool, zone, c)
            .await?
            .is_some_and(|e| session_data(&e).is_some());
        if !ok {
            return Err(ApiError::bad_request("invalid_cursor"));
        }
    }
    Ok(())
}

/// `GET /zones/:zoneId/agents`.
pub async fn list(
    State(app): State<App>,
    Path(zone): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone])?;
    let filters = session_filters();
    let lq = ListQuery::parse(raw.as_deref(), &filters)?;
    check_cursor(&app, &zone, &lq.cursor).await?;
    let f = q::SessionFilters {
        status: lq.get("status"),
        lifecycle: lq.get("lifecycle"),
        application_id: lq.get("application_id"),
        label: lq.get("label"),
    };
    let rows = q::page(&app.pool, &zone, &f, lq.cursor.as_deref(), lq.limit).await?;
    Ok(Json(sessions_page(&rows, lq.limit, SessionShape::Full)))
}

fn sessions_page(rows: &[Entity], limit: i64, shape: SessionShape) -> Value {
    let items = rows
        .iter()
        .filter_map(|e| session_data(e).map(|s| render::session(e, s, shape)))
        .collect();
    crate::http::page(items, rows.iter().map(|e| e.id.clone()).collect(), limit)
}

/// `GET /zones/:zoneId/agents/:id`.
pub async fn get(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    let e = read::load(&app.pool, &zone, &id)
        .await?
        .ok_or_else(not_found)?;
    let s = session_data(&e).ok_or_else(not_found)?;
    Ok(Json(render::session(&e, s, SessionShape::Full)))
}

/// `GET /zones/:zoneId/agents/:id/children`.
pub async fn children(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    let filters = session_filters();
    let lq = ListQuery::parse(raw.as_deref(), &filters)?;
    check_cursor(&app, &zone, &lq.cursor).await?;
    let rows = q::children(&app.pool, &zone, &id, lq.cursor.as_deref(), lq.limit).await?;
    Ok(Json(sessions_page(&rows, lq.limit, SessionShape::Child)))
}

/// Loads a Session for a mutation and checks §4.5's authorization.
async fn owned_session(app: &App, p: &Principal, zone: &str, id: &str) -> Result<Entity, ApiError> {
    let e = read::load(&app.pool, zone, id)
        .await?
        .ok_or_else(not_found)?;
    let s = session_data(&e).ok_or_else(not_found)?;
    if !p.may(&s.application_id, "coordinator.spawn_for", true) {
        return Err(ownership());
    }
    Ok(e)
}

/// `PATCH /zones/:zoneId/agents/:id/suspend`.
pub async fn suspend(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    owned_session(&app, &p, &zone, &id).await?;
    let n = cascade::suspend(&app, &writer(&p, &rid), &zone, &id, "requested").await?;
    if n == 0 {
        return Err(ApiError::conflict("session_not_found_or_not_active"));
    }
    Ok(Json(json!({ "suspended": n })))
}

/// `PATCH /zones/:zoneId/agents/:id/resume`.
pub async fn resume(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    let e = owned_session(&app, &p, &zone, &id).await?;
    if session_data(&e).map(|s| s.status.as_str()) != Some("suspended") {
        return Err(ApiError::conflict("session_not_found_or_not_suspended"));
    }
    let n = cascade::resume(&app, &writer(&p, &rid), &zone, &id).await?;
    if n == 0 {
        return Err(ApiError::conflict("session_not_found_or_not_suspended"));
    }
    Ok(Json(json!({ "resumed": n })))
}

/// `DELETE /zones/:zoneId/agents/:id`.
pub async fn terminate(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let body = object(&headers, &body).map_err(|_| ApiError::bad_request("invalid_body"))?;
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    let params = crate::http::query_map(raw.as_deref())?;
    let reason = match params.get("reason") {
        None => "requested".to_owned(),
        Some(r) if (1..=256).contains(&r.chars().count()) => r.clone(),
        Some(_) => return Err(ApiError::bad_request("invalid_query")),
    };
    let generation = match body.get("lease_generation") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => return Err(ApiError::bad_request("invalid_body")),
        },
    };
    terminate_session(&app, &p, &rid, &zone, &id, &reason, generation).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The terminate route's rules after parsing (shared with `/v1/end`).
pub async fn terminate_session(
    app: &App,
    p: &Principal,
    rid: &RequestId,
    zone: &str,
    id: &str,
    reason: &str,
    generation: Option<u64>,
) -> Result<(), ApiError> {
    let e = read::load(&app.pool, zone, id)
        .await?
        .ok_or_else(not_found)?;
    let s = session_data(&e).ok_or_else(not_found)?;
    if !matches!(s.status.as_str(), "active" | "suspended") {
        return Err(not_found());
    }
    if !p.may(&s.application_id, "coordinator.spawn_for", true) {
        return Err(ownership());
    }
    if s.is_service() && !p.admin() {
        match generation {
            None => return Err(ApiError::bad_request("lease_generation_required")),
            Some(g) if g != s.lease_generation => {
                return Err(ApiError::conflict("session_lease_fenced"))
            }
            Some(_) => {}
        }
    }
    let fence = (s.is_service() && !p.admin()).then_some(s.lease_generation);
    let ended = cascade::terminate_fenced(
        app,
        &writer(p, rid),
        zone,
        id,
        reason,
        Ending::Terminate,
        fence,
    )
    .await?;
    if ended.is_empty() {
        return Err(match fence {
            Some(_) => ApiError::conflict("session_lease_fenced"),
            None => not_found(),
        });
    }
    Ok(())
}

/// Checks shared by lease and heartbeat (§5.3, §5.4) after the Session's state checks:
/// the bearer's `sid` is an active application-typed record of the Session's application.
async fn lease_holder(
    app: &App,
    p: &Principal,
    zone: &str,
    s: &SessionData,
) -> Result<(), ApiError> {
    if p.operator || p.admin() && p.authority_record_id.is_none() {
        return Ok(());
    }
    let sid = p
        .authority_record_id
        .as_deref()
        .ok_or_else(|| ApiError::unauthorized("authority_record_required"))?;
    let ok = matches!(
        read::load(&app.pool, zone, sid).await?.map(|e| e.data),
        Some(EntityData::AuthorityRecord(r))
            if r.is_active(Utc::now()) && r.record_type == "application" && r.subject_id == s.application_id
    );
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized("identity_revoked"))
    }
}

/// §5.3: a user-typed subject record no longer active ends the subtree, and the call is
/// `409 session_subject_inactive`.
async fn end_if_subject_inactive(
    app: &App,
    w: &Writer,
    zone: &str,
    id: &str,
    s: &SessionData,
) -> Result<(), ApiError> {
    let Some(record) = &s.subject_authority_record_id else {
        return Ok(());
    };
    let inactive = matches!(
        read::load(&app.pool, zone, record).await?.map(|e| e.data),
        Some(EntityData::AuthorityRecord(r)) if r.record_type == "user" && !r.is_active(Utc::now())
    );
    if inactive {
        cascade::terminate(
            app,
            w,
            zone,
            id,
            "subject_authority_inactive",
            Ending::Terminate,
        )
        .await?;
        return Err(ApiError::conflict("session_subject_inactive"));
    }
    Ok(())
}

/// §5.3/§5.4: a lease past its deadline suspends the subtree, and the call is
/// `409 session_lease_expired`.
async fn suspend_if_lease_lost(
    app: &App,
    w: &Writer,
    zone: &str,
    id: &str,
    s: &SessionData,
) -> Result<(), ApiError> {
    if s.heartbeat_deadline_at.is_some_and(|d| d <= Utc::now()) {
        cascade::suspend(app, w, zone, id, cascade::LEASE_LOST).await?;
        return Err(ApiError::conflict("session_lease_expired"));
    }
    Ok(())
}

/// `POST /zones/:zoneId/agents/:id/lease`.
pub async fn lease(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone, &id])?;
    let e = owned_session(&app, &p, &zone, &id).await?;
    let s = session_data(&e).ok_or_else(not_found)?.clone();
    if !s.is_service() {
        return Err(ApiError::conflict("session_not_service"));
    }
    if s.status == "suspended" {
        return Err(ApiError::conflict("session_suspended"));
    }
    if s.status != "active" {
        return Err(ApiError::conflict("session_not_live"));
    }
    let w = writer(&p, &rid);
    end_if_subject_inactive(&app, &w, &zone, &id, &s).await?;
    suspend_if_lease_lost(&app, &w, &zone, &id, &s).await?;
    lease_holder(&app, &p, &zone, &s).await?;
    let lease = Duration::seconds(app.cfg.service_agent_lease_seconds as i64);
    let updated = store::update(&app, &w, &zone, &id, &["lease_generation"], |cur| {
        let s = session_data(cur)?;
        (s.status == "active").then(|| EntityData::Session(s.leased(Utc::now(), lease)))
    })
    .await?
    .ok_or_else(|| ApiError::conflict("session_not_live"))?;
    let s = session_data(&updated).ok_or_else(not_found)?;
    Ok(Json(json!({
        "status": s.status,
        "heartbeat_deadline_at": render::ts_opt(s.heartbeat_deadline_at),
        "lease_generation": s.lease_generation,
    })))
}

/// `POST /zones/:zoneId/agents/:id/heartbeat`.
pub async fn heartbeat(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Json<Value>, ApiError> {
    let body = object(&headers, &raw)?;
    let p = authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone, &id])?;
    let mut f = Fields::new(&body);
    let generation = f.int("lease_generation", 1, i64::MAX);
    if !f.present("lease_generation") {
        f.fail("lease_generation", "Required");
    }
    let health = f
        .one_of("status", &serval_domain::catalog::agent_service::HEALTH)
        .unwrap_or_else(|| "healthy".into());
    let service_id = f.nonempty("service_id", false);
    let active_invocations = f.int("active_invocations", 0, i64::MAX).unwrap_or(0);
    let metadata = f.object("metadata").unwrap_or_default();
    f.finish()?;
    let generation = generation.unwrap_or(0) as u64;
    let e = owned_session(&app, &p, &zone, &id).await?;
    let s = session_data(&e).ok_or_else(not_found)?.clone();
    if !matches!(s.status.as_str(), "active" | "suspended") {
        return Err(ApiError::conflict("session_not_live"));
    }
    if !s.is_service() {
        return Err(ApiError::conflict("session_not_service"));
    }
    let w = writer(&p, &rid);
    end_if_subject_inactive(&app, &w, &zone, &id, &s).await?;
    if generation != s.lease_generation {
        return Err(ApiError::conflict("session_lease_fenced"));
    }
    if s.status == "active" {
        suspend_if_lease_lost(&app, &w, &zone, &id, &s).await?;
    }
    lease_holder(&app, &p, &zone, &s).await?;
    let service = match &service_id {
        Some(sid) => {
            let reg = read::load(&app.pool, &zone, sid).await?;
            match reg.as_ref().map(|e| &e.data) {
                Some(EntityData::AgentService(a)) if a.application_id == s.application_id => reg,
                _ => return Err(ApiError::not_found("agent_service_not_found")),
            }
        }
        None => None,
    };
    let lease = Duration::seconds(app.cfg.service_agent_lease_seconds as i64);
    let updated = store::update(&app, &w, &zone, &id, &["heartbeat_deadline_at"], |cur| {
        let s = session_data(cur)?;
        (s.lease_generation == generation && matches!(s.status.as_str(), "active" | "suspended"))
            .then(|| EntityData::Session(s.beat(Utc::now(), lease)))
    })
    .await?
    .ok_or_else(|| ApiError::conflict("session_lease_fenced"))?;
    let mut service_out = Value::Null;
    if let Some(reg) = service {
        let reg_id = reg.id.clone();
        let done = store::update(&app, &w, &zone, &reg_id, &["health"], |cur| {
            match &cur.data {
                EntityData::AgentService(a) => {
                    let mut next = a.clone();
                    next.health = health.clone();
                    next.last_heartbeat_at = Some(Utc::now());
                    if let Value::Object(m) = &mut next.metadata_json {
                        for (k, v) in &metadata {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                    Some(EntityData::AgentService(next))
                }
                _ => None,
            }
        })
        .await?;
        if let Some(r) = done {
            if let EntityData::AgentService(a) = &r.data {
                service_out = render::service(&r, a);
            }
        }
    }
    let s = session_data(&updated).ok_or_else(not_found)?;
    Ok(Json(json!({
        "agent": {
            "id": updated.id,
            "zone_id": updated.zone_id,
            "application_id": s.application_id,
            "status": s.status,
            "last_active_at": render::ts(s.last_active_at),
            "last_heartbeat_at": render::ts_opt(s.last_heartbeat_at),
            "heartbeat_deadline_at": render::ts_opt(s.heartbeat_deadline_at),
            "lease_generation": s.lease_generation,
        },
        "service": service_out,
        "active_invocations": active_invocations,
    })))
}
