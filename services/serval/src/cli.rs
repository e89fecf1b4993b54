//! The `serval` command line: the configuration (every variable also a flag) and the
//! subcommand.

use clap::{Parser, Subcommand};
use serval_kit::config::{Config, Service};

#[derive(Debug, Parser)]
#[command(
    name = "serval",
    version,
    about = "Serval: the event-sourced authority control plane for AI agents"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// Worker threads of the services' runtime. By default one fewer than the cores (at
    /// least one): the process shares the machine with the Redis and Postgres it waits
    /// on, and the projector runs on a runtime of its own.
    #[arg(long, env = "SERVAL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all five services and the projector in one process.
    Up,
    /// Run a subset of the services (and/or the projector).
    Serve {
        #[arg(required = true, value_enum)]
        services: Vec<Service>,
    },
    /// Apply the schema migrations and exit.
    Migrate,
}
