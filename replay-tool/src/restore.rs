//! `restore`: re-create the Redis log streams from the Postgres archive after a Redis loss,
//! byte for byte (same entry ids, same envelopes, same signatures), then the keys derived
//! from the log: the versions index and the uniqueness reservations. Refuses to overwrite a
//! non-empty stream unless `--force`.

use std::collections::HashMap;

use redis::AsyncCommands;
use serval_domain::catalog;
use serval_domain::policy::policies;
use serval_domain::{admin_token, zone, Event, EventMeta};
use serval_streams::codec::Upcasters;
use serval_streams::{Envelope, LogStream};

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
        self.versions
            .insert(env.aggregate_id.clone(), env.aggregate_version);
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
            "{s} already holds {len} entries; refusing to overwrite it (use --force to replace it)"
        );
    }
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_archive WHERE stream = ANY($1)")
            .bind(&streams)
            .fetch_one(&pool)
            .await?;
    let mut progress = Progress::new("restore", Some(total as u64));
    let up = Upcasters::default();
    let mut restored = 0u64;
    for s in &streams {
        let log = source::parse_stream(&ctx.keys, s)?;
        let _: () = conn.del(s).await?;
        let mut derived = Derived::default();
        let mut pending: Vec<source::ArchivedEntry> = Vec::new();
        source::walk_archive(&pool, s, 5_000, |rows| {
            for r in &rows {
                if let Ok(env) = Envelope::decode(&r.envelope) {
                    derived.apply(&env, &up);
                }
            }
            pending.extend(rows);
            Ok(())
        })
        .await?;
        for chunk in pending.chunks(1_000) {
            let mut pipe = redis::pipe();
            for r in chunk {
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
            progress.inc(chunk.len() as u64);
            restored += chunk.len() as u64;
        }
        // The keys derived from the log, in the same slot.
        let versions_key = ctx.keys.versions(&log);
        let _: () = conn.del(&versions_key).await?;
        let pairs: Vec<(String, u64)> = derived
            .versions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for chunk in pairs.chunks(1_000) {
            let _: () = conn.hset_multiple(&versions_key, chunk).await?;
        }
        for (kind, value, owner) in derived.reservations() {
            let _: () = conn
                .set(ctx.keys.reservation(&log, kind, &value), owner)
                .await?;
        }
    }
    let (n, secs) = progress.finish();
    eprintln!(
        "restored {n} events into {} stream(s) in {secs:.2}s",
        streams.len()
    );
    Ok(restored)
}
