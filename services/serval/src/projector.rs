//! The projection runners this process starts when it runs the projector: every read
//! model, the archiver and the topic relay, each in its own loop.

use std::sync::Arc;

use serval_kit::App;
use serval_projector::admin_audit::AdminAuditProjection;
use serval_projector::admin_tokens::AdminTokensProjection;
use serval_projector::archive::ArchiveProjection;
use serval_projector::audit::AuditProjection;
use serval_projector::catalog::CatalogProjection;
use serval_projector::policies::PoliciesProjection;
use serval_projector::relay::RelayProjection;
use serval_projector::runner::Feed;
use serval_projector::zones::ZonesProjection;
use serval_projector::{Projection, ProjectorConfig, Runner};
use tokio::sync::watch;

fn spawn_runner<P: Projection>(
    app: &App,
    client: &redis::Client,
    cfg: &Arc<ProjectorConfig>,
    p: P,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let runner = Runner::new(
        p,
        app.pool.clone(),
        client.clone(),
        cfg.clone(),
        app.visibility.clone(),
    );
    tokio::spawn(runner.run(stop.clone()))
}

pub async fn start(
    app: &App,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (client, relay_conn) = serval_kit::state::connect_redis(&app.cfg.redis_url).await?;
    // One live reader of the log for every runner of this process (see `Feed`).
    let feed = Feed::new(app.store.keys().clone(), app.store.signer().clone());
    let cfg = Arc::new(ProjectorConfig {
        feed: Some(feed.clone()),
        ..ProjectorConfig::new(app.store.keys().clone(), app.store.signer().clone())
    });
    let relay_key = Some(app.secrets.streams_key.clone());
    Ok(vec![
        tokio::spawn(feed.run(client.clone(), stop.clone())),
        spawn_runner(app, &client, &cfg, ZonesProjection, stop),
        spawn_runner(app, &client, &cfg, AdminTokensProjection, stop),
        spawn_runner(app, &client, &cfg, PoliciesProjection, stop),
        spawn_runner(app, &client, &cfg, CatalogProjection, stop),
        spawn_runner(
            app,
            &client,
            &cfg,
            AdminAuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(
            app,
            &client,
            &cfg,
            AuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(app, &client, &cfg, ArchiveProjection, stop),
        spawn_runner(
            app,
            &client,
            &cfg,
            RelayProjection::new(
                relay_conn,
                app.store.keys().clone(),
                relay_key,
                Some(app.secrets.audit_key.clone()),
            ),
            stop,
        ),
    ])
}
