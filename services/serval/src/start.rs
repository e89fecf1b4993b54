//! Start-up: resolve the keys, build the shared state (pools, migrations), start the
//! projector and each chosen service's background tasks, serve the chosen services until
//! SIGINT/SIGTERM, then drain.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serval_kit::config::{Config, Mode, Secrets, Service};
use serval_kit::serve;
use tokio::sync::watch;

fn banner(secrets: &Secrets, cfg: &Config) {
    if secrets.mode != Mode::Dev {
        return;
    }
    eprintln!("==================================================================");
    eprintln!(" SERVAL IS RUNNING IN DEVELOPMENT MODE");
    eprintln!(
        " Keys live in {} (never use them in production).",
        cfg.data_dir.join("dev-secrets.json").display()
    );
    for g in &secrets.generated {
        eprintln!(" generated {g}");
    }
    if secrets.show_admin_token {
        if let Some(t) = &secrets.admin_token {
            eprintln!(" Admin token (shown once): {t}");
        }
    } else {
        eprintln!(" Admin token: see CARACAL_ADMIN_TOKEN or the dev-secrets file.");
    }
    eprintln!("==================================================================");
}

/// Runs the given services (and the projector if listed) until SIGINT/SIGTERM.
pub async fn run(cfg: Config, services: HashSet<Service>) -> anyhow::Result<()> {
    let secrets = cfg.resolve_secrets()?;
    banner(&secrets, &cfg);
    let app = serval_kit::state::build_state(cfg, secrets).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Positions of runners in other processes: those of a separate projector, and — when
    // several processes share the log's streams (`projector::share`) — the other workers'.
    tokio::spawn(app.visibility.clone().listen(app.pool.clone()));
    if services.contains(&Service::Projector) {
        tasks.extend(crate::projector::start(&app, &stop_rx).await?);
    }
    if services.contains(&Service::Sts) {
        tasks.extend(serval_sts::start(&app, &stop_rx));
    }
    if services.contains(&Service::Coordinator) {
        tasks.extend(serval_coordinator::start(&app, &stop_rx));
    }
    let gateway = serval_gateway::Gateway::new(&app);
    if services.contains(&Service::Gateway) {
        tasks.extend(serval_gateway::start(&app, &gateway, &stop_rx));
    }
    if services.contains(&Service::Audit) {
        tasks.extend(serval_audit::start(&app, &stop_rx));
    }
    if services.contains(&Service::Api) {
        tasks.extend(serval_api::start(&app, &stop_rx).await?);
    }
    let mut servers = Vec::new();
    for service in Service::HTTP {
        if !services.contains(&service) {
            continue;
        }
        if service == Service::Sts {
            let router = serve::finish(&app, service, serval_sts::router(), None);
            // The Gateway of this process hands its re-exchanges to this STS unless the
            // operator named another (`STS_URL`).
            if app.cfg.sts_url.is_none() {
                let _ = gateway.local_sts.set(router.clone());
            }
            servers.push(serve::listen(&app, service, router, stop_rx.clone()).await?);
            continue;
        }
        let routes = match service {
            Service::Api => serval_api::router(app.clone()),
            Service::Coordinator => serval_coordinator::router(&app),
            Service::Gateway => serval_gateway::router(gateway.clone()),
            Service::Audit => serval_audit::router(),
            // The STS is served above.
            Service::Sts | Service::Projector => continue,
        };
        let extra = match service {
            Service::Gateway => Some(serval_gateway::readiness(gateway.clone())),
            _ => None,
        };
        let router = serve::finish(&app, service, routes, extra);
        servers.push(serve::listen(&app, service, router, stop_rx.clone()).await?);
    }
    println!("serval: ready");
    serve::shutdown_signal().await;
    tracing::info!("shutting down");
    app.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// Applies the migrations and exits (`serval migrate`).
pub async fn migrate_only(cfg: &Config) -> anyhow::Result<()> {
    let pool = serval_kit::state::connect_pg(cfg).await?;
    serval_schema::migrate(&pool).await?;
    println!("serval: migrations applied");
    Ok(())
}
