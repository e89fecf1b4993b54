//! The token request's encoding rules (sts.md §3), checked before any authentication, in
//! the spec's order.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, StatusCode};

use serval_kit::{client_assertion, gateway_hmac};

use super::error::StsError;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Body cap of every STS POST.
pub const MAX_BODY: usize = 64 * 1024;
/// Resources one request may name (each costs a lookup, a decision and an audit frame).
pub const MAX_RESOURCES: usize = 32;
/// Fields whose mere presence is refused.
const FORBIDDEN: [&str; 1] = ["actor_token"];

/// A token request that passed the encoding rules.
#[derive(Debug, Default)]
pub struct TokenForm {
    fields: BTreeMap<String, String>,
    /// Trimmed, deduplicated, sorted.
    pub resources: Vec<String>,
    /// `ttl_seconds` (0 = default).
    pub ttl_seconds: i64,
    /// Any of the Gateway's headers was present.
    pub gateway: bool,
    /// `zone_id` was not sent and is the application's own (a control-key exchange, §4.6).
    pub zone_derived: bool,
}

impl TokenForm {
    /// A field's value; absent and empty are the same.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Names the application's zone for a request that sent none (§4.6).
    pub fn derive_zone(&mut self, zone: String) {
        self.fields.insert("zone_id".to_owned(), zone);
        self.zone_derived = true;
    }

    /// Requested scopes: split on whitespace, as sent (not deduplicated).
    pub fn scopes(&self) -> Vec<String> {
        self.get("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

fn bad(description: &str) -> StsError {
    StsError::new(StatusCode::BAD_REQUEST, "invalid_token", description)
}

/// Applies §3's rules to the raw request.
pub fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<TokenForm, StsError> {
    if query.is_some() {
        return Err(bad("query parameters are not allowed"));
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(StsError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_token",
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    if body.len() > MAX_BODY {
        return Err(StsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(bad("malformed request body"));
    }
    let mut form = TokenForm::default();
    let mut resources = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        // Postgres text cannot hold U+0000: a NUL would reach an authority record.
        if k.contains('\0') || v.contains('\0') {
            return Err(bad("form fields must not contain NUL characters"));
        }
        if k == "resource" {
            resources.push(v.into_owned());
            continue;
        }
        if form.fields.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(bad(&format!("duplicate form field: {k}")));
        }
    }
    for f in FORBIDDEN {
        if form.fields.contains_key(f) {
            return Err(bad(&format!("{f} is not supported")));
        }
    }
    // A client assertion (RFC 7523) replaces the secret: both of its fields, of the JWT
    // bearer type, and no secret beside it.
    let assertion = form.fields.contains_key("client_assertion");
    let assertion_type = form.fields.get("client_assertion_type");
    if assertion || assertion_type.is_some() {
        if assertion_type.map(String::as_str) != Some(client_assertion::ASSERTION_TYPE) {
            return Err(bad(&format!(
                "client_assertion_type must be {}",
                client_assertion::ASSERTION_TYPE
            )));
        }
        if form.get("client_assertion").is_none() {
            return Err(bad(
                "client_assertion is required with client_assertion_type",
            ));
        }
        if form.fields.contains_key("client_secret") {
            return Err(bad(
                "send either client_secret or client_assertion, not both",
            ));
        }
    }
    if let Some(t) = form.fields.get("ttl_seconds").filter(|t| !t.is_empty()) {
        form.ttl_seconds = t.parse::<i64>().map_err(|_| bad("invalid ttl_seconds"))?;
    }
    form.gateway = [
        gateway_hmac::TIMESTAMP,
        gateway_hmac::NONCE,
        gateway_hmac::SIGNATURE,
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    // The HMAC itself is verified by the exchange right after parsing (it consumes a nonce
    // in Redis), so a signed request with a malformed field answers for the field first.
    if resources.len() > MAX_RESOURCES {
        return Err(bad(&format!(
            "at most {MAX_RESOURCES} resource values are accepted"
        )));
    }
    let mut trimmed = Vec::with_capacity(resources.len());
    for r in resources {
        let r = r.trim();
        if r.is_empty() {
            return Err(bad("resource must not be empty"));
        }
        trimmed.push(r.to_owned());
    }
    trimmed.sort();
    trimmed.dedup();
    form.resources = trimmed;
    if form.get("grant_type") != Some(GRANT_TYPE) {
        return Err(bad("unsupported grant_type"));
    }
    match form.get("subject_token_type") {
        None | Some(ACCESS_TOKEN) | Some(ID_TOKEN) => {}
        Some(_) => return Err(bad("unsupported subject_token_type")),
    }
    if form.get("subject_token").is_some() != form.get("subject_token_type").is_some() {
        return Err(bad(
            "subject_token and subject_token_type must be sent together",
        ));
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        h
    }

    fn code(r: Result<TokenForm, StsError>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.description)
    }

    #[test]
    fn encoding_rules_in_order() {
        let h = form_headers();
        let ok = format!(
            "grant_type={}&resource=b&resource=%20a%20&resource=b",
            GRANT_TYPE
        );
        let f = parse(None, &h, ok.as_bytes()).unwrap();
        assert_eq!(f.resources, ["a", "b"]);
        assert_eq!(code(parse(Some("x=1"), &h, ok.as_bytes())).0, 400);
        assert_eq!(code(parse(None, &HeaderMap::new(), ok.as_bytes())).0, 415);
        let big = vec![b'a'; MAX_BODY + 1];
        assert_eq!(code(parse(None, &h, &big)).0, 413);
        let dup = format!("{ok}&zone_id=a&zone_id=b");
        assert_eq!(
            code(parse(None, &h, dup.as_bytes())).1,
            "duplicate form field: zone_id"
        );
        let assertion = format!("{ok}&client_assertion=");
        assert_eq!(code(parse(None, &h, assertion.as_bytes())).0, 400);
        let typed = format!(
            "{ok}&client_assertion_type={}&client_assertion=",
            client_assertion::ASSERTION_TYPE
        );
        assert_eq!(
            code(parse(None, &h, typed.as_bytes())).1,
            "client_assertion is required with client_assertion_type"
        );
        let both = format!(
            "{ok}&client_assertion_type={}&client_assertion=a.b.c&client_secret=s",
            client_assertion::ASSERTION_TYPE
        );
        assert_eq!(
            code(parse(None, &h, both.as_bytes())).1,
            "send either client_secret or client_assertion, not both"
        );
        let actor = format!("{ok}&actor_token=");
        assert_eq!(code(parse(None, &h, actor.as_bytes())).0, 400);
        let ttl = format!("{ok}&ttl_seconds=1.5");
        assert_eq!(
            code(parse(None, &h, ttl.as_bytes())).1,
            "invalid ttl_seconds"
        );
        let blank = format!("{ok}&resource=%20");
        assert_eq!(
            code(parse(None, &h, blank.as_bytes())).1,
            "resource must not be empty"
        );
        assert_eq!(
            code(parse(None, &h, b"grant_type=password")).1,
            "unsupported grant_type"
        );
        let nul = format!("{ok}&subject_token=t%00");
        assert_eq!(
            code(parse(None, &h, nul.as_bytes())).1,
            "form fields must not contain NUL characters"
        );
        let lone = format!("{ok}&subject_token=t");
        assert_eq!(code(parse(None, &h, lone.as_bytes())).0, 400);
    }
}
