//! Cached read answers (issue 18): a list page is served from memory while the read models
//! it came from have not changed.
//!
//! **Freshness** is the request's (`freshness::api_layer` ran before the handler): the read
//! models already passed every write acknowledged before the request began.
//!
//! **Invalidation by commit, not by time.** An answer is stored under the projection
//! positions it was read at (taken before the query) and served only while the positions
//! are the same. A position moves only once the commit it stands for is visible to
//! readers, so an entry can never outlive the data it was made from.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use serval_streams::{EntryId, LogStream};

use crate::freshness::Dep;
use crate::http::ApiError;
use crate::state::App;

/// Answers kept per process; the map is cleared when full (pages are cheap to rebuild).
const CAPACITY: usize = 4_096;

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

/// Where the dependencies' projections stand now, in this process's view.
fn positions(app: &App, deps: &[Dep]) -> Vec<EntryId> {
    deps.iter()
        .map(|d| {
            app.visibility
                .current(d.projection, &app.store.keys().log(&d.stream))
        })
        .collect()
}

/// The JSON answer of `key`: from memory while `deps` have not moved, else from `read`.
pub async fn json<F, Fut>(app: &App, key: String, deps: &[Dep], read: F) -> Result<Bytes, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
{
    let at = positions(app, deps);
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

/// Zone rows by id, each kept under the `zones` projection's position on the system
/// stream when it was read, and served only while that position has not moved (every
/// write's zone check reads its zone; a commit anywhere invalidates the row).
#[derive(Default)]
pub struct ZoneRows {
    rows: Mutex<HashMap<String, (EntryId, Option<serval_domain::zone::Zone>)>>,
}

/// The zone `id` as the read model holds it (the request's freshness layer already ran).
pub async fn zone(app: &App, id: &str) -> Result<Option<serval_domain::zone::Zone>, ApiError> {
    let at = app.visibility.current(
        serval_schema::projections::ZONES,
        &app.store.keys().log(&LogStream::System),
    );
    {
        let rows = app.zone_rows.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pos, z)) = rows.get(id) {
            if *pos == at {
                return Ok(z.clone());
            }
        }
    }
    let z = serval_projector::zones::load(&app.pool, id).await?;
    let mut rows = app.zone_rows.rows.lock().unwrap_or_else(|p| p.into_inner());
    if rows.len() >= CAPACITY && !rows.contains_key(id) {
        rows.clear();
    }
    rows.insert(id.to_owned(), (at, z.clone()));
    Ok(z)
}
