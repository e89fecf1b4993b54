//! The Coordinator (:4000): agent Sessions, service leases, invocations and the Delegation
//! graph (coordinator.md). Authentication is the STS's session mandate verified in process
//! (`auth.rs`); every change is an event (`store.rs`): Sessions, registrations and
//! invocations are catalog objects, a zone's graph one aggregate whose version is its epoch.

mod audit;
mod auth;
mod cascade;
mod delegations;
mod facade;
mod http;
mod idempotency;
mod invocations;
mod operator;
mod render;
mod rows;
mod services;
mod sessions;
mod store;
mod sweep;
mod verify;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use serval_kit::App;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Body cap (`COORDINATOR_BODY_LIMIT_BYTES` upstream): 256 KiB.
pub const BODY_LIMIT: usize = 256 * 1024;

/// The Coordinator's own routes (the operational ones are added by `serve::finish`).
pub fn router(app: &App) -> Router<App> {
    Router::new()
        .route(
            "/zones/{zone}/agents",
            post(sessions::start).get(sessions::list),
        )
        .route(
            "/zones/{zone}/agents/{id}",
            get(sessions::get).delete(sessions::terminate),
        )
        .route(
            "/zones/{zone}/agents/{id}/children",
            get(sessions::children),
        )
        .route(
            "/zones/{zone}/agents/{id}/suspend",
            patch(sessions::suspend),
        )
        .route("/zones/{zone}/agents/{id}/resume", patch(sessions::resume))
        .route("/zones/{zone}/agents/{id}/lease", post(sessions::lease))
        .route(
            "/zones/{zone}/agents/{id}/heartbeat",
            post(sessions::heartbeat),
        )
        .route(
            "/zones/{zone}/agents/{id}/effective-authority",
            get(delegations::effective_authority),
        )
        .route("/zones/{zone}/delegations", post(delegations::create))
        .route("/zones/{zone}/delegations/active", get(delegations::active))
        .route(
            "/zones/{zone}/delegations/inbound/{session}",
            get(delegations::inbound),
        )
        .route(
            "/zones/{zone}/delegations/inbound/{session}/{id}",
            get(delegations::offered),
        )
        .route(
            "/zones/{zone}/delegations/outbound/{session}",
            get(delegations::outbound),
        )
        .route(
            "/zones/{zone}/delegations/{id}/traverse",
            get(delegations::traverse),
        )
        .route(
            "/zones/{zone}/delegations/{id}/impact",
            get(delegations::impact),
        )
        .route(
            "/zones/{zone}/delegations/{id}/revoke",
            patch(delegations::revoke),
        )
        .route(
            "/zones/{zone}/agent-services",
            post(services::register).get(services::list),
        )
        .route(
            "/zones/{zone}/invocations",
            post(invocations::create).get(invocations::list),
        )
        .route("/zones/{zone}/invocations/{id}", get(invocations::get))
        .route(
            "/zones/{zone}/invocations/{id}/start",
            patch(invocations::start),
        )
        .route(
            "/zones/{zone}/invocations/{id}/cancel",
            patch(invocations::cancel),
        )
        .route(
            "/zones/{zone}/invocations/{id}/complete",
            patch(invocations::complete),
        )
        .route("/zones/{zone}/outbox/{id}/requeue", post(operator::requeue))
        .route("/v1/verify", post(verify::verify))
        .route("/v1/begin", post(facade::begin))
        .route("/v1/end", post(facade::end))
        .route("/v1/spawn-child", post(facade::spawn_child))
        .route("/v1/exchange", post(facade::exchange))
        .route(
            "/v1/delegate-to-existing-agent",
            post(facade::delegate_to_existing),
        )
        .route("/v1/revoke-delegation", post(facade::revoke_delegation))
        .route("/stats", get(operator::stats))
        // One stack, outermost first (see `serval_kit::serve::finish`).
        .layer(
            tower::ServiceBuilder::new()
                .layer(DefaultBodyLimit::max(BODY_LIMIT))
                .layer(axum::middleware::from_fn(
                    serval_kit::http::query::refuse_nul,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    operator::ip_limit,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    audit::layer,
                )),
        )
}

/// Starts the sweepers of a process serving the Coordinator.
pub fn start(app: &App, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![tokio::spawn(sweep::run(app.clone(), stop.clone()))]
}
