//! One reader of the live log per process, shared by every projection runner in it.
//!
//! Without it each runner keeps its own blocking `XREAD`, so every append wakes as many
//! readers as there are projections, each parsing and verifying the same entries. The feed
//! does that once: it follows the streams the runners asked for from where they stood when
//! it started following them, verifies what arrives and keeps the last entries of each
//! stream in memory. A runner whose positions are all inside what the feed holds takes its
//! entries from there and waits on the feed instead of on Redis; any other runner (behind,
//! catching up, replaying to a bound, or the feed down) reads Redis itself as before.
//!
//! Exactly-once is untouched: the feed only changes where verified entries come from; the
//! runner applies them with the same guarded checkpoint moves.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serval_streams::read::{self, RawEntry};
use serval_streams::{EntryId, KeySpace, LogStream, RedisClient, RedisConn, Signer};
use tokio::sync::watch;

use super::dead_letters::raw_fields_json;
use super::{Checked, DEFAULT_BATCH_SIZE, DEFAULT_BLOCK_MS};

/// Entries kept per stream: a runner more than this behind on a stream reads Redis.
const TAIL: usize = DEFAULT_BATCH_SIZE;
/// Entries kept over all streams; past it every stream's tail is cut to an equal share.
const TOTAL: usize = 4_096;
/// Streams the feed follows at most (one blocking `XREAD` names them all).
const MAX_STREAMS: usize = 512;

struct Tail {
    /// Every entry after this id up to `read_to` is in `entries`.
    after: EntryId,
    read_to: EntryId,
    entries: VecDeque<Checked>,
}

#[derive(Default)]
struct State {
    tails: HashMap<String, Tail>,
    /// Streams a runner asked for that the feed does not follow yet.
    wanted: BTreeSet<String>,
    /// Moves whenever the set of followed streams changes.
    streams_version: u64,
    held: usize,
}

pub struct Feed {
    keys: KeySpace,
    signer: Arc<Signer>,
    state: Mutex<State>,
    /// Bumped after every read that added entries (and when the feed resets).
    tick: watch::Sender<u64>,
    /// Entries handed to runners (each runner's copy counted).
    served: AtomicU64,
}

/// What a runner gets from [`Feed::take`].
pub(crate) enum Take {
    /// Entries after each position (possibly none): every stream asked for is covered.
    Entries(Vec<(String, Vec<Checked>)>),
    /// At least one stream is not covered; read Redis.
    Uncovered,
}

impl Feed {
    pub fn new(keys: KeySpace, signer: Arc<Signer>) -> Arc<Self> {
        Arc::new(Feed {
            keys,
            signer,
            state: Mutex::new(State::default()),
            tick: watch::channel(0).0,
            served: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries handed to runners so far, each runner's copy counted.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// The streams followed now and the version of that set.
    pub(crate) fn streams(&self) -> (u64, Vec<String>) {
        let s = self.lock();
        (s.streams_version, s.tails.keys().cloned().collect())
    }

    pub(crate) fn streams_version(&self) -> u64 {
        self.lock().streams_version
    }

    /// Up to `count` entries after each `(stream, position)`, if the feed holds every one
    /// of those streams from at or before the position.
    pub(crate) fn take(&self, streams: &[(String, EntryId)], count: usize) -> Take {
        let mut s = self.lock();
        let mut uncovered = false;
        for (key, at) in streams {
            match s.tails.get(key) {
                Some(t) if t.after <= *at => {}
                Some(_) => uncovered = true,
                None => {
                    uncovered = true;
                    s.wanted.insert(key.clone());
                }
            }
        }
        if uncovered {
            return Take::Uncovered;
        }
        let mut out = Vec::new();
        for (key, at) in streams {
            let Some(t) = s.tails.get(key) else { continue };
            // Entries are in id order: skip to the first one after the position.
            let start = t.entries.partition_point(|(id, _)| id <= at);
            let picked: Vec<Checked> = t
                .entries
                .iter()
                .skip(start)
                .take(count)
                .map(|(id, e)| (*id, e.clone()))
                .collect();
            if !picked.is_empty() {
                self.served
                    .fetch_add(picked.len() as u64, Ordering::Relaxed);
                out.push((key.clone(), picked));
            }
        }
        Take::Entries(out)
    }

    /// Follows the log until `shutdown`; Redis errors reset the feed (runners read Redis
    /// themselves meanwhile) and are retried with backoff.
    pub async fn run(self: Arc<Self>, client: RedisClient, mut shutdown: watch::Receiver<bool>) {
        // However this ends (a panic included), runners stop taking from it.
        let _reset = ResetOnDrop(&self);
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let result = tokio::select! {
                r = self.follow(&client) => r,
                changed = shutdown.changed() => match changed {
                    Ok(()) => Ok(()),
                    // The stop sender is gone: nothing will ever say stop, so stop now.
                    Err(_) => return,
                },
            };
            self.reset();
            if let Err(e) = result {
                tracing::warn!(error = %e, "log feed paused; runners read Redis directly");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    fn reset(&self) {
        let mut s = self.lock();
        let followed: Vec<String> = s.tails.drain().map(|(k, _)| k).collect();
        s.wanted.extend(followed);
        s.streams_version += 1;
        s.held = 0;
        drop(s);
        self.tick.send_modify(|t| *t += 1);
    }

    async fn follow(&self, client: &RedisClient) -> Result<(), redis::RedisError> {
        let mut conn = client
            .connect_blocking(Duration::from_millis(DEFAULT_BLOCK_MS as u64))
            .await?;
        let activity = self.keys.activity();
        let mut activity_at = read::last_entry_id(&mut conn, &activity).await?;
        self.lock().wanted.insert(self.keys.log(&LogStream::System));
        loop {
            self.admit(&mut conn).await?;
            let mut streams: Vec<(String, EntryId)> = {
                let s = self.lock();
                s.tails
                    .iter()
                    .map(|(k, t)| (k.clone(), t.read_to))
                    .collect()
            };
            streams.push((activity.clone(), activity_at));
            let count = (DEFAULT_BATCH_SIZE / streams.len()).max(1);
            let mut raw =
                read::read_after(&mut conn, &streams, count, Some(DEFAULT_BLOCK_MS)).await?;
            if let Some(i) = raw.iter().position(|(k, _)| *k == activity) {
                let (_, hints) = raw.swap_remove(i);
                if let Some((last, _)) = hints.last() {
                    activity_at = *last;
                }
                let mut s = self.lock();
                for (_, fields) in &hints {
                    if let Some(key) = read::field_bytes(fields, "stream")
                        .and_then(|b| std::str::from_utf8(b).ok())
                    {
                        if !s.tails.contains_key(key) {
                            s.wanted.insert(key.to_owned());
                        }
                    }
                }
            }
            if raw.is_empty() {
                continue;
            }
            let checked = check(&self.keys, &self.signer, raw);
            self.hold(checked);
            self.tick.send_modify(|t| *t += 1);
        }
    }

    /// Starts following the wanted streams from their current end.
    async fn admit(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        let wanted: Vec<String> = {
            let mut s = self.lock();
            let room = MAX_STREAMS.saturating_sub(s.tails.len());
            let take: Vec<String> = s.wanted.iter().take(room).cloned().collect();
            for k in &take {
                s.wanted.remove(k);
            }
            take
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let heads = read::last_entry_ids(conn, &wanted).await?;
        let mut s = self.lock();
        for (key, head) in wanted.into_iter().zip(heads) {
            // Asked for again while this admission was in flight: already followed.
            if s.tails.contains_key(&key) {
                continue;
            }
            s.tails.insert(
                key,
                Tail {
                    after: head,
                    read_to: head,
                    entries: VecDeque::new(),
                },
            );
        }
        s.streams_version += 1;
        Ok(())
    }

    fn hold(&self, checked: Vec<(String, Vec<Checked>)>) {
        let mut s = self.lock();
        let State { tails, held, .. } = &mut *s;
        for (key, entries) in checked {
            let Some(t) = tails.get_mut(&key) else {
                continue;
            };
            for (id, e) in entries {
                t.read_to = id;
                t.entries.push_back((id, e));
                *held += 1;
            }
            while t.entries.len() > TAIL {
                drop_oldest(t, held);
            }
        }
        if *held > TOTAL {
            let share = (TOTAL / tails.len().max(1)).max(1);
            for t in tails.values_mut() {
                while t.entries.len() > share {
                    drop_oldest(t, held);
                }
            }
        }
    }
}

struct ResetOnDrop<'a>(&'a Feed);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.reset();
    }
}

fn drop_oldest(t: &mut Tail, held: &mut usize) {
    if let Some((id, _)) = t.entries.pop_front() {
        t.after = id;
        *held -= 1;
    }
}

/// Verifies and decodes raw stream entries (signature, stream binding, envelope).
pub(super) fn check(
    keys: &KeySpace,
    signer: &Signer,
    reply: Vec<(String, Vec<RawEntry>)>,
) -> Vec<(String, Vec<Checked>)> {
    reply
        .into_iter()
        .map(|(key, entries)| {
            let stream = keys.parse_log(&key);
            let checked = entries
                .into_iter()
                .map(|(id, fields)| {
                    let verified = match &stream {
                        Some(s) => read::verify_entry(signer, &key, s, id, &fields)
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
