//! OAuth 2.0 client pieces for provider connections (management-api.md §13): PKCE, the
//! authorization URL, the code exchange and RFC 7009 revocation against a provider's
//! allowlisted endpoints.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// How long an authorize state may be redeemed.
pub const STATE_TTL_SECS: i64 = 600;

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The S256 PKCE challenge of a verifier (RFC 7636 §4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The storage name of a state: its SHA-256, so Redis never holds a redeemable value.
pub fn state_digest(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

pub fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub fn string_map(config: &Map<String, Value>, key: &str) -> Vec<(String, String)> {
    config
        .get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    /// A required config key is missing (`invalid_provider_config`).
    Config(&'static str),
    /// The authorization endpoint is not an absolute HTTPS URL without a fragment.
    Endpoint,
}

/// The authorization URL: the endpoint, then `authorization_params`, then the protocol
/// parameters (which a provider's params cannot override: intake refuses reserved keys).
pub fn authorization_url(
    config: &Map<String, Value>,
    state: &str,
    challenge: &str,
) -> Result<String, AuthorizeError> {
    let endpoint = config_str(config, "authorization_endpoint")
        .ok_or(AuthorizeError::Config("authorization_endpoint"))?;
    let client_id = config_str(config, "client_id").ok_or(AuthorizeError::Config("client_id"))?;
    let redirect_uri =
        config_str(config, "redirect_uri").ok_or(AuthorizeError::Config("redirect_uri"))?;
    let mut url = url::Url::parse(endpoint).map_err(|_| AuthorizeError::Endpoint)?;
    if url.scheme() != "https" || url.fragment().is_some() || url.host_str().is_none() {
        return Err(AuthorizeError::Endpoint);
    }
    let scopes: Vec<&str> = config
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in string_map(config, "authorization_params") {
            q.append_pair(&k, &v);
        }
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(" "));
        }
        q.append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Ok(url.into())
}

/// Whether `endpoint` is HTTPS and its host is one of the provider's allowed token hosts
/// (intake defaults the list to the token endpoint's host).
pub fn endpoint_allowed(config: &Map<String, Value>, endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
        return false;
    };
    url.scheme() == "https"
        && config
            .get("allowed_token_hosts")
            .and_then(Value::as_array)
            .is_some_and(|hosts| hosts.iter().any(|h| h.as_str() == Some(host.as_str())))
}

/// The HTTP client for upstream token and revocation endpoints: HTTPS with the public web
/// roots plus, when `SERVAL_UPSTREAM_CA_FILE` names a PEM file, that extra root; no
/// redirects (an endpoint must be the allowlisted one itself); bounded time; private
/// addresses only for hosts in `CARACAL_PRIVATE_EGRESS_HOSTS` (`crate::egress`).
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| build(upstream_builder().https_only(true)))
}

/// What every client for operator-supplied hosts shares: the private-address rule, no
/// redirects, bounded time, the public web roots plus `SERVAL_UPSTREAM_CA_FILE`.
pub fn upstream_builder() -> reqwest::ClientBuilder {
    // No proxy from the environment: a proxy would resolve names itself, around the guard.
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(crate::egress::resolver())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    // Caracal's name for the same extra trust root is honoured too.
    for var in ["SERVAL_UPSTREAM_CA_FILE", "CARACAL_TLS_EXTRA_CA_FILE"] {
        let Some(pem) = std::env::var_os(var).and_then(|p| std::fs::read(p).ok()) else {
            continue;
        };
        match reqwest::Certificate::from_pem(&pem) {
            Ok(cert) => b = b.add_root_certificate(cert),
            Err(e) => tracing::warn!(error = %e, var, "not a PEM certificate"),
        }
    }
    b
}

/// The client of `b`; if it cannot be built (an unusable extra CA, a TLS backend error),
/// a plain client that keeps the egress rule and refuses redirects — never an unguarded
/// one.
pub fn build(b: reqwest::ClientBuilder) -> reqwest::Client {
    b.build().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "upstream HTTP client falls back to the guarded defaults");
        reqwest::Client::builder()
            .dns_resolver(crate::egress::resolver())
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "no guarded HTTP client: outbound calls will fail");
                // A client whose every call fails: a resolver that refuses every name and
                // no proxy to route around it.
                // Failing closed: the request that needed it answers 500 (the panic layer).
                reqwest::Client::builder()
                    .dns_resolver(std::sync::Arc::new(crate::egress::RefuseAll))
                    .no_proxy()
                    .build()
                    .unwrap_or_else(|e| panic!("no HTTP client can be built: {e}"))
            })
    })
}

/// Upstream answers (token endpoints, probes) are read at most this far (operations.md: the
/// token-endpoint rule of 64 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An upstream body, refused past `limit` bytes rather than buffered whole.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if out.len() + chunk.len() > limit {
            return Err(format!("upstream answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An assertion that could not be signed: the detail is the operator's (logged), the
/// caller's answer only says so.
fn unsigned(detail: String) -> ExchangeError {
    tracing::warn!(error = %detail, "provider assertion not signed");
    ExchangeError::NotAllowed("the provider's signing key cannot sign an assertion".into())
}

/// `client_assertion_type` of a `private_key_jwt` client (RFC 7523 §2.2).
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The `jwt_bearer` grant (RFC 7523 §2.1).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The client authentication method a provider uses (the `jwt_bearer` grant defaults to
/// `none`).
fn auth_method(config: &Map<String, Value>) -> &str {
    let default = if config_str(config, "grant_type") == Some("jwt_bearer") {
        "none"
    } else {
        "client_secret_basic"
    };
    config_str(config, "client_auth_method").unwrap_or(default)
}

/// Adds the provider's client authentication to a token or revocation request form sent to
/// `endpoint`; a `private_key_jwt` key that cannot sign is the error.
pub fn authenticate(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    form: &mut Vec<(String, String)>,
    req: reqwest::RequestBuilder,
    endpoint: &str,
) -> Result<reqwest::RequestBuilder, String> {
    let client_id = config_str(config, "client_id")
        .unwrap_or_default()
        .to_owned();
    let secret = secrets.get("client_secret").cloned().unwrap_or_default();
    match auth_method(config) {
        "client_secret_post" => {
            form.push(("client_id".into(), client_id));
            form.push(("client_secret".into(), secret));
            Ok(req)
        }
        "none" => {
            if !client_id.is_empty() {
                form.push(("client_id".into(), client_id));
            }
            Ok(req)
        }
        "private_key_jwt" => {
            let assertion = crate::provider_assertion::client_assertion(config, secrets, endpoint)?;
            // Optional by RFC 7521 §4.2, required by some providers.
            form.push(("client_id".into(), client_id));
            form.push(("client_assertion_type".into(), CLIENT_ASSERTION_TYPE.into()));
            form.push(("client_assertion".into(), assertion));
            Ok(req)
        }
        // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
        _ => {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            Ok(req.basic_auth(enc(&client_id), Some(enc(&secret))))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ExchangeError {
    /// Transport failure or a non-2xx answer other than a refusal
    /// (`provider_token_exchange_failed`).
    Failed(String),
    /// The configuration or the egress rule forbids the request: nothing was sent.
    NotAllowed(String),
    /// A 4xx answer other than 429: the endpoint works and refused this grant (a revoked
    /// refresh token, a wrong client secret), also `provider_token_exchange_failed`.
    Refused(String),
    /// Not JSON, or no `access_token` (`provider_token_response_invalid`).
    Invalid,
    /// `token_type` is not `bearer` and the provider declares no `auth_scheme`.
    TokenType(String),
}

#[derive(Debug)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<i64>,
}

/// Parses a token endpoint's JSON answer (RFC 6749 §5.1).
pub fn parse_token_response(body: &[u8], custom_scheme: bool) -> Result<Tokens, ExchangeError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| ExchangeError::Invalid)?;
    let access_token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(ExchangeError::Invalid)?
        .to_owned();
    let token_type = v
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("bearer");
    if !token_type.eq_ignore_ascii_case("bearer") && !custom_scheme {
        return Err(ExchangeError::TokenType(token_type.to_owned()));
    }
    Ok(Tokens {
        access_token,
        refresh_token: v
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        expires_in: v
            .get("expires_in")
            .and_then(Value::as_i64)
            .filter(|n| *n > 0),
    })
}

/// Exchanges an authorization code at the provider's token endpoint.
pub async fn exchange_code(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    code: &str,
    verifier: &str,
) -> Result<Tokens, ExchangeError> {
    let form: Vec<(String, String)> = vec![
        ("grant_type".into(), "authorization_code".into()),
        ("code".into(), code.into()),
        (
            "redirect_uri".into(),
            config_str(config, "redirect_uri")
                .unwrap_or_default()
                .into(),
        ),
        ("code_verifier".into(), verifier.into()),
    ];
    token_request(config, secrets, form).await
}

/// `grant_type=client_credentials` with the configured `scopes`, `audience` and
/// `resource` (RFC 6749 §4.4); the endpoint must be HTTPS on an allowed token host.
pub async fn client_credentials(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Result<Tokens, ExchangeError> {
    let endpoint = config_str(config, "token_endpoint").unwrap_or_default();
    if !endpoint_allowed(config, endpoint) {
        return Err(ExchangeError::NotAllowed(
            "token endpoint is not HTTPS on an allowed token host".into(),
        ));
    }
    let form = client_credentials_form(config, secrets, endpoint).map_err(unsigned)?;
    token_request(config, secrets, form).await
}

/// The grant fields of a client-credentials provider's token request to `endpoint` (the
/// `jwt_bearer` grant's signed assertion, or `client_credentials` with the scopes), plus
/// the configured `audience` and `resource`; the error is why the assertion cannot be signed.
pub fn client_credentials_form(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    endpoint: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut form: Vec<(String, String)> = Vec::new();
    if config_str(config, "grant_type") == Some("jwt_bearer") {
        // The scopes ride in the assertion's `scope` claim.
        let assertion = crate::provider_assertion::grant_assertion(config, secrets, endpoint)?;
        form.push(("grant_type".into(), JWT_BEARER_GRANT.into()));
        form.push(("assertion".into(), assertion));
    } else {
        form.push(("grant_type".into(), "client_credentials".into()));
        if let Some(scopes) = config.get("scopes").and_then(Value::as_array) {
            let joined: Vec<&str> = scopes.iter().filter_map(Value::as_str).collect();
            if !joined.is_empty() {
                form.push(("scope".into(), joined.join(" ")));
            }
        }
    }
    for key in ["audience", "resource"] {
        if let Some(v) = config_str(config, key) {
            form.push((key.into(), v.into()));
        }
    }
    Ok(form)
}

/// `grant_type=refresh_token` (RFC 6749 §6).
pub async fn refresh(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    refresh_token: &str,
) -> Result<Tokens, ExchangeError> {
    let form = vec![
        ("grant_type".into(), "refresh_token".into()),
        ("refresh_token".into(), refresh_token.into()),
    ];
    token_request(config, secrets, form).await
}

/// One token-endpoint call: the grant's fields plus the configured `token_params`, the
/// client's authentication, the egress rule, a capped answer that must be a 2xx.
async fn token_request(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    mut form: Vec<(String, String)>,
) -> Result<Tokens, ExchangeError> {
    let endpoint = config_str(config, "token_endpoint").unwrap_or_default();
    form.extend(string_map(config, "token_params"));
    // Client secrets and refresh tokens only ever go to the provider's allowed token host.
    if !endpoint_allowed(config, endpoint) {
        return Err(ExchangeError::NotAllowed(
            "token endpoint is not HTTPS on an allowed token host".into(),
        ));
    }
    if !crate::egress::literal_allowed(endpoint) {
        return Err(ExchangeError::NotAllowed(
            "token endpoint is a private address".into(),
        ));
    }
    let req = client()
        .post(endpoint)
        .header(reqwest::header::ACCEPT, "application/json");
    let req = authenticate(config, secrets, &mut form, req, endpoint).map_err(unsigned)?;
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| ExchangeError::Failed(e.without_url().to_string()))?;
    let status = resp.status();
    let body = read_capped(resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(ExchangeError::Failed)?;
    if !status.is_success() {
        let why = format!("token endpoint answered {status}");
        let refused = status.is_client_error() && status.as_u16() != 429;
        return Err(if refused {
            ExchangeError::Refused(why)
        } else {
            ExchangeError::Failed(why)
        });
    }
    parse_token_response(&body, config_str(config, "auth_scheme").is_some())
}

/// RFC 7009 revocation, best effort: `"revoked"`, `"failed"` or `"unsupported"` (no
/// revocation endpoint, or one outside the allowlist).
pub async fn revoke(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    tokens: &BTreeMap<String, String>,
) -> &'static str {
    let Some(endpoint) = config_str(config, "revocation_endpoint") else {
        return "unsupported";
    };
    if !endpoint_allowed(config, endpoint) {
        return "unsupported";
    }
    if !crate::egress::literal_allowed(endpoint) {
        return "failed";
    }
    // The refresh token is preferred: revoking it ends the whole grant.
    let (token, hint) = match (tokens.get("refresh_token"), tokens.get("access_token")) {
        (Some(r), _) => (r.clone(), "refresh_token"),
        (None, Some(a)) => (a.clone(), "access_token"),
        (None, None) => return "unsupported",
    };
    let mut form: Vec<(String, String)> = vec![
        ("token".into(), token),
        ("token_type_hint".into(), hint.into()),
    ];
    let req = match authenticate(
        config,
        secrets,
        &mut form,
        client().post(endpoint),
        endpoint,
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "upstream token revocation not signed");
            return "failed";
        }
    };
    match req.form(&form).send().await {
        Ok(r) if r.status().is_success() => "revoked",
        Ok(r) => {
            tracing::warn!(status = %r.status(), "upstream token revocation refused");
            "failed"
        }
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "upstream token revocation failed");
            "failed"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn upstream_answers_are_read_only_up_to_the_cap() {
        let small = reqwest::Response::from(axum::http::Response::new(vec![b'a'; 10]));
        assert_eq!(read_capped(small, 64).await.unwrap().len(), 10);
        let large = reqwest::Response::from(axum::http::Response::new(vec![b'a'; 100]));
        assert!(read_capped(large, 64).await.is_err());
    }

    fn config() -> Map<String, Value> {
        json!({
            "authorization_endpoint": "https://idp.example/authorize?tenant=a",
            "token_endpoint": "https://idp.example/token",
            "client_id": "serval app",
            "redirect_uri": "https://serval.example/cb",
            "scopes": ["read", "write"],
            "authorization_params": {"prompt": "consent"},
            "allowed_token_hosts": ["idp.example"],
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(random_token().len(), 43);
    }

    #[test]
    fn authorization_url_carries_params_then_protocol_fields() {
        let url = authorization_url(&config(), "st", "ch").unwrap_or_default();
        assert_eq!(
            url,
            "https://idp.example/authorize?tenant=a&prompt=consent&response_type=code\
             &client_id=serval+app&redirect_uri=https%3A%2F%2Fserval.example%2Fcb&state=st\
             &scope=read+write&code_challenge=ch&code_challenge_method=S256"
        );
        let mut c = config();
        c.insert(
            "authorization_endpoint".into(),
            json!("http://idp.example/a"),
        );
        assert_eq!(
            authorization_url(&c, "s", "c"),
            Err(AuthorizeError::Endpoint)
        );
        c.remove("client_id");
        assert_eq!(
            authorization_url(&c, "s", "c"),
            Err(AuthorizeError::Config("client_id"))
        );
    }

    #[test]
    fn token_responses_are_checked() {
        let ok = parse_token_response(
            br#"{"access_token":"a","token_type":"Bearer","refresh_token":"r","expires_in":60}"#,
            false,
        );
        assert!(matches!(
            ok,
            Ok(Tokens {
                expires_in: Some(60),
                ..
            })
        ));
        assert!(matches!(
            parse_token_response(br#"{"token_type":"bearer"}"#, false),
            Err(ExchangeError::Invalid)
        ));
        assert!(matches!(
            parse_token_response(br#"{"access_token":"a","token_type":"mac"}"#, false),
            Err(ExchangeError::TokenType(_))
        ));
        assert!(parse_token_response(br#"{"access_token":"a","token_type":"mac"}"#, true).is_ok());
        assert!(endpoint_allowed(&config(), "https://IDP.example/revoke"));
        assert!(!endpoint_allowed(&config(), "https://evil.example/revoke"));
        assert!(!endpoint_allowed(&config(), "http://idp.example/revoke"));
    }
}
