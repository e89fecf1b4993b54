//! The Management API (:3000): every route under `/v1` requires an admin token.

pub mod admin_audit;
pub mod admin_tokens;
pub mod applications;
pub mod catalog;
pub mod connections;
pub mod grants;
pub mod params;
pub mod policies;
pub mod policy_history;
pub mod policy_sets;
pub mod providers;
pub mod resources;
pub mod schema;
pub mod zones;

use axum::Router;

use crate::app::App;

pub fn router(app: App) -> Router<App> {
    let v1 = Router::new()
        .merge(zones::router())
        .merge(admin_tokens::router())
        .merge(policies::router())
        .merge(policy_sets::router())
        .merge(applications::router())
        .merge(providers::router())
        .merge(resources::router())
        .merge(grants::router())
        .merge(connections::router())
        .merge(admin_audit::router())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::auth::require_admin,
        ))
        // The OAuth callback is reached by a browser redirect: no admin token, but audited.
        .merge(connections::callback_router())
        .layer(axum::middleware::from_fn_with_state(
            app,
            crate::admin_audit::record,
        ));
    Router::new().merge(v1)
}
