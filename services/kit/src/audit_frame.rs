//! Audit frames on `caracal.audit.events` (events-and-audit.md §10): the STS's
//! `token_exchange` decisions and skips (sts.md §19, published before the exchange answers:
//! no decision without evidence) and the Gateway's `gateway_resource_request` /
//! `replay_detected` events (gateway.md §13).

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use serval_streams::topics;

use crate::http::ApiError;
use crate::App;

/// One frame's data (the audit event), before signing.
pub struct Frame {
    pub zone_id: String,
    pub request_id: String,
    pub event_type: &'static str,
    pub decision: &'static str,
    /// `complete` for evaluated decisions, else the skip reason.
    pub evaluation_status: String,
    pub determining_policies: Value,
    pub diagnostics: Value,
    pub metadata: Map<String, Value>,
    /// `(policy_set_version_id, manifest_sha)` of an evaluated decision.
    pub policy: Option<(String, String)>,
}

impl Frame {
    /// A deny that no policy evaluated: `status` is its reason (a skip, an anomaly).
    pub fn refusal(
        zone_id: &str,
        request_id: &str,
        event_type: &'static str,
        status: &str,
        metadata: Map<String, Value>,
    ) -> Frame {
        Frame {
            zone_id: zone_id.to_owned(),
            request_id: request_id.to_owned(),
            event_type,
            decision: "deny",
            evaluation_status: status.to_owned(),
            determining_policies: json!([]),
            diagnostics: json!([]),
            metadata,
            policy: None,
        }
    }

    /// A deny frame for the same request and resource, with `status` as its reason.
    pub fn denied(&self, status: &str) -> Frame {
        Frame {
            policy: self.policy.clone(),
            ..Frame::refusal(
                &self.zone_id,
                &self.request_id,
                self.event_type,
                status,
                self.metadata.clone(),
            )
        }
    }

    fn data(&self) -> String {
        let mut data = json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "zone_id": self.zone_id,
            "event_type": self.event_type,
            "request_id": self.request_id,
            "decision": self.decision,
            "evaluation_status": self.evaluation_status,
            "determining_policies_json": self.determining_policies,
            "diagnostics_json": self.diagnostics,
            "metadata_json": Value::Object(self.metadata.clone()),
            "occurred_at": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        });
        if let (Some((version, sha)), Some(m)) = (&self.policy, data.as_object_mut()) {
            m.insert("policy_set_version_id".into(), json!(version));
            m.insert("manifest_sha".into(), json!(sha));
        }
        data.to_string()
    }
}

/// Publishes the frames in order, each signed (`sig` over `data` under `AUDIT_HMAC_KEY`,
/// `_sig` over the message under `STREAMS_HMAC_KEY`, as the relay signs its frames).
pub async fn publish(app: &App, frames: &[Frame]) -> Result<(), ApiError> {
    let topic = app.store.keys().topic(topics::AUDIT_EVENTS);
    let mut conn = app.redis.clone();
    for f in frames {
        let data = f.data();
        let sig = topics::audit_frame_sig(&app.secrets.audit_key, &data);
        let fields = vec![
            ("id".to_owned(), Some(f.request_id.clone())),
            ("data".to_owned(), Some(data)),
            ("sig".to_owned(), Some(sig)),
        ];
        topics::publish(&mut conn, &topic, Some(&app.secrets.streams_key), &fields).await?;
    }
    Ok(())
}
