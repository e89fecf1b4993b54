//! The audit ledger (events-and-audit.md §11, management-api.md §14.1): one record per audit
//! frame the Audit service ingests from `caracal.audit.events`. The record is the event; its
//! chain position (sequence, previous digest, HMAC) follows from the log's order and is
//! computed by the projection, as for the admin audit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The producer's event id (unique within its zone).
    pub id: String,
    pub zone_id: String,
    pub event_type: String,
    pub request_id: String,
    pub decision: String,
    pub policy_set_id: Option<String>,
    pub policy_set_version_id: Option<String>,
    pub manifest_sha: Option<String>,
    pub evaluation_status: String,
    /// JSON texts as stored (compact); `null` when the producer sent none.
    pub determining_policies_json: String,
    pub diagnostics_json: String,
    pub metadata_json: String,
    pub occurred_at: DateTime<Utc>,
    /// The producer's `sig` over the frame's `data`.
    pub ingest_signature: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    Ingested(AuditRecord),
}

impl AuditEvent {
    pub const INGESTED: &'static str = "audit.ingested";

    pub fn event_type(&self) -> &'static str {
        Self::INGESTED
    }
}

/// Why a frame is refused (its DLQ reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    MissingData,
    Json(String),
}

impl FrameError {
    pub fn reason(&self) -> String {
        match self {
            FrameError::MissingData => "missing_data_field".to_owned(),
            FrameError::Json(why) => format!("json_parse_error:{why}"),
        }
    }
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('\0', ""))
}

/// Strips NUL characters from every string of a JSON value (§11.1), recursively.
fn strip_nul(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nul),
        serde_json::Value::Object(m) => m.values_mut().for_each(strip_nul),
        _ => {}
    }
}

fn json_text(v: &serde_json::Value, key: &str) -> String {
    let mut value = v.get(key).cloned().unwrap_or(serde_json::Value::Null);
    strip_nul(&mut value);
    value.to_string()
}

/// Parses a frame's `data` (§11.3 step 3): lenient on unknown fields; `id`, `zone_id` and an
/// RFC 3339 `occurred_at` are required.
pub fn parse_frame(data: &[u8], sig: Option<String>) -> Result<AuditRecord, FrameError> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| FrameError::Json(e.to_string()))?;
    if !v.is_object() {
        return Err(FrameError::Json("not an object".into()));
    }
    let id = text(&v, "id").ok_or_else(|| FrameError::Json("missing id".into()))?;
    let zone_id = text(&v, "zone_id").ok_or_else(|| FrameError::Json("missing zone_id".into()))?;
    let occurred_at = text(&v, "occurred_at")
        .ok_or_else(|| FrameError::Json("missing occurred_at".into()))
        .and_then(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| FrameError::Json("occurred_at is not RFC 3339".into()))
        })?;
    Ok(AuditRecord {
        id,
        zone_id,
        event_type: text(&v, "event_type").unwrap_or_default(),
        request_id: text(&v, "request_id").unwrap_or_default(),
        decision: text(&v, "decision").unwrap_or_default(),
        policy_set_id: text(&v, "policy_set_id"),
        policy_set_version_id: text(&v, "policy_set_version_id"),
        manifest_sha: text(&v, "manifest_sha"),
        evaluation_status: text(&v, "evaluation_status").unwrap_or_default(),
        determining_policies_json: json_text(&v, "determining_policies_json"),
        diagnostics_json: json_text(&v, "diagnostics_json"),
        metadata_json: json_text(&v, "metadata_json"),
        // Stored at microsecond precision, as the chain hashes it.
        occurred_at: DateTime::from_timestamp_micros(occurred_at.timestamp_micros())
            .unwrap_or(occurred_at),
        ingest_signature: sig,
    })
}

const SEP: u8 = 0x1f;

/// §11.4: SHA-256 over id, zone, event type, request id, decision, policy set id, version
/// id, manifest sha, evaluation status, the three JSON texts (each followed by 0x1F), then
/// `occurred_at` as decimal Unix nanoseconds. Serval hashes the JSON texts as stored in the
/// event (compact `serde_json`), not Postgres's `jsonb::text`.
pub fn content_sha256(r: &AuditRecord) -> String {
    let parts: [&str; 12] = [
        &r.id,
        &r.zone_id,
        &r.event_type,
        &r.request_id,
        &r.decision,
        r.policy_set_id.as_deref().unwrap_or_default(),
        r.policy_set_version_id.as_deref().unwrap_or_default(),
        r.manifest_sha.as_deref().unwrap_or_default(),
        &r.evaluation_status,
        &r.determining_policies_json,
        &r.diagnostics_json,
        &r.metadata_json,
    ];
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([SEP]);
    }
    let nanos = i128::from(r.occurred_at.timestamp_micros()) * 1000;
    h.update(nanos.to_string().as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_leniently_and_refuse_what_the_ingester_refuses() {
        let r = parse_frame(
            br#"{"id":"e1","zone_id":"z","event_type":"token_exchange","request_id":"r",
                "decision":"allow","evaluation_status":"complete","determining_policies_json":null,
                "diagnostics_json":[],"metadata_json":{"application_id":"a\u0000b"},
                "occurred_at":"2026-01-01T00:00:00.1234567Z","extra":1}"#,
            Some("ab".into()),
        );
        let Ok(r) = r else { panic!("parses: {r:?}") };
        assert_eq!(r.determining_policies_json, "null");
        assert_eq!(r.metadata_json, r#"{"application_id":"ab"}"#);
        assert_eq!(r.occurred_at.timestamp_subsec_micros(), 123_456);
        assert_eq!(content_sha256(&r), content_sha256(&r.clone()));
        assert_eq!(
            parse_frame(
                br#"{"zone_id":"z","occurred_at":"2026-01-01T00:00:00Z"}"#,
                None
            ),
            Err(FrameError::Json("missing id".into()))
        );
        assert!(parse_frame(
            br#"{"id":"e","zone_id":"z","occurred_at":"yesterday"}"#,
            None
        )
        .is_err());
        assert_eq!(FrameError::MissingData.reason(), "missing_data_field");
    }
}
