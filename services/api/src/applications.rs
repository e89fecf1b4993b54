//! Applications (management-api.md §6): list, get, create, PATCH, DELETE, rotate-secret,
//! the audited client-secret reveal, and DCR registration.

use super::views::{self, Attribution};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serval_domain::catalog::application::{
    self, ApplicationData, ApplicationError, RegistrationMethod,
};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use utoipa::ToSchema;

use super::catalog::{self as common, ListQuery, WriteCtx};
use super::params::PathIds;
use super::routes::Routes;
use axum::http::Method;
use serval_kit::client_assertion;
use serval_kit::http::body::{parse_object, RawBody};
use serval_kit::http::ApiError;
use serval_kit::rate_limit;
use serval_kit::request::Req;
use serval_kit::secrets::{self, Binding, SecretError};
use serval_kit::state::App;
use serval_kit::write::Failure;

const KIND: CatalogKind = CatalogKind::Application;
const INVALID: &str = "invalid_application";

pub fn router() -> Routes {
    let base = "/v1/zones/{zone}/applications";
    Routes::new("applications")
        .op(
            Method::GET,
            base,
            list,
            "List applications",
            200,
            &["400 invalid_query"],
        )
        .query::<ListQuery>()
        .gives_page::<ApplicationView>()
        .op(
            Method::POST,
            base,
            create,
            "Create a managed application (secret shown once)",
            201,
            &[
                "400 invalid_application",
                "403 trait_not_allowed",
                "404 zone_not_found",
                "409 reserved_namespace",
                "409 application_name_taken",
                "502 secret_backend_unavailable",
            ],
        )
        .takes::<CreateBody>()
        .gives::<ApplicationWithSecret>()
        .op(
            Method::POST,
            &format!("{base}/dcr"),
            register_dcr,
            "Dynamic client registration",
            201,
            &[
                "400 invalid_application",
                "403 dcr_disabled",
                "404 zone_not_found",
                "409 reserved_namespace",
                "429 dcr_rate_limit_exceeded",
                "429 dcr_limit_exceeded",
            ],
        )
        .takes::<DcrBody>()
        .gives::<ApplicationWithSecret>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}"),
            get_one,
            "Get an application",
            200,
            &["404 application_not_found"],
        )
        .gives::<ApplicationView>()
        .op(
            Method::PATCH,
            &format!("{base}/{{id}}"),
            patch,
            "Update an application",
            200,
            &[
                "400 invalid_application",
                "400 no_fields",
                "400 client_secret_not_configured",
                "403 trait_not_allowed",
                "404 application_not_found",
                "409 reserved_namespace",
                "409 application_name_taken",
                "502 secret_backend_unavailable",
            ],
        )
        .takes::<PatchBody>()
        .gives::<ApplicationView>()
        .op(
            Method::DELETE,
            &format!("{base}/{{id}}"),
            archive,
            "Archive an application",
            204,
            &["404 application_not_found"],
        )
        .op(
            Method::POST,
            &format!("{base}/{{id}}/rotate-secret"),
            rotate_secret,
            "Rotate the client secret",
            200,
            &[
                "404 application_not_found",
                "502 secret_backend_unavailable",
            ],
        )
        .no_body()
        .gives::<ApplicationWithSecret>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}/client-secret"),
            reveal_secret,
            "Reveal the client secret (audited)",
            200,
            &[
                "404 application_not_found",
                "404 client_secret_not_found",
                "502 secret_backend_unavailable",
            ],
        )
        .gives::<RevealedSecret>()
}

pub fn secret_backend(e: SecretError) -> ApiError {
    tracing::warn!(error = %e, "secret backend failure");
    ApiError::new(StatusCode::BAD_GATEWAY, "secret_backend_unavailable")
}

fn app_error(e: ApplicationError) -> ApiError {
    match e {
        ApplicationError::Invalid(why) => ApiError::bad_request(INVALID).description(why),
        ApplicationError::ReservedNamespace => ApiError::conflict("reserved_namespace")
            .description("the caracal.sys namespace is reserved for the bootstrap token"),
        ApplicationError::Trait(kind, why) => ApiError::forbidden(kind.code()).description(why),
    }
}

fn name_taken() -> ApiError {
    ApiError::conflict("application_name_taken")
        .description("a live managed application with this name exists in the zone")
}

fn map_failure(f: Failure) -> ApiError {
    match f {
        Failure::Taken { .. } => name_taken(),
        Failure::Api(e) => e,
    }
}

/// What every answer about an application holds (§6).
#[derive(Serialize, ToSchema)]
pub struct ApplicationCore {
    id: String,
    zone_id: String,
    name: String,
    /// `managed` or `dcr`.
    registration_method: String,
    /// Only to global tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<Vec<String>>,
    expires_at: Option<String>,
    /// [extended] The registered public keys, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    jwks: Option<Value>,
    #[serde(flatten)]
    attribution: Attribution,
}

/// An application.
#[derive(Serialize, ToSchema)]
pub struct ApplicationView {
    #[serde(flatten)]
    app: ApplicationCore,
    archived_at: Option<String>,
}

/// A created or rotated application: the secret is shown here, in this answer only.
#[derive(Serialize, ToSchema)]
pub struct ApplicationWithSecret {
    #[serde(flatten)]
    app: ApplicationCore,
    /// In a rotation's answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at: Option<Option<String>>,
    client_secret: String,
}

/// `GET …/applications/{id}/client-secret` (an audited reveal).
#[derive(Serialize, ToSchema)]
pub struct RevealedSecret {
    client_secret: String,
}

fn core(
    e: &Entity,
    traits: impl FnOnce(&ApplicationData) -> Option<Vec<String>>,
) -> Option<ApplicationCore> {
    let EntityData::Application(a) = &e.data else {
        return None;
    };
    Some(ApplicationCore {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        name: a.name.clone(),
        registration_method: a.registration_method.as_str().to_owned(),
        traits: traits(a),
        expires_at: common::opt_ts(a.expires_at),
        jwks: a.jwks.as_deref().and_then(|j| serde_json::from_str(j).ok()),
        attribution: common::attribution(e),
    })
}

/// The application object; `traits` only for global tokens (§6).
fn render(e: &Entity, global: bool) -> Value {
    let Some(app) = core(e, |a| global.then(|| a.traits.clone())) else {
        return Value::Null;
    };
    views::to_json(&ApplicationView {
        app,
        archived_at: common::opt_ts(e.archived_at),
    })
}

/// The create/rotate answer: the object (with `archived_at` only when given), plus the
/// secret; `traits` when given (global tokens, and `[]` for a DCR registration).
fn render_with_secret(
    e: &Entity,
    secret: &str,
    traits: Option<Vec<String>>,
    archived_at: Option<Option<String>>,
) -> Value {
    let Some(app) = core(e, |_| traits) else {
        return Value::Null;
    };
    views::to_json(&ApplicationWithSecret {
        app,
        archived_at,
        client_secret: secret.to_owned(),
    })
}

async fn list(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let global = req.is_global();
    let variant = if global { "global" } else { "zone" };
    common::cached_page(&app, ids.at(0), KIND, &q, variant, &[], |e| {
        render(e, global)
    })
    .await
}

async fn get_one(State(app): State<App>, req: Req, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let e = common::live(&app, ids.at(0), ids.at(1), KIND).await?;
    Ok(Json(render(&e, req.is_global())))
}

/// A fresh secret: generated, hashed, and (for managed apps) sealed for custody.
async fn new_secret(
    app: &App,
    zone: &str,
    id: &str,
    plaintext: String,
    managed: bool,
) -> Result<(String, Option<String>), ApiError> {
    let sealed = if managed {
        let binding = Binding {
            zone_id: zone,
            object_id: id,
            purpose: "client_secret",
        };
        Some(
            app.custody
                .seal(&binding, plaintext.as_bytes())
                .await
                .map_err(secret_backend)?,
        )
    } else {
        None
    };
    let hash = secrets::hash_client_secret(plaintext)
        .await
        .map_err(secret_backend)?;
    Ok((hash, sealed))
}

/// `POST /v1/zones/{zone}/applications` (§6).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ApplicationCreate)]
pub struct CreateBody {
    name: String,
    registration_method: String,
    #[schema(nullable = false)]
    traits: Option<Vec<String>>,
    /// [extended] Public keys (a JWK Set) for RFC 7523 client assertions at the STS.
    #[schema(value_type = Option<Object>, nullable = false)]
    jwks: Option<Value>,
}

/// A key set to register: `Some(None)` for `{"keys":[]}` (assertions off).
fn jwks_of(v: Option<&Value>) -> Result<Option<Option<String>>, ApiError> {
    v.map(client_assertion::parse_jwks)
        .transpose()
        .map_err(|e| ApiError::bad_request(INVALID).description(e.to_string()))
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body: CreateBody = parse_object(&req.headers, &raw, INVALID)?;
    if body.registration_method != "managed" {
        return Err(ApiError::bad_request(INVALID).description(
            "registration_method must be \"managed\" (DCR apps register at /applications/dcr)",
        ));
    }
    let actor = req.actor();
    let name = application::normalize_name(&body.name, actor.is_bootstrap).map_err(app_error)?;
    let traits = body.traits.unwrap_or_default();
    application::validate_traits(&traits, req.is_global()).map_err(app_error)?;
    let jwks = jwks_of(body.jwks.as_ref())?.flatten();
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let secret = secrets::generate_client_secret();
    let (hash, sealed) = new_secret(&app, &ctx.zone, &id, secret.clone(), true).await?;
    let data = EntityData::Application(ApplicationData {
        name,
        registration_method: RegistrationMethod::Managed,
        traits,
        expires_at: None,
        secret_hash: Some(hash),
        sealed_secret: sealed,
        jwks,
    });
    let w = common::commit_create(&app, &ctx, &id, &data)
        .await
        .map_err(map_failure)?;
    let render = move |e: &Entity| render_with_secret(e, &secret, None, None);
    common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await
}

/// `PATCH …/applications/{id}` (§6): at least one field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ApplicationPatch)]
pub struct PatchBody {
    #[schema(nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    client_secret: Option<String>,
    #[schema(nullable = false)]
    traits: Option<Vec<String>>,
    /// [extended] Replaces the registered public keys; `{"keys":[]}` removes them.
    #[schema(value_type = Option<Object>, nullable = false)]
    jwks: Option<Value>,
}

async fn patch(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body: PatchBody = parse_object(&req.headers, &raw, INVALID)?;
    if body.name.is_none()
        && body.client_secret.is_none()
        && body.traits.is_none()
        && body.jwks.is_none()
    {
        return Err(ApiError::bad_request("no_fields"));
    }
    let actor = req.actor();
    let global = req.is_global();
    let name = body
        .name
        .as_deref()
        .map(|n| application::normalize_name(n, actor.is_bootstrap))
        .transpose()
        .map_err(app_error)?;
    if let Some(t) = &body.traits {
        application::validate_traits(t, global).map_err(app_error)?;
    }
    let jwks = jwks_of(body.jwks.as_ref())?;
    if let Some(s) = &body.client_secret {
        if s.chars().count() < application::CLIENT_SECRET_MIN_CHARS {
            return Err(ApiError::bad_request(INVALID)
                .description("client_secret must be at least 32 characters"));
        }
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let id = ids.at(1).to_owned();
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let secret = match &body.client_secret {
        Some(s) => {
            if common::application(&current)?.registration_method != RegistrationMethod::Managed {
                return Err(ApiError::bad_request("client_secret_not_configured")
                    .description("only managed applications keep a client secret in custody"));
            }
            Some(new_secret(&app, &ctx.zone, &id, s.clone(), true).await?)
        }
        None => None,
    };
    let mut changed: Vec<String> = Vec::new();
    if name.is_some() {
        changed.push("name".into());
    }
    if body.traits.is_some() {
        changed.push("traits".into());
    }
    if jwks.is_some() {
        changed.push("jwks".into());
    }
    let w = common::commit(&app, &ctx, &id, |state| {
        let Some(EntityData::Application(a)) = state.filter(|e| e.is_live()).map(|e| &e.data)
        else {
            return Err(common::not_found(KIND));
        };
        let mut a = a.clone();
        if let Some(n) = &name {
            a.name = n.clone();
        }
        if let Some(t) = &body.traits {
            a.traits = t.clone();
        }
        if let Some(j) = &jwks {
            a.jwks = j.clone();
        }
        if let Some((hash, sealed)) = &secret {
            a.secret_hash = Some(hash.clone());
            a.sealed_secret = sealed.clone();
        }
        Ok(CatalogCommand::Replace {
            data: EntityData::Application(a),
            changed_fields: changed.clone(),
            secret_rotated: secret.is_some(),
        })
    })
    .await
    .map_err(map_failure)?;
    common::answer(
        &app,
        &ctx,
        w,
        StatusCode::OK,
        Some(&|e: &Entity| render(e, global)),
    )
    .await
}

async fn rotate_secret(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
) -> Result<Response, ApiError> {
    let mut ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    // Every reveal is recorded: an `Idempotency-Key` would answer a repeat from the first
    // reveal's record and append no `secret_revealed` (no audit frame), so it is ignored.
    ctx.idem = None;
    let id = ids.at(1).to_owned();
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let managed = common::application(&current)?.registration_method == RegistrationMethod::Managed;
    let secret = secrets::generate_client_secret();
    let (hash, sealed) = new_secret(&app, &ctx.zone, &id, secret.clone(), managed).await?;
    let w = common::commit(&app, &ctx, &id, |state| {
        let Some(EntityData::Application(a)) = state.filter(|e| e.is_live()).map(|e| &e.data)
        else {
            return Err(common::not_found(KIND));
        };
        let mut a = a.clone();
        a.secret_hash = Some(hash.clone());
        a.sealed_secret = sealed.clone();
        Ok(CatalogCommand::Replace {
            data: EntityData::Application(a),
            changed_fields: Vec::new(),
            secret_rotated: true,
        })
    })
    .await
    .map_err(map_failure)?;
    let global = req.is_global();
    let render = move |e: &Entity| {
        let traits = match &e.data {
            EntityData::Application(a) if global => Some(a.traits.clone()),
            _ => None,
        };
        render_with_secret(e, &secret, traits, Some(None))
    };
    common::answer(&app, &ctx, w, StatusCode::OK, Some(&render)).await
}

/// The audited reveal: the `secret_revealed` event (relayed as `credential_revealed`) is
/// appended first; if it cannot be, nothing is revealed.
async fn reveal_secret(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
) -> Result<Response, ApiError> {
    let mut ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    // Every reveal is recorded: an `Idempotency-Key` would answer a repeat from the first
    // reveal's record and append no `secret_revealed` (no audit frame), so it is ignored.
    ctx.idem = None;
    let id = ids.at(1).to_owned();
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let a = common::application(&current)?;
    let Some(sealed) = a
        .sealed_secret
        .clone()
        .filter(|_| a.registration_method == RegistrationMethod::Managed)
    else {
        return Err(ApiError::not_found("client_secret_not_stored"));
    };
    common::commit(&app, &ctx, &id, |_| {
        Ok(CatalogCommand::RevealSecret {
            kind: KIND,
            credential: "client_secret".into(),
        })
    })
    .await
    .map_err(map_failure)?;
    let binding = Binding {
        zone_id: &ctx.zone,
        object_id: &id,
        purpose: "client_secret",
    };
    let plain = app
        .custody
        .open(&binding, &sealed)
        .await
        .map_err(secret_backend)?;
    let secret = String::from_utf8(plain).map_err(|_| secret_backend(SecretError::Corrupt))?;
    Ok(Json(views::to_json(&RevealedSecret {
        client_secret: secret,
    }))
    .into_response())
}

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    let w = common::commit(&app, &ctx, ids.at(1), |_| {
        Ok(CatalogCommand::Archive { kind: KIND })
    })
    .await
    .map_err(map_failure)?;
    common::answer(&app, &ctx, w, StatusCode::NO_CONTENT, None).await
}

/// `POST …/applications/dcr`: a dynamic client registration.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ApplicationDcr)]
pub struct DcrBody {
    name: String,
    #[schema(nullable = false)]
    expires_in: Option<i64>,
}

async fn register_dcr(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body: DcrBody = parse_object(&req.headers, &raw, INVALID)?;
    let expires_in = body.expires_in.unwrap_or(application::DCR_MAX_EXPIRES_IN);
    if !(1..=application::DCR_MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(ApiError::bad_request(INVALID)
            .description("expires_in must be a positive integer of at most 3600"));
    }
    let actor = req.actor();
    let name = application::normalize_name(&body.name, actor.is_bootstrap).map_err(app_error)?;
    let zone = serval_projector::zones::load(&app.pool, ids.at(0))
        .await?
        .filter(|z| z.archived_at.is_none())
        .ok_or_else(|| ApiError::not_found("zone_not_found"))?;
    if !zone.dcr_enabled {
        return Err(ApiError::forbidden("dcr_disabled"));
    }
    let subject = format!("{}\n{}", zone.id, actor.id);
    if rate_limit::opened_window_exceeded(&app, "dcr", &subject, 10, 1_000).await {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "dcr_rate_limit_exceeded",
        ));
    }
    let live = serval_projector::catalog::live_dcr_applications(&app.pool, &zone.id).await?;
    if live >= application::DCR_LIVE_LIMIT {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "dcr_limit_exceeded",
        ));
    }
    let ctx = WriteCtx::new(&app, &zone.id, &req, &raw).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let secret = secrets::generate_client_secret();
    let (hash, _) = new_secret(&app, &ctx.zone, &id, secret.clone(), false).await?;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(expires_in);
    let data = EntityData::Application(ApplicationData {
        name,
        registration_method: RegistrationMethod::Dcr,
        traits: Vec::new(),
        expires_at: Some(expires_at),
        secret_hash: Some(hash),
        sealed_secret: None,
        jwks: None,
    });
    let w = common::commit_create(&app, &ctx, &id, &data)
        .await
        .map_err(map_failure)?;
    let render = move |e: &Entity| render_with_secret(e, &secret, Some(Vec::new()), None);
    common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await
}
