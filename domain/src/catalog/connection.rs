//! Provider connections (management-api.md §13): stored upstream accounts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{reservation_value, CONNECTION_KEY};

/// The subject a connection serves when none is named: STS falls back to it.
pub const SHARED_SUBJECT: &str = "caracal:shared";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionData {
    pub subject_id: String,
    pub provider_id: String,
    /// `active` | `revoked` | `expired`.
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// AES-256-GCM envelope of `{"access_token","refresh_token"?}`.
    pub sealed_tokens: Option<String>,
    pub renewable: bool,
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Bumped each time the stored refresh token is replaced.
    pub refresh_token_version: u64,
}

/// The reservation key of the active connection of `(subject, provider)`.
pub fn key(subject_id: &str, provider_id: &str) -> String {
    reservation_value(&format!("{subject_id}\n{provider_id}"))
}

impl ConnectionData {
    pub fn key_reservation(&self) -> Option<(&'static str, String)> {
        (self.status == "active")
            .then(|| (CONNECTION_KEY, key(&self.subject_id, &self.provider_id)))
    }
}
