//! The Gateway's revocation state (gateway.md §10): the ids of revoked authority records,
//! ended Sessions and ended Delegations, in memory. Fed by the revocation topics
//! (`caracal.sessions.revoke`, `caracal.delegations.invalidate`, signatures checked) as they
//! are published, and replaced by a snapshot of the read model every
//! [`SNAPSHOT_EVERY`]; a state whose last snapshot is older than [`STALE_AFTER`] refuses
//! every call (`503`) rather than let a missed revocation through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serval_kit::App;
use serval_streams::topics;
use tokio::sync::watch;

pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);
pub const STALE_AFTER: Duration = Duration::from_secs(70);
/// How long a topic mark outlives the snapshots that do not hold it: long enough for its
/// projection to land, short enough that a mark no state backs (a Session suspended, then
/// resumed) does not outlast two reloads.
const MARK_TTL: Duration = Duration::from_secs(2 * SNAPSHOT_EVERY.as_secs());
/// Topic messages read per round.
const BATCH: usize = 200;

#[derive(Default)]
struct Sets {
    /// From the last snapshot.
    snapshot: std::collections::HashSet<String>,
    /// From the topics, with when they were seen (kept across snapshots until they expire,
    /// so a mark published before its projection landed is not dropped by a reload).
    marks: HashMap<String, Instant>,
    loaded_at: Option<Instant>,
}

#[derive(Default)]
pub struct Revocations {
    sets: RwLock<Sets>,
    following: AtomicBool,
}

impl Revocations {
    /// Fresh: a snapshot within [`STALE_AFTER`] and the topic follower running.
    pub fn fresh(&self) -> bool {
        let s = self.sets.read().unwrap_or_else(|p| p.into_inner());
        self.following.load(Ordering::Relaxed)
            && s.loaded_at.is_some_and(|t| t.elapsed() < STALE_AFTER)
    }

    /// Whether any of `ids` is revoked.
    pub fn any_revoked<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let s = self.sets.read().unwrap_or_else(|p| p.into_inner());
        ids.into_iter()
            .filter(|i| !i.is_empty())
            .any(|i| s.snapshot.contains(i) || s.marks.contains_key(i))
    }

    fn mark(&self, ids: impl IntoIterator<Item = String>) {
        let mut s = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for id in ids.into_iter().filter(|i| !i.is_empty()) {
            s.marks.insert(id, now);
        }
    }

    /// Replaces the snapshot from the read model.
    pub async fn reload(&self, app: &App) -> Result<usize, serval_kit::http::ApiError> {
        let ids = serval_projector::revocations::snapshot(&app.pool).await?;
        let mut s = self.sets.write().unwrap_or_else(|p| p.into_inner());
        s.snapshot = ids.into_iter().collect();
        s.marks.retain(|_, at| at.elapsed() < MARK_TTL);
        s.loaded_at = Some(Instant::now());
        Ok(s.snapshot.len() + s.marks.len())
    }
}

/// The ids a revocation message names: every anchor of a `caracal.sessions.revoke`
/// message; the edge of a graph message only when it revokes it (creations name edges too).
fn named(fields: &HashMap<String, String>) -> Vec<String> {
    let keys: &[&str] = match fields.get("event").map(String::as_str) {
        None => &[
            "session_id",
            "agent_session_id",
            "delegation_edge_id",
            "edge_id",
        ],
        Some("edge_revoke") => &["edge_id"],
        Some(_) => &[],
    };
    keys.iter()
        .filter_map(|k| fields.get(*k).cloned())
        .collect()
}

/// Follows the revocation topics from their head at start (the first snapshot, taken after
/// the follower has its position, covers everything before).
async fn follow(app: App, rev: std::sync::Arc<Revocations>, mut stop: watch::Receiver<bool>) {
    let keys = app.store.keys();
    let streams = [
        keys.topic(topics::SESSIONS_REVOKE),
        keys.topic(topics::DELEGATIONS_INVALIDATE),
    ];
    // A connection of its own: a blocking read holds the connection it is sent on.
    let Some(mut conn) =
        serval_kit::state::connect_dedicated(&app.cfg.redis_url, "revocation follower", &mut stop)
            .await
    else {
        return;
    };
    let mut ids: Vec<String> = vec!["$".into(); streams.len()];
    // Resolve `$` to concrete ids once, so nothing published between rounds is skipped.
    for (i, s) in streams.iter().enumerate() {
        loop {
            let last: Result<Vec<(String, HashMap<String, String>)>, _> = redis::cmd("XREVRANGE")
                .arg(s)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await;
            match last {
                Ok(v) => {
                    ids[i] = v
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation topic head unreadable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
    rev.following.store(true, Ordering::Relaxed);
    loop {
        if *stop.borrow() {
            return;
        }
        // Both topics in one read; on a cluster, one per slot (`connection::xread`).
        let positions: Vec<(String, String)> =
            streams.iter().cloned().zip(ids.iter().cloned()).collect();
        let read = tokio::select! {
            r = serval_streams::connection::xread(&mut conn, &positions, BATCH, Some(Duration::from_secs(1))) => r,
            _ = stop.changed() => return,
        };
        match read {
            Ok(reply) => {
                rev.following.store(true, Ordering::Relaxed);
                for key in reply {
                    let Some(i) = streams.iter().position(|s| *s == key.key) else {
                        continue;
                    };
                    for entry in key.ids {
                        ids[i] = entry.id.clone();
                        let fields: Vec<(String, Option<String>)> = entry
                            .map
                            .iter()
                            .map(|(k, v)| (k.clone(), redis::from_redis_value::<String>(v).ok()))
                            .collect();
                        if !topics::verify(&app.secrets.streams_key, &key.key, &fields)
                            && !app
                                .secrets
                                .streams_key_previous
                                .as_deref()
                                .is_some_and(|k| topics::verify(k, &key.key, &fields))
                        {
                            tracing::warn!(topic = %key.key, id = %entry.id, "revocation message with a bad signature dropped");
                            continue;
                        }
                        let map: HashMap<String, String> = fields
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k, v)))
                            .collect();
                        rev.mark(named(&map));
                    }
                }
            }
            Err(e) => {
                // Not following: the state goes stale (and calls are refused) if this lasts.
                rev.following.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "revocation topics unreadable");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Starts the follower, then the snapshot loop.
pub fn start(
    app: &App,
    rev: std::sync::Arc<Revocations>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let follower = tokio::spawn(follow(app.clone(), rev.clone(), stop.clone()));
    let (app, mut stop) = (app.clone(), stop.clone());
    let snapshots = tokio::spawn(async move {
        // Let the follower take its position before the first snapshot.
        while !rev.following.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if *stop.borrow() {
                return;
            }
        }
        loop {
            if let Err(e) = rev.reload(&app).await {
                tracing::warn!(error = ?e, "revocation snapshot failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(SNAPSHOT_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    });
    vec![follower, snapshots]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_revocations_mark_ids() {
        assert!(named(&msg(&[("event", "edge_create"), ("edge_id", "e1")])).is_empty());
        assert_eq!(
            named(&msg(&[("event", "edge_revoke"), ("edge_id", "e1")])),
            vec!["e1"]
        );
        let mut r = named(&msg(&[
            ("session_id", "r1"),
            ("agent_session_id", "s1"),
            ("delegation_edge_id", "e1"),
        ]));
        r.sort();
        assert_eq!(r, vec!["e1", "r1", "s1"]);
    }
}
