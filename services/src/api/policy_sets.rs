//! Policy sets (management-api.md §11): sets, immutable versions, activation, activation
//! status and simulation. Every set write is a command on the zone's catalog aggregate
//! (`serval_domain::policy::policy_sets`), decided on one snapshot of the read model.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use serval_domain::policy::bundle::{self as bundle_rules, INPUT_SCHEMA_VERSION};
use serval_domain::policy::policy_sets::{
    self, catalog_id, CheckedManifest, ManifestError, PolicySetCommand, PolicySetContext,
    PolicySetError, PolicySetEvent,
};
use serval_domain::policy::BundleError;
use serval_domain::validation::is_valid_identifier;
use serval_domain::{Actor, Event};
use serval_projector::policies::{self as read, PolicySetRow, SetVersionRow};
use serval_schema::projections::POLICIES;
use serval_streams::append::Idempotency;
use serval_streams::{AppendRequest, Envelope, LogStream};

use super::params::PathIds;
use super::policies::zone_badge;
use super::routes::Routes;
use super::schema::{invalid_body, Obj};
use crate::app::App;
use crate::auth::Principal;
use crate::http::body::RawBody;
use crate::http::pagination::{self, PageQuery};
use crate::http::{ApiError, RequestId};
use crate::policy_engine::EngineError;
use crate::write::{self, Outcome};

pub fn router() -> Routes {
    let base = "/v1/zones/{zone}/policy-sets";
    Routes::new("policy sets")
        .op(
            Method::GET,
            base,
            list,
            "List policy sets",
            200,
            &["400 invalid_query"],
        )
        .op(
            Method::POST,
            base,
            create,
            "Create a policy set",
            201,
            &[
                "400 invalid_body",
                "404 zone_not_found",
                "409 policy_set_name_conflict",
            ],
        )
        .op(
            Method::GET,
            &format!("{base}/{{id}}"),
            get_one,
            "Get a policy set",
            200,
            &["404 policy_set_not_found"],
        )
        .op(
            Method::DELETE,
            &format!("{base}/{{id}}"),
            archive,
            "Archive a policy set (clears an active binding)",
            204,
            &["404 policy_set_not_found"],
        )
        .op(
            Method::GET,
            &format!("{base}/{{id}}/versions"),
            list_versions,
            "List a set's versions",
            200,
            &["404 policy_set_not_found"],
        )
        .op(
            Method::POST,
            &format!("{base}/{{id}}/versions"),
            add_version,
            "Add a set version (manifest of policy versions)",
            201,
            &[
                "400 invalid_body",
                "404 policy_set_not_found",
                "422 invalid_policy_contract",
                "422 invalid_policy_bundle",
            ],
        )
        .op(
            Method::GET,
            &format!("{base}/{{id}}/versions/{{version}}"),
            get_version,
            "Get a set version",
            200,
            &["404 policy_set_version_not_found"],
        )
        .op(
            Method::POST,
            &format!("{base}/{{id}}/activate"),
            activate,
            "Activate a set version",
            202,
            &[
                "400 invalid_body",
                "404 version_not_found",
                "404 policy_set_binding_not_found",
                "422 invalid_policy_contract",
                "422 invalid_policy_bundle",
            ],
        )
        .op(
            Method::GET,
            &format!("{base}/{{id}}/activation-status"),
            activation_status,
            "Activation and invalidation dispatch status",
            200,
            &[
                "400 invalid_body",
                "404 policy_set_binding_not_found",
                "404 active_policy_set_version_not_found",
            ],
        )
        .op(
            Method::POST,
            &format!("{base}/{{id}}/simulate"),
            simulate,
            "Simulate a decision (or re-run recorded history)",
            200,
            &[
                "400 invalid_body",
                "404 version_not_found",
                "422 invalid_policy_contract",
            ],
        )
}

fn set_error(e: PolicySetError) -> ApiError {
    match e {
        PolicySetError::NotFound => ApiError::not_found("policy_set_not_found"),
        PolicySetError::VersionNotFound => ApiError::not_found("version_not_found"),
        PolicySetError::NameConflict => ApiError::conflict("policy_set_name_conflict")
            .description("a live policy set with this name exists in the zone"),
        PolicySetError::AlreadyExists => ApiError::internal("policy set id collision"),
        PolicySetError::Invalid(why) => invalid_body(vec![json!({
            "path": [if why.starts_with("description") { "description" } else { "name" }],
            "message": why
        })]),
    }
}

fn contract_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy_contract")
        .description(e.to_string())
}

fn bundle_error(e: BundleError) -> ApiError {
    match e {
        BundleError::Contract { .. } => contract_error(e),
        BundleError::Bundle(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy_bundle")
                .description(e.to_string())
        }
    }
}

pub fn render_set(s: &PolicySetRow) -> Value {
    json!({
        "id": s.id,
        "zone_id": s.zone_id,
        "name": s.name,
        "description": s.description,
        "created_by": s.created_by,
        "created_via_operator": s.created_via_operator,
        "updated_by": s.updated_by,
        "updated_via_operator": s.updated_via_operator,
        "created_at": pagination::ts(s.created_at),
        "updated_at": pagination::ts(s.updated_at),
        "active_version_id": s.active_version_id,
    })
}

fn render_version(v: &SetVersionRow) -> Value {
    json!({
        "id": v.id,
        "policy_set_id": v.policy_set_id,
        "version": v.version,
        "manifest_sha256": v.manifest_sha256,
        "schema_version": v.schema_version,
        "created_by": v.created_by,
        "created_via_operator": v.created_via_operator,
        "created_at": pagination::ts(v.created_at),
    })
}

fn manifest_json(ids: &[String]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({ "policy_version_id": id }))
            .collect(),
    )
}

async fn live_set(app: &App, zone: &str, id: &str, code: &str) -> Result<PolicySetRow, ApiError> {
    read::load_set(&app.pool, zone, id)
        .await?
        .filter(|s| s.archived_at.is_none())
        .ok_or_else(|| ApiError::not_found(code))
}

/// A version of this set in this zone, or `404 <code>`.
async fn set_version(
    app: &App,
    zone: &str,
    set: &str,
    version: &str,
    code: &str,
) -> Result<SetVersionRow, ApiError> {
    read::load_set_version(&app.pool, version)
        .await?
        .filter(|v| v.policy_set_id == set && v.zone_id == zone)
        .ok_or_else(|| ApiError::not_found(code))
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.parse(pagination::STANDARD)?;
    let rows = read::list_sets(&app.pool, ids.at(0), page.after, page.limit).await?;
    Ok(Json(pagination::page(
        &rows,
        page.limit,
        |s| (s.created_at, s.id.clone()),
        render_set,
    )))
}

async fn get_one(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let s = live_set(&app, ids.at(0), ids.at(1), "policy_set_not_found").await?;
    Ok(Json(render_set(&s)))
}

async fn list_versions(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.parse(pagination::STANDARD)?;
    let s = live_set(&app, ids.at(0), ids.at(1), "policy_set_not_found").await?;
    let rows = read::list_set_versions(&app.pool, &s.id, page.after, page.limit).await?;
    Ok(Json(pagination::page(
        &rows,
        page.limit,
        |v| (v.created_at, v.id.clone()),
        render_version,
    )))
}

async fn get_version(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let (zone, set, version) = (ids.at(0), ids.at(1), ids.at(2));
    let v = set_version(&app, zone, set, version, "policy_set_version_not_found").await?;
    let mut body = render_version(&v);
    body["manifest_json"] = manifest_json(&v.manifest);
    body["policies"] = json!(v.manifest);
    Ok(Json(body))
}

/// Appends one catalog command, deciding it on a fresh snapshot at every attempt.
async fn catalog_write(
    app: &App,
    zone: &str,
    actor: &Actor,
    rid: &str,
    idem: Option<Idempotency>,
    target_set: Option<&str>,
    command: &PolicySetCommand,
) -> Result<Outcome, ApiError> {
    let badge = zone_badge(app, zone).await?;
    let ctx = PolicySetContext {
        actor: actor.clone(),
        zone_operator_coauthor_badge: badge,
    };
    write::execute(
        app,
        POLICIES,
        LogStream::Zone(zone.to_owned()),
        idem,
        || {
            let (ctx, rid) = (&ctx, rid);
            async move {
                let catalog = read::load_catalog(&app.pool, zone, target_set)
                    .await
                    .map_err(ApiError::from)?;
                let events = policy_sets::decide(&catalog, command, ctx).map_err(set_error)?;
                Ok(AppendRequest::new(
                    LogStream::Zone(zone.to_owned()),
                    Some(zone.to_owned()),
                    catalog_id(zone),
                    catalog.version,
                    events.into_iter().map(Event::PolicySet).collect(),
                    ctx.actor.id.clone(),
                )
                .with_request_id(rid))
            }
        },
    )
    .await
    .map_err(ApiError::from)
}

fn appended(outcome: &Outcome) -> Option<(&PolicySetEvent, &Envelope)> {
    match outcome.first_appended()? {
        (Event::PolicySet(e), env) => Some((e, env)),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn create(
    State(app): State<App>,
    principal: Principal,
    RequestId(rid): RequestId,
    ids: PathIds,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let zone = ids.at(0).to_owned();
    let mut body = Obj::parse(&headers, &raw)?;
    let name = body.string("name", 1);
    let description = body.opt_string("description");
    body.finish()?;
    let actor = principal.actor(&headers);
    let idem = write::idempotency(&headers, &actor.id, &method, uri.path(), &raw)?;
    let cmd = PolicySetCommand::Create {
        policy_set_id: uuid::Uuid::now_v7().to_string(),
        name: name.unwrap_or_default(),
        description,
    };
    let outcome = catalog_write(&app, &zone, &actor, &rid, idem.clone(), None, &cmd).await?;
    let body = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::ReplayUnrecorded { .. } => {
            return Err(ApiError::conflict("idempotency_result_inactive")
                .description("the first attempt's answer was not recorded; list the sets"))
        }
        Outcome::Applied { .. } => {
            let Some((PolicySetEvent::Created(c), env)) = appended(&outcome) else {
                return Err(ApiError::internal("create appended no policy_set.created"));
            };
            let at = pagination::ts(env.occurred_at);
            json!({
                "id": c.policy_set_id, "zone_id": zone, "name": c.name,
                "description": c.description, "created_by": c.created_by,
                "created_via_operator": c.created_via_operator, "updated_by": c.created_by,
                "updated_via_operator": c.created_via_operator, "created_at": at,
                "updated_at": at,
            })
        }
    };
    let stream = LogStream::Zone(zone);
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::CREATED,
        Some(body),
        outcome.visible(),
    )
    .await)
}

#[allow(clippy::too_many_arguments)]
async fn archive(
    State(app): State<App>,
    principal: Principal,
    RequestId(rid): RequestId,
    ids: PathIds,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let actor = principal.actor(&headers);
    let idem = write::idempotency(&headers, &actor.id, &method, uri.path(), b"")?;
    let cmd = PolicySetCommand::Archive {
        policy_set_id: set.clone(),
    };
    let outcome = catalog_write(&app, &zone, &actor, &rid, idem.clone(), None, &cmd)
        .await
        .map_err(|e| match e.code() {
            Some("zone_not_found") => ApiError::not_found("policy_set_not_found"),
            _ => e,
        })?;
    if let Outcome::Replay { status, body } = &outcome {
        return Ok(write::replayed(*status, body.clone()));
    }
    let stream = LogStream::Zone(zone);
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::NO_CONTENT,
        None,
        outcome.visible(),
    )
    .await)
}

/// Parses `manifest`: 1–256 × `{"policy_version_id": string}` (schema issues), then the
/// normalization rules (trim, no duplicates), which are contract failures.
fn parse_manifest(body: &mut Obj) -> Option<Vec<String>> {
    let Some(raw) = body.map.get("manifest").cloned() else {
        body.fail(
            &["manifest"],
            "Invalid input: expected array, received undefined",
        );
        return None;
    };
    let Value::Array(items) = raw else {
        body.fail(&["manifest"], "Invalid input: expected array");
        return None;
    };
    if items.is_empty() || items.len() > policy_sets::MANIFEST_MAX {
        body.fail(&["manifest"], "manifest must have 1-256 entries");
        return None;
    }
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        match item.get("policy_version_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => ids.push(s.clone()),
            Some(Value::String(_)) => body.fail(
                &["manifest", &idx, "policy_version_id"],
                "Too small: expected string to have >=1 characters",
            ),
            _ => body.fail(
                &["manifest", &idx, "policy_version_id"],
                "Invalid input: expected string",
            ),
        }
    }
    Some(ids)
}

/// The manifest contract (§11), checked on version create, activation and simulation. A
/// stored version whose policy version vanished is a `409` (`stored`), not a contract error.
async fn verify_manifest(
    app: &App,
    zone: &str,
    ids: &[String],
    stored: bool,
) -> Result<CheckedManifest, ApiError> {
    let normalized = policy_sets::normalize_manifest(ids).map_err(contract_error)?;
    let refs = read::policy_version_refs(&app.pool, &normalized).await?;
    policy_sets::check_manifest(zone, &normalized, |id| refs.get(id).cloned()).map_err(
        |e| match e {
            ManifestError::Unknown(_) if stored => {
                ApiError::conflict("referenced_policy_version_missing").description(e.to_string())
            }
            other => contract_error(other),
        },
    )
}

#[allow(clippy::too_many_arguments)]
async fn add_version(
    State(app): State<App>,
    principal: Principal,
    RequestId(rid): RequestId,
    ids: PathIds,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let mut body = Obj::parse(&headers, &raw)?;
    let manifest = parse_manifest(&mut body);
    body.finish()?;
    let manifest = manifest.unwrap_or_default();
    live_set(&app, &zone, &set, "policy_set_not_found").await?;
    let checked = verify_manifest(&app, &zone, &manifest, false).await?;
    let bundle = Arc::new(
        app.engines
            .compile_manifest(&app.pool, &checked.policy_version_ids)
            .await?,
    );
    let actor = principal.actor(&headers);
    let idem = write::idempotency(&headers, &actor.id, &method, uri.path(), &raw)?;
    let version_id = uuid::Uuid::now_v7().to_string();
    let cmd = PolicySetCommand::AddVersion {
        policy_set_id: set.clone(),
        version_id: version_id.clone(),
        manifest: checked,
    };
    let outcome = catalog_write(&app, &zone, &actor, &rid, idem.clone(), Some(&set), &cmd).await?;
    let body = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::ReplayUnrecorded { .. } => {
            return Err(ApiError::conflict("idempotency_result_inactive")
                .description("the first attempt's answer was not recorded; list the versions"))
        }
        Outcome::Applied { .. } => {
            let Some((PolicySetEvent::VersionAdded(v), env)) = appended(&outcome) else {
                return Err(ApiError::internal(
                    "version write appended no policy_set.version_added",
                ));
            };
            // Compiled once: activation and simulation of this version reuse it.
            app.engines.remember(&v.version_id, bundle);
            json!({
                "version_id": v.version_id, "id": v.version_id, "policy_set_id": v.policy_set_id,
                "version": v.version, "manifest_sha256": v.manifest_sha256,
                "schema_version": v.schema_version,
                "created_at": pagination::ts(env.occurred_at),
            })
        }
    };
    let stream = LogStream::Zone(zone);
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::CREATED,
        Some(body),
        outcome.visible(),
    )
    .await)
}

fn status_url(zone: &str, set: &str, version: &str, outbox: &str) -> String {
    format!(
        "/v1/zones/{zone}/policy-sets/{set}/activation-status?version_id={version}&outbox_id={outbox}"
    )
}

#[allow(clippy::too_many_arguments)]
async fn activate(
    State(app): State<App>,
    principal: Principal,
    RequestId(rid): RequestId,
    ids: PathIds,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let mut body = Obj::parse(&headers, &raw)?;
    let version_id = body.string("version_id", 1);
    body.finish()?;
    let version_id = version_id.unwrap_or_default();
    let version = set_version(&app, &zone, &set, &version_id, "version_not_found").await?;
    live_set(&app, &zone, &set, "policy_set_binding_not_found").await?;
    verify_manifest(&app, &zone, &version.manifest, true).await?;
    app.engines.compile_version(&app.pool, &version).await?;
    let actor = principal.actor(&headers);
    let idem = write::idempotency(&headers, &actor.id, &method, uri.path(), &raw)?;
    let cmd = PolicySetCommand::Activate {
        policy_set_id: set.clone(),
        version_id: version.id.clone(),
    };
    let outcome = catalog_write(&app, &zone, &actor, &rid, idem.clone(), Some(&set), &cmd)
        .await
        .map_err(|e| match e.code() {
            Some("policy_set_not_found") => ApiError::not_found("policy_set_binding_not_found"),
            _ => e,
        })?;
    let body = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::ReplayUnrecorded { .. } => {
            return Err(
                ApiError::conflict("idempotency_result_inactive").description(
                    "the first attempt's answer was not recorded; read activation-status",
                ),
            )
        }
        Outcome::Applied { .. } => {
            let Some((PolicySetEvent::Activated(a), env)) = appended(&outcome) else {
                return Err(ApiError::internal(
                    "activation appended no policy_set.activated",
                ));
            };
            json!({
                "activated": true,
                "version_id": a.version_id,
                "outbox_id": env.event_id,
                "status_url": status_url(&zone, &set, &a.version_id, &env.event_id),
            })
        }
    };
    let stream = LogStream::Zone(zone);
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::ACCEPTED,
        Some(body),
        outcome.visible(),
    )
    .await)
}

#[derive(Deserialize)]
struct StatusQuery {
    version_id: Option<String>,
    outbox_id: Option<String>,
}

async fn activation_status(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let (zone, set_id) = (ids.at(0), ids.at(1));
    for (name, v) in [("version_id", &q.version_id), ("outbox_id", &q.outbox_id)] {
        if v.as_deref().is_some_and(|v| !is_valid_identifier(v)) {
            return Err(invalid_body(vec![json!({
                "path": [name], "message": "must match ^[A-Za-z0-9_.\\-:]{1,128}$"
            })]));
        }
    }
    let set = live_set(&app, zone, set_id, "policy_set_binding_not_found").await?;
    let version_id = match q
        .version_id
        .clone()
        .or_else(|| set.active_version_id.clone())
    {
        Some(v) => v,
        None => return Err(ApiError::not_found("active_policy_set_version_not_found")),
    };
    let active = set.active_version_id.as_deref() == Some(version_id.as_str());
    let active_manifest = match &set.active_version_id {
        Some(v) => read::load_set_version(&app.pool, v)
            .await?
            .map(|v| v.manifest_sha256),
        None => None,
    };
    let activation = match &q.outbox_id {
        Some(o) => read::activation(&app.pool, o).await?,
        None => read::latest_activation(&app.pool, zone, set_id, &version_id).await?,
    };
    let outbox = match activation {
        None => json!({ "id": q.outbox_id, "state": "missing", "attempts": 0,
                        "last_error": null, "dispatched_at": null }),
        Some(a)
            if a.zone_id != zone
                || a.policy_set_id != set_id
                || a.version_id.as_deref() != Some(version_id.as_str()) =>
        {
            json!({ "id": a.event_id, "state": "mismatch", "attempts": 0,
                    "last_error": null, "dispatched_at": null })
        }
        Some(a) => match read::dispatch(&app.pool, &a.event_id).await? {
            Some((_, at)) => json!({ "id": a.event_id, "state": "dispatched", "attempts": 1,
                                     "last_error": null, "dispatched_at": pagination::ts(at) }),
            None => json!({ "id": a.event_id, "state": "pending", "attempts": 0,
                            "last_error": null, "dispatched_at": null }),
        },
    };
    let sts = if !app.sts_local() {
        json!({ "state": "not_configured", "loaded": false })
    } else {
        match app.engines.loaded(zone) {
            Some(l) if l.version_id == version_id => json!({
                "state": "loaded", "loaded": true, "zone_id": zone,
                "policy_set_version_id": l.version_id, "manifest_sha256": l.manifest_sha256,
                "loaded_at": pagination::ts(l.loaded_at),
                "age_seconds": (Utc::now() - l.loaded_at).num_seconds().max(0),
            }),
            Some(l) => json!({
                "state": "not_loaded", "loaded": false, "zone_id": zone,
                "policy_set_version_id": l.version_id, "manifest_sha256": l.manifest_sha256,
                "loaded_at": pagination::ts(l.loaded_at),
            }),
            None => json!({ "state": "not_loaded", "loaded": false, "zone_id": zone }),
        }
    };
    let outbox_state = outbox["state"].as_str().unwrap_or_default();
    let propagation = if !active {
        "waiting_for_activation"
    } else if matches!(outbox_state, "dead" | "mismatch") || sts["state"] == "failed" {
        "failed"
    } else if outbox_state != "dispatched" {
        "waiting_for_outbox"
    } else if sts["state"] == "loaded" {
        "loaded"
    } else {
        "waiting_for_sts"
    };
    Ok(Json(json!({
        "zone_id": zone,
        "policy_set_id": set_id,
        "version_id": version_id,
        "active": active,
        "active_version_id": set.active_version_id,
        "manifest_sha256": active_manifest,
        "propagation_status": propagation,
        "outbox": outbox,
        "sts": sts,
    })))
}

/// Input-shape warnings of a simulation input (they alone decide `would_activate`).
fn input_warnings(zone: &str, input: &Value) -> Vec<String> {
    let mut w = Vec::new();
    let schema = input
        .get("schema_version")
        .and_then(Value::as_str)
        .unwrap_or("");
    if schema != INPUT_SCHEMA_VERSION {
        w.push(format!("input_schema_mismatch:{schema}"));
    }
    if input.pointer("/principal/zone_id").and_then(Value::as_str) != Some(zone) {
        w.push("principal_zone_mismatch".to_owned());
    }
    for (key, warning) in [
        ("resource", "missing_resource"),
        ("action", "missing_action"),
        ("context", "missing_context"),
    ] {
        if !input.get(key).is_some_and(Value::is_object) {
            w.push(warning.to_owned());
        }
    }
    w
}

#[allow(clippy::too_many_arguments)]
async fn simulate(
    State(app): State<App>,
    ids: PathIds,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let mut body = Obj::parse(&headers, &raw)?;
    let version_id = body.string("version_id", 1);
    let input = match body.map.get("input") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            body.fail(&["input"], "Invalid input: expected object");
            None
        }
    };
    let history = match body.map.get("history") {
        None | Some(Value::Null) => None,
        Some(h) => match super::policy_history::parse(h) {
            Ok(h) => Some(h),
            Err((path, message)) => {
                body.fail(&["history", path], message);
                None
            }
        },
    };
    body.finish()?;
    let version_id = version_id.unwrap_or_default();
    let version = set_version(&app, &zone, &set, &version_id, "version_not_found").await?;
    let checked = verify_manifest(&app, &zone, &version.manifest, true).await?;
    let bundle = app.engines.compile_version(&app.pool, &version).await?;
    let mut warnings = Vec::new();
    let (result, explanation, would_activate) = match &input {
        None => (
            Value::Null,
            json!({ "evaluation": "not_executed", "reason": "no_input" }),
            true,
        ),
        Some(input) => {
            let shape = input_warnings(&zone, input);
            let would = shape.is_empty();
            warnings.extend(shape);
            match bundle.evaluate(input) {
                Ok(r) => {
                    let decision = r.get("decision").cloned().unwrap_or(Value::Null);
                    let reason = bundle_rules::deny_reason(&r)
                        .map(str::to_owned)
                        .or_else(|| {
                            r.pointer("/determining_policies/0/policy")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        });
                    let explanation = json!({
                        "evaluation": "executed",
                        "decision": decision,
                        "policy_set_version_id": version.id,
                        "manifest_sha256": checked.manifest_sha256,
                        "reason": reason,
                    });
                    (r, explanation, would)
                }
                Err(e) => {
                    warnings.push("sts_simulation_failed:policy_eval_failed".to_owned());
                    (
                        Value::Null,
                        json!({ "evaluation": "failed", "reason": e.to_string() }),
                        would,
                    )
                }
            }
        }
    };
    let mut out = json!({
        "dry_run": true,
        "would_activate": would_activate,
        "policy_set_id": set,
        "version_id": version.id,
        "schema_version": checked.schema_version,
        "input_schema_version": INPUT_SCHEMA_VERSION,
        "manifest_sha256": checked.manifest_sha256,
        "policies": checked.policy_version_ids,
        "warnings": warnings,
        "explanation": explanation,
        "result": result,
    });
    if let Some(h) = history {
        out["history"] = super::policy_history::replay(&app, &zone, &bundle, &h)
            .await
            .map_err(|e| ApiError::internal(format!("history simulation: {e}")))?;
    }
    Ok(Json(out).into_response())
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Bundle(b) => bundle_error(b),
            EngineError::MissingVersion(v) => {
                ApiError::conflict("referenced_policy_version_missing")
                    .description(format!("policy version {v} is missing"))
            }
            other => ApiError::internal(other),
        }
    }
}
