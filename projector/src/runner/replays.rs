//! Refusal of replayed log entries: an event is applied only when its aggregate version is
//! above the last version of that aggregate this projection applied (`applied_versions`,
//! written in the batch's transaction). A copy of an old entry added to the log again —
//! signed, so it verifies — carries an old version and is dead-lettered as `replayed`.
//!
//! "Above", not "exactly the next": a projection sees only the events it wants, so its
//! versions of an aggregate legitimately skip; `serval-replay verify` reads every entry and
//! checks exact continuity.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::projection::Applied;

/// The key of an event's aggregate in `applied_versions`.
fn aggregate_key(a: &Applied) -> String {
    let e = &a.recorded.envelope;
    format!("{}/{}", e.aggregate_kind, e.aggregate_id)
}

/// The versions a batch leaves behind, to store with its commit.
pub(super) struct Accepted {
    latest: HashMap<String, i64>,
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
            .filter(|a| wanted(a))
            .map(aggregate_key)
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut latest: HashMap<String, i64> = if keys.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT aggregate, version FROM applied_versions
             WHERE projection = $1 AND aggregate = ANY($2)",
        )
        .bind(projection)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let mut changed: HashMap<String, i64> = HashMap::new();
    let mut keep = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for a in batch {
        if !wanted(&a) {
            keep.push(a);
            continue;
        }
        let key = aggregate_key(&a);
        let version = i64::try_from(a.recorded.envelope.aggregate_version).unwrap_or(i64::MAX);
        match latest.get(&key) {
            Some(&seen) if version <= seen => refused.push((a, seen as u64)),
            _ => {
                latest.insert(key.clone(), version);
                changed.insert(key, version);
                keep.push(a);
            }
        }
    }
    Ok((keep, refused, Accepted { latest: changed }))
}

impl Accepted {
    /// Stores the new versions in the batch's transaction.
    pub(super) async fn store(
        self,
        tx: &mut PgConnection,
        projection: &str,
    ) -> Result<(), sqlx::Error> {
        if self.latest.is_empty() {
            return Ok(());
        }
        let (keys, versions): (Vec<String>, Vec<i64>) = self.latest.into_iter().unzip();
        sqlx::query(
            "INSERT INTO applied_versions (projection, aggregate, version)
             SELECT $1, k, v FROM UNNEST($2::text[], $3::bigint[]) AS t(k, v)
             ON CONFLICT (projection, aggregate) DO UPDATE SET version = EXCLUDED.version",
        )
        .bind(projection)
        .bind(keys)
        .bind(versions)
        .execute(tx)
        .await?;
        Ok(())
    }
}
