//! Grants (management-api.md §12): administrative lifecycle/revocation records.

use serde::{Deserialize, Serialize};

pub const MAX_SCOPES: usize = 64;
pub const SCOPE_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantData {
    pub application_id: String,
    pub user_id: String,
    pub resource_id: String,
    pub scopes: Vec<String>,
    /// `active` | `revoked` | `expired`.
    pub status: String,
}

/// `^[a-z0-9:_./-]+$`, at most 200 characters.
pub fn is_grant_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SCOPE_MAX_CHARS
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b':' | b'_' | b'.' | b'/' | b'-')
        })
}

/// Whether a grant stays within its resource: every granted scope is a resource scope.
pub fn within_resource(scopes: &[String], resource_scopes: &[String]) -> bool {
    scopes.iter().all(|s| resource_scopes.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_shape() {
        assert!(is_grant_scope("invoices:read"));
        assert!(is_grant_scope("a/b.c-d_e"));
        assert!(!is_grant_scope("Read"));
        assert!(!is_grant_scope(""));
        assert!(!is_grant_scope(&"a".repeat(201)));
    }
}
