//! The Coordinator (:4000): agent Sessions, service leases, invocations and the delegation
//! graph (coordinator.md). Today it serves the operational routes only.

use axum::Router;
use serval_kit::App;

/// The Coordinator's own routes (the operational ones are added by `serve::finish`).
pub fn router() -> Router<App> {
    Router::new()
}
