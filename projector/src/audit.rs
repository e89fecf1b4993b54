//! The audit ledger read model: `audit_events` (writer and queries).
//!
//! Each `audit.ingested` event becomes one row, chained per zone in log order exactly as the
//! admin audit is (`chain_seq`, `prev_content_sha256`, `chain_hmac` under `AUDIT_HMAC_KEY`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serval_domain::audit::{self, AuditEvent, AuditRecord};
use serval_domain::Event;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::chain::{self, ChainHeads};
use crate::projection::{Applied, Projection};

pub const TABLES: [&str; 1] = ["audit_events"];

pub struct AuditProjection {
    key: Option<Vec<u8>>,
}

impl AuditProjection {
    pub fn new(key: Option<Vec<u8>>) -> Self {
        AuditProjection { key }
    }
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub id: String,
    pub zone_id: String,
    pub event_type: String,
    pub request_id: String,
    pub decision: String,
    pub policy_set_id: Option<String>,
    pub policy_set_version_id: Option<String>,
    pub manifest_sha: Option<String>,
    pub evaluation_status: String,
    pub determining_policies_json: String,
    pub diagnostics_json: String,
    pub metadata_json: String,
    pub occurred_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    pub content_sha256: String,
}

impl LedgerRow {
    /// The §11.1 wire object (JSON text columns parsed; timestamps RFC 3339, milliseconds).
    pub fn wire(&self) -> serde_json::Value {
        let parse = |t: &str| serde_json::from_str(t).unwrap_or(serde_json::Value::Null);
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        serde_json::json!({
            "id": self.id,
            "zone_id": self.zone_id,
            "event_type": self.event_type,
            "request_id": self.request_id,
            "decision": self.decision,
            "policy_set_id": self.policy_set_id,
            "policy_set_version_id": self.policy_set_version_id,
            "manifest_sha": self.manifest_sha,
            "evaluation_status": self.evaluation_status,
            "determining_policies_json": parse(&self.determining_policies_json),
            "diagnostics_json": parse(&self.diagnostics_json),
            "metadata_json": parse(&self.metadata_json),
            "occurred_at": ts(self.occurred_at),
            "ingested_at": ts(self.ingested_at),
        })
    }
}

const COLUMNS: &str = "id, zone_id, event_type, request_id, decision, policy_set_id,
    policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json,
    diagnostics_json, metadata_json, occurred_at, ingested_at, content_sha256";

fn from_row(r: &PgRow) -> Result<LedgerRow, sqlx::Error> {
    Ok(LedgerRow {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        event_type: r.try_get("event_type")?,
        request_id: r.try_get("request_id")?,
        decision: r.try_get("decision")?,
        policy_set_id: r.try_get("policy_set_id")?,
        policy_set_version_id: r.try_get("policy_set_version_id")?,
        manifest_sha: r.try_get("manifest_sha")?,
        evaluation_status: r.try_get("evaluation_status")?,
        determining_policies_json: r.try_get("determining_policies_json")?,
        diagnostics_json: r.try_get("diagnostics_json")?,
        metadata_json: r.try_get("metadata_json")?,
        occurred_at: r.try_get("occurred_at")?,
        ingested_at: r.try_get("ingested_at")?,
        content_sha256: r.try_get("content_sha256")?,
    })
}

/// The §14.1 list filters (`None` = not filtered).
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    pub decision: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// Metadata `application_id`.
    pub application_id: Option<String>,
    /// Metadata `agent_session_id`.
    pub session_id: Option<String>,
    /// Metadata `session_id`.
    pub authority_record_id: Option<String>,
    /// Metadata `agent_labels` contains.
    pub label: Option<String>,
}

/// One page, newest first, strictly after `after`.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    f: &LedgerFilter,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    let (after_ts, after_id) = match after {
        Some((t, i)) => (Some(t), Some(i)),
        None => (None, None),
    };
    let label = f.label.as_ref().map(|l| serde_json::json!([l]).to_string());
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE zone_id = $1
           AND ($2::timestamptz IS NULL OR occurred_at >= $2)
           AND ($3::timestamptz IS NULL OR occurred_at < $3)
           AND ($4::text IS NULL OR request_id = $4)
           AND ($5::text IS NULL OR decision = $5)
           AND ($6::text[] IS NULL OR event_type = ANY($6))
           AND ($7::text IS NULL OR metadata_json::jsonb ->> 'application_id' = $7)
           AND ($8::text IS NULL OR metadata_json::jsonb ->> 'agent_session_id' = $8)
           AND ($9::text IS NULL OR metadata_json::jsonb ->> 'session_id' = $9)
           AND ($10::text IS NULL OR metadata_json::jsonb -> 'agent_labels' @> $10::jsonb)
           AND ($11::timestamptz IS NULL OR (occurred_at, id) < ($11, $12))
         ORDER BY occurred_at DESC, id DESC LIMIT $13"
    ))
    .bind(zone_id)
    .bind(f.since)
    .bind(f.until)
    .bind(&f.request_id)
    .bind(&f.decision)
    .bind(&f.event_types)
    .bind(&f.application_id)
    .bind(&f.session_id)
    .bind(&f.authority_record_id)
    .bind(&label)
    .bind(after_ts)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// A ledger row with its chain fields (the Audit service's search, events-and-audit.md §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRow {
    pub row: LedgerRow,
    pub chain_seq: i64,
    pub prev_content_sha256: String,
    pub chain_hmac: Option<String>,
}

fn chained_from(r: &PgRow) -> Result<ChainedRow, sqlx::Error> {
    Ok(ChainedRow {
        row: from_row(r)?,
        chain_seq: r.try_get("chain_seq")?,
        prev_content_sha256: r.try_get("prev_content_sha256")?,
        chain_hmac: r.try_get("chain_hmac")?,
    })
}

/// Rows of a zone in chain order after `after_seq`, `occurred_at` in `[since, until)`.
pub async fn search<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    (since, until): (DateTime<Utc>, DateTime<Utc>),
    decision: Option<&str>,
    request_id: Option<&str>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<ChainedRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, chain_seq, prev_content_sha256, chain_hmac FROM audit_events
          WHERE zone_id = $1 AND chain_seq > $2
            AND occurred_at >= $3 AND occurred_at < $4
            AND ($5::text IS NULL OR decision = $5)
            AND ($6::text IS NULL OR request_id = $6)
          ORDER BY chain_seq LIMIT $7"
    ))
    .bind(zone_id)
    .bind(after_seq)
    .bind(since)
    .bind(until)
    .bind(decision)
    .bind(request_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(chained_from).collect()
}

/// A zone's ledger in chain order: at most `limit` rows after `after_seq` (the leaves of its
/// Merkle tree, and what an auditor's export holds).
pub async fn chain<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<ChainedRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, chain_seq, prev_content_sha256, chain_hmac FROM audit_events
          WHERE zone_id = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3"
    ))
    .bind(zone_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(chained_from).collect()
}

/// Every zone's ledger size (rows).
pub async fn sizes<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT zone_id, count(*) FROM audit_events GROUP BY zone_id")
        .fetch_all(db)
        .await
}

/// A request's events, oldest first.
pub async fn by_request<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    request_id: &str,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE zone_id = $1 AND request_id = $2
         ORDER BY occurred_at, chain_seq LIMIT 1000"
    ))
    .bind(zone_id)
    .bind(request_id)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// One row by id (duplicate detection at ingest).
pub async fn load<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<LedgerRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE zone_id = $1 AND id = $2"
    ))
    .bind(zone_id)
    .bind(id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

impl Projection for AuditProjection {
    fn wants(&self, a: &Applied) -> bool {
        matches!(a.event, Event::Audit(_))
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::AUDIT
    }

    /// Every mint and governed call adds a frame, and only the Management API's audit
    /// routes wait for the ledger: under load one transaction per 20 ms (tens of frames)
    /// instead of one per handful, for at most 20 ms more on such a read.
    fn pace(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(20))
    }

    /// The batch's new records in one `INSERT`. Ids already in the ledger and repeats
    /// within the batch get no chain position (as with one insert per record, which skipped
    /// them on conflict), so each zone's chain depends only on its own stream's order, not
    /// on where batches begin and end.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        let records: Vec<(&AuditRecord, DateTime<Utc>)> = batch
            .iter()
            .filter_map(|a| match &a.event {
                Event::Audit(AuditEvent::Ingested(r)) => {
                    let envelope = &a.recorded.envelope;
                    // A record chains in its own zone's stream only: one found elsewhere
                    // would interleave two streams' orders, and a rebuild could chain it
                    // differently. The ingester never writes one.
                    if envelope.zone_id.as_deref() != Some(r.zone_id.as_str()) {
                        tracing::warn!(
                            id = %r.id,
                            zone_id = %r.zone_id,
                            stream_zone = ?envelope.zone_id,
                            "audit record outside its zone's stream skipped"
                        );
                        return None;
                    }
                    Some((r, envelope.occurred_at))
                }
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let present: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT e.zone_id, e.id, e.content_sha256 FROM audit_events e
               JOIN UNNEST($1::text[], $2::text[]) AS k(zone_id, id)
                 ON e.zone_id = k.zone_id AND e.id = k.id",
        )
        .bind(
            records
                .iter()
                .map(|(r, _)| r.zone_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|(r, _)| r.id.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let stored: HashMap<(&str, &str), &str> = present
            .iter()
            .map(|(z, i, c)| ((z.as_str(), i.as_str()), c.as_str()))
            .collect();
        let mut taken: HashSet<(&str, &str)> = HashSet::new();
        let mut heads = ChainHeads::new("audit_events", "zone_id");
        let mut rows = Rows::default();
        for (r, ingested_at) in records {
            let key = (r.zone_id.as_str(), r.id.as_str());
            if !taken.insert(key) {
                continue;
            }
            let content = audit::content_sha256(r);
            if let Some(first) = stored.get(&key) {
                // The ingester refuses another frame under a used id only while it
                // remembers the id (an hour): past that, it is recognised here.
                if *first != content {
                    tracing::warn!(
                        id = %r.id,
                        zone_id = %r.zone_id,
                        "audit record under an id the ledger holds with other content skipped"
                    );
                }
                continue;
            }
            let (seq, prev, hmac) = heads
                .take_next(tx, &r.zone_id, &content, self.key.as_deref())
                .await?;
            rows.push(r, ingested_at, seq, &content, prev, hmac);
        }
        let expected = rows.len();
        if expected == 0 {
            return Ok(());
        }
        let inserted = rows.insert(tx).await?;
        chain::all_inserted("audit_events", inserted, expected)
    }
}

/// A batch of ledger rows, column by column for one `UNNEST` insert.
#[derive(Default)]
struct Rows<'a> {
    zone_id: Vec<&'a str>,
    id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    request_id: Vec<&'a str>,
    decision: Vec<&'a str>,
    policy_set_id: Vec<Option<&'a str>>,
    policy_set_version_id: Vec<Option<&'a str>>,
    manifest_sha: Vec<Option<&'a str>>,
    evaluation_status: Vec<&'a str>,
    determining_policies_json: Vec<&'a str>,
    diagnostics_json: Vec<&'a str>,
    metadata_json: Vec<&'a str>,
    occurred_at: Vec<DateTime<Utc>>,
    ingested_at: Vec<DateTime<Utc>>,
    ingest_signature: Vec<Option<&'a str>>,
    chain_seq: Vec<i64>,
    content_sha256: Vec<String>,
    prev_content_sha256: Vec<String>,
    chain_hmac: Vec<Option<String>>,
}

impl<'a> Rows<'a> {
    fn push(
        &mut self,
        r: &'a AuditRecord,
        ingested_at: DateTime<Utc>,
        seq: i64,
        content: &str,
        prev: String,
        hmac: Option<String>,
    ) {
        self.zone_id.push(&r.zone_id);
        self.id.push(&r.id);
        self.event_type.push(&r.event_type);
        self.request_id.push(&r.request_id);
        self.decision.push(&r.decision);
        self.policy_set_id.push(r.policy_set_id.as_deref());
        self.policy_set_version_id
            .push(r.policy_set_version_id.as_deref());
        self.manifest_sha.push(r.manifest_sha.as_deref());
        self.evaluation_status.push(&r.evaluation_status);
        self.determining_policies_json
            .push(&r.determining_policies_json);
        self.diagnostics_json.push(&r.diagnostics_json);
        self.metadata_json.push(&r.metadata_json);
        self.occurred_at.push(r.occurred_at);
        self.ingested_at.push(ingested_at);
        self.ingest_signature.push(r.ingest_signature.as_deref());
        self.chain_seq.push(seq);
        self.content_sha256.push(content.to_owned());
        self.prev_content_sha256.push(prev);
        self.chain_hmac.push(hmac);
    }

    fn len(&self) -> usize {
        self.id.len()
    }

    async fn insert(self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "INSERT INTO audit_events (zone_id, id, event_type, request_id, decision,
                 policy_set_id, policy_set_version_id, manifest_sha, evaluation_status,
                 determining_policies_json, diagnostics_json, metadata_json, occurred_at,
                 ingested_at, ingest_signature, chain_seq, content_sha256,
                 prev_content_sha256, chain_hmac)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                 $12::text[], $13::timestamptz[], $14::timestamptz[], $15::text[],
                 $16::bigint[], $17::text[], $18::text[], $19::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(self.zone_id)
        .bind(self.id)
        .bind(self.event_type)
        .bind(self.request_id)
        .bind(self.decision)
        .bind(self.policy_set_id)
        .bind(self.policy_set_version_id)
        .bind(self.manifest_sha)
        .bind(self.evaluation_status)
        .bind(self.determining_policies_json)
        .bind(self.diagnostics_json)
        .bind(self.metadata_json)
        .bind(self.occurred_at)
        .bind(self.ingested_at)
        .bind(self.ingest_signature)
        .bind(self.chain_seq)
        .bind(self.content_sha256)
        .bind(self.prev_content_sha256)
        .bind(self.chain_hmac)
        .execute(tx)
        .await?
        .rows_affected())
    }
}
