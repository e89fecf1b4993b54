//! Delegation routes (coordinator.md §7): create with narrowing, the lists, one offered
//! edge, traverse, impact, effective authority, revoke with its cascade.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use serval_domain::catalog::{Entity, EntityData};
use serval_domain::delegation::{
    self, constraints, CreateEdge, DelegationEvent, DelegationRefusal, Edge, ResolvedResource,
    RevokedSubject,
};
use serval_kit::http::body::RawBody;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::write::Outcome;
use serval_kit::App;
use serval_projector::catalog::{self as read, Filter, Status};
use serval_projector::delegations::{self as q, Listing};
use serval_streams::EntryId;

use crate::auth::{authenticate, Operator, Principal};
use crate::cascade::{self, Ending};
use crate::http::{object, path_ids, Fields, ListQuery};
use crate::idempotency::{self, Receipt, DELEGATION_CREATE};
use crate::render::{self, session_data};
use crate::rows::{AtPosition, Range};
use crate::sessions::writer;
use crate::store::{self, Scope};

fn refusal(r: DelegationRefusal) -> ApiError {
    match r {
        DelegationRefusal::InvalidConstraint(code) => ApiError::bad_request(&code),
        DelegationRefusal::ParentNotActive => ApiError::forbidden("parent_delegation_not_active"),
        DelegationRefusal::ParentAmbiguous => ApiError::conflict("parent_delegation_ambiguous"),
        DelegationRefusal::ExceedsParent(dim) => {
            ApiError::forbidden("delegation_exceeds_parent_authority").with("detail", json!(dim))
        }
        DelegationRefusal::Cycle => ApiError::conflict("delegation_cycle_denied"),
        DelegationRefusal::Expired => ApiError::bad_request("delegation_expired"),
        DelegationRefusal::SelfDelegation => ApiError::bad_request("self_delegation_denied"),
        DelegationRefusal::AlreadyExists => ApiError::conflict("conflict"),
        DelegationRefusal::NotFound => ApiError::not_found("delegation_not_found"),
    }
}

/// A Session that can take part in a Delegation (§7.1): active (not suspended), a task
/// inside its TTL or a service with a future lease deadline.
fn endpoint_live(e: &Entity, now: DateTime<Utc>) -> Option<String> {
    let s = session_data(e)?;
    (s.status == "active" && s.is_live(render::started_at(e, s), now))
        .then(|| s.application_id.clone())
}

/// A live resource of the zone by row id or (`by_id` false) identifier only.
type Resolved = Option<(ResolvedResource, Vec<String>)>;

/// [`resolve_read`] kept per position (`rows.rs`).
async fn resolve(app: &App, zone: &str, key: &str, by_id: bool) -> Result<Resolved, ApiError> {
    static KEPT: std::sync::OnceLock<AtPosition<(String, bool), Resolved>> =
        std::sync::OnceLock::new();
    // Only what exists is kept: the key is the caller's, an answer is a row of the zone.
    KEPT.get_or_init(Default::default)
        .get_or_read(
            app,
            zone,
            (key.to_owned(), by_id),
            Range::Read,
            Option::is_some,
            resolve_read(app, zone, key, by_id),
        )
        .await
}

/// A Delegation's endpoints, kept per position (`rows.rs`).
async fn endpoints(
    app: &App,
    zone: &str,
    ids: [String; 2],
) -> Result<HashMap<String, Entity>, ApiError> {
    static KEPT: std::sync::OnceLock<AtPosition<[String; 2], HashMap<String, Entity>>> =
        std::sync::OnceLock::new();
    let read = read::load_many(&app.pool, &ids);
    let both = |r: &HashMap<String, Entity>| ids.iter().all(|id| r.contains_key(id));
    KEPT.get_or_init(Default::default)
        .get_or_read(app, zone, ids.clone(), Range::Read, both, async {
            Ok(read.await?)
        })
        .await
}

async fn resolve_read(app: &App, zone: &str, key: &str, by_id: bool) -> Result<Resolved, ApiError> {
    let as_resource = |e: Entity| match e.data {
        EntityData::Resource(r) if e.archived_at.is_none() => Some((
            ResolvedResource {
                id: e.id,
                identifier: r.identifier,
            },
            r.scopes,
        )),
        _ => None,
    };
    // Row ids are UUIDs; an identifier names its scheme (`resource://…`): ask the likely
    // form first, the other only when it misses.
    let by_identifier_first = key.contains("://") || !by_id;
    if by_id && !by_identifier_first {
        if let Some(r) = read::load(&app.pool, zone, key)
            .await?
            .and_then(as_resource)
        {
            return Ok(Some(r));
        }
    }
    let rows = read::list(
        &app.pool,
        zone,
        serval_domain::catalog::CatalogKind::Resource,
        Status::Live,
        &[Filter::Eq("identifier", key.to_owned())],
        None,
        1,
    )
    .await?;
    if let Some(r) = rows.into_iter().find_map(as_resource) {
        return Ok(Some(r));
    }
    if by_id && by_identifier_first {
        return Ok(read::load(&app.pool, zone, key)
            .await?
            .and_then(as_resource));
    }
    Ok(None)
}

/// `POST /zones/:zoneId/delegations`.
pub async fn create(
    State(app): State<App>,
    Path(zone): Path<String>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body = object(&headers, &raw)?;
    let p = crate::auth::authenticate_graph_write(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone])?;
    create_edge(&app, &p, &rid, &headers, &zone, &body).await
}

pub async fn create_edge(
    app: &App,
    p: &Principal,
    rid: &RequestId,
    headers: &HeaderMap,
    zone: &str,
    body: &Map<String, Value>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let mut f = Fields::new(body);
    let source = f.nonempty("source_session_id", true).unwrap_or_default();
    let target = f.nonempty("target_session_id", true).unwrap_or_default();
    let issuer = f
        .nonempty("issuer_application_id", true)
        .unwrap_or_default();
    let receiver = f
        .nonempty("receiver_application_id", true)
        .unwrap_or_default();
    let parent_edge_id = f.nonempty("parent_edge_id", false);
    let resource_key = f
        .string("resource_id", false, true)
        .filter(|s| !s.is_empty());
    let scopes = f
        .strings("scopes", 256, |s| {
            (s.is_empty()).then_some("scope must not be empty")
        })
        .unwrap_or_default();
    let constraints_obj = match f.raw("constraints") {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::bad_request("invalid_delegation_constraint")),
    };
    let constraints_json_obj = match f.raw("constraints_json") {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::bad_request("invalid_delegation_constraint")),
    };
    let top_expires = match f.string("expires_at", false, false) {
        Some(s) => match constraints::parse_utc(&s) {
            Some(t) => Some(t),
            None => {
                f.fail("expires_at", "Invalid datetime (UTC with Z suffix)");
                None
            }
        },
        None => None,
    };
    let ttl = f
        .int("ttl_seconds", 1, constraints::MAX_TTL_SECONDS.into())
        .map(|t| t as u32);
    f.finish()?;
    let mut normalized =
        constraints::normalize(constraints_json_obj.as_ref(), constraints_obj.as_ref(), ttl);
    let parsed = constraints::parse(&Value::Object(normalized.clone())).map_err(refusal)?;
    let expires_at = match (top_expires.or(parsed.expires_at), parsed.ttl_seconds) {
        (Some(t), _) => t,
        (None, Some(t)) => now + Duration::seconds(t.into()),
        (None, None) => return Err(ApiError::bad_request("delegation_expiry_required")),
    };
    if !p.may(&issuer, "coordinator.delegate_from", false) {
        return Err(ApiError::forbidden("issuer_ownership_required"));
    }
    if source == target {
        return Err(ApiError::bad_request("self_delegation_denied"));
    }
    let broad = resource_key.is_none() && parsed.resources.is_none();
    if broad {
        let allowed = p.admin()
            || p.has("coordinator.delegate_broad")
            || p.has(&format!("coordinator.delegate_broad:{issuer}"));
        if !allowed {
            return Err(ApiError::forbidden("broad_delegation_permission_required"));
        }
        constraints::mark_broad(&mut normalized);
    }
    let mut sorted_scopes: Vec<String> = scopes.clone();
    sorted_scopes.sort();
    sorted_scopes.dedup();
    let receipt = match idempotency::header_key(headers, &rid.0)? {
        Some((key, _)) => {
            let fingerprint = json!({
                "principal": {"client_id": p.client_id, "subject": p.subject},
                "source_session_id": source, "target_session_id": target,
                "issuer_application_id": issuer, "receiver_application_id": receiver,
                "parent_edge_id": parent_edge_id, "resource_id": resource_key,
                "scopes": sorted_scopes, "constraints": normalized,
                "expires_at": top_expires.map(render::ts), "ttl_seconds": ttl,
            });
            let r = Receipt::new(
                app,
                DELEGATION_CREATE,
                zone,
                &issuer,
                &key,
                false,
                &fingerprint,
            );
            r.check_limit(app).await?;
            if let Some(found) = r.peek(app).await? {
                return match found.answer {
                    Some((status, body)) => replay_edge(app, zone, status, &body).await,
                    None => replay_unrecorded(app, zone, found.entry).await,
                };
            }
            Some(r)
        }
        None => None,
    };
    let ends = endpoints(app, zone, [source.clone(), target.clone()]).await?;
    let owner = |id: &str| {
        ends.get(id)
            .filter(|e| e.zone_id == zone)
            .and_then(|e| endpoint_live(e, now))
    };
    let (Some(source_app), Some(target_app)) = (owner(&source), owner(&target)) else {
        return Err(ApiError::not_found("delegation_endpoint_not_found"));
    };
    if source_app != issuer || target_app != receiver {
        return Err(ApiError::conflict("delegation_application_mismatch"));
    }
    let mut resolved: Vec<ResolvedResource> = Vec::new();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut bound: Option<ResolvedResource> = None;
    if let Some(k) = &resource_key {
        let (r, scopes) = resolve(app, zone, k, true)
            .await?
            .ok_or_else(|| ApiError::not_found("resource_not_found"))?;
        bound = Some(r.clone());
        resolved.push(r);
        declared.extend(scopes);
    }
    if let Some(list) = &parsed.resources {
        let mut from_list = Vec::new();
        for k in list {
            let (r, scopes) = resolve(app, zone, k, false)
                .await?
                .ok_or_else(|| ApiError::not_found("resource_not_found"))?;
            from_list.push(r);
            declared.extend(scopes);
        }
        if let Some(b) = &bound {
            if !from_list.iter().any(|r| r.id == b.id) {
                return Err(ApiError::bad_request("delegation_resource_scope_mismatch"));
            }
        }
        for r in from_list {
            if !resolved.iter().any(|x| x.id == r.id) {
                resolved.push(r);
            }
        }
    }
    if !resolved.is_empty() && !sorted_scopes.iter().all(|s| declared.contains(s)) {
        return Err(ApiError::forbidden("delegation_scopes_exceed_resource"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let edge = Edge {
        id: id.clone(),
        zone_id: zone.to_owned(),
        source_session_id: source.clone(),
        target_session_id: target.clone(),
        issuer_application_id: issuer.clone(),
        receiver_application_id: receiver.clone(),
        parent_edge_id: None,
        resource_id: bound.as_ref().map(|b| b.id.clone()),
        resource_identifier: bound.as_ref().map(|b| b.identifier.clone()),
        scopes: sorted_scopes,
        constraints_json: Value::Object(normalized),
        status: "active".into(),
        expires_at,
        edge_version: 0,
        revoked_at: None,
        created_at: now,
        end_reason: None,
    };
    let cmd = CreateEdge {
        edge,
        resolved: resolved.clone(),
        requested_parent: parent_edge_id,
        mirror: false,
        now,
    };
    let w = writer(p, rid);
    let scope = Scope::Create {
        source: source.clone(),
        target: target.clone(),
    };
    let written = store::graph_write(
        app,
        &w,
        zone,
        scope,
        receipt.as_ref().map(|r| r.idem.clone()),
        |view| {
            let d = delegation::decide_create(&view.graph, &cmd).map_err(refusal)?;
            let created = match &d.event {
                delegation::DelegationEvent::EdgeCreated(c) => Some(c.edge.clone()),
                _ => None,
            };
            let extra = (d.parent.clone(), d.parents_considered.clone(), created);
            Ok(Some((d.event, extra)))
        },
    )
    .await
    .map_err(idempotency::map_conflict)?;
    let Some(((parent, considered, created), _, outcome)) = written else {
        return Err(ApiError::internal("delegation create decided nothing"));
    };
    match outcome {
        Outcome::Replay { status, body } => return replay_edge(app, zone, status, &body).await,
        Outcome::ReplayUnrecorded { .. } => {
            // A concurrent attempt with the same key created it: answer from its entry.
            let entry = match &receipt {
                Some(r) => r.peek(app).await?.and_then(|f| f.entry),
                None => None,
            };
            return replay_unrecorded(app, zone, entry).await;
        }
        Outcome::Applied { .. } => {}
    }
    if let Some(r) = &receipt {
        r.count(app).await;
    }
    // The edge as decided is the row the projection writes (`delegation::evolve`).
    let edge = created.ok_or_else(|| ApiError::internal("edge not decided"))?;
    let v = created_answer(&edge, parent.is_some(), &considered)?;
    let stream = serval_streams::LogStream::Zone(zone.to_owned());
    let idem = receipt.map(|r| r.idem);
    Ok(serval_kit::write::respond(app, &stream, &idem, StatusCode::CREATED, Some(v), true).await)
}

/// The `201` answer of a creation (§7.1), from the edge as created.
fn created_answer(edge: &Edge, narrowed: bool, considered: &[String]) -> Result<Value, ApiError> {
    let broad = edge.broad_reason().is_some();
    let mut v = render::edge(edge);
    let m = v
        .as_object_mut()
        .ok_or_else(|| ApiError::internal("edge shape"))?;
    m.remove("id");
    m.remove("broad_reason");
    m.insert("delegation_edge_id".into(), json!(edge.id));
    m.insert(
        "warnings".into(),
        if broad {
            json!(["resource_null_delegation_broadens_resource_matching"])
        } else {
            json!([])
        },
    );
    m.insert(
        "allow_reason".into(),
        json!([
            "same_zone_endpoints_active",
            if broad {
                "broad_delegation_elevated"
            } else {
                "resource_scope_checked"
            },
            if narrowed {
                "parent_authority_narrowed"
            } else {
                "source_authority_root"
            },
            "typed_constraints_validated",
        ]),
    );
    let c = edge.constraints().unwrap_or_default();
    let mut resources: Vec<String> = c.resources.clone().unwrap_or_default();
    if let Some(b) = &edge.resource_identifier {
        if !resources.contains(b) {
            resources.insert(0, b.clone());
        }
    }
    m.insert(
        "effective_authority".into(),
        json!({
            "source_session_id": edge.source_session_id,
            "target_session_id": edge.target_session_id,
            "parent_edge_id": edge.parent_edge_id,
            "resource_id": edge.resource_id,
            "resources": resources,
            "scopes": edge.scopes,
            "expires_at": render::ts(edge.expires_at),
            "max_hops": c.hops(),
            "ttl_seconds": c.ttl_seconds,
            "broad": broad,
            "parent_edges_considered": considered,
        }),
    );
    Ok(v)
}

/// The edge a creation's receipt points at, read from the log entry the creating append
/// wrote (its answer was never recorded: the first attempt died before answering).
async fn created_by_entry(app: &App, zone: &str, entry: EntryId) -> Result<Option<Edge>, ApiError> {
    let stream = serval_streams::LogStream::Zone(zone.to_owned());
    let key = app.store.keys().log(&stream);
    let mut conn = app.store.connection();
    let at = entry.to_string();
    let entries = serval_streams::read::read_range(&mut conn, &key, &at, &at, 1).await?;
    let Some((id, fields)) = entries.into_iter().next() else {
        return Ok(None);
    };
    let recorded =
        serval_streams::read::verify_entry(app.store.signer(), &key, &stream, id, &fields)
            .map_err(ApiError::internal)?;
    match recorded.decode(&serval_streams::codec::Upcasters::default()) {
        Ok(serval_domain::Event::Delegation(DelegationEvent::EdgeCreated(c))) => {
            Ok(q::load(&app.pool, zone, &c.edge.id).await?)
        }
        _ => Ok(None),
    }
}

/// Replays a creation whose answer was not recorded, while its edge is live.
async fn replay_unrecorded(
    app: &App,
    zone: &str,
    entry: Option<EntryId>,
) -> Result<Response, ApiError> {
    // As in `replay_edge`: the creation route does not wait for graph events.
    store::catch_up(app, zone).await;
    let edge = match entry {
        Some(e) => created_by_entry(app, zone, e).await?,
        None => None,
    };
    match edge {
        Some(edge) if edge.is_live(Utc::now()) => {
            let considered: Vec<String> = edge.parent_edge_id.iter().cloned().collect();
            let v = created_answer(&edge, edge.parent_edge_id.is_some(), &considered)?;
            Ok(idempotency::replayed(201, &v.to_string()))
        }
        _ => Err(idempotency::inactive()),
    }
}

async fn replay_edge(app: &App, zone: &str, status: u16, body: &str) -> Result<Response, ApiError> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let id = parsed
        .get("delegation_edge_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The creation route does not wait for graph events at authentication: the edge may
    // be a moment from its read model.
    store::catch_up(app, zone).await;
    if q::load(&app.pool, zone, id)
        .await?
        .is_some_and(|e| e.is_live(Utc::now()))
    {
        Ok(idempotency::replayed(status, body))
    } else {
        Err(idempotency::inactive())
    }
}

/// Session-scoped Delegation reads need the caller to own the Session (non-admins).
async fn reader_owns(app: &App, p: &Principal, zone: &str, session: &str) -> Result<(), ApiError> {
    if p.admin() {
        return Ok(());
    }
    let owned = read::load(&app.pool, zone, session)
        .await?
        .as_ref()
        .and_then(session_data)
        .is_some_and(|s| s.application_id == p.client_id);
    if owned {
        Ok(())
    } else {
        Err(ApiError::not_found("session_not_found"))
    }
}

async fn list_page(
    app: &App,
    p: &Principal,
    zone: &str,
    listing: Listing,
    raw: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let lq = ListQuery::parse(raw, &[])?;
    if let Some(c) = &lq.cursor {
        if q::load(&app.pool, zone, c).await?.is_none() {
            return Err(ApiError::bad_request("invalid_cursor"));
        }
    }
    let rows = q::page(
        &app.pool,
        zone,
        &listing,
        p.reader(),
        lq.cursor.as_deref(),
        lq.limit,
    )
    .await?;
    let items = rows.iter().map(render::edge).collect();
    Ok(Json(crate::http::page(
        items,
        rows.iter().map(|e| e.id.clone()).collect(),
        lq.limit,
    )))
}

/// `GET /zones/:zoneId/delegations/active`.
pub async fn active(
    State(app): State<App>,
    Path(zone): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone])?;
    list_page(&app, &p, &zone, Listing::Active, raw.as_deref()).await
}

/// `GET /zones/:zoneId/delegations/inbound/:sessionId`.
pub async fn inbound(
    State(app): State<App>,
    Path((zone, session)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &session])?;
    reader_owns(&app, &p, &zone, &session).await?;
    list_page(&app, &p, &zone, Listing::Inbound(session), raw.as_deref()).await
}

/// `GET /zones/:zoneId/delegations/outbound/:sessionId`.
pub async fn outbound(
    State(app): State<App>,
    Path((zone, session)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &session])?;
    reader_owns(&app, &p, &zone, &session).await?;
    list_page(&app, &p, &zone, Listing::Outbound(session), raw.as_deref()).await
}

/// `GET /zones/:zoneId/delegations/inbound/:sessionId/:id`.
pub async fn offered(
    State(app): State<App>,
    Path((zone, session, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &session, &id])?;
    let e = q::load(&app.pool, &zone, &id).await?;
    match e {
        Some(e)
            if e.is_live(Utc::now())
                && e.target_session_id == session
                && (p.admin() || e.receiver_application_id == p.client_id) =>
        {
            Ok(Json(json!({ "id": e.id, "status": "active" })))
        }
        _ => Err(ApiError::not_found("delegation_not_found")),
    }
}

fn admin_only(p: &Principal) -> Result<(), ApiError> {
    if p.admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("coordinator_admin_required"))
    }
}

/// `GET /zones/:zoneId/delegations/:id/traverse`.
pub async fn traverse(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    admin_only(&p)?;
    let view = store::load_view(&app, &zone, &Scope::Revoke { edge: id.clone() }).await?;
    Ok(Json(json!(delegation::traverse(
        &view.graph,
        &id,
        Utc::now()
    ))))
}

/// `GET /zones/:zoneId/delegations/:id/impact`.
pub async fn impact(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    admin_only(&p)?;
    let view = store::load_view(&app, &zone, &Scope::Revoke { edge: id.clone() }).await?;
    let imp = delegation::impact(&view.graph, &id, Utc::now())
        .ok_or_else(|| ApiError::not_found("delegation_not_found"))?;
    let rows = read::load_many(&app.pool, &imp.affected_sessions).await?;
    let mut records: Vec<String> = Vec::new();
    for s in &imp.affected_sessions {
        if let Some(r) = rows
            .get(s)
            .and_then(session_data)
            .and_then(|d| d.subject_authority_record_id.clone())
        {
            if !records.contains(&r) {
                records.push(r);
            }
        }
    }
    Ok(Json(json!({
        "edge_id": imp.edge_id,
        "affected_edges": imp.affected_edges,
        "affected_sessions": imp.affected_sessions,
        "affected_authority_records": records,
    })))
}

/// `GET /zones/:zoneId/agents/:sessionId/effective-authority`.
pub async fn effective_authority(
    State(app): State<App>,
    Path((zone, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &session])?;
    reader_owns(&app, &p, &zone, &session).await?;
    let now = Utc::now();
    let inbound: Vec<Edge> = q::active_inbound(&app.pool, &zone, &session)
        .await?
        .into_iter()
        .filter(|e| e.is_live(now))
        .collect();
    let refs: Vec<&Edge> = inbound.iter().collect();
    let ea = delegation::effective_authority(&refs);
    let mut v = json!({
        "agent_session_id": session,
        "inbound_edges": ea.inbound_edges,
        "effective_scopes": ea.effective_scopes,
        "effective_resources": ea.effective_resources,
        "effective_max_hops": ea.effective_max_hops,
        "effective_ttl_seconds": ea.effective_ttl_seconds,
        "earliest_expires_at": render::ts_opt(ea.earliest_expires_at),
    });
    if let Some(c) = ea.considered {
        v["effective_resource_ids"] = json!(c.effective_resource_ids);
        v["effective_resource_constrained"] = json!(c.effective_resource_constrained);
    }
    Ok(Json(v))
}

/// `PATCH /zones/:zoneId/delegations/:id/revoke`.
pub async fn revoke(
    State(app): State<App>,
    Path((zone, id)): Path<(String, String)>,
    rid: RequestId,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone, &id])?;
    Ok(Json(revoke_edge(&app, &p, &rid, &zone, &id).await?))
}

/// The revoke route after parsing (shared with `/v1/revoke-delegation`): §12.4.
pub async fn revoke_edge(
    app: &App,
    p: &Principal,
    rid: &RequestId,
    zone: &str,
    id: &str,
) -> Result<Value, ApiError> {
    let edge = q::load(&app.pool, zone, id)
        .await?
        .ok_or_else(|| ApiError::not_found("delegation_not_found"))?;
    if !p.may(
        &edge.issuer_application_id,
        "coordinator.delegate_from",
        true,
    ) {
        return Err(ApiError::forbidden("issuer_ownership_required"));
    }
    if edge.status != "active" {
        return Err(ApiError::not_found("delegation_not_found"));
    }
    let w = writer(p, rid);
    let now = Utc::now();
    // The subjects of the targets the walk reaches, read before deciding: the revocation
    // event carries them, so the relay announces them with the edge (§12.4).
    let preview = store::load_view(
        app,
        zone,
        &Scope::Revoke {
            edge: id.to_owned(),
        },
    )
    .await?;
    let mut targets: Vec<String> = Vec::new();
    for eid in delegation::revoke_walk(&preview.graph, id) {
        if let Some(e) = preview.graph.get(&eid) {
            if !targets.contains(&e.target_session_id) {
                targets.push(e.target_session_id.clone());
            }
        }
    }
    let rows = read::load_many(&app.pool, &targets).await?;
    let open: Vec<String> = targets
        .iter()
        .filter(|t| {
            rows.get(*t)
                .and_then(session_data)
                .is_some_and(|s| matches!(s.status.as_str(), "active" | "suspended"))
        })
        .cloned()
        .collect();
    // Each running target with its subject record and, unless the record is exempt (§12.1:
    // application-typed — an SDK's own lifecycle record — or still used by another open
    // Session), the record announced: a revocation must not let one application revoke
    // another's credentials.
    let mut running: std::collections::HashMap<String, (Option<String>, Option<String>)> =
        std::collections::HashMap::new();
    for t in &open {
        let record = rows
            .get(t)
            .and_then(session_data)
            .and_then(|s| s.subject_authority_record_id.clone());
        let announced = if cascade::announces(app, zone, record.as_deref(), &open).await? {
            record.clone()
        } else {
            None
        };
        running.insert(t.clone(), (record, announced));
    }
    let written = store::graph_write(
        app,
        &w,
        zone,
        Scope::Revoke {
            edge: id.to_owned(),
        },
        None,
        |view| {
            let mut ev = delegation::decide_revoke(&view.graph, id, now).map_err(refusal)?;
            let mut ended_targets: Vec<String> = Vec::new();
            if let DelegationEvent::EdgesRevoked(r) = &mut ev {
                for eid in &r.edge_ids {
                    let Some(e) = view.graph.get(eid) else {
                        continue;
                    };
                    let t = &e.target_session_id;
                    if let Some((_, announced)) = running.get(t) {
                        if !ended_targets.contains(t) {
                            ended_targets.push(t.clone());
                            r.revoked_subjects.push(RevokedSubject {
                                record_id: announced.clone(),
                                agent_session_id: t.clone(),
                            });
                        }
                    }
                }
            }
            Ok(Some((ev, ended_targets)))
        },
    )
    .await?;
    let Some((targets, _, Outcome::Applied { events, .. })) = written else {
        return Err(ApiError::not_found("delegation_not_found"));
    };
    let revoked = events
        .iter()
        .find_map(|e| match e {
            serval_domain::Event::Delegation(DelegationEvent::EdgesRevoked(r)) => {
                Some(r.edge_ids.len())
            }
            _ => None,
        })
        .unwrap_or_default();
    // §7.9: the distinct subject records of the still-running targets (exempt or not).
    let subjects = targets
        .iter()
        .filter_map(|t| running.get(t).and_then(|(record, _)| record.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if !targets.is_empty() {
        // The cascades read the edges this revocation ended.
        store::catch_up(app, zone).await;
    }
    let mut terminated = 0;
    for t in &targets {
        let ended =
            cascade::terminate(app, &w, zone, t, "delegation_revoked", Ending::Terminate).await?;
        if !ended.is_empty() {
            // The next target's exemptions (§12.1) must see this one's end.
            store::catch_up(app, zone).await;
        }
        terminated += ended.len();
    }
    Ok(json!({
        "revoked_edges": revoked,
        "affected_sessions": subjects,
        "terminated_sessions": terminated,
    }))
}
