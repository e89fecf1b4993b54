//! Catalog rows a request reads by key — the caller's application and record, a Delegation's
//! endpoints, a resource by its identifier — kept in memory with the zone's catalog
//! position they were read at. A kept answer is reused at a later position when every log
//! entry in between is a Delegation graph event or an admin-audit record: neither is a
//! catalog row (the catalog projection writes graph events to the graph's tables), so the
//! rows are those of the later position. This process's freshness checks already read those
//! entries for graph writes (`freshness::range_skippable` remembers them); a range nobody
//! read costs one Redis range read, not a Postgres query per row.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serval_kit::freshness;
use serval_kit::App;
use serval_schema::projections::CATALOG;
use serval_streams::{EntryId, LogStream};

/// Answers kept per cache; past it the cache starts over (a miss costs one query).
const KEPT: usize = 4_096;

/// A kept answer is read again this long after its query, whatever the log says: a read
/// model corrected outside the log (a rebuild, a repair) or a log that lost its tail in a
/// failover shows within a minute, as with the skip memo.
const MAX_AGE: Duration = Duration::from_secs(60);

/// Entries a catalog row can never change: what graph writes do not wait for.
pub const NOT_CATALOG_ROWS: freshness::Skippable = freshness::Skippable {
    name: "coordinator-graph-write",
    accepts: graph_or_admin_audit,
};

fn graph_or_admin_audit(_projection: &str, e: &serval_streams::Envelope) -> bool {
    matches!(
        e.aggregate_kind.as_str(),
        "delegation_graph" | "admin_audit"
    )
}

/// The zone's catalog position as this process knows it, with the log stream's key.
pub struct Position {
    key: String,
    pub at: EntryId,
}

impl Position {
    pub fn of(app: &App, zone: &str) -> Position {
        let key = app.store.keys().log(&LogStream::Zone(zone.to_owned()));
        let at = app.visibility.current(CATALOG, &key);
        Position { key, at }
    }
}

/// How a kept answer's validity may be established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Read,
    Remembered,
}

/// Answers of type `V` per (zone, `K`), each with the position it was read at.
pub struct AtPosition<K, V> {
    kept: Mutex<HashMap<(String, K), Kept<V>>>,
}

struct Kept<V> {
    read_at: EntryId,
    born: Instant,
    value: V,
}

impl<K, V> Default for AtPosition<K, V> {
    fn default() -> Self {
        AtPosition {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> AtPosition<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, K), Kept<V>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer for `key` in `zone` as of `now`, when one is kept that is still valid.
    /// With [`Range::Read`] a range the memo does not know is read; with
    /// [`Range::Remembered`] only the memo counts (a request whose freshness check did not
    /// read the tail, where the range would mostly hold catalog entries anyway).
    async fn get(&self, app: &App, zone: &str, key: &K, now: &Position, range: Range) -> Option<V> {
        if now.at == EntryId::ZERO {
            return None;
        }
        let (read_at, value) = self
            .lock()
            .get(&(zone.to_owned(), key.clone()))
            .filter(|k| k.born.elapsed() < MAX_AGE)
            .map(|k| (k.read_at, k.value.clone()))?;
        if read_at == now.at {
            return Some(value);
        }
        let span = (read_at, now.at);
        let unchanged = match range {
            Range::Read => {
                freshness::range_skippable(app, &now.key, CATALOG, NOT_CATALOG_ROWS, span).await
            }
            Range::Remembered => {
                read_at < now.at
                    && freshness::known_skippable(app, &now.key, CATALOG, NOT_CATALOG_ROWS, span)
            }
        };
        if !unchanged {
            return None;
        }
        let mut kept = self.lock();
        if let Some(entry) = kept.get_mut(&(zone.to_owned(), key.clone())) {
            if entry.read_at == read_at {
                entry.read_at = now.at;
            }
        }
        Some(value)
    }

    /// The kept answer for `key` when still valid (see [`Self::get`]), else `read`'s, kept
    /// when `keep` says so (the position is taken before `read` runs, as [`Self::put`]
    /// needs).
    pub async fn get_or_read<E, F>(
        &self,
        app: &App,
        zone: &str,
        key: K,
        range: Range,
        keep: impl Fn(&V) -> bool,
        read: F,
    ) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        let now = Position::of(app, zone);
        if let Some(v) = self.get(app, zone, &key, &now, range).await {
            return Ok(v);
        }
        let v = read.await?;
        if keep(&v) {
            self.put(zone, key, &now, v.clone());
        }
        Ok(v)
    }

    /// Keeps `value`, read from the read model once the zone's position was `read_at` (the
    /// position taken before the query: a row can only be newer than it, and a newer row
    /// means a catalog entry after `read_at`, which no later reuse skips).
    fn put(&self, zone: &str, key: K, read_at: &Position, value: V) {
        if read_at.at == EntryId::ZERO {
            return;
        }
        let mut kept = self.lock();
        let k = (zone.to_owned(), key);
        if kept.len() >= KEPT && !kept.contains_key(&k) {
            kept.clear();
        }
        kept.insert(
            k,
            Kept {
                read_at: read_at.at,
                born: Instant::now(),
                value,
            },
        );
    }
}
