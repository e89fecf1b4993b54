//! Provider connections (management-api.md §13), served under their current name
//! `/provider-connections` and the seed's `/provider-grants`: list, upsert, revoke; the
//! OAuth authorize and callback (PKCE) in [`oauth_flow`]. Tokens are sealed before they
//! enter an event and never returned.

mod oauth_flow;

use super::views;
use serde::Serialize;
use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use serval_domain::catalog::connection::{self, ConnectionData, SHARED_SUBJECT};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData, CONNECTION_KEY};
use serval_projector::catalog::{Filter, Status};

use super::applications::secret_backend;
use super::catalog::{self as common, WriteCtx, Written};
use super::params::PathIds;
use super::providers;
use super::routes::Routes;
use super::schema;
use serval_kit::http::body::RawBody;
use serval_kit::http::{pagination, ApiError};
use serval_kit::oauth::{self};
use serval_kit::request::Req;
use serval_kit::secrets::{Binding, SecretError};
use serval_kit::state::App;
use serval_kit::write::Failure;
use utoipa::ToSchema;

const KIND: CatalogKind = CatalogKind::ProviderConnection;
const PURPOSE: &str = "provider_connection_tokens";
const AUTH_CODE_KIND: &str = "oauth2_authorization_code";
/// Both names of the collection (§20: the seed's name stays served).
const NAMES: [&str; 2] = ["provider-connections", "provider-grants"];
const MAX_ID: usize = 256;
const MAX_TOKEN: usize = 16_384;

pub fn router() -> Routes {
    let mut r = Routes::new("provider connections");
    for name in NAMES {
        let base = format!("/v1/zones/{{zone}}/{name}");
        r = r
            .op(
                Method::GET,
                &base,
                list,
                "List provider connections (tokens never returned)",
                200,
                &["400 invalid_query"],
            )
            .query::<ListQuery>()
            .gives_page::<ConnectionRow>()
            .op(
                Method::POST,
                &base,
                create,
                "Store or replace the active connection's tokens",
                201,
                &[
                    "400 invalid_provider_connection",
                    "400 provider_connection_unsupported",
                    "404 zone_not_found",
                    "404 provider_not_found",
                    "502 secret_backend_unavailable",
                ],
            )
            .takes::<CreateBody>()
            .gives::<ConnectionView>()
            .op(
                Method::POST,
                &format!("{base}/oauth/authorize"),
                oauth_flow::authorize,
                "Start an OAuth authorization (PKCE S256)",
                200,
                &[
                    "400 invalid_provider_oauth_authorize",
                    "400 provider_connection_unsupported",
                    "400 invalid_provider_config",
                    "400 provider_authorization_endpoint_invalid",
                    "404 zone_not_found",
                    "404 provider_not_found",
                ],
            )
            .takes::<TargetBody>()
            .gives::<oauth_flow::Authorization>()
            .op(
                Method::POST,
                &format!("{base}/revoke"),
                revoke,
                "Revoke the active connection (local first, then RFC 7009 upstream)",
                200,
                &[
                    "400 invalid_provider_connection_revoke",
                    "404 provider_connection_not_found",
                ],
            )
            .takes::<TargetBody>()
            .gives::<ConnectionRevoked>();
    }
    r
}

/// The OAuth callback: the provider redirects a browser here, so no admin token.
pub fn callback_router() -> Routes {
    let mut r = Routes::new("provider connections");
    for name in NAMES {
        r = r
            .open(
                Method::GET,
                &format!("/v1/zones/{{zone}}/{name}/oauth/callback"),
                oauth_flow::callback,
                "OAuth redirect target: exchanges the code and stores the connection",
                201,
                &[
                    "400 invalid_oauth_callback",
                    "400 oauth_state_expired",
                    "400 oauth_state_invalid",
                    "400 oauth_state_mismatch",
                    "400 provider_oauth_denied",
                    "400 authorization_code_required",
                    "400 provider_connection_unsupported",
                    "400 invalid_provider_config",
                    "400 provider_token_endpoint_not_allowed",
                    "404 provider_not_found",
                    "502 secret_backend_unavailable",
                    "502 provider_token_exchange_failed",
                    "502 provider_token_response_invalid",
                    "502 provider_token_type_unsupported",
                ],
            )
            .query::<oauth_flow::CallbackQuery>()
            .gives::<ConnectionView>();
    }
    r
}

fn data(e: &Entity) -> Option<&ConnectionData> {
    match &e.data {
        EntityData::ProviderConnection(c) => Some(c),
        _ => None,
    }
}

/// A provider connection (§7.4): never its tokens.
#[derive(Serialize, ToSchema)]
pub struct ConnectionView {
    id: String,
    zone_id: String,
    subject_id: String,
    provider_id: String,
    /// `active`, `revoked` or `expired`.
    status: String,
    expires_at: Option<String>,
    #[schema(value_type = String)]
    created_at: DateTime<Utc>,
    #[schema(value_type = String)]
    updated_at: DateTime<Utc>,
}

/// A list row: when the tokens were last replaced and whether they can be refreshed.
#[derive(Serialize, ToSchema)]
pub struct ConnectionRow {
    #[serde(flatten)]
    connection: ConnectionView,
    refreshed_at: Option<String>,
    renewable: bool,
}

/// A revoke's answer: the connection and what the provider said.
#[derive(Serialize, ToSchema)]
pub struct ConnectionRevoked {
    #[serde(flatten)]
    connection: ConnectionView,
    /// `revoked`, `failed`, `unsupported`, …
    upstream_revocation: String,
}

fn view(e: &Entity) -> Option<ConnectionView> {
    let c = data(e)?;
    Some(ConnectionView {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        subject_id: c.subject_id.clone(),
        provider_id: c.provider_id.clone(),
        status: c.status.clone(),
        expires_at: common::opt_ts(c.expires_at),
        created_at: e.created_at,
        updated_at: e.updated_at.unwrap_or(e.created_at),
    })
}

pub(super) fn render(e: &Entity) -> Value {
    view(e).map(|v| views::to_json(&v)).unwrap_or(Value::Null)
}

fn render_row(e: &Entity) -> Value {
    match (view(e), data(e)) {
        (Some(connection), Some(c)) => views::to_json(&ConnectionRow {
            connection,
            refreshed_at: common::opt_ts(c.refreshed_at),
            renewable: c.renewable,
        }),
        _ => Value::Null,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    provider_id: Option<String>,
    subject_id: Option<String>,
    status: Option<String>,
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = pagination::PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::STANDARD)?;
    let mut filters = Vec::new();
    if let Some(v) = q.provider_id {
        filters.push(Filter::Eq("provider_id", v));
    }
    if let Some(v) = q.subject_id {
        filters.push(Filter::Eq("subject_id", v));
    }
    filters.extend(common::lifecycle_filter(q.status.as_deref())?);
    let rows = common::list_page(&app, ids.at(0), KIND, Status::Live, &filters, &page).await?;
    Ok(Json(common::page_body(&rows, page.limit, render_row)))
}

fn bounded(
    code: &'static str,
    key: &str,
    v: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match v {
        Some(s)
            if s.trim().is_empty()
                || s.chars().count() > max
                || s.chars().any(char::is_control) =>
        {
            Err(ApiError::bad_request(code).description(format!(
                "{key} must be 1-{max} characters without control characters"
            )))
        }
        other => Ok(other),
    }
}

/// The connection an authorize or a revoke names.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProviderConnectionTarget)]
pub struct TargetBody {
    /// Default: the zone's shared subject.
    subject_id: Option<String>,
    /// Required: an `oauth2_authorization_code` provider of the zone.
    provider_id: Option<String>,
}

impl TargetBody {
    pub(super) fn parse(req: &Req, raw: &[u8], code: &'static str) -> Result<Self, ApiError> {
        schema::lenient(&req.headers, raw, code)
    }

    /// `subject_id` (default the shared subject) and `provider_id`.
    pub(super) fn resolve(self, code: &'static str) -> Result<(String, String), ApiError> {
        target(self.subject_id, self.provider_id, code)
    }
}

fn target(
    subject: Option<String>,
    provider: Option<String>,
    code: &'static str,
) -> Result<(String, String), ApiError> {
    let subject = bounded(code, "subject_id", subject, MAX_ID)?
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| SHARED_SUBJECT.to_owned());
    let provider = bounded(code, "provider_id", provider, MAX_ID)?
        .ok_or_else(|| ApiError::bad_request(code).description("provider_id is required"))?;
    Ok((subject, provider))
}

/// The zone's live authorization-code provider `id`, with its public config.
pub(super) async fn auth_code_provider(
    app: &App,
    zone: &str,
    id: &str,
) -> Result<(Entity, Map<String, Value>), ApiError> {
    let p = common::live(app, zone, id, CatalogKind::Provider).await?;
    let data = common::provider(&p)?;
    if data.kind != AUTH_CODE_KIND {
        return Err(ApiError::bad_request("provider_connection_unsupported")
            .description("connections need an oauth2_authorization_code provider"));
    }
    let config: Map<String, Value> = serde_json::from_str(&data.config_json)
        .map_err(|_| ApiError::bad_request("invalid_provider_config"))?;
    Ok((p, config))
}

async fn seal_tokens(
    app: &App,
    zone: &str,
    id: &str,
    tokens: &BTreeMap<String, String>,
) -> Result<String, ApiError> {
    let plain = serde_json::to_vec(tokens).map_err(ApiError::internal)?;
    app.custody
        .seal(
            &Binding {
                zone_id: zone,
                object_id: id,
                purpose: PURPOSE,
            },
            &plain,
        )
        .await
        .map_err(secret_backend)
}

async fn open_tokens(app: &App, e: &Entity) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(sealed) = data(e).and_then(|c| c.sealed_tokens.as_ref()) else {
        return Ok(BTreeMap::new());
    };
    let plain = app
        .custody
        .open(
            &Binding {
                zone_id: &e.zone_id,
                object_id: &e.id,
                purpose: PURPOSE,
            },
            sealed,
        )
        .await
        .map_err(secret_backend)?;
    serde_json::from_slice(&plain).map_err(|_| secret_backend(SecretError::Corrupt))
}

/// Stores `tokens` as the active connection of `(subject, provider)`: replaces the tokens
/// of the active one (bumping its refresh-token version) or creates it. The key's
/// reservation names the active connection, so concurrent upserts converge on one.
pub(super) async fn upsert(
    app: &App,
    ctx: &WriteCtx,
    subject: &str,
    provider: &str,
    tokens: BTreeMap<String, String>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Written, ApiError> {
    let key = connection::key(subject, provider);
    let renewable = tokens.contains_key("refresh_token");
    for _ in 0..5 {
        let holder = app
            .store
            .reservation_holder(&ctx.stream(), CONNECTION_KEY, &key)
            .await?;
        let id = holder.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let sealed = seal_tokens(app, &ctx.zone, &id, &tokens).await?;
        let now = Utc::now();
        let result = common::commit(app, ctx, &id, |state| match state.and_then(data) {
            Some(c) if c.status == "active" => Ok(CatalogCommand::Replace {
                data: EntityData::ProviderConnection(ConnectionData {
                    sealed_tokens: Some(sealed.clone()),
                    renewable,
                    expires_at,
                    refreshed_at: Some(now),
                    refresh_token_version: c.refresh_token_version + 1,
                    ..c.clone()
                }),
                changed_fields: vec!["expires_at".into(), "tokens".into()],
                secret_rotated: true,
            }),
            Some(_) => Err(ApiError::conflict("conflict")
                .description("the connection changed concurrently; retry")),
            None => Ok(CatalogCommand::Create {
                zone_id: ctx.zone.clone(),
                data: EntityData::ProviderConnection(ConnectionData {
                    subject_id: subject.to_owned(),
                    provider_id: provider.to_owned(),
                    status: "active".into(),
                    expires_at,
                    sealed_tokens: Some(sealed.clone()),
                    renewable,
                    refreshed_at: Some(now),
                    refresh_token_version: 1,
                }),
            }),
        })
        .await;
        match result {
            Ok(w) => return Ok(w),
            // Another request created the active connection first: replace its tokens.
            Err(Failure::Taken { .. }) => continue,
            Err(Failure::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::conflict("conflict").description("the connection is contended; retry"))
}

/// `POST …/provider-connections`: tokens obtained elsewhere for a subject.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProviderConnectionCreate)]
pub struct CreateBody {
    subject_id: Option<String>,
    provider_id: Option<String>,
    /// Required; sealed at intake, never returned.
    access_token: Option<String>,
    /// Sealed at intake, never returned.
    refresh_token: Option<String>,
    /// An RFC 3339 datetime.
    expires_at: Option<String>,
}

fn token_field(v: Option<String>, key: &str, required: bool) -> Result<Option<String>, ApiError> {
    let code = "invalid_provider_connection";
    let v = bounded(code, key, v, MAX_TOKEN)?;
    if required && v.is_none() {
        return Err(ApiError::bad_request(code).description(format!("{key} is required")));
    }
    Ok(v.map(|s| s.trim().to_owned()))
}

async fn create(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    const CODE: &str = "invalid_provider_connection";
    let body: CreateBody = schema::lenient(&req.headers, &raw, CODE)?;
    let (subject, provider) = target(body.subject_id, body.provider_id, CODE)?;
    let mut tokens = BTreeMap::new();
    if let Some(a) = token_field(body.access_token, "access_token", true)? {
        tokens.insert("access_token".to_owned(), a);
    }
    if let Some(r) = token_field(body.refresh_token, "refresh_token", false)? {
        tokens.insert("refresh_token".to_owned(), r);
    }
    let expires_at = match body.expires_at {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|_| {
                    ApiError::bad_request(CODE)
                        .description("expires_at must be an RFC 3339 datetime")
                })?
                .with_timezone(&Utc),
        ),
    };
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    auth_code_provider(&app, &ctx.zone, &provider).await?;
    let w = upsert(&app, &ctx, &subject, &provider, tokens, expires_at).await?;
    common::answer(&app, &ctx, w, StatusCode::CREATED, Some(&render)).await
}

/// What an authorize leaves for its callback (stored under the state's digest).
async fn revoke(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    const CODE: &str = "invalid_provider_connection_revoke";
    let (subject, provider) = TargetBody::parse(&req, &raw, CODE)?.resolve(CODE)?;
    let ctx = WriteCtx::new(&app, ids.at(0), &req, &raw).await?;
    let not_found = || common::not_found(KIND);
    let id = app
        .store
        .reservation_holder(
            &ctx.stream(),
            CONNECTION_KEY,
            &connection::key(&subject, &provider),
        )
        .await?
        .ok_or_else(not_found)?;
    let current = common::live(&app, &ctx.zone, &id, KIND).await?;
    let tokens = open_tokens(&app, &current).await?;
    // Local first: the connection stops serving before anyone upstream is asked.
    let w = common::commit(&app, &ctx, &id, |state| match state.and_then(data) {
        Some(c) if c.status == "active" => Ok(CatalogCommand::Replace {
            data: EntityData::ProviderConnection(ConnectionData {
                status: "revoked".into(),
                sealed_tokens: None,
                renewable: false,
                ..c.clone()
            }),
            changed_fields: vec!["status".into()],
            secret_rotated: false,
        }),
        _ => Err(not_found()),
    })
    .await
    .map_err(ApiError::from)?;
    let upstream = if matches!(w.outcome, serval_kit::write::Outcome::Replay { .. }) {
        "unsupported"
    } else {
        match common::live(&app, &ctx.zone, &provider, CatalogKind::Provider).await {
            Ok(p) => {
                let config: Map<String, Value> = common::provider(&p)
                    .ok()
                    .and_then(|d| serde_json::from_str(&d.config_json).ok())
                    .unwrap_or_default();
                match providers::secrets_of(&app, &p).await {
                    Ok(secrets) => oauth::revoke(&config, &secrets, &tokens).await,
                    Err(_) => "failed",
                }
            }
            // The provider is gone: nothing upstream to ask.
            Err(_) => "unsupported",
        }
    };
    let render_revoked = move |e: &Entity| match view(e) {
        Some(connection) => views::to_json(&ConnectionRevoked {
            connection,
            upstream_revocation: upstream.to_owned(),
        }),
        None => Value::Null,
    };
    common::answer(&app, &ctx, w, StatusCode::OK, Some(&render_revoked)).await
}
