//! Policies, validation and templates (management-api.md §10).

use super::views::{self, Stamps};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
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
use super::schema;
use serde::Deserialize;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Failure, Outcome};
use utoipa::ToSchema;

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
        .takes::<Content>()
        .gives::<Validation>()
        .op(
            Method::GET,
            "/v1/policy-templates",
            templates,
            "Policy templates",
            200,
            &[],
        )
        .gives::<Templates>()
        .op(
            Method::GET,
            "/v1/zones/{zone}/policies",
            list,
            "List policies",
            200,
            &["400 invalid_query"],
        )
        .query::<PageQuery>()
        .gives_page::<PolicyView>()
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
        .takes::<CreateBody>()
        .gives::<PolicyCreated>()
        .op(
            Method::GET,
            "/v1/zones/{zone}/policies/{id}",
            get_one,
            "Get a policy with its versions",
            200,
            &["404 policy_not_found"],
        )
        .gives::<PolicyWithVersions>()
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
        .takes::<Content>()
        .gives::<VersionAdded>()
}

/// A Rego data document: `POST /v1/policies/validate` and a new policy version.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicyContent)]
pub struct Content {
    #[schema(min_length = 1)]
    content: String,
}

/// `POST /v1/zones/{zone}/policies`.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicyCreate)]
pub struct CreateBody {
    #[schema(min_length = 1)]
    name: String,
    description: Option<String>,
    #[schema(min_length = 1)]
    content: String,
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

/// A policy (§10).
#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    id: String,
    zone_id: String,
    name: String,
    description: Option<String>,
    #[serde(flatten)]
    stamps: Stamps,
}

/// One immutable version of a policy, with its content.
#[derive(Serialize, ToSchema)]
pub struct PolicyVersionView {
    id: String,
    policy_id: String,
    version: u64,
    content: String,
    content_sha256: String,
    schema_version: String,
    created_by: String,
    created_via_operator: bool,
    created_at: String,
    archived_at: Option<String>,
}

/// `GET …/policies/{id}`: the policy and its versions, newest first.
#[derive(Serialize, ToSchema)]
pub struct PolicyWithVersions {
    #[serde(flatten)]
    policy: PolicyView,
    versions: Vec<PolicyVersionView>,
}

/// A version as a write answers it (without its content).
#[derive(Serialize, ToSchema)]
pub struct VersionSummary {
    id: String,
    policy_id: String,
    version: u64,
    content_sha256: String,
    schema_version: String,
    created_at: String,
}

/// `201` of a policy create: the policy and its first version.
#[derive(Serialize, ToSchema)]
pub struct PolicyCreated {
    id: String,
    version_id: String,
    zone_id: String,
    name: String,
    description: Option<String>,
    version: VersionSummary,
}

/// `201` of a new version.
#[derive(Serialize, ToSchema)]
pub struct VersionAdded {
    version_id: String,
    #[serde(flatten)]
    version: VersionSummary,
}

/// `GET /v1/policy-templates`.
#[derive(Serialize, ToSchema)]
#[serde(transparent)]
pub struct Templates(Vec<Template>);

/// A policy template.
#[derive(Serialize, ToSchema)]
pub struct Template {
    id: String,
    name: String,
    description: String,
    content: String,
}

/// What a valid data document answers (`POST /v1/policies/validate`).
#[derive(Serialize, ToSchema)]
pub struct Validation {
    valid: bool,
    schema_version: String,
    input_schema_version: String,
    contract_version: String,
    output_contract: OutputContract,
    preview: Preview,
}

#[derive(Serialize, ToSchema)]
pub struct OutputContract {
    package: String,
    rule: String,
    decision: Vec<String>,
    evaluation_status: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Preview {
    package: String,
    rules: Vec<String>,
    default_result: bool,
    decisions: Vec<Value>,
    inputs_referenced: Vec<String>,
    data_referenced: Vec<String>,
}

fn policy_view(p: &Policy) -> PolicyView {
    PolicyView {
        id: p.id.clone(),
        zone_id: p.zone_id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        stamps: Stamps::new(
            (&p.created_by, p.created_via_operator, p.created_at),
            (&p.updated_by, p.updated_via_operator, p.updated_at),
        ),
    }
}

pub fn render_policy(p: &Policy) -> Value {
    views::to_json(&policy_view(p))
}

fn version_view(
    v: &PolicyVersion,
    archived_at: Option<chrono::DateTime<chrono::Utc>>,
) -> PolicyVersionView {
    PolicyVersionView {
        id: v.id.clone(),
        policy_id: v.policy_id.clone(),
        version: v.version,
        content: v.content.clone(),
        content_sha256: v.content_sha256.clone(),
        schema_version: v.schema_version.clone(),
        created_by: v.created_by.clone(),
        created_via_operator: v.created_via_operator,
        created_at: pagination::ts(v.created_at),
        archived_at: archived_at.map(pagination::ts),
    }
}

fn stored_summary(v: &PolicyVersion) -> VersionSummary {
    VersionSummary {
        id: v.id.clone(),
        policy_id: v.policy_id.clone(),
        version: v.version,
        content_sha256: v.content_sha256.clone(),
        schema_version: v.schema_version.clone(),
        created_at: pagination::ts(v.created_at),
    }
}

async fn validate(headers: HeaderMap, RawBody(raw): RawBody) -> Result<Response, ApiError> {
    let Content { content } = schema::strict(&headers, &raw)?;
    let summary = document::validate(&content).map_err(invalid_rego)?;
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Ok(Json(views::to_json(&Validation {
        valid: true,
        schema_version: INPUT_SCHEMA_VERSION.to_owned(),
        input_schema_version: INPUT_SCHEMA_VERSION.to_owned(),
        contract_version: CONTRACT_VERSION.to_owned(),
        output_contract: OutputContract {
            package: PACKAGE.to_owned(),
            rule: "result".to_owned(),
            decision: strings(&["allow", "deny"]),
            evaluation_status: strings(&["complete"]),
        },
        preview: Preview {
            package: summary.package,
            rules: summary.rules,
            default_result: false,
            decisions: Vec::new(),
            inputs_referenced: summary.inputs_referenced,
            data_referenced: summary.data_referenced,
        },
    }))
    .into_response())
}

async fn templates() -> Json<Value> {
    Json(views::to_json(&Templates(
        TEMPLATES
            .iter()
            .map(|t| Template {
                id: t.id.to_owned(),
                name: t.name.to_owned(),
                description: t.description.to_owned(),
                content: t.content.to_owned(),
            })
            .collect(),
    )))
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
    Ok(Json(views::to_json(&PolicyWithVersions {
        policy: policy_view(&p),
        versions: versions
            .iter()
            .map(|v| version_view(v, p.archived_at))
            .collect(),
    })))
}

/// A live zone's `operator_coauthor_badge`, or `404 zone_not_found`.
pub async fn zone_badge(app: &App, zone_id: &str) -> Result<bool, ApiError> {
    serval_kit::read_cache::zone(app, zone_id)
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

fn version_answer(
    policy_id: &str,
    env: &Envelope,
    v: &policies::VersionRecorded,
) -> VersionSummary {
    VersionSummary {
        id: v.version_id.clone(),
        policy_id: policy_id.to_owned(),
        version: v.version,
        content_sha256: v.content_sha256.clone(),
        schema_version: v.schema_version.clone(),
        created_at: pagination::ts(env.occurred_at),
    }
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let zone = ids.at(0).to_owned();
    let CreateBody {
        name,
        description,
        content,
    } = schema::strict(&req.headers, &raw)?;
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
            let b = views::to_json(&PolicyCreated {
                id: p.id.clone(),
                version_id: first.id.clone(),
                zone_id: p.zone_id.clone(),
                name: p.name.clone(),
                description: p.description.clone(),
                version: stored_summary(first),
            });
            (*visible, b)
        }
        Outcome::Applied { .. } => {
            let Some((PolicyEvent::Created(c), env)) = appended(&outcome) else {
                return Err(ApiError::internal("create appended no policy.created"));
            };
            let b = views::to_json(&PolicyCreated {
                id: env.aggregate_id.clone(),
                version_id: c.first_version.version_id.clone(),
                zone_id: c.zone_id.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                version: version_answer(&env.aggregate_id, env, &c.first_version),
            });
            (true, b)
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
    let Content { content } = schema::strict(&req.headers, &raw)?;
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
                views::to_json(&VersionAdded {
                    version_id: v.id.clone(),
                    version: stored_summary(v),
                }),
            )
        }
        Outcome::Applied { .. } => {
            let Some((PolicyEvent::VersionAdded(a), env)) = appended(&outcome) else {
                return Err(ApiError::internal(
                    "version write appended no policy.version_added",
                ));
            };
            let b = views::to_json(&VersionAdded {
                version_id: a.version.version_id.clone(),
                version: version_answer(&env.aggregate_id, env, &a.version),
            });
            (true, b)
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
