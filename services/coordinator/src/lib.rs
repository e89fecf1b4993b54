//! The Coordinator (:4000): agent Sessions, service leases, invocations and the Delegation
//! graph (coordinator.md). Authentication is the STS's session mandate verified in process
//! (`auth.rs`); every change is an event (`store.rs`): Sessions, registrations and
//! invocations are catalog objects, a zone's graph one aggregate whose version is its epoch.

mod auth;
mod cascade;
mod delegations;
mod http;
mod idempotency;
mod render;
mod sessions;
mod store;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use serval_kit::App;

/// Body cap (`COORDINATOR_BODY_LIMIT_BYTES` upstream): 256 KiB.
pub const BODY_LIMIT: usize = 256 * 1024;

/// The Coordinator's own routes (the operational ones are added by `serve::finish`).
pub fn router() -> Router<App> {
    Router::new()
        .route("/zones/{zone}/agents", post(sessions::start).get(sessions::list))
        .route(
            "/zones/{zone}/agents/{id}",
            get(sessions::get).delete(sessions::terminate),
        )
        .route("/zones/{zone}/agents/{id}/children", get(sessions::children))
        .route("/zones/{zone}/agents/{id}/suspend", patch(sessions::suspend))
        .route("/zones/{zone}/agents/{id}/resume", patch(sessions::resume))
        .route("/zones/{zone}/agents/{id}/lease", post(sessions::lease))
        .route("/zones/{zone}/agents/{id}/heartbeat", post(sessions::heartbeat))
        .route(
            "/zones/{zone}/agents/{id}/effective-authority",
            get(delegations::effective_authority),
        )
        .route("/zones/{zone}/delegations", post(delegations::create))
        .route("/zones/{zone}/delegations/active", get(delegations::active))
        .route("/zones/{zone}/delegations/inbound/{session}", get(delegations::inbound))
        .route(
            "/zones/{zone}/delegations/inbound/{session}/{id}",
            get(delegations::offered),
        )
        .route("/zones/{zone}/delegations/outbound/{session}", get(delegations::outbound))
        .route("/zones/{zone}/delegations/{id}/traverse", get(delegations::traverse))
        .route("/zones/{zone}/delegations/{id}/impact", get(delegations::impact))
        .route("/zones/{zone}/delegations/{id}/revoke", patch(delegations::revoke))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}
