//! Background jobs of the Management API (management-api.md §18). A job that changes state
//! appends events like any other writer, attributed to `system:<job>`; several processes
//! may run the same job: versioned appends make a second archive of one object a no-op.

use std::time::Duration;

use serval_domain::catalog::{CatalogCommand, CatalogKind};
use tokio::sync::watch;

use crate::api::catalog::{self as common, WriteCtx};
use crate::app::App;
use crate::http::ApiError;

/// Applications archived per run.
const DCR_BATCH: i64 = 500;

/// Archives DCR applications `grace` past their `expires_at`, every `interval`.
pub async fn dcr_cleanup(app: App, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs(app.cfg.dcr_cleanup_interval_secs);
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match dcr_cleanup_once(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(archived = n, "DCR cleanup archived expired applications"),
            Err(e) => {
                tracing::warn!(error = %e.code().unwrap_or("internal"), "DCR cleanup run failed")
            }
        }
    }
}

/// One run: returns how many applications it archived.
pub async fn dcr_cleanup_once(app: &App) -> Result<usize, ApiError> {
    let grace = chrono::Duration::seconds(
        i64::try_from(app.cfg.dcr_cleanup_grace_secs).unwrap_or(i64::MAX / 2),
    );
    let cutoff = chrono::Utc::now() - grace;
    let due = serval_projector::catalog::expired_dcr(&app.pool, cutoff, DCR_BATCH).await?;
    let mut archived = 0;
    for (zone, id) in due {
        let rid = uuid::Uuid::new_v4().to_string();
        // An archived zone keeps its objects as they are (§18: nothing cascades).
        let Ok(ctx) = WriteCtx::unauthenticated(app, &zone, &rid, "system:dcr-cleanup").await
        else {
            continue;
        };
        let result = common::commit(app, &ctx, &id, |state| match state {
            Some(e) if e.is_live() => Ok(CatalogCommand::Archive {
                kind: CatalogKind::Application,
            }),
            // Archived meanwhile (by an operator or another process's run).
            _ => Err(ApiError::conflict("already_archived")),
        })
        .await;
        match result {
            Ok(_) => archived += 1,
            Err(crate::write::Failure::Api(e)) if e.code() == Some("already_archived") => {}
            Err(e) => return Err(ApiError::from(e)),
        }
    }
    Ok(archived)
}
