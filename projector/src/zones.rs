//! The zones read model: `zones` table (writer and queries).
//!
//! The writer folds events with `serval_domain::zone::evolve`, so the table is by
//! construction what the domain says a zone is.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serval_domain::zone::{self, Zone};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::projection::{Applied, Projection};

pub struct ZonesProjection;

const COLUMNS: &str = "id, name, slug, dcr_enabled, operator_coauthor_badge, operator_governed, \
    created_by, created_via_operator, updated_by, updated_via_operator, created_at, updated_at, \
    archived_at, version";

pub fn from_row(r: &PgRow) -> Result<Zone, sqlx::Error> {
    Ok(Zone {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        slug: r.try_get("slug")?,
        dcr_enabled: r.try_get("dcr_enabled")?,
        operator_coauthor_badge: r.try_get("operator_coauthor_badge")?,
        operator_governed: r.try_get("operator_governed")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        updated_by: r.try_get("updated_by")?,
        updated_via_operator: r.try_get("updated_via_operator")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
        version: r.try_get::<i64, _>("version")? as u64,
    })
}

/// A zone by id, archived or not.
pub async fn load<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<Zone>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM zones WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// One page of the default zone list: live, non-system zones, `(created_at, id)` descending,
/// strictly after the cursor position.
pub async fn list_page<'e>(
    db: impl PgExecutor<'e>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<Zone>, sqlx::Error> {
    let rows = match after {
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM zones WHERE archived_at IS NULL AND NOT is_system
                 ORDER BY created_at DESC, id DESC LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(db)
            .await?
        }
        Some((ts, id)) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM zones WHERE archived_at IS NULL AND NOT is_system
                 AND (created_at, id) < ($2, $3)
                 ORDER BY created_at DESC, id DESC LIMIT $1"
            ))
            .bind(limit)
            .bind(ts)
            .bind(id)
            .fetch_all(db)
            .await?
        }
    };
    rows.iter().map(from_row).collect()
}

/// Every zone row, ordered by id (for rebuild comparisons and exports).
pub async fn all<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Zone>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM zones ORDER BY id"))
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Live DCR applications of a zone: DCR, not archived, unexpired (§5 dcr-status).
pub async fn live_dcr_applications<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM applications
         WHERE zone_id = $1 AND registration_method = 'dcr' AND archived_at IS NULL
           AND expires_at > now()",
    )
    .bind(zone_id)
    .fetch_one(db)
    .await
}

async fn store(tx: &mut PgConnection, z: &Zone) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO zones (id, name, slug, dcr_enabled, operator_coauthor_badge, operator_governed,
             created_by, created_via_operator, updated_by, updated_via_operator, created_at,
             updated_at, archived_at, is_system, version)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, slug = EXCLUDED.slug,
             dcr_enabled = EXCLUDED.dcr_enabled,
             operator_coauthor_badge = EXCLUDED.operator_coauthor_badge,
             operator_governed = EXCLUDED.operator_governed,
             updated_by = EXCLUDED.updated_by, updated_via_operator = EXCLUDED.updated_via_operator,
             updated_at = EXCLUDED.updated_at, archived_at = EXCLUDED.archived_at,
             is_system = EXCLUDED.is_system, version = EXCLUDED.version",
    )
    .bind(&z.id)
    .bind(&z.name)
    .bind(&z.slug)
    .bind(z.dcr_enabled)
    .bind(z.operator_coauthor_badge)
    .bind(z.operator_governed)
    .bind(&z.created_by)
    .bind(z.created_via_operator)
    .bind(&z.updated_by)
    .bind(z.updated_via_operator)
    .bind(z.created_at)
    .bind(z.updated_at)
    .bind(z.archived_at)
    .bind(z.is_system())
    .bind(z.version as i64)
    .execute(tx)
    .await?;
    Ok(())
}

impl Projection for ZonesProjection {
    fn name(&self) -> &'static str {
        serval_schema::projections::ZONES
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let mut state: HashMap<String, Option<Zone>> = HashMap::new();
        let mut touched = Vec::new();
        for a in batch {
            let Event::Zone(event) = &a.event else {
                continue;
            };
            let meta = a.recorded.meta();
            let current = match state.remove(&meta.aggregate_id) {
                Some(z) => z,
                None => load(&mut *tx, &meta.aggregate_id).await?,
            };
            if !touched.contains(&meta.aggregate_id) {
                touched.push(meta.aggregate_id.clone());
            }
            state.insert(
                meta.aggregate_id.clone(),
                zone::evolve(current, &meta, event),
            );
        }
        for id in touched {
            if let Some(Some(z)) = state.get(&id) {
                store(tx, z).await?;
            }
        }
        Ok(())
    }
}
