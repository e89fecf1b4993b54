//! The Coordinator's topics (coordinator.md §16): Session lifecycle and revocation, the
//! Delegation graph's invalidations with the epoch, invocation lifecycle. Fields follow the
//! Coordinator's publisher: a `dedupe_key`, `null` written as the literal string `null`,
//! numbers as decimals and arrays as JSON text.

use serval_domain::catalog::{CatalogEvent, EntityData, InvocationData, SessionData};
use serval_domain::delegation::DelegationEvent;
use serval_streams::topics::{self, TopicMessage};

use crate::projection::Applied;

type Fields = Vec<(String, Option<String>)>;

fn field(name: &str, v: impl Into<String>) -> (String, Option<String>) {
    (name.to_owned(), Some(v.into()))
}

/// A nullable field in the Coordinator's encoding: `null` is the literal string.
fn nullable(name: &str, v: Option<&String>) -> (String, Option<String>) {
    (
        name.to_owned(),
        Some(v.cloned().unwrap_or_else(|| "null".to_owned())),
    )
}

fn msg(topic: &'static str, fields: Fields) -> TopicMessage {
    TopicMessage { topic, fields }
}

fn zone(applied: &Applied) -> String {
    applied
        .recorded
        .envelope
        .zone_id
        .clone()
        .unwrap_or_default()
}

/// The lifecycle message of a Session transition, and its revocation when one is due.
fn session_messages(applied: &Applied, s: &SessionData, created: bool) -> Vec<TopicMessage> {
    let env = &applied.recorded.envelope;
    let id = env.aggregate_id.clone();
    let ts = env.occurred_at.timestamp_millis().to_string();
    let base = |event: &str| -> Fields {
        vec![
            field("event", event),
            field("zone_id", zone(applied)),
            field("agent_session_id", id.clone()),
            nullable("parent_id", s.parent_session_id.as_ref()),
        ]
    };
    let revoke = |dedupe: String, reason: &str| -> Option<TopicMessage> {
        let record = s.subject_authority_record_id.clone()?;
        Some(msg(
            topics::SESSIONS_REVOKE,
            vec![
                field("zone_id", zone(applied)),
                field("session_id", record),
                field("agent_session_id", id.clone()),
                field("reason", reason),
                field("dedupe_key", dedupe),
            ],
        ))
    };
    let mut out = Vec::new();
    if created {
        let mut f = base("spawn");
        f.push(field("application_id", s.application_id.clone()));
        f.push(field("dedupe_key", format!("spawn:{id}")));
        out.push(msg(topics::AGENTS_LIFECYCLE, f));
        return out;
    }
    match s.status.as_str() {
        "suspended" => {
            let reason = s
                .suspension_reason
                .clone()
                .unwrap_or_else(|| "requested".into());
            let mut f = base("suspend");
            f.push(field("reason", reason.clone()));
            f.push(field("dedupe_key", format!("suspend:{id}:{ts}")));
            out.push(msg(topics::AGENTS_LIFECYCLE, f));
            if s.revokes_subject == Some(true) {
                out.extend(revoke(format!("agent_suspend:{id}:{ts}"), &reason));
            }
        }
        "active" => {
            let mut f = base("resume");
            f.push(field("dedupe_key", format!("resume:{id}:{ts}")));
            out.push(msg(topics::AGENTS_LIFECYCLE, f));
        }
        "terminated" | "expired" => {
            let reason = s
                .termination_reason
                .clone()
                .unwrap_or_else(|| "requested".into());
            let mut f = base("terminate");
            f.push(field("reason", reason.clone()));
            f.push(field("dedupe_key", format!("terminate:{id}")));
            out.push(msg(topics::AGENTS_LIFECYCLE, f));
            if s.revokes_subject != Some(false) {
                out.extend(revoke(format!("agent_terminate:{id}"), &reason));
            }
        }
        _ => {}
    }
    out
}

fn invocation_event(i: &InvocationData) -> Option<&'static str> {
    Some(match i.status.as_str() {
        "pending" => "invocation.created",
        "running" => "invocation.started",
        "cancel_requested" | "canceled" => "invocation.cancel_requested",
        "succeeded" => "invocation.succeeded",
        "failed" => "invocation.failed",
        "timed_out" => "invocation.timed_out",
        _ => return None,
    })
}

fn invocation_messages(applied: &Applied, i: &InvocationData) -> Vec<TopicMessage> {
    let Some(event) = invocation_event(i) else {
        return Vec::new();
    };
    let id = applied.recorded.envelope.aggregate_id.clone();
    vec![msg(
        topics::INVOCATIONS_LIFECYCLE,
        vec![
            field("event", event),
            field("zone_id", zone(applied)),
            field("service_id", i.service_id.clone()),
            field("invocation_id", id.clone()),
            field("dedupe_key", format!("{event}:{id}:{}", i.attempts)),
        ],
    )]
}

fn graph_messages(applied: &Applied, e: &DelegationEvent) -> Vec<TopicMessage> {
    let epoch = applied.recorded.envelope.aggregate_version.to_string();
    let z = zone(applied);
    match e {
        DelegationEvent::EdgeCreated(c) => vec![msg(
            topics::DELEGATIONS_INVALIDATE,
            vec![
                field("event", "edge_create"),
                field("zone_id", z),
                field("edge_id", c.edge.id.clone()),
                field("source_session_id", c.edge.source_session_id.clone()),
                field("target_session_id", c.edge.target_session_id.clone()),
                field("epoch", epoch),
                field("dedupe_key", format!("edge_create:{}", c.edge.id)),
            ],
        )],
        DelegationEvent::EdgesRevoked(r) => {
            let mut out = Vec::new();
            if let Some(named) = &r.named_edge {
                out.push(msg(
                    topics::DELEGATIONS_INVALIDATE,
                    vec![
                        field("event", "edge_revoke"),
                        field("zone_id", z.clone()),
                        field("edge_id", named.clone()),
                        field("affected_edges", r.edge_ids.len().to_string()),
                        field("epoch", epoch),
                        field("dedupe_key", format!("edge_revoke:{named}")),
                    ],
                ));
                for s in &r.revoked_subjects {
                    let mut f = vec![
                        field("zone_id", z.clone()),
                        field("agent_session_id", s.agent_session_id.clone()),
                        field("delegation_edge_id", named.clone()),
                        field("reason", "delegation_revoked"),
                    ];
                    let dedupe = match &s.record_id {
                        Some(record) => {
                            f.push(field("session_id", record.clone()));
                            format!("delegation:{named}:subject:{record}")
                        }
                        None => format!("delegation:{named}:session:{}", s.agent_session_id),
                    };
                    f.push(field("dedupe_key", dedupe));
                    out.push(msg(topics::SESSIONS_REVOKE, f));
                }
            } else {
                for id in &r.edge_ids {
                    out.push(msg(
                        topics::DELEGATIONS_INVALIDATE,
                        vec![
                            field("event", "edge_revoke"),
                            field("zone_id", z.clone()),
                            field("edge_id", id.clone()),
                            field("reason", r.reason.clone()),
                            field("epoch", epoch.clone()),
                            field("dedupe_key", format!("edge_revoke:{id}")),
                        ],
                    ));
                }
            }
            out
        }
        DelegationEvent::EdgesExpired(x) => vec![msg(
            topics::DELEGATIONS_INVALIDATE,
            vec![
                field("event", "edge_expire"),
                field("zone_id", z.clone()),
                field("affected_edges", x.edge_ids.len().to_string()),
                field(
                    "edge_ids",
                    serde_json::to_string(&x.edge_ids).unwrap_or_else(|_| "[]".into()),
                ),
                field("epoch", epoch.clone()),
                field("dedupe_key", format!("edge_expire:{z}:{epoch}")),
            ],
        )],
    }
}

/// The Coordinator-owned messages of an event; `None` when the event is not one of them.
pub fn messages(applied: &Applied) -> Option<Vec<TopicMessage>> {
    match &applied.event {
        serval_domain::Event::Delegation(e) => Some(graph_messages(applied, e)),
        serval_domain::Event::Catalog(CatalogEvent::Created(c)) => match &c.data {
            EntityData::Session(s) => Some(session_messages(applied, s, true)),
            EntityData::Invocation(i) => Some(invocation_messages(applied, i)),
            _ => None,
        },
        serval_domain::Event::Catalog(CatalogEvent::Updated(u))
            if u.changed_fields.iter().any(|f| f == "status") =>
        {
            match &u.data {
                EntityData::Session(s) => Some(session_messages(applied, s, false)),
                EntityData::Invocation(i) => Some(invocation_messages(applied, i)),
                _ => None,
            }
        }
        _ => None,
    }
}
