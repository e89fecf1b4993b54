//! Policies, validation and templates (management-api.md §10).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use serval_domain::policy::bundle::{CONTRACT_VERSION, INPUT_SCHEMA_VERSION};
use serval_domain::policy::document::{self, PACKAGE};
use serval_domain::policy::policies::{
    self, Policy, PolicyCommand, PolicyContext, PolicyError, PolicyEvent, PolicyVersion,
    NAME_RESERVATION,
};
use serval_domain::policy::templates::TEMPLATES;
use serval_domain::{Actor, Event};
use serval_projector::policies as read;
use serval_schema::projections::POLICIES;
use serval_streams::append::Reservation;
use serval_streams::{AppendRequest, Envelope, LogStream};

use super::params::PathIds;
use super::routes::Routes;
use super::schema::Obj;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Failure, Outcome};

pub fn router() -> Routes {
    Routes::new("policies")
        .op(
            Method::POST,
            "/v1/policies/validate",
            validate,
            "Validate a data document",
            200,
            &["400 invalid_body", "422 invalid_rego"],
        )
        .op(
            Method::GET,
            "/v1/policy-templates",
            templates,
            "Policy templates",
            200,
            &[],
        )
        .op(
            Method::GET,
            "/v1/zones/{zone}/policies",
            list,
            "List policies",
            200,
            &["400 invalid_query"],
        )
        .op(
            Method::POST,
            "/v1/zones/{zone}/policies",
            create,
            "Create a policy and its first version",
            201,
            &[
                "400 invalid_body",
                "404 zone_not_found",
                "409 reserved_namespace",
                "409 policy_name_conflict",
                "422 invalid_rego",
            ],
        )
        .op(
            Method::GET,
            "/v1/zones/{zone}/policies/{id}",
            get_one,
            "Get a policy with its versions",
            200,
            &["404 policy_not_found"],
        )
        .op(
            Method::DELETE,
            "/v1/zones/{zone}/policies/{id}",
            archive,
            "Archive a policy",
            204,
            &["404 policy_not_found"],
        )
        .op(
            Method::POST,
            "/v1/zones/{zone}/policies/{id}/versions",
            add_version,
            "Add an immutable policy version",
            201,
            &[
                "400 invalid_body",
                "404 policy_not_found",
                "422 invalid_rego",
            ],
        )
}

fn invalid_rego(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_rego")
        .description(reason.to_string())
        .with("valid", json!(false))
}

pub fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::NotFound => ApiError::not_found("policy_not_found"),
        PolicyError::AlreadyExists => ApiError::internal("policy id collision"),
        PolicyError::Invalid(why) => super::schema::invalid_body(vec![json!({
            "path": [if why.starts_with("description") { "description" } else { "name" }],
            "message": why
        })]),
        PolicyError::InvalidRego(reason) => invalid_rego(reason),
        PolicyError::ReservedNamespace => ApiError::conflict("reserved_namespace")
            .description("the caracal.sys namespace is reserved for the bootstrap token"),
    }
}

fn name_conflict() -> ApiError {
    ApiError::conflict("policy_name_conflict")
        .description("a live policy with this name exists in the zone")
}

pub fn render_policy(p: &Policy) -> Value {
    json!({
        "id": p.id,
        "zone_id": p.zone_id,
        "name": p.name,
        "description": p.description,
        "created_by": p.created_by,
        "created_via_operator": p.created_via_operator,
        "updated_by": p.updated_by,
        "updated_via_operator": p.updated_via_operator,
        "created_at": pagination::ts(p.created_at),
        "updated_at": pagination::ts(p.updated_at),
    })
}

fn render_version_full(
    v: &PolicyVersion,
    archived_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Value {
    json!({
        "id": v.id,
        "policy_id": v.policy_id,
        "version": v.version,
        "content": v.content,
        "content_sha256": v.content_sha256,
        "schema_version": v.schema_version,
        "created_by": v.created_by,
        "created_via_operator": v.created_via_operator,
        "created_at": pagination::ts(v.created_at),
        "archived_at": archived_at.map(pagination::ts),
    })
}

async fn validate(headers: HeaderMap, RawBody(raw): RawBody) -> Result<Response, ApiError> {
    let mut body = Obj::parse(&headers, &raw)?;
    let content = body.string("content", 1);
    body.finish()?;
    let content = content.unwrap_or_default();
    let summary = document::validate(&content).map_err(invalid_rego)?;
    Ok(Json(json!({
        "valid": true,
        "schema_version": INPUT_SCHEMA_VERSION,
        "input_schema_version": INPUT_SCHEMA_VERSION,
        "contract_version": CONTRACT_VERSION,
        "output_contract": {
            "package": PACKAGE,
            "rule": "result",
            "decision": ["allow", "deny"],
            "evaluation_status": ["complete"],
        },
        "preview": {
            "package": summary.package,
            "rules": summary.rules,
            "default_result": false,
            "decisions": [],
            "inputs_referenced": summary.inputs_referenced,
            "data_referenced": summary.data_referenced,
        },
    }))
    .into_response())
}

async fn templates() -> Json<Value> {
    Json(Value::Array(
        TEMPLATES
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "name": t.name,
                    "description": t.description,
                    "content": t.content,
                })
            })
            .collect(),
    ))
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.parse(pagination::STANDARD)?;
    let rows = read::list_policies(&app.pool, ids.at(0), page.after, page.limit).await?;
    Ok(Json(pagination::page(
        &rows,
        page.limit,
        |p| (p.created_at, p.id.clone()),
        render_policy,
    )))
}

async fn live_policy(app: &App, zone: &str, id: &str) -> Result<Policy, ApiError> {
    read::load_policy(&app.pool, zone, id)
        .await?
        .filter(|p| p.archived_at.is_none())
        .ok_or_else(|| ApiError::not_found("policy_not_found"))
}

async fn get_one(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let p = live_policy(&app, ids.at(0), ids.at(1)).await?;
    let versions = read::policy_versions(&app.pool, &p.id).await?;
    let mut body = render_policy(&p);
    body["versions"] = Value::Array(
        versions
            .iter()
            .map(|v| render_version_full(v, p.archived_at))
            .collect(),
    );
    Ok(Json(body))
}

/// A live zone's `operator_coauthor_badge`, or `404 zone_not_found`.
pub async fn zone_badge(app: &App, zone_id: &str) -> Result<bool, ApiError> {
    serval_projector::zones::load(&app.pool, zone_id)
        .await?
        .filter(|z| z.archived_at.is_none())
        .map(|z| z.operator_coauthor_badge)
        .ok_or_else(|| ApiError::not_found("zone_not_found"))
}

fn request(
    zone: &str,
    id: &str,
    expected: u64,
    events: Vec<PolicyEvent>,
    actor: &Actor,
    rid: &str,
) -> AppendRequest {
    AppendRequest::new(
        LogStream::Zone(zone.to_owned()),
        Some(zone.to_owned()),
        id,
        expected,
        events.into_iter().map(Event::Policy).collect(),
        actor.id.clone(),
    )
    .with_request_id(rid)
}

/// The first appended event and its envelope (writes here append exactly one).
fn appended(outcome: &Outcome) -> Option<(&PolicyEvent, &Envelope)> {
    match outcome.first_appended()? {
        (Event::Policy(e), env) => Some((e, env)),
        _ => None,
    }
}

fn version_answer(policy_id: &str, env: &Envelope, v: &policies::VersionRecorded) -> Value {
    json!({
        "id": v.version_id,
        "policy_id": policy_id,
        "version": v.version,
        "content_sha256": v.content_sha256,
        "schema_version": v.schema_version,
        "created_at": pagination::ts(env.occurred_at),
    })
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let zone = ids.at(0).to_owned();
    let mut body = Obj::parse(&req.headers, &raw)?;
    let name = body.string("name", 1);
    let description = body.opt_string("description");
    let content = body.string("content", 1);
    body.finish()?;
    let (name, content) = (name.unwrap_or_default(), content.unwrap_or_default());
    let badge = zone_badge(&app, &zone).await?;
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
    let ctx = PolicyContext {
        actor: actor.clone(),
        zone_operator_coauthor_badge: badge,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let cmd = PolicyCommand::Create {
        zone_id: zone.clone(),
        name: name.clone(),
        description,
        content,
        version_id: uuid::Uuid::now_v7().to_string(),
    };
    let outcome = write::execute(
        &app,
        POLICIES,
        LogStream::Zone(zone.clone()),
        idem.clone(),
        || {
            let (cmd, ctx, actor, id, rid, zone, name) =
                (&cmd, &ctx, &actor, &id, &rid, &zone, &name);
            async move {
                let events = policies::decide(None, cmd, ctx).map_err(policy_error)?;
                let mut req = request(zone, id, 0, events, actor, rid);
                req.reserve.push(Reservation {
                    kind: NAME_RESERVATION,
                    value: policies::name_reservation_value(name),
                });
                Ok(req)
            }
        },
    )
    .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(Failure::Taken { .. }) => return Err(name_conflict()),
        Err(Failure::Api(e)) => return Err(e),
    };
    let stream = LogStream::Zone(zone.clone());
    let (visible, body) = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::ReplayUnrecorded {
            aggregate_id,
            visible,
        } => {
            let p = live_policy(&app, &zone, aggregate_id).await?;
            let versions = read::policy_versions(&app.pool, &p.id).await?;
            let first = versions
                .last()
                .ok_or_else(|| ApiError::internal("policy without versions"))?;
            let mut b = render_policy(&p);
            b["version_id"] = json!(first.id);
            b["version"] = json!({
                "id": first.id, "policy_id": p.id, "version": first.version,
                "content_sha256": first.content_sha256, "schema_version": first.schema_version,
                "created_at": pagination::ts(first.created_at),
            });
            (*visible, b)
        }
        Outcome::Applied { visible, .. } => {
            let Some((PolicyEvent::Created(c), env)) = appended(&outcome) else {
                return Err(ApiError::internal("create appended no policy.created"));
            };
            let b = json!({
                "id": env.aggregate_id,
                "version_id": c.first_version.version_id,
                "zone_id": c.zone_id,
                "name": c.name,
                "description": c.description,
                "version": version_answer(&env.aggregate_id, env, &c.first_version),
            });
            (*visible, b)
        }
    };
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::CREATED,
        Some(body),
        visible,
    )
    .await)
}

async fn add_version(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let (zone, id) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let mut body = Obj::parse(&req.headers, &raw)?;
    let content = body.string("content", 1);
    body.finish()?;
    let content = content.unwrap_or_default();
    // Content is checked before existence (§10).
    document::validate(&content).map_err(invalid_rego)?;
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
    let cmd = PolicyCommand::AddVersion {
        content,
        version_id: uuid::Uuid::now_v7().to_string(),
    };
    let outcome = write::execute(
        &app,
        POLICIES,
        LogStream::Zone(zone.clone()),
        idem.clone(),
        || {
            let (app, cmd, actor, id, rid, zone) = (&app, &cmd, &actor, &id, &rid, &zone);
            async move {
                let state = read::load_policy(&app.pool, zone, id)
                    .await
                    .map_err(ApiError::from)?;
                let badge = match &state {
                    Some(_) => zone_badge(app, zone).await.unwrap_or(false),
                    None => false,
                };
                let ctx = PolicyContext {
                    actor: actor.clone(),
                    zone_operator_coauthor_badge: badge,
                };
                let events = policies::decide(state.as_ref(), cmd, &ctx).map_err(policy_error)?;
                let version = state.map(|p| p.version).unwrap_or(0);
                Ok(request(zone, id, version, events, actor, rid))
            }
        },
    )
    .await
    .map_err(ApiError::from)?;
    let stream = LogStream::Zone(zone.clone());
    let (visible, body) = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::ReplayUnrecorded { visible, .. } => {
            let versions = read::policy_versions(&app.pool, &id).await?;
            let v = versions
                .first()
                .ok_or_else(|| ApiError::internal("policy without versions"))?;
            (
                *visible,
                json!({
                    "version_id": v.id, "id": v.id, "policy_id": v.policy_id, "version": v.version,
                    "content_sha256": v.content_sha256, "schema_version": v.schema_version,
                    "created_at": pagination::ts(v.created_at),
                }),
            )
        }
        Outcome::Applied { visible, .. } => {
            let Some((PolicyEvent::VersionAdded(a), env)) = appended(&outcome) else {
                return Err(ApiError::internal(
                    "version write appended no policy.version_added",
                ));
            };
            let mut b = version_answer(&env.aggregate_id, env, &a.version);
            b["version_id"] = json!(a.version.version_id);
            (*visible, b)
        }
    };
    Ok(write::respond(
        &app,
        &stream,
        &idem,
        StatusCode::CREATED,
        Some(body),
        visible,
    )
    .await)
}

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let (zone, id) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let actor = req.actor();
    let idem = req.idempotency(b"")?;
    let ctx = PolicyContext {
        actor: actor.clone(),
        zone_operator_coauthor_badge: false,
    };
    let outcome = write::execute(
        &app,
        POLICIES,
        LogStream::Zone(zone.clone()),
        idem.clone(),
        || {
            let (app, actor, id, rid, zone, ctx) = (&app, &actor, &id, &rid, &zone, &ctx);
            async move {
                let state = read::load_policy(&app.pool, zone, id)
                    .await
                    .map_err(ApiError::from)?;
                let events = policies::decide(state.as_ref(), &PolicyCommand::Archive, ctx)
                    .map_err(policy_error)?;
                let p = state.ok_or_else(|| ApiError::not_found("policy_not_found"))?;
                let mut req = request(zone, id, p.version, events, actor, rid);
                req.release.push(Reservation {
                    kind: NAME_RESERVATION,
                    value: policies::name_reservation_value(&p.name),
                });
                Ok(req)
            }
        },
    )
    .await
    .map_err(ApiError::from)?;
    if let Outcome::Replay { status, body } = &outcome {
        return Ok(write::replayed(*status, body.clone()));
    }
    let visible = outcome.visible();
    Ok(write::respond(
        &app,
        &LogStream::Zone(zone),
        &idem,
        StatusCode::NO_CONTENT,
        None,
        visible,
    )
    .await)
}
