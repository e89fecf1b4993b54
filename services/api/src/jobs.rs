//! Background jobs of the Management API (management-api.md §18). A job that changes state
//! appends events like any other writer, attributed to `system:<job>`; several processes
//! may run the same job: versioned appends make a second archive of one object a no-op.

use std::time::Duration;

use serval_domain::catalog::{CatalogCommand, CatalogKind, EntityData};
use tokio::sync::watch;

use crate::catalog::{self as common, WriteCtx};
use serval_kit::http::ApiError;
use serval_kit::state::App;

/// Applications archived per run.
const DCR_BATCH: i64 = 500;
/// Authority records marked expired per reaper run.
const REAPER_BATCH: i64 = 500;

/// Runs `once` every `interval` until stopped (a zero interval disables the job).
async fn every<F, Fut>(interval: Duration, name: &str, mut stop: watch::Receiver<bool>, once: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ApiError>>,
{
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match once().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(changed = n, job = name, "job run changed records"),
            Err(e) => {
                tracing::warn!(error = %e.code().unwrap_or("internal"), job = name, "job run failed")
            }
        }
    }
}

/// Archives DCR applications `grace` past their `expires_at`, every `interval`.
pub async fn dcr_cleanup(app: App, stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs(app.cfg.dcr_cleanup_interval_secs);
    every(interval, "dcr-cleanup", stop, || dcr_cleanup_once(&app)).await
}

/// Marks active authority records past `expires_at` expired, every `interval`.
pub async fn record_reaper(app: App, stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs(app.cfg.record_reaper_interval_secs);
    every(interval, "record-reaper", stop, || record_reaper_once(&app)).await
}

/// One reaper run: returns how many records it marked expired. Records of archived zones
/// are reaped too (their zone no longer authenticates anything).
pub async fn record_reaper_once(app: &App) -> Result<usize, ApiError> {
    let now = chrono::Utc::now();
    let due =
        serval_projector::catalog::due_authority_records(&app.pool, now, REAPER_BATCH).await?;
    let mut reaped = 0;
    for (zone, id) in due {
        let actor = "system:record-reaper";
        let ctx = WriteCtx {
            zone,
            actor: serval_domain::Actor {
                id: actor.to_owned(),
                is_bootstrap: false,
                via_operator_header: false,
            },
            rid: uuid::Uuid::new_v4().to_string(),
            idem: None,
            stamp: serval_domain::catalog::Stamp {
                by: actor.to_owned(),
                via_operator: false,
            },
        };
        let expired = crate::cascade::step(app, &ctx, &id, &["status"], |d| match d {
            EntityData::AuthorityRecord(r) => r
                .expired(chrono::Utc::now())
                .map(EntityData::AuthorityRecord),
            _ => None,
        })
        .await?;
        if expired {
            reaped += 1;
        }
    }
    Ok(reaped)
}

/// Archives approval holds that ended more than a day ago, every `interval` (sts.md §7.4).
pub async fn approval_purge(app: App, stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs(app.cfg.approval_purge_interval_secs);
    every(interval, "approval-purge", stop, || {
        approval_purge_once(&app)
    })
    .await
}

/// How long an ended hold stays listed.
const HOLD_KEPT: chrono::Duration = chrono::Duration::hours(24);

/// One purge run: returns how many holds it archived.
pub async fn approval_purge_once(app: &App) -> Result<usize, ApiError> {
    let cutoff = chrono::Utc::now() - HOLD_KEPT;
    let due = serval_projector::catalog::ended_holds(&app.pool, cutoff, DCR_BATCH).await?;
    archive_each(app, due, CatalogKind::Approval, "system:approval-purge").await
}

/// Archives each `(zone, id)` still live, attributed to `actor`; returns how many it
/// archived. An object archived meanwhile (another process's run, an operator) is skipped,
/// and an archived zone keeps its objects as they are (§18: nothing cascades).
async fn archive_each(
    app: &App,
    due: Vec<(String, String)>,
    kind: CatalogKind,
    actor: &str,
) -> Result<usize, ApiError> {
    let mut archived = 0;
    for (zone, id) in due {
        let rid = uuid::Uuid::new_v4().to_string();
        let Ok(ctx) = WriteCtx::unauthenticated(app, &zone, &rid, actor).await else {
            continue;
        };
        let result = common::commit(app, &ctx, &id, |state| match state {
            Some(e) if e.is_live() => Ok(CatalogCommand::Archive { kind }),
            _ => Err(ApiError::conflict("already_archived")),
        })
        .await;
        match result {
            Ok(_) => archived += 1,
            Err(serval_kit::write::Failure::Api(e)) if e.code() == Some("already_archived") => {}
            Err(e) => return Err(ApiError::from(e)),
        }
    }
    Ok(archived)
}

/// One run: returns how many applications it archived.
pub async fn dcr_cleanup_once(app: &App) -> Result<usize, ApiError> {
    let grace = chrono::Duration::seconds(
        i64::try_from(app.cfg.dcr_cleanup_grace_secs).unwrap_or(i64::MAX / 2),
    );
    let cutoff = chrono::Utc::now() - grace;
    let due = serval_projector::catalog::expired_dcr(&app.pool, cutoff, DCR_BATCH).await?;
    archive_each(app, due, CatalogKind::Application, "system:dcr-cleanup").await
}
