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

fn main() -> anyhow::Result<()> {
    // mimalloc asks for transparent huge pages on its arena; a service this small then
    // holds every touched 2 MiB page in full: 38 MiB of anonymous memory instead of 20
    // under `scripts/bench-api`. Best effort: an older kernel keeps them.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let threads = match cli.worker_threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .max(1),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
