//! The syntax rules provider configurations share: URLs and hosts, header and parameter
//! names, PEM blocks, secrets written with their scheme.

use super::{bad, ConfigError};

/// OAuth parameter names a provider's extra parameters may not override.
pub(super) const OAUTH_RESERVED_PARAMS: [&str; 16] = [
    "client_id",
    "client_secret",
    "scope",
    "state",
    "redirect_uri",
    "code",
    "grant_type",
    "response_type",
    "code_verifier",
    "code_challenge",
    "code_challenge_method",
    "refresh_token",
    "assertion",
    "client_assertion",
    "client_assertion_type",
    "nonce",
];

/// Header names a provider may not set.
pub(super) const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "traceparent",
    "tracestate",
    "x-request-id",
    "cookie",
    "forwarded",
];

pub(super) fn is_param_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

pub(super) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

pub(super) fn is_allowed_header(h: &str) -> bool {
    let lower = h.to_ascii_lowercase();
    !h.is_empty()
        && h.chars().all(is_token_char)
        && !RESERVED_HEADERS.contains(&lower.as_str())
        && !lower.starts_with("x-caracal-")
        && !lower.starts_with("x-forwarded-")
        && !lower.starts_with("proxy-")
}

pub(super) fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The lowercase host of an absolute URL (`https` only when `https_only`), rejecting
/// credentials, fragments and (for endpoints) query strings.
pub fn host_of(url: &str, https_only: bool) -> Option<String> {
    let rest = match url.strip_prefix("https://") {
        Some(r) => r,
        None if !https_only => url.strip_prefix("http://")?,
        None => return None,
    };
    if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let authority = rest.split(['/', '?']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

pub(super) fn is_absolute_uri(u: &str) -> bool {
    match u.split_once(':') {
        Some((scheme, rest)) => {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
                && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// A PEM block whose label ends with `kind` (e.g. `PRIVATE KEY`, `CERTIFICATE`) and whose
/// body is valid base64.
pub(super) fn is_pem(p: &str, kind: &str) -> bool {
    use base64::Engine;
    let lines: Vec<&str> = p.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return false;
    };
    let label_ok = |l: &str, edge: &str| {
        l.strip_prefix(edge)
            .and_then(|r| r.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(kind))
    };
    if lines.len() < 3 || !label_ok(first, "-----BEGIN ") || !label_ok(last, "-----END ") {
        return false;
    }
    let body: String = lines[1..lines.len() - 1]
        .iter()
        .filter(|l| !l.contains(':'))
        .copied()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|b| !b.is_empty())
}

pub(super) fn reject_scheme_prefix(
    secret: Option<&str>,
    scheme: &str,
    key: &str,
) -> Result<(), ConfigError> {
    if let Some(s) = secret {
        let prefix = format!("{scheme} ");
        // `get`, not indexing: the prefix length may fall inside a multi-byte character.
        if s.len() > prefix.len()
            && s.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        {
            return Err(bad(format!(
                "{key} must not start with its scheme {scheme:?}"
            )));
        }
    }
    Ok(())
}
