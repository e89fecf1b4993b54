//! The topic relay: publishes Caracal's public `caracal.*` topics from the log.
//!
//! It runs as a projection whose effect is an XADD rather than a row: messages are
//! published before the checkpoint commits, so delivery is at-least-once, and every message
//! carries `outbox_id` (the event id, or an id derived from it when one event yields several
//! messages) so consumers deduplicate re-publications exactly as they do for Caracal's outbox.
//!
//! Which events map to which topic follows management-api.md §16: zone and admin-token
//! events publish nothing (consumers read that state from the read models); the mapping
//! grows with the aggregates that own revocation, policy activation and lifecycle events.

use serval_domain::catalog::{CatalogEvent, EntityData};
use serval_domain::policy::policy_sets::PolicySetEvent;
use serval_domain::Event;
use serval_streams::topics::{self, TopicMessage};
use serval_streams::KeySpace;
use serval_streams::RedisConn;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::metrics::METRICS;
use crate::projection::{Applied, Projection};

pub struct RelayProjection {
    conn: RedisConn,
    keys: KeySpace,
    /// `STREAMS_HMAC_KEY`; `None` only in development mode without a key (no `_sig`).
    key: Option<Vec<u8>>,
    /// `AUDIT_HMAC_KEY`: signs audit frames (`sig`); none → frames without `sig`.
    audit_key: Option<Vec<u8>>,
}

impl RelayProjection {
    pub fn new(
        conn: RedisConn,
        keys: KeySpace,
        key: Option<Vec<u8>>,
        audit_key: Option<Vec<u8>>,
    ) -> Self {
        RelayProjection {
            conn,
            keys,
            key,
            audit_key,
        }
    }
}

/// An audit frame for `caracal.audit.events` (§16): `id` = the request id, `data` = the
/// audit event as compact JSON, `sig` over `data` under `AUDIT_HMAC_KEY`.
fn audit_frame(
    applied: &Applied,
    event_type: &str,
    decision: &str,
    metadata: serde_json::Value,
    audit_key: Option<&[u8]>,
) -> TopicMessage {
    let env = &applied.recorded.envelope;
    let request_id = env
        .request_id
        .clone()
        .unwrap_or_else(|| env.event_id.clone());
    let data = serde_json::json!({
        "id": env.event_id,
        "zone_id": env.zone_id,
        "event_type": event_type,
        "request_id": request_id,
        "decision": decision,
        "evaluation_status": "complete",
        "determining_policies_json": [],
        "diagnostics_json": [],
        "metadata_json": metadata,
        "occurred_at": env.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string();
    let sig = audit_key.map(|k| topics::audit_frame_sig(k, &data));
    TopicMessage {
        topic: topics::AUDIT_EVENTS,
        fields: vec![
            ("id".to_owned(), Some(request_id)),
            ("data".to_owned(), Some(data)),
            ("sig".to_owned(), sig),
        ],
    }
}

/// The `credential_revealed` audit frame of a secret reveal (management-api.md §16): `id`
/// = the request id, `data` = the audit event as compact JSON, `sig` over `data`.
fn credential_revealed(
    applied: &Applied,
    e: &serval_domain::catalog::SecretRevealed,
    audit_key: Option<&[u8]>,
) -> TopicMessage {
    let env = &applied.recorded.envelope;
    let id_key = match e.kind {
        serval_domain::catalog::CatalogKind::Application => "application_id",
        _ => "object_id",
    };
    let metadata = serde_json::json!({
        "credential": e.credential,
        id_key: env.aggregate_id,
        "actor": e.by,
    });
    audit_frame(applied, "credential_revealed", "allow", metadata, audit_key)
}

/// The `step_up_decided` audit frame of an operator's approval decision (§16).
fn step_up_decided(
    applied: &Applied,
    hold: &serval_domain::catalog::ApprovalData,
    audit_key: Option<&[u8]>,
) -> TopicMessage {
    let env = &applied.recorded.envelope;
    let decision = if hold.rejected_at.is_some() {
        "rejected"
    } else {
        "approved"
    };
    let mut metadata = serde_json::json!({
        "challenge_id": env.aggregate_id,
        "tier": hold.tier,
        "approver_class": hold.approver_class,
        "privacy_mode": hold.privacy_mode,
        "binding": hold.binding,
        "session_id": hold.session_id,
        // A Federated user's decision carries the approver's authority record.
        "approver_plane": if hold.approver_session_id.is_some() { "subject" } else { "operator" },
        "approver_subject_id": hold.approver_subject_id,
    });
    let optional = [
        (
            "application_id",
            hold.application_id.clone().map(Into::into),
        ),
        (
            "subject_anchor",
            hold.subject_anchor.clone().map(Into::into),
        ),
        ("reason", hold.decision_reason.clone().map(Into::into)),
        (
            "approver_session_id",
            hold.approver_session_id.clone().map(Into::into),
        ),
        (
            "agent_labels",
            (!hold.agent_labels.is_empty()).then(|| serde_json::json!(hold.agent_labels)),
        ),
    ];
    if let Some(m) = metadata.as_object_mut() {
        for (k, v) in optional {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        }
    }
    audit_frame(applied, "step_up_decided", decision, metadata, audit_key)
}

/// `caracal.sessions.revoke` for an authority record the API revoked (§16: grant
/// revocation, subject revoke).
fn record_revoked(
    applied: &Applied,
    record: &serval_domain::catalog::AuthorityRecordData,
) -> TopicMessage {
    let env = &applied.recorded.envelope;
    TopicMessage {
        topic: topics::SESSIONS_REVOKE,
        fields: vec![
            ("zone_id".to_owned(), env.zone_id.clone()),
            ("session_id".to_owned(), Some(env.aggregate_id.clone())),
            ("reason".to_owned(), record.revoked_reason.clone()),
            ("grant_id".to_owned(), record.revoked_by_grant.clone()),
        ],
    }
}

/// The public messages an event produces, without `outbox_id`.
pub fn topic_messages(applied: &Applied, audit_key: Option<&[u8]>) -> Vec<TopicMessage> {
    let zone_id = applied.recorded.envelope.zone_id.clone();
    let invalidate = |set: &str, version: Option<&str>| TopicMessage {
        topic: topics::POLICY_INVALIDATE,
        fields: vec![
            ("zone_id".to_owned(), zone_id.clone()),
            ("policy_set_id".to_owned(), Some(set.to_owned())),
            (
                "policy_set_version_id".to_owned(),
                version.map(str::to_owned),
            ),
        ],
    };
    if let Some(m) = crate::relay_coordination::messages(applied) {
        return m;
    }
    match &applied.event {
        // §16: activation, and deleting the active set (no version = the zone has no policy).
        Event::PolicySet(PolicySetEvent::Activated(e)) => {
            vec![invalidate(&e.policy_set_id, Some(&e.version_id))]
        }
        Event::PolicySet(PolicySetEvent::Archived(e)) if e.cleared_binding => {
            vec![invalidate(&e.policy_set_id, None)]
        }
        // §16: a credential reveal is queued as an audit frame.
        Event::Catalog(CatalogEvent::SecretRevealed(e)) => {
            vec![credential_revealed(applied, e, audit_key)]
        }
        // §16: operator approval decisions are queued as audit frames.
        Event::Catalog(CatalogEvent::Updated(u)) if crate::catalog::is_approval_decision(u) => {
            match &u.data {
                EntityData::Approval(hold) => vec![step_up_decided(applied, hold, audit_key)],
                _ => Vec::new(),
            }
        }
        // §16: a revoked authority record is announced to every enforcement point.
        Event::Catalog(CatalogEvent::Updated(u))
            if u.changed_fields.iter().any(|f| f == "status") =>
        {
            match &u.data {
                EntityData::AuthorityRecord(r) if r.status == "revoked" => {
                    vec![record_revoked(applied, r)]
                }
                _ => Vec::new(),
            }
        }
        // §16: "Everything else emits no stream event (zone/… CRUD, admin tokens)".
        Event::Zone(_)
        | Event::AdminToken(_)
        | Event::Policy(_)
        | Event::PolicySet(_)
        | Event::Catalog(_)
        | Event::AdminAudit(_)
        | Event::Audit(_)
        | Event::Delegation(_) => Vec::new(),
    }
}

/// The deduplication id of the `index`-th message of an event: the event id itself for the
/// first, a UUIDv8 derived from (event id, index) for the others.
pub fn outbox_id(event_id: &str, index: usize) -> String {
    if index == 0 {
        return event_id.to_owned();
    }
    let digest = Sha256::digest(format!("{event_id}/{index}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Adds `outbox_id` to a message's fields.
pub fn with_outbox_id(msg: &TopicMessage, outbox_id: String) -> Vec<(String, Option<String>)> {
    let mut fields = msg.fields.clone();
    fields.push(("outbox_id".to_owned(), Some(outbox_id)));
    fields
}

impl Projection for RelayProjection {
    fn wants(&self, a: &Applied) -> bool {
        !topic_messages(a, self.audit_key.as_deref()).is_empty()
    }

    fn name(&self) -> &'static str {
        serval_schema::projections::RELAY
    }

    fn acts_outside_transaction(&self) -> bool {
        true
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        // Every message of the batch in one pipelined round trip (in log order), then their
        // dispatch records in one statement — not two round trips per message.
        let mut conn = self.conn.clone();
        let mut outgoing = Vec::new();
        let mut records: (Vec<String>, Vec<String>, Vec<&'static str>) = Default::default();
        for a in batch {
            for (i, msg) in topic_messages(a, self.audit_key.as_deref())
                .iter()
                .enumerate()
            {
                let oid = outbox_id(&a.recorded.envelope.event_id, i);
                outgoing.push((self.keys.topic(msg.topic), with_outbox_id(msg, oid.clone())));
                records.0.push(oid);
                records.1.push(a.recorded.envelope.event_id.clone());
                records.2.push(msg.topic);
            }
        }
        let entries = topics::publish_many(&mut conn, self.key.as_deref(), &outgoing)
            .await
            .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?;
        if entries.is_empty() {
            return Ok(());
        }
        // The dispatch records commit with the checkpoint: what activation-status reports
        // as the outbox state.
        sqlx::query(
            "INSERT INTO relay_dispatches (outbox_id, event_id, topic, topic_entry_id,
                 dispatched_at)
             SELECT o, e, t, x, now() FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                 AS m(o, e, t, x)
             ON CONFLICT (outbox_id) DO NOTHING",
        )
        .bind(&records.0)
        .bind(&records.1)
        .bind(&records.2)
        .bind(&entries)
        .execute(&mut *tx)
        .await?;
        for topic in &records.2 {
            METRICS.published.with_label_values(&[topic]).inc();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn outbox_ids_are_stable_and_distinct() {
        let e = Uuid::now_v7().to_string();
        assert_eq!(outbox_id(&e, 0), e);
        assert_eq!(outbox_id(&e, 1), outbox_id(&e, 1));
        assert_ne!(outbox_id(&e, 1), outbox_id(&e, 2));
    }
}
