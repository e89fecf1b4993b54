//! The projection runner: log → verified events → one transaction per batch.
//!
//! Exactly-once effect: the rows a batch writes and the checkpoint that says the batch was
//! applied commit together. A crash before the commit loses both, and the next run reads
//! the same entries again from the old checkpoint.
//!
//! [`schedule`] decides which streams to read (hot, swept, hinted); [`batch`] verifies,
//! decodes and applies a batch in one transaction; [`skipping`] moves positions over
//! batches the projection wants nothing of without one; [`checkpoints`] holds the guarded
//! checkpoint moves; [`dead_letters`] records refused entries; [`replays`] refuses copies of
//! old entries added to the log again; [`feed`] is the one live reader of the log a process's
//! runners share.

mod batch;
mod checkpoints;
mod dead_letters;
mod feed;
mod replays;
mod schedule;
mod skipping;

pub use checkpoints::load_checkpoint;
pub use feed::Feed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serval_streams::codec::Upcasters;
use serval_streams::{EntryId, KeySpace, Signer};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::metrics::METRICS;
use crate::projection::Projection;
use crate::visibility::Visibility;

/// Entries read per batch (one XREAD, one transaction).
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Postgres session options for every pool of ours: a projection commit does not wait for
/// the WAL flush (see `Runner::apply`; services only read Postgres, so their pools are
/// unaffected), and no query is JIT-compiled: every statement is a short index walk, and
/// once a zone's statistics show a few hundred edges per Session the planner's cost passes
/// `jit_above_cost`, so a 0.1 ms traverse paid 10–90 ms of compilation on every call.
pub const PG_SESSION_OPTIONS: [(&str, &str); 2] = [("synchronous_commit", "off"), ("jit", "off")];

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
    /// Apply nothing after this entry id (point-in-time replays). `None` = follow the log.
    pub until: Option<EntryId>,
    /// Called after each committed batch with the number of events it applied.
    pub on_batch: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// The process's shared reader of the live log; `None`: each runner reads Redis.
    pub feed: Option<Arc<Feed>>,
    /// The streams this process applies when several share the log (`share`); `None`:
    /// every stream (a rebuild, a replay, a lone projector).
    pub share: Option<Arc<crate::share::WorkShare>>,
}

impl ProjectorConfig {
    pub fn new(keys: KeySpace, signer: Arc<Signer>) -> Self {
        ProjectorConfig {
            keys,
            signer,
            upcasters: Arc::new(Upcasters::default()),
            batch_size: DEFAULT_BATCH_SIZE,
            block_ms: DEFAULT_BLOCK_MS,
            until: None,
            on_batch: None,
            feed: None,
            share: None,
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

/// A verified entry's event, or why it was refused (reason, detail, raw).
pub(super) type Verified =
    Result<serval_streams::RecordedEvent, (&'static str, String, serde_json::Value)>;
/// An entry after verification.
pub(super) type Checked = (EntryId, Verified);

pub struct Runner<P: Projection> {
    projection: P,
    pool: PgPool,
    redis: serval_streams::RedisClient,
    cfg: Arc<ProjectorConfig>,
    visibility: Arc<Visibility>,
    /// Streams whose position moved past entries this projection wants nothing of without
    /// a transaction: stream → (position stored in Postgres, entries passed since).
    unflushed: BTreeMap<String, (EntryId, u64)>,
    /// When the oldest unflushed move happened.
    unflushed_since: Option<std::time::Instant>,
    /// When the last batch committed (for [`Projection::pace`]).
    last_commit: Option<std::time::Instant>,
    /// Whether the last read left entries waiting (a backlog is never paced).
    behind: bool,
}

impl<P: Projection> Runner<P> {
    pub fn new(
        projection: P,
        pool: PgPool,
        redis: serval_streams::RedisClient,
        cfg: Arc<ProjectorConfig>,
        visibility: Arc<Visibility>,
    ) -> Self {
        Runner {
            projection,
            pool,
            redis,
            cfg,
            visibility,
            unflushed: BTreeMap::new(),
            unflushed_since: None,
            last_commit: None,
            behind: false,
        }
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Runs until `shutdown` turns true. Database and Redis errors are retried with backoff.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = std::time::Instant::now();
            let result = tokio::select! {
                r = self.follow(false) => r,
                _ = shutdown.changed() => return,
            };
            // A runner that ran a while since its last failure starts its backoff over.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
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
}
