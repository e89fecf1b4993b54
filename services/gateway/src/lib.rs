//! The Gateway (:8081): verifies every governed call, re-exchanges its mandate, injects the
//! upstream credential and streams the answer (gateway.md). Today it serves the operational
//! routes only.

use axum::Router;
use serval_kit::App;

/// The Gateway's own routes (the operational ones are added by `serve::finish`).
pub fn router() -> Router<App> {
    Router::new()
}
