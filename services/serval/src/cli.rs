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
