//! Policy sets (management-api.md §11): sets, immutable versions and activation; the
//! activation status in [`activation_status`], simulation in [`simulation`]. Every set
//! write is a command on the zone's catalog aggregate
//! (`serval_domain::policy::policy_sets`), decided on one snapshot of the read model.

mod activation_status;
mod simulation;

use super::views::{self, Stamps};
use serde::Serialize;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use serval_domain::policy::policy_sets::{
    self, catalog_id, CheckedManifest, ManifestError, PolicySetCommand, PolicySetContext,
    PolicySetError, PolicySetEvent,
};
use serval_domain::{Actor, Event};
use serval_projector::policies::{self as read, PolicySetRow, SetVersionRow};
use serval_schema::projections::POLICIES;
use serval_streams::append::Idempotency;
use serval_streams::{AppendRequest, Envelope, LogStream};

use super::params::PathIds;
use super::policies::zone_badge;
use super::routes::Routes;
use super::schema::{self, invalid_body, Issue};
use serde::Deserialize;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::policy_engine::contract_error;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Outcome};
use utoipa::ToSchema;

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
        .query::<PageQuery>()
        .gives_page::<SetView>()
        .op(
            Method::POST,
            base,
            create,
            "Create a policy set",
            201,
            &[
                "409 idempotency_result_inactive",
                "400 invalid_body",
                "404 zone_not_found",
                "409 policy_set_name_conflict",
            ],
        )
        .takes::<CreateBody>()
        .gives::<SetCreated>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}"),
            get_one,
            "Get a policy set",
            200,
            &["404 policy_set_not_found"],
        )
        .gives::<SetView>()
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
        .query::<PageQuery>()
        .gives_page::<SetVersionView>()
        .op(
            Method::POST,
            &format!("{base}/{{id}}/versions"),
            add_version,
            "Add a set version (manifest of policy versions)",
            201,
            &[
                "409 idempotency_result_inactive",
                "400 invalid_body",
                "404 policy_set_not_found",
                "422 invalid_policy_contract",
                "422 invalid_policy_bundle",
            ],
        )
        .takes::<VersionBody>()
        .gives::<SetVersionCreated>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}/versions/{{version}}"),
            get_version,
            "Get a set version",
            200,
            &["404 policy_set_version_not_found"],
        )
        .gives::<SetVersionWithManifest>()
        .op(
            Method::POST,
            &format!("{base}/{{id}}/activate"),
            activate,
            "Activate a set version",
            202,
            &[
                "409 idempotency_result_inactive",
                "400 invalid_body",
                "404 version_not_found",
                "404 policy_set_binding_not_found",
                "422 invalid_policy_contract",
                "422 invalid_policy_bundle",
            ],
        )
        .takes::<ActivateBody>()
        .gives::<Activation>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}/activation-status"),
            activation_status::activation_status,
            "Activation and invalidation dispatch status",
            200,
            &[
                "400 invalid_body",
                "404 policy_set_binding_not_found",
                "404 active_policy_set_version_not_found",
            ],
        )
        .query::<activation_status::StatusQuery>()
        .gives::<activation_status::ActivationStatus>()
        .op(
            Method::POST,
            &format!("{base}/{{id}}/simulate"),
            simulation::simulate,
            "Simulate a decision (or re-run recorded history)",
            200,
            &[
                "400 invalid_body",
                "404 version_not_found",
                "422 invalid_policy_contract",
            ],
        )
        .takes::<simulation::SimulateBody>()
        .gives::<simulation::Simulation>()
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

/// A policy set (§11).
#[derive(Serialize, ToSchema)]
pub struct SetView {
    #[serde(flatten)]
    set: SetCreated,
    active_version_id: Option<String>,
}

/// A policy set as its create answers it (no version can be active yet).
#[derive(Serialize, ToSchema)]
pub struct SetCreated {
    id: String,
    zone_id: String,
    name: String,
    description: Option<String>,
    #[serde(flatten)]
    stamps: Stamps,
}

/// A version of a policy set.
#[derive(Serialize, ToSchema)]
pub struct SetVersionView {
    id: String,
    policy_set_id: String,
    version: u64,
    manifest_sha256: String,
    schema_version: String,
    created_by: String,
    created_via_operator: bool,
    created_at: String,
}

/// `GET …/versions/{version}`: the version with its manifest.
#[derive(Serialize, ToSchema)]
pub struct SetVersionWithManifest {
    #[serde(flatten)]
    version: SetVersionView,
    manifest_json: Vec<ManifestItem>,
    /// The manifest's policy version ids.
    policies: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ManifestItem {
    policy_version_id: String,
}

/// `201` of a new policy-set version.
#[derive(Serialize, ToSchema)]
pub struct SetVersionCreated {
    version_id: String,
    id: String,
    policy_set_id: String,
    version: u64,
    manifest_sha256: String,
    schema_version: String,
    created_at: String,
}

/// `202` of an activation: follow `status_url` until the STS engines have it.
#[derive(Serialize, ToSchema)]
pub struct Activation {
    activated: bool,
    version_id: String,
    outbox_id: String,
    status_url: String,
}

fn set_view(s: &PolicySetRow) -> SetView {
    SetView {
        set: SetCreated {
            id: s.id.clone(),
            zone_id: s.zone_id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            stamps: Stamps::new(
                (&s.created_by, s.created_via_operator, s.created_at),
                (&s.updated_by, s.updated_via_operator, s.updated_at),
            ),
        },
        active_version_id: s.active_version_id.clone(),
    }
}

pub fn render_set(s: &PolicySetRow) -> Value {
    views::to_json(&set_view(s))
}

fn version_view(v: &SetVersionRow) -> SetVersionView {
    SetVersionView {
        id: v.id.clone(),
        policy_set_id: v.policy_set_id.clone(),
        version: v.version,
        manifest_sha256: v.manifest_sha256.clone(),
        schema_version: v.schema_version.clone(),
        created_by: v.created_by.clone(),
        created_via_operator: v.created_via_operator,
        created_at: pagination::ts(v.created_at),
    }
}

fn render_version(v: &SetVersionRow) -> Value {
    views::to_json(&version_view(v))
}

pub(super) async fn live_set(
    app: &App,
    zone: &str,
    id: &str,
    code: &str,
) -> Result<PolicySetRow, ApiError> {
    read::load_set(&app.pool, zone, id)
        .await?
        .filter(|s| s.archived_at.is_none())
        .ok_or_else(|| ApiError::not_found(code))
}

/// A version of this set in this zone, or `404 <code>`.
pub(super) async fn set_version(
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
    Ok(Json(views::to_json(&SetVersionWithManifest {
        version: version_view(&v),
        manifest_json: v
            .manifest
            .iter()
            .map(|id| ManifestItem {
                policy_version_id: id.clone(),
            })
            .collect(),
        policies: v.manifest.clone(),
    })))
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

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let zone = ids.at(0).to_owned();
    let CreateBody { name, description } = schema::strict(&req.headers, &raw)?;
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
    let cmd = PolicySetCommand::Create {
        policy_set_id: uuid::Uuid::now_v7().to_string(),
        name,
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
            views::to_json(&SetCreated {
                id: c.policy_set_id.clone(),
                zone_id: zone.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                stamps: Stamps::new(
                    (&c.created_by, c.created_via_operator, env.occurred_at),
                    (&c.created_by, c.created_via_operator, env.occurred_at),
                ),
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

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let actor = req.actor();
    let idem = req.idempotency(b"")?;
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
const _: () = assert!(
    policy_sets::MANIFEST_MAX == 256,
    "VersionBody documents max_items = 256"
);

/// `POST /v1/zones/{zone}/policy-sets` (§11).
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicySetCreate)]
pub struct CreateBody {
    #[schema(min_length = 1)]
    name: String,
    description: Option<String>,
}

/// One policy version of a manifest.
#[derive(Deserialize, ToSchema)]
pub struct ManifestEntry {
    #[schema(min_length = 1)]
    policy_version_id: String,
}

/// `POST …/policy-sets/{id}/versions`: the manifest of the new version.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicySetVersionCreate)]
pub struct VersionBody {
    #[schema(min_items = 1, max_items = 256)]
    manifest: Vec<ManifestEntry>,
}

/// `POST …/policy-sets/{id}/activate`.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicySetActivate)]
pub struct ActivateBody {
    #[schema(min_length = 1)]
    version_id: String,
}

/// The policy version ids of a manifest; a blank id is refused like an empty one.
fn manifest_ids(body: VersionBody) -> Result<Vec<String>, ApiError> {
    schema::refuse(
        body.manifest
            .iter()
            .enumerate()
            .filter(|(_, e)| e.policy_version_id.trim().is_empty())
            .map(|(i, _)| {
                Issue::new(
                    &["manifest", &i.to_string(), "policy_version_id"],
                    "Too small: expected string to have >=1 characters",
                )
            })
            .collect(),
    )?;
    Ok(body
        .manifest
        .into_iter()
        .map(|e| e.policy_version_id)
        .collect())
}

/// The manifest contract (§11), checked on version create, activation and simulation. A
/// stored version whose policy version vanished is a `409` (`stored`), not a contract error.
pub(super) async fn verify_manifest(
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

async fn add_version(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let manifest = manifest_ids(schema::strict(&req.headers, &raw)?)?;
    live_set(&app, &zone, &set, "policy_set_not_found").await?;
    let checked = verify_manifest(&app, &zone, &manifest, false).await?;
    let bundle = Arc::new(
        app.engines
            .compile_manifest(&app.pool, &checked.policy_version_ids)
            .await?,
    );
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
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
            views::to_json(&SetVersionCreated {
                version_id: v.version_id.clone(),
                id: v.version_id.clone(),
                policy_set_id: v.policy_set_id.clone(),
                version: v.version,
                manifest_sha256: v.manifest_sha256.clone(),
                schema_version: v.schema_version.clone(),
                created_at: pagination::ts(env.occurred_at),
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

async fn activate(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let ActivateBody { version_id } = schema::strict(&req.headers, &raw)?;
    let version = set_version(&app, &zone, &set, &version_id, "version_not_found").await?;
    live_set(&app, &zone, &set, "policy_set_binding_not_found").await?;
    verify_manifest(&app, &zone, &version.manifest, true).await?;
    app.engines.compile_version(&app.pool, &version).await?;
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
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
            views::to_json(&Activation {
                activated: true,
                version_id: a.version_id.clone(),
                outbox_id: env.event_id.clone(),
                status_url: status_url(&zone, &set, &a.version_id, &env.event_id),
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
