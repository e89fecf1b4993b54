//! Admin tokens (spec: management-api.md §3.1, §3.3, §17.5).
//!
//! The plaintext token never enters an event: only its SHA-256 digest does. Tokens are
//! 256-bit random values, so the digest is a sufficient verifier and lookup key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::actor::Actor;
use crate::event::EventMeta;

pub const NAME_MAX_CHARS: usize = 120;
/// `created_by` marker of the token seeded from `CARACAL_ADMIN_TOKEN`.
pub const BOOTSTRAP_MARKER: &str = "env-bootstrap";
pub const BOOTSTRAP_NAME: &str = "bootstrap";
/// Reservation kind of live token digests (keeps concurrent starts from seeding twice).
pub const DIGEST_RESERVATION: &str = "admin_token_digest";

/// The uniqueness reservations a token holds: its digest while it is live.
pub fn reservations(token: &AdminToken) -> Vec<(&'static str, String)> {
    match token.revoked_at {
        None => vec![(DIGEST_RESERVATION, token.token_sha256.clone())],
        Some(_) => Vec::new(),
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    Global,
    Zone,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Read,
    Write,
    Approve,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Global => "global",
            TokenScope::Zone => "zone",
        }
    }
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::Approve => "approve",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub zone_id: Option<String>,
    pub capability: Capability,
    /// Lowercase hex SHA-256 of the UTF-8 token.
    pub token_sha256: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: u64,
}

impl AdminToken {
    pub fn is_bootstrap(&self) -> bool {
        self.created_by == BOOTSTRAP_MARKER
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenCommand {
    Mint {
        name: String,
        scope: TokenScope,
        zone_id: Option<String>,
        capability: Capability,
        token_sha256: String,
        /// `admin:<minter>` or a seed marker such as [`BOOTSTRAP_MARKER`].
        created_by: String,
    },
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenCreated {
    pub name: String,
    pub scope: TokenScope,
    pub zone_id: Option<String>,
    pub capability: Capability,
    pub token_sha256: String,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenRevoked {
    pub revoked_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminTokenEvent {
    Created(AdminTokenCreated),
    Revoked(AdminTokenRevoked),
}

impl AdminTokenEvent {
    pub const CREATED: &'static str = "admin_token.created";
    pub const REVOKED: &'static str = "admin_token.revoked";

    pub fn event_type(&self) -> &'static str {
        match self {
            AdminTokenEvent::Created(_) => Self::CREATED,
            AdminTokenEvent::Revoked(_) => Self::REVOKED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdminTokenError {
    #[error("admin token not found")]
    NotFound,
    #[error("admin token already exists")]
    AlreadyExists,
    #[error("invalid admin token request: {0}")]
    Invalid(&'static str),
    #[error("zone_id is required for zone scope")]
    ZoneIdRequired,
    #[error("zone_id is not allowed for global scope")]
    ZoneIdNotAllowedForGlobal,
}

pub fn decide(
    state: Option<&AdminToken>,
    command: &AdminTokenCommand,
    actor: &Actor,
) -> Result<Vec<AdminTokenEvent>, AdminTokenError> {
    match command {
        AdminTokenCommand::Mint {
            name,
            scope,
            zone_id,
            capability,
            token_sha256,
            created_by,
        } => {
            if state.is_some() {
                return Err(AdminTokenError::AlreadyExists);
            }
            let n = name.chars().count();
            if n == 0 || n > NAME_MAX_CHARS {
                return Err(AdminTokenError::Invalid("name must be 1-120 characters"));
            }
            match (scope, zone_id) {
                (TokenScope::Zone, None) => return Err(AdminTokenError::ZoneIdRequired),
                (TokenScope::Global, Some(_)) => {
                    return Err(AdminTokenError::ZoneIdNotAllowedForGlobal)
                }
                _ => {}
            }
            if token_sha256.len() != 64 || !token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AdminTokenError::Invalid(
                    "token digest must be 64 hex characters",
                ));
            }
            Ok(vec![AdminTokenEvent::Created(AdminTokenCreated {
                name: name.clone(),
                scope: *scope,
                zone_id: zone_id.clone(),
                capability: *capability,
                token_sha256: token_sha256.to_ascii_lowercase(),
                created_by: created_by.clone(),
            })])
        }
        AdminTokenCommand::Revoke => match state {
            Some(t) if t.revoked_at.is_none() => {
                Ok(vec![AdminTokenEvent::Revoked(AdminTokenRevoked {
                    revoked_by: actor.id.clone(),
                })])
            }
            _ => Err(AdminTokenError::NotFound),
        },
    }
}

pub fn evolve(
    state: Option<AdminToken>,
    meta: &EventMeta,
    event: &AdminTokenEvent,
) -> Option<AdminToken> {
    match (state, event) {
        (None, AdminTokenEvent::Created(c)) => Some(AdminToken {
            id: meta.aggregate_id.clone(),
            name: c.name.clone(),
            scope: c.scope,
            zone_id: c.zone_id.clone(),
            capability: c.capability,
            token_sha256: c.token_sha256.clone(),
            created_by: c.created_by.clone(),
            created_at: meta.occurred_at,
            revoked_at: None,
            version: meta.aggregate_version,
        }),
        (Some(mut t), AdminTokenEvent::Revoked(_)) => {
            t.revoked_at.get_or_insert(meta.occurred_at);
            t.version = meta.aggregate_version;
            Some(t)
        }
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{given, AdminTokenAggregate, Given};

    fn mint(scope: TokenScope, zone: Option<&str>) -> AdminTokenCommand {
        AdminTokenCommand::Mint {
            name: "ci".into(),
            scope,
            zone_id: zone.map(str::to_owned),
            capability: Capability::Read,
            token_sha256: "ab".repeat(32),
            created_by: "admin:t0".into(),
        }
    }

    fn none() -> Given<AdminTokenAggregate> {
        given([])
    }

    #[test]
    fn zone_scope_needs_a_zone_and_global_forbids_one() {
        let a = Actor::system();
        none()
            .when(&mint(TokenScope::Zone, None), &a)
            .then_error(AdminTokenError::ZoneIdRequired);
        none()
            .when(&mint(TokenScope::Global, Some("z")), &a)
            .then_error(AdminTokenError::ZoneIdNotAllowedForGlobal);
        assert!(none()
            .when(&mint(TokenScope::Zone, Some("z")), &a)
            .result()
            .is_ok());
    }

    #[test]
    fn revoking_twice_is_not_found() {
        let a = Actor::system();
        none()
            .and(&mint(TokenScope::Global, None), &a)
            .and(&AdminTokenCommand::Revoke, &a)
            .when(&AdminTokenCommand::Revoke, &a)
            .then_error(AdminTokenError::NotFound);
    }
}
