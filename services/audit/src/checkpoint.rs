//! Signed checkpoints of the audit ledger (Serval's addition to Caracal, whose chain is an
//! HMAC only a key holder can check): per zone, an Ed25519-signed tree head over the ledger
//! in chain order (RFC 9162 Merkle tree, `serval_domain::merkle`), inclusion and consistency
//! proofs, an export an auditor recomputes the leaves from, and a schedule that publishes
//! the heads of grown ledgers on `serval.audit.checkpoints`.
//!
//! * leaf `i` (0-based) = `leaf_hash(raw content_sha256 of the row with chain_seq i + 1)`;
//! * signed text = `serval.checkpoint.v1\n<zone>\n<tree_size>\n<root hex>\n<timestamp ms>`;
//! * key id = the first 16 hex characters of SHA-256 of the public key.

use std::collections::HashMap;

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use serval_domain::merkle::{self, Hash};
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::audit::{self as ledger, ChainedRow};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The topic the scheduled heads are published on.
pub const TOPIC: &str = "serval.audit.checkpoints";
/// Rows read per query while loading a tree.
const PAGE: i64 = 5_000;

/// The signing key: `AUDIT_CHECKPOINT_KEY`, or in development mode one derived from the
/// streams key; `None` in a published mode without one.
pub fn signing_key(app: &App) -> Option<SigningKey> {
    if let Some(hex_seed) = app.cfg.audit_checkpoint_key.as_deref() {
        let seed: [u8; 32] = hex::decode(hex_seed.trim()).ok()?.try_into().ok()?;
        return Some(SigningKey::from_bytes(&seed));
    }
    app.dev_key("serval.audit-checkpoint.dev")
        .map(|seed| SigningKey::from_bytes(&seed))
}

pub fn key_id(key: &SigningKey) -> String {
    hex::encode(Sha256::digest(key.verifying_key().as_bytes()))[..16].to_owned()
}

/// The text a checkpoint's signature covers.
pub fn signed_text(zone: &str, size: u64, root: &Hash, timestamp_ms: i64) -> String {
    format!(
        "serval.checkpoint.v1\n{zone}\n{size}\n{}\n{timestamp_ms}",
        hex::encode(root)
    )
}

/// A zone's ledger rows in chain order, at most `size` (all when `None`).
pub async fn rows(app: &App, zone: &str, size: Option<i64>) -> Result<Vec<ChainedRow>, ApiError> {
    let mut out: Vec<ChainedRow> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.chain_seq);
        let want = match size {
            Some(s) => (s - out.len() as i64).min(PAGE),
            None => PAGE,
        };
        if want <= 0 {
            break;
        }
        let page = ledger::chain(&app.pool, zone, after, want).await?;
        let done = (page.len() as i64) < want;
        out.extend(page);
        if done {
            break;
        }
    }
    Ok(out)
}

/// The leaves of `rows`.
pub fn leaves(rows: &[ChainedRow]) -> Vec<Hash> {
    rows.iter()
        .map(|r| {
            let raw = hex::decode(&r.row.content_sha256).unwrap_or_default();
            merkle::leaf_hash(&raw)
        })
        .collect()
}

/// A signed tree head.
pub fn head(key: &SigningKey, zone: &str, leaves: &[Hash]) -> Value {
    let root = merkle::root(leaves);
    let ts = chrono::Utc::now().timestamp_millis();
    let size = leaves.len() as u64;
    let sig = key.sign(signed_text(zone, size, &root, ts).as_bytes());
    json!({
        "zone_id": zone,
        "tree_size": size,
        "root_hash": hex::encode(root),
        "timestamp": ts,
        "key_id": key_id(key),
        "signature": hex::encode(sig.to_bytes()),
    })
}

/// One exported row: every field the content digest covers, the JSON texts as stored.
pub fn export_row(r: &ChainedRow) -> Value {
    let e = &r.row;
    json!({
        "chain_seq": r.chain_seq,
        "id": e.id,
        "zone_id": e.zone_id,
        "event_type": e.event_type,
        "request_id": e.request_id,
        "decision": e.decision,
        "policy_set_id": e.policy_set_id.clone().unwrap_or_default(),
        "policy_set_version_id": e.policy_set_version_id.clone().unwrap_or_default(),
        "manifest_sha": e.manifest_sha.clone().unwrap_or_default(),
        "evaluation_status": e.evaluation_status,
        "determining_policies_json": e.determining_policies_json,
        "diagnostics_json": e.diagnostics_json,
        "metadata_json": e.metadata_json,
        "occurred_at_unix_nanos": (i128::from(e.occurred_at.timestamp_micros()) * 1000).to_string(),
        "content_sha256": e.content_sha256,
        "prev_content_sha256": r.prev_content_sha256,
    })
}

/// Publishes the head of every zone whose ledger grew since the last round, until `stop`.
pub fn start(app: &App, stop: &watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let key = signing_key(app)?;
    let (app, mut stop) = (app.clone(), stop.clone());
    let every = std::time::Duration::from_secs(app.cfg.audit_checkpoint_interval_secs.max(1));
    Some(tokio::spawn(async move {
        let mut published: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let sizes = match ledger::sizes(&app.pool).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint round: ledger sizes unreadable");
                    continue;
                }
            };
            for (zone, size) in sizes {
                if published.get(&zone) == Some(&size) {
                    continue;
                }
                let rows = match rows(&app, &zone, Some(size)).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = ?e, zone, "checkpoint round: ledger unreadable");
                        continue;
                    }
                };
                let h = head(&key, &zone, &leaves(&rows));
                let fields: Vec<(String, Option<String>)> = [
                    "zone_id",
                    "tree_size",
                    "root_hash",
                    "timestamp",
                    "key_id",
                    "signature",
                ]
                .iter()
                .map(|k| {
                    let v = match &h[*k] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.to_string(), Some(v))
                })
                .collect();
                let topic = app.store.keys().topic(TOPIC);
                let mut conn = app.redis.clone();
                match serval_streams::topics::publish(
                    &mut conn,
                    &topic,
                    Some(&app.secrets.streams_key),
                    &fields,
                )
                .await
                {
                    Ok(_) => {
                        published.insert(zone, size);
                    }
                    Err(e) => tracing::warn!(error = %e, "checkpoint not published"),
                }
            }
        }
    }))
}
