//! Fresh, cached read answers (issue 18): a list page is served from memory while the read
//! models it came from have not changed, and never older than any write acknowledged before
//! the read began, whichever process acknowledged it.
//!
//! **Freshness.** A read first reads the heads of the log streams it depends on (one Redis
//! round trip) and waits until the projections serving it have passed them (the positions
//! every process tracks: in-process commits, `serval_checkpoints` notifications from other
//! processes), at most the visibility timeout; past it the read goes to Postgres uncached.
//! A write acknowledged before the read began is at or before those heads.
//!
//! **Invalidation by commit, not by time.** An answer is stored under the projection
//! positions it was read at (taken after the wait, before the query) and served only while
//! the positions are the same. A position moves only once the commit it stands for is
//! visible to readers, so an entry can never outlive the data it was made from.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use serval_streams::{EntryId, LogStream};

use crate::http::ApiError;
use crate::state::App;

/// Answers kept per process; the map is cleared when full (pages are cheap to rebuild).
const CAPACITY: usize = 4_096;

/// A read model a read depends on: a projection's position on a log stream.
pub struct Dependency<'a> {
    pub projection: &'static str,
    pub stream: &'a LogStream,
}

#[derive(Default)]
pub struct ReadCache {
    entries: Mutex<HashMap<String, (Vec<EntryId>, Bytes)>>,
}

impl ReadCache {
    fn get(&self, key: &str, at: &[EntryId]) -> Option<Bytes> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(tags, _)| tags.as_slice() == at)
            .map(|(_, b)| b.clone())
    }

    fn put(&self, key: String, at: Vec<EntryId>, body: Bytes) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (at, body));
    }
}

/// Waits until every dependency has passed its stream's current head; the positions then,
/// or `None` when one did not within the visibility timeout (a projection stalled, e.g. by
/// a rebuild's swap): the caller then reads Postgres directly, uncached, as reads did
/// before the cache (a write is acknowledged only once its read model has it).
pub async fn fresh(app: &App, deps: &[Dependency<'_>]) -> Option<Vec<EntryId>> {
    let keys: Vec<String> = deps
        .iter()
        .map(|d| app.store.keys().log(d.stream))
        .collect();
    let heads = match app.store.last_entry_ids(&keys).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "log heads unreadable; reading uncached");
            return None;
        }
    };
    let mut at = Vec::with_capacity(deps.len());
    for ((d, key), head) in deps.iter().zip(&keys).zip(heads) {
        if app.visibility.current(d.projection, key) < head
            && !app
                .visibility
                .wait(&app.pool, d.projection, key, head, app.visibility_timeout())
                .await
        {
            tracing::debug!(
                projection = d.projection,
                "read model behind the log head; reading uncached"
            );
            return None;
        }
        at.push(app.visibility.current(d.projection, key));
    }
    Some(at)
}

/// The JSON answer of `key`: from memory while `deps` have not moved, else from `read`.
pub async fn json<F, Fut>(
    app: &App,
    key: String,
    deps: &[Dependency<'_>],
    read: F,
) -> Result<Bytes, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
{
    let Some(at) = fresh(app, deps).await else {
        return Ok(Bytes::from(read().await?.to_string()));
    };
    if let Some(b) = app.read_cache.get(&key, &at) {
        return Ok(b);
    }
    let body = Bytes::from(read().await?.to_string());
    app.read_cache.put(key, at, body.clone());
    Ok(body)
}

/// A cached JSON answer as a `200`.
pub fn respond(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
