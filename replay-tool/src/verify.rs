//! `verify`: every signature, every aggregate's version sequence, the versions index, and
//! the archive's agreement with Redis. Reports the first break (in entry order) precisely.

use std::collections::{HashMap, HashSet};

use redis::AsyncCommands;
use serde::Serialize;
use serval_streams::read::verify_entry;
use serval_streams::{EntryId, Envelope, LogStream};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::progress::Progress;
use crate::source::{self, ArchivedEntry};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Only this zone's log.
    #[arg(long)]
    pub zone: Option<String>,
    /// Every log stream (system and all zones). Default: the system stream.
    #[arg(long)]
    pub all: bool,
    /// Walk the Postgres archive instead of Redis.
    #[arg(long)]
    pub from_archive: bool,
    /// Do not compare the archive with Redis.
    #[arg(long)]
    pub skip_archive: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Break {
    pub stream: String,
    pub entry_id: String,
    pub event_id: Option<String>,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub streams: usize,
    pub events: u64,
    pub seconds: f64,
    pub breaks: usize,
    pub first_break: Option<Break>,
}

fn digest(envelope: &[u8], sig: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(envelope);
    h.update([0xff]);
    h.update(sig);
    h.finalize().into()
}

struct StreamCheck<'a> {
    stream: &'a str,
    expected: LogStream,
    versions: HashMap<String, u64>,
    event_ids: HashSet<String>,
    breaks: Vec<(EntryId, Break)>,
    digests: Vec<(EntryId, [u8; 32])>,
}

impl<'a> StreamCheck<'a> {
    fn new(stream: &'a str, expected: LogStream) -> Self {
        StreamCheck {
            stream,
            expected,
            versions: HashMap::new(),
            event_ids: HashSet::new(),
            breaks: Vec::new(),
            digests: Vec::new(),
        }
    }

    fn fail(&mut self, id: EntryId, event_id: Option<String>, what: String) {
        if self.breaks.len() < 10_000 {
            self.breaks.push((
                id,
                Break {
                    stream: self.stream.to_owned(),
                    entry_id: id.to_string(),
                    event_id,
                    what,
                },
            ));
        }
    }

    fn sequence(&mut self, id: EntryId, env: &Envelope) {
        if !self.event_ids.insert(env.event_id.clone()) {
            self.fail(
                id,
                Some(env.event_id.clone()),
                "event id appears twice".into(),
            );
        }
        let last = self.versions.get(&env.aggregate_id).copied().unwrap_or(0);
        let v = env.aggregate_version;
        if v != last + 1 {
            let what = if v <= last {
                format!(
                    "{} {} goes back from version {last} to {v} (entry out of order or repeated)",
                    env.aggregate_kind, env.aggregate_id
                )
            } else {
                format!(
                    "{} {} jumps from version {last} to {v} (an entry is missing or out of order)",
                    env.aggregate_kind, env.aggregate_id
                )
            };
            self.fail(id, Some(env.event_id.clone()), what);
        }
        self.versions.insert(env.aggregate_id.clone(), v.max(last));
    }
}

pub async fn run(ctx: &Context, args: &VerifyArgs) -> anyhow::Result<Report> {
    let pool = if args.from_archive || !args.skip_archive {
        Some(ctx.pool().await?)
    } else {
        None
    };
    let streams = match (&pool, args.from_archive, &args.zone, args.all) {
        (Some(p), true, None, true) => source::archived_streams(p).await?,
        _ => source::select_streams(ctx, args.zone.as_deref(), args.all).await?,
    };
    let mut progress = Progress::new("verify", None);
    let mut all_breaks: Vec<(EntryId, Break)> = Vec::new();
    let mut events = 0u64;
    for stream in &streams {
        let expected = source::parse_stream(&ctx.keys, stream)?;
        let mut check = StreamCheck::new(stream, expected.clone());
        if args.from_archive {
            let pool = pool.as_ref().expect("archive source has a pool");
            source::walk_archive(pool, stream, 10_000, |rows| {
                for row in rows {
                    check_archived(ctx, &mut check, &row);
                }
                Ok(())
            })
            .await?;
        } else {
            source::walk_redis(ctx, stream, None, None, 10_000, |entries| {
                progress.inc(entries.len() as u64);
                for (id, fields) in entries {
                    match verify_entry(&ctx.signer, stream, &check.expected, id, &fields) {
                        Ok(rec) => {
                            check.digests.push((id, digest(&rec.body, &rec.sig)));
                            check.sequence(id, &rec.envelope);
                        }
                        Err(e) => {
                            let event_id = serval_streams::read::field_bytes(&fields, "env")
                                .and_then(|b| Envelope::decode(b).ok())
                                .map(|e| e.event_id);
                            check.fail(id, event_id, e.to_string());
                        }
                    }
                }
                Ok(())
            })
            .await?;
            check_versions_index(ctx, &mut check).await?;
            if let (Some(pool), false) = (&pool, args.skip_archive) {
                compare_archive(pool, &mut check).await?;
            }
        }
        events += check.event_ids.len() as u64 + check.breaks.len() as u64;
        all_breaks.extend(check.breaks);
    }
    let (_, seconds) = progress.finish();
    all_breaks.sort_by(|a, b| (a.1.stream.as_str(), a.0).cmp(&(b.1.stream.as_str(), b.0)));
    Ok(Report {
        streams: streams.len(),
        events,
        seconds,
        breaks: all_breaks.len(),
        first_break: all_breaks.into_iter().next().map(|(_, b)| b),
    })
}

fn check_archived(ctx: &Context, check: &mut StreamCheck<'_>, row: &ArchivedEntry) {
    let id = row.entry_id;
    if !ctx.signer.verify(&row.key_id, &row.envelope, &row.sig) {
        let event_id = Envelope::decode(&row.envelope).ok().map(|e| e.event_id);
        check.fail(
            id,
            event_id,
            format!("signature does not verify (kid {})", row.key_id),
        );
        return;
    }
    match Envelope::decode(&row.envelope) {
        Ok(env) => check.sequence(id, &env),
        Err(e) => check.fail(id, None, format!("envelope does not decode: {e}")),
    }
}

/// The versions hash must agree with the last version the log holds for each aggregate
/// of this stream: a missing tail entry shows up here.
async fn check_versions_index(ctx: &Context, check: &mut StreamCheck<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.conn.clone();
    let index: HashMap<String, u64> = conn.hgetall(ctx.keys.versions(&check.expected)).await?;
    let last_id = check.digests.last().map(|(id, _)| *id).unwrap_or_default();
    let mut problems = Vec::new();
    for (agg, logged) in &check.versions {
        if let Some(indexed) = index.get(agg) {
            if indexed != logged {
                problems.push(format!(
                    "aggregate {agg}: the log ends at version {logged} but the versions index says {indexed} (entries missing at the end)"
                ));
            }
        }
    }
    problems.sort();
    for p in problems {
        check.fail(last_id, None, p);
    }
    Ok(())
}

/// Every archived row must match the Redis entry with the same id byte for byte, and every
/// Redis entry the archiver has passed must be archived.
async fn compare_archive(pool: &sqlx::PgPool, check: &mut StreamCheck<'_>) -> anyhow::Result<()> {
    let archived_to: Option<(i64, i64)> = sqlx::query_as(
        "SELECT last_ms, last_seq FROM projection_checkpoints WHERE projection = 'archive' AND stream = $1",
    )
    .bind(check.stream)
    .fetch_optional(pool)
    .await?;
    let archived_to = archived_to
        .map(|(m, s)| EntryId::new(m as u64, s as u64))
        .unwrap_or_default();
    let redis: HashMap<EntryId, [u8; 32]> = check.digests.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    source::walk_archive(pool, check.stream, 10_000, |rows| {
        for row in rows {
            seen.insert(row.entry_id);
            let event_id = Envelope::decode(&row.envelope).ok().map(|e| e.event_id);
            match redis.get(&row.entry_id) {
                None => found.push((
                    row.entry_id,
                    event_id,
                    "archived entry is missing from Redis (deleted)".to_owned(),
                )),
                Some(d) if *d != digest(&row.envelope, &row.sig) => found.push((
                    row.entry_id,
                    event_id,
                    "archive differs from Redis at this entry".to_owned(),
                )),
                Some(_) => {}
            }
        }
        Ok(())
    })
    .await?;
    for (id, _) in &check.digests {
        if *id <= archived_to && !seen.contains(id) {
            found.push((*id, None, "entry is missing from the archive".to_owned()));
        }
    }
    for (id, ev, what) in found {
        check.fail(id, ev, what);
    }
    Ok(())
}

pub fn print(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    let rate = report.events as f64 / report.seconds.max(1e-9);
    println!(
        "verified {} events in {} stream(s) in {:.2}s ({:.0} events/s)",
        report.events, report.streams, report.seconds, rate
    );
    match &report.first_break {
        None => println!(
            "OK: every signature verifies, every version sequence is whole, the archive agrees"
        ),
        Some(b) => {
            println!("BROKEN: {} problem(s); first:", report.breaks);
            println!("  stream:   {}", b.stream);
            println!("  entry id: {}", b.entry_id);
            println!("  event id: {}", b.event_id.as_deref().unwrap_or("-"));
            println!("  what:     {}", b.what);
        }
    }
}
