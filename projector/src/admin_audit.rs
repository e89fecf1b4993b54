//! The admin audit read model: `admin_audit` (writer and queries).
//!
//! Each `admin_audit.recorded` event becomes one row. Rows of a chain (a zone, or the
//! global chain) are linked in log order: `chain_seq` increments, `prev_content_sha256` is
//! the previous row's digest, `chain_hmac` signs both under `AUDIT_HMAC_KEY`. Replaying the
//! same log therefore rebuilds the same chain.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serval_domain::admin_audit::{self, AdminAuditEvent, AdminAuditRecord};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::chain::{self, ChainHeads};
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

    /// Committed in batches of tens of records under load: only the admin-audit routes
    /// wait for this read model, and each waits at most this much longer.
    fn pace(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(20))
    }

    /// The batch's new records in one `INSERT`. Ids the table already holds and repeats
    /// within the batch take no chain position: the chain is the one a row-by-row insert
    /// with `ON CONFLICT DO NOTHING` produces, wherever batches begin and end.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let records: Vec<(&str, &AdminAuditRecord, DateTime<Utc>)> = batch
            .iter()
            .filter_map(|a| match &a.event {
                Event::AdminAudit(AdminAuditEvent::Recorded(r)) => {
                    let env = &a.recorded.envelope;
                    Some((env.aggregate_id.as_str(), r, env.occurred_at))
                }
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let present: Vec<String> =
            sqlx::query_scalar("SELECT id FROM admin_audit WHERE id = ANY($1)")
                .bind(records.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await?;
        let mut taken: HashSet<&str> = present.iter().map(String::as_str).collect();
        let mut heads = ChainHeads::new("admin_audit", "chain");
        let mut rows = Rows::default();
        for (id, r, occurred_at) in records {
            if !taken.insert(id) {
                continue;
            }
            let chain = r.zone_id.clone().unwrap_or_default();
            let content = admin_audit::content_sha256(id, r, occurred_at);
            let (seq, prev, hmac) = heads
                .take_next(tx, &chain, &content, self.key.as_deref())
                .await?;
            rows.push(id, chain, r, occurred_at, (seq, content, prev, hmac));
        }
        let expected = rows.id.len();
        if expected == 0 {
            return Ok(());
        }
        let inserted = rows.insert(tx).await?;
        chain::all_inserted("admin_audit", inserted, expected)
    }
}

/// A batch of admin-audit rows, column by column for one `UNNEST` insert.
#[derive(Default)]
struct Rows<'a> {
    id: Vec<&'a str>,
    chain: Vec<String>,
    zone_id: Vec<Option<&'a str>>,
    request_id: Vec<&'a str>,
    actor_id: Vec<Option<&'a str>>,
    actor_name: Vec<Option<&'a str>>,
    actor_scope: Vec<Option<&'a str>>,
    action: Vec<&'a str>,
    method: Vec<&'a str>,
    path: Vec<&'a str>,
    entity_type: Vec<Option<&'a str>>,
    entity_id: Vec<Option<&'a str>>,
    status_code: Vec<i32>,
    payload_json: Vec<&'a str>,
    occurred_at: Vec<DateTime<Utc>>,
    chain_seq: Vec<i64>,
    content_sha256: Vec<String>,
    prev_content_sha256: Vec<String>,
    chain_hmac: Vec<Option<String>>,
}

/// A row's place in its chain: sequence, digest, previous digest, HMAC.
type Link = (i64, String, String, Option<String>);

impl<'a> Rows<'a> {
    fn push(
        &mut self,
        id: &'a str,
        chain: String,
        r: &'a AdminAuditRecord,
        occurred_at: DateTime<Utc>,
        (seq, content, prev, hmac): Link,
    ) {
        self.id.push(id);
        self.chain.push(chain);
        self.zone_id.push(r.zone_id.as_deref());
        self.request_id.push(&r.request_id);
        self.actor_id.push(r.actor_id.as_deref());
        self.actor_name.push(r.actor_name.as_deref());
        self.actor_scope.push(r.actor_scope.as_deref());
        self.action.push(&r.action);
        self.method.push(&r.method);
        self.path.push(&r.path);
        self.entity_type.push(r.entity_type.as_deref());
        self.entity_id.push(r.entity_id.as_deref());
        self.status_code.push(i32::from(r.status_code));
        self.payload_json.push(&r.payload_json);
        self.occurred_at.push(occurred_at);
        self.chain_seq.push(seq);
        self.content_sha256.push(content);
        self.prev_content_sha256.push(prev);
        self.chain_hmac.push(hmac);
    }

    async fn insert(self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "INSERT INTO admin_audit (id, chain, chain_seq, zone_id, request_id, actor_id,
                 actor_name, actor_scope, action, method, path, entity_type, entity_id,
                 status_code, payload_json, occurred_at, content_sha256, prev_content_sha256,
                 chain_hmac)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                 $12::text[], $13::text[], $14::int[], $15::text[], $16::timestamptz[],
                 $17::text[], $18::text[], $19::text[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(self.id)
        .bind(self.chain)
        .bind(self.chain_seq)
        .bind(self.zone_id)
        .bind(self.request_id)
        .bind(self.actor_id)
        .bind(self.actor_name)
        .bind(self.actor_scope)
        .bind(self.action)
        .bind(self.method)
        .bind(self.path)
        .bind(self.entity_type)
        .bind(self.entity_id)
        .bind(self.status_code)
        .bind(self.payload_json)
        .bind(self.occurred_at)
        .bind(self.content_sha256)
        .bind(self.prev_content_sha256)
        .bind(self.chain_hmac)
        .execute(tx)
        .await?
        .rows_affected())
    }
}
