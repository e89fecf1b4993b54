//! Resources (management-api.md §8): protected targets with declared scopes and operations.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::validation::has_prefix_ci;

pub const NAME_MAX_CHARS: usize = 200;
pub const IDENTIFIER_MAX_CHARS: usize = 512;
pub const MAX_SCOPES: usize = 64;
pub const SCOPE_MAX_CHARS: usize = 200;
pub const MAX_OPERATIONS: usize = 256;
pub const RESERVED_IDENTIFIER_PREFIX: &str = "caracal-sys://";
pub const DEFAULT_MAX_PER_ZONE: i64 = 100_000;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub method: String,
    pub path: String,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    pub name: String,
    pub identifier: String,
    pub upstream_url: Option<String>,
    pub scopes: Vec<String>,
    pub credential_provider_id: Option<String>,
    pub operations: Vec<Operation>,
    /// `enforced` | `transport_uniform`.
    pub operation_enforcement: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    InvalidIdentifier(&'static str),
    #[error("operation method and path are required")]
    MethodAndPathRequired,
    #[error("operation path must start with /")]
    PathMustBeAbsolute,
    #[error("operation scope is not one of the resource's scopes")]
    ScopeNotInResource,
    #[error("operation listed twice")]
    Duplicate,
    #[error("the caracal.sys namespace is reserved")]
    ReservedNamespace,
}

impl ResourceError {
    pub fn code(&self) -> &'static str {
        match self {
            ResourceError::Invalid(_) => "invalid_resource",
            ResourceError::InvalidIdentifier(_) => "invalid_resource_identifier",
            ResourceError::MethodAndPathRequired => "operation_method_and_path_required",
            ResourceError::PathMustBeAbsolute => "operation_path_must_be_absolute",
            ResourceError::ScopeNotInResource => "operation_scope_not_in_resource_scopes",
            ResourceError::Duplicate => "operation_duplicate",
            ResourceError::ReservedNamespace => "reserved_namespace",
        }
    }
}

/// An absolute URI (`scheme:` + rest) without userinfo, not in the `provider:` scheme.
pub fn validate_identifier(id: &str, is_bootstrap: bool) -> Result<(), ResourceError> {
    let n = id.chars().count();
    if n == 0 || n > IDENTIFIER_MAX_CHARS {
        return Err(ResourceError::InvalidIdentifier(
            "identifier must be 1-512 characters",
        ));
    }
    let Some((scheme, rest)) = id.split_once(':') else {
        return Err(ResourceError::InvalidIdentifier(
            "identifier must be an absolute URI",
        ));
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ResourceError::InvalidIdentifier(
            "identifier must be an absolute URI",
        ));
    }
    if scheme.eq_ignore_ascii_case("provider") {
        return Err(ResourceError::InvalidIdentifier(
            "identifier may not use the provider: scheme",
        ));
    }
    if let Some(authority) = rest.strip_prefix("//") {
        let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(ResourceError::InvalidIdentifier(
                "identifier may not carry userinfo",
            ));
        }
    }
    if has_prefix_ci(id, RESERVED_IDENTIFIER_PREFIX) && !is_bootstrap {
        return Err(ResourceError::ReservedNamespace);
    }
    Ok(())
}

pub fn validate_scopes(scopes: &[String]) -> Result<(), ResourceError> {
    if scopes.is_empty() || scopes.len() > MAX_SCOPES {
        return Err(ResourceError::Invalid("scopes must list 1-64 scopes"));
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.chars().count() > SCOPE_MAX_CHARS)
    {
        return Err(ResourceError::Invalid(
            "each scope must be 1-200 characters",
        ));
    }
    Ok(())
}

/// Normalizes operations (method upper-cased) and checks them against the scopes.
pub fn normalize_operations(
    ops: Vec<Operation>,
    scopes: &[String],
) -> Result<Vec<Operation>, ResourceError> {
    if ops.len() > MAX_OPERATIONS {
        return Err(ResourceError::Invalid("at most 256 operations are allowed"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let method = op.method.trim().to_ascii_uppercase();
        if method.is_empty() || op.path.is_empty() {
            return Err(ResourceError::MethodAndPathRequired);
        }
        if method.len() > 16
            || op.path.chars().count() > 512
            || op.scope.is_empty()
            || op.scope.chars().count() > SCOPE_MAX_CHARS
        {
            return Err(ResourceError::Invalid(
                "operation fields exceed their limits",
            ));
        }
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ResourceError::Invalid(
                "operation method must be an HTTP method",
            ));
        }
        if !op.path.starts_with('/') {
            return Err(ResourceError::PathMustBeAbsolute);
        }
        if !scopes.contains(&op.scope) {
            return Err(ResourceError::ScopeNotInResource);
        }
        if !seen.insert(format!("{method} {}", op.path)) {
            return Err(ResourceError::Duplicate);
        }
        out.push(Operation {
            method,
            path: op.path,
            scope: op.scope,
        });
    }
    Ok(out)
}

/// `http(s)://host…`, no userinfo.
pub fn is_upstream_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let authority = r.split(['/', '?', '#']).next().unwrap_or_default();
            !authority.is_empty()
                && !authority.contains('@')
                && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// The slug of a name for derived identifiers: lowercase, runs of non-`[a-z0-9]` → `-`.
pub fn slug(name: &str, fallback: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    let s = out.trim_matches('-');
    let s = &s[..s.len().min(400)];
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        fallback.to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(m: &str, p: &str, s: &str) -> Operation {
        Operation {
            method: m.into(),
            path: p.into(),
            scope: s.into(),
        }
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("resource://billing", false).is_ok());
        assert!(validate_identifier("https://api.example.com/v1", false).is_ok());
        assert!(validate_identifier("billing", false).is_err());
        assert!(validate_identifier("provider://x", false).is_err());
        assert!(validate_identifier("https://u:p@host/", false).is_err());
        assert_eq!(
            validate_identifier("caracal-sys://x", false),
            Err(ResourceError::ReservedNamespace)
        );
    }

    #[test]
    fn operations_rules() {
        let scopes = vec!["read".to_string()];
        let ok = normalize_operations(vec![op("get", "/a", "read")], &scopes).unwrap();
        assert_eq!(ok[0].method, "GET");
        assert_eq!(
            normalize_operations(vec![op("GET", "a", "read")], &scopes),
            Err(ResourceError::PathMustBeAbsolute)
        );
        assert_eq!(
            normalize_operations(vec![op("GET", "/a", "write")], &scopes),
            Err(ResourceError::ScopeNotInResource)
        );
        assert_eq!(
            normalize_operations(
                vec![op("GET", "/a", "read"), op("get", "/a", "read")],
                &scopes
            ),
            Err(ResourceError::Duplicate)
        );
        assert_eq!(
            normalize_operations(vec![op("", "/a", "read")], &scopes),
            Err(ResourceError::MethodAndPathRequired)
        );
    }

    #[test]
    fn slugs_and_urls() {
        assert_eq!(slug("Billing API!", "resource"), "billing-api");
        assert_eq!(slug("!!!", "resource"), "resource");
        assert!(is_upstream_url("https://api.example.com"));
        assert!(!is_upstream_url("ftp://x"));
        assert!(!is_upstream_url("https://a@b"));
    }
}
