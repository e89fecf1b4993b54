//! `serval-replay`: verify, tail, export, replay, rebuild and restore Serval's history.

use clap::{Parser, Subcommand};
use serval_replay::context::Connection;
use serval_replay::{checkpoint, export, rebuild, replay, restore, tail, verify};

#[derive(Parser)]
#[command(
    name = "serval-replay",
    version,
    about = "Serval's history tool for auditors and operators"
)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check signatures, version sequences and the archive; exit 1 at the first break.
    Verify(verify::VerifyArgs),
    /// Follow a topic or log as JSON lines (optionally through a consumer group).
    Tail(tail::TailArgs),
    /// Export a range of the log to JSON Lines or MessagePack, signatures preserved.
    Export(export::ExportArgs),
    /// Build the read models as of a time or entry id into a separate schema.
    Replay(replay::ReplayArgs),
    /// Rebuild projections in a shadow schema and swap them in atomically.
    Rebuild(rebuild::RebuildArgs),
    /// Re-create the Redis log from the Postgres archive, byte for byte.
    Restore(restore::RestoreArgs),
    /// Verify an audit-ledger export against signed checkpoints, offline (public key only).
    Checkpoint(checkpoint::CheckpointArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Offline: no connection needed.
    if let Cmd::Checkpoint(a) = &cli.cmd {
        match checkpoint::run(a) {
            Ok(lines) => {
                for l in lines {
                    println!("ok: {l}");
                }
                return Ok(());
            }
            Err(e) => {
                println!("FAILED: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let ctx = cli.conn.open().await?;
    match cli.cmd {
        Cmd::Verify(a) => {
            let report = verify::run(&ctx, &a).await?;
            verify::print(&report, a.json);
            if report.first_break.is_some() {
                std::process::exit(1);
            }
        }
        Cmd::Tail(a) => {
            tail::run(&ctx, &a).await?;
        }
        Cmd::Export(a) => {
            export::run(&ctx, &a).await?;
        }
        Cmd::Replay(a) => {
            replay::run(&ctx, &a).await?;
        }
        Cmd::Rebuild(a) => {
            rebuild::run(&ctx, &a).await?;
        }
        Cmd::Restore(a) => {
            restore::run(&ctx, &a).await?;
        }
        Cmd::Checkpoint(_) => {}
    }
    Ok(())
}
