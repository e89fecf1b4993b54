//! The policies read model: `policies`, `policy_versions`, `policy_sets`,
//! `policy_set_versions`, `policy_catalogs`, `policy_activations` (the writer here; rows in
//! [`rows`], queries in [`policy_queries`] and [`set_queries`]).
//!
//! Events are applied one by one in the runner's transaction. Version rows are immutable
//! (inserted once, from the event that records them); headers follow
//! `serval_domain::policy::policies::evolve`.

mod policy_queries;
mod rows;
mod set_queries;

pub use policy_queries::*;
pub use rows::*;
pub use set_queries::*;

use serval_domain::policy::policies::{self, PolicyEvent};
use serval_domain::policy::policy_sets::PolicySetEvent;
use serval_domain::Event;
use sqlx::PgConnection;

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
