//! The admin audit read model: `admin_audit` (writer and queries).
//!
//! Each `admin_audit.recorded` event becomes one row. Rows of a chain (a zone, or the
//! global chain) are linked in log order: `chain_seq` increments, `prev_content_sha256` is
//! the previous row's digest, `chain_hmac` signs both under `AUDIT_HMAC_KEY`. Replaying the
//! same log therefore rebuilds the same chain.

use chrono::{DateTime, Utc};
use serval_domain::admin_audit::{self, AdminAuditEvent};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::chain::ChainHeads;
use crate::projection::{Applied, Projection};

pub const TABLES: [&str; 1] = ["admin_audit"];

pub struct AdminAuditProjection {
    key: Option<Vec<u8>>,
}

impl AdminAuditProjection {
    pub fn new(key: Option<Vec<u8>>) -> Self {
        AdminAuditProjection { key }
    }
}

/// One row as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: String,
    pub request_id: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub actor_scope: Option<String>,
    pub action: String,
    pub method: String,
    pub path: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub status_code: i32,
    pub payload_json: String,
    pub occurred_at: DateTime<Utc>,
    pub chain_seq: i64,
    pub signed: bool,
}

const COLUMNS: &str = "id, request_id, actor_id, actor_name, actor_scope, action, method, path, \
    entity_type, entity_id, status_code, payload_json, occurred_at, chain_seq, \
    (chain_hmac IS NOT NULL) AS signed";

fn from_row(r: &PgRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        actor_id: r.try_get("actor_id")?,
        actor_name: r.try_get("actor_name")?,
        actor_scope: r.try_get("actor_scope")?,
        action: r.try_get("action")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        entity_type: r.try_get("entity_type")?,
        entity_id: r.try_get("entity_id")?,
        status_code: r.try_get("status_code")?,
        payload_json: r.try_get("payload_json")?,
        occurred_at: r.try_get("occurred_at")?,
        chain_seq: r.try_get("chain_seq")?,
        signed: r.try_get("signed")?,
    })
}

/// Feed filters (§14.2).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub actor_id: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub method: Option<String>,
}

/// One page of a zone's records, `(occurred_at, id)` descending; `until` exclusive.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    f: &AuditFilter,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let (after_ts, after_id) = after.unzip();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM admin_audit WHERE zone_id = $1
           AND ($2::timestamptz IS NULL OR occurred_at >= $2)
           AND ($3::timestamptz IS NULL OR occurred_at < $3)
           AND ($4::text IS NULL OR actor_id = $4)
           AND ($5::text IS NULL OR entity_type = $5)
           AND ($6::text IS NULL OR entity_id = $6)
           AND ($7::text IS NULL OR method = $7)
           AND ($8::timestamptz IS NULL OR (occurred_at, id) < ($8, $9))
         ORDER BY occurred_at DESC, id DESC LIMIT $10"
    ))
    .bind(zone_id)
    .bind(f.since)
    .bind(f.until)
    .bind(&f.actor_id)
    .bind(&f.entity_type)
    .bind(&f.entity_id)
    .bind(&f.method)
    .bind(after_ts)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// A chain's rows in order with their links (verification and rebuild comparisons).
pub async fn chain<'e>(
    db: impl PgExecutor<'e>,
    chain: &str,
) -> Result<Vec<(i64, String, String, Option<String>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chain_seq, content_sha256, prev_content_sha256, chain_hmac FROM admin_audit
         WHERE chain = $1 ORDER BY chain_seq",
    )
    .bind(chain)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("chain_seq")?,
                r.try_get("content_sha256")?,
                r.try_get("prev_content_sha256")?,
                r.try_get("chain_hmac")?,
            ))
        })
        .collect()
}

impl Projection for AdminAuditProjection {
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::AdminAudit(_))
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::ADMIN_AUDIT
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let mut heads = ChainHeads::new("admin_audit", "chain");
        for a in batch {
            let Event::AdminAudit(AdminAuditEvent::Recorded(r)) = &a.event else {
                continue;
            };
            let env = &a.recorded.envelope;
            let chain = r.zone_id.clone().unwrap_or_default();
            let (seq, prev) = heads.head(tx, &chain).await?;
            let content = admin_audit::content_sha256(&env.aggregate_id, r, env.occurred_at);
            let hmac = self
                .key
                .as_deref()
                .map(|k| admin_audit::chain_hmac(k, &content, &prev));
            let inserted = sqlx::query(
                "INSERT INTO admin_audit (id, chain, chain_seq, zone_id, request_id, actor_id,
                     actor_name, actor_scope, action, method, path, entity_type, entity_id,
                     status_code, payload_json, occurred_at, content_sha256, prev_content_sha256,
                     chain_hmac)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&env.aggregate_id)
            .bind(&chain)
            .bind(seq + 1)
            .bind(&r.zone_id)
            .bind(&r.request_id)
            .bind(&r.actor_id)
            .bind(&r.actor_name)
            .bind(&r.actor_scope)
            .bind(&r.action)
            .bind(&r.method)
            .bind(&r.path)
            .bind(&r.entity_type)
            .bind(&r.entity_id)
            .bind(i32::from(r.status_code))
            .bind(&r.payload_json)
            .bind(env.occurred_at)
            .bind(&content)
            .bind(&prev)
            .bind(&hmac)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                heads.advance(&chain, seq + 1, content);
            }
        }
        Ok(())
    }
}
