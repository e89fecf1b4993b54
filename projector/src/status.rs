//! Projection health: lag behind the log and refused entries, for `/ready` and `/metrics`.

use serval_streams::{EntryId, KeySpace, LogStream};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct StreamLag {
    pub projection: String,
    pub stream: String,
    pub checkpoint: EntryId,
    /// The oldest entry the projection has not applied yet (`None` when caught up).
    pub next_unapplied: Option<EntryId>,
    /// Unix milliseconds when the lag was measured.
    pub measured_at_ms: u64,
}

impl StreamLag {
    /// How long the oldest unapplied entry has been waiting, in milliseconds (0 when
    /// caught up). Entry ids carry Redis's append time.
    pub fn lag_ms(&self) -> u64 {
        match self.next_unapplied {
            None => 0,
            Some(next) => self.measured_at_ms.saturating_sub(next.ms).max(1),
        }
    }
}

/// Lag of every (projection, stream) pair, including projections that have not yet
/// written a checkpoint (they stand at `0-0` on the system stream).
pub async fn lag(
    pool: &PgPool,
    conn: &mut serval_streams::RedisConn,
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
            next_unapplied: None,
            measured_at_ms: 0,
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
                next_unapplied: None,
                measured_at_ms: 0,
            });
        }
    }
    // One pipelined XRANGE per (projection, stream): the first entry after the checkpoint.
    let cmds = lags
        .iter()
        .map(|l| {
            let mut c = redis::cmd("XRANGE");
            c.arg(&l.stream)
                .arg(format!("({}", l.checkpoint))
                .arg("+")
                .arg("COUNT")
                .arg(1);
            (l.stream.clone(), c)
        })
        .collect();
    let replies: Vec<redis::streams::StreamRangeReply> =
        serval_streams::connection::by_slot(conn, cmds).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for (l, r) in lags.iter_mut().zip(replies) {
        l.next_unapplied = r.ids.first().and_then(|i| i.id.parse().ok());
        l.measured_at_ms = now;
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
