//! The policies read model: `policies`, `policy_versions`, `policy_sets`,
//! `policy_set_versions`, `policy_catalogs`, `policy_activations` (writer and queries).
//!
//! Events are applied one by one in the runner's transaction. Version rows are immutable
//! (inserted once, from the event that records them); headers follow
//! `serval_domain::policy::policies::evolve`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use serval_domain::policy::policies::{self, Policy, PolicyEvent, PolicyVersion};
use serval_domain::policy::policy_sets::{
    Catalog, PolicySetEvent, ReferencedVersion, SetSummary, SetVersionSummary,
};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::projection::{Applied, Projection};

pub struct PoliciesProjection;

/// The tables this projection owns (rebuilt and swapped together).
pub const TABLES: [&str; 6] = [
    "policies",
    "policy_versions",
    "policy_sets",
    "policy_set_versions",
    "policy_catalogs",
    "policy_activations",
];

const POLICY_COLUMNS: &str = "id, zone_id, name, description, created_by, created_via_operator, \
    updated_by, updated_via_operator, created_at, updated_at, archived_at, latest_version, version";

const VERSION_COLUMNS: &str = "id, policy_id, zone_id, version, content, content_sha256, \
    schema_version, created_by, created_via_operator, created_at";

fn policy_from_row(r: &PgRow) -> Result<Policy, sqlx::Error> {
    Ok(Policy {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        updated_by: r.try_get("updated_by")?,
        updated_via_operator: r.try_get("updated_via_operator")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
        latest_version: r.try_get::<i64, _>("latest_version")? as u64,
        version: r.try_get::<i64, _>("version")? as u64,
    })
}

fn version_from_row(r: &PgRow) -> Result<PolicyVersion, sqlx::Error> {
    Ok(PolicyVersion {
        id: r.try_get("id")?,
        policy_id: r.try_get("policy_id")?,
        zone_id: r.try_get("zone_id")?,
        version: r.try_get::<i64, _>("version")? as u64,
        content: r.try_get("content")?,
        content_sha256: r.try_get("content_sha256")?,
        schema_version: r.try_get("schema_version")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A policy set row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetRow {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: String,
    pub updated_via_operator: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub active_version_id: Option<String>,
    pub latest_version: u64,
}

const SET_COLUMNS: &str = "id, zone_id, name, description, created_by, created_via_operator, \
    updated_by, updated_via_operator, created_at, updated_at, archived_at, active_version_id, \
    latest_version";

fn set_from_row(r: &PgRow) -> Result<PolicySetRow, sqlx::Error> {
    Ok(PolicySetRow {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        updated_by: r.try_get("updated_by")?,
        updated_via_operator: r.try_get("updated_via_operator")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
        active_version_id: r.try_get("active_version_id")?,
        latest_version: r.try_get::<i64, _>("latest_version")? as u64,
    })
}

/// A policy-set version row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetVersionRow {
    pub id: String,
    pub policy_set_id: String,
    pub zone_id: String,
    pub version: u64,
    pub manifest: Vec<String>,
    pub manifest_sha256: String,
    pub schema_version: String,
    pub created_by: String,
    pub created_via_operator: bool,
    pub created_at: DateTime<Utc>,
}

const SET_VERSION_COLUMNS: &str = "id, policy_set_id, zone_id, version, manifest, \
    manifest_sha256, schema_version, created_by, created_via_operator, created_at";

fn set_version_from_row(r: &PgRow) -> Result<SetVersionRow, sqlx::Error> {
    let manifest: Value = r.try_get("manifest")?;
    let manifest = manifest
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(SetVersionRow {
        id: r.try_get("id")?,
        policy_set_id: r.try_get("policy_set_id")?,
        zone_id: r.try_get("zone_id")?,
        version: r.try_get::<i64, _>("version")? as u64,
        manifest,
        manifest_sha256: r.try_get("manifest_sha256")?,
        schema_version: r.try_get("schema_version")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The zone's active binding as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub zone_id: String,
    pub policy_set_id: String,
    pub version_id: String,
    pub manifest_sha256: String,
}

/// One binding change (activation or clearing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub event_id: String,
    pub zone_id: String,
    pub policy_set_id: String,
    pub version_id: Option<String>,
    pub stream: String,
    pub entry_ms: u64,
    pub entry_seq: u64,
    pub occurred_at: DateTime<Utc>,
}

fn activation_from_row(r: &PgRow) -> Result<Activation, sqlx::Error> {
    Ok(Activation {
        event_id: r.try_get("event_id")?,
        zone_id: r.try_get("zone_id")?,
        policy_set_id: r.try_get("policy_set_id")?,
        version_id: r.try_get("version_id")?,
        stream: r.try_get("stream")?,
        entry_ms: r.try_get::<i64, _>("entry_ms")? as u64,
        entry_seq: r.try_get::<i64, _>("entry_seq")? as u64,
        occurred_at: r.try_get("occurred_at")?,
    })
}

// ---- queries ------------------------------------------------------------------------

/// The row of `select` (a table without a `WHERE`) with this id in this zone.
async fn load_in_zone<'e, T>(
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
async fn keyset_page<'e, T>(
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

const BINDINGS: &str = "SELECT s.zone_id, s.id, s.active_version_id, v.manifest_sha256
     FROM policy_sets s JOIN policy_set_versions v ON v.id = s.active_version_id
     WHERE s.active_version_id IS NOT NULL";

fn binding_from_row(r: &PgRow) -> Result<Binding, sqlx::Error> {
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

async fn apply_policy(
    tx: &mut PgConnection,
    a: &Applied,
    event: &PolicyEvent,
) -> Result<(), sqlx::Error> {
    let meta = a.recorded.meta();
    let zone_id = a.recorded.envelope.zone_id.clone().unwrap_or_default();
    let current = load_policy(&mut *tx, &zone_id, &meta.aggregate_id).await?;
    let Some(next) = policies::evolve(current, &meta, event) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO policies (id, zone_id, name, description, created_by, created_via_operator,
             updated_by, updated_via_operator, created_at, updated_at, archived_at,
             latest_version, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (id) DO UPDATE SET updated_by = EXCLUDED.updated_by,
             updated_via_operator = EXCLUDED.updated_via_operator,
             updated_at = EXCLUDED.updated_at, archived_at = EXCLUDED.archived_at,
             latest_version = EXCLUDED.latest_version, version = EXCLUDED.version",
    )
    .bind(&next.id)
    .bind(&next.zone_id)
    .bind(&next.name)
    .bind(&next.description)
    .bind(&next.created_by)
    .bind(next.created_via_operator)
    .bind(&next.updated_by)
    .bind(next.updated_via_operator)
    .bind(next.created_at)
    .bind(next.updated_at)
    .bind(next.archived_at)
    .bind(next.latest_version as i64)
    .bind(next.version as i64)
    .execute(&mut *tx)
    .await?;
    if let Some(v) = policies::version_row(&next, &meta, event) {
        sqlx::query(
            "INSERT INTO policy_versions (id, policy_id, zone_id, version, content,
                 content_sha256, schema_version, created_by, created_via_operator, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&v.id)
        .bind(&v.policy_id)
        .bind(&v.zone_id)
        .bind(v.version as i64)
        .bind(&v.content)
        .bind(&v.content_sha256)
        .bind(&v.schema_version)
        .bind(&v.created_by)
        .bind(v.created_via_operator)
        .bind(v.created_at)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn record_activation(
    tx: &mut PgConnection,
    a: &Applied,
    zone_id: &str,
    set_id: &str,
    version_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policy_activations (event_id, zone_id, policy_set_id, version_id, stream,
             entry_ms, entry_seq, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&a.recorded.envelope.event_id)
    .bind(zone_id)
    .bind(set_id)
    .bind(version_id)
    .bind(&a.recorded.stream_key)
    .bind(a.recorded.entry_id.ms as i64)
    .bind(a.recorded.entry_id.seq as i64)
    .bind(a.recorded.envelope.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_set(
    tx: &mut PgConnection,
    a: &Applied,
    event: &PolicySetEvent,
) -> Result<(), sqlx::Error> {
    let env = &a.recorded.envelope;
    let zone_id = env.zone_id.clone().unwrap_or_default();
    let at = env.occurred_at;
    sqlx::query(
        "INSERT INTO policy_catalogs (zone_id, version) VALUES ($1, $2)
         ON CONFLICT (zone_id) DO UPDATE SET version = EXCLUDED.version",
    )
    .bind(&zone_id)
    .bind(env.aggregate_version as i64)
    .execute(&mut *tx)
    .await?;
    match event {
        PolicySetEvent::Created(e) => {
            sqlx::query(
                "INSERT INTO policy_sets (id, zone_id, name, description, created_by,
                     created_via_operator, updated_by, updated_via_operator, created_at,
                     updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $5, $6, $7, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&e.policy_set_id)
            .bind(&zone_id)
            .bind(&e.name)
            .bind(&e.description)
            .bind(&e.created_by)
            .bind(e.created_via_operator)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        PolicySetEvent::VersionAdded(e) => {
            sqlx::query(
                "INSERT INTO policy_set_versions (id, policy_set_id, zone_id, version, manifest,
                     manifest_sha256, schema_version, created_by, created_via_operator,
                     created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&e.version_id)
            .bind(&e.policy_set_id)
            .bind(&zone_id)
            .bind(e.version as i64)
            .bind(serde_json::json!(e.manifest))
            .bind(&e.manifest_sha256)
            .bind(&e.schema_version)
            .bind(&e.created_by)
            .bind(e.created_via_operator)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE policy_sets SET latest_version = GREATEST(latest_version, $2) WHERE id = $1",
            )
            .bind(&e.policy_set_id)
            .bind(e.version as i64)
            .execute(&mut *tx)
            .await?;
        }
        PolicySetEvent::Activated(e) => {
            sqlx::query(
                "UPDATE policy_sets SET active_version_id = NULL
                 WHERE zone_id = $1 AND id <> $2 AND active_version_id IS NOT NULL",
            )
            .bind(&zone_id)
            .bind(&e.policy_set_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE policy_sets SET active_version_id = $2, updated_by = $3,
                     updated_via_operator = $4, updated_at = $5 WHERE id = $1",
            )
            .bind(&e.policy_set_id)
            .bind(&e.version_id)
            .bind(&e.activated_by)
            .bind(e.via_operator)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            record_activation(tx, a, &zone_id, &e.policy_set_id, Some(&e.version_id)).await?;
        }
        PolicySetEvent::Archived(e) => {
            sqlx::query(
                "UPDATE policy_sets SET archived_at = COALESCE(archived_at, $2),
                     active_version_id = NULL, updated_at = $2 WHERE id = $1",
            )
            .bind(&e.policy_set_id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            if e.cleared_binding {
                record_activation(tx, a, &zone_id, &e.policy_set_id, None).await?;
            }
        }
    }
    Ok(())
}

impl Projection for PoliciesProjection {
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::Policy(_) | Event::PolicySet(_))
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::POLICIES
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        for a in batch {
            match &a.event {
                Event::Policy(e) => apply_policy(tx, a, e).await?,
                Event::PolicySet(e) => apply_set(tx, a, e).await?,
                _ => {}
            }
        }
        Ok(())
    }
}
