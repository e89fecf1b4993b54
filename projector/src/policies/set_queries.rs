//! Queries of `policy_sets`, `policy_set_versions`, `policy_catalogs` (the catalog
//! snapshot a set command decides on), `policy_activations` and `relay_dispatches`.

use chrono::{DateTime, Utc};
use serval_domain::policy::policy_sets::{Catalog, SetSummary, SetVersionSummary};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use super::policy_queries::{keyset_page, load_in_zone};
use super::rows::*;

pub async fn load_set<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<PolicySetRow>, sqlx::Error> {
    let select = format!("SELECT {SET_COLUMNS} FROM policy_sets");
    load_in_zone(db, &select, zone_id, id, set_from_row).await
}

pub async fn list_sets<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<PolicySetRow>, sqlx::Error> {
    let select =
        format!("SELECT {SET_COLUMNS} FROM policy_sets WHERE zone_id = $1 AND archived_at IS NULL");
    keyset_page(db, &select, zone_id, after, limit, set_from_row).await
}

pub async fn list_set_versions<'e>(
    db: impl PgExecutor<'e>,
    set_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<SetVersionRow>, sqlx::Error> {
    let select =
        format!("SELECT {SET_VERSION_COLUMNS} FROM policy_set_versions WHERE policy_set_id = $1");
    keyset_page(db, &select, set_id, after, limit, set_version_from_row).await
}

/// A policy-set version by id (any set; callers check set and zone).
pub async fn load_set_version<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
) -> Result<Option<SetVersionRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {SET_VERSION_COLUMNS} FROM policy_set_versions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(set_version_from_row)
    .transpose()
}

pub(super) const BINDINGS: &str = "SELECT s.zone_id, s.id, s.active_version_id, v.manifest_sha256
     FROM policy_sets s JOIN policy_set_versions v ON v.id = s.active_version_id
     WHERE s.active_version_id IS NOT NULL";

pub(super) fn binding_from_row(r: &PgRow) -> Result<Binding, sqlx::Error> {
    Ok(Binding {
        zone_id: r.try_get(0)?,
        policy_set_id: r.try_get(1)?,
        version_id: r.try_get(2)?,
        manifest_sha256: r.try_get(3)?,
    })
}

/// The zone's active binding, if any.
pub async fn binding<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
) -> Result<Option<Binding>, sqlx::Error> {
    sqlx::query(&format!("{BINDINGS} AND s.zone_id = $1"))
        .bind(zone_id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(binding_from_row)
        .transpose()
}

/// Every zone with an active binding (to warm engine caches at start).
pub async fn all_bindings<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Binding>, sqlx::Error> {
    let rows = sqlx::query(&format!("{BINDINGS} ORDER BY s.zone_id"))
        .fetch_all(db)
        .await?;
    rows.iter().map(binding_from_row).collect()
}

/// The catalog state a set command decides on: every set of the zone, the binding, and the
/// versions of `target_set`. Read in one `REPEATABLE READ` snapshot so the pieces agree with
/// `version` (a dropped future rolls the transaction back with it).
pub async fn load_catalog(
    pool: &sqlx::PgPool,
    zone_id: &str,
    target_set: Option<&str>,
) -> Result<Catalog, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM policy_catalogs WHERE zone_id = $1")
            .bind(zone_id)
            .fetch_optional(&mut *tx)
            .await?;
    let mut c = Catalog {
        version: version.unwrap_or(0) as u64,
        ..Catalog::default()
    };
    let sets = sqlx::query(
        "SELECT id, name, archived_at IS NOT NULL, latest_version, active_version_id
         FROM policy_sets WHERE zone_id = $1",
    )
    .bind(zone_id)
    .fetch_all(&mut *tx)
    .await?;
    for r in sets {
        let s = SetSummary {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            archived: r.try_get(2)?,
            latest_version: r.try_get::<i64, _>(3)? as u64,
        };
        if let Some(v) = r.try_get::<Option<String>, _>(4)? {
            c.active = Some((s.id.clone(), v));
        }
        c.sets.insert(s.id.clone(), s);
    }
    if let Some(target) = target_set {
        let vs = sqlx::query(
            "SELECT id, policy_set_id, version, manifest_sha256 FROM policy_set_versions
             WHERE policy_set_id = $1 AND zone_id = $2",
        )
        .bind(target)
        .bind(zone_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in vs {
            c.versions.insert(
                r.try_get(0)?,
                SetVersionSummary {
                    policy_set_id: r.try_get(1)?,
                    version: r.try_get::<i64, _>(2)? as u64,
                    manifest_sha256: r.try_get(3)?,
                },
            );
        }
    }
    tx.commit().await?;
    Ok(c)
}

/// A binding change by its event id (the `outbox_id`).
pub async fn activation<'e>(
    db: impl PgExecutor<'e>,
    event_id: &str,
) -> Result<Option<Activation>, sqlx::Error> {
    sqlx::query("SELECT * FROM policy_activations WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(activation_from_row)
        .transpose()
}

/// The newest activation of `version_id` in a set.
pub async fn latest_activation<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    set_id: &str,
    version_id: &str,
) -> Result<Option<Activation>, sqlx::Error> {
    sqlx::query(
        "SELECT * FROM policy_activations WHERE zone_id = $1 AND policy_set_id = $2
         AND version_id = $3 ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
    )
    .bind(zone_id)
    .bind(set_id)
    .bind(version_id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(activation_from_row)
    .transpose()
}

/// Where the relay put an event's message, if it has published it.
pub async fn dispatch<'e>(
    db: impl PgExecutor<'e>,
    outbox_id: &str,
) -> Result<Option<(String, DateTime<Utc>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT topic_entry_id, dispatched_at FROM relay_dispatches WHERE outbox_id = $1",
    )
    .bind(outbox_id)
    .fetch_optional(db)
    .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

// ---- writer -------------------------------------------------------------------------
