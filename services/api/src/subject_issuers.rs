//! Federated user issuers (management-api.md §17.2, `subject-issuers`): the id-token
//! issuers the STS's federation exchange accepts (sts.md §4.5). List, get, create, patch
//! (`jwks_url`, `audience`), archive.

use super::views::{self, Attribution};
use serde::{Deserialize, Serialize};

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::Value;
use serval_domain::catalog::subject_issuer::{
    self, SubjectIssuerData, AUDIENCE_MAX_CHARS, ISSUER_MAX_CHARS, JWKS_URL_MAX_CHARS,
};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use serval_projector::catalog as read;
use utoipa::ToSchema;

use super::catalog::{self as common, ListQuery, WriteCtx};
use super::params::PathIds;
use super::routes::Routes;
use super::schema;
use serval_kit::http::body::RawBody;
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::Failure;

const KIND: CatalogKind = CatalogKind::SubjectIssuer;
const BASE: &str = "/v1/zones/{zone}/subject-issuers";

pub fn router() -> Routes {
    let one = format!("{BASE}/{{id}}");
    Routes::new("subject-issuers")
        .op(
            Method::GET,
            BASE,
            list,
            "List federated user issuers",
            200,
            &["400 invalid_query", "400 invalid_cursor"],
        )
        .query::<ListQuery>()
        .gives_page::<SubjectIssuerView>()
        .op(
            Method::POST,
            BASE,
            create,
            "Register a federated user issuer",
            201,
            &[
                "400 invalid_subject_issuer",
                "404 zone_not_found",
                "409 subject_issuer_exists",
                "409 subject_issuer_limit_reached",
            ],
        )
        .takes::<CreateBody>()
        .gives::<SubjectIssuerView>()
        .op(
            Method::GET,
            &one,
            get_one,
            "Get a federated user issuer",
            200,
            &["404 subject_issuer_not_found"],
        )
        .gives::<SubjectIssuerView>()
        .op(
            Method::PATCH,
            &one,
            patch,
            "Change a federated user issuer's JWKS URL or audience",
            200,
            &["400 invalid_subject_issuer", "404 subject_issuer_not_found"],
        )
        .takes::<PatchBody>()
        .gives::<SubjectIssuerView>()
        .op(
            Method::DELETE,
            &one,
            archive,
            "Archive a federated user issuer (minted authority lives on)",
            204,
            &["404 subject_issuer_not_found"],
        )
        .no_body()
}

/// A federated user issuer (§17.2).
#[derive(Serialize, ToSchema)]
pub struct SubjectIssuerView {
    id: String,
    zone_id: String,
    issuer: String,
    jwks_url: String,
    audience: String,
    #[serde(flatten)]
    attribution: Attribution,
}

fn render(e: &Entity) -> Value {
    let EntityData::SubjectIssuer(i) = &e.data else {
        return Value::Null;
    };
    views::to_json(&SubjectIssuerView {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        issuer: i.issuer.clone(),
        jwks_url: i.jwks_url.clone(),
        audience: i.audience.clone(),
        attribution: common::attribution(e),
    })
}

fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_subject_issuer").description(description)
}

fn not_found() -> ApiError {
    ApiError::not_found("subject_issuer_not_found")
}

/// An HTTPS URL without credentials, query or fragment, at most `max` characters.
fn https_url(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > max {
        return Err(invalid(format!("{field} must be 1 to {max} characters")));
    }
    let u = url::Url::parse(value).map_err(|_| invalid(format!("{field} must be a URL")))?;
    if u.scheme() != "https" || u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{field} must be an https URL")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid(format!("{field} must not carry credentials")));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid(format!(
            "{field} must not carry a query or fragment"
        )));
    }
    Ok(())
}

fn audience_ok(audience: &str) -> Result<(), ApiError> {
    if audience.trim().is_empty() || audience.chars().count() > AUDIENCE_MAX_CHARS {
        return Err(invalid(format!(
            "audience must be 1 to {AUDIENCE_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

const _: () = assert!(
    ISSUER_MAX_CHARS == 2048 && JWKS_URL_MAX_CHARS == 2048 && AUDIENCE_MAX_CHARS == 512,
    "the body types document these lengths"
);

/// `POST …/subject-issuers`.
#[derive(Deserialize, ToSchema)]
#[schema(as = SubjectIssuerCreate)]
pub struct CreateBody {
    /// HTTPS, no credentials, query or fragment.
    #[schema(min_length = 1, max_length = 2048)]
    issuer: String,
    /// HTTPS, no credentials, query or fragment.
    #[schema(min_length = 1, max_length = 2048)]
    jwks_url: String,
    #[schema(min_length = 1, max_length = 512)]
    audience: String,
}

/// `PATCH …/subject-issuers/{id}`: only these two change.
#[derive(Deserialize, ToSchema)]
#[schema(as = SubjectIssuerPatch)]
pub struct PatchBody {
    #[schema(min_length = 1, max_length = 2048)]
    jwks_url: Option<String>,
    #[schema(min_length = 1, max_length = 512)]
    audience: Option<String>,
}

fn exists() -> ApiError {
    ApiError::conflict("subject_issuer_exists")
        .description("an active issuer with this URL is already registered in the zone")
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    common::cached_page(&app, ids.at(0), KIND, &q, "", &[], render).await
}

async fn load(app: &App, zone: &str, id: &str) -> Result<Entity, ApiError> {
    read::load(&app.pool, zone, id)
        .await?
        .filter(|e| e.kind() == KIND)
        .ok_or_else(not_found)
}

async fn get_one(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    Ok(Json(render(&load(&app, ids.at(0), ids.at(1)).await?)))
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let CreateBody {
        issuer,
        jwks_url,
        audience,
    } = schema::lenient(&req.headers, &raw, "invalid_subject_issuer")?;
    https_url("issuer", &issuer, ISSUER_MAX_CHARS)?;
    https_url("jwks_url", &jwks_url, JWKS_URL_MAX_CHARS)?;
    audience_ok(&audience)?;
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    // The cap is read from the read model: two racing creates may pass it together, the
    // same-issuer reservation still holds.
    if read::count_live(&app.pool, &ctx.zone, KIND).await? >= subject_issuer::MAX_ACTIVE {
        return Err(
            ApiError::conflict("subject_issuer_limit_reached").description(format!(
                "a zone may register at most {} active issuers",
                subject_issuer::MAX_ACTIVE
            )),
        );
    }
    let id = uuid::Uuid::now_v7().to_string();
    let data = EntityData::SubjectIssuer(SubjectIssuerData {
        issuer,
        jwks_url,
        audience,
    });
    match common::commit_create(&app, &ctx, &id, &data).await {
        Ok(w) => common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await,
        Err(Failure::Taken { .. }) => Err(exists()),
        Err(Failure::Api(e)) => Err(e),
    }
}

async fn patch(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let PatchBody { jwks_url, audience } =
        schema::lenient(&req.headers, &raw, "invalid_subject_issuer")?;
    if let Some(u) = &jwks_url {
        https_url("jwks_url", u, JWKS_URL_MAX_CHARS)?;
    }
    if let Some(a) = &audience {
        audience_ok(a)?;
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    load(&app, &ctx.zone, ids.at(1)).await?;
    let w = common::commit(&app, &ctx, ids.at(1), |state| {
        let Some(EntityData::SubjectIssuer(i)) = state.filter(|e| e.is_live()).map(|e| &e.data)
        else {
            return Err(not_found());
        };
        let mut next = i.clone();
        let mut changed = Vec::new();
        if let Some(u) = jwks_url.as_ref().filter(|u| **u != i.jwks_url) {
            next.jwks_url = u.clone();
            changed.push("jwks_url".to_owned());
        }
        if let Some(a) = audience.as_ref().filter(|a| **a != i.audience) {
            next.audience = a.clone();
            changed.push("audience".to_owned());
        }
        changed.sort();
        Ok(CatalogCommand::Replace {
            data: EntityData::SubjectIssuer(next),
            changed_fields: changed,
            secret_rotated: false,
        })
    })
    .await
    .map_err(ApiError::from)?;
    common::answer(&app, &ctx, w, StatusCode::OK, Some(&render)).await
}

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    load(&app, &ctx.zone, ids.at(1))
        .await?
        .is_live()
        .then_some(())
        .ok_or_else(not_found)?;
    let w = common::commit(&app, &ctx, ids.at(1), |_| {
        Ok(CatalogCommand::Archive { kind: KIND })
    })
    .await
    .map_err(ApiError::from)?;
    common::answer(&app, &ctx, w, StatusCode::NO_CONTENT, None).await
}
