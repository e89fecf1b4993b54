//! The Audit service's ingester (events-and-audit.md §11.3): reads `caracal.audit.events`
//! through the consumer group `audit-ingestor`, verifies each frame's `sig` under
//! `AUDIT_HMAC_KEY`, and appends it to its zone's log as an `audit.ingested` event (the
//! ledger projection chains it). Frames it cannot take go to `caracal.audit.events.dlq`
//! with a reason; a frame is acknowledged only once it is in the log or in the DLQ, so a
//! crash re-reads it (and the duplicate is recognised).

use std::time::{Duration, Instant};

use serde_json::Value;

use hmac::{Hmac, Mac};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serval_domain::audit::{self, AuditEvent, AuditRecord, FrameError};
use serval_domain::validation::is_valid_identifier;
use serval_domain::Event;
use serval_streams::append::Idempotency;
use serval_streams::RedisConn;
use serval_streams::{topics, AppendOutcome, AppendRequest, LogStream};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use serval_kit::state::App;

pub const GROUP: &str = "audit-ingestor";
/// How long a frame's id is remembered for recognising a re-delivery: a frame a dead
/// consumer left pending is claimed within `SERVAL_AUDIT_CLAIM_IDLE_MS` (30 s) and the DLQ
/// holds only frames never ingested, so an hour is ample; longer would keep a Redis hash per
/// frame for nothing.
const FRAME_DEDUP_SECS: u64 = 3600;

/// What became of one frame.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ingested,
    Duplicate,
    DeadLetter(String),
}

fn consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "audit-worker-0".to_owned())
}

fn field(map: &std::collections::HashMap<String, redis::Value>, name: &str) -> Option<Vec<u8>> {
    match map.get(name) {
        Some(redis::Value::BulkString(b)) => Some(b.clone()),
        Some(redis::Value::SimpleString(s)) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn sig_ok(key: &[u8], data: &[u8], sig: Option<&[u8]>) -> bool {
    let Some(sig) = sig.and_then(|s| hex::decode(s).ok()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(data);
    mac.verify_slice(&sig).is_ok()
}

async fn ingest(app: &App, record: AuditRecord) -> Result<Outcome, String> {
    if !is_valid_identifier(&record.zone_id) || !is_valid_identifier(&record.id) {
        return Ok(Outcome::DeadLetter(
            "json_parse_error:invalid id or zone_id".into(),
        ));
    }
    // The process's zone rows (kept per zones position): no query per frame.
    let mut zone = serval_kit::read_cache::zone(app, &record.zone_id)
        .await
        .map_err(|e| format!("zone unreadable: {}", Value::Object(e.body)))?;
    if zone.is_none() {
        // A zone is acknowledged at its durable append, before the zones read model has it:
        // a miss waits once for the read model to reach the log's head.
        serval_kit::write::catch_up(app, serval_schema::projections::ZONES, &LogStream::System)
            .await;
        zone = serval_kit::read_cache::zone(app, &record.zone_id)
            .await
            .map_err(|e| format!("zone unreadable: {}", Value::Object(e.body)))?;
    }
    if zone.is_none() {
        return Ok(Outcome::DeadLetter("unknown_zone".into()));
    }
    let stream = LogStream::Zone(record.zone_id.clone());
    let fingerprint = audit::content_sha256(&record);
    let mut req = AppendRequest::new(
        stream.clone(),
        Some(record.zone_id.clone()),
        record.id.clone(),
        0,
        vec![Event::Audit(AuditEvent::Ingested(record.clone()))],
        "system:audit-ingestor".to_owned(),
    )
    .with_request_id(&record.request_id)
    .one_shot();
    // Re-deliveries are recognised by an expiring record of the frame's id (the versions
    // index would keep one field per frame forever), bound to the frame's content.
    req.idempotency = Some(Idempotency {
        key_digest: hex::encode(Sha256::digest(format!("audit-frame\n{}", record.id))),
        fingerprint: fingerprint.clone(),
        ttl_secs: Some(FRAME_DEDUP_SECS),
    });
    match app.store.append(&req).await {
        Ok(AppendOutcome::Appended { .. }) => Ok(Outcome::Ingested),
        // The id was ingested: a re-delivery (benign) or a different frame under a used id.
        Ok(AppendOutcome::Duplicate(first)) => {
            if first.fingerprint() == Some(fingerprint.as_str()) {
                Ok(Outcome::Duplicate)
            } else {
                Ok(Outcome::DeadLetter("tamper_on_replay".into()))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn process(
    app: &App,
    fields: &std::collections::HashMap<String, redis::Value>,
) -> Result<Outcome, String> {
    let Some(data) = field(fields, "data") else {
        return Ok(Outcome::DeadLetter(FrameError::MissingData.reason()));
    };
    let sig = field(fields, "sig");
    // In development without a key frames are taken unsigned; with a key, never.
    let key = &app.secrets.audit_key;
    if !key.is_empty() && !sig_ok(key, &data, sig.as_deref()) {
        return Ok(Outcome::DeadLetter("hmac_verify_failed".into()));
    }
    let sig = sig.and_then(|s| String::from_utf8(s).ok());
    match audit::parse_frame(&data, sig) {
        Ok(record) => ingest(app, record).await,
        Err(e) => Ok(Outcome::DeadLetter(e.reason())),
    }
}

async fn dead_letter(
    conn: &mut RedisConn,
    dlq: &str,
    entry_id: &str,
    fields: &std::collections::HashMap<String, redis::Value>,
    reason: &str,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(dlq).arg("*");
    cmd.arg("reason").arg(reason);
    cmd.arg("source_entry_id").arg(entry_id);
    for name in ["id", "data", "sig"] {
        if let Some(v) = field(fields, name) {
            cmd.arg(name).arg(v);
        }
    }
    let _: String = cmd.query_async(conn).await?;
    Ok(())
}

/// Attempts at a frame that keeps failing before it goes to the DLQ, so one frame can never
/// hold back the ones after it.
const MAX_ATTEMPTS: u32 = 5;
/// Frames of a batch done this long ago are acknowledged without waiting for its end.
const ACK_WITHIN: Duration = Duration::from_secs(1);

/// What the loop does with one frame once [`process`] has taken it: retry accounting and
/// the DLQ, in the batch's order. A frame in the log is acknowledged with its batch.
async fn handle(
    conn: &mut RedisConn,
    dlq: &str,
    entry: &redis::streams::StreamId,
    processed: Result<Outcome, String>,
    attempts: &mut std::collections::HashMap<String, u32>,
) -> Handled {
    let outcome = match processed {
        Ok(o) => o,
        Err(e) => {
            let n = attempts.entry(entry.id.clone()).or_insert(0);
            *n += 1;
            if *n < MAX_ATTEMPTS {
                // Not acknowledged: it stays pending and is retried.
                tracing::warn!(error = %e, entry = %entry.id, attempt = *n, "audit frame not ingested; will retry");
                return Handled::Stalled;
            }
            Outcome::DeadLetter(format!("transient_exceeded_max_deliveries:{e}"))
        }
    };
    attempts.remove(&entry.id);
    if let Outcome::DeadLetter(reason) = &outcome {
        tracing::warn!(reason, entry = %entry.id, "audit frame dead-lettered");
        if let Err(e) = dead_letter(conn, dlq, &entry.id, &entry.map, reason).await {
            tracing::warn!(error = %e, "audit DLQ write failed; will retry");
            return Handled::Stalled;
        }
        // A DLQ entry is not recognised on re-delivery: acknowledged at once.
        return Handled::DeadLettered;
    }
    Handled::Ingested
}

enum Handled {
    /// In the log (or a recognised duplicate): acknowledged with its batch.
    Ingested,
    /// In the DLQ: acknowledged now.
    DeadLettered,
    /// Not done: this batch stops here and is retried.
    Stalled,
}

/// One acknowledgement for the frames of a batch that are in the log or the DLQ (an
/// unacknowledged one is re-read and recognised as a duplicate).
async fn acknowledge(conn: &mut RedisConn, topic: &str, ids: &[&str]) {
    if ids.is_empty() {
        return;
    }
    let acked: redis::RedisResult<i64> = conn.xack(topic, GROUP, ids).await;
    if let Err(e) = acked {
        tracing::warn!(error = %e, frames = ids.len(), "audit frames not acknowledged");
    }
}

/// Runs until `stop`: pending frames of this consumer first (a previous run's), then new
/// ones; every `SERVAL_AUDIT_CLAIM_IDLE_MS` (30 s), frames any consumer (a crashed one)
/// left pending that long are claimed.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let topic = app.store.keys().topic(topics::AUDIT_EVENTS);
    let dlq = app.store.keys().topic(topics::AUDIT_EVENTS_DLQ);
    let consumer = consumer_name();
    let Some(mut conn) =
        serval_kit::state::connect_dedicated(&app.cfg.redis_url, "audit ingester", &mut stop).await
    else {
        return;
    };
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&topic, GROUP, "0").await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            tracing::warn!(error = %e, "audit ingester cannot create its consumer group");
        }
    }
    let mut cursor = "0".to_owned();
    let mut attempts = std::collections::HashMap::new();
    let claim_idle = app.cfg.audit_claim_idle_ms.max(1);
    let claim_every = Duration::from_millis(claim_idle);
    let mut last_claim = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let entries = if last_claim.elapsed() >= claim_every {
            last_claim = tokio::time::Instant::now();
            let claimed: redis::RedisResult<redis::streams::StreamAutoClaimReply> = conn
                .xautoclaim_options(
                    &topic,
                    GROUP,
                    &consumer,
                    claim_idle,
                    "0-0",
                    redis::streams::StreamAutoClaimOptions::default().count(100),
                )
                .await;
            match claimed {
                Ok(c) => c.claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "audit ingester: idle frames not claimed");
                    Vec::new()
                }
            }
        } else {
            let opts = StreamReadOptions::default()
                .group(GROUP, &consumer)
                .count(100)
                .block(1_000);
            let keys = [topic.as_str()];
            let ids = [cursor.as_str()];
            let read = tokio::select! {
                r = conn.xread_options::<_, _, StreamReadReply>(&keys, &ids, &opts) => r,
                _ = stop.changed() => return,
            };
            match read {
                Ok(r) => {
                    let entries: Vec<_> = r.keys.into_iter().flat_map(|k| k.ids).collect();
                    if entries.is_empty() && cursor == "0" {
                        // Own pending entries done: new frames from here on.
                        cursor = ">".to_owned();
                        continue;
                    }
                    entries
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit ingester: redis error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        };
        let mut handled: Vec<&str> = Vec::with_capacity(entries.len());
        let mut stalled = false;
        let mut since = Instant::now();
        // The batch's frames are taken at once: their appends share Redis round trips (and
        // AOF fsyncs) instead of paying one each, so the ingester keeps up with a saturated
        // Gateway. Order across frames is not part of the ledger's contract (each frame is
        // its own aggregate; the chain follows the log); a frame after one that stalls is
        // in the log but unacknowledged, and its re-delivery is recognised as a duplicate.
        let processed =
            futures::future::join_all(entries.iter().map(|e| process(&app, &e.map))).await;
        for (entry, processed) in entries.iter().zip(processed) {
            match handle(&mut conn, &dlq, entry, processed, &mut attempts).await {
                Handled::Ingested => handled.push(&entry.id),
                Handled::DeadLettered => acknowledge(&mut conn, &topic, &[&entry.id]).await,
                Handled::Stalled => {
                    stalled = true;
                    break;
                }
            }
            // A slow batch (frames waiting for their zone) does not keep the done ones
            // pending anywhere near the claim idle.
            if since.elapsed() >= ACK_WITHIN {
                acknowledge(&mut conn, &topic, &handled).await;
                handled.clear();
                since = Instant::now();
            }
        }
        acknowledge(&mut conn, &topic, &handled).await;
        if stalled {
            // Back to this consumer's pending entries, after a pause.
            cursor = "0".to_owned();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if attempts.len() > 10_000 {
            attempts.clear();
        }
    }
}
