//! Projection health: lag behind the log and refused entries, for `/ready` and `/metrics`.

use redis::aio::ConnectionLike;
use serval_streams::{EntryId, KeySpace, LogStream};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct StreamLag {
    pub projection: String,
    pub stream: String,
    pub checkpoint: EntryId,
    pub head: EntryId,
}

impl StreamLag {
    /// Milliseconds between the newest entry and the last applied one (0 when caught up).
    pub fn lag_ms(&self) -> u64 {
        if self.checkpoint >= self.head {
            0
        } else {
            self.head.ms.saturating_sub(self.checkpoint.ms).max(1)
        }
    }
}

/// Lag of every (projection, stream) pair, including projections that have not yet
/// written a checkpoint (they stand at `0-0` on the system stream).
pub async fn lag<C: ConnectionLike + Send + Sync>(
    pool: &PgPool,
    conn: &mut C,
    keys: &KeySpace,
    projections: &[&str],
) -> Result<Vec<StreamLag>, StatusError> {
    let rows =
        sqlx::query("SELECT projection, stream, last_ms, last_seq FROM projection_checkpoints")
            .fetch_all(pool)
            .await?;
    let mut lags: Vec<StreamLag> = rows
        .iter()
        .map(|r| StreamLag {
            projection: r.get(0),
            stream: r.get(1),
            checkpoint: EntryId::new(r.get::<i64, _>(2) as u64, r.get::<i64, _>(3) as u64),
            head: EntryId::ZERO,
        })
        .collect();
    let system = keys.log(&LogStream::System);
    for p in projections {
        if !lags
            .iter()
            .any(|l| l.projection == *p && l.stream == system)
        {
            lags.push(StreamLag {
                projection: (*p).to_owned(),
                stream: system.clone(),
                checkpoint: EntryId::ZERO,
                head: EntryId::ZERO,
            });
        }
    }
    let mut streams: Vec<String> = lags.iter().map(|l| l.stream.clone()).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut pipe = redis::pipe();
    for s in &streams {
        pipe.cmd("XREVRANGE")
            .arg(s)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<redis::streams::StreamRangeReply> = pipe.query_async(conn).await?;
    let heads: std::collections::HashMap<String, EntryId> = streams
        .into_iter()
        .zip(replies)
        .map(|(s, r)| {
            (
                s,
                r.ids
                    .first()
                    .and_then(|i| i.id.parse().ok())
                    .unwrap_or(EntryId::ZERO),
            )
        })
        .collect();
    for l in &mut lags {
        l.head = heads.get(&l.stream).copied().unwrap_or(EntryId::ZERO);
    }
    Ok(lags)
}

pub async fn dead_letter_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    // One refused entry counts once, however many projections refused it.
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT stream, entry_id FROM dead_letters) d",
    )
    .fetch_one(pool)
    .await
}

/// Errors of the status queries.
pub use status_error::StatusError;
mod status_error {
    #[derive(Debug, thiserror::Error)]
    pub enum StatusError {
        #[error("postgres: {0}")]
        Postgres(#[from] sqlx::Error),
        #[error("redis: {0}")]
        Redis(#[from] redis::RedisError),
    }
}
