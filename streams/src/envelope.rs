//! The event envelope (ARCHITECTURE.md §4), encoded as a MessagePack map.
//!
//! The signature covers the exact encoded bytes, which are stored verbatim in the log and
//! the archive: nothing is ever re-encoded before verification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7, unique per event; the deduplication key everywhere downstream.
    pub event_id: String,
    /// Dotted type, e.g. `zone.created`.
    pub event_type: String,
    /// Version of the payload's schema, for upcasting on read.
    pub schema_version: u16,
    pub zone_id: Option<String>,
    pub aggregate_kind: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event.
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
    /// `admin:<token-id>`, an application, a session, or `system`.
    pub actor: String,
    pub request_id: Option<String>,
    pub causation_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The domain event, itself a MessagePack map.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("cannot encode envelope: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl Envelope {
    /// What a domain `evolve` needs of this envelope.
    pub fn meta(&self) -> serval_domain::EventMeta {
        serval_domain::EventMeta {
            event_id: self.event_id.clone(),
            aggregate_id: self.aggregate_id.clone(),
            aggregate_version: self.aggregate_version,
            occurred_at: self.occurred_at,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}
