//! The Audit service (:9090): the ingestor that moves `caracal.audit.events` frames into the
//! log (events-and-audit.md §11.3, `ingest.rs`) and its routes (§12, `routes.rs`): the
//! ledger search in chain order and the dead-letter queue. The zone-scoped ledger routes are
//! also served by the Management API under `/v1/zones/{zone}/audit`.

pub mod checkpoint;
pub mod ingest;
pub mod routes;

use axum::Router;
use serval_kit::App;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts the audit ingestor.
pub fn start(app: &App, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(ingest::run(app.clone(), stop.clone()))];
    tasks.extend(checkpoint::start(app, stop));
    tasks
}

/// The Audit service's own routes (the operational ones are added by `serve::finish`).
pub fn router() -> Router<App> {
    routes::router()
}
