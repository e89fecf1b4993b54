//! What the catalog routes (applications, providers, resources, grants, provider
//! connections) share: the write path of one object, list queries, and the attribution
//! block.

use super::views::Attribution;
use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use serval_domain::catalog::{
    self, CatalogCommand, CatalogError, CatalogKind, Entity, EntityData, Stamp,
};
use serval_domain::{Actor, Event, EventMeta};
use serval_projector::catalog::{self as read, Filter, Status};
use serval_schema::projections::CATALOG;
use serval_streams::append::{Idempotency, Reservation};
use serval_streams::{AppendRequest, LogStream};

use super::policies::zone_badge;
use serval_kit::freshness::Dep;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::read_cache;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Failure, Outcome};

/// The request context every catalog write carries.
pub struct WriteCtx {
    pub zone: String,
    pub actor: Actor,
    pub rid: String,
    pub idem: Option<Idempotency>,
    pub stamp: Stamp,
}

impl WriteCtx {
    /// Builds the context, checking the zone is live (`404 zone_not_found`).
    pub async fn new(app: &App, zone: &str, req: &Req, raw: &[u8]) -> Result<Self, ApiError> {
        let badge = zone_badge(app, zone).await?;
        let actor = req.actor();
        let rid = req.rid.as_str();
        let idem = req.idempotency(raw)?;
        let stamp = Stamp {
            by: actor.id.clone(),
            via_operator: actor.via_operator_header && badge,
        };
        Ok(WriteCtx {
            zone: zone.to_owned(),
            actor,
            rid: rid.to_owned(),
            idem,
            stamp,
        })
    }

    /// The context of a write no admin token asks for (the OAuth callback): attributed to
    /// `actor_id`, never idempotent.
    pub async fn unauthenticated(
        app: &App,
        zone: &str,
        rid: &str,
        actor_id: &str,
    ) -> Result<Self, ApiError> {
        zone_badge(app, zone).await?;
        Ok(WriteCtx {
            zone: zone.to_owned(),
            actor: Actor {
                id: actor_id.to_owned(),
                is_bootstrap: false,
                via_operator_header: false,
            },
            rid: rid.to_owned(),
            idem: None,
            stamp: Stamp {
                by: actor_id.to_owned(),
                via_operator: false,
            },
        })
    }

    pub fn stream(&self) -> LogStream {
        LogStream::Zone(self.zone.clone())
    }
}

fn catalog_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::NotFound(kind) => not_found(kind),
        CatalogError::AlreadyExists => ApiError::internal("object id collision"),
    }
}

pub fn not_found(kind: CatalogKind) -> ApiError {
    ApiError::not_found(match kind {
        CatalogKind::Application => "application_not_found",
        CatalogKind::Provider => "provider_not_found",
        CatalogKind::Resource => "resource_not_found",
        CatalogKind::Grant => "grant_not_found",
        CatalogKind::ProviderConnection => "provider_connection_not_found",
        CatalogKind::AuthorityRecord => "authority_record_not_found",
        CatalogKind::Session => "session_not_found",
        CatalogKind::Approval => "approval_not_found",
        CatalogKind::SigningKey => "signing_key_not_found",
        CatalogKind::AgentService => "agent_service_not_found",
        CatalogKind::Invocation => "invocation_not_found",
        CatalogKind::DataKey => "data_key_not_found",
        CatalogKind::SubjectIssuer => "subject_issuer_not_found",
    })
}

/// The result of one committed catalog write.
pub struct Written {
    pub outcome: Outcome,
    /// The object after the write (from the read model when visible, else folded).
    pub entity: Option<Entity>,
}

/// Decides `plan(state)` for object `id` against the read model and appends it, retrying on
/// version conflicts. Uniqueness reservations follow from the object before and after the
/// write (`catalog::reservation`), so a rename or archive moves or frees them atomically
/// with the event.
pub async fn commit<F>(app: &App, ctx: &WriteCtx, id: &str, plan: F) -> Result<Written, Failure>
where
    F: Fn(Option<&Entity>) -> Result<CatalogCommand, ApiError> + Sync,
{
    commit_with(app, ctx, id, plan, false).await
}

/// Creates object `id` (a fresh UUIDv7). The first attempt skips reading the object: the
/// append is conditional on version 0, so if the id were taken it would conflict, and the
/// retry reads the real state.
pub async fn commit_create(
    app: &App,
    ctx: &WriteCtx,
    id: &str,
    data: &EntityData,
) -> Result<Written, Failure> {
    let plan = |_: Option<&Entity>| {
        Ok(CatalogCommand::Create {
            zone_id: ctx.zone.clone(),
            data: data.clone(),
        })
    };
    commit_with(app, ctx, id, plan, true).await
}

async fn commit_with<F>(
    app: &App,
    ctx: &WriteCtx,
    id: &str,
    plan: F,
    assume_new: bool,
) -> Result<Written, Failure>
where
    F: Fn(Option<&Entity>) -> Result<CatalogCommand, ApiError> + Sync,
{
    let before = std::sync::Mutex::new(None::<Entity>);
    let first = std::sync::atomic::AtomicBool::new(assume_new);
    let outcome = write::execute(app, CATALOG, ctx.stream(), ctx.idem.clone(), || {
        let (plan, before, first) = (&plan, &before, &first);
        async move {
            let state = if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                None
            } else {
                read::load(&app.pool, &ctx.zone, id)
                    .await
                    .map_err(ApiError::from)?
            };
            let command = plan(state.as_ref())?;
            let events =
                catalog::decide(state.as_ref(), &command, &ctx.stamp).map_err(catalog_error)?;
            let version = state.as_ref().map(|e| e.version).unwrap_or(0);
            // The would-be object, to derive its reservations.
            let probe = EventMeta {
                event_id: String::new(),
                aggregate_id: id.to_owned(),
                aggregate_version: version + 1,
                occurred_at: chrono::Utc::now(),
            };
            let after = events
                .iter()
                .fold(state.clone(), |s, e| catalog::evolve(s, &probe, e));
            let old = state.as_ref().and_then(catalog::reservation);
            let new = after.as_ref().and_then(catalog::reservation);
            let mut req = AppendRequest::new(
                ctx.stream(),
                Some(ctx.zone.clone()),
                id,
                version,
                events.into_iter().map(Event::Catalog).collect(),
                ctx.actor.id.clone(),
            )
            .with_request_id(&ctx.rid);
            if old != new {
                if let Some((kind, value)) = new {
                    req.reserve.push(Reservation { kind, value });
                }
                if let Some((kind, value)) = old {
                    req.release.push(Reservation { kind, value });
                }
            }
            *before.lock().unwrap_or_else(|p| p.into_inner()) = state;
            Ok(req)
        }
    })
    .await?;
    let before = before.into_inner().unwrap_or_else(|p| p.into_inner());
    let entity = written(app, &ctx.zone, id, &outcome, before).await?;
    Ok(Written { outcome, entity })
}

/// The object after a write. Appended now: the state the write was decided on folded with
/// its events — exactly what the read model holds once it has passed them (the append was
/// conditional on that state's version), without reading it back.
async fn written(
    app: &App,
    zone: &str,
    id: &str,
    outcome: &Outcome,
    before: Option<Entity>,
) -> Result<Option<Entity>, ApiError> {
    match outcome.folded(before) {
        Some(after) => Ok(after),
        // A retried request's first answer was not recorded: the read model has it.
        None => Ok(read::load(&app.pool, zone, id).await?),
    }
}

/// Answers a committed write: replayed answers verbatim, else `render(entity)` (or no body).
pub async fn answer(
    app: &App,
    ctx: &WriteCtx,
    w: Written,
    status: StatusCode,
    render: Option<&(dyn Fn(&Entity) -> Value + Sync)>,
) -> Result<Response, ApiError> {
    if let Outcome::Replay { status, body } = w.outcome {
        return Ok(write::replayed(status, body));
    }
    let body = match render {
        Some(r) => Some(r(w
            .entity
            .as_ref()
            .ok_or_else(|| ApiError::internal("write produced no object"))?)),
        None => None,
    };
    Ok(write::respond(
        app,
        &ctx.stream(),
        &ctx.idem,
        status,
        body,
        w.outcome.visible(),
    )
    .await)
}

/// A live object of `kind` in the zone, or the kind's `404`.
pub async fn live(app: &App, zone: &str, id: &str, kind: CatalogKind) -> Result<Entity, ApiError> {
    read::load(&app.pool, zone, id)
        .await?
        .filter(|e| e.is_live() && e.kind() == kind)
        .ok_or_else(|| not_found(kind))
}

/// `status` of the standard catalog lists: `active` (default) or `archived`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub status: Option<String>,
    /// Route-specific filters, read by name.
    #[serde(flatten)]
    #[param(ignore)]
    pub rest: HashMap<String, String>,
}

impl ListQuery {
    pub fn page(&self) -> Result<pagination::Page, ApiError> {
        PageQuery {
            limit: self.limit.clone(),
            cursor: self.cursor.clone(),
        }
        .parse(pagination::STANDARD)
    }

    pub fn archive_status(&self) -> Result<Status, ApiError> {
        match self.status.as_deref() {
            None | Some("active") => Ok(Status::Live),
            Some("archived") => Ok(Status::Archived),
            Some(_) => Err(ApiError::bad_request("invalid_query")
                .description("status must be active or archived")),
        }
    }
}

/// The `status` list filter of grants and provider connections (`active|revoked|expired`).
pub fn lifecycle_filter(status: Option<&str>) -> Result<Option<Filter>, ApiError> {
    match status {
        None => Ok(None),
        Some(v @ ("active" | "revoked" | "expired")) => {
            Ok(Some(Filter::Eq("status", v.to_owned())))
        }
        Some(_) => Err(ApiError::bad_request("invalid_query")
            .description("status must be active, revoked or expired")),
    }
}

/// Lists one page of a zone's objects of `kind`.
pub async fn list_page(
    app: &App,
    zone: &str,
    kind: CatalogKind,
    status: Status,
    filters: &[Filter],
    page: &pagination::Page,
) -> Result<Vec<Entity>, ApiError> {
    Ok(read::list(
        &app.pool,
        zone,
        kind,
        status,
        filters,
        page.after.clone(),
        page.limit,
    )
    .await?)
}

/// A page of a catalog kind's list through the read cache (`serval_kit::read_cache`): fresh
/// against the zone's log head, served from memory while the catalog has not moved.
/// `variant` names what else the rendering and `filters` depend on (e.g. the token's scope).
pub async fn cached_page(
    app: &App,
    zone: &str,
    kind: CatalogKind,
    q: &ListQuery,
    variant: &str,
    filters: &[Filter],
    render: impl Fn(&Entity) -> Value,
) -> Result<Response, ApiError> {
    let page = q.page()?;
    let status = q.archive_status()?;
    let key = format!(
        "{}|{zone}|{status:?}|{variant}|{:?}|{}",
        kind.as_str(),
        page.after,
        page.limit
    );
    let deps = [Dep::new(CATALOG, LogStream::Zone(zone.to_owned()))];
    let body = read_cache::json(app, key, &deps, || async {
        let rows = list_page(app, zone, kind, status, filters, &page).await?;
        Ok(page_body(&rows, page.limit, &render))
    })
    .await?;
    Ok(read_cache::respond(body))
}

pub fn page_body(items: &[Entity], limit: i64, render: impl Fn(&Entity) -> Value) -> Value {
    pagination::page(items, limit, |e| (e.created_at, e.id.clone()), render)
}

/// The attribution block and timestamps of an object (§1).
pub fn attribution(e: &Entity) -> Attribution {
    Attribution {
        created_by: e.created_by.clone(),
        created_via_operator: e.created_via_operator,
        updated_by: e.updated_by.clone(),
        updated_via_operator: e.updated_via_operator,
        created_at: pagination::ts(e.created_at),
        updated_at: e.updated_at.map(pagination::ts),
    }
}

pub fn opt_ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(pagination::ts)
}

/// The data of an entity known to be of a kind (a read model row never changes kind).
pub fn data_mismatch() -> ApiError {
    ApiError::internal("catalog row of an unexpected kind")
}

pub fn application(e: &Entity) -> Result<&catalog::ApplicationData, ApiError> {
    match &e.data {
        EntityData::Application(a) => Ok(a),
        _ => Err(data_mismatch()),
    }
}

pub fn provider(e: &Entity) -> Result<&catalog::ProviderData, ApiError> {
    match &e.data {
        EntityData::Provider(p) => Ok(p),
        _ => Err(data_mismatch()),
    }
}

pub fn resource(e: &Entity) -> Result<&catalog::ResourceData, ApiError> {
    match &e.data {
        EntityData::Resource(r) => Ok(r),
        _ => Err(data_mismatch()),
    }
}

/// Picks the first free identifier among `candidates` (skipping held reservations).
pub async fn free_identifier(
    app: &App,
    zone: &str,
    kind: &'static str,
    base: &str,
) -> Result<String, ApiError> {
    let stream = LogStream::Zone(zone.to_owned());
    let candidates = std::iter::once(base.to_owned())
        .chain((2..=999).map(|n| format!("{base}-{n}")))
        .chain(std::iter::once(format!(
            "{base}-{}",
            uuid::Uuid::new_v4().simple()
        )));
    for c in candidates {
        let held = app
            .store
            .reservation_holder(&stream, kind, &catalog::reservation_value(&c))
            .await?;
        if held.is_none() {
            return Ok(c);
        }
    }
    Err(ApiError::internal("no free identifier"))
}
