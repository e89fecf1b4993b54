//! Seeding the bootstrap admin token from `CARACAL_ADMIN_TOKEN` (management-api.md §3.3).
//!
//! At start the token is upserted as `bootstrap` (global, write, `created_by:
//! env-bootstrap`); any other live `env-bootstrap` token is revoked (rotation). Both are
//! events. A reservation on the token digest keeps concurrent starts from minting twice.

use anyhow::Context;
use serval_domain::admin_token::DIGEST_RESERVATION;
use serval_domain::admin_token::{
    self, AdminTokenCommand, Capability, TokenScope, BOOTSTRAP_MARKER, BOOTSTRAP_NAME,
};
use serval_domain::{Actor, Event};
use serval_streams::append::Reservation;
use serval_streams::{AppendError, AppendRequest, LogStream};

use serval_kit::auth::digest_hex;
use serval_kit::state::App;

/// How long start-up waits for the admin-token projection to reach the log's head.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn seed_admin_token(app: &App) -> anyhow::Result<()> {
    let Some(token) = app.secrets.admin_token.clone() else {
        tracing::warn!("CARACAL_ADMIN_TOKEN is not set: no bootstrap admin token");
        return Ok(());
    };
    let projection = serval_schema::projections::ADMIN_TOKENS;
    let stream = LogStream::System;
    let key = app.store.keys().log(&stream);
    // Decide from a read model that has seen the whole log.
    let head = app.store.last_entry_id(&key).await?;
    if !app
        .visibility
        .wait(&app.pool, projection, &key, head, CATCH_UP_WAIT)
        .await
    {
        // No projector may be running yet (an API-only process): go on. The digest
        // reservation still prevents a second mint; a rotation missed now happens at the
        // next start.
        tracing::warn!("admin-token projection is behind the log; seeding anyway");
    }
    let digest = digest_hex(&token);
    let live = serval_projector::admin_tokens::live_by_marker(&app.pool, BOOTSTRAP_MARKER).await?;
    let actor = Actor::system();
    if !live.iter().any(|t| t.token_sha256 == digest) {
        let id = uuid::Uuid::now_v7().to_string();
        let cmd = AdminTokenCommand::Mint {
            name: BOOTSTRAP_NAME.into(),
            scope: TokenScope::Global,
            zone_id: None,
            capability: Capability::Write,
            token_sha256: digest.clone(),
            created_by: BOOTSTRAP_MARKER.into(),
        };
        let events = admin_token::decide(None, &cmd, &actor)?;
        let mut req = AppendRequest::new(
            stream.clone(),
            None,
            id,
            0,
            events.into_iter().map(Event::AdminToken).collect(),
            actor.id.clone(),
        );
        req.reserve.push(Reservation {
            kind: DIGEST_RESERVATION,
            value: digest.clone(),
        });
        match app.store.append(&req).await {
            Ok(_) => tracing::info!("bootstrap admin token seeded"),
            // Another instance seeded the same token concurrently.
            Err(AppendError::ReservationTaken { .. }) => {}
            Err(e) => return Err(e).context("seeding the bootstrap admin token"),
        }
    }
    for old in live.iter().filter(|t| t.token_sha256 != digest) {
        let events = admin_token::decide(Some(old), &AdminTokenCommand::Revoke, &actor)?;
        let mut req = AppendRequest::new(
            stream.clone(),
            None,
            old.id.clone(),
            old.version,
            events.into_iter().map(Event::AdminToken).collect(),
            actor.id.clone(),
        );
        req.release.push(Reservation {
            kind: DIGEST_RESERVATION,
            value: old.token_sha256.clone(),
        });
        match app.store.append(&req).await {
            Ok(_) => {
                tracing::info!(token = %old.id, "previous bootstrap admin token revoked (rotation)")
            }
            Err(AppendError::VersionConflict { .. }) => {}
            Err(e) => return Err(e).context("revoking the previous bootstrap token"),
        }
    }
    let head = app.store.last_entry_id(&key).await?;
    app.visibility
        .wait(&app.pool, projection, &key, head, CATCH_UP_WAIT)
        .await;
    Ok(())
}
