//! The zone catalog read model: `catalog_objects` (writer and queries).
//!
//! One row per application, provider, resource, grant or provider connection; `doc` is the
//! object folded by `serval_domain::catalog::evolve`, so the table is by construction what
//! the domain says the object is.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use serval_domain::catalog::{self, CatalogKind, Entity};
use serval_domain::Event;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgExecutor, Postgres, Row};

use crate::projection::{Applied, Projection};

pub struct CatalogProjection;

pub const TABLES: [&str; 1] = ["catalog_objects"];

fn decode(doc: Value) -> Result<Entity, sqlx::Error> {
    serde_json::from_value(doc).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn encode(e: &Entity) -> Result<Value, sqlx::Error> {
    serde_json::to_value(e).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// An object of a zone by id, any kind, archived or not.
pub async fn load<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<Entity>, sqlx::Error> {
    let doc: Option<Value> =
        sqlx::query_scalar("SELECT doc FROM catalog_objects WHERE id = $1 AND zone_id = $2")
            .bind(id)
            .bind(zone_id)
            .fetch_optional(db)
            .await?;
    doc.map(decode).transpose()
}

/// Objects by id (any zone), for joining names into list rows.
pub async fn load_many<'e>(
    db: impl PgExecutor<'e>,
    ids: &[String],
) -> Result<HashMap<String, Entity>, sqlx::Error> {
    let docs: Vec<Value> = sqlx::query_scalar("SELECT doc FROM catalog_objects WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await?;
    docs.into_iter()
        .map(|d| decode(d).map(|e| (e.id.clone(), e)))
        .collect()
}

/// A list filter on the object's data (`doc.data.<kind>.<field>`).
#[derive(Debug, Clone)]
pub enum Filter {
    /// The field's text equals the value.
    Eq(&'static str, String),
    /// The field (an array) contains every value.
    ContainsAll(&'static str, Vec<String>),
    /// Grants whose resource is served by this provider.
    GrantProvider(String),
}

/// Which rows a list walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Live,
    Archived,
}

/// One page of a zone's objects of one kind, `(created_at, id)` descending, strictly after
/// the cursor position.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    kind: CatalogKind,
    status: Status,
    filters: &[Filter],
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<Entity>, sqlx::Error> {
    let k = kind.as_str();
    let mut sql = format!(
        "SELECT doc FROM catalog_objects WHERE zone_id = $1 AND kind = '{k}' AND archived_at IS {}",
        match status {
            Status::Live => "NULL",
            Status::Archived => "NOT NULL",
        }
    );
    let mut n = 1;
    for f in filters {
        n += 1;
        match f {
            Filter::Eq(field, _) => sql.push_str(&format!(" AND doc #>> '{{data,{k},{field}}}' = ${n}")),
            Filter::ContainsAll(field, _) => {
                sql.push_str(&format!(" AND doc #> '{{data,{k},{field}}}' @> ${n}::jsonb"))
            }
            Filter::GrantProvider(_) => sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM catalog_objects r WHERE r.id = catalog_objects.doc #>> '{{data,grant,resource_id}}'
                   AND r.doc #>> '{{data,resource,credential_provider_id}}' = ${n})"
            )),
        }
    }
    if after.is_some() {
        sql.push_str(&format!(" AND (created_at, id) < (${}, ${})", n + 1, n + 2));
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {}",
        limit.max(0)
    ));
    let mut q: Query<'_, Postgres, PgArguments> = sqlx::query(&sql).bind(zone_id);
    for f in filters {
        q = match f {
            Filter::Eq(_, v) | Filter::GrantProvider(v) => q.bind(v.clone()),
            Filter::ContainsAll(_, vs) => q.bind(Value::from(vs.clone())),
        };
    }
    if let Some((ts, id)) = after {
        q = q.bind(ts).bind(id);
    }
    let rows = q.fetch_all(db).await?;
    rows.into_iter()
        .map(|r| decode(r.try_get::<Value, _>("doc")?))
        .collect()
}

/// Live DCR applications of a zone: DCR, not archived, unexpired (§5 dcr-status).
pub async fn live_dcr_applications<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM catalog_objects
         WHERE zone_id = $1 AND kind = 'application' AND archived_at IS NULL
           AND doc #>> '{data,application,registration_method}' = 'dcr'
           AND (doc #>> '{data,application,expires_at}')::timestamptz > now()",
    )
    .bind(zone_id)
    .fetch_one(db)
    .await
}

/// Live objects of one kind in a zone (quotas).
pub async fn count_live<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    kind: CatalogKind,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM catalog_objects WHERE zone_id = $1 AND kind = $2 AND archived_at IS NULL",
    )
    .bind(zone_id)
    .bind(kind.as_str())
    .fetch_one(db)
    .await
}

/// Every object, ordered by id (rebuild comparisons, restore).
pub async fn all<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Entity>, sqlx::Error> {
    let docs: Vec<Value> = sqlx::query_scalar("SELECT doc FROM catalog_objects ORDER BY id")
        .fetch_all(db)
        .await?;
    docs.into_iter().map(decode).collect()
}

async fn store_many(tx: &mut PgConnection, rows: &[&Entity]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let docs = rows
        .iter()
        .map(|e| encode(e))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO catalog_objects (id, kind, zone_id, created_at, archived_at, version, doc)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[],
             $5::timestamptz[], $6::bigint[], $7::jsonb[])
         ON CONFLICT (id) DO UPDATE SET archived_at = EXCLUDED.archived_at,
             version = EXCLUDED.version, doc = EXCLUDED.doc",
    )
    .bind(rows.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.kind().as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.zone_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.archived_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.version as i64).collect::<Vec<_>>())
    .bind(docs)
    .execute(tx)
    .await?;
    Ok(())
}

impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        serval_schema::projections::CATALOG
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let mut touched: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for a in batch {
            let id = &a.recorded.envelope.aggregate_id;
            if matches!(a.event, Event::Catalog(_)) && seen.insert(id.clone()) {
                touched.push(id.clone());
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        let mut state = load_many(&mut *tx, &touched).await?;
        for a in batch {
            let Event::Catalog(event) = &a.event else {
                continue;
            };
            let meta = a.recorded.meta();
            let current = state.remove(&meta.aggregate_id);
            if let Some(next) = catalog::evolve(current, &meta, event) {
                state.insert(meta.aggregate_id.clone(), next);
            }
        }
        let changed: Vec<&Entity> = touched.iter().filter_map(|id| state.get(id)).collect();
        store_many(tx, &changed).await
    }
}

/// DCR applications still live whose `expires_at` is before `cutoff`, oldest first:
/// `(zone_id, id)` pairs for the cleanup job (management-api.md §18).
pub async fn expired_dcr<'e>(
    db: impl PgExecutor<'e>,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id FROM catalog_objects
          WHERE kind = 'application' AND archived_at IS NULL
            AND doc #>> '{data,application,registration_method}' = 'dcr'
            AND (doc #>> '{data,application,expires_at}')::timestamptz < $1
          ORDER BY (doc #>> '{data,application,expires_at}')::timestamptz
          LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(db)
    .await
}
