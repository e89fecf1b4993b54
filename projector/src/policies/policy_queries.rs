//! Queries of `policies` and `policy_versions`, and the keyset helpers the set queries
//! share.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serval_domain::policy::policies::{Policy, PolicyVersion};
use serval_domain::policy::policy_sets::ReferencedVersion;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use super::rows::*;

/// The row of `select` (a table without a `WHERE`) with this id in this zone.
pub(super) async fn load_in_zone<'e, T>(
    db: impl PgExecutor<'e>,
    select: &str,
    zone_id: &str,
    id: &str,
    map: fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, sqlx::Error> {
    sqlx::query(&format!("{select} WHERE id = $1 AND zone_id = $2"))
        .bind(id)
        .bind(zone_id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(map)
        .transpose()
}

/// One page of `select` (which filters on `$1 = owner`), `(created_at, id)` descending,
/// strictly after the cursor position.
pub(super) async fn keyset_page<'e, T>(
    db: impl PgExecutor<'e>,
    select: &str,
    owner: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
    map: fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let (ts, id) = after.unzip();
    let rows = sqlx::query(&format!(
        "{select} AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(owner)
    .bind(limit)
    .bind(ts)
    .bind(id)
    .fetch_all(db)
    .await?;
    rows.iter().map(map).collect()
}

/// A policy of a zone, archived or not.
pub async fn load_policy<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<Policy>, sqlx::Error> {
    let select = format!("SELECT {POLICY_COLUMNS} FROM policies");
    load_in_zone(db, &select, zone_id, id, policy_from_row).await
}

/// One page of a zone's live policies, `(created_at, id)` descending.
pub async fn list_policies<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<Policy>, sqlx::Error> {
    let select =
        format!("SELECT {POLICY_COLUMNS} FROM policies WHERE zone_id = $1 AND archived_at IS NULL");
    keyset_page(db, &select, zone_id, after, limit, policy_from_row).await
}

/// Every version of a policy, newest first.
pub async fn policy_versions<'e>(
    db: impl PgExecutor<'e>,
    policy_id: &str,
) -> Result<Vec<PolicyVersion>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE policy_id = $1 ORDER BY version DESC"
    ))
    .bind(policy_id)
    .fetch_all(db)
    .await?;
    rows.iter().map(version_from_row).collect()
}

/// Policy versions by id (any zone; callers check the zone).
pub async fn policy_versions_by_id<'e>(
    db: impl PgExecutor<'e>,
    ids: &[String],
) -> Result<BTreeMap<String, PolicyVersion>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| version_from_row(r).map(|v| (v.id.clone(), v)))
        .collect()
}

/// What the manifest contract needs of policy versions (zone, schema), without content.
pub async fn policy_version_refs<'e>(
    db: impl PgExecutor<'e>,
    ids: &[String],
) -> Result<BTreeMap<String, ReferencedVersion>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, zone_id, schema_version FROM policy_versions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                ReferencedVersion {
                    zone_id: r.try_get(1)?,
                    schema_version: r.try_get(2)?,
                },
            ))
        })
        .collect()
}
