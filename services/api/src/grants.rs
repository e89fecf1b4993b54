//! Grants (management-api.md §12): list with filters, get, create, revoke.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use serval_domain::catalog::grant::{self, GrantData};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use serval_projector::catalog::{self as read, Filter, Status};

use super::catalog::{self as common, WriteCtx};
use super::params::PathIds;
use super::routes::Routes;
use super::schema::Obj;
use axum::http::Method;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination;
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;

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
            ],
        )
        .op(
            Method::GET,
            "/v1/zones/{zone}/grants/{id}",
            get_one,
            "Get a grant",
            200,
            &["404 grant_not_found"],
        )
        .op(
            Method::DELETE,
            "/v1/zones/{zone}/grants/{id}",
            revoke,
            "Revoke a grant",
            204,
            &["404 grant_not_found"],
        )
}

fn render(e: &Entity) -> Value {
    let EntityData::Grant(g) = &e.data else {
        return Value::Null;
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("zone_id".into(), json!(e.zone_id));
    m.insert("application_id".into(), json!(g.application_id));
    m.insert("user_id".into(), json!(g.user_id));
    m.insert("resource_id".into(), json!(g.resource_id));
    m.insert("scopes".into(), json!(g.scopes));
    m.insert("status".into(), json!(g.status));
    common::attribution(e, &mut m);
    Value::Object(m)
}

/// The `201` body omits the two `updated_*` fields (§12).
fn render_created(e: &Entity) -> Value {
    let mut v = render(e);
    if let Value::Object(m) = &mut v {
        m.remove("updated_by");
        m.remove("updated_via_operator");
        m.remove("updated_at");
    }
    v
}

/// List rows add the names of what the grant ties together.
fn render_row(e: &Entity, refs: &HashMap<String, Entity>) -> Value {
    let mut v = render(e);
    let EntityData::Grant(g) = &e.data else {
        return v;
    };
    let name = |id: &str| -> Value {
        match refs.get(id).map(|r| &r.data) {
            Some(EntityData::Application(a)) => json!(a.name),
            Some(EntityData::Resource(r)) => json!(r.name),
            Some(EntityData::Provider(p)) => json!(p.name),
            _ => Value::Null,
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
    if let Value::Object(m) = &mut v {
        m.insert("provider_id".into(), json!(provider_id));
        m.insert("application_name".into(), name(&g.application_id));
        m.insert("resource_name".into(), name(&g.resource_id));
        m.insert(
            "provider_name".into(),
            provider_id.as_deref().map(name).unwrap_or(Value::Null),
        );
        m.insert("provider_kind".into(), json!(provider_kind));
    }
    v
}

#[derive(Debug, serde::Deserialize)]
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

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let mut body = Obj::parse(&req.headers, &raw)?;
    let application_id = body.string("application_id", 1);
    let user_id = body.string("user_id", 1);
    let resource_id = body.string("resource_id", 1);
    let scopes = match body.map.get("scopes").cloned() {
        Some(Value::Array(items)) if (1..=grant::MAX_SCOPES).contains(&items.len()) => {
            let mut out = Vec::new();
            for (i, s) in items.iter().enumerate() {
                match s.as_str() {
                    Some(s) if grant::is_grant_scope(s) => out.push(s.to_owned()),
                    _ => body.fail(
                        &["scopes", &i.to_string()],
                        "Invalid string: must match pattern /^[a-z0-9:_./-]+$/ (at most 200 characters)",
                    ),
                }
            }
            out
        }
        Some(Value::Array(_)) => {
            body.fail(&["scopes"], "scopes must list 1-64 scopes");
            Vec::new()
        }
        _ => {
            body.fail(&["scopes"], "Invalid input: expected array");
            Vec::new()
        }
    };
    body.finish()?;
    let (Some(application_id), Some(user_id), Some(resource_id)) =
        (application_id, user_id, resource_id)
    else {
        return Err(ApiError::internal("validated fields missing"));
    };
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let application =
        common::live(&app, &ctx.zone, &application_id, CatalogKind::Application).await?;
    if !common::application(&application)?.is_unexpired(chrono::Utc::now()) {
        return Err(common::not_found(CatalogKind::Application));
    }
    let resource = common::live(&app, &ctx.zone, &resource_id, CatalogKind::Resource).await?;
    if !grant::within_resource(&scopes, &common::resource(&resource)?.scopes) {
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
