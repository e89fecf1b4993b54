//! Resources (management-api.md §8): list, get, create, PATCH, DELETE, with declared scopes
//! and gateway operations.

use super::views::{self, Attribution};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use serval_domain::catalog::resource::{self, Operation, ResourceData, ResourceError};
use serval_domain::catalog::{
    CatalogCommand, CatalogKind, Entity, EntityData, RESOURCE_IDENTIFIER,
};
use serval_projector::catalog::{self as read, Filter};

use super::catalog::{self as common, ListQuery, WriteCtx};
use super::control_resource as control;
use super::params::PathIds;
use super::routes::Routes;
use super::schema;
use crate::probes;
use axum::http::Method;
use serde::Deserialize;
use serval_kit::http::body::RawBody;
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::Failure;
use utoipa::ToSchema;

const KIND: CatalogKind = CatalogKind::Resource;
const INVALID: &str = "invalid_resource";

pub fn router() -> Routes {
    let base = "/v1/zones/{zone}/resources";
    Routes::new("resources")
        .op(
            Method::GET,
            base,
            list,
            "List resources",
            200,
            &["400 invalid_query"],
        )
        .query::<ListQuery>()
        .gives_page::<ResourceView>()
        .op(
            Method::POST,
            base,
            create,
            "Create a resource",
            201,
            &[
                "400 invalid_resource",
                "400 invalid_resource_identifier",
                "400 credential_provider_required",
                "400 upstream_url_required",
                "400 operation_method_and_path_required",
                "400 operation_path_must_be_absolute",
                "400 operation_scope_not_in_resource_scopes",
                "400 operation_duplicate",
                "400 resource_verification_unsupported",
                "404 zone_not_found",
                "404 provider_not_found",
                "409 reserved_namespace",
                "409 protected_resource",
                "409 provider_identifier_conflict",
                "409 resource_identifier_conflict",
                "422 resource_check_failed",
                "429 resource_test_rate_limited",
            ],
        )
        .takes::<Body>()
        .gives::<ResourceView>()
        .op(
            Method::POST,
            &format!("{base}/{{id}}/test"),
            test,
            "Probe a resource's upstream with an invalid mandate (guarded|unverified|unreachable|endpoint_error)",
            200,
            &[
                "400 resource_verification_unsupported",
                "404 resource_not_found",
                "429 resource_test_rate_limited",
            ],
        )
        .no_body()
        .gives::<probes::Check>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}"),
            get_one,
            "Get a resource",
            200,
            &["404 resource_not_found"],
        )
        .gives::<ResourceView>()
        .op(
            Method::PATCH,
            &format!("{base}/{{id}}"),
            patch,
            "Update a resource",
            200,
            &[
                "400 invalid_resource",
                "400 no_fields",
                "404 resource_not_found",
                "404 provider_not_found",
                "409 protected_resource",
                "409 resource_identifier_conflict",
            ],
        )
        .takes::<Body>()
        .gives::<ResourceView>()
        .op(
            Method::DELETE,
            &format!("{base}/{{id}}"),
            archive,
            "Archive a resource",
            204,
            &["404 resource_not_found", "409 protected_resource"],
        )
}

/// A resource (§8).
#[derive(Serialize, ToSchema)]
pub struct ResourceView {
    id: String,
    zone_id: String,
    name: String,
    identifier: String,
    upstream_url: Option<String>,
    scopes: Vec<String>,
    credential_provider_id: Option<String>,
    operations: Vec<Operation>,
    /// `enforced` or `transport_uniform`.
    operation_enforcement: String,
    #[serde(flatten)]
    attribution: Attribution,
    archived_at: Option<String>,
}

pub fn render(e: &Entity) -> Value {
    let EntityData::Resource(r) = &e.data else {
        return Value::Null;
    };
    views::to_json(&ResourceView {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        name: r.name.clone(),
        identifier: r.identifier.clone(),
        upstream_url: r.upstream_url.clone(),
        scopes: r.scopes.clone(),
        credential_provider_id: r.credential_provider_id.clone(),
        operations: r.operations.clone(),
        operation_enforcement: r.operation_enforcement.clone(),
        attribution: common::attribution(e),
        archived_at: common::opt_ts(e.archived_at),
    })
}

fn resource_error(e: ResourceError) -> ApiError {
    match e {
        ResourceError::ReservedNamespace => ApiError::conflict("reserved_namespace")
            .description("the caracal.sys namespace is reserved for the bootstrap token"),
        ResourceError::InvalidIdentifier(why) => ApiError::bad_request(e.code()).description(why),
        other => ApiError::bad_request(other.code()).description(other.to_string()),
    }
}

fn identifier_conflict() -> ApiError {
    ApiError::conflict("resource_identifier_conflict")
        .description("a live resource with this identifier exists in the zone")
}

/// A zone token's lists leave the control resource out (§8: global tokens only).
async fn list(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    Query(q): Query<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    if req.is_global() {
        return common::cached_page(&app, ids.at(0), KIND, &q, "", &[], render).await;
    }
    let hide = [Filter::NotEq(
        "identifier",
        app.cfg.control_audience.clone(),
    )];
    common::cached_page(&app, ids.at(0), KIND, &q, "zone", &hide, render).await
}

/// A live resource `req` may see: the control resource is `404` to a zone token.
async fn visible(app: &App, req: &Req, zone: &str, id: &str) -> Result<Entity, ApiError> {
    let e = common::live(app, zone, id, KIND).await?;
    let r = common::resource(&e)?;
    if control::is_control(app, &r.identifier) && !req.is_global() {
        return Err(control::hidden());
    }
    Ok(e)
}

async fn get_one(State(app): State<App>, req: Req, ids: PathIds) -> Result<Json<Value>, ApiError> {
    Ok(Json(render(
        &visible(&app, &req, ids.at(0), ids.at(1)).await?,
    )))
}

/// `POST /v1/zones/{zone}/resources` and its PATCH (§8): every field optional here; a
/// create needs `scopes` and a name or identifier, a PATCH at least one field. Unknown fields
/// are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = ResourceWrite)]
pub struct Body {
    /// 1–200 characters.
    name: Option<String>,
    /// `resource://<slug>` (or an https URL); derived from the name when absent.
    identifier: Option<String>,
    scopes: Option<Vec<String>>,
    /// An http(s) URL without credentials; `null` clears it.
    #[serde(default, deserialize_with = "schema::present")]
    upstream_url: Option<Option<String>>,
    /// The provider whose credential the Gateway injects; `null` clears it.
    #[serde(default, deserialize_with = "schema::present")]
    credential_provider_id: Option<Option<String>>,
    operations: Option<Vec<Operation>>,
    /// `enforced` or `transport_uniform`.
    operation_enforcement: Option<String>,
    /// Create only: probe the upstream before creating.
    check: Option<bool>,
}

/// The body fields of a create or PATCH, checked.
struct Input {
    name: Option<String>,
    identifier: Option<String>,
    scopes: Option<Vec<String>>,
    upstream_url: Option<Option<String>>,
    provider: Option<Option<String>>,
    operations: Option<Vec<Operation>>,
    enforcement: Option<String>,
}

fn read_input(body: Body) -> Result<Input, ApiError> {
    let bad = |why: &str| ApiError::bad_request(INVALID).description(why.to_owned());
    let name = match body.name {
        Some(n) => {
            let n = n.trim().to_owned();
            if n.is_empty() || n.chars().count() > resource::NAME_MAX_CHARS {
                return Err(bad("name must be 1-200 characters"));
            }
            Some(n)
        }
        None => None,
    };
    let identifier = body.identifier.map(|s| s.trim().to_owned());
    let scopes = body.scopes;
    if let Some(s) = &scopes {
        resource::validate_scopes(s).map_err(resource_error)?;
    }
    let upstream_url = body.upstream_url;
    if let Some(Some(u)) = &upstream_url {
        if !resource::is_upstream_url(u) {
            return Err(bad(
                "upstream_url must be an http(s) URL without credentials",
            ));
        }
    }
    let enforcement = body.operation_enforcement;
    if let Some(e) = &enforcement {
        if e != "enforced" && e != "transport_uniform" {
            return Err(bad(
                "operation_enforcement must be enforced or transport_uniform",
            ));
        }
    }
    Ok(Input {
        name,
        identifier,
        scopes,
        upstream_url,
        provider: body.credential_provider_id,
        operations: body.operations,
        enforcement,
    })
}

/// Completes and checks a resource's data: provider in the zone, upstream URL, operations
/// against the effective scopes. The control resource needs neither provider nor upstream:
/// it is bound to the zone's "no credential" provider (`control_provider`).
async fn finish(app: &App, zone: &str, mut r: ResourceData) -> Result<ResourceData, ApiError> {
    if control::is_control(app, &r.identifier) {
        r.operations =
            resource::normalize_operations(r.operations, &r.scopes).map_err(resource_error)?;
        return Ok(r);
    }
    let Some(provider_id) = r.credential_provider_id.clone() else {
        return Err(ApiError::bad_request("credential_provider_required"));
    };
    if r.upstream_url.is_none() {
        return Err(ApiError::bad_request("upstream_url_required"));
    }
    common::live(app, zone, &provider_id, CatalogKind::Provider).await?;
    r.operations =
        resource::normalize_operations(r.operations, &r.scopes).map_err(resource_error)?;
    Ok(r)
}

/// The create-time `check` and the test route: only a resource whose provider is
/// `caracal_mandate` (the upstream verifies mandates itself) with an upstream URL can be
/// probed; probes share the zone's resource bucket.
async fn probe(app: &App, zone: &str, r: &ResourceData) -> Result<probes::Check, ApiError> {
    let unsupported = || {
        ApiError::bad_request("resource_verification_unsupported").description(
            "only resources with an upstream_url and a caracal_mandate provider can be probed",
        )
    };
    let (Some(url), Some(pid)) = (&r.upstream_url, &r.credential_provider_id) else {
        return Err(unsupported());
    };
    let provider = common::live(app, zone, pid, CatalogKind::Provider).await?;
    if common::provider(&provider)?.kind != "caracal_mandate" {
        return Err(unsupported());
    }
    if probes::rate_limited(app, probes::Class::Resource, zone).await {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_test_rate_limited",
        ));
    }
    Ok(probes::resource(url).await)
}

/// `POST …/resources/:id/test` [extended]: probes the upstream, changes nothing.
async fn test(State(app): State<App>, req: Req, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let e = visible(&app, &req, ids.at(0), ids.at(1)).await?;
    let r = common::resource(&e)?;
    Ok(Json(probe(&app, ids.at(0), r).await?.to_json()))
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body: Body = schema::lenient(&req.headers, &raw, INVALID)?;
    let check = body.check == Some(true);
    let input = read_input(body)?;
    let actor = req.actor();
    let Some(scopes) = input.scopes.clone() else {
        return Err(ApiError::bad_request(INVALID).description("scopes is required"));
    };
    let identifier = input.identifier.clone().filter(|s| !s.is_empty());
    if input.name.is_none() && identifier.is_none() {
        return Err(ApiError::bad_request(INVALID).description("name or identifier is required"));
    }
    let is_control = identifier
        .as_deref()
        .is_some_and(|i| control::is_control(&app, i));
    if is_control {
        if !req.is_global() {
            return Err(control::protected(
                "only a global admin token may create the control resource",
            ));
        }
    } else if let Some(i) = &identifier {
        resource::validate_identifier(i, actor.is_bootstrap).map_err(resource_error)?;
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let provider = if is_control {
        control_provider(&ctx.zone, input.provider.as_ref())?;
        None
    } else {
        input.provider.clone().flatten()
    };
    let mut data = finish(
        &app,
        &ctx.zone,
        ResourceData {
            name: String::new(),
            identifier: identifier.clone().unwrap_or_default(),
            upstream_url: input.upstream_url.clone().flatten(),
            scopes,
            credential_provider_id: provider,
            operations: input.operations.clone().unwrap_or_default(),
            operation_enforcement: input
                .enforcement
                .clone()
                .unwrap_or_else(|| "enforced".into()),
        },
    )
    .await?;
    if read::count_live(&app.pool, &ctx.zone, KIND).await? >= resource::DEFAULT_MAX_PER_ZONE {
        return Err(ApiError::conflict("resource_quota_exceeded"));
    }
    if check {
        let result = probe(&app, &ctx.zone, &data).await?;
        if matches!(result.status, "unreachable" | "endpoint_error") {
            return Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "resource_check_failed")
                    .description(result.detail.clone())
                    .with("details", json!({ "check": result.to_json() })),
            );
        }
    }
    // Last before the write: a create refused above leaves no provider behind.
    if is_control {
        data.credential_provider_id = Some(control::ensure_none_provider(&app, &ctx).await?);
    }
    let id = uuid::Uuid::now_v7().to_string();
    for _ in 0..8 {
        let ident = match &identifier {
            Some(i) => i.clone(),
            None => {
                let mut base = format!(
                    "resource://{}",
                    resource::slug(input.name.as_deref().unwrap_or_default(), "resource")
                );
                // A derived identifier never becomes the control resource.
                if control::is_control(&app, &base) {
                    base.push_str("-2");
                }
                common::free_identifier(&app, &ctx.zone, RESOURCE_IDENTIFIER, &base).await?
            }
        };
        let mut d = data.clone();
        d.name = input.name.clone().unwrap_or_else(|| ident.clone());
        d.identifier = ident;
        let data = EntityData::Resource(d);
        let result = common::commit_create(&app, &ctx, &id, &data).await;
        match result {
            Ok(w) => {
                return common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await
            }
            Err(Failure::Taken { .. }) if identifier.is_some() => return Err(identifier_conflict()),
            Err(Failure::Taken { .. }) => continue,
            Err(Failure::Api(e)) => return Err(e),
        }
    }
    Err(identifier_conflict())
}

async fn patch(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let input = read_input(schema::lenient(&req.headers, &raw, INVALID)?)?;
    let fields = [
        ("name", input.name.is_some()),
        ("identifier", input.identifier.is_some()),
        ("scopes", input.scopes.is_some()),
        ("upstream_url", input.upstream_url.is_some()),
        ("credential_provider_id", input.provider.is_some()),
        ("operations", input.operations.is_some()),
        ("operation_enforcement", input.enforcement.is_some()),
    ];
    let changed: Vec<String> = fields
        .iter()
        .filter(|(_, present)| *present)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if changed.is_empty() {
        return Err(ApiError::bad_request("no_fields"));
    }
    let actor = req.actor();
    if let Some(i) = input
        .identifier
        .as_ref()
        .filter(|i| !control::is_control(&app, i))
    {
        resource::validate_identifier(i, actor.is_bootstrap).map_err(resource_error)?;
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let id = ids.at(1).to_owned();
    let current = visible(&app, &req, &ctx.zone, &id).await?;
    let mut r = common::resource(&current)?.clone();
    let was_control = control::is_control(&app, &r.identifier);
    if let Some(i) = &input.identifier {
        if control::is_control(&app, i) != was_control {
            return Err(control::protected(
                "a resource cannot be renamed into or out of the control resource",
            ));
        }
    }
    if was_control {
        control_provider(&ctx.zone, input.provider.as_ref())?;
    }
    if let Some(v) = &input.name {
        r.name = v.clone();
    }
    if let Some(v) = &input.identifier {
        r.identifier = v.clone();
    }
    if let Some(v) = &input.scopes {
        r.scopes = v.clone();
    }
    if let Some(v) = &input.upstream_url {
        r.upstream_url = v.clone();
    }
    if let Some(v) = input.provider.as_ref().filter(|_| !was_control) {
        r.credential_provider_id = v.clone();
    }
    if let Some(v) = &input.operations {
        r.operations = v.clone();
    }
    if let Some(v) = &input.enforcement {
        r.operation_enforcement = v.clone();
    }
    let data = EntityData::Resource(finish(&app, &ctx.zone, r).await?);
    let result = common::commit(&app, &ctx, &id, |state| {
        if !state.is_some_and(|e| e.is_live()) {
            return Err(common::not_found(KIND));
        }
        Ok(CatalogCommand::Replace {
            data: data.clone(),
            changed_fields: changed.clone(),
            secret_rotated: false,
        })
    })
    .await;
    match result {
        Ok(w) => common::answer(&app, &ctx, w, StatusCode::OK, Some(&render)).await,
        Err(Failure::Taken { .. }) => Err(identifier_conflict()),
        Err(Failure::Api(e)) => Err(e),
    }
}

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    let audience = app.cfg.control_audience.as_str();
    let global = req.is_global();
    let w = common::commit(&app, &ctx, ids.at(1), |state| {
        if let Some(EntityData::Resource(r)) = state.filter(|e| e.is_live()).map(|e| &e.data) {
            if r.identifier == audience {
                return Err(control::refusal(
                    global,
                    "the control resource cannot be deleted",
                ));
            }
        }
        Ok(CatalogCommand::Archive { kind: KIND })
    })
    .await
    .map_err(ApiError::from)?;
    common::answer(&app, &ctx, w, StatusCode::NO_CONTENT, None).await
}

/// The control resource is bound to the zone's "no credential" provider: a body may leave
/// `credential_provider_id` out or name that provider, nothing else.
fn control_provider(zone: &str, asked: Option<&Option<String>>) -> Result<(), ApiError> {
    match asked {
        None => Ok(()),
        Some(Some(p)) if control::is_none_provider(zone, p) => Ok(()),
        Some(_) => Err(control::protected(
            "the control resource is bound to the zone's no-credential provider",
        )),
    }
}
