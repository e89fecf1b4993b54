//! `restore`: re-create the Redis log streams from the Postgres archive after a Redis loss,
//! byte for byte (same entry ids, same envelopes, same signatures), then the keys derived
//! from the log: the versions index and the uniqueness reservations.
//!
//! Restore never removes an entry: into an empty stream it adds the whole archive; with
//! `--force`, into a non-empty one it adds the archived entries after the stream's last
//! entry, once it has checked that every archived entry before that point is in the stream.
//! The archive is streamed in pages and every archived entry is verified (signature,
//! envelope) before anything is written.

use std::collections::HashMap;

use redis::AsyncCommands;
use serval_domain::catalog;
use serval_domain::policy::policies;
use serval_domain::{admin_token, zone, Event, EventMeta};
use serval_streams::codec::Upcasters;
use serval_streams::{EntryId, Envelope, LogStream};

use crate::context::Context;
use crate::progress::Progress;
use crate::source;

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Only this zone's stream; default: every archived stream.
    #[arg(long)]
    pub zone: Option<String>,
    /// Replace streams that are not empty.
    #[arg(long)]
    pub force: bool,
}

/// Aggregate state folded while restoring, to re-derive reservations.
#[derive(Default)]
struct Derived {
    versions: HashMap<String, u64>,
    zones: HashMap<String, zone::Zone>,
    tokens: HashMap<String, admin_token::AdminToken>,
    policies: HashMap<String, policies::Policy>,
    catalog: HashMap<String, catalog::Entity>,
}

impl Derived {
    fn apply(&mut self, env: &Envelope, up: &Upcasters) {
        // Single-event aggregates are appended without a versions-index entry.
        if !matches!(env.aggregate_kind.as_str(), "admin_audit" | "audit") {
            self.versions
                .insert(env.aggregate_id.clone(), env.aggregate_version);
        }
        let meta = EventMeta {
            event_id: env.event_id.clone(),
            aggregate_id: env.aggregate_id.clone(),
            aggregate_version: env.aggregate_version,
            occurred_at: env.occurred_at,
        };
        match up.decode(&env.event_type, env.schema_version, &env.payload) {
            Ok(Event::Zone(e)) => {
                if let Some(z) = zone::evolve(self.zones.remove(&meta.aggregate_id), &meta, &e) {
                    self.zones.insert(meta.aggregate_id.clone(), z);
                }
            }
            Ok(Event::AdminToken(e)) => {
                if let Some(t) =
                    admin_token::evolve(self.tokens.remove(&meta.aggregate_id), &meta, &e)
                {
                    self.tokens.insert(meta.aggregate_id.clone(), t);
                }
            }
            Ok(Event::Policy(e)) => {
                if let Some(p) =
                    policies::evolve(self.policies.remove(&meta.aggregate_id), &meta, &e)
                {
                    self.policies.insert(meta.aggregate_id.clone(), p);
                }
            }
            Ok(Event::Catalog(e)) => {
                if let Some(c) = catalog::evolve(self.catalog.remove(&meta.aggregate_id), &meta, &e)
                {
                    self.catalog.insert(meta.aggregate_id.clone(), c);
                }
            }
            // Set names are decided inside the catalog aggregate, edges inside the graph:
            // no reservation.
            Ok(
                Event::PolicySet(_) | Event::AdminAudit(_) | Event::Audit(_) | Event::Delegation(_),
            )
            | Err(_) => {}
        }
    }

    fn reservations(&self) -> Vec<(&'static str, String, String)> {
        let zones = self.zones.values().flat_map(|z| {
            zone::reservations(z)
                .into_iter()
                .map(|(k, v)| (k, v, z.id.clone()))
        });
        let tokens = self.tokens.values().flat_map(|t| {
            admin_token::reservations(t)
                .into_iter()
                .map(|(k, v)| (k, v, t.id.clone()))
        });
        let policies = self.policies.values().flat_map(|p| {
            policies::reservations(p)
                .into_iter()
                .map(|(k, v)| (k, v, p.id.clone()))
        });
        let objects = self
            .catalog
            .values()
            .filter_map(|e| catalog::reservation(e).map(|(k, v)| (k, v, e.id.clone())));
        zones.chain(tokens).chain(policies).chain(objects).collect()
    }
}

/// Archive rows per page: the archive is streamed, never held whole.
const PAGE: i64 = 5_000;

pub async fn run(ctx: &Context, args: &RestoreArgs) -> anyhow::Result<u64> {
    let pool = ctx.pool().await?;
    let streams = match &args.zone {
        Some(z) => vec![ctx.keys.log(&LogStream::Zone(z.clone()))],
        None => source::archived_streams(&pool).await?,
    };
    let mut conn = ctx.conn.clone();
    for s in &streams {
        let len: u64 = conn.xlen(s).await?;
        anyhow::ensure!(
            len == 0 || args.force,
            "{s} already holds {len} entries; refusing to write into it (--force adds the \
             archived entries it lacks after its last entry; nothing is ever removed)"
        );
    }
    // Everything is checked before anything is written.
    let mut plans = Vec::with_capacity(streams.len());
    for s in &streams {
        plans.push((s, check(ctx, &pool, s).await?));
    }
    let total: u64 = plans.iter().map(|(_, p)| p.to_add).sum();
    let mut progress = Progress::new("restore", Some(total));
    let mut restored = 0u64;
    for (s, plan) in plans {
        let log = source::parse_stream(&ctx.keys, s)?;
        let mut after = plan.live_last;
        loop {
            let page = source::archive_page(&pool, s, after, PAGE).await?;
            let Some(last) = page.last().map(|r| r.entry_id) else {
                break;
            };
            let mut pipe = redis::pipe();
            for r in &page {
                pipe.cmd("XADD")
                    .arg(s)
                    .arg(r.entry_id.to_string())
                    .arg("env")
                    .arg(r.envelope.as_slice())
                    .arg("kid")
                    .arg(&r.key_id)
                    .arg("sig")
                    .arg(hex::encode(&r.sig))
                    .ignore();
            }
            let _: () = pipe.query_async(&mut conn).await?;
            progress.inc(page.len() as u64);
            restored += page.len() as u64;
            after = last;
        }
        derive_keys(ctx, s, &log).await?;
    }
    let (n, secs) = progress.finish();
    eprintln!(
        "restored {n} events into {} stream(s) in {secs:.2}s",
        streams.len()
    );
    Ok(restored)
}

/// What restoring one stream will do.
struct Plan {
    /// The live stream's last entry (zero when empty): archived entries after it are added.
    live_last: EntryId,
    to_add: u64,
}

/// Verifies every archived entry of `s` (signature, envelope) and that each one at or
/// before the live stream's last entry is in the live stream, byte for byte: a stream can
/// only grow at its end, so an archived entry missing below the head could not be put back
/// in order — restoring would have to drop live entries, which it never does.
async fn check(ctx: &Context, pool: &sqlx::PgPool, s: &str) -> anyhow::Result<Plan> {
    let mut conn = ctx.conn.clone();
    let live_last = serval_streams::read::last_entry_id(&mut conn, s).await?;
    // A stream only takes ids above the last it ever generated (entries deleted from its
    // end still count): archived entries at or below it could not be added.
    let generated = last_generated_id(&mut conn, s).await?;
    let mut after = EntryId::ZERO;
    let mut to_add = 0u64;
    loop {
        let page = source::archive_page(pool, s, after, PAGE).await?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            break;
        };
        for r in &page {
            anyhow::ensure!(
                ctx.signer.verify(&r.key_id, &r.envelope, &r.sig),
                "archived entry {s} {} does not verify (kid {}); nothing was restored",
                r.entry_id,
                r.key_id
            );
            Envelope::decode(&r.envelope).map_err(|e| {
                anyhow::anyhow!(
                    "archived entry {s} {} does not decode: {e}; nothing was restored",
                    r.entry_id
                )
            })?;
        }
        if live_last != EntryId::ZERO && first.entry_id <= live_last {
            let upto = last.entry_id.min(live_last);
            let mut live = HashMap::new();
            let mut from = first.entry_id.to_string();
            loop {
                let chunk = serval_streams::read::read_range(
                    &mut conn,
                    s,
                    &from,
                    &upto.to_string(),
                    PAGE as usize,
                )
                .await?;
                let n = chunk.len();
                let Some(end) = chunk.last().map(|(id, _)| *id) else {
                    break;
                };
                live.extend(chunk);
                if n < PAGE as usize {
                    break;
                }
                from = format!("({end}");
            }
            for r in page.iter().filter(|r| r.entry_id <= live_last) {
                let same = live.get(&r.entry_id).is_some_and(|f| {
                    serval_streams::read::field_bytes(f, "env") == Some(r.envelope.as_slice())
                        && serval_streams::read::field_bytes(f, "sig")
                            == Some(hex::encode(&r.sig).as_bytes())
                });
                anyhow::ensure!(
                    same,
                    "archived entry {s} {} is not in the live stream, whose last entry is \
                     {live_last}: it cannot be put back in order without removing live entries; \
                     nothing was restored",
                    r.entry_id
                );
            }
        }
        if let Some(r) = page
            .iter()
            .find(|r| r.entry_id > live_last && r.entry_id <= generated)
        {
            anyhow::bail!(
                "archived entry {s} {} is missing from the live stream, which has already \
                 generated ids up to {generated}: it cannot be added back; nothing was restored",
                r.entry_id
            );
        }
        to_add += page.iter().filter(|r| r.entry_id > live_last).count() as u64;
        after = last.entry_id;
    }
    Ok(Plan { live_last, to_add })
}

/// Re-derives the keys the log implies (versions index, uniqueness reservations) from the
/// stream as it now is — archived and live-only entries alike — verifying every entry.
async fn derive_keys(ctx: &Context, s: &str, log: &LogStream) -> anyhow::Result<()> {
    let up = Upcasters::default();
    let mut derived = Derived::default();
    let mut refused = 0u64;
    source::walk_redis(ctx, s, None, None, PAGE as usize, |entries| {
        for (id, fields) in entries {
            match serval_streams::read::verify_entry(&ctx.signer, s, log, id, &fields) {
                Ok(rec) => derived.apply(&rec.envelope, &up),
                Err(_) => refused += 1,
            }
        }
        Ok(())
    })
    .await?;
    if refused > 0 {
        eprintln!("{s}: {refused} live entries do not verify; they derive nothing (see `verify`)");
    }
    let mut conn = ctx.conn.clone();
    let versions_key = ctx.keys.versions(log);
    // Versions are only ever raised: an append landing meanwhile keeps its newer version,
    // and the index never goes back (a new event would reuse a version).
    let raise = redis::Script::new(
        r"for i = 1, #ARGV, 2 do
            local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
            if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
          end
          return 0",
    );
    let pairs: Vec<(String, u64)> = derived
        .versions
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for chunk in pairs.chunks(1_000) {
        let mut inv = raise.key(&versions_key);
        for (k, v) in chunk {
            inv.arg(k).arg(*v);
        }
        let _: i64 = inv.invoke_async(&mut conn).await?;
    }
    for (kind, value, owner) in derived.reservations() {
        let _: () = conn
            .set(ctx.keys.reservation(log, kind, &value), owner)
            .await?;
    }
    Ok(())
}

/// The stream's last generated id (`XINFO STREAM`), zero when the stream does not exist.
async fn last_generated_id(
    conn: &mut serval_streams::RedisConn,
    s: &str,
) -> anyhow::Result<EntryId> {
    let exists: bool = conn.exists(s).await?;
    if !exists {
        return Ok(EntryId::ZERO);
    }
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(s)
        .query_async(conn)
        .await?;
    let id = match info.get("last-generated-id") {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(t)) => t.clone(),
        _ => anyhow::bail!("{s}: XINFO STREAM gave no last-generated-id"),
    };
    id.parse()
        .map_err(|_| anyhow::anyhow!("{s}: unreadable last-generated-id {id}"))
}
