//! Idempotency receipts (coordinator.md §14). The receipt is the event store's idempotency
//! record, written in the same atomic append as the object it created, so a retry finds
//! either nothing (and creates) or the first creation (and replays it) — never a second
//! object. Record names are HMACs of the domain-separated key; plaintext keys are never
//! stored. Live receipts per (operation, zone, scope) are counted in a sorted set.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_streams::append::Idempotency;
use serval_streams::LogStream;
use sha2::{Digest, Sha256};

pub const SESSION_START: &str = "session.start.v2";
pub const DELEGATION_CREATE: &str = "delegation.create.v2";
pub const INVOCATION_CREATE: &str = "invocation.create.v2";

/// At most this many live receipts per operation, zone and scope.
pub const MAX_RECEIPTS_PER_SCOPE: i64 = 10_000;

/// A key's syntax (§14): non-empty, no surrounding whitespace, ≤ 255 bytes, no controls.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.trim() == k
        && !k.chars().any(|c| (c as u32) < 0x20 || c as u32 == 0x7f)
}

fn key_error(code: &str, message: &str, request_id: &str) -> ApiError {
    ApiError::bad_request(code)
        .with("message", json!(message))
        .with("request_id", json!(request_id))
}

/// The `Idempotency-Key` header, if sent, and whether it is marked `generated`.
pub fn header_key(
    headers: &HeaderMap,
    request_id: &str,
) -> Result<Option<(String, bool)>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(key_error(
            "idempotency_key_multiple",
            "Idempotency-Key must be sent once",
            request_id,
        ));
    }
    let key = first
        .to_str()
        .ok()
        .filter(|k| valid_key(k))
        .ok_or_else(|| {
            key_error(
                "idempotency_key_invalid",
                "Idempotency-Key must be 1-255 bytes without surrounding whitespace or control characters",
                request_id,
            )
        })?;
    let generated = headers
        .get("idempotency-key-kind")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("generated"));
    Ok(Some((key.to_owned(), generated)))
}

/// Canonical JSON: object keys sorted at every level.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn hmac_key(app: &App) -> Vec<u8> {
    match &app.cfg.idempotency_hmac_key {
        Some(k) if !k.is_empty() => k.as_bytes().to_vec(),
        _ => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&app.secrets.streams_key)
                .expect("HMAC takes any key length");
            mac.update(b"serval.idempotency-key.v1");
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn record_name(key: &[u8], op: &str, zone: &str, scope: &str, idem_key: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("serval.idempotency.v1\n{op}\n{zone}\n{scope}\n{idem_key}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A receipt on record: the aggregate and log entry the creating append wrote, and the
/// first answer when it was recorded.
pub struct Found {
    pub aggregate_id: String,
    pub entry: Option<serval_streams::EntryId>,
    pub answer: Option<(u16, String)>,
}

/// A receipt to create under: its record name and the request's fingerprint.
pub struct Receipt {
    pub idem: Idempotency,
    /// The record name under `IDEMPOTENCY_HMAC_KEY_PREVIOUS`, looked up too (§14).
    previous: Option<String>,
    op: &'static str,
    zone: String,
    scope: String,
    ttl: u64,
}

impl Receipt {
    pub fn new(
        app: &App,
        op: &'static str,
        zone: &str,
        scope: &str,
        key: &str,
        generated: bool,
        request: &Value,
    ) -> Receipt {
        let key_digest = record_name(&hmac_key(app), op, zone, scope, key);
        let previous = app
            .cfg
            .idempotency_hmac_key_previous
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| record_name(k.as_bytes(), op, zone, scope, key));
        let fingerprint = hex::encode(Sha256::digest(canonical(request).as_bytes()));
        let ttl = if generated && op == SESSION_START {
            app.cfg.generated_idempotency_retention_seconds
        } else {
            app.cfg.idempotency_retention_seconds
        };
        Receipt {
            idem: Idempotency {
                key_digest,
                fingerprint,
                ttl_secs: Some(ttl),
            },
            previous,
            op,
            zone: zone.to_owned(),
            scope: scope.to_owned(),
            ttl,
        }
    }

    fn counter(&self, app: &App) -> String {
        let stream = LogStream::Zone(self.zone.clone());
        app.store.keys().reservation(
            &stream,
            "idem_receipts",
            &hex::encode(Sha256::digest(
                format!("{}\n{}", self.op, self.scope).as_bytes(),
            )),
        )
    }

    /// `429 idempotency_receipt_limit_exceeded` when the key is not on record and the scope
    /// already holds the maximum of live receipts.
    pub async fn check_limit(&self, app: &App) -> Result<(), ApiError> {
        let stream = LogStream::Zone(self.zone.clone());
        let record = app.store.keys().idempotency(&stream, &self.idem.key_digest);
        let mut conn = app.store.connection();
        let now = Utc::now().timestamp();
        let (exists, _, live): (bool, i64, i64) = redis::pipe()
            .exists(&record)
            .zrembyscore(self.counter(app), "-inf", now)
            .zcard(self.counter(app))
            .query_async(&mut conn)
            .await?;
        if !exists && live >= MAX_RECEIPTS_PER_SCOPE {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "idempotency_receipt_limit_exceeded",
            ));
        }
        Ok(())
    }

    /// The record of this key when one exists: `Err(409 idempotency_key_conflict)` for
    /// another request, else the created object's id and the recorded answer (if any).
    pub async fn peek(&self, app: &App) -> Result<Option<Found>, ApiError> {
        let stream = LogStream::Zone(self.zone.clone());
        let mut conn = app.store.connection();
        let mut fields: std::collections::HashMap<String, String> = HashMap::new();
        for name in std::iter::once(&self.idem.key_digest).chain(self.previous.as_ref()) {
            let key = app.store.keys().idempotency(&stream, name);
            fields = redis::AsyncCommands::hgetall(&mut conn, key).await?;
            if !fields.is_empty() {
                break;
            }
        }
        if fields.is_empty() {
            return Ok(None);
        }
        if fields.get("fingerprint") != Some(&self.idem.fingerprint) {
            return Err(map_conflict(ApiError::conflict("idempotency_key_conflict")));
        }
        let answer = fields
            .get("status")
            .and_then(|s| s.parse().ok())
            .zip(fields.get("body").cloned());
        Ok(Some(Found {
            aggregate_id: fields.get("aggregate_id").cloned().unwrap_or_default(),
            entry: fields.get("last_entry_id").and_then(|e| e.parse().ok()),
            answer,
        }))
    }

    /// Counts the receipt just created (best effort: the record itself is already stored).
    pub async fn count(&self, app: &App) {
        let mut conn = app.store.connection();
        let until = Utc::now().timestamp() + self.ttl as i64;
        let r: Result<(), _> = redis::pipe()
            .zadd(self.counter(app), &self.idem.key_digest, until)
            .expire(self.counter(app), self.ttl as i64)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "idempotency receipt not counted");
        }
    }
}

/// A replayed answer: the stored status and body with `Idempotency-Replayed: true`.
pub fn replayed(status: u16, body: &str) -> Response {
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
    let mut resp = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_owned(),
    )
        .into_response();
    resp.headers_mut()
        .insert("idempotency-replayed", HeaderValue::from_static("true"));
    resp
}

pub fn inactive() -> ApiError {
    ApiError::conflict("idempotency_result_inactive").with(
        "message",
        json!("the object this key created is no longer live"),
    )
}

/// The write path's `idempotency_key_conflict`, with the `message` §14 documents.
pub fn map_conflict(e: ApiError) -> ApiError {
    if e.code() == Some("idempotency_key_conflict") {
        ApiError::conflict("idempotency_key_conflict").with(
            "message",
            json!("this Idempotency-Key was used for a different request"),
        )
    } else {
        e
    }
}
