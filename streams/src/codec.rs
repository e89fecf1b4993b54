//! Domain events ↔ envelope payloads, and the upcasting hook.
//!
//! Each event type has a current schema version. On read, a payload recorded under an
//! older version is passed through the registered upcasters (`(type, from_version)` →
//! bytes of `from_version + 1`) until it reaches the current one. Stored events are never
//! rewritten.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serval_domain::admin_audit::AdminAuditEvent;
use serval_domain::admin_token::AdminTokenEvent;
use serval_domain::audit::AuditEvent;
use serval_domain::catalog::{CatalogEvent, CatalogKind};
use serval_domain::delegation::DelegationEvent;
use serval_domain::policy::policies::PolicyEvent;
use serval_domain::policy::policy_sets::PolicySetEvent;
use serval_domain::zone::ZoneEvent;
use serval_domain::Event;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} schema version {version} is newer than this build understands")]
    FutureVersion { event_type: String, version: u16 },
    #[error("no upcaster for {event_type} v{version}")]
    MissingUpcaster { event_type: String, version: u16 },
    #[error("upcasting {event_type} v{version} failed: {reason}")]
    Upcast {
        event_type: String,
        version: u16,
        reason: String,
    },
    #[error("cannot encode payload: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Current payload schema version of each event type.
pub fn current_version(event_type: &str) -> Option<u16> {
    match event_type {
        ZoneEvent::CREATED | ZoneEvent::UPDATED | ZoneEvent::ARCHIVED => Some(1),
        AdminTokenEvent::CREATED | AdminTokenEvent::REVOKED => Some(1),
        PolicyEvent::CREATED | PolicyEvent::VERSION_ADDED | PolicyEvent::ARCHIVED => Some(1),
        PolicySetEvent::CREATED
        | PolicySetEvent::VERSION_ADDED
        | PolicySetEvent::ACTIVATED
        | PolicySetEvent::ARCHIVED => Some(1),
        AdminAuditEvent::RECORDED => Some(1),
        AuditEvent::INGESTED => Some(1),
        t if catalog_kind(t).is_some() => Some(1),
        t if DelegationEvent::TYPES.contains(&t) => Some(1),
        _ => None,
    }
}

fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(v)?)
}

fn from_slice<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(b)?)
}

/// Encodes a domain event: `(event_type, schema_version, payload)`.
pub fn encode(event: &Event) -> Result<(&'static str, u16, Vec<u8>), CodecError> {
    let event_type = event.event_type();
    let payload = match event {
        Event::Zone(ZoneEvent::Created(p)) => to_vec(p)?,
        Event::Zone(ZoneEvent::Updated(p)) => to_vec(p)?,
        Event::Zone(ZoneEvent::Archived(p)) => to_vec(p)?,
        Event::AdminToken(AdminTokenEvent::Created(p)) => to_vec(p)?,
        Event::AdminToken(AdminTokenEvent::Revoked(p)) => to_vec(p)?,
        Event::Policy(PolicyEvent::Created(p)) => to_vec(p)?,
        Event::Policy(PolicyEvent::VersionAdded(p)) => to_vec(p)?,
        Event::Policy(PolicyEvent::Archived(p)) => to_vec(p)?,
        Event::PolicySet(PolicySetEvent::Created(p)) => to_vec(p)?,
        Event::PolicySet(PolicySetEvent::VersionAdded(p)) => to_vec(p)?,
        Event::PolicySet(PolicySetEvent::Activated(p)) => to_vec(p)?,
        Event::PolicySet(PolicySetEvent::Archived(p)) => to_vec(p)?,
        Event::Catalog(CatalogEvent::Created(p)) => to_vec(p)?,
        Event::Catalog(CatalogEvent::Updated(p)) => to_vec(p)?,
        Event::Catalog(CatalogEvent::Archived(p)) => to_vec(p)?,
        Event::Catalog(CatalogEvent::SecretRevealed(p)) => to_vec(p)?,
        Event::AdminAudit(AdminAuditEvent::Recorded(p)) => to_vec(p)?,
        Event::Audit(AuditEvent::Ingested(p)) => to_vec(p)?,
        Event::Delegation(DelegationEvent::EdgeCreated(p)) => to_vec(p)?,
        Event::Delegation(DelegationEvent::EdgesRevoked(p)) => to_vec(p)?,
        Event::Delegation(DelegationEvent::EdgesExpired(p)) => to_vec(p)?,
    };
    let version =
        current_version(event_type).ok_or_else(|| CodecError::UnknownType(event_type.into()))?;
    Ok((event_type, version, payload))
}

/// An upcaster turns a payload of `from_version` into one of `from_version + 1`.
pub type UpcastFn = fn(&[u8]) -> Result<Vec<u8>, String>;

#[derive(Default, Clone)]
pub struct Upcasters {
    table: HashMap<(String, u16), UpcastFn>,
}

impl Upcasters {
    pub fn register(&mut self, event_type: &str, from_version: u16, f: UpcastFn) -> &mut Self {
        self.table.insert((event_type.to_owned(), from_version), f);
        self
    }

    /// Decodes a payload recorded as `event_type` v`version`, upcasting it first if needed.
    pub fn decode(
        &self,
        event_type: &str,
        version: u16,
        payload: &[u8],
    ) -> Result<Event, CodecError> {
        let current = current_version(event_type)
            .ok_or_else(|| CodecError::UnknownType(event_type.into()))?;
        if version > current {
            return Err(CodecError::FutureVersion {
                event_type: event_type.into(),
                version,
            });
        }
        let mut bytes = std::borrow::Cow::Borrowed(payload);
        for v in version..current {
            let f = self.table.get(&(event_type.to_owned(), v)).ok_or_else(|| {
                CodecError::MissingUpcaster {
                    event_type: event_type.into(),
                    version: v,
                }
            })?;
            bytes = std::borrow::Cow::Owned(f(&bytes).map_err(|reason| CodecError::Upcast {
                event_type: event_type.into(),
                version: v,
                reason,
            })?);
        }
        decode_current(event_type, &bytes)
    }
}

fn decode_current(event_type: &str, b: &[u8]) -> Result<Event, CodecError> {
    Ok(match event_type {
        ZoneEvent::CREATED => Event::Zone(ZoneEvent::Created(from_slice(b)?)),
        ZoneEvent::UPDATED => Event::Zone(ZoneEvent::Updated(from_slice(b)?)),
        ZoneEvent::ARCHIVED => Event::Zone(ZoneEvent::Archived(from_slice(b)?)),
        AdminTokenEvent::CREATED => Event::AdminToken(AdminTokenEvent::Created(from_slice(b)?)),
        AdminTokenEvent::REVOKED => Event::AdminToken(AdminTokenEvent::Revoked(from_slice(b)?)),
        PolicyEvent::CREATED => Event::Policy(PolicyEvent::Created(from_slice(b)?)),
        PolicyEvent::VERSION_ADDED => Event::Policy(PolicyEvent::VersionAdded(from_slice(b)?)),
        PolicyEvent::ARCHIVED => Event::Policy(PolicyEvent::Archived(from_slice(b)?)),
        PolicySetEvent::CREATED => Event::PolicySet(PolicySetEvent::Created(from_slice(b)?)),
        PolicySetEvent::VERSION_ADDED => {
            Event::PolicySet(PolicySetEvent::VersionAdded(from_slice(b)?))
        }
        PolicySetEvent::ACTIVATED => Event::PolicySet(PolicySetEvent::Activated(from_slice(b)?)),
        PolicySetEvent::ARCHIVED => Event::PolicySet(PolicySetEvent::Archived(from_slice(b)?)),
        AdminAuditEvent::RECORDED => Event::AdminAudit(AdminAuditEvent::Recorded(from_slice(b)?)),
        AuditEvent::INGESTED => Event::Audit(AuditEvent::Ingested(from_slice(b)?)),
        "delegation.edge_created" => {
            Event::Delegation(DelegationEvent::EdgeCreated(from_slice(b)?))
        }
        "delegation.edges_revoked" => {
            Event::Delegation(DelegationEvent::EdgesRevoked(from_slice(b)?))
        }
        "delegation.edges_expired" => {
            Event::Delegation(DelegationEvent::EdgesExpired(from_slice(b)?))
        }
        other => return decode_catalog(other, b),
    })
}

/// The catalog kind whose event types include `event_type`, and the type's position
/// (created, updated, archived, secret revealed).
fn catalog_kind(event_type: &str) -> Option<(CatalogKind, usize)> {
    CatalogKind::ALL.into_iter().find_map(|k| {
        k.event_types()
            .iter()
            .position(|t| *t == event_type)
            .map(|i| (k, i))
    })
}

fn decode_catalog(event_type: &str, b: &[u8]) -> Result<Event, CodecError> {
    let Some((_, position)) = catalog_kind(event_type) else {
        return Err(CodecError::UnknownType(event_type.into()));
    };
    let event = match position {
        0 => CatalogEvent::Created(from_slice(b)?),
        1 => CatalogEvent::Updated(from_slice(b)?),
        2 => CatalogEvent::Archived(from_slice(b)?),
        _ => CatalogEvent::SecretRevealed(from_slice(b)?),
    };
    // The payload names its kind; it must be the one the event type says.
    if event.event_type() != event_type {
        return Err(CodecError::UnknownType(format!(
            "{event_type} carrying a {} payload",
            event.kind().as_str()
        )));
    }
    Ok(Event::Catalog(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serval_domain::zone::ZoneArchived;

    #[test]
    fn events_round_trip() {
        let e = Event::Zone(ZoneEvent::Archived(ZoneArchived {
            archived_by: "admin:x".into(),
        }));
        let (t, v, p) = encode(&e).unwrap();
        assert_eq!(Upcasters::default().decode(t, v, &p).unwrap(), e);
    }

    #[test]
    fn older_payloads_go_through_the_upcaster_chain() {
        // Pretend zone.archived v0 stored the actor under another name.
        #[derive(serde::Serialize, serde::Deserialize)]
        struct V0 {
            by: String,
        }
        fn v0_to_v1(b: &[u8]) -> Result<Vec<u8>, String> {
            let old: V0 = rmp_serde::from_slice(b).map_err(|e| e.to_string())?;
            rmp_serde::to_vec_named(&ZoneArchived {
                archived_by: old.by,
            })
            .map_err(|e| e.to_string())
        }
        let stored = rmp_serde::to_vec_named(&V0 {
            by: "admin:old".into(),
        })
        .unwrap();
        let none = Upcasters::default();
        assert!(matches!(
            none.decode(ZoneEvent::ARCHIVED, 0, &stored),
            Err(CodecError::MissingUpcaster { .. })
        ));
        let mut up = Upcasters::default();
        up.register(ZoneEvent::ARCHIVED, 0, v0_to_v1);
        let e = up.decode(ZoneEvent::ARCHIVED, 0, &stored).unwrap();
        assert_eq!(
            e,
            Event::Zone(ZoneEvent::Archived(ZoneArchived {
                archived_by: "admin:old".into()
            }))
        );
        assert!(matches!(
            up.decode(ZoneEvent::ARCHIVED, 9, &stored),
            Err(CodecError::FutureVersion { .. })
        ));
    }
}
