//! Deletion cascades of §18 that reach run-time records: each changed object gets its own
//! event (attributed to the request's actor), so the cascade is in the log like any write,
//! and each step skips what is already in its final state — a repeated request finishes a
//! cascade a crash interrupted.

use serde::Serialize;
use serval_domain::catalog::{CatalogCommand, CatalogKind, EntityData};
use serval_projector::catalog as read;

use crate::catalog::{self as common, WriteCtx};
use serval_kit::http::ApiError;
use serval_kit::state::App;

/// What a DCR `revoke_live` shutdown changed (§5), as the admin-audit record reports it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ShutdownCounts {
    pub live_dcr_applications: u64,
    pub revoked_applications: u64,
    pub revoked_authority_records: u64,
    pub terminated_sessions: u64,
    pub revoked_delegations: u64,
}

/// A cascade step's context: never under the triggering request's idempotency key.
pub fn step_ctx(ctx: &WriteCtx) -> WriteCtx {
    WriteCtx {
        zone: ctx.zone.clone(),
        actor: ctx.actor.clone(),
        rid: ctx.rid.clone(),
        idem: None,
        stamp: ctx.stamp.clone(),
    }
}

/// Replaces the data of live object `id` with `next(data)`, decided again on every conflict
/// retry; `Ok(false)` when `next` finds nothing to change (already in its final state).
pub async fn step<F>(
    app: &App,
    ctx: &WriteCtx,
    id: &str,
    changed: &[&str],
    next: F,
) -> Result<bool, ApiError>
where
    F: Fn(&EntityData) -> Option<EntityData> + Sync,
{
    let result = common::commit(app, ctx, id, |state| {
        let data = state
            .filter(|e| e.is_live())
            .and_then(|e| next(&e.data))
            .ok_or_else(|| ApiError::conflict("nothing_to_change"))?;
        Ok(CatalogCommand::Replace {
            data,
            changed_fields: changed.iter().map(|f| (*f).to_owned()).collect(),
            secret_rotated: false,
        })
    })
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(serval_kit::write::Failure::Api(e)) if e.code() == Some("nothing_to_change") => {
            Ok(false)
        }
        Err(e) => Err(ApiError::from(e)),
    }
}

/// DCR `revoke_live` (§5, §18): archive the zone's live DCR applications, revoke their
/// application-type authority records and every descendant (`dcr_shutdown`), terminate
/// their sessions and every descendant session.
pub async fn dcr_revoke_live(app: &App, ctx: &WriteCtx) -> Result<ShutdownCounts, ApiError> {
    let ctx = step_ctx(ctx);
    let apps = read::live_dcr_application_ids(&app.pool, &ctx.zone).await?;
    let mut counts = ShutdownCounts {
        live_dcr_applications: apps.len() as u64,
        ..ShutdownCounts::default()
    };
    for id in &apps {
        let result = common::commit(app, &ctx, id, |state| match state {
            Some(e) if e.is_live() => Ok(CatalogCommand::Archive {
                kind: CatalogKind::Application,
            }),
            _ => Err(ApiError::conflict("nothing_to_change")),
        })
        .await;
        match result {
            Ok(_) => counts.revoked_applications += 1,
            Err(serval_kit::write::Failure::Api(e)) if e.code() == Some("nothing_to_change") => {}
            Err(e) => return Err(ApiError::from(e)),
        }
    }
    let now = chrono::Utc::now;
    for id in read::application_record_trees(&app.pool, &ctx.zone, &apps).await? {
        let changed = ["revoked_at", "revoked_reason", "status"];
        if step(app, &ctx, &id, &changed, |d| match d {
            EntityData::AuthorityRecord(r) if r.is_active(now()) => r
                .revoked(now(), "dcr_shutdown", None)
                .map(EntityData::AuthorityRecord),
            _ => None,
        })
        .await?
        {
            counts.revoked_authority_records += 1;
        }
    }
    for id in read::application_session_trees(&app.pool, &ctx.zone, &apps).await? {
        let changed = ["status", "terminated_at", "termination_reason"];
        if step(app, &ctx, &id, &changed, |d| match d {
            EntityData::Session(s) => s.terminated(now(), "dcr_shutdown").map(EntityData::Session),
            _ => None,
        })
        .await?
        {
            counts.terminated_sessions += 1;
        }
    }
    Ok(counts)
}
