//! What every service's router gets (`/health` `/ready` `/metrics`, request ids, the body
//! limit, the `404` fallback), its listener, and the shutdown signal.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Service;
use crate::http;
use crate::state::App;

/// The readiness body shape a service answers in (Caracal's Node services vs its Go ones).
fn ready_style(service: Service) -> http::ops::ReadyStyle {
    match service {
        Service::Api | Service::Coordinator => http::ops::ReadyStyle::Node,
        _ => http::ops::ReadyStyle::Go,
    }
}

/// `routes` (the service's own) with the operational routes and the shared layers; `extra`
/// are the service's own readiness checks.
pub fn finish(
    app: &App,
    service: Service,
    routes: Router<App>,
    extra: Option<http::ops::ExtraCheck>,
) -> Router {
    let routes = http::ops::router(ready_style(service), extra).merge(routes);
    // The Gateway proxies every path it does not answer itself (its router's fallback).
    let routes = if service == Service::Gateway {
        routes
    } else {
        routes.fallback(http::error::not_found)
    };
    // One stack (outermost first) instead of one `Router::layer` per middleware: each of
    // those boxes the route again, and every request clones the boxes below a layer.
    routes
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    service.name(),
                    http::request_id::layer,
                ))
                .layer(DefaultBodyLimit::max(app.cfg.body_limit_bytes))
                .layer(axum::middleware::from_fn(http::panic::layer)),
        )
        .with_state(app.clone())
}

/// Binds the service's port and serves `router` until `stop`.
pub async fn listen(
    app: &App,
    service: Service,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let addr: SocketAddr = format!("{}:{}", app.cfg.host, app.cfg.port(service))
        .parse()
        .context("HOST and ports must form a socket address")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {}", service.name()))?;
    let bound = listener.local_addr()?;
    // Tests and scripts parse this line to find ephemeral ports.
    println!("serval: {} listening on http://{bound}", service.name());
    Ok(tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await
    }))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
