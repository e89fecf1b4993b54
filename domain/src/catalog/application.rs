//! Applications (management-api.md §6): registered client identities.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{reservation_value, APPLICATION_NAME};
use crate::validation::has_prefix_ci;

pub const NAME_MAX_CHARS: usize = 200;
pub const RESERVED_NAME_PREFIX: &str = "caracal.sys/";
pub const MAX_TRAITS: usize = 64;
pub const TRAIT_MAX_CHARS: usize = 128;
pub const DCR_MAX_EXPIRES_IN: i64 = 3600;
pub const DCR_LIVE_LIMIT: i64 = 1000;
/// Caller-supplied client secrets (PATCH) must be at least this long.
pub const CLIENT_SECRET_MIN_CHARS: usize = 32;
/// The Control scopes a `control:scope:<scope>` trait may name.
pub const CONTROL_SCOPES: [&str; 4] = [
    "control:read",
    "control:write",
    "control:invoke",
    "control:admin",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMethod {
    Managed,
    Dcr,
}

impl RegistrationMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMethod::Managed => "managed",
            RegistrationMethod::Dcr => "dcr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationData {
    pub name: String,
    pub registration_method: RegistrationMethod,
    pub traits: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `argon2id$<salt b64>$<hash b64>` — the only form STS verifies.
    pub secret_hash: Option<String>,
    /// The custody copy (AES-256-GCM envelope) of a managed secret, for the audited reveal.
    pub sealed_secret: Option<String>,
    /// Public keys (a JWK Set, compact JSON) whose signed client assertions (RFC 7523) the
    /// STS accepts in place of the secret. Added after 1.0: absent in older events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

impl ApplicationData {
    /// Managed names are unique case-insensitively among the zone's live managed apps.
    pub fn name_reservation(&self) -> Option<(&'static str, String)> {
        match self.registration_method {
            RegistrationMethod::Managed => Some((
                APPLICATION_NAME,
                reservation_value(&self.name.to_lowercase()),
            )),
            RegistrationMethod::Dcr => None,
        }
    }

    /// Live for authentication: not expired at `now` (archival is checked by the caller).
    pub fn is_unexpired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplicationError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the caracal.sys namespace is reserved")]
    ReservedNamespace,
    #[error("{1}")]
    Trait(TraitError, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraitError {
    CountExceeded,
    Invalid,
    Duplicate,
    Forbidden,
}

impl TraitError {
    pub fn code(self) -> &'static str {
        match self {
            TraitError::CountExceeded => "trait_count_exceeded",
            TraitError::Invalid => "trait_invalid",
            TraitError::Duplicate => "trait_duplicate",
            TraitError::Forbidden => "trait_forbidden",
        }
    }
}

/// Trims and checks an application name (1–200 characters), and the reserved namespace.
pub fn normalize_name(raw: &str, is_bootstrap: bool) -> Result<String, ApplicationError> {
    let name = raw.trim();
    let n = name.chars().count();
    if n == 0 || n > NAME_MAX_CHARS {
        return Err(ApplicationError::Invalid("name must be 1-200 characters"));
    }
    if has_prefix_ci(name, RESERVED_NAME_PREFIX) && !is_bootstrap {
        return Err(ApplicationError::ReservedNamespace);
    }
    Ok(name.to_owned())
}

fn trait_err(kind: TraitError, msg: impl Into<String>) -> ApplicationError {
    ApplicationError::Trait(kind, msg.into())
}

fn is_trait_shape(t: &str) -> bool {
    let mut chars = t.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Checks traits (§6 rules). `global` = the caller holds a global token, required for the
/// `control` and `caracal.sys` namespaces.
pub fn validate_traits(traits: &[String], global: bool) -> Result<(), ApplicationError> {
    if traits.len() > MAX_TRAITS {
        return Err(trait_err(
            TraitError::CountExceeded,
            "at most 64 traits are allowed",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let (mut max_ttl, mut expires) = (0, 0);
    for t in traits {
        let n = t.chars().count();
        if n == 0 || n > TRAIT_MAX_CHARS || !is_trait_shape(t) {
            return Err(trait_err(
                TraitError::Invalid,
                format!("trait {t:?} must be 1-128 characters matching ^[A-Za-z][A-Za-z0-9._:-]*$"),
            ));
        }
        if !seen.insert(t.as_str()) {
            return Err(trait_err(
                TraitError::Duplicate,
                format!("trait {t:?} is listed twice"),
            ));
        }
        let namespace = t.split(':').next().unwrap_or_default();
        if namespace == "control" || namespace == "caracal.sys" {
            if !global {
                return Err(trait_err(
                    TraitError::Forbidden,
                    format!("the {namespace} trait namespace needs a global admin token"),
                ));
            }
            if namespace == "control" {
                check_control_trait(t, &mut max_ttl, &mut expires)?;
            }
        }
    }
    Ok(())
}

fn check_control_trait(
    t: &str,
    max_ttl: &mut u32,
    expires: &mut u32,
) -> Result<(), ApplicationError> {
    let invalid = || trait_err(TraitError::Invalid, format!("unknown control trait {t:?}"));
    if t == "control:invoke" {
        return Ok(());
    }
    if let Some(scope) = t.strip_prefix("control:scope:") {
        return if CONTROL_SCOPES.contains(&scope) {
            Ok(())
        } else {
            Err(invalid())
        };
    }
    if let Some(ttl) = t.strip_prefix("control:max-ttl:") {
        *max_ttl += 1;
        let ok = ttl.parse::<u32>().is_ok_and(|v| (60..=900).contains(&v)) && *max_ttl == 1;
        return if ok { Ok(()) } else { Err(invalid()) };
    }
    if let Some(ts) = t.strip_prefix("control:expires:") {
        *expires += 1;
        let ok = DateTime::parse_from_rfc3339(ts).is_ok() && *expires == 1;
        return if ok { Ok(()) } else { Err(invalid()) };
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(traits: &[&str], global: bool) -> Option<&'static str> {
        let v: Vec<String> = traits.iter().map(|s| s.to_string()).collect();
        match validate_traits(&v, global) {
            Ok(()) => None,
            Err(ApplicationError::Trait(k, _)) => Some(k.code()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn trait_rules() {
        assert_eq!(codes(&["team:billing", "tier.gold"], false), None);
        assert_eq!(codes(&["9lives"], false), Some("trait_invalid"));
        assert_eq!(codes(&["a", "a"], false), Some("trait_duplicate"));
        assert_eq!(codes(&["control:invoke"], false), Some("trait_forbidden"));
        assert_eq!(codes(&["caracal.sys:x"], false), Some("trait_forbidden"));
        assert_eq!(
            codes(&["control:invoke", "control:max-ttl:300"], true),
            None
        );
        assert_eq!(codes(&["control:max-ttl:30"], true), Some("trait_invalid"));
        assert_eq!(
            codes(&["control:max-ttl:300", "control:max-ttl:600"], true),
            Some("trait_invalid")
        );
        assert_eq!(codes(&["control:nope"], true), Some("trait_invalid"));
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(codes(&refs, false), Some("trait_count_exceeded"));
    }

    #[test]
    fn names_are_trimmed_and_the_namespace_is_reserved() {
        assert_eq!(normalize_name("  bot ", false).unwrap(), "bot");
        assert!(normalize_name("   ", false).is_err());
        assert_eq!(
            normalize_name("CARACAL.SYS/x", false),
            Err(ApplicationError::ReservedNamespace)
        );
        assert!(normalize_name("caracal.sys/x", true).is_ok());
    }
}
