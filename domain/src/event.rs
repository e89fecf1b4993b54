//! The event catalogue shared by every aggregate, and the metadata `evolve` receives.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::admin_token::AdminTokenEvent;
use crate::zone::ZoneEvent;

/// The kinds of aggregate whose events live in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Zone,
    AdminToken,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Zone => "zone",
            AggregateKind::AdminToken => "admin_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zone" => Some(AggregateKind::Zone),
            "admin_token" => Some(AggregateKind::AdminToken),
            _ => None,
        }
    }

    /// Zone-less aggregates live in the system stream; everything else in its zone's stream.
    pub fn is_zone_less(self) -> bool {
        matches!(self, AggregateKind::Zone | AggregateKind::AdminToken)
    }
}

/// Every domain event, across aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Zone(ZoneEvent),
    AdminToken(AdminTokenEvent),
}

impl Event {
    /// The dotted event type recorded in the envelope (e.g. `zone.created`).
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Zone(e) => e.event_type(),
            Event::AdminToken(e) => e.event_type(),
        }
    }

    pub fn aggregate_kind(&self) -> AggregateKind {
        match self {
            Event::Zone(_) => AggregateKind::Zone,
            Event::AdminToken(_) => AggregateKind::AdminToken,
        }
    }
}

/// What `evolve` knows about an event besides its payload: taken from the signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's own id (UUIDv7), so read models can point back into the log.
    pub event_id: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event (1 for the first event).
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
}
