//! `export`: a zone (or every log) over a time or entry-id range to JSON Lines or
//! MessagePack, with the envelope bytes and signature preserved so the file verifies offline.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use serval_streams::read::field_bytes;
use serval_streams::{EntryId, Envelope};

use crate::context::Context;
use crate::progress::Progress;
use crate::source;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Msgpack,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub all: bool,
    /// Entries appended at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Entries appended at or before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Entries after this id (exclusive).
    #[arg(long)]
    pub after_id: Option<EntryId>,
    /// Entries up to this id (inclusive).
    #[arg(long)]
    pub to_id: Option<EntryId>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Where to write; standard output when absent or `-`, as Unix tools do.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One exported record (MessagePack form): the exact signed bytes and their signature.
#[derive(Serialize)]
struct Record<'a> {
    stream: &'a str,
    entry_id: String,
    kid: &'a str,
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
    #[serde(with = "serde_bytes")]
    env: &'a [u8],
}

pub async fn run(ctx: &Context, args: &ExportArgs) -> anyhow::Result<u64> {
    let streams = source::select_streams(ctx, args.zone.as_deref(), args.all).await?;
    let start = match (args.after_id, args.since) {
        (Some(id), _) => Some(id),
        (None, Some(t)) => Some(EntryId::new(
            (t.timestamp_millis() as u64).saturating_sub(1),
            u64::MAX,
        )),
        _ => None,
    };
    let end = match (args.to_id, args.until) {
        (Some(id), _) => Some(id),
        (None, Some(t)) => Some(EntryId::new(t.timestamp_millis() as u64, u64::MAX)),
        _ => None,
    };
    let to_file = args.out.as_ref().filter(|p| p.as_os_str() != "-");
    let sink: Box<dyn Write> = match to_file {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    let mut progress = Progress::new("export", None);
    let mut written = 0u64;
    for stream in &streams {
        source::walk_redis(ctx, stream, start, end, 10_000, |entries| {
            for (id, fields) in &entries {
                let env = field_bytes(fields, "env").unwrap_or_default();
                let kid = std::str::from_utf8(field_bytes(fields, "kid").unwrap_or_default()).unwrap_or("");
                let sig_hex = std::str::from_utf8(field_bytes(fields, "sig").unwrap_or_default()).unwrap_or("");
                let sig = hex::decode(sig_hex).unwrap_or_default();
                match args.format {
                    Format::Jsonl => {
                        let decoded = Envelope::decode(env).ok();
                        let line = json!({
                            "stream": stream, "entry_id": id.to_string(), "kid": kid, "sig": sig_hex,
                            "env": STANDARD.encode(env),
                            "event_id": decoded.as_ref().map(|e| e.event_id.clone()),
                            "event_type": decoded.as_ref().map(|e| e.event_type.clone()),
                            "aggregate_id": decoded.as_ref().map(|e| e.aggregate_id.clone()),
                            "aggregate_version": decoded.as_ref().map(|e| e.aggregate_version),
                            "occurred_at": decoded.as_ref().map(|e| e.occurred_at),
                        });
                        writeln!(out, "{line}")?;
                    }
                    Format::Msgpack => {
                        let rec = Record {
                            stream,
                            entry_id: id.to_string(),
                            kid,
                            sig: &sig,
                            env,
                        };
                        rmp_serde::encode::write_named(&mut out, &rec)?;
                    }
                }
            }
            written += entries.len() as u64;
            progress.inc(entries.len() as u64);
            Ok(())
        })
        .await?;
    }
    out.flush()?;
    let (n, secs) = progress.finish();
    let target = to_file.map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
    eprintln!("exported {n} events to {target} in {secs:.2}s");
    Ok(written)
}
