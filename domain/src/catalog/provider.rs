//! Providers (management-api.md §7): what credential the Gateway attaches upstream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::validation::has_prefix_ci;

pub const RESERVED_IDENTIFIER_PREFIX: &str = "provider://caracal-sys-";

/// The synthetic "no credential" provider every zone's control resource is bound to.
pub fn none_provider_id(zone_id: &str) -> String {
    format!("provider-none-{zone_id}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderData {
    pub name: String,
    pub identifier: String,
    pub kind: String,
    /// The public configuration (JSON object text, resolved defaults included).
    pub config_json: String,
    /// Sorted names of the sealed keys.
    pub secret_config_keys: Vec<String>,
    /// AES-256-GCM envelope of the JSON object of sealed keys.
    pub sealed_secrets: Option<String>,
    pub connectivity_failed_at: Option<DateTime<Utc>>,
}

/// `^provider://[a-z0-9]+(?:-[a-z0-9]+)*$`.
pub fn is_identifier(s: &str) -> bool {
    let Some(slug) = s.strip_prefix("provider://") else {
        return false;
    };
    !slug.is_empty()
        && slug.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

pub fn is_reserved_identifier(s: &str) -> bool {
    has_prefix_ci(s, RESERVED_IDENTIFIER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_shape() {
        assert!(is_identifier("provider://github"));
        assert!(is_identifier("provider://git-hub-2"));
        assert!(!is_identifier("provider://Git"));
        assert!(!is_identifier("provider://a--b"));
        assert!(!is_identifier("provider://-a"));
        assert!(!is_identifier("github"));
        assert!(is_reserved_identifier("provider://caracal-sys-x"));
    }
}
