//! An invocation between services (coordinator.md §3.3, §6, §10.3) and its state machine.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationData {
    pub service_id: String,
    /// The owning application (the source Session's, else the service's).
    pub application_id: String,
    /// The service registration's application (who may start, cancel and complete).
    pub service_application_id: String,
    pub source_session_id: Option<String>,
    pub target_session_id: Option<String>,
    pub method: String,
    pub params: Value,
    pub metadata: Value,
    /// `pending` | `running` | `succeeded` | `failed` | `cancel_requested` | `canceled` |
    /// `timed_out` | `dead`.
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
    pub deadline_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub error_json: Value,
    /// HMAC of the creation's idempotency key (the receipt's name); never the key.
    pub idempotency_digest: Option<String>,
}

pub const STATUSES: [&str; 8] = [
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancel_requested",
    "canceled",
    "timed_out",
    "dead",
];

/// Why a transition is refused (the wire's `409` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotStartable,
    NotCancelable,
    NotCompletable,
}

impl InvocationData {
    /// §6.4: from `pending` or `failed` while attempts remain.
    pub fn started(&self, now: DateTime<Utc>) -> Result<InvocationData, Refused> {
        if !matches!(self.status.as_str(), "pending" | "failed")
            || self.attempts >= self.max_attempts
        {
            return Err(Refused::NotStartable);
        }
        let mut next = self.clone();
        next.status = "running".into();
        next.attempts += 1;
        next.started_at = Some(now);
        next.completed_at = None;
        next.error_json = Value::Null;
        next.deadline_at = Some(now + Duration::milliseconds(self.timeout_ms as i64));
        Ok(next)
    }

    /// §6.5: `pending` → `canceled`; `running`/`cancel_requested` → `cancel_requested`.
    pub fn cancelled(
        &self,
        now: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<InvocationData, Refused> {
        let status = match self.status.as_str() {
            "pending" => "canceled",
            "running" | "cancel_requested" => "cancel_requested",
            _ => return Err(Refused::NotCancelable),
        };
        let mut next = self.clone();
        next.status = status.into();
        next.cancel_requested_at = Some(now);
        if let Some(r) = reason {
            if let Value::Object(m) = &mut next.metadata {
                m.insert("cancel_reason".into(), Value::from(r));
            } else {
                next.metadata = serde_json::json!({ "cancel_reason": r });
            }
        }
        Ok(next)
    }

    /// §6.6: from `running` or `cancel_requested`.
    pub fn completed(
        &self,
        now: DateTime<Utc>,
        succeeded: bool,
        error: Value,
        metadata: Option<&serde_json::Map<String, Value>>,
    ) -> Result<InvocationData, Refused> {
        if !matches!(self.status.as_str(), "running" | "cancel_requested") {
            return Err(Refused::NotCompletable);
        }
        let mut next = self.clone();
        next.status = if succeeded { "succeeded" } else { "failed" }.into();
        next.completed_at = Some(now);
        next.error_json = error;
        if let Some(extra) = metadata {
            if let Value::Object(m) = &mut next.metadata {
                for (k, v) in extra {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(next)
    }

    /// §10.3 deadline sweep: a running invocation past its deadline fails, or times out
    /// when no attempt is left; `None` when it is not due.
    pub fn swept(&self, now: DateTime<Utc>) -> Option<InvocationData> {
        let due = self.status == "running" && self.deadline_at.is_some_and(|d| d <= now);
        if !due {
            return None;
        }
        let mut next = self.clone();
        next.status = if self.attempts >= self.max_attempts {
            "timed_out"
        } else {
            "failed"
        }
        .into();
        next.completed_at = Some(now);
        next.error_json = serde_json::json!({ "reason": "deadline_exceeded" });
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> InvocationData {
        InvocationData {
            service_id: "svc".into(),
            application_id: "a".into(),
            service_application_id: "a".into(),
            source_session_id: None,
            target_session_id: None,
            method: "m".into(),
            params: Value::Null,
            metadata: serde_json::json!({}),
            status: "pending".into(),
            attempts: 0,
            max_attempts: 2,
            timeout_ms: 1000,
            backoff_ms: 0,
            deadline_at: None,
            cancel_requested_at: None,
            started_at: None,
            completed_at: None,
            error_json: Value::Null,
            idempotency_digest: None,
        }
    }

    #[test]
    fn the_state_machine() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let run = pending().started(now).unwrap();
        assert_eq!((run.status.as_str(), run.attempts), ("running", 1));
        assert_eq!(run.started(now), Err(Refused::NotStartable));
        let late = now + Duration::seconds(2);
        let failed = run.swept(late).unwrap();
        assert_eq!(failed.status, "failed");
        let again = failed.started(late).unwrap();
        assert_eq!(
            again.swept(late + Duration::seconds(2)).unwrap().status,
            "timed_out"
        );
        let cr = again.cancelled(late, Some("x")).unwrap();
        assert_eq!(cr.status, "cancel_requested");
        assert_eq!(cr.metadata["cancel_reason"], "x");
        let done = cr.completed(late, true, Value::Null, None).unwrap();
        assert_eq!(done.status, "succeeded");
        assert_eq!(done.cancelled(late, None), Err(Refused::NotCancelable));
        assert_eq!(
            done.completed(late, true, Value::Null, None),
            Err(Refused::NotCompletable)
        );
        assert_eq!(pending().cancelled(now, None).unwrap().status, "canceled");
    }
}
