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
    archived_at, version, last_event_id";

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
        last_event_id: r.try_get("last_event_id")?,
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
    crate::catalog::live_dcr_applications(db, zone_id).await
}

async fn load_many(
    tx: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, Zone>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM zones WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(tx)
        .await?;
    rows.iter()
        .map(|r| from_row(r).map(|z| (z.id.clone(), z)))
        .collect()
}

/// Upserts many zones in one statement (arrays bound once, unnested server-side).
async fn store_many(tx: &mut PgConnection, zones: &[&Zone]) -> Result<(), sqlx::Error> {
    if zones.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Zone) -> &str| zones.iter().map(|z| f(z).to_owned()).collect::<Vec<_>>();
    let flag = |f: fn(&Zone) -> bool| zones.iter().map(|z| f(z)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO zones (id, name, slug, dcr_enabled, operator_coauthor_badge, operator_governed,
             created_by, created_via_operator, updated_by, updated_via_operator, created_at,
             updated_at, archived_at, is_system, version, last_event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::bool[],
             $7::text[], $8::bool[], $9::text[], $10::bool[], $11::timestamptz[], $12::timestamptz[],
             $13::timestamptz[], $14::bool[], $15::bigint[], $16::text[])
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, slug = EXCLUDED.slug,
             dcr_enabled = EXCLUDED.dcr_enabled,
             operator_coauthor_badge = EXCLUDED.operator_coauthor_badge,
             operator_governed = EXCLUDED.operator_governed,
             updated_by = EXCLUDED.updated_by, updated_via_operator = EXCLUDED.updated_via_operator,
             updated_at = EXCLUDED.updated_at, archived_at = EXCLUDED.archived_at,
             is_system = EXCLUDED.is_system, version = EXCLUDED.version,
             last_event_id = EXCLUDED.last_event_id",
    )
    .bind(text(|z| &z.id))
    .bind(text(|z| &z.name))
    .bind(text(|z| &z.slug))
    .bind(flag(|z| z.dcr_enabled))
    .bind(flag(|z| z.operator_coauthor_badge))
    .bind(flag(|z| z.operator_governed))
    .bind(text(|z| &z.created_by))
    .bind(flag(|z| z.created_via_operator))
    .bind(text(|z| &z.updated_by))
    .bind(flag(|z| z.updated_via_operator))
    .bind(zones.iter().map(|z| z.created_at).collect::<Vec<_>>())
    .bind(zones.iter().map(|z| z.updated_at).collect::<Vec<_>>())
    .bind(zones.iter().map(|z| z.archived_at).collect::<Vec<_>>())
    .bind(flag(Zone::is_system))
    .bind(zones.iter().map(|z| z.version as i64).collect::<Vec<_>>())
    .bind(zones.iter().map(|z| z.last_event_id.clone()).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

impl Projection for ZonesProjection {
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::Zone(_))
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::ZONES
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        // Two statements per batch whatever its size: load every touched zone, fold the
        // batch's events in memory, upsert the results.
        let mut touched: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in batch {
            let id = &a.recorded.envelope.aggregate_id;
            if matches!(a.event, Event::Zone(_)) && seen.insert(id.clone()) {
                touched.push(id.clone());
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        let mut state = load_many(tx, &touched).await?;
        for a in batch {
            let Event::Zone(event) = &a.event else {
                continue;
            };
            let meta = a.recorded.meta();
            let current = state.remove(&meta.aggregate_id);
            if let Some(next) = zone::evolve(current, &meta, event) {
                state.insert(meta.aggregate_id.clone(), next);
            }
        }
        let changed: Vec<&Zone> = touched.iter().filter_map(|id| state.get(id)).collect();
        store_many(tx, &changed).await
    }
}
