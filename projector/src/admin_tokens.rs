//! The admin-token read model: `admin_tokens` table (writer and queries).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serval_domain::admin_token::{self, AdminToken, Capability, TokenScope};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::projection::{Applied, Projection};

pub struct AdminTokensProjection;

const COLUMNS: &str =
    "id, name, scope, zone_id, capability, token_sha256, created_by, created_at, revoked_at, version";

fn scope(s: &str) -> TokenScope {
    if s == "zone" {
        TokenScope::Zone
    } else {
        TokenScope::Global
    }
}

fn capability(s: &str) -> Capability {
    match s {
        "read" => Capability::Read,
        "approve" => Capability::Approve,
        _ => Capability::Write,
    }
}

pub fn from_row(r: &PgRow) -> Result<AdminToken, sqlx::Error> {
    Ok(AdminToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        scope: scope(r.try_get("scope")?),
        zone_id: r.try_get("zone_id")?,
        capability: capability(r.try_get("capability")?),
        token_sha256: r.try_get("token_sha256")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
        version: r.try_get::<i64, _>("version")? as u64,
    })
}

pub async fn load<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
) -> Result<Option<AdminToken>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The live (non-revoked) token with this digest, if any.
pub async fn find_live_by_digest<'e>(
    db: impl PgExecutor<'e>,
    sha256_hex: &str,
) -> Result<Option<AdminToken>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM admin_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL
         ORDER BY created_at LIMIT 1"
    ))
    .bind(sha256_hex)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Live tokens seeded with the given `created_by` marker (e.g. `env-bootstrap`).
pub async fn live_by_marker<'e>(
    db: impl PgExecutor<'e>,
    marker: &str,
) -> Result<Vec<AdminToken>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM admin_tokens WHERE created_by = $1 AND revoked_at IS NULL"
    ))
    .bind(marker)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn list_page<'e>(
    db: impl PgExecutor<'e>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<AdminToken>, sqlx::Error> {
    let rows = match after {
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at DESC, id DESC LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(db)
            .await?
        }
        Some((ts, id)) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM admin_tokens WHERE (created_at, id) < ($2, $3)
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

async fn store(tx: &mut PgConnection, t: &AdminToken) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_tokens (id, name, scope, zone_id, capability, token_sha256, created_by,
             created_at, revoked_at, version)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
         ON CONFLICT (id) DO UPDATE SET revoked_at = EXCLUDED.revoked_at, version = EXCLUDED.version",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.scope.as_str())
    .bind(&t.zone_id)
    .bind(t.capability.as_str())
    .bind(&t.token_sha256)
    .bind(&t.created_by)
    .bind(t.created_at)
    .bind(t.revoked_at)
    .bind(t.version as i64)
    .execute(tx)
    .await?;
    Ok(())
}

impl Projection for AdminTokensProjection {
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::AdminToken(_))
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::ADMIN_TOKENS
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let mut state: HashMap<String, Option<AdminToken>> = HashMap::new();
        let mut touched = Vec::new();
        for a in batch {
            let Event::AdminToken(event) = &a.event else {
                continue;
            };
            let meta = a.recorded.meta();
            let current = match state.remove(&meta.aggregate_id) {
                Some(t) => t,
                None => load(&mut *tx, &meta.aggregate_id).await?,
            };
            if !touched.contains(&meta.aggregate_id) {
                touched.push(meta.aggregate_id.clone());
            }
            state.insert(
                meta.aggregate_id.clone(),
                admin_token::evolve(current, &meta, event),
            );
        }
        for id in touched {
            if let Some(Some(t)) = state.get(&id) {
                store(tx, t).await?;
            }
        }
        Ok(())
    }
}
