//! The projection runner: log → verified events → one transaction per batch.
//!
//! Exactly-once effect: the rows a batch writes and the checkpoint that says the batch was
//! applied commit together. A crash before the commit loses both, and the next run reads
//! the same entries again from the old checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serval_domain::zone::ZoneEvent;
use serval_domain::Event;
use serval_streams::codec::Upcasters;
use serval_streams::read::{self, RawEntry};
use serval_streams::{EntryId, KeySpace, LogStream, Signer};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;

use crate::metrics::METRICS;
use crate::projection::{Applied, Projection};
use crate::visibility::{Visibility, NOTIFY_CHANNEL};

/// Entries read per batch (one XREAD, one transaction).
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Postgres session options for every pool that runs projections: a projection commit
/// does not wait for the WAL flush (see `Runner::apply`). Services only read Postgres, so
/// their shared pool is unaffected.
pub const PG_SESSION_OPTIONS: [(&str, &str); 1] = [("synchronous_commit", "off")];

/// How long one XREAD blocks waiting for new entries.
pub const DEFAULT_BLOCK_MS: usize = 1_000;
/// How often streams outside the blocking read (zones with empty logs) are checked.
pub const SWEEP_INTERVAL_MS: u64 = 1_000;
/// Streams per non-blocking XREAD in a sweep.
pub const SWEEP_CHUNK: usize = 256;

#[derive(Clone)]
pub struct ProjectorConfig {
    pub keys: KeySpace,
    pub signer: Arc<Signer>,
    pub upcasters: Arc<Upcasters>,
    pub batch_size: usize,
    pub block_ms: usize,
    /// Test hook (`SERVAL_TEST_CRASH_AFTER_EVENTS=<projection>:<n>`): abort the process
    /// inside the transaction once this projection has applied `n` events in this process.
    pub crash_after: Option<(String, u64)>,
    /// Apply nothing after this entry id (point-in-time replays). `None` = follow the log.
    pub until: Option<EntryId>,
    /// Called after each committed batch with the number of events it applied.
    pub on_batch: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl ProjectorConfig {
    pub fn new(keys: KeySpace, signer: Arc<Signer>) -> Self {
        ProjectorConfig {
            keys,
            signer,
            upcasters: Arc::new(Upcasters::default()),
            batch_size: DEFAULT_BATCH_SIZE,
            block_ms: DEFAULT_BLOCK_MS,
            crash_after: None,
            until: None,
            on_batch: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Another runner (a second projector process, or a rebuild swap) moved this
    /// projection's checkpoint since we read it; the batch was rolled back.
    #[error("checkpoint of {projection} on {stream} moved underneath this runner")]
    CheckpointMoved { projection: String, stream: String },
}

/// An entry after verification: the event, or why it was refused (reason, detail, raw).
type Checked = (
    EntryId,
    Result<serval_streams::RecordedEvent, (&'static str, String, serde_json::Value)>,
);

struct DeadLetter {
    stream: String,
    entry_id: EntryId,
    reason: &'static str,
    detail: String,
    raw: serde_json::Value,
}

pub struct Runner<P: Projection> {
    projection: P,
    pool: PgPool,
    redis: redis::Client,
    cfg: Arc<ProjectorConfig>,
    visibility: Arc<Visibility>,
    applied_here: u64,
    /// Streams whose position moved past entries this projection wants nothing of without
    /// a transaction: stream → (position stored in Postgres, entries passed since).
    unflushed: BTreeMap<String, (EntryId, u64)>,
    /// When the oldest unflushed move happened.
    unflushed_since: Option<std::time::Instant>,
}

/// How long a position moved over unwanted entries may stay out of Postgres.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Moves checkpoints `(stream, from, to, entries)`, each guarded on `from`: two runners of
/// one projection (or a rebuild swap) can never both apply the same entries. Each move
/// notifies waiters in other processes.
async fn write_checkpoints(
    tx: &mut PgConnection,
    name: &str,
    moves: &[(String, EntryId, EntryId, u64)],
) -> Result<(), RunnerError> {
    for (stream, from, last, count) in moves {
        // One round trip: the guarded move, and its notification only if it moved.
        let moved = sqlx::query(
            "WITH moved AS (
               INSERT INTO projection_checkpoints (projection, stream, last_ms, last_seq, events_applied, updated_at)
               VALUES ($1, $2, $3, $4, $5, now())
               ON CONFLICT (projection, stream) DO UPDATE
               SET last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq,
                   events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
                   updated_at = now()
               WHERE projection_checkpoints.last_ms = $6 AND projection_checkpoints.last_seq = $7
               RETURNING 1)
             SELECT pg_notify($8, $9) FROM moved",
        )
        .bind(name)
        .bind(stream)
        .bind(last.ms as i64)
        .bind(last.seq as i64)
        .bind(*count as i64)
        .bind(from.ms as i64)
        .bind(from.seq as i64)
        .bind(NOTIFY_CHANNEL)
        .bind(format!("{name} {stream} {last}"))
        .fetch_optional(&mut *tx)
        .await?
        .is_none();
        if moved {
            return Err(RunnerError::CheckpointMoved {
                projection: name.to_owned(),
                stream: stream.clone(),
            });
        }
    }
    Ok(())
}

pub async fn load_checkpoint(
    pool: &PgPool,
    projection: &str,
    stream: &str,
) -> Result<Option<EntryId>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT last_ms, last_seq FROM projection_checkpoints WHERE projection = $1 AND stream = $2",
    )
    .bind(projection)
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| EntryId::new(r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64)))
}

fn raw_fields_json(fields: &HashMap<String, redis::Value>) -> serde_json::Value {
    let map = fields
        .iter()
        .map(|(k, v)| {
            let text = match read::field_bytes(fields, k) {
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) if !s.contains('\0') => serde_json::Value::String(s.to_owned()),
                    _ => serde_json::json!({ "hex": hex::encode(b) }),
                },
                None => serde_json::Value::String(format!("{v:?}")),
            };
            (k.clone(), text)
        })
        .collect();
    serde_json::Value::Object(map)
}

impl<P: Projection> Runner<P> {
    pub fn new(
        projection: P,
        pool: PgPool,
        redis: redis::Client,
        cfg: Arc<ProjectorConfig>,
        visibility: Arc<Visibility>,
    ) -> Self {
        Runner {
            projection,
            pool,
            redis,
            cfg,
            visibility,
            applied_here: 0,
            unflushed: BTreeMap::new(),
            unflushed_since: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    async fn connect(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_millis(self.cfg.block_ms as u64 + 5_000));
        self.redis
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The streams this projection follows and where it stands on each.
    async fn positions(&self) -> Result<BTreeMap<String, EntryId>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT stream, last_ms, last_seq FROM projection_checkpoints WHERE projection = $1",
        )
        .bind(self.name())
        .fetch_all(&self.pool)
        .await?;
        let mut pos: BTreeMap<String, EntryId> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    EntryId::new(r.get::<i64, _>(1) as u64, r.get::<i64, _>(2) as u64),
                )
            })
            .collect();
        pos.entry(self.cfg.keys.log(&LogStream::System))
            .or_insert(EntryId::ZERO);
        Ok(pos)
    }

    /// Runs until `shutdown` turns true. Database and Redis errors are retried with backoff.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let result = tokio::select! {
                r = self.follow(false) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(_) => return,
                Err(e) => {
                    METRICS.apply_errors.with_label_values(&[self.name()]).inc();
                    tracing::warn!(projection = self.name(), error = %e, "projection paused; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Applies everything currently in the log, then returns the number of events applied.
    pub async fn catch_up(&mut self) -> Result<u64, RunnerError> {
        self.follow(true).await
    }

    async fn follow(&mut self, stop_when_idle: bool) -> Result<u64, RunnerError> {
        let mut conn = self.connect().await?;
        let mut positions = self.positions().await?;
        let system = self.cfg.keys.log(&LogStream::System);
        // Streams in the blocking read: the system stream and every stream seen with entries.
        // The others (zones whose stream is still empty) are swept without blocking, so a
        // deployment with many quiet zones does not put every key in every XREAD.
        let mut hot: BTreeSet<String> = BTreeSet::from([system]);
        let mut last_sweep: Option<std::time::Instant> = None;
        // Writers' hints that a zone stream got its first entries (see `KeySpace::activity`),
        // followed from their current end while the runner follows the live log.
        let activity = self.cfg.keys.activity();
        let mut activity_at = if stop_when_idle || self.cfg.until.is_some() {
            None
        } else {
            Some(read::last_entry_id(&mut conn, &activity).await?)
        };
        let mut total = 0;
        loop {
            let until = self.cfg.until;
            let pending =
                |keys: &mut dyn Iterator<Item = (&String, &EntryId)>| -> Vec<(String, EntryId)> {
                    keys.filter(|(_, v)| until.is_none_or(|u| **v < u))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect()
                };
            let sweep_due = stop_when_idle
                || last_sweep.is_none_or(|t| {
                    t.elapsed() >= std::time::Duration::from_millis(SWEEP_INTERVAL_MS)
                });
            let mut reply = Vec::new();
            if sweep_due {
                // Checked on a timer even when the hot streams are busy, so quiet zones
                // are never starved.
                last_sweep = Some(std::time::Instant::now());
                let cold = pending(&mut positions.iter().filter(|(k, _)| !hot.contains(*k)));
                for chunk in cold.chunks(SWEEP_CHUNK) {
                    let found = self.bounded(
                        read::read_after(&mut conn, chunk, self.cfg.batch_size, None).await?,
                    );
                    if !found.is_empty() {
                        hot.extend(found.iter().map(|(k, _)| k.clone()));
                        reply = found;
                        break;
                    }
                }
            }
            if reply.is_empty() {
                let hot_streams = pending(&mut positions.iter().filter(|(k, _)| hot.contains(*k)));
                let block = if stop_when_idle {
                    None
                } else {
                    let left = SWEEP_INTERVAL_MS
                        .saturating_sub(last_sweep.map_or(0, |t| t.elapsed().as_millis() as u64));
                    Some((left as usize).clamp(1, self.cfg.block_ms))
                };
                let mut streams = hot_streams;
                if let Some(at) = activity_at {
                    streams.push((activity.clone(), at));
                }
                if !streams.is_empty() {
                    let mut raw =
                        read::read_after(&mut conn, &streams, self.cfg.batch_size, block).await?;
                    if let Some(i) = raw.iter().position(|(k, _)| *k == activity) {
                        let (_, hints) = raw.swap_remove(i);
                        if let Some((last, _)) = hints.last() {
                            activity_at = Some(*last);
                        }
                        for (_, fields) in &hints {
                            if let Some(key) = read::field_bytes(fields, "stream")
                                .and_then(|b| std::str::from_utf8(b).ok())
                            {
                                // Also for a stream not followed yet: it is hot from the
                                // moment its zone's creation adds it.
                                hot.insert(key.to_owned());
                            }
                        }
                    }
                    reply = self.bounded(raw);
                } else if let Some(ms) = block {
                    tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await;
                }
            }
            if reply.is_empty() {
                // Idle: store the positions moved without a transaction.
                match self.flush(&positions).await {
                    Ok(()) => {}
                    Err(RunnerError::CheckpointMoved { .. }) => {
                        self.forget_unflushed();
                        positions = self.positions().await?;
                    }
                    Err(e) => return Err(e),
                }
                if stop_when_idle {
                    return Ok(total);
                }
                continue;
            }
            let t_read = std::time::Instant::now();
            let checked = self.check_redis(reply);
            let applied = self.apply(&mut positions, checked).await;
            tracing::debug!(
                projection = self.name(),
                elapsed_us = t_read.elapsed().as_micros() as u64,
                "batch applied"
            );
            match applied {
                Ok(n) => total += n,
                Err(RunnerError::CheckpointMoved { stream, .. }) => {
                    tracing::info!(projection = self.name(), %stream, "checkpoint moved elsewhere; reloading");
                    self.forget_unflushed();
                    positions = self.positions().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops entries after the replay bound and streams left with nothing.
    fn bounded(&self, mut reply: Vec<(String, Vec<RawEntry>)>) -> Vec<(String, Vec<RawEntry>)> {
        if let Some(u) = self.cfg.until {
            // A point-in-time replay applies nothing after its bound.
            for (_, entries) in &mut reply {
                entries.retain(|(id, _)| *id <= u);
            }
        }
        reply.retain(|(_, e)| !e.is_empty());
        reply
    }

    /// Verifies and decodes raw stream entries.
    fn check_redis(&self, reply: Vec<(String, Vec<RawEntry>)>) -> Vec<(String, Vec<Checked>)> {
        reply
            .into_iter()
            .map(|(key, entries)| {
                let stream = self.cfg.keys.parse_log(&key);
                let checked = entries
                    .into_iter()
                    .map(|(id, fields)| {
                        let verified = match &stream {
                            Some(s) => read::verify_entry(&self.cfg.signer, &key, s, id, &fields)
                                .map_err(|e| (e.reason(), e.to_string())),
                            None => Err(("wrong_stream", "not a log stream key".to_owned())),
                        };
                        (
                            id,
                            verified.map_err(|(r, d)| (r, d, raw_fields_json(&fields))),
                        )
                    })
                    .collect();
                (key, checked)
            })
            .collect()
    }

    /// Applies everything in the Postgres archive (`public.event_archive` of `archive`)
    /// after this projection's checkpoints: a rebuild that does not need Redis. Returns the
    /// number of events applied.
    pub async fn catch_up_from_archive(&mut self, archive: &PgPool) -> Result<u64, RunnerError> {
        let mut positions = self.positions().await?;
        let system = self.cfg.keys.log(&LogStream::System);
        let mut streams: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT stream FROM public.event_archive ORDER BY stream")
                .fetch_all(archive)
                .await?;
        // Zones are created in the system stream: apply it first.
        streams.sort_by_key(|s| *s != system);
        let mut total = 0;
        for key in streams {
            let Some(stream) = self.cfg.keys.parse_log(&key) else {
                continue;
            };
            loop {
                let from = positions.get(&key).copied().unwrap_or(EntryId::ZERO);
                if self.cfg.until.is_some_and(|u| from >= u) {
                    break;
                }
                let rows = sqlx::query(
                    "SELECT entry_ms, entry_seq, envelope, sig, key_id FROM public.event_archive
                     WHERE stream = $1 AND (stream, entry_ms, entry_seq) > ($1, $2, $3)
                     ORDER BY stream, entry_ms, entry_seq LIMIT $4",
                )
                .bind(&key)
                .bind(from.ms as i64)
                .bind(from.seq as i64)
                .bind(self.cfg.batch_size as i64)
                .fetch_all(archive)
                .await?;
                let mut checked: Vec<Checked> = rows
                    .into_iter()
                    .map(|r| {
                        let id = EntryId::new(r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64);
                        let (body, sig, kid): (Vec<u8>, Vec<u8>, String) = (r.get(2), r.get(3), r.get(4));
                        let raw = serde_json::json!({ "env": { "hex": hex::encode(&body) }, "kid": kid, "sig": hex::encode(&sig) });
                        let verified = read::verify_parts(&self.cfg.signer, &key, &stream, id, body, kid, sig)
                            .map_err(|e| (e.reason(), e.to_string(), raw));
                        (id, verified)
                    })
                    .collect();
                if let Some(u) = self.cfg.until {
                    checked.retain(|(id, _)| *id <= u);
                }
                if checked.is_empty() {
                    break;
                }
                match self
                    .apply(&mut positions, vec![(key.clone(), checked)])
                    .await
                {
                    Ok(n) => total += n,
                    Err(RunnerError::CheckpointMoved { .. }) => {
                        self.forget_unflushed();
                        positions = self.positions().await?
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.flush(&positions).await?;
        Ok(total)
    }

    async fn apply(
        &mut self,
        positions: &mut BTreeMap<String, EntryId>,
        checked: Vec<(String, Vec<Checked>)>,
    ) -> Result<u64, RunnerError> {
        let name = self.name();
        let mut batch = Vec::new();
        let mut dead = Vec::new();
        let mut new_streams = Vec::new();
        let mut advanced: Vec<(String, EntryId, u64)> = Vec::new();
        for (key, entries) in checked {
            let Some(last) = entries.last().map(|(id, _)| *id) else {
                continue;
            };
            let stream = self.cfg.keys.parse_log(&key);
            let count = entries.len() as u64;
            for (id, verified) in entries {
                let decoded =
                    verified.and_then(|recorded| match recorded.decode(&self.cfg.upcasters) {
                        Ok(event) => Ok(Applied { recorded, event }),
                        Err(e) => {
                            let raw = serde_json::json!({
                                "env": { "hex": hex::encode(&recorded.body) },
                                "kid": recorded.kid,
                                "sig": hex::encode(&recorded.sig),
                            });
                            Err(("undecodable", e.to_string(), raw))
                        }
                    });
                match decoded {
                    Ok(a) => {
                        if let (Some(LogStream::System), Event::Zone(ZoneEvent::Created(_))) =
                            (&stream, &a.event)
                        {
                            let zone = LogStream::Zone(a.recorded.envelope.aggregate_id.clone());
                            new_streams.push(self.cfg.keys.log(&zone));
                        }
                        batch.push(a);
                    }
                    Err((reason, detail, raw)) => dead.push(DeadLetter {
                        stream: key.clone(),
                        entry_id: id,
                        reason,
                        detail,
                        raw,
                    }),
                }
            }
            advanced.push((key, last, count));
        }

        // The log, not Postgres, is the source of truth: if Postgres loses the last few
        // commits in a crash it loses rows and checkpoint together, and the runner re-applies
        // those entries. So a projection commit need not wait for the WAL flush: the pools
        // that run projections connect with `synchronous_commit=off` (`PG_SESSION_OPTIONS`).
        // Nothing here for this projection: move the position without a transaction. The
        // read model is as current as if the batch had been applied, so waiters may pass;
        // Postgres learns the position with the next transaction or within `FLUSH_AFTER`.
        if dead.is_empty()
            && new_streams.is_empty()
            && !batch.iter().any(|a| self.projection.wants(a))
        {
            for (stream, last, count) in advanced {
                let db = positions.get(&stream).copied().unwrap_or(EntryId::ZERO);
                self.unflushed.entry(stream.clone()).or_insert((db, 0)).1 += count;
                self.visibility.advance(name, &stream, last);
                positions.insert(stream, last);
            }
            self.unflushed_since
                .get_or_insert_with(std::time::Instant::now);
            if self
                .unflushed_since
                .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
            {
                self.flush(positions).await?;
            }
            // Counted as passed, like the events a transaction ignores.
            return Ok(batch.len() as u64);
        }
        let mut tx = self.pool.begin().await?;
        self.projection.apply_batch(&mut tx, &batch).await?;
        self.applied_here += batch.len() as u64;
        if let Some((p, n)) = &self.cfg.crash_after {
            if p == name && self.applied_here >= *n {
                tracing::error!(projection = name, "test hook: aborting inside a batch");
                std::process::abort();
            }
        }
        if !dead.is_empty() {
            self.record_dead_letters(&mut tx, &dead).await?;
        }
        // This batch's streams, and every stream moved without a transaction since.
        let mut moves: Vec<(String, EntryId, EntryId, u64)> = Vec::new();
        for (stream, last, count) in &advanced {
            let (from, extra) = match self.unflushed.get(stream) {
                Some((db, n)) => (*db, *n),
                None => (positions.get(stream).copied().unwrap_or(EntryId::ZERO), 0),
            };
            moves.push((stream.clone(), from, *last, count + extra));
        }
        for (stream, (db, n)) in &self.unflushed {
            if !advanced.iter().any(|(s, _, _)| s == stream) {
                let at = positions.get(stream).copied().unwrap_or(*db);
                moves.push((stream.clone(), *db, at, *n));
            }
        }
        write_checkpoints(&mut tx, name, &moves).await?;
        for stream in &new_streams {
            sqlx::query(
                "INSERT INTO projection_checkpoints (projection, stream) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(stream)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.unflushed.clear();
        self.unflushed_since = None;

        for stream in new_streams {
            positions.entry(stream).or_insert(EntryId::ZERO);
        }
        for (stream, last, _) in advanced {
            self.visibility.advance(name, &stream, last);
            positions.insert(stream, last);
        }
        if let Some(f) = &self.cfg.on_batch {
            f(batch.len() as u64 + dead.len() as u64);
        }
        METRICS.batches.with_label_values(&[name]).inc();
        METRICS
            .applied
            .with_label_values(&[name])
            .inc_by(batch.len() as u64);
        for d in &dead {
            METRICS
                .dead_letters
                .with_label_values(&[name, d.reason])
                .inc();
        }
        Ok(batch.len() as u64)
    }

    fn forget_unflushed(&mut self) {
        self.unflushed.clear();
        self.unflushed_since = None;
    }

    /// Stores the positions moved without a transaction.
    async fn flush(&mut self, positions: &BTreeMap<String, EntryId>) -> Result<(), RunnerError> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let moves: Vec<(String, EntryId, EntryId, u64)> = self
            .unflushed
            .iter()
            .map(|(stream, (db, n))| {
                let at = positions.get(stream).copied().unwrap_or(*db);
                (stream.clone(), *db, at, *n)
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        write_checkpoints(&mut tx, self.name(), &moves).await?;
        tx.commit().await?;
        self.unflushed.clear();
        self.unflushed_since = None;
        Ok(())
    }

    async fn record_dead_letters(
        &self,
        tx: &mut PgConnection,
        dead: &[DeadLetter],
    ) -> Result<(), RunnerError> {
        let name = self.name();
        let mut conn = self.redis.get_multiplexed_async_connection().await?;
        for d in dead {
            tracing::error!(projection = name, stream = %d.stream, entry = %d.entry_id, reason = d.reason, detail = %d.detail, "refused a log entry");
            sqlx::query(
                "INSERT INTO dead_letters (projection, stream, entry_id, reason, detail, raw_fields)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(&d.stream)
            .bind(d.entry_id.to_string())
            .bind(d.reason)
            .bind(&d.detail)
            .bind(&d.raw)
            .execute(&mut *tx)
            .await?;
            // Written before the commit: a crash here re-sends it (duplicates carry the same
            // stream and entry id) rather than losing it.
            let _: String = redis::cmd("XADD")
                .arg(self.cfg.keys.dead_letters())
                .arg("*")
                .arg("projection")
                .arg(name)
                .arg("stream")
                .arg(&d.stream)
                .arg("entry_id")
                .arg(d.entry_id.to_string())
                .arg("reason")
                .arg(d.reason)
                .arg("detail")
                .arg(&d.detail)
                .arg("fields")
                .arg(d.raw.to_string())
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }
}
