//! Federated user issuers (management-api.md §17.2, sts.md §4.5): the OpenID issuers whose
//! id tokens a zone's applications may exchange for a user's session mandate.

use serde::{Deserialize, Serialize};

/// Reservation kind: one live row per issuer and zone.
pub const ISSUER: &str = "subject_issuer";
/// Live issuers a zone may register.
pub const MAX_ACTIVE: i64 = 20;
pub const ISSUER_MAX_CHARS: usize = 2048;
pub const JWKS_URL_MAX_CHARS: usize = 2048;
pub const AUDIENCE_MAX_CHARS: usize = 512;
/// Longest federated subject accepted (bytes).
pub const SUBJECT_MAX_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectIssuerData {
    /// The `iss` of its id tokens, matched byte for byte.
    pub issuer: String,
    /// HTTPS location of the issuer's signing keys.
    pub jwks_url: String,
    /// What an id token's `aud` must contain.
    pub audience: String,
}

/// sts.md §4.5: why a federated `sub` is refused (it is copied byte for byte into the
/// mandate, the authority record and the audit trail, so nothing that could disguise it
/// passes).
pub fn subject_refusal(sub: &str) -> Option<&'static str> {
    if sub.is_empty() {
        return Some("sub is empty");
    }
    if sub.len() > SUBJECT_MAX_BYTES {
        return Some("sub is too long");
    }
    if sub.starts_with("caracal:") {
        return Some("sub uses a reserved prefix");
    }
    if sub.contains('\u{FFFD}') {
        return Some("sub is not valid UTF-8");
    }
    if sub.chars().any(char::is_control) {
        return Some("sub contains control characters");
    }
    if sub
        .chars()
        .any(|c| ('\u{202A}'..='\u{202E}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c))
    {
        return Some("sub contains bidirectional overrides");
    }
    if sub.trim() != sub {
        return Some("sub has leading or trailing whitespace");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_subjects_that_could_disguise_themselves_are_refused() {
        assert_eq!(subject_refusal("alice@example.com"), None);
        assert_eq!(subject_refusal("ñandú 42"), None);
        for bad in [
            "",
            "caracal:admin",
            " alice",
            "alice\t",
            "al\u{0007}ice",
            "ali\u{202E}ce",
            "a\u{2066}b",
            "bad\u{FFFD}",
        ] {
            assert!(subject_refusal(bad).is_some(), "{bad:?}");
        }
        assert!(subject_refusal(&"a".repeat(513)).is_some());
        assert_eq!(subject_refusal(&"a".repeat(512)), None);
    }
}
