//! The zone catalog read model: `catalog_objects` (writer and queries).
//!
//! One row per application, provider, resource, grant or provider connection; `doc` is the
//! object folded by `serval_domain::catalog::evolve`, so the table is by construction what
//! the domain says the object is.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use serval_domain::catalog::{self, CatalogEvent, CatalogKind, Entity, EntityData, Updated};
use serval_domain::Event;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgExecutor, Postgres, Row};

use crate::projection::{Applied, Projection};

pub struct CatalogProjection;

/// An update that records an operator's decision on an approval hold.
pub fn is_approval_decision(u: &Updated) -> bool {
    matches!(u.data, EntityData::Approval(_))
        && u.changed_fields
            .iter()
            .any(|f| f == "satisfied_at" || f == "rejected_at")
}

pub const TABLES: [&str; 4] = [
    "catalog_objects",
    "live_sessions",
    "delegation_edges",
    "delegation_graphs",
];

// Rows are read as `Json<Entity>`: the document is parsed straight into the entity, with
// no intermediate `serde_json::Value` (a list page parses each row once, not twice).
type Doc = sqlx::types::Json<Entity>;

fn encode(e: &Entity) -> Result<Value, sqlx::Error> {
    serde_json::to_value(e).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// An object of a zone by id, any kind, archived or not.
pub async fn load<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<Entity>, sqlx::Error> {
    let doc: Option<Doc> =
        sqlx::query_scalar("SELECT doc FROM catalog_objects WHERE id = $1 AND zone_id = $2")
            .bind(id)
            .bind(zone_id)
            .fetch_optional(db)
            .await?;
    Ok(doc.map(|d| d.0))
}

/// Objects by id (any zone), for joining names into list rows.
pub async fn load_many<'e>(
    db: impl PgExecutor<'e>,
    ids: &[String],
) -> Result<HashMap<String, Entity>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar("SELECT doc FROM catalog_objects WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await?;
    Ok(docs.into_iter().map(|d| (d.0.id.clone(), d.0)).collect())
}

/// A list filter on the object's data (`doc.data.<kind>.<field>`).
#[derive(Debug, Clone)]
pub enum Filter {
    /// The field's text equals the value.
    Eq(&'static str, String),
    /// The field's text is not the value (an absent field is not it either).
    NotEq(&'static str, String),
    /// The field (an array) contains every value.
    ContainsAll(&'static str, Vec<String>),
    /// Grants whose resource is served by this provider.
    GrantProvider(String),
    /// The object's id.
    Id(String),
    /// `created_at` at or after the instant (RFC 3339).
    CreatedFrom(String),
    /// `created_at` at or before the instant (RFC 3339).
    CreatedTo(String),
    /// Authority records whose status, read with expiry, is this one.
    RecordStatus(String),
    /// Approval holds in this state (§15 precedence, expiry read against the clock).
    ApprovalState(String),
}

/// An authority record's status with expiry applied (what `effective_status` says).
const RECORD_STATUS_SQL: &str = "CASE WHEN doc #>> '{data,authority_record,status}' = 'active'
     AND (doc #>> '{data,authority_record,expires_at}')::timestamptz <= now() THEN 'expired'
     ELSE doc #>> '{data,authority_record,status}' END";

/// An approval's state by §15 precedence (what `ApprovalData::state` says).
const APPROVAL_STATE_SQL: &str = "CASE
     WHEN doc #>> '{data,approval,consumed_at}' IS NOT NULL THEN 'consumed'
     WHEN doc #>> '{data,approval,rejected_at}' IS NOT NULL THEN 'rejected'
     WHEN (doc #>> '{data,approval,expires_at}')::timestamptz <= now() THEN 'expired'
     WHEN doc #>> '{data,approval,satisfied_at}' IS NOT NULL THEN 'approved'
     ELSE 'pending' END";

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
            Filter::NotEq(field, _) => sql.push_str(&format!(" AND doc #>> '{{data,{k},{field}}}' IS DISTINCT FROM ${n}")),
            Filter::ContainsAll(field, _) => {
                sql.push_str(&format!(" AND doc #> '{{data,{k},{field}}}' @> ${n}::jsonb"))
            }
            Filter::GrantProvider(_) => sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM catalog_objects r WHERE r.id = catalog_objects.doc #>> '{{data,grant,resource_id}}'
                   AND r.doc #>> '{{data,resource,credential_provider_id}}' = ${n})"
            )),
            Filter::Id(_) => sql.push_str(&format!(" AND id = ${n}")),
            Filter::CreatedFrom(_) => sql.push_str(&format!(" AND created_at >= ${n}::timestamptz")),
            Filter::CreatedTo(_) => sql.push_str(&format!(" AND created_at <= ${n}::timestamptz")),
            Filter::RecordStatus(_) => sql.push_str(&format!(" AND ({RECORD_STATUS_SQL}) = ${n}")),
            Filter::ApprovalState(_) => sql.push_str(&format!(" AND ({APPROVAL_STATE_SQL}) = ${n}")),
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
            Filter::Eq(_, v)
            | Filter::NotEq(_, v)
            | Filter::GrantProvider(v)
            | Filter::Id(v)
            | Filter::CreatedFrom(v)
            | Filter::CreatedTo(v)
            | Filter::RecordStatus(v)
            | Filter::ApprovalState(v) => q.bind(v.clone()),
            Filter::ContainsAll(_, vs) => q.bind(Value::from(vs.clone())),
        };
    }
    if let Some((ts, id)) = after {
        q = q.bind(ts).bind(id);
    }
    let rows = q.fetch_all(db).await?;
    rows.into_iter()
        .map(|r| r.try_get::<Doc, _>("doc").map(|d| d.0))
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
    let docs: Vec<Doc> = sqlx::query_scalar("SELECT doc FROM catalog_objects ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
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
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::Catalog(_) | Event::Delegation(_))
    }

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
        for a in batch {
            if let Event::Delegation(e) = &a.event {
                let zone = a.recorded.envelope.zone_id.as_deref().unwrap_or_default();
                crate::delegations::apply(&mut *tx, zone, &a.recorded.meta(), e).await?;
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
        store_many(tx, &changed).await?;
        crate::sessions::store_live(tx, &changed).await?;
        // §15: a decision wakes the STS long-pollers once the decided row is readable (the
        // notification is delivered when this transaction commits).
        for a in batch {
            if let Event::Catalog(CatalogEvent::Updated(u)) = &a.event {
                if is_approval_decision(u) {
                    sqlx::query("SELECT pg_notify('caracal_approval_decided', $1)")
                        .bind(&a.recorded.envelope.aggregate_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// Per zone with signing keys: its newest (highest) generation and when it begins signing.
pub async fn newest_signing_keys<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Vec<(String, u64, DateTime<Utc>)>, sqlx::Error> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (zone_id) zone_id,
             (doc #>> '{data,signing_key,generation}')::bigint,
             doc #>> '{data,signing_key,signs_from}'
         FROM catalog_objects WHERE kind = 'signing_key' AND archived_at IS NULL
         ORDER BY zone_id, (doc #>> '{data,signing_key,generation}')::bigint DESC",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(zone, generation, at)| {
            Some((zone, u64::try_from(generation).ok()?, at.parse().ok()?))
        })
        .collect())
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

/// How many sessions name each of `ids` as their parent (`child_count`).
pub async fn child_counts<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    ids: &[String],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    sqlx::query_as(
        "SELECT doc #>> '{data,session,parent_session_id}', count(*) FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND doc #>> '{data,session,parent_session_id}' = ANY($2)
          GROUP BY 1",
    )
    .bind(zone_id)
    .bind(ids)
    .fetch_all(db)
    .await
    .map(|rows: Vec<(String, i64)>| rows.into_iter().collect())
}

/// Decisions on other holds with the same binding: `binding → (approved, rejected)`
/// counted over every hold of the zone with one of `bindings`, so a caller subtracts the
/// hold's own decision.
pub async fn binding_decisions<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    bindings: &[String],
) -> Result<HashMap<String, (i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT doc #>> '{data,approval,binding}',
                count(*) FILTER (WHERE doc #>> '{data,approval,satisfied_at}' IS NOT NULL
                                   AND doc #>> '{data,approval,rejected_at}' IS NULL),
                count(*) FILTER (WHERE doc #>> '{data,approval,rejected_at}' IS NOT NULL)
           FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'approval'
            AND doc #>> '{data,approval,binding}' = ANY($2)
          GROUP BY 1",
    )
    .bind(zone_id)
    .bind(bindings)
    .fetch_all(db)
    .await
    .map(|rows: Vec<(String, i64, i64)>| rows.into_iter().map(|(b, a, r)| (b, (a, r))).collect())
}

/// The counts of a zone's holds per state (`/approvals/counts`).
pub async fn approval_state_counts<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {APPROVAL_STATE_SQL} AS state, count(*) FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'approval' GROUP BY 1"
    ))
    .bind(zone_id)
    .fetch_all(db)
    .await
    .map(|rows: Vec<(String, i64)>| rows.into_iter().collect())
}

/// Ids of a subject's authority records still marked active (grant-revocation cascade).
pub async fn active_records_of_subject<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    subject_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'authority_record'
            AND doc #>> '{data,authority_record,subject_id}' = $2
            AND doc #>> '{data,authority_record,status}' = 'active'
          ORDER BY created_at, id",
    )
    .bind(zone_id)
    .bind(subject_id)
    .fetch_all(db)
    .await
}

/// Authority records still marked active whose `expires_at` has passed, oldest first:
/// `(zone_id, id)` pairs for the reaper (management-api.md §18).
pub async fn due_authority_records<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id FROM catalog_objects
          WHERE kind = 'authority_record'
            AND doc #>> '{data,authority_record,status}' = 'active'
            AND (doc #>> '{data,authority_record,expires_at}')::timestamptz <= $1
          ORDER BY (doc #>> '{data,authority_record,expires_at}')::timestamptz
          LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Live approval holds that ended (consumed, rejected or expired) before `cutoff`, oldest
/// first: what the purge archives.
pub async fn ended_holds<'e>(
    db: impl PgExecutor<'e>,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id FROM (
             SELECT zone_id, id, LEAST(
                 (doc #>> '{data,approval,consumed_at}')::timestamptz,
                 (doc #>> '{data,approval,rejected_at}')::timestamptz,
                 (doc #>> '{data,approval,expires_at}')::timestamptz) AS ended
             FROM catalog_objects WHERE kind = 'approval' AND archived_at IS NULL) h
          WHERE ended < $1 ORDER BY ended LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Live DCR applications of a zone (ids, oldest first): what a DCR `revoke_live` shutdown
/// archives.
pub async fn live_dcr_application_ids<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'application' AND archived_at IS NULL
            AND doc #>> '{data,application,registration_method}' = 'dcr'
            AND (doc #>> '{data,application,expires_at}')::timestamptz > now()
          ORDER BY created_at, id",
    )
    .bind(zone_id)
    .fetch_all(db)
    .await
}

/// The application-type authority records of `applications` and every record descending
/// from them (by `parent_id`), any status.
pub async fn application_record_trees<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    applications: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE tree(id) AS (
           SELECT id FROM catalog_objects
            WHERE zone_id = $1 AND kind = 'authority_record'
              AND doc #>> '{data,authority_record,record_type}' = 'application'
              AND (doc #>> '{data,authority_record,application_id}' = ANY($2)
                   OR doc #>> '{data,authority_record,subject_id}' = ANY($2))
           UNION
           SELECT c.id FROM catalog_objects c JOIN tree t
               ON c.doc #>> '{data,authority_record,parent_id}' = t.id
            WHERE c.zone_id = $1 AND c.kind = 'authority_record')
         SELECT id FROM tree ORDER BY id",
    )
    .bind(zone_id)
    .bind(applications)
    .fetch_all(db)
    .await
}

/// The sessions of `applications` and every session descending from them (by
/// `parent_session_id`), any status.
pub async fn application_session_trees<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    applications: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE tree(id) AS (
           SELECT id FROM catalog_objects
            WHERE zone_id = $1 AND kind = 'session'
              AND doc #>> '{data,session,application_id}' = ANY($2)
           UNION
           SELECT c.id FROM catalog_objects c JOIN tree t
               ON c.doc #>> '{data,session,parent_session_id}' = t.id
            WHERE c.zone_id = $1 AND c.kind = 'session')
         SELECT id FROM tree ORDER BY id",
    )
    .bind(zone_id)
    .bind(applications)
    .fetch_all(db)
    .await
}
