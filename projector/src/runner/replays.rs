//! Refusal of replayed log entries: an event is applied only when its aggregate version is
//! above the last version of that aggregate this projection applied (`applied_versions`,
//! written in the batch's transaction). A copy of an old entry added to the log again —
//! signed, so it verifies — carries an old version and is dead-lettered as `replayed`.
//!
//! "Above", not "exactly the next": a projection sees only the events it wants, so its
//! versions of an aggregate legitimately skip; `serval-replay verify` reads every entry and
//! checks exact continuity. An old version carried by an event *newer* than the last one
//! applied is not a copy (the versions index went back after a failover): it is applied
//! with a warning, never dropped. Single-event aggregates are not tracked, nor is the
//! archive (its `event_id UNIQUE` refuses a copy: `ON CONFLICT DO NOTHING`).

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::projection::Applied;

/// The key of an event's aggregate in `applied_versions`: versions are per stream (ids of
/// some kinds, audit frames' for one, are unique only within a zone).
fn aggregate_key(a: &Applied) -> String {
    let e = &a.recorded.envelope;
    format!(
        "{}|{}/{}",
        a.recorded.stream_key, e.aggregate_kind, e.aggregate_id
    )
}

/// Whether the guard follows this event's aggregate: single-event aggregates are refused a
/// second copy by their tables' ids, and tracking them would grow the table per record.
fn tracked(a: &Applied) -> bool {
    !matches!(
        a.recorded.envelope.aggregate_kind.as_str(),
        "admin_audit" | "audit"
    )
}

/// The versions a batch leaves behind, to store with its commit.
pub(super) struct Accepted {
    latest: HashMap<String, (i64, String)>,
}

/// Splits `batch` into the events to apply and the replayed ones (with the version already
/// applied). Only events `wanted` are judged: the others are ignored by the projection.
pub(super) async fn screen(
    tx: &mut PgConnection,
    projection: &str,
    batch: Vec<Applied>,
    wanted: impl Fn(&Applied) -> bool,
) -> Result<(Vec<Applied>, Vec<(Applied, u64)>, Accepted), sqlx::Error> {
    let keys: Vec<String> = {
        let mut k: Vec<String> = batch
            .iter()
            .filter(|a| tracked(a) && wanted(a))
            .map(aggregate_key)
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut latest: HashMap<String, (i64, String)> = if keys.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT aggregate, version, event_id FROM applied_versions
             WHERE projection = $1 AND aggregate = ANY($2)",
        )
        .bind(projection)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(k, v, e)| (k, (v, e)))
        .collect()
    };
    let mut changed: HashMap<String, (i64, String)> = HashMap::new();
    let mut keep = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for a in batch {
        if !tracked(&a) || !wanted(&a) {
            keep.push(a);
            continue;
        }
        let key = aggregate_key(&a);
        let e = &a.recorded.envelope;
        let version = i64::try_from(e.aggregate_version).unwrap_or(i64::MAX);
        let seen = latest.get(&key).cloned();
        match seen {
            // An old version whose event is not newer than the last applied: a copy.
            // (UUIDv7 text sorts by creation time.)
            Some((seen, last_event)) if version <= seen && e.event_id <= last_event => {
                refused.push((a, seen as u64))
            }
            previous => {
                if let Some((seen, _)) = previous.filter(|(seen, _)| version <= *seen) {
                    // A new event at a used version: the versions index went back (Redis
                    // failed over behind the read models). Applied, never dropped.
                    tracing::warn!(
                        projection,
                        aggregate = %key,
                        version,
                        applied = seen,
                        "an aggregate's version went back with a new event; applying it"
                    );
                }
                let entry = (version, e.event_id.clone());
                latest.insert(key.clone(), entry.clone());
                changed.insert(key, entry);
                keep.push(a);
            }
        }
    }
    Ok((keep, refused, Accepted { latest: changed }))
}

impl Accepted {
    /// Drops `a`'s version when it is the one recorded for its aggregate (the entry was not
    /// applied after all). An earlier version of the batch is not restored: the row keeps
    /// the version stored before the batch, which refuses nothing newer.
    pub(super) fn forget(&mut self, a: &Applied) {
        let key = aggregate_key(a);
        if self
            .latest
            .get(&key)
            .is_some_and(|(_, e)| *e == a.recorded.envelope.event_id)
        {
            self.latest.remove(&key);
        }
    }

    /// The new versions as columns, stored with the batch's checkpoint move
    /// ([`super::checkpoints::write_checkpoints`]): one round trip for both.
    pub(super) fn into_versions(self) -> Versions {
        let mut out = Versions::default();
        for (k, (v, e)) in self.latest {
            out.aggregates.push(k);
            out.versions.push(v);
            out.events.push(e);
        }
        out
    }
}

/// Aggregate versions to store in `applied_versions`, as the columns of one `UNNEST`.
#[derive(Default)]
pub(super) struct Versions {
    pub aggregates: Vec<String>,
    pub versions: Vec<i64>,
    pub events: Vec<String>,
}

impl Versions {
    pub(super) fn is_empty(&self) -> bool {
        self.aggregates.is_empty()
    }
}
