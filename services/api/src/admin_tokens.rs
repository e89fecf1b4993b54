//! Admin tokens (management-api.md §17.5): mint, list, revoke — each an event.

use super::views;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serval_domain::admin_token::DIGEST_RESERVATION;
use serval_domain::admin_token::{
    self, AdminToken, AdminTokenCommand, AdminTokenError, Capability, TokenScope,
};
use serval_domain::validation::is_valid_identifier;
use serval_domain::Event;
use serval_projector::admin_tokens as read;
use serval_schema::projections::ADMIN_TOKENS;
use serval_streams::append::Reservation;
use serval_streams::{AppendRequest, LogStream};
use utoipa::ToSchema;

use super::routes::Routes;
use axum::http::Method;
use serval_kit::auth::{digest_hex, Principal};
use serval_kit::http::body::{parse_object, RawBody};
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;
use serval_kit::write::{self, Failure};

pub fn router() -> Routes {
    Routes::new("admin tokens")
        .op(
            Method::GET,
            "/v1/admin-tokens",
            list,
            "List admin tokens",
            200,
            &["400 invalid_query"],
        )
        .query::<PageQuery>()
        .gives_page::<TokenView>()
        .op(
            Method::POST,
            "/v1/admin-tokens",
            mint,
            "Mint an admin token (shown once)",
            201,
            &[
                "400 invalid_admin_token_request",
                "400 zone_id_required",
                "400 zone_id_not_allowed_for_global",
                "404 zone_not_found",
            ],
        )
        .takes::<MintBody>()
        .gives::<MintedToken>()
        .op(
            Method::DELETE,
            "/v1/admin-tokens/{id}",
            revoke,
            "Revoke an admin token",
            204,
            &["400 invalid_admin_token_id", "404 admin_token_not_found"],
        )
}

/// An admin token, without its secret (§3).
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    #[serde(flatten)]
    token: TokenCore,
    /// Always `null`: use is not tracked.
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

/// What every answer about an admin token holds (§3).
#[derive(Serialize, ToSchema)]
pub struct TokenCore {
    id: String,
    name: String,
    scope: TokenScope,
    capability: Capability,
    zone_id: Option<String>,
    created_by: String,
    created_at: String,
}

/// A minted admin token: shown once, with its secret.
#[derive(Serialize, ToSchema)]
pub struct MintedToken {
    #[serde(flatten)]
    core: TokenCore,
    /// The bearer secret; never shown again.
    token: String,
}

fn render(t: &AdminToken) -> Value {
    views::to_json(&TokenView {
        token: TokenCore {
            id: t.id.clone(),
            name: t.name.clone(),
            scope: t.scope,
            capability: t.capability,
            zone_id: t.zone_id.clone(),
            created_by: t.created_by.clone(),
            created_at: pagination::ts(t.created_at),
        },
        last_used_at: None,
        revoked_at: t.revoked_at.map(pagination::ts),
    })
}

fn token_error(e: AdminTokenError) -> ApiError {
    match e {
        AdminTokenError::NotFound => ApiError::not_found("admin_token_not_found"),
        AdminTokenError::AlreadyExists => ApiError::internal("admin token id collision"),
        AdminTokenError::Invalid(why) => {
            ApiError::bad_request("invalid_admin_token_request").description(why)
        }
        AdminTokenError::ZoneIdRequired => ApiError::bad_request("zone_id_required"),
        AdminTokenError::ZoneIdNotAllowedForGlobal => {
            ApiError::bad_request("zone_id_not_allowed_for_global")
        }
    }
}

/// Only global, non-derived tokens manage admin tokens.
fn require_global(p: &Principal) -> Result<(), ApiError> {
    if p.token.scope != TokenScope::Global {
        return Err(ApiError::forbidden(
            "admin_token_management_requires_global",
        ));
    }
    if p.token.created_by.starts_with("env-derived") {
        return Err(ApiError::forbidden(
            "admin_token_management_forbidden_for_derived_token",
        ));
    }
    Ok(())
}

async fn list(
    State(app): State<App>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    require_global(&principal)?;
    let page = q.parse(pagination::STANDARD)?;
    let tokens = read::list_page(&app.pool, page.after, page.limit).await?;
    Ok(Json(pagination::page(
        &tokens,
        page.limit,
        |t| (t.created_at, t.id.clone()),
        render,
    )))
}

/// `POST /v1/admin-tokens` (§3).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AdminTokenCreate)]
pub struct MintBody {
    name: String,
    scope: TokenScope,
    #[schema(nullable = false)]
    zone_id: Option<String>,
    #[schema(nullable = false)]
    capability: Option<Capability>,
}

fn request(
    id: &str,
    expected: u64,
    events: Vec<admin_token::AdminTokenEvent>,
    actor: &str,
    rid: &str,
) -> AppendRequest {
    AppendRequest::new(
        LogStream::System,
        None,
        id,
        expected,
        events.into_iter().map(Event::AdminToken).collect(),
        actor,
    )
    .with_request_id(rid)
}

async fn mint(
    State(app): State<App>,
    req: Req,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    require_global(&req.principal)?;
    let body: MintBody = parse_object(&req.headers, &raw, "invalid_admin_token_request")?;
    if let Some(z) = &body.zone_id {
        let zone = serval_projector::zones::load(&app.pool, z).await?;
        if zone.is_none_or(|z| z.archived_at.is_some()) && body.scope == TokenScope::Zone {
            return Err(ApiError::not_found("zone_not_found"));
        }
    }
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = format!("cat_{}", URL_SAFE_NO_PAD.encode(secret));
    let digest = digest_hex(&token);
    let id = uuid::Uuid::now_v7().to_string();
    let actor = req.actor();
    let cmd = AdminTokenCommand::Mint {
        name: body.name.trim().to_owned(),
        scope: body.scope,
        zone_id: body.zone_id.clone(),
        capability: body.capability.unwrap_or(Capability::Write),
        token_sha256: digest.clone(),
        created_by: format!("admin:{}", req.principal.token.id),
    };
    let outcome = write::execute(&app, ADMIN_TOKENS, LogStream::System, None, || {
        let (cmd, actor, id, rid, digest) = (&cmd, &actor, &id, &rid, &digest);
        async move {
            let events = admin_token::decide(None, cmd, actor).map_err(token_error)?;
            let mut req = request(id, 0, events, &actor.id, rid);
            req.reserve.push(Reservation {
                kind: DIGEST_RESERVATION,
                value: digest.clone(),
            });
            Ok(req)
        }
    })
    .await
    .map_err(|f| match f {
        Failure::Taken { .. } => ApiError::internal("admin_token_mint_failed"),
        Failure::Api(e) => e,
    })?;
    // The answer is folded from the appended event: the read model shows the same
    // `created_at` once it passes it.
    let Some((_, env)) = outcome.first_appended() else {
        return Err(ApiError::internal("unexpected replay"));
    };
    let created_at = env.occurred_at;
    let resp = (
        StatusCode::CREATED,
        Json(views::to_json(&MintedToken {
            core: TokenCore {
                id,
                name: body.name.trim().to_owned(),
                scope: body.scope,
                capability: body.capability.unwrap_or(Capability::Write),
                zone_id: body.zone_id,
                created_by: format!("admin:{}", req.principal.token.id),
                created_at: pagination::ts(created_at),
            },
            token,
        })),
    )
        .into_response();
    Ok(resp)
}

async fn revoke(
    State(app): State<App>,
    req: Req,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let rid = req.rid.clone();
    require_global(&req.principal)?;
    if !is_valid_identifier(&id) {
        return Err(ApiError::bad_request("invalid_admin_token_id"));
    }
    let actor = req.actor();
    write::execute(&app, ADMIN_TOKENS, LogStream::System, None, || {
        let (app, id, actor, rid) = (&app, &id, &actor, &rid);
        async move {
            let state = read::load(&app.pool, id).await.map_err(ApiError::from)?;
            let events = admin_token::decide(state.as_ref(), &AdminTokenCommand::Revoke, actor)
                .map_err(token_error)?;
            let mut req = request(
                id,
                state.as_ref().map(|t| t.version).unwrap_or(0),
                events,
                &actor.id,
                rid,
            );
            if let Some(t) = &state {
                req.release.push(Reservation {
                    kind: DIGEST_RESERVATION,
                    value: t.token_sha256.clone(),
                });
            }
            Ok(req)
        }
    })
    .await
    .map_err(ApiError::from)?;
    app.tokens.forget(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
