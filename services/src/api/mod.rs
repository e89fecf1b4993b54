//! The Management API (:3000): every route under `/v1` requires an admin token.

pub mod admin_tokens;
pub mod params;
pub mod zones;

use axum::Router;

use crate::app::App;

pub fn router(app: App) -> Router<App> {
    let v1 = Router::new()
        .merge(zones::router())
        .merge(admin_tokens::router())
        .layer(axum::middleware::from_fn_with_state(
            app,
            crate::auth::require_admin,
        ));
    Router::new().merge(v1)
}
