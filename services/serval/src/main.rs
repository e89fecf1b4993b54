//! `serval`: runs the five services and the projector (`up`), a subset (`serve`), or the
//! migrations (`migrate`).

use std::collections::HashSet;

use clap::Parser;
use serval::cli::{Cli, Command};
use serval_kit::config::Service;
use tracing_subscriber::EnvFilter;

/// Many small, short-lived allocations per request (headers, JSON, futures): mimalloc
/// serves them without glibc's arena locking and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Up => {
            let all = Service::HTTP
                .into_iter()
                .chain([Service::Projector])
                .collect();
            serval::start::run(cli.config, all).await
        }
        Command::Serve { services } => {
            let set: HashSet<Service> = services.into_iter().collect();
            serval::start::run(cli.config, set).await
        }
        Command::Migrate => serval::start::migrate_only(&cli.config).await,
    }
}
