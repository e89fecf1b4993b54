//! Authority records, governed sessions and approval holds (management-api.md §14.3, §14.4,
//! §15): the state the STS and the Coordinator create at run time. The Management API reads
//! them, decides approvals, and changes them in the cascades and jobs of §18.
//!
//! They share the catalog's state-carrying events because their life cycle is the same —
//! created once, replaced by later writes — and a projector then needs no new fold. Times a
//! record carries (`revoked_at`, `satisfied_at`, …) come in with the command: the domain
//! has no clock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An authority record: the anchor one STS identity exchange creates (JWT `sid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRecordData {
    /// `user` | `application`.
    pub record_type: String,
    pub subject_id: String,
    pub application_id: Option<String>,
    /// The federated user issuer (users only).
    pub federated_user_issuer: Option<String>,
    pub parent_id: Option<String>,
    /// `active` | `revoked` | `expired` as last written; see [`Self::effective_status`].
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub authenticated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// The grant whose revocation revoked this record (`caracal.sessions.revoke` `grant_id`).
    pub revoked_by_grant: Option<String>,
}

pub const RECORD_TYPES: [&str; 2] = ["user", "application"];
pub const RECORD_STATUSES: [&str; 3] = ["active", "revoked", "expired"];

impl AuthorityRecordData {
    /// An active record past its expiry reads `expired` before the reaper writes it.
    pub fn effective_status(&self, now: DateTime<Utc>) -> &str {
        if self.status == "active" && self.expires_at <= now {
            "expired"
        } else {
            &self.status
        }
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.effective_status(now) == "active"
    }

    /// The record revoked at `at`; `None` when it is no longer active (nothing to change).
    pub fn revoked(
        &self,
        at: DateTime<Utc>,
        reason: &str,
        grant_id: Option<&str>,
    ) -> Option<AuthorityRecordData> {
        if self.status != "active" {
            return None;
        }
        let mut next = self.clone();
        next.status = "revoked".into();
        next.revoked_at = Some(at);
        next.revoked_reason = Some(reason.to_owned());
        next.revoked_by_grant = grant_id.map(str::to_owned);
        Some(next)
    }

    /// The record marked `expired` by the reaper; `None` unless it is active and due.
    pub fn expired(&self, now: DateTime<Utc>) -> Option<AuthorityRecordData> {
        if self.status != "active" || self.expires_at > now {
            return None;
        }
        let mut next = self.clone();
        next.status = "expired".into();
        Some(next)
    }
}

/// A task TTL (seconds, about 9,500 years) from which a Session counts against capacity
/// for as long as it lasts: its end would not fit a timestamp.
pub const COUNTS_FOREVER_TTL: u64 = 300_000_000_000;

/// A governed Session: one running agent execution (the Coordinator's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionData {
    pub application_id: String,
    pub parent_session_id: Option<String>,
    /// `active` | `suspended` | `terminated` | `expired`.
    pub status: String,
    /// `task` | `service`.
    pub lifecycle: String,
    pub labels: Vec<String>,
    pub depth: u32,
    pub subject_authority_record_id: Option<String>,
    pub subject_id: Option<String>,
    pub federated_user_id: Option<String>,
    pub federated_user_issuer: Option<String>,
    pub last_active_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub termination_reason: Option<String>,
    pub ttl_seconds: Option<u64>,
    /// The start's `metadata` object (Coordinator Sessions).
    #[serde(default)]
    pub metadata: Value,
    /// Services only: the lease (§10.2).
    #[serde(default)]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub heartbeat_deadline_at: Option<DateTime<Utc>>,
    /// 0 for tasks, ≥ 1 for services.
    #[serde(default)]
    pub lease_generation: u64,
    #[serde(default)]
    pub suspension_reason: Option<String>,
    /// The start instant (a Session written before this field reads its row's creation).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Whether the transition this state records announces the revocation of the subject
    /// record (§12.1 exemptions are decided by the writer); `None` = yes (writers before
    /// the Coordinator always announced it).
    #[serde(default)]
    pub revokes_subject: Option<bool>,
}

impl SessionData {
    pub fn is_service(&self) -> bool {
        self.lifecycle == "service"
    }

    /// Live for Delegations and invocations (§7.1): a task inside its TTL, a service with a
    /// future lease deadline. Capacity (§4.1 step 7) also counts suspended services
    /// ([`SessionData::counts_until`]).
    pub fn is_live(&self, started_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        if self.status != "active" && self.status != "suspended" {
            return false;
        }
        if self.is_service() {
            self.heartbeat_deadline_at.is_some_and(|d| d > now)
        } else {
            self.ttl_deadline(started_at).is_none_or(|d| d > now)
        }
    }

    /// Until when the Session counts against capacity (§4.1 step 7): `None` once it has
    /// ended; `Some(None)` while it lasts (a suspended service, a task without a TTL);
    /// `Some(Some(t))` until `t` unless renewed (a task's TTL, an active service's lease;
    /// an active service without a deadline never counts). A TTL past
    /// [`COUNTS_FOREVER_TTL`] counts while the Session lasts.
    pub fn counts_until(&self, created_at: DateTime<Utc>) -> Option<Option<DateTime<Utc>>> {
        if self.status != "active" && self.status != "suspended" {
            return None;
        }
        if self.is_service() {
            return Some(match self.status.as_str() {
                "suspended" => None,
                _ => Some(self.heartbeat_deadline_at.unwrap_or(DateTime::UNIX_EPOCH)),
            });
        }
        let until = self
            .ttl_seconds
            .filter(|t| *t < COUNTS_FOREVER_TTL)
            .and_then(|t| chrono::Duration::try_seconds(t as i64))
            .and_then(|d| self.started_at.unwrap_or(created_at).checked_add_signed(d));
        Some(until)
    }

    /// When a task's TTL runs out.
    pub fn ttl_deadline(&self, started_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.started_at.unwrap_or(started_at);
        self.ttl_seconds
            .map(|t| start + chrono::Duration::seconds(t.min(i64::MAX as u64) as i64))
    }

    /// Suspended (§12.1); `None` unless active.
    pub fn suspended(&self, reason: &str) -> Option<SessionData> {
        if self.status != "active" {
            return None;
        }
        let mut next = self.clone();
        next.status = "suspended".into();
        next.suspension_reason = Some(reason.to_owned());
        Some(next)
    }

    /// Resumed (§12.2): services get a fresh deadline; `None` unless suspended.
    pub fn resumed(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Option<SessionData> {
        if self.status != "suspended" {
            return None;
        }
        let mut next = self.clone();
        next.status = "active".into();
        next.suspension_reason = None;
        if next.is_service() {
            next.heartbeat_deadline_at = Some(now + lease);
        }
        Some(next)
    }

    /// A new lease generation (§5.3): fences every earlier holder.
    pub fn leased(&self, now: DateTime<Utc>, lease: chrono::Duration) -> SessionData {
        let mut next = self.clone();
        next.lease_generation += 1;
        next.last_heartbeat_at = Some(now);
        next.heartbeat_deadline_at = Some(now + lease);
        next.last_active_at = now;
        next
    }

    /// A heartbeat (§5.4): extends the deadline only.
    pub fn beat(&self, now: DateTime<Utc>, lease: chrono::Duration) -> SessionData {
        let mut next = self.clone();
        next.last_heartbeat_at = Some(now);
        next.heartbeat_deadline_at = Some(now + lease);
        next.last_active_at = now;
        next
    }

    /// The session terminated at `at`; `None` unless it is active or suspended.
    pub fn terminated(&self, at: DateTime<Utc>, reason: &str) -> Option<SessionData> {
        if self.status != "active" && self.status != "suspended" {
            return None;
        }
        let mut next = self.clone();
        next.status = "terminated".into();
        next.terminated_at = Some(at);
        next.termination_reason = Some(reason.to_owned());
        Some(next)
    }

    /// The root of a TTL sweep: `expired` (reason `ttl`); `None` unless active or suspended.
    pub fn expired(&self, at: DateTime<Utc>) -> Option<SessionData> {
        let mut next = self.terminated(at, "ttl")?;
        next.status = "expired".into();
        Some(next)
    }
}

pub const SESSION_STATUSES: [&str; 4] = ["active", "suspended", "terminated", "expired"];
pub const LIFECYCLES: [&str; 2] = ["task", "service"];
pub const LABEL_MAX_CHARS: usize = 64;

/// An approval hold (formerly "step-up challenge"): STS creates it when a mint is allowed
/// but gated by an approval tier; it releases at most one mandate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalData {
    /// The authority record the hold belongs to (`session_id` on the wire).
    pub session_id: String,
    pub principal_id: String,
    pub application_id: Option<String>,
    pub approval_type: String,
    pub tier: String,
    /// `operator` | `subject` | `any`.
    pub approver_class: String,
    pub privacy_mode: String,
    pub subject_anchor: Option<String>,
    /// Hex request hash the agent printed.
    pub binding: String,
    pub metadata_json: Value,
    pub decision_reason: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub satisfied_at: Option<DateTime<Utc>>,
    pub rejected_at: Option<DateTime<Utc>>,
    pub consumed_at: Option<DateTime<Utc>>,
    pub approver_subject_id: Option<String>,
    pub principal_federated: bool,
    /// Labels of the requesting agent's session, copied into the decision's audit frame.
    #[serde(default)]
    pub agent_labels: Vec<String>,
    /// The authority record the consuming mint created: a lost answer is re-issued for it
    /// within [`REISSUE_WINDOW_SECS`] of consumption (sts.md §7.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_record_id: Option<String>,
    /// A Federated user's decision: the approver's authority record (`sid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_session_id: Option<String>,
}

/// How long after consumption the same binding re-issues a lost answer (sts.md §7.4).
pub const REISSUE_WINDOW_SECS: i64 = 120;

pub const APPROVAL_STATES: [&str; 5] = ["pending", "approved", "rejected", "expired", "consumed"];
pub const REASON_MAX_CHARS: usize = 500;

/// An operator's decision on a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    /// The state a decided hold reads, and the audit frame's `decision`.
    pub fn state(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
        }
    }
}

/// Why a hold cannot take an operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionRefused {
    /// Not pending: carries the current state.
    NotDecidable(&'static str),
    /// Pending, but reserved for the subject's own decision.
    SubjectOnly,
    /// Pending, but reserved for an operator's decision.
    OperatorOnly,
}

impl ApprovalData {
    /// §15 precedence: consumed > rejected > expired > approved > pending.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.consumed_at.is_some() {
            "consumed"
        } else if self.rejected_at.is_some() {
            "rejected"
        } else if self.expires_at <= now {
            "expired"
        } else if self.satisfied_at.is_some() {
            "approved"
        } else {
            "pending"
        }
    }

    /// The hold after a mint released by it consumed it; only an approved hold can be.
    pub fn consumed(
        &self,
        record_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ApprovalData, &'static str> {
        match self.state(now) {
            "approved" => {
                let mut next = self.clone();
                next.consumed_at = Some(now);
                next.consumed_record_id = Some(record_id.to_owned());
                Ok(next)
            }
            other => Err(other),
        }
    }

    /// Whether a consumed hold still re-issues a lost answer at `now`.
    pub fn reissues(&self, now: DateTime<Utc>) -> bool {
        self.consumed_record_id.is_some()
            && self
                .consumed_at
                .is_some_and(|at| now - at <= chrono::Duration::seconds(REISSUE_WINDOW_SECS))
    }

    /// The hold after a Federated user's decision (sts.md §7.3): pending, unexpired, class
    /// `subject` or `any`. `approver` is the recorded form (`subject:<sub>`,
    /// `subject:pseudonym:<hex>` or `subject:redacted`).
    pub fn decided_by_subject(
        &self,
        decision: Decision,
        approver: &str,
        approver_session: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ApprovalData, DecisionRefused> {
        if self.approver_class == "operator" {
            return Err(DecisionRefused::OperatorOnly);
        }
        let state = self.state(now);
        if state != "pending" {
            return Err(DecisionRefused::NotDecidable(state));
        }
        let mut next = self.clone();
        match decision {
            Decision::Approve => next.satisfied_at = Some(now),
            Decision::Reject => next.rejected_at = Some(now),
        }
        next.approver_subject_id = Some(approver.to_owned());
        next.approver_session_id = Some(approver_session.to_owned());
        next.decision_reason = reason.map(str::to_owned);
        Ok(next)
    }

    /// The hold after an operator decision (a single guarded update: pending, unexpired,
    /// class `operator` or `any`).
    pub fn decided(
        &self,
        decision: Decision,
        approver: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ApprovalData, DecisionRefused> {
        let state = self.state(now);
        if state != "pending" {
            return Err(DecisionRefused::NotDecidable(state));
        }
        if self.approver_class == "subject" {
            return Err(DecisionRefused::SubjectOnly);
        }
        let mut next = self.clone();
        match decision {
            Decision::Approve => next.satisfied_at = Some(now),
            Decision::Reject => next.rejected_at = Some(now),
        }
        next.approver_subject_id = Some(approver.to_owned());
        next.decision_reason = reason.map(str::to_owned);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogCommand, CatalogEvent, EntityData, Stamp};
    use crate::given::{given, CatalogAggregate};
    use chrono::Duration;

    fn hold(class: &str, now: DateTime<Utc>) -> ApprovalData {
        ApprovalData {
            session_id: "ar".into(),
            principal_id: "p".into(),
            application_id: None,
            approval_type: "human_approval".into(),
            tier: "t1".into(),
            approver_class: class.into(),
            privacy_mode: "standard".into(),
            subject_anchor: None,
            binding: "ab".into(),
            metadata_json: Value::Null,
            decision_reason: None,
            expires_at: now + Duration::minutes(5),
            satisfied_at: None,
            rejected_at: None,
            consumed_at: None,
            approver_subject_id: None,
            principal_federated: false,
            agent_labels: Vec::new(),
            consumed_record_id: None,
            approver_session_id: None,
        }
    }

    #[test]
    fn a_session_counts_while_live_and_until_its_ttl_or_lease() {
        let created = Utc::now();
        let task = SessionData {
            status: "active".into(),
            lifecycle: "task".into(),
            ttl_seconds: Some(60),
            ..Default::default()
        };
        assert_eq!(
            task.counts_until(created),
            Some(Some(created + Duration::seconds(60)))
        );
        let started = created + Duration::seconds(5);
        let restarted = SessionData {
            started_at: Some(started),
            ..task.clone()
        };
        assert_eq!(
            restarted.counts_until(created),
            Some(Some(started + Duration::seconds(60)))
        );
        let endless = SessionData {
            ttl_seconds: None,
            ..task.clone()
        };
        assert_eq!(endless.counts_until(created), Some(None));
        let huge = SessionData {
            ttl_seconds: Some(u64::MAX),
            ..task.clone()
        };
        assert_eq!(
            huge.counts_until(created),
            Some(None),
            "no overflow, no panic"
        );
        let suspended_task = SessionData {
            status: "suspended".into(),
            ..task.clone()
        };
        assert_eq!(
            suspended_task.counts_until(created),
            Some(Some(created + Duration::seconds(60)))
        );
        for ended in ["terminated", "expired"] {
            let s = SessionData {
                status: ended.into(),
                ..task.clone()
            };
            assert_eq!(s.counts_until(created), None);
        }

        let deadline = created + Duration::seconds(30);
        let service = SessionData {
            status: "active".into(),
            lifecycle: "service".into(),
            heartbeat_deadline_at: Some(deadline),
            ..Default::default()
        };
        assert_eq!(service.counts_until(created), Some(Some(deadline)));
        let paused = SessionData {
            status: "suspended".into(),
            ..service.clone()
        };
        assert_eq!(
            paused.counts_until(created),
            Some(None),
            "suspended services count"
        );
        let unleased = SessionData {
            heartbeat_deadline_at: None,
            ..service.clone()
        };
        assert_eq!(
            unleased.counts_until(created),
            Some(Some(DateTime::UNIX_EPOCH)),
            "an active service without a deadline never counts"
        );
    }

    #[test]
    fn state_precedence() {
        let now = Utc::now();
        let mut h = hold("operator", now);
        assert_eq!(h.state(now), "pending");
        h.satisfied_at = Some(now);
        assert_eq!(h.state(now), "approved");
        assert_eq!(h.state(now + Duration::minutes(6)), "expired");
        h.rejected_at = Some(now);
        assert_eq!(h.state(now + Duration::minutes(6)), "rejected");
        h.consumed_at = Some(now);
        assert_eq!(h.state(now), "consumed");
    }

    #[test]
    fn only_pending_operator_holds_take_a_decision() {
        let now = Utc::now();
        let h = hold("any", now);
        let approved = h
            .decided(Decision::Approve, "admin:t", Some("ok"), now)
            .unwrap();
        assert_eq!(approved.state(now), "approved");
        assert_eq!(approved.approver_subject_id.as_deref(), Some("admin:t"));
        assert_eq!(
            approved.decided(Decision::Reject, "admin:t", None, now),
            Err(DecisionRefused::NotDecidable("approved"))
        );
        assert_eq!(
            hold("subject", now).decided(Decision::Approve, "admin:t", None, now),
            Err(DecisionRefused::SubjectOnly)
        );
        let later = now + Duration::minutes(10);
        assert_eq!(
            hold("subject", now).decided(Decision::Reject, "admin:t", None, later),
            Err(DecisionRefused::NotDecidable("expired"))
        );
    }

    #[test]
    fn records_revoke_and_expire_once() {
        let now = Utc::now();
        let r = AuthorityRecordData {
            record_type: "user".into(),
            subject_id: "u".into(),
            application_id: None,
            federated_user_issuer: None,
            parent_id: None,
            status: "active".into(),
            expires_at: now + Duration::minutes(1),
            authenticated_at: now,
            revoked_at: None,
            revoked_reason: None,
            revoked_by_grant: None,
        };
        assert!(r.is_active(now));
        assert_eq!(r.effective_status(now + Duration::minutes(2)), "expired");
        assert!(r.expired(now).is_none());
        let x = r.expired(now + Duration::minutes(2)).unwrap();
        assert_eq!(x.status, "expired");
        assert!(x.revoked(now, "grant_revoked", None).is_none());
        let v = r.revoked(now, "grant_revoked", Some("g")).unwrap();
        assert_eq!(v.revoked_by_grant.as_deref(), Some("g"));
        assert!(v.revoked(now, "again", None).is_none());
    }

    /// An operator's decision is one state-carrying replace of the hold; deciding again on
    /// the decided hold is refused by the data rule before any event is produced.
    #[test]
    fn a_decision_is_one_replace_of_the_hold() {
        let now = Utc::now();
        let stamp = Stamp {
            by: "admin:t".into(),
            via_operator: false,
        };
        let created = given::<CatalogAggregate>([]).and(
            &CatalogCommand::Create {
                zone_id: "z".into(),
                data: EntityData::Approval(hold("operator", now)),
            },
            &stamp,
        );
        let approved = hold("operator", now)
            .decided(Decision::Approve, "admin:t", None, now)
            .unwrap();
        let replace = CatalogCommand::Replace {
            data: EntityData::Approval(approved.clone()),
            changed_fields: vec!["satisfied_at".into()],
            secret_rotated: false,
        };
        let (history, events) = created.when(&replace, &stamp).events();
        let [CatalogEvent::Updated(u)] = &events[..] else {
            panic!("one update: {events:?}")
        };
        assert_eq!(u.changed_fields, ["satisfied_at"]);
        let after = history.and(&replace, &stamp);
        let EntityData::Approval(h) = &after.state().unwrap().data else {
            panic!("an approval hold")
        };
        assert_eq!(h.state(now), "approved");
        assert_eq!(
            h.decided(Decision::Reject, "admin:t", None, now),
            Err(DecisionRefused::NotDecidable("approved"))
        );
    }
}
