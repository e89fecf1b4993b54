//! The admin audit record (management-api.md §14.2): one per recorded Management API
//! request. The record is the event; its place in the tamper-evident chain (sequence,
//! previous digest, HMAC) follows from the log's order and is computed by the projection
//! with [`content_sha256`] and [`chain_hmac`].

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAuditRecord {
    pub request_id: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub actor_scope: Option<String>,
    pub action: String,
    pub method: String,
    pub path: String,
    /// `None`: the zone-less (global) chain.
    pub zone_id: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub status_code: u16,
    /// JSON object text (`rls_mode`, `rls_zone_guc`, `change_kind`, `changed_fields`, …).
    pub payload_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAuditEvent {
    Recorded(AdminAuditRecord),
}

impl AdminAuditEvent {
    pub const RECORDED: &'static str = "admin_audit.recorded";

    pub fn event_type(&self) -> &'static str {
        Self::RECORDED
    }
}

const SEP: u8 = 0x1f;

/// SHA-256 over id, request id, actor id/name/scope, action, method, path, zone, entity
/// type/id, status, payload JSON and occurred-at, each followed by 0x1F; lowercase hex.
pub fn content_sha256(id: &str, r: &AdminAuditRecord, occurred_at: DateTime<Utc>) -> String {
    let status = r.status_code.to_string();
    let at = occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let parts: [&str; 14] = [
        id,
        &r.request_id,
        r.actor_id.as_deref().unwrap_or_default(),
        r.actor_name.as_deref().unwrap_or_default(),
        r.actor_scope.as_deref().unwrap_or_default(),
        &r.action,
        &r.method,
        &r.path,
        r.zone_id.as_deref().unwrap_or_default(),
        r.entity_type.as_deref().unwrap_or_default(),
        r.entity_id.as_deref().unwrap_or_default(),
        &status,
        &r.payload_json,
        &at,
    ];
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([SEP]);
    }
    hex::encode(h.finalize())
}

/// `hex(HMAC-SHA256(key, content + "|" + prev))`.
pub fn chain_hmac(key: &[u8], content: &str, prev: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(content.as_bytes());
    mac.update(b"|");
    mac.update(prev.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The body-field names a change touched: sorted dotted paths (depth ≤ 3, at most 64),
/// names only. Secret-named fields are left out and reported as a rotation instead.
pub fn changed_fields(body: &serde_json::Value) -> (Vec<String>, bool) {
    const SECRET: [&str; 10] = [
        "client_secret",
        "password",
        "token",
        "api_key",
        "private_key",
        "access_token",
        "refresh_token",
        "bearer_token",
        "assertion",
        "secret",
    ];
    fn walk(
        v: &serde_json::Value,
        prefix: &str,
        depth: usize,
        out: &mut Vec<String>,
        rotated: &mut bool,
    ) {
        let serde_json::Value::Object(m) = v else {
            return;
        };
        for (k, child) in m {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if SECRET.contains(&k.to_ascii_lowercase().as_str()) {
                *rotated = true;
                continue;
            }
            if depth < 3 && child.is_object() && child.as_object().is_some_and(|o| !o.is_empty()) {
                walk(child, &path, depth + 1, out, rotated);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    let mut rotated = false;
    walk(body, "", 1, &mut out, &mut rotated);
    out.sort();
    out.truncate(64);
    (out, rotated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_skip_secrets_and_nest() {
        let (f, rotated) = changed_fields(&json!({
            "name": "x", "client_secret": "s",
            "config_json": {"header_name": "h", "api_key": "k", "deep": {"a": {"b": 1}}}
        }));
        assert!(rotated);
        assert_eq!(f, ["config_json.deep.a", "config_json.header_name", "name"]);
    }

    #[test]
    fn digests_cover_every_field() {
        let r = AdminAuditRecord {
            request_id: "r".into(),
            actor_id: Some("admin:t".into()),
            actor_name: Some("bootstrap".into()),
            actor_scope: Some("global".into()),
            action: "POST /v1/zones".into(),
            method: "POST".into(),
            path: "/v1/zones".into(),
            zone_id: None,
            entity_type: Some("zones".into()),
            entity_id: Some("z".into()),
            status_code: 201,
            payload_json: "{}".into(),
        };
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let a = content_sha256("id", &r, t);
        let mut r2 = r.clone();
        r2.status_code = 200;
        assert_ne!(a, content_sha256("id", &r2, t));
        assert_eq!(a.len(), 64);
        assert_ne!(chain_hmac(b"k", &a, ""), chain_hmac(b"k", &a, "x"));
    }
}
