//! One batch: decode the verified entries, apply the ones the projection wants and move
//! the checkpoints in one transaction (dead letters in the same one); and the same from the
//! Postgres archive for rebuilds that must not depend on Redis.

use std::collections::BTreeMap;

use serval_domain::zone::ZoneEvent;
use serval_domain::Event;
use serval_streams::read::{self};
use serval_streams::{EntryId, LogStream};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::metrics::METRICS;
use crate::projection::{Applied, Projection};

use super::checkpoints::{claim, write_checkpoints};
use super::dead_letters::DeadLetter;
use super::replays;
use super::Checked;
use super::{Runner, RunnerError};

impl<P: Projection> Runner<P> {
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

    pub(super) async fn apply(
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
        if dead.is_empty()
            && new_streams.is_empty()
            && !batch.iter().any(|a| self.projection.wants(a))
        {
            self.pass_unwanted(positions, advanced).await?;
            // Counted as passed, like the events a transaction ignores.
            return Ok(batch.len() as u64);
        }
        // Where each stream of the batch stands in Postgres if no other runner moved it.
        let expected: Vec<(String, EntryId)> = advanced
            .iter()
            .map(|(stream, _, _)| {
                let from = match self.unflushed.get(stream) {
                    Some((db, _)) => *db,
                    None => positions.get(stream).copied().unwrap_or(EntryId::ZERO),
                };
                (stream.clone(), from)
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        // Claimed before the first effect the transaction cannot take back: here for a
        // projection that acts outside it, else only before dead letters reach Redis. While
        // several workers share the streams it is always claimed first: a runner that lost a
        // handover then stops cleanly at the claim, instead of waiting on the winner's row
        // locks and failing on its unique keys.
        let claimed = self.projection.acts_outside_transaction()
            || self
                .cfg
                .share
                .as_ref()
                .is_some_and(|s| s.members().len() > 1);
        if claimed {
            claim(&mut tx, name, &expected).await?;
        }
        // The archive refuses a copy by its event id (`ON CONFLICT DO NOTHING`).
        let guarded = name != serval_schema::projections::ARCHIVE;
        let (batch, replayed, mut accepted) = replays::screen(&mut tx, name, batch, |a| {
            guarded && self.projection.wants(a)
        })
        .await?;
        for (a, seen) in replayed {
            let e = &a.recorded.envelope;
            dead.push(DeadLetter {
                stream: a.recorded.stream_key.clone(),
                entry_id: a.recorded.entry_id,
                reason: "replayed",
                detail: format!(
                    "event {} ({}) is version {} of {} {}, already applied up to version {seen}",
                    e.event_id, e.event_type, e.aggregate_version, e.aggregate_kind, e.aggregate_id
                ),
                raw: serde_json::json!({
                    "env": { "hex": hex::encode(&a.recorded.body) },
                    "kid": a.recorded.kid,
                    "sig": hex::encode(&a.recorded.sig),
                }),
            });
        }
        let batch = match self.projection.apply_batch(&mut tx, &batch).await {
            Ok(()) => batch,
            // One entry Postgres cannot store (a value out of a column's range, a character
            // it refuses): find it, dead-letter it and apply the rest, rather than retry the
            // batch forever and hold the projection back. Never for the copies that must be
            // whole (the archive, the hash-chained audit trails): those stop, loudly.
            Err(e) if is_data_exception(&e) && !must_be_whole(name) => {
                tx.rollback().await?;
                tx = self.pool.begin().await?;
                if claimed {
                    claim(&mut tx, name, &expected).await?;
                }
                let tried = batch.len();
                let applied = self
                    .apply_isolating(&mut tx, batch, &mut dead, &mut accepted)
                    .await?;
                // Every entry refused: the projection (a column, a migration), not the
                // entries, is at fault; stop rather than dead-letter the log.
                if tried > 1 && applied.is_empty() {
                    return Err(e.into());
                }
                applied
            }
            Err(e) => return Err(e.into()),
        };
        if !dead.is_empty() {
            if !claimed {
                claim(&mut tx, name, &expected).await?;
            }
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
        write_checkpoints(&mut tx, name, &moves, accepted.into_versions()).await?;
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
        self.last_commit = Some(std::time::Instant::now());
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
}

fn must_be_whole(projection: &str) -> bool {
    use serval_schema::projections::{ADMIN_AUDIT, ARCHIVE, AUDIT};
    [ARCHIVE, AUDIT, ADMIN_AUDIT].contains(&projection)
}

/// SQLSTATE class 22 (data exception): usually the entry is at fault.
fn is_data_exception(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}

impl<P: Projection> Runner<P> {
    /// Applies `batch` one entry at a time, each under a savepoint; an entry Postgres refuses
    /// as a data exception becomes an `unappliable` dead letter. Answers the entries applied.
    async fn apply_isolating(
        &self,
        tx: &mut PgConnection,
        batch: Vec<Applied>,
        dead: &mut Vec<DeadLetter>,
        accepted: &mut replays::Accepted,
    ) -> Result<Vec<Applied>, RunnerError> {
        let mut applied = Vec::with_capacity(batch.len());
        for a in batch {
            let mut savepoint = tx.begin().await?;
            match self
                .projection
                .apply_batch(&mut savepoint, std::slice::from_ref(&a))
                .await
            {
                Ok(()) => {
                    savepoint.commit().await?;
                    applied.push(a);
                }
                Err(e) if is_data_exception(&e) => {
                    savepoint.rollback().await?;
                    // Not applied: a corrected copy of it must not be refused as a replay.
                    accepted.forget(&a);
                    let env = &a.recorded.envelope;
                    tracing::error!(
                        projection = self.name(),
                        event_id = %env.event_id,
                        error = %e,
                        "an entry Postgres cannot store was dead-lettered"
                    );
                    // The detail is stored as text: it must not carry the NUL it reports.
                    let detail = format!(
                        "event {} ({}) of {} {}: {e}",
                        env.event_id, env.event_type, env.aggregate_kind, env.aggregate_id
                    )
                    .replace('\0', "\\0");
                    dead.push(DeadLetter {
                        stream: a.recorded.stream_key.clone(),
                        entry_id: a.recorded.entry_id,
                        reason: "unappliable",
                        detail,
                        raw: serde_json::json!({
                            "env": { "hex": hex::encode(&a.recorded.body) },
                            "kid": a.recorded.kid,
                            "sig": hex::encode(&a.recorded.sig),
                        }),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(applied)
    }
}
