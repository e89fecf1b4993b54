//! Which streams a runner reads and when: the system stream and every stream seen with
//! entries in one blocking `XREAD` (with the writers' activity hints), the quiet ones swept
//! on a timer; replay bounds; verification of what was read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serval_streams::read::{self, RawEntry};
use serval_streams::RedisConn;
use serval_streams::{EntryId, LogStream};
use sqlx::Row;

use crate::metrics::METRICS;
use crate::projection::Projection;

use super::feed::{self, Feed, Take};
use super::skipping::FLUSH_AFTER;
use super::{Checked, SWEEP_CHUNK, SWEEP_INTERVAL_MS};
use super::{Runner, RunnerError};

impl<P: Projection> Runner<P> {
    async fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        self.redis
            .connect_blocking(Duration::from_millis(self.cfg.block_ms as u64))
            .await
    }

    /// The streams this projection follows and where it stands on each.
    pub(super) async fn positions(&self) -> Result<BTreeMap<String, EntryId>, sqlx::Error> {
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
        if let Some(share) = &self.cfg.share {
            // Shared with other processes: only the streams this one owns.
            pos.retain(|k, _| share.owns(k));
        }
        Ok(pos)
    }

    pub(super) async fn follow(&mut self, stop_when_idle: bool) -> Result<u64, RunnerError> {
        let mut conn = self.connect().await?;
        let mut positions = self.positions().await?;
        // Shared with other processes: only the streams this one owns (`share`).
        let mut share_seen = None;
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
        let mut feed_streams = u64::MAX;
        // Whether the last read came from the feed (the activity position did not move).
        let mut was_fed = false;
        let mut total = 0;
        let mut rotation = 0usize;
        let mut empty_windows = 0usize;
        loop {
            if let (Some(pace), Some(at), false, false, None) = (
                self.projection.pace(),
                self.last_commit,
                self.behind,
                stop_when_idle,
                self.cfg.until,
            ) {
                let left = pace.saturating_sub(at.elapsed());
                if !left.is_zero() {
                    tokio::time::sleep(left).await;
                }
            }
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
            if let Some(share) = self.cfg.share.clone() {
                let v = share.version();
                if share_seen != Some(v) || (sweep_due && share.members().len() > 1) {
                    share_seen = Some(v);
                    positions = self.owned_positions(&share, positions).await?;
                    hot.retain(|k| positions.contains_key(k));
                }
            }
            let mut reply = Vec::new();
            // Entries asked per stream by the read that answered: a stream that filled it
            // has more waiting, and the next batch is not paced.
            let mut asked = usize::MAX;
            if sweep_due {
                // Checked on a timer even when the hot streams are busy, so quiet zones
                // are never starved.
                last_sweep = Some(std::time::Instant::now());
                let cold = pending(&mut positions.iter().filter(|(k, _)| !hot.contains(*k)));
                for chunk in cold.chunks(SWEEP_CHUNK) {
                    let count = per_stream(self.cfg.batch_size, chunk.len());
                    asked = count;
                    let found =
                        self.checked(read::read_after(&mut conn, chunk, count, None).await?);
                    if !found.is_empty() {
                        hot.extend(found.iter().map(|(k, _)| k.clone()));
                        reply = found;
                        break;
                    }
                }
            }
            // More hot streams than one read holds: the windows rotate, and only a whole
            // rotation of empty windows is idleness (neither a reason to block nor to stop).
            let mut rotating = false;
            if reply.is_empty() {
                let hot_streams = pending(&mut positions.iter().filter(|(k, _)| hot.contains(*k)));
                let cap = self.cfg.batch_size.max(1);
                rotating = hot_streams.len() > cap && empty_windows * cap < hot_streams.len();
                let block = if stop_when_idle || rotating {
                    None
                } else {
                    let left = SWEEP_INTERVAL_MS
                        .saturating_sub(last_sweep.map_or(0, |t| t.elapsed().as_millis() as u64));
                    let mut block = (left as usize).clamp(1, self.cfg.block_ms);
                    // Positions passed without a transaction reach Postgres (and other
                    // processes) within `FLUSH_AFTER`, also when the streams go quiet.
                    if let Some(t) = self.unflushed_since {
                        let due = FLUSH_AFTER.saturating_sub(t.elapsed()).as_millis() as usize;
                        block = block.min(due.max(1));
                    }
                    Some(block)
                };
                let mut streams = window(hot_streams, self.cfg.batch_size, &mut rotation);
                // Following the live log: the process's feed answers when it holds every
                // stream of the window from this runner's positions on.
                let fed = match (&self.cfg.feed, activity_at) {
                    (Some(feed), Some(_)) if !streams.is_empty() => {
                        let count = per_stream(self.cfg.batch_size, streams.len());
                        asked = count;
                        let fed = from_feed(feed, &streams, count, block).await;
                        if fed.is_some() && feed.streams_version() != feed_streams {
                            // The feed learns of new streams from the writers' hints.
                            let (version, followed) = feed.streams();
                            feed_streams = version;
                            hot.extend(followed);
                        }
                        fed
                    }
                    _ => None,
                };
                if fed.is_none()
                    && self.cfg.feed.is_some()
                    && activity_at.is_some()
                    && !streams.is_empty()
                {
                    METRICS.feed_misses.with_label_values(&[self.name()]).inc();
                }
                if fed.is_none() && was_fed && activity_at.is_some() {
                    // Back from the feed: hints older than now were the feed's to read.
                    activity_at = Some(read::last_entry_id(&mut conn, &activity).await?);
                }
                was_fed = fed.is_some();
                if let Some(at) = activity_at {
                    streams.push((activity.clone(), at));
                }
                if let Some(fed) = fed {
                    reply = self.bounded(fed);
                } else if !streams.is_empty() {
                    let count = per_stream(self.cfg.batch_size, streams.len());
                    asked = count;
                    let mut raw = read::read_after(&mut conn, &streams, count, block).await?;
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
                    reply = self.checked(raw);
                } else if let Some(ms) = block {
                    tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await;
                }
            }
            if reply.is_empty() && rotating {
                empty_windows += 1;
                continue;
            }
            empty_windows = 0;
            if reply.is_empty() {
                // Idle: store the positions moved without a transaction.
                self.flush_or_reload(&mut positions).await?;
                if stop_when_idle {
                    return Ok(total);
                }
                continue;
            }
            self.behind = rotating
                || reply
                    .iter()
                    .any(|(_, entries)| entries.len() >= asked.max(1))
                || reply.iter().map(|(_, e)| e.len()).sum::<usize>() >= self.cfg.batch_size;
            let t_read = std::time::Instant::now();
            let held: BTreeSet<String> = match &self.cfg.share {
                Some(s) if s.members().len() > 1 => positions.keys().cloned().collect(),
                _ => BTreeSet::new(),
            };
            let applied = self.apply(&mut positions, reply).await;
            tracing::debug!(
                projection = self.name(),
                elapsed_us = t_read.elapsed().as_micros() as u64,
                "batch applied"
            );
            if let Some(share) = &self.cfg.share {
                // A zone created in a stream of ours may have a stream another owns; the
                // streams held before the batch stay until the next ownership refresh,
                // which stores their unflushed moves first.
                if !held.is_empty() {
                    positions.retain(|k, _| held.contains(k) || share.owns(k));
                }
            }
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

    /// The streams this worker owns now, at the positions it holds in memory or, for a
    /// stream it just took over (or a zone another worker's batch added), where Postgres
    /// has it. Positions moved without a transaction are stored first, so a stream given
    /// away is taken up exactly where this worker left it.
    async fn owned_positions(
        &mut self,
        share: &crate::share::WorkShare,
        mut positions: BTreeMap<String, EntryId>,
    ) -> Result<BTreeMap<String, EntryId>, RunnerError> {
        self.flush_or_reload(&mut positions).await?;
        positions.retain(|k, _| share.owns(k));
        // Already only the owned streams (`positions`).
        for (k, at) in self.positions().await? {
            positions.entry(k).or_insert(at);
        }
        Ok(positions)
    }

    /// Stores the positions moved without a transaction; when another runner moved a
    /// checkpoint meanwhile, forgets them and reloads every position from Postgres.
    async fn flush_or_reload(
        &mut self,
        positions: &mut BTreeMap<String, EntryId>,
    ) -> Result<(), RunnerError> {
        match self.flush(positions).await {
            Err(RunnerError::CheckpointMoved { .. }) => {
                self.forget_unflushed();
                *positions = self.positions().await?;
                Ok(())
            }
            other => other,
        }
    }

    /// Verifies what was read from Redis, within the replay bound.
    fn checked(&self, raw: Vec<(String, Vec<RawEntry>)>) -> Vec<(String, Vec<Checked>)> {
        feed::check(&self.cfg.keys, &self.cfg.signer, self.bounded(raw))
    }

    /// Drops entries after the replay bound and streams left with nothing.
    fn bounded<T>(
        &self,
        mut reply: Vec<(String, Vec<(EntryId, T)>)>,
    ) -> Vec<(String, Vec<(EntryId, T)>)> {
        if let Some(u) = self.cfg.until {
            // A point-in-time replay applies nothing after its bound.
            for (_, entries) in &mut reply {
                entries.retain(|(id, _)| *id <= u);
            }
        }
        reply.retain(|(_, e)| !e.is_empty());
        reply
    }
}

/// Up to `count` entries per stream from the process's feed, waiting up to `block` ms for
/// some; `None` when the feed does not hold every stream from its position on.
async fn from_feed(
    feed: &Feed,
    streams: &[(String, EntryId)],
    count: usize,
    block: Option<usize>,
) -> Option<Vec<(String, Vec<Checked>)>> {
    let deadline = block.map(|ms| Instant::now() + Duration::from_millis(ms as u64));
    loop {
        // Subscribed before looking, so entries held in between wake the wait.
        let mut tick = feed.subscribe();
        match feed.take(streams, count) {
            Take::Uncovered => return None,
            Take::Entries(e) if !e.is_empty() => return Some(e),
            Take::Entries(e) => {
                let left = deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    return Some(e);
                }
                match tokio::time::timeout(left, tick.changed()).await {
                    Err(_) => return Some(e),
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}

/// `COUNT` applies per stream: each of `streams` streams gets an equal share of one batch,
/// so one `XREAD` returns at most `batch` entries whatever the number of hot streams (one
/// each when there are more streams than that, see [`window`]).
fn per_stream(batch: usize, streams: usize) -> usize {
    (batch / streams.max(1)).max(1)
}

/// At most `batch` of the hot streams, a different window each round so every stream is
/// read in turn when there are more hot streams than one batch can hold.
fn window(
    mut streams: Vec<(String, EntryId)>,
    batch: usize,
    rotation: &mut usize,
) -> Vec<(String, EntryId)> {
    let cap = batch.max(1);
    if streams.len() <= cap {
        return streams;
    }
    let start = *rotation % streams.len();
    *rotation = rotation.wrapping_add(cap);
    streams.rotate_left(start);
    streams.truncate(cap);
    streams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_is_bounded_by_one_batch_and_every_stream_gets_its_turn() {
        for (batch, n) in [
            (500, 1),
            (500, 3),
            (500, 499),
            (500, 501),
            (500, 20_000),
            (1, 7),
        ] {
            let streams: Vec<(String, EntryId)> =
                (0..n).map(|i| (format!("s{i}"), EntryId::ZERO)).collect();
            let mut rotation = 0;
            let mut seen = BTreeSet::new();
            for _ in 0..(n / batch.max(1) + 2) {
                let w = window(streams.clone(), batch, &mut rotation);
                // Plus the activity stream, read beside them.
                let total = (w.len() + 1) * per_stream(batch, w.len() + 1);
                assert!(total <= batch.max(w.len() + 1), "{batch} {n}: {total}");
                seen.extend(w.into_iter().map(|(k, _)| k));
            }
            assert_eq!(seen.len(), n, "{batch} {n}");
        }
    }
}
