//! The Management API (:3000): every route under `/v1` requires an admin token (the OAuth
//! callback excepted), plus the jobs that run beside it (DCR cleanup, the authority-record
//! reaper) and the seeding of the bootstrap admin token.

pub mod admin_audit;
pub mod admin_tokens;
pub mod applications;
pub mod approvals;
pub mod audit;
pub mod authority_records;
pub mod bootstrap;
pub mod cascade;
pub mod catalog;
pub mod connections;
pub mod control_resource;
pub mod feed;
pub mod grants;
pub mod jobs;
pub mod params;
pub mod policies;
pub mod policy_history;
pub mod policy_sets;
pub mod probes;
pub mod providers;
pub mod resources;
pub mod routes;
pub mod schema;
pub mod sessions;
pub mod subject_issuers;
pub mod views;
pub mod zones;

use axum::routing::get;
use axum::Router;

use serval_kit::App;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn router(app: App) -> Router<App> {
    let admin = routes::Routes::new("zones")
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
        .merge(audit::router())
        .merge(authority_records::router())
        .merge(sessions::router())
        .merge(approvals::router())
        .merge(subject_issuers::router());
    let (admin, mut ops) = admin.into_parts();
    let (open, open_ops) = connections::callback_router().into_parts();
    ops.extend(open_ops);
    routes::remember_documented(&ops);
    let doc = routes::openapi(&ops);
    // Each stack lists its middleware outermost first (one stack per `Router::layer`: every
    // `layer` call boxes the routes again, and each request clones the boxes below it).
    let v1 = admin
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    serval_kit::auth::require_admin,
                ))
                .layer(axum::middleware::from_fn(
                    serval_kit::http::query::refuse_nul,
                ))
                // Inside the admin-audit layer, so a panicking handler's 500 is recorded.
                .layer(axum::middleware::from_fn(serval_kit::http::panic::layer)),
        )
        // The OAuth callback is reached by a browser redirect: no admin token, but audited.
        .merge(open)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    serval_kit::admin_audit::record,
                ))
                // Read-your-writes: a request's read models pass the log heads of its start
                // first (also authentication's: a token minted elsewhere is known).
                .layer(axum::middleware::from_fn_with_state(
                    app,
                    serval_kit::freshness::api_layer,
                )),
        );
    let docs = Router::new()
        .route(
            "/docs",
            get(|| async { axum::response::Html(routes::DOCS_PAGE) }),
        )
        .route(
            "/docs/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
    Router::new().merge(v1).merge(docs)
}

/// Seeds the bootstrap admin token, then starts the jobs that run beside the API.
pub async fn start(app: &App, stop: &watch::Receiver<bool>) -> anyhow::Result<Vec<JoinHandle<()>>> {
    bootstrap::seed_admin_token(app).await?;
    Ok(vec![
        tokio::spawn(jobs::dcr_cleanup(app.clone(), stop.clone())),
        tokio::spawn(jobs::record_reaper(app.clone(), stop.clone())),
        tokio::spawn(jobs::approval_purge(app.clone(), stop.clone())),
    ])
}
