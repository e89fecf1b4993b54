//! Providers (management-api.md §7): list, get, create, PATCH, DELETE. Secrets are sealed at
//! intake and never returned.

use super::views::{self, Attribution};
use serde::Serialize;
use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use serval_domain::catalog::provider::{self, ProviderData};
use serval_domain::catalog::provider_config::{self, ConfigError};
use serval_domain::catalog::resource::slug;
use serval_domain::catalog::{
    CatalogCommand, CatalogKind, Entity, EntityData, PROVIDER_IDENTIFIER,
};
use serval_projector::catalog::Filter;

use super::applications::secret_backend;
use super::catalog::{self as common, ListQuery, WriteCtx};
use super::params::PathIds;
use super::routes::Routes;
use super::schema;
use crate::probes;
use axum::http::Method;
use serde::Deserialize;
use serval_kit::http::body::RawBody;
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::secrets::{Binding, SecretError};
use serval_kit::state::App;
use serval_kit::write::Failure;
use utoipa::ToSchema;

const KIND: CatalogKind = CatalogKind::Provider;
const INVALID: &str = "invalid_provider";
const PURPOSE: &str = "provider_config";

pub fn router() -> Routes {
    let base = "/v1/zones/{zone}/providers";
    Routes::new("providers")
        .op(
            Method::GET,
            base,
            list,
            "List providers",
            200,
            &["400 invalid_query"],
        )
        .query::<ListQuery>()
        .gives_page::<ProviderView>()
        .op(
            Method::POST,
            base,
            create,
            "Create a provider (secrets sealed)",
            201,
            &[
                "400 invalid_provider",
                "400 invalid_provider_identifier",
                "400 invalid_provider_config",
                "400 provider_check_unsupported",
                "404 zone_not_found",
                "409 reserved_namespace",
                "409 provider_identifier_conflict",
                "422 provider_check_failed",
                "429 provider_test_rate_limited",
                "502 secret_backend_unavailable",
            ],
        )
        .takes::<CreateBody>()
        .gives::<ProviderView>()
        .op(
            Method::POST,
            &format!("{base}/{{id}}/test"),
            test,
            "Probe an OAuth provider's token endpoint (ok|auth_failed|unreachable|endpoint_error|config_error)",
            200,
            &[
                "400 provider_check_unsupported",
                "404 provider_not_found",
                "429 provider_test_rate_limited",
                "502 secret_backend_unavailable",
            ],
        )
        .no_body()
        .gives::<probes::Check>()
        .op(
            Method::GET,
            &format!("{base}/{{id}}"),
            get_one,
            "Get a provider",
            200,
            &["404 provider_not_found"],
        )
        .gives::<ProviderView>()
        .op(
            Method::PATCH,
            &format!("{base}/{{id}}"),
            patch,
            "Update a provider",
            200,
            &[
                "400 invalid_provider",
                "400 invalid_provider_identifier",
                "400 invalid_provider_config",
                "400 provider_config_required",
                "400 no_fields",
                "404 provider_not_found",
                "409 protected_resource",
                "409 provider_identifier_conflict",
                "502 secret_backend_unavailable",
            ],
        )
        .takes::<PatchBody>()
        .gives::<ProviderView>()
        .op(
            Method::DELETE,
            &format!("{base}/{{id}}"),
            archive,
            "Archive a provider (sealed secrets deleted)",
            204,
            &["404 provider_not_found", "409 protected_resource"],
        )
}

/// A provider (§7): its public configuration; secret fields are named, never shown.
#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    id: String,
    zone_id: String,
    name: String,
    identifier: String,
    kind: String,
    /// The configuration without its secret fields.
    #[schema(value_type = Object)]
    config_json: Value,
    /// The names of the sealed configuration fields.
    secret_config_keys: Vec<String>,
    /// Set while the last connectivity check failed (or an OAuth provider is unverified).
    connectivity_failed_at: Option<String>,
    #[serde(flatten)]
    attribution: Attribution,
    archived_at: Option<String>,
}

pub fn render(e: &Entity) -> Value {
    let EntityData::Provider(p) = &e.data else {
        return Value::Null;
    };
    views::to_json(&ProviderView {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        name: p.name.clone(),
        identifier: p.identifier.clone(),
        kind: p.kind.clone(),
        config_json: serde_json::from_str(&p.config_json).unwrap_or_else(|_| json!({})),
        secret_config_keys: p.secret_config_keys.clone(),
        connectivity_failed_at: common::opt_ts(p.connectivity_failed_at),
        attribution: common::attribution(e),
        archived_at: common::opt_ts(e.archived_at),
    })
}

fn config_error(e: ConfigError) -> ApiError {
    ApiError::bad_request(e.code).description(e.description)
}

/// A provider that signs assertions (`private_key_jwt`, `jwt_bearer`) is saved only with a
/// key that signs: a `400` now, not a `502` at its first governed call.
fn signing_key_usable(r: &provider_config::Resolved) -> Result<(), ApiError> {
    let signs = r.public.get("client_auth_method").and_then(Value::as_str)
        == Some("private_key_jwt")
        || r.public.get("grant_type").and_then(Value::as_str) == Some("jwt_bearer");
    if !signs {
        return Ok(());
    }
    serval_kit::provider_assertion::check(&r.public, &r.secrets)
        .map_err(|e| ApiError::bad_request("invalid_provider_config").description(e))
}

fn identifier_conflict() -> ApiError {
    ApiError::conflict("provider_identifier_conflict")
        .description("a live provider with this identifier exists in the zone")
}

fn reserved() -> ApiError {
    ApiError::conflict("reserved_namespace")
        .description("the caracal.sys namespace is reserved for the bootstrap token")
}

/// A zone token's lists leave the synthetic provider out: it exists only alongside the
/// control resource, which only global tokens see (§8).
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
        crate::control_resource::NONE_PROVIDER_IDENTIFIER.to_owned(),
    )];
    common::cached_page(&app, ids.at(0), KIND, &q, "zone", &hide, render).await
}

/// The synthetic provider answers a zone token like an id that does not exist.
fn hide_none_provider(req: &Req, zone: &str, id: &str) -> Result<(), ApiError> {
    if !req.is_global() && crate::control_resource::is_none_provider(zone, id) {
        return Err(common::not_found(KIND));
    }
    Ok(())
}

async fn get_one(State(app): State<App>, req: Req, ids: PathIds) -> Result<Json<Value>, ApiError> {
    hide_none_provider(&req, ids.at(0), ids.at(1))?;
    Ok(Json(render(
        &common::live(&app, ids.at(0), ids.at(1), KIND).await?,
    )))
}

/// Trimmed non-blank string, or `None`.
fn non_blank(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn check_identifier(id: &str, is_bootstrap: bool) -> Result<(), ApiError> {
    if !provider::is_identifier(id) {
        return Err(ApiError::bad_request("invalid_provider_identifier")
            .description("identifier must match ^provider://[a-z0-9]+(?:-[a-z0-9]+)*$"));
    }
    if provider::is_reserved_identifier(id) && !is_bootstrap {
        return Err(reserved());
    }
    // §8: the zone's synthetic provider holds it (created with the control resource).
    if id == crate::control_resource::NONE_PROVIDER_IDENTIFIER {
        return Err(identifier_conflict().description(format!(
            "{id} is the zone's no-credential provider, created with the control resource"
        )));
    }
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if provider_config::is_kind(kind) {
        Ok(())
    } else {
        Err(ApiError::bad_request(INVALID).description(format!(
            "kind must be one of {}",
            provider_config::KINDS.join(", ")
        )))
    }
}

async fn seal(
    app: &App,
    zone: &str,
    id: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<Option<String>, ApiError> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let plain = serde_json::to_vec(secrets).map_err(ApiError::internal)?;
    let binding = Binding {
        zone_id: zone,
        object_id: id,
        purpose: PURPOSE,
    };
    app.custody
        .seal(&binding, &plain)
        .await
        .map(Some)
        .map_err(secret_backend)
}

async fn unseal(
    app: &App,
    zone: &str,
    id: &str,
    sealed: &Option<String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(sealed) = sealed else {
        return Ok(BTreeMap::new());
    };
    let binding = Binding {
        zone_id: zone,
        object_id: id,
        purpose: PURPOSE,
    };
    let plain = app
        .custody
        .open(&binding, sealed)
        .await
        .map_err(secret_backend)?;
    serde_json::from_slice(&plain).map_err(|_| secret_backend(SecretError::Corrupt))
}

/// The sealed secrets of a provider, opened (for upstream OAuth calls).
pub async fn secrets_of(app: &App, e: &Entity) -> Result<BTreeMap<String, String>, ApiError> {
    let p = common::provider(e)?;
    unseal(app, &e.zone_id, &e.id, &p.sealed_secrets).await
}

/// `POST /v1/zones/{zone}/providers` (§7). Unknown fields are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = ProviderCreate)]
pub struct CreateBody {
    /// 1–200 characters; derived from the identifier when absent.
    name: Option<String>,
    /// `provider://<slug>`; derived from the name when absent.
    identifier: Option<String>,
    /// One of the provider kinds (`api_key`, `bearer_token`, `http_basic`, the OAuth kinds, …).
    kind: Option<String>,
    /// The kind's configuration; its secret fields are sealed and never returned.
    #[schema(value_type = Option<Object>)]
    config_json: Option<Map<String, Value>>,
    /// Probe an OAuth provider's token endpoint before creating it.
    check: Option<bool>,
}

/// `PATCH /v1/zones/{zone}/providers/{id}` (§7): at least one field.
#[derive(Deserialize, ToSchema)]
#[schema(as = ProviderPatch)]
pub struct PatchBody {
    name: Option<String>,
    identifier: Option<String>,
    /// Changing the kind needs a `config_json` for it.
    kind: Option<String>,
    /// Secret fields left out keep their sealed values.
    #[schema(value_type = Option<Object>)]
    config_json: Option<Map<String, Value>>,
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body: CreateBody = schema::lenient(&req.headers, &raw, INVALID)?;
    let actor = req.actor();
    let name = non_blank(body.name);
    let identifier = non_blank(body.identifier);
    let kind = body
        .kind
        .ok_or_else(|| ApiError::bad_request(INVALID).description("kind is required"))?;
    check_kind(&kind)?;
    if name.is_none() && identifier.is_none() {
        return Err(ApiError::bad_request(INVALID).description("name or identifier is required"));
    }
    if let Some(n) = &name {
        if n.chars().count() > 200 {
            return Err(
                ApiError::bad_request(INVALID).description("name must be at most 200 characters")
            );
        }
    }
    if let Some(id) = &identifier {
        check_identifier(id, actor.is_bootstrap)?;
    }
    let config = body.config_json.unwrap_or_default();
    let resolved = provider_config::resolve(&kind, &config).map_err(config_error)?;
    signing_key_usable(&resolved)?;
    let check = body.check == Some(true);
    if check && !provider_config::is_oauth(&kind) {
        return Err(check_unsupported());
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    if check {
        let result = probe(&app, &ctx.zone, &kind, &resolved.public, &resolved.secrets).await?;
        if result.status != "ok" {
            return Err(check_failed(&result));
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let sealed = seal(&app, &ctx.zone, &id, &resolved.secrets).await?;
    let explicit = identifier.is_some();
    let public_json = Value::Object(resolved.public).to_string();
    let secret_keys: Vec<String> = resolved.secrets.keys().cloned().collect();
    // An OAuth provider created without a passing check is stamped unverified (§7).
    let unverified = (provider_config::is_oauth(&kind) && !check).then(chrono::Utc::now);
    for attempt in 0..8 {
        let ident = match &identifier {
            Some(i) => i.clone(),
            None => {
                let base = slug(
                    name.as_deref().unwrap_or(&format!("{kind} provider")),
                    "provider",
                );
                let mut base = format!("provider://{}", base.trim_matches('-'));
                // Never the synthetic provider's identifier.
                if base == crate::control_resource::NONE_PROVIDER_IDENTIFIER {
                    base.push_str("-2");
                }
                // The append's reservation decides; only once the base is taken is a free
                // variant looked for.
                if attempt == 0 {
                    base
                } else {
                    common::free_identifier(&app, &ctx.zone, PROVIDER_IDENTIFIER, &base).await?
                }
            }
        };
        let data = EntityData::Provider(ProviderData {
            name: name.clone().unwrap_or_else(|| ident.clone()),
            identifier: ident,
            kind: kind.clone(),
            config_json: public_json.clone(),
            secret_config_keys: secret_keys.clone(),
            sealed_secrets: sealed.clone(),
            connectivity_failed_at: unverified,
        });
        let result = common::commit_create(&app, &ctx, &id, &data).await;
        match result {
            Ok(w) => {
                return common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await
            }
            Err(Failure::Taken { .. }) if explicit => return Err(identifier_conflict()),
            // A concurrent create took the derived identifier: derive again.
            Err(Failure::Taken { .. }) => continue,
            Err(Failure::Api(e)) => return Err(e),
        }
    }
    Err(identifier_conflict())
}

fn check_unsupported() -> ApiError {
    ApiError::bad_request("provider_check_unsupported")
        .description("connectivity checks exist only for the OAuth kinds")
}

fn check_failed(result: &probes::Check) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "provider_check_failed")
        .description(result.detail.clone())
        .with("details", json!({ "check": result.to_json() }))
}

/// One probe of an OAuth provider, counted against the zone's provider bucket.
async fn probe(
    app: &App,
    zone: &str,
    kind: &str,
    public: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Result<probes::Check, ApiError> {
    if probes::rate_limited(app, probes::Class::Provider, zone).await {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "provider_test_rate_limited",
        ));
    }
    Ok(probes::provider(kind, public, secrets).await)
}

/// `POST …/providers/:id/test` [extended]: probes the token endpoint and records the
/// outcome in `connectivity_failed_at` (set on failure, cleared on success).
async fn test(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    hide_none_provider(&req, ids.at(0), ids.at(1))?;
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    let id = ids.at(1).to_owned();
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let p = common::provider(&current)?.clone();
    if !provider_config::is_oauth(&p.kind) {
        return Err(check_unsupported());
    }
    let public: Map<String, Value> = serde_json::from_str(&p.config_json).unwrap_or_default();
    let secrets = unseal(&app, &ctx.zone, &id, &p.sealed_secrets).await?;
    let result = probe(&app, &ctx.zone, &p.kind, &public, &secrets).await?;
    let failed = result.status != "ok";
    if failed != p.connectivity_failed_at.is_some() {
        let at = result.checked_at;
        common::commit(&app, &ctx, &id, |state| {
            let Some(EntityData::Provider(p)) = state.filter(|e| e.is_live()).map(|e| &e.data)
            else {
                return Err(common::not_found(KIND));
            };
            let mut p = p.clone();
            p.connectivity_failed_at = failed.then_some(at);
            Ok(CatalogCommand::Replace {
                data: EntityData::Provider(p),
                changed_fields: vec!["connectivity_failed_at".into()],
                secret_rotated: false,
            })
        })
        .await
        .map_err(ApiError::from)?;
    }
    Ok(Json(result.to_json()).into_response())
}

async fn patch(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let PatchBody {
        name,
        identifier,
        kind,
        config_json: config,
    } = schema::lenient(&req.headers, &raw, INVALID)?;
    refuse_existing_none_provider(&app, &req, ids.at(0), ids.at(1), &raw).await?;
    let actor = req.actor();
    if name.is_none() && identifier.is_none() && kind.is_none() && config.is_none() {
        return Err(ApiError::bad_request("no_fields"));
    }
    let name = match name {
        Some(n) => {
            let n = n.trim().to_owned();
            if n.is_empty() || n.chars().count() > 200 {
                return Err(
                    ApiError::bad_request(INVALID).description("name must be 1-200 characters")
                );
            }
            Some(n)
        }
        None => None,
    };
    if let Some(i) = &identifier {
        check_identifier(i, actor.is_bootstrap)?;
    }
    if let Some(k) = &kind {
        check_kind(k)?;
        if config.is_none() {
            return Err(ApiError::bad_request("provider_config_required")
                .description("sending kind requires config_json"));
        }
    }
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let id = ids.at(1).to_owned();
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let cur = common::provider(&current)?.clone();
    // The new configuration, if the body changes it.
    let mut new_config: Option<(String, Vec<String>, Option<String>, String)> = None;
    if let Some(cfg) = &config {
        let effective_kind = kind.clone().unwrap_or_else(|| cur.kind.clone());
        let supplies_secret = cfg.keys().any(|k| provider_config::is_secret_key(k));
        let (resolved, sealed) = if kind.is_none() && !supplies_secret {
            // Secrets left out: keep the sealed document (it must hold what the kind needs).
            let kept = unseal(&app, &ctx.zone, &id, &cur.sealed_secrets).await?;
            let mut merged = cfg.clone();
            for (k, v) in &kept {
                merged.insert(k.clone(), Value::String(v.clone()));
            }
            let r = provider_config::resolve(&effective_kind, &merged).map_err(config_error)?;
            signing_key_usable(&r)?;
            (r, cur.sealed_secrets.clone())
        } else {
            let r = provider_config::resolve(&effective_kind, cfg).map_err(config_error)?;
            signing_key_usable(&r)?;
            let sealed = seal(&app, &ctx.zone, &id, &r.secrets).await?;
            (r, sealed)
        };
        new_config = Some((
            Value::Object(resolved.public).to_string(),
            resolved.secrets.keys().cloned().collect(),
            sealed,
            effective_kind,
        ));
    }
    let mut changed: Vec<String> = Vec::new();
    for (present, field) in [
        (name.is_some(), "name"),
        (identifier.is_some(), "identifier"),
        (kind.is_some(), "kind"),
        (config.is_some(), "config_json"),
    ] {
        if present {
            changed.push(field.into());
        }
    }
    let rotated = new_config
        .as_ref()
        .is_some_and(|(_, keys, sealed, _)| !keys.is_empty() && *sealed != cur.sealed_secrets);
    let result = common::commit(&app, &ctx, &id, |state| {
        let Some(EntityData::Provider(p)) = state.filter(|e| e.is_live()).map(|e| &e.data) else {
            return Err(common::not_found(KIND));
        };
        refuse_none_provider(&ctx.zone, &id)?;
        let mut p = p.clone();
        if let Some(n) = &name {
            p.name = n.clone();
        }
        if let Some(i) = &identifier {
            p.identifier = i.clone();
        }
        if let Some((public, keys, sealed, kind)) = &new_config {
            if *kind != p.kind && provider_config::is_oauth(kind) {
                p.connectivity_failed_at = Some(chrono::Utc::now());
            }
            if !provider_config::is_oauth(kind) {
                p.connectivity_failed_at = None;
            }
            p.kind = kind.clone();
            p.config_json = public.clone();
            p.secret_config_keys = keys.clone();
            p.sealed_secrets = sealed.clone();
        }
        Ok(CatalogCommand::Replace {
            data: EntityData::Provider(p),
            changed_fields: changed.clone(),
            secret_rotated: rotated,
        })
    })
    .await;
    match result {
        Ok(w) => common::answer(&app, &ctx, w, StatusCode::OK, Some(&render)).await,
        Err(Failure::Taken { .. }) => Err(identifier_conflict()),
        Err(Failure::Api(e)) => Err(e),
    }
}

/// A PATCH's check of the synthetic provider before its body's fields are checked: hidden
/// from a zone token, `404` while absent (after the zone's own `404`), else protected. The
/// write's plan checks again, atomically with the append.
async fn refuse_existing_none_provider(
    app: &App,
    req: &Req,
    zone: &str,
    id: &str,
    raw: &[u8],
) -> Result<(), ApiError> {
    if !crate::control_resource::is_none_provider(zone, id) {
        return Ok(());
    }
    hide_none_provider(req, zone, id)?;
    WriteCtx::new(app, zone, req, raw).await?;
    common::live(app, zone, id, KIND).await?;
    refuse_none_provider(zone, id)
}

/// The zone's "no credential" provider backs the control resource (§8): it stays as created.
/// Checked once the provider is known to exist (an absent one is `404` like any other id).
fn refuse_none_provider(zone: &str, id: &str) -> Result<(), ApiError> {
    if crate::control_resource::is_none_provider(zone, id) {
        return Err(crate::control_resource::protected(
            "the zone's no-credential provider backs the control resource",
        ));
    }
    Ok(())
}

async fn archive(State(app): State<App>, req: Req, ids: PathIds) -> Result<Response, ApiError> {
    hide_none_provider(&req, ids.at(0), ids.at(1))?;
    let ctx = WriteCtx::new(&app, ids.at(0), &req, b"").await?;
    let w = common::commit(&app, &ctx, ids.at(1), |state| {
        if state.is_some_and(|e| e.is_live()) {
            refuse_none_provider(&ctx.zone, ids.at(1))?;
        }
        Ok(CatalogCommand::Archive { kind: KIND })
    })
    .await
    .map_err(ApiError::from)?;
    common::answer(&app, &ctx, w, StatusCode::NO_CONTENT, None).await
}
