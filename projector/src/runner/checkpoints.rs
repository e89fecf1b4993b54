//! Checkpoint rows: the guarded move (with its notification) and the read of one.

use serval_streams::EntryId;
use sqlx::{PgConnection, PgPool, Row};

use crate::visibility::NOTIFY_CHANNEL;

use super::replays::Versions;
use super::RunnerError;

/// Moves checkpoints `(stream, from, to, entries)`, each guarded on `from`: two runners of
/// one projection (or a rebuild swap) can never both apply the same entries. Each move
/// notifies waiters in other processes. The batch's aggregate `versions` ride the first
/// move's statement (a failed guard rolls the transaction back, versions with it): one
/// round trip for both. A batch with versions always moves its own streams.
pub(super) async fn write_checkpoints(
    tx: &mut PgConnection,
    name: &str,
    moves: &[(String, EntryId, EntryId, u64)],
    versions: Versions,
) -> Result<(), RunnerError> {
    debug_assert!(!moves.is_empty() || versions.is_empty());
    let mut versions = Some(versions);
    for (stream, from, last, count) in moves {
        // The later moves store no versions: their arrays are empty.
        let v = versions.take().unwrap_or_default();
        let moved = sqlx::query(MOVE)
            .bind(name)
            .bind(v.aggregates)
            .bind(v.versions)
            .bind(v.events)
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

/// The versions' upsert, the guarded move, and its notification only if it moved.
const MOVE: &str = "WITH versions AS (
       INSERT INTO applied_versions (projection, aggregate, version, event_id)
       SELECT $1, k, v, e FROM UNNEST($2::text[], $3::bigint[], $4::text[]) AS t(k, v, e)
       ON CONFLICT (projection, aggregate)
       DO UPDATE SET version = EXCLUDED.version, event_id = EXCLUDED.event_id),
     moved AS (
       INSERT INTO projection_checkpoints (projection, stream, last_ms, last_seq, events_applied, updated_at)
       VALUES ($1, $5, $6, $7, $8, now())
       ON CONFLICT (projection, stream) DO UPDATE
       SET last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq,
           events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
           updated_at = now()
       WHERE projection_checkpoints.last_ms = $9 AND projection_checkpoints.last_seq = $10
       RETURNING 1)
     SELECT pg_notify($11, $12) FROM moved";

/// Locks the checkpoint rows of a batch's streams and checks they still stand where the
/// batch read from, before the batch's first effect outside its transaction: a runner that
/// lost a race (another worker of a shared log, a rebuild swap) stops here, not after it
/// recorded dead letters in Redis or published topic messages only to be rolled back by
/// [`write_checkpoints`]. A stream without a row gets one at `0-0` first, so that two
/// runners of a new stream also meet on a lock.
pub(super) async fn claim(
    tx: &mut PgConnection,
    name: &str,
    expected: &[(String, EntryId)],
) -> Result<(), RunnerError> {
    let streams: Vec<&str> = expected.iter().map(|(s, _)| s.as_str()).collect();
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, stream)
         SELECT $1, s FROM UNNEST($2::text[]) AS t(s) ORDER BY s ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(&streams)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT stream, last_ms, last_seq FROM projection_checkpoints
         WHERE projection = $1 AND stream = ANY($2) ORDER BY stream FOR UPDATE",
    )
    .bind(name)
    .bind(&streams)
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        let stream: String = r.get(0);
        let at = EntryId::new(r.get::<i64, _>(1) as u64, r.get::<i64, _>(2) as u64);
        if expected.iter().any(|(s, from)| *s == stream && *from != at) {
            return Err(RunnerError::CheckpointMoved {
                projection: name.to_owned(),
                stream,
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
