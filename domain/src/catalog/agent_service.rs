//! A long-lived service registration (coordinator.md §3.2, §5.1): where a service Session's
//! application can be reached. One per (application, endpoint URL) in a zone, kept unique
//! by a reservation in the zone's slot.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reservation_value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentServiceData {
    pub application_id: String,
    pub endpoint_url: String,
    pub protocol_versions: Vec<String>,
    pub framework_name: Option<String>,
    pub framework_version: Option<String>,
    pub capabilities: Vec<String>,
    /// `starting` | `healthy` | `degraded` | `unhealthy`.
    pub health: String,
    pub metadata_json: Value,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

pub const HEALTH: [&str; 4] = ["starting", "healthy", "degraded", "unhealthy"];

/// Reservation kind: one registration per (application, endpoint).
pub const ENDPOINT: &str = "agent_service_endpoint";

pub fn endpoint_key(application_id: &str, endpoint_url: &str) -> String {
    reservation_value(&format!("{application_id}\n{endpoint_url}"))
}
