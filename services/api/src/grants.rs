//! Grants (management-api.md §12): list with filters, get, create, revoke.

use super::views::{self, Attribution};
use serde::Serialize;
use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use serval_domain::catalog::grant::{self, GrantData};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use serval_projector::catalog::{self as read, Filter, Status};

use super::catalog::{self as common, WriteCtx};
use super::params::PathIds;
use super::routes::Routes;
use super::schema::{self, Issue};
use axum::http::Method;
use serde::Deserialize;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination;
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use utoipa::ToSchema;

const KIND: CatalogKind = CatalogKind::Grant;

pub fn router() -> Routes {
    Routes::new("grants")
        .op(
            Method::GET,
            "/v1/zones/{zone}/grants",
            list,
            "List grants (filters: application, subject, resource, provider, status, scopes)",
            200,
            &["400 invalid_query"],
        )
        .query::<GrantQuery>()
        .gives_page::<GrantRow>()
        .op(
            Method::POST,
            "/v1/zones/{zone}/grants",
            create,
            "Create a grant",
            201,
            &[
                "400 invalid_body",
                "403 grant_scopes_exceed_resource",
                "404 zone_not_found",
                "404 application_not_found",
                "404 resource_not_found",
                "409 protected_resource",
            ],
        )
        .takes::<CreateBody>()
        .gives::<GrantCreated>()
        .op(
            Method::GET,
            "/v1/zones/{zone}/grants/{id}",
            get_one,
            "Get a grant",
            200,
            &["404 grant_not_found"],
        )
        .gives::<GrantView>()
        .op(
            Method::DELETE,
            "/v1/zones/{zone}/grants/{id}",
            revoke,
            "Revoke a grant",
            204,
            &["404 grant_not_found"],
        )
}

/// A grant (§12).
#[derive(Serialize, ToSchema)]
pub struct GrantView {
    #[serde(flatten)]
    core: GrantCore,
    #[serde(flatten)]
    attribution: Attribution,
}

/// What every answer about a grant holds.
#[derive(Serialize, ToSchema)]
pub struct GrantCore {
    id: String,
    zone_id: String,
    application_id: String,
    user_id: String,
    resource_id: String,
    scopes: Vec<String>,
    /// `active` or `revoked`.
    status: String,
}

/// The `201` body of a grant create: without the `updated_*` fields (§12).
#[derive(Serialize, ToSchema)]
pub struct GrantCreated {
    #[serde(flatten)]
    core: GrantCore,
    created_by: String,
    created_via_operator: bool,
    created_at: String,
}

/// A list row: the grant with the names of what it ties together.
#[derive(Serialize, ToSchema)]
pub struct GrantRow {
    #[serde(flatten)]
    grant: GrantView,
    provider_id: Option<String>,
    application_name: Option<String>,
    resource_name: Option<String>,
    provider_name: Option<String>,
    provider_kind: Option<String>,
}

fn view(e: &Entity) -> Option<GrantView> {
    let EntityData::Grant(g) = &e.data else {
        return None;
    };
    Some(GrantView {
        core: GrantCore {
            id: e.id.clone(),
            zone_id: e.zone_id.clone(),
            application_id: g.application_id.clone(),
            user_id: g.user_id.clone(),
            resource_id: g.resource_id.clone(),
            scopes: g.scopes.clone(),
            status: g.status.clone(),
        },
        attribution: common::attribution(e),
    })
}

fn render(e: &Entity) -> Value {
    view(e).map(|v| views::to_json(&v)).unwrap_or(Value::Null)
}

fn render_created(e: &Entity) -> Value {
    let Some(g) = view(e) else {
        return Value::Null;
    };
    views::to_json(&GrantCreated {
        core: g.core,
        created_by: g.attribution.created_by,
        created_via_operator: g.attribution.created_via_operator,
        created_at: g.attribution.created_at,
    })
}

/// List rows add the names of what the grant ties together.
fn render_row(e: &Entity, refs: &HashMap<String, Entity>) -> Value {
    let (Some(grant), EntityData::Grant(g)) = (view(e), &e.data) else {
        return Value::Null;
    };
    let name = |id: &str| -> Option<String> {
        match refs.get(id).map(|r| &r.data) {
            Some(EntityData::Application(a)) => Some(a.name.clone()),
            Some(EntityData::Resource(r)) => Some(r.name.clone()),
            Some(EntityData::Provider(p)) => Some(p.name.clone()),
            _ => None,
        }
    };
    let provider_id = match refs.get(&g.resource_id).map(|r| &r.data) {
        Some(EntityData::Resource(r)) => r.credential_provider_id.clone(),
        _ => None,
    };
    let provider_kind = provider_id
        .as_deref()
        .and_then(|p| match refs.get(p).map(|r| &r.data) {
            Some(EntityData::Provider(p)) => Some(p.kind.clone()),
            _ => None,
        });
    views::to_json(&GrantRow {
        application_name: name(&g.application_id),
        resource_name: name(&g.resource_id),
        provider_name: provider_id.as_deref().and_then(name),
        provider_id,
        provider_kind,
        grant,
    })
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GrantQuery {
    limit: Option<String>,
    cursor: Option<String>,
    application_id: Option<String>,
    user_id: Option<String>,
    subject_id: Option<String>,
    resource_id: Option<String>,
    provider_id: Option<String>,
    status: Option<String>,
    scopes: Option<String>,
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<GrantQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = pagination::PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::STANDARD)?;
    let mut filters = Vec::new();
    if let Some(v) = &q.application_id {
        filters.push(Filter::Eq("application_id", v.clone()));
    }
    // `user_id` wins over its alias `subject_id`.
    if let Some(v) = q.user_id.as_ref().or(q.subject_id.as_ref()) {
        filters.push(Filter::Eq("user_id", v.clone()));
    }
    if let Some(v) = &q.resource_id {
        filters.push(Filter::Eq("resource_id", v.clone()));
    }
    if let Some(v) = &q.provider_id {
        filters.push(Filter::GrantProvider(v.clone()));
    }
    filters.extend(common::lifecycle_filter(q.status.as_deref())?);
    if let Some(v) = &q.scopes {
        let scopes: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if scopes.is_empty() {
            return Err(ApiError::bad_request("invalid_query").description("scopes is empty"));
        }
        filters.push(Filter::ContainsAll("scopes", scopes));
    }
    let rows = common::list_page(&app, ids.at(0), KIND, Status::Live, &filters, &page).await?;
    // One lookup for every application, resource and provider the page names.
    let mut ref_ids: Vec<String> = Vec::new();
    for e in &rows {
        if let EntityData::Grant(g) = &e.data {
            ref_ids.push(g.application_id.clone());
            ref_ids.push(g.resource_id.clone());
        }
    }
    let mut refs = read::load_many(&app.pool, &ref_ids).await?;
    let provider_ids: Vec<String> = refs
        .values()
        .filter_map(|e| match &e.data {
            EntityData::Resource(r) => r.credential_provider_id.clone(),
            _ => None,
        })
        .collect();
    refs.extend(read::load_many(&app.pool, &provider_ids).await?);
    let zone = ids.at(0);
    refs.retain(|_, e| e.zone_id == zone);
    Ok(Json(common::page_body(&rows, page.limit, |e| {
        render_row(e, &refs)
    })))
}

async fn load_grant(app: &App, zone: &str, id: &str) -> Result<Entity, ApiError> {
    read::load(&app.pool, zone, id)
        .await?
        .filter(|e| e.kind() == KIND)
        .ok_or_else(|| ApiError::not_found("grant_not_found"))
}

async fn get_one(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    Ok(Json(render(&load_grant(&app, ids.at(0), ids.at(1)).await?)))
}

/// Scopes that are strings but not grant scopes (the schema checks the rest).
fn scope_issues(body: &Map<String, Value>) -> Vec<Issue> {
    let Some(Value::Array(items)) = body.get("scopes") else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_str().is_some_and(|s| !grant::is_grant_scope(s)))
        .map(|(i, _)| {
            Issue::new(
                &["scopes", &i.to_string()],
                "Invalid string: must match pattern /^[a-z0-9:_./-]+$/ (at most 200 characters)",
            )
        })
        .collect()
}

const _: () = assert!(
    grant::MAX_SCOPES == 64,
    "GrantCreate documents max_items = 64"
);

/// `POST /v1/zones/{zone}/grants` (§12).
#[derive(Deserialize, ToSchema)]
#[schema(as = GrantCreate)]
pub struct CreateBody {
    #[schema(min_length = 1)]
    application_id: String,
    #[schema(min_length = 1)]
    user_id: String,
    #[schema(min_length = 1)]
    resource_id: String,
    /// Each matches `^[a-z0-9:_./-]+$`, at most 200 characters.
    #[schema(min_items = 1, max_items = 64)]
    scopes: Vec<String>,
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let CreateBody {
        application_id,
        user_id,
        resource_id,
        scopes,
    } = schema::strict_with(&req.headers, &raw, scope_issues)?;
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let application =
        common::live(&app, &ctx.zone, &application_id, CatalogKind::Application).await?;
    if !common::application(&application)?.is_unexpired(chrono::Utc::now()) {
        return Err(common::not_found(CatalogKind::Application));
    }
    let resource = common::live(&app, &ctx.zone, &resource_id, CatalogKind::Resource).await?;
    let resource = common::resource(&resource)?;
    // §8: the control resource is reached by control keys (sts.md §4.6), never by a grant,
    // and a zone token does not see it at all.
    if crate::control_resource::is_control(&app, &resource.identifier) {
        return Err(crate::control_resource::refusal(
            req.is_global(),
            "the control resource is minted for control keys, not through grants",
        ));
    }
    if !grant::within_resource(&scopes, &resource.scopes) {
        return Err(ApiError::forbidden("grant_scopes_exceed_resource")
            .description("every scope must be one of the resource's scopes"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let data = EntityData::Grant(GrantData {
        application_id,
        user_id,
        resource_id,
        scopes,
        status: "active".into(),
    });
    let w = common::commit_create(&app, &ctx, &id, &data)
        .await
        .map_err(ApiError::from)?;
    common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render_created)).await
}

/// Revocation: `status:"revoked"`, repeatable (`204` again). §18: every active authority
/// record of the grant's user is revoked with it; a repeated call finishes that cascade.
async fn revoke(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    let current = load_grant(&app, &ctx.zone, ids.at(1)).await?;
    let EntityData::Grant(g) = &current.data else {
        return Err(common::data_mismatch());
    };
    let user_id = g.user_id.clone();
    if g.status == "revoked" {
        super::authority_records::revoke_subject(
            &app,
            &ctx,
            &user_id,
            "grant_revoked",
            Some(ids.at(1)),
        )
        .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let w = common::commit(&app, &ctx, ids.at(1), |state| {
        let Some(EntityData::Grant(g)) = state.map(|e| &e.data) else {
            return Err(ApiError::not_found("grant_not_found"));
        };
        let mut g = g.clone();
        g.status = "revoked".into();
        Ok(CatalogCommand::Replace {
            data: EntityData::Grant(g),
            changed_fields: vec!["status".into()],
            secret_rotated: false,
        })
    })
    .await
    .map_err(ApiError::from)?;
    if !matches!(w.outcome, serval_kit::write::Outcome::Replay { .. }) {
        super::authority_records::revoke_subject(
            &app,
            &ctx,
            &user_id,
            "grant_revoked",
            Some(ids.at(1)),
        )
        .await?;
    }
    common::answer(&app, &ctx, w, StatusCode::NO_CONTENT, None).await
}
