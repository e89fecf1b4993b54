//! The control resource (management-api.md §8): the resource whose identifier is
//! `CONTROL_AUDIENCE`. Only global admin tokens see or edit it, nobody deletes it, and it is
//! bound to the zone's synthetic "no credential" provider (`provider-none-<zoneId>`), which
//! is created with it and protected for as long as the zone lives.

use axum::http::StatusCode;
use serval_domain::catalog::provider::none_provider_id;
use serval_domain::catalog::{CatalogCommand, CatalogKind, EntityData, ProviderData};
use serval_projector::catalog as read;

use serval_kit::http::ApiError;
use serval_kit::state::App;
use serval_kit::write::Failure;

use super::catalog::{self as common, WriteCtx};

pub const NONE_PROVIDER_NAME: &str = "No credential";
pub const NONE_PROVIDER_IDENTIFIER: &str = "provider://none";

/// Whether `identifier` names the control resource.
pub fn is_control(app: &App, identifier: &str) -> bool {
    identifier == app.cfg.control_audience
}

/// `409 protected_resource` with why.
pub fn protected(why: &str) -> ApiError {
    ApiError::conflict("protected_resource").description(why.to_owned())
}

/// The answer a token that may not see the control resource gets: the same as for an id
/// that does not exist, so the row's existence does not leak to zone tokens.
pub fn hidden() -> ApiError {
    common::not_found(CatalogKind::Resource)
}

/// A request that reached the control resource where it may not: `404` for a token that may
/// not see it ([`hidden`]), else `409 protected_resource` with why.
pub fn refusal(global: bool, why: &str) -> ApiError {
    if global {
        protected(why)
    } else {
        hidden()
    }
}

/// Whether a request naming provider `id` of `zone` touches the synthetic provider.
pub fn is_none_provider(zone: &str, id: &str) -> bool {
    id == none_provider_id(zone)
}

/// The zone's "no credential" provider, created when absent. Its write carries neither the
/// caller's idempotency record nor the request's admin-audit record (both belong to the
/// resource write, whose request they describe): it runs in a task of its own, outside the
/// request's task-local audit hook. The provider's own event names the caller.
pub async fn ensure_none_provider(app: &App, ctx: &WriteCtx) -> Result<String, ApiError> {
    let id = none_provider_id(&ctx.zone);
    if let Some(e) = read::load(&app.pool, &ctx.zone, &id).await? {
        return if e.is_live() && e.kind() == CatalogKind::Provider {
            Ok(id)
        } else {
            Err(protected(
                "the zone's no-credential provider is not live; the control resource cannot be bound",
            ))
        };
    }
    let own = WriteCtx {
        zone: ctx.zone.clone(),
        actor: ctx.actor.clone(),
        rid: ctx.rid.clone(),
        idem: None,
        stamp: ctx.stamp.clone(),
    };
    let app = app.clone();
    let created = tokio::spawn(async move {
        let data = EntityData::Provider(ProviderData {
            name: NONE_PROVIDER_NAME.to_owned(),
            identifier: NONE_PROVIDER_IDENTIFIER.to_owned(),
            kind: "none".to_owned(),
            config_json: "{}".to_owned(),
            secret_config_keys: Vec::new(),
            sealed_secrets: None,
            connectivity_failed_at: None,
        });
        let id = none_provider_id(&own.zone);
        // A concurrent first control resource may create it too: of two creates one
        // appends, the other finds it on its retry.
        let result = common::commit(&app, &own, &id, |state| match state {
            None => Ok(CatalogCommand::Create {
                zone_id: own.zone.clone(),
                data: data.clone(),
            }),
            Some(_) => Err(ApiError::new(StatusCode::CONFLICT, EXISTS)),
        })
        .await;
        match result {
            Ok(_) => Ok(id),
            Err(Failure::Api(e)) if e.code() == Some(EXISTS) => Ok(id),
            Err(Failure::Taken { .. }) => Err(ApiError::conflict("provider_identifier_conflict")
                .description(format!(
                    "{NONE_PROVIDER_IDENTIFIER} is held by another provider of the zone; the control resource needs it"
                ))),
            Err(Failure::Api(e)) => Err(e),
        }
    })
    .await;
    created.map_err(|e| ApiError::internal(format!("no-credential provider write: {e}")))?
}

/// The plan's "already there" answer (never sent to a client).
const EXISTS: &str = "none_provider_exists";
