//! Zones (management-api.md §5): list, create, get, PATCH, DELETE, dcr-status.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use serval_domain::zone::{
    self, DcrShutdownMode, DcrShutdownOutcome, Zone, ZoneCommand, ZoneContext, ZoneError,
    ZoneEvent, ZonePatch,
};
use serval_domain::{Actor, Event};
use serval_projector::catalog as read_catalog;
use serval_projector::zones as read;
use serval_schema::projections::ZONES;
use serval_streams::append::Reservation;
use serval_streams::{AppendRequest, LogStream};

use super::params::PathId;
use super::routes::Routes;
use super::views::{self, Stamps};
use serval_kit::freshness::Dep;
use serval_kit::http::body::{parse_object, RawBody};
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::read_cache;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Failure, Outcome};
use utoipa::ToSchema;

use serval_domain::zone::SLUG_RESERVATION;

pub fn router() -> Routes {
    Routes::new("zones")
        .op(
            Method::GET,
            "/v1/zones",
            list,
            "List zones",
            200,
            &["400 invalid_query", "400 invalid_cursor"],
        )
        .query::<PageQuery>()
        .gives_page::<ZoneView>()
        .op(
            Method::POST,
            "/v1/zones",
            create,
            "Create a zone",
            201,
            &[
                "400 invalid_zone",
                "409 reserved_namespace",
                "409 zone_slug_conflict",
            ],
        )
        .takes::<CreateBody>()
        .gives::<ZoneView>()
        .op(
            Method::GET,
            "/v1/zones/{id}",
            get_one,
            "Get a zone",
            200,
            &["404 zone_not_found"],
        )
        .gives::<ZoneView>()
        .op(
            Method::PATCH,
            "/v1/zones/{id}",
            patch,
            "Update a zone",
            200,
            &[
                "400 invalid_zone",
                "400 no_fields",
                "404 zone_not_found",
                "409 zone_slug_conflict",
            ],
        )
        .takes::<PatchBody>()
        .gives::<ZoneView>()
        .op(
            Method::DELETE,
            "/v1/zones/{id}",
            archive,
            "Archive a zone",
            204,
            &["404 zone_not_found"],
        )
        .op(
            Method::GET,
            "/v1/zones/{id}/dcr-status",
            dcr_status,
            "DCR gate and live DCR applications",
            200,
            &["404 zone_not_found"],
        )
        .gives::<DcrStatus>()
}

/// A zone (§4).
#[derive(Serialize, ToSchema)]
pub struct ZoneView {
    id: String,
    name: String,
    slug: String,
    dcr_enabled: bool,
    operator_coauthor_badge: bool,
    operator_governed: bool,
    #[serde(flatten)]
    stamps: Stamps,
    /// The last event applied to the zone (a Serval extension).
    last_event_id: Option<String>,
}

/// `GET /v1/zones/{id}/dcr-status`.
#[derive(Serialize, ToSchema)]
pub struct DcrStatus {
    id: String,
    dcr_enabled: bool,
    live_dcr_applications: i64,
}

pub fn render(z: &Zone) -> Value {
    views::to_json(&ZoneView {
        id: z.id.clone(),
        name: z.name.clone(),
        slug: z.slug.clone(),
        dcr_enabled: z.dcr_enabled,
        operator_coauthor_badge: z.operator_coauthor_badge,
        operator_governed: z.operator_governed,
        stamps: Stamps::new(
            (&z.created_by, z.created_via_operator, z.created_at),
            (&z.updated_by, z.updated_via_operator, z.updated_at),
        ),
        last_event_id: z.last_event_id.clone(),
    })
}

fn zone_error(e: ZoneError) -> ApiError {
    match e {
        ZoneError::NotFound => ApiError::not_found("zone_not_found"),
        ZoneError::AlreadyExists => ApiError::internal("zone id collision"),
        ZoneError::Invalid(why) => ApiError::bad_request("invalid_zone").description(why),
        ZoneError::NoFields => ApiError::bad_request("no_fields"),
        ZoneError::DcrShutdownNotApplicable => ApiError::bad_request("dcr_shutdown_not_applicable"),
        ZoneError::DcrShutdownRequired {
            live_dcr_applications,
        } => ApiError::conflict("dcr_shutdown_required").with(
            "details",
            json!({ "live_dcr_applications": live_dcr_applications }),
        ),
        ZoneError::ReservedNamespace => ApiError::conflict("reserved_namespace")
            .description("the caracal.sys namespace is reserved for the bootstrap token"),
    }
}

fn slug_conflict() -> ApiError {
    ApiError::conflict("zone_slug_conflict").description("a zone with this slug already exists")
}

async fn live_zone(app: &App, id: &str) -> Result<Zone, ApiError> {
    read::load(&app.pool, id)
        .await?
        .filter(|z| z.archived_at.is_none())
        .ok_or_else(|| ApiError::not_found("zone_not_found"))
}

async fn list(State(app): State<App>, Query(q): Query<PageQuery>) -> Result<Response, ApiError> {
    let page = q.parse(pagination::STANDARD)?;
    let key = format!("zones|{:?}|{}", page.after, page.limit);
    let deps = [Dep::new(ZONES, LogStream::System)];
    let body = read_cache::json(&app, key, &deps, || async {
        let zones = read::list_page(&app.pool, page.after.clone(), page.limit).await?;
        Ok(pagination::page(
            &zones,
            page.limit,
            |z| (z.created_at, z.id.clone()),
            render,
        ))
    })
    .await?;
    Ok(read_cache::respond(body))
}

async fn get_one(State(app): State<App>, PathId(id): PathId) -> Result<Json<Value>, ApiError> {
    Ok(Json(render(&live_zone(&app, &id).await?)))
}

async fn dcr_status(State(app): State<App>, PathId(id): PathId) -> Result<Json<Value>, ApiError> {
    let z = live_zone(&app, &id).await?;
    let live = read::live_dcr_applications(&app.pool, &z.id).await?;
    Ok(Json(views::to_json(&DcrStatus {
        id: z.id,
        dcr_enabled: z.dcr_enabled,
        live_dcr_applications: live,
    })))
}

/// `POST /v1/zones` (§4).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ZoneCreate)]
pub struct CreateBody {
    name: String,
    #[schema(nullable = false)]
    slug: Option<String>,
    #[schema(nullable = false)]
    dcr_enabled: Option<bool>,
}

fn request(
    zone_id: &str,
    expected: u64,
    events: Vec<zone::ZoneEvent>,
    actor: &Actor,
    rid: &str,
) -> AppendRequest {
    AppendRequest::new(
        LogStream::System,
        Some(zone_id.to_owned()),
        zone_id,
        expected,
        events.into_iter().map(Event::Zone).collect(),
        actor.id.clone(),
    )
    .with_request_id(rid)
}

/// The zone a write produced: from the read model when it is visible, else folded from the
/// events the write appended.
async fn written_zone(
    app: &App,
    outcome_zone: Option<Zone>,
    id: &str,
    visible: bool,
) -> Result<Zone, ApiError> {
    // A write appended now answers with the state it was decided on folded with its own
    // events (what the read model holds once it passes them); reading the row back could
    // show a concurrent later write instead.
    if let Some(z) = outcome_zone {
        return Ok(z);
    }
    if visible {
        if let Some(z) = read::load(&app.pool, id).await? {
            return Ok(z);
        }
    }
    Err(ApiError::internal("write produced no zone"))
}

fn fold(state: Option<Zone>, outcome: &Outcome) -> Option<Zone> {
    let Outcome::Applied {
        events, envelopes, ..
    } = outcome
    else {
        return state;
    };
    events
        .iter()
        .zip(envelopes)
        .fold(state, |s, (e, env)| match e {
            Event::Zone(ze) => zone::evolve(s, &env.meta(), ze),
            _ => s,
        })
}

async fn finish(
    app: &App,
    outcome: Outcome,
    before: Option<Zone>,
    status: StatusCode,
    idem: &Option<serval_streams::append::Idempotency>,
    with_body: bool,
) -> Result<Response, ApiError> {
    let stream = LogStream::System;
    let (id, visible, folded) = match &outcome {
        Outcome::Replay { status, body } => return Ok(write::replayed(*status, body.clone())),
        Outcome::Applied { aggregate_id, .. } => {
            (aggregate_id.clone(), true, fold(before, &outcome))
        }
        Outcome::ReplayUnrecorded {
            aggregate_id,
            visible,
        } => (aggregate_id.clone(), *visible, None),
    };
    let body = if with_body {
        Some(render(&written_zone(app, folded, &id, visible).await?))
    } else {
        None
    };
    Ok(write::respond(app, &stream, idem, status, body, visible).await)
}

async fn create(
    State(app): State<App>,
    req: Req,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let body: CreateBody = parse_object(&req.headers, &raw, "invalid_zone")?;
    let actor = req.actor();
    let name = zone::normalize_name(&body.name).map_err(zone_error)?;
    if let Some(s) = &body.slug {
        zone::validate_slug(s).map_err(zone_error)?;
    }
    let idem = req.idempotency(&raw)?;
    let ctx = ZoneContext {
        actor: actor.clone(),
        live_dcr_applications: 0,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let explicit = body.slug.is_some();
    let base = zone::slug_base(&name);
    let candidates: Box<dyn Iterator<Item = String> + Send> = match body.slug.clone() {
        Some(s) => Box::new(std::iter::once(s)),
        None => Box::new(
            zone::slug_candidates(&base)
                .collect::<Vec<_>>()
                .into_iter()
                .chain(std::iter::once(format!(
                    "{base}-{}",
                    uuid::Uuid::new_v4().simple()
                ))),
        ),
    };
    for slug in candidates {
        if !explicit
            && app
                .store
                .reservation_holder(&LogStream::System, SLUG_RESERVATION, &slug)
                .await?
                .is_some()
        {
            continue;
        }
        let cmd = ZoneCommand::Create {
            name: name.clone(),
            slug: slug.clone(),
            dcr_enabled: body.dcr_enabled.unwrap_or(false),
        };
        let outcome = write::execute(&app, ZONES, LogStream::System, idem.clone(), || {
            let (cmd, ctx, actor, id, rid, slug) = (&cmd, &ctx, &actor, &id, &rid, &slug);
            async move {
                let events = zone::decide(None, cmd, ctx).map_err(zone_error)?;
                let mut req = request(id, 0, events, actor, rid);
                req.reserve.push(Reservation {
                    kind: SLUG_RESERVATION,
                    value: slug.clone(),
                });
                Ok(req)
            }
        })
        .await;
        match outcome {
            Ok(o) => return finish(&app, o, None, StatusCode::CREATED, &idem, true).await,
            Err(Failure::Taken { .. }) if explicit => return Err(slug_conflict()),
            // A concurrent create took this generated slug: try the next candidate.
            Err(Failure::Taken { .. }) => continue,
            Err(Failure::Api(e)) => return Err(e),
        }
    }
    Err(slug_conflict())
}

/// `PATCH /v1/zones/{id}` (§4): at least one field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ZonePatch)]
pub struct PatchBody {
    #[schema(nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    slug: Option<String>,
    #[schema(nullable = false)]
    dcr_enabled: Option<bool>,
    #[schema(nullable = false)]
    dcr_shutdown: Option<DcrShutdownMode>,
    #[schema(nullable = false)]
    operator_coauthor_badge: Option<bool>,
    #[schema(nullable = false)]
    operator_governed: Option<bool>,
}

async fn patch(
    State(app): State<App>,
    req: Req,
    PathId(id): PathId,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let body: PatchBody = parse_object(&req.headers, &raw, "invalid_zone")?;
    let patch = ZonePatch {
        name: body.name,
        slug: body.slug,
        dcr_enabled: body.dcr_enabled,
        dcr_shutdown: body.dcr_shutdown,
        operator_coauthor_badge: body.operator_coauthor_badge,
        operator_governed: body.operator_governed,
    };
    let actor = req.actor();
    let idem = req.idempotency(&raw)?;
    let cmd = ZoneCommand::Update(patch.clone());
    // The state the winning attempt decided on, to fold the answer from if needed.
    let before = std::sync::Mutex::new(None);
    let outcome = write::execute(&app, ZONES, LogStream::System, idem.clone(), || {
        let (app, id, cmd, actor, rid, patch, before) =
            (&app, &id, &cmd, &actor, &rid, &patch, &before);
        async move {
            let state = read::load(&app.pool, id).await.map_err(ApiError::from)?;
            let live = match &state {
                Some(z) if z.archived_at.is_none() => read::live_dcr_applications(&app.pool, &z.id)
                    .await
                    .map_err(ApiError::from)?,
                _ => 0,
            };
            let ctx = ZoneContext {
                actor: actor.clone(),
                live_dcr_applications: live.max(0) as u64,
            };
            let events = zone::decide(state.as_ref(), cmd, &ctx).map_err(zone_error)?;
            let z = state.ok_or_else(|| ApiError::not_found("zone_not_found"))?;
            let mut req = request(id, z.version, events, actor, rid);
            if let Some(new_slug) = patch.slug.as_ref().filter(|s| **s != z.slug) {
                req.reserve.push(Reservation {
                    kind: SLUG_RESERVATION,
                    value: new_slug.clone(),
                });
                req.release.push(Reservation {
                    kind: SLUG_RESERVATION,
                    value: z.slug.clone(),
                });
            }
            *before.lock().unwrap_or_else(|p| p.into_inner()) = Some(z);
            Ok(req)
        }
    })
    .await;
    match outcome {
        Ok(o) => {
            let before = before.into_inner().unwrap_or_else(|p| p.into_inner());
            if let Some(mode) = dcr_shutdown_of(&o) {
                dcr_shutdown(&app, &req, &id, mode).await?;
            }
            finish(&app, o, before, StatusCode::OK, &idem, true).await
        }
        Err(Failure::Taken { .. }) => Err(slug_conflict()),
        Err(Failure::Api(e)) => Err(e),
    }
}

/// The DCR shutdown branch a PATCH just took, if any.
fn dcr_shutdown_of(o: &Outcome) -> Option<DcrShutdownOutcome> {
    let Outcome::Applied { events, .. } = o else {
        return None;
    };
    events.iter().find_map(|e| match e {
        Event::Zone(ZoneEvent::Updated(u)) => u.dcr_shutdown,
        _ => None,
    })
}

/// §5 DCR shutdown: `revoke_live` cascades to the live DCR applications, their authority
/// records and sessions (`crate::cascade`); every mode is recorded in the admin audit as
/// the named action `DCR shutdown <mode>` with its counts.
async fn dcr_shutdown(
    app: &App,
    req: &Req,
    zone: &str,
    mode: DcrShutdownOutcome,
) -> Result<(), ApiError> {
    let actor = req.actor();
    let ctx = super::catalog::WriteCtx {
        zone: zone.to_owned(),
        stamp: serval_domain::catalog::Stamp {
            by: actor.id.clone(),
            via_operator: false,
        },
        actor,
        rid: req.rid.clone(),
        idem: None,
    };
    let (name, counts) = match mode {
        DcrShutdownOutcome::RevokeLive => (
            "revoke_live",
            crate::cascade::dcr_revoke_live(app, &ctx).await?,
        ),
        DcrShutdownOutcome::KeepLive => {
            let live = read_catalog::live_dcr_applications(&app.pool, zone).await?;
            (
                "keep_live",
                crate::cascade::ShutdownCounts {
                    live_dcr_applications: live.max(0) as u64,
                    ..Default::default()
                },
            )
        }
        DcrShutdownOutcome::NoLive => ("no_live", Default::default()),
    };
    let mut payload = serde_json::to_value(&counts).unwrap_or_default();
    if let Some(m) = payload.as_object_mut() {
        m.insert("dcr_registration_disabled".into(), true.into());
        m.insert("dcr_shutdown_mode".into(), name.into());
        m.insert("rls_mode".into(), "zone_scoped".into());
        m.insert("rls_zone_guc".into(), zone.into());
    }
    serval_kit::admin_audit::record_action(app, req, zone, &format!("DCR shutdown {name}"), payload)
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit_unavailable").description(
                format!("DCR shutdown applied but its audit record failed: {e}"),
            )
        })
}

async fn archive(
    State(app): State<App>,
    req: Req,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    let actor = req.actor();
    let idem = req.idempotency(b"")?;
    let ctx = ZoneContext {
        actor: actor.clone(),
        live_dcr_applications: 0,
    };
    let outcome = write::execute(&app, ZONES, LogStream::System, idem.clone(), || {
        let (app, id, actor, rid, ctx) = (&app, &id, &actor, &rid, &ctx);
        async move {
            let state = read::load(&app.pool, id).await.map_err(ApiError::from)?;
            let events =
                zone::decide(state.as_ref(), &ZoneCommand::Archive, ctx).map_err(zone_error)?;
            let version = state.map(|z| z.version).unwrap_or(0);
            Ok(request(id, version, events, actor, rid))
        }
    })
    .await
    .map_err(ApiError::from)?;
    finish(&app, outcome, None, StatusCode::NO_CONTENT, &idem, false)
        .await
        .map(IntoResponse::into_response)
}
