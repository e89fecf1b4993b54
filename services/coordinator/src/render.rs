//! The wire shapes of coordinator.md §3.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use serval_domain::catalog::{AgentServiceData, Entity, EntityData, InvocationData, SessionData};
use serval_domain::delegation::Edge;

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn ts_opt(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(ts(t))).unwrap_or(Value::Null)
}

pub fn session_data(e: &Entity) -> Option<&SessionData> {
    match &e.data {
        EntityData::Session(s) => Some(s),
        _ => None,
    }
}

pub fn started_at(e: &Entity, s: &SessionData) -> DateTime<Utc> {
    s.started_at.unwrap_or(e.created_at)
}

/// Which Session shape (§3.1): the start answer, get/list, or a children item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionShape {
    Start,
    Full,
    Child,
}

pub fn session(e: &Entity, s: &SessionData, shape: SessionShape) -> Value {
    let service = s.is_service();
    let mut v = json!({
        "agent_session_id": e.id,
        "zone_id": e.zone_id,
        "application_id": s.application_id,
        "parent_id": s.parent_session_id,
        "subject_authority_record_id": s.subject_authority_record_id,
        "lifecycle": s.lifecycle,
        "labels": s.labels,
        "status": s.status,
        "depth": s.depth,
        "ttl_seconds": if service { Value::Null } else { json!(s.ttl_seconds) },
        "started_at": ts(started_at(e, s)),
        "last_heartbeat_at": if service { ts_opt(s.last_heartbeat_at) } else { Value::Null },
        "heartbeat_deadline_at": if service { ts_opt(s.heartbeat_deadline_at) } else { Value::Null },
    });
    let m = v.as_object_mut().expect("object");
    match shape {
        SessionShape::Start => {
            m.insert("lease_generation".into(), json!(s.lease_generation));
        }
        SessionShape::Full => {
            m.insert("metadata".into(), metadata(&s.metadata));
            m.insert("terminated_at".into(), ts_opt(s.terminated_at));
            m.insert("termination_reason".into(), json!(s.termination_reason));
            m.insert("lease_generation".into(), json!(s.lease_generation));
        }
        SessionShape::Child => {
            m.insert("metadata".into(), metadata(&s.metadata));
        }
    }
    v
}

fn metadata(v: &Value) -> Value {
    if v.is_object() {
        v.clone()
    } else {
        json!({})
    }
}

pub fn service(e: &Entity, s: &AgentServiceData) -> Value {
    json!({
        "id": e.id,
        "zone_id": e.zone_id,
        "application_id": s.application_id,
        "endpoint_url": s.endpoint_url,
        "protocol_versions": s.protocol_versions,
        "framework_name": s.framework_name,
        "framework_version": s.framework_version,
        "capabilities": s.capabilities,
        "health": s.health,
        "metadata_json": metadata(&s.metadata_json),
        "last_heartbeat_at": ts_opt(s.last_heartbeat_at),
    })
}

/// §3.3; the list omits `retry_policy_json` and `cancel_requested_at`.
pub fn invocation(e: &Entity, i: &InvocationData, list: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "zone_id": e.zone_id,
        "service_id": i.service_id,
        "source_session_id": i.source_session_id,
        "target_session_id": i.target_session_id,
        "method": i.method,
        "status": i.status,
        "attempts": i.attempts,
        "max_attempts": i.max_attempts,
        "timeout_ms": i.timeout_ms,
        "deadline_at": ts_opt(i.deadline_at),
        "started_at": ts_opt(i.started_at),
        "completed_at": ts_opt(i.completed_at),
        "created_at": ts(e.created_at),
    });
    if !list {
        let m = v.as_object_mut().expect("object");
        m.insert(
            "retry_policy_json".into(),
            json!({"max_attempts": i.max_attempts, "backoff_ms": i.backoff_ms}),
        );
        m.insert("cancel_requested_at".into(), ts_opt(i.cancel_requested_at));
    }
    v
}

/// §3.4 (`id`), with `broad_reason` on list items.
pub fn edge(e: &Edge) -> Value {
    json!({
        "id": e.id,
        "zone_id": e.zone_id,
        "source_session_id": e.source_session_id,
        "target_session_id": e.target_session_id,
        "issuer_application_id": e.issuer_application_id,
        "receiver_application_id": e.receiver_application_id,
        "parent_edge_id": e.parent_edge_id,
        "resource_id": e.resource_id,
        "scopes": e.scopes,
        "constraints_json": e.constraints_json,
        "status": e.status,
        "expires_at": ts(e.expires_at),
        "edge_version": e.edge_version,
        "revoked_at": ts_opt(e.revoked_at),
        "created_at": ts(e.created_at),
        "broad_reason": e.broad_reason(),
    })
}
