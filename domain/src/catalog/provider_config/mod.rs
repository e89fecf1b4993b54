//! Provider kinds and their `config_json` rules (management-api.md §7): which keys each kind
//! takes, which of them are sealed secrets, and the defaults written back. Typed reads are
//! in [`reader`], the shared syntax rules in [`syntax`].

mod reader;
mod syntax;

pub use syntax::host_of;

use reader::Reader;
use syntax::*;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub const KINDS: [&str; 7] = [
    "none",
    "caracal_mandate",
    "api_key",
    "bearer_token",
    "http_basic",
    "oauth2_client_credentials",
    "oauth2_authorization_code",
];

/// Keys whose values are sealed (never stored or returned in the public config).
pub(super) const SECRET_KEYS: [&str; 6] = [
    "api_key",
    "bearer_token",
    "password",
    "client_secret",
    "private_key",
    "access_token",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub code: &'static str,
    pub description: String,
}

pub(super) fn bad(description: impl Into<String>) -> ConfigError {
    ConfigError {
        code: "invalid_provider_config",
        description: description.into(),
    }
}

/// A validated configuration: the public part (with resolved defaults) and the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub public: Map<String, Value>,
    pub secrets: BTreeMap<String, String>,
}

/// Whether a `config_json` key names a sealed secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

pub fn is_kind(kind: &str) -> bool {
    KINDS.contains(&kind)
}

pub fn is_oauth(kind: &str) -> bool {
    kind == "oauth2_client_credentials" || kind == "oauth2_authorization_code"
}

/// The sealed keys a kind's configuration needs given its public part (used when a PATCH
/// keeps the sealed document: the secret the auth method needs must already be sealed).
pub fn required_secrets(kind: &str, public: &Map<String, Value>) -> Vec<&'static str> {
    let method = public.get("client_auth_method").and_then(Value::as_str);
    let grant = public.get("grant_type").and_then(Value::as_str);
    match kind {
        "api_key" => vec!["api_key"],
        "bearer_token" => vec!["bearer_token"],
        "http_basic" => vec!["password"],
        "oauth2_client_credentials" => {
            let mut v = Vec::new();
            if !matches!(method, Some("private_key_jwt" | "none")) {
                v.push("client_secret");
            }
            if method == Some("private_key_jwt") || grant == Some("jwt_bearer") {
                v.push("private_key");
            }
            v
        }
        "oauth2_authorization_code" if method != Some("none") => vec!["client_secret"],
        _ => Vec::new(),
    }
}

/// Validates a kind's configuration. `config` is the merged object (public keys and secrets
/// as the caller sent them).
pub fn resolve(kind: &str, config: &Map<String, Value>) -> Result<Resolved, ConfigError> {
    let mut r = Reader {
        kind,
        cfg: config,
        public: Map::new(),
        secrets: BTreeMap::new(),
        allowed: Vec::new(),
    };
    match kind {
        "none" | "caracal_mandate" => {}
        "api_key" => {
            r.allow(&[
                "api_key",
                "auth_location",
                "header_name",
                "query_param_name",
                "auth_scheme",
                "allowed_token_hosts",
                "forward_caracal_identity",
                "allow_runtime_injection",
            ]);
            let key = r.secret("api_key", true, false)?;
            let location = r
                .string("auth_location")?
                .unwrap_or_else(|| "header".into());
            match location.as_str() {
                "header" => {
                    if r.header("header_name")?.is_none() {
                        return Err(bad("header_name is required when auth_location is header"));
                    }
                    if r.present("query_param_name") {
                        return Err(bad(
                            "query_param_name is only valid when auth_location is query",
                        ));
                    }
                    if let Some(s) = r.scheme()? {
                        reject_scheme_prefix(key.as_deref(), &s, "api_key")?;
                    }
                }
                "query" => {
                    let q = r.public_string("query_param_name", false)?;
                    if !q.is_some_and(|q| q.bytes().all(is_param_byte)) {
                        return Err(bad("query_param_name (^[A-Za-z0-9._~-]+$) is required when auth_location is query"));
                    }
                    if r.present("header_name") || r.present("auth_scheme") {
                        return Err(bad(
                            "header_name and auth_scheme are only valid in header mode",
                        ));
                    }
                }
                _ => return Err(bad("auth_location must be header or query")),
            }
            r.public
                .insert("auth_location".into(), Value::String(location));
            r.hosts(None)?;
            r.flag("forward_caracal_identity")?;
            r.flag("allow_runtime_injection")?;
        }
        "bearer_token" => {
            r.allow(&[
                "bearer_token",
                "allowed_token_hosts",
                "auth_header",
                "auth_scheme",
                "forward_caracal_identity",
                "allow_runtime_injection",
            ]);
            let token = r.secret("bearer_token", true, false)?;
            r.header("auth_header")?;
            let scheme = r.scheme()?.unwrap_or_else(|| "Bearer".into());
            reject_scheme_prefix(token.as_deref(), &scheme, "bearer_token")?;
            r.hosts(None)?;
            r.flag("forward_caracal_identity")?;
            r.flag("allow_runtime_injection")?;
        }
        "http_basic" => {
            r.allow(&[
                "username",
                "password",
                "allowed_token_hosts",
                "forward_caracal_identity",
            ]);
            r.public_string("username", true)?;
            r.secret("password", true, false)?;
            r.hosts(None)?;
            r.flag("forward_caracal_identity")?;
        }
        "oauth2_client_credentials" => {
            r.allow(&[
                "token_endpoint",
                "client_id",
                "client_secret",
                "private_key",
                "scopes",
                "client_auth_method",
                "grant_type",
                "assertion_subject",
                "assertion_audience",
                "audience",
                "resource",
                "allowed_token_hosts",
                "token_params",
                "key_id",
                "certificate",
                "auth_header",
                "auth_scheme",
                "forward_caracal_identity",
                "allow_runtime_injection",
            ]);
            let endpoint = r.https_url("token_endpoint", true)?;
            let grant = r
                .string("grant_type")?
                .unwrap_or_else(|| "client_credentials".into());
            if !matches!(grant.as_str(), "client_credentials" | "jwt_bearer") {
                return Err(bad("grant_type must be client_credentials or jwt_bearer"));
            }
            let jwt_bearer = grant == "jwt_bearer";
            let default_method = if jwt_bearer {
                "none"
            } else {
                "client_secret_basic"
            };
            let method = r
                .string("client_auth_method")?
                .unwrap_or_else(|| default_method.into());
            if !matches!(
                method.as_str(),
                "client_secret_basic" | "client_secret_post" | "private_key_jwt" | "none"
            ) {
                return Err(bad("client_auth_method must be client_secret_basic, client_secret_post, private_key_jwt or none"));
            }
            // Also the `iss` of a jwt-bearer grant's assertion (RFC 7523 §3).
            r.public_string("client_id", true)?;
            let needs_secret = !matches!(method.as_str(), "private_key_jwt" | "none");
            r.secret("client_secret", needs_secret, false)?;
            if !needs_secret && r.present("client_secret") {
                return Err(bad(format!(
                    "client_secret is not used with client_auth_method {method}"
                )));
            }
            r.pem(
                "private_key",
                method == "private_key_jwt" || jwt_bearer,
                "PRIVATE KEY",
            )?;
            if r.present("certificate") {
                if method != "private_key_jwt" {
                    return Err(bad("certificate is only valid with private_key_jwt"));
                }
                r.pem("certificate", false, "CERTIFICATE")?;
            }
            for key in ["assertion_subject", "assertion_audience"] {
                if r.present(key) && !jwt_bearer {
                    return Err(bad(format!(
                        "{key} is only valid with grant_type jwt_bearer"
                    )));
                }
                r.public_string(key, false)?;
            }
            if r.present("resource") && jwt_bearer {
                return Err(bad("resource is not valid with grant_type jwt_bearer"));
            }
            r.public_string("resource", false)?;
            r.public_string("audience", false)?;
            r.public_string("key_id", false)?;
            r.scopes()?;
            r.params("token_params")?;
            r.header("auth_header")?;
            r.scheme()?;
            r.public
                .insert("client_auth_method".into(), Value::String(method));
            r.public.insert("grant_type".into(), Value::String(grant));
            r.hosts(endpoint.as_deref().and_then(|e| host_of(e, true)))?;
            r.flag("forward_caracal_identity")?;
            r.flag("allow_runtime_injection")?;
        }
        "oauth2_authorization_code" => {
            r.allow(&[
                "authorization_endpoint",
                "token_endpoint",
                "redirect_uri",
                "client_id",
                "client_secret",
                "scopes",
                "client_auth_method",
                "revocation_endpoint",
                "allowed_token_hosts",
                "authorization_params",
                "token_params",
                "auth_header",
                "auth_scheme",
                "forward_caracal_identity",
            ]);
            r.https_url("authorization_endpoint", true)?;
            let endpoint = r.https_url("token_endpoint", true)?;
            let redirect = r.public_string("redirect_uri", true)?;
            if !redirect.as_deref().is_some_and(is_absolute_uri) {
                return Err(bad("redirect_uri must be an absolute URI"));
            }
            r.public_string("client_id", true)?;
            let method = r
                .string("client_auth_method")?
                .unwrap_or_else(|| "client_secret_basic".into());
            if !matches!(
                method.as_str(),
                "client_secret_basic" | "client_secret_post" | "none"
            ) {
                return Err(bad(
                    "client_auth_method must be client_secret_basic, client_secret_post or none",
                ));
            }
            r.secret("client_secret", method != "none", false)?;
            r.scopes()?;
            r.params("authorization_params")?;
            r.params("token_params")?;
            r.header("auth_header")?;
            r.scheme()?;
            r.public
                .insert("client_auth_method".into(), Value::String(method));
            r.hosts(endpoint.as_deref().and_then(|e| host_of(e, true)))?;
            if let Some(rev) = r.https_url("revocation_endpoint", false)? {
                let host = host_of(&rev, true).unwrap_or_default();
                let allowed = r
                    .public
                    .get("allowed_token_hosts")
                    .and_then(Value::as_array)
                    .is_some_and(|hs| hs.iter().any(|h| h.as_str() == Some(host.as_str())));
                if !allowed {
                    return Err(bad(
                        "revocation_endpoint host must be in allowed_token_hosts",
                    ));
                }
            }
            r.flag("forward_caracal_identity")?;
        }
        other => {
            return Err(ConfigError {
                code: "invalid_provider",
                description: format!("unknown provider kind {other:?}"),
            })
        }
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_multi_byte_character_at_the_scheme_length_is_no_panic() {
        let r = resolve("bearer_token", &obj(json!({"bearer_token": "abcdefé1"})));
        assert!(r.is_ok(), "{r:?}");
        let r = resolve("bearer_token", &obj(json!({"bearer_token": "Bearer abc"})));
        assert!(r.is_err());
    }

    #[test]
    fn api_key_header_mode_defaults_and_seals() {
        let r = resolve(
            "api_key",
            &obj(json!({"api_key": " k-123 ", "header_name": "X-Api-Key"})),
        )
        .unwrap();
        assert_eq!(r.secrets["api_key"], "k-123");
        assert_eq!(r.public["auth_location"], "header");
        assert!(!r.public.contains_key("api_key"));
    }

    #[test]
    fn unknown_keys_and_reserved_headers_are_refused() {
        assert!(resolve("none", &obj(json!({"x": 1}))).is_err());
        assert!(resolve(
            "api_key",
            &obj(json!({"api_key": "k", "header_name": "X-Caracal-Zone"}))
        )
        .is_err());
        assert!(resolve(
            "api_key",
            &obj(json!({"api_key": "k", "header_name": "Host"}))
        )
        .is_err());
    }

    #[test]
    fn bearer_secret_may_not_carry_its_scheme() {
        assert!(resolve("bearer_token", &obj(json!({"bearer_token": "Bearer abc"}))).is_err());
        assert!(resolve("bearer_token", &obj(json!({"bearer_token": "abc"}))).is_ok());
    }

    #[test]
    fn client_credentials_defaults() {
        let r = resolve(
            "oauth2_client_credentials",
            &obj(json!({"token_endpoint": "https://auth.example.com/token",
                        "client_id": "c", "client_secret": "s"})),
        )
        .unwrap();
        assert_eq!(r.public["client_auth_method"], "client_secret_basic");
        assert_eq!(r.public["grant_type"], "client_credentials");
        assert_eq!(r.public["allowed_token_hosts"], json!(["auth.example.com"]));
        assert!(resolve(
            "oauth2_client_credentials",
            &obj(json!({"token_endpoint": "http://auth.example.com/token",
                        "client_id": "c", "client_secret": "s"}))
        )
        .is_err());
        assert!(resolve(
            "oauth2_client_credentials",
            &obj(
                json!({"token_endpoint": "https://a.example/t", "client_id": "c",
                        "client_secret": "s", "token_params": {"scope": "x"}})
            )
        )
        .is_err());
    }

    #[test]
    fn authorization_code_rules() {
        let base = json!({"authorization_endpoint": "https://a.example/authorize",
            "token_endpoint": "https://a.example/token", "redirect_uri": "https://app.example/cb",
            "client_id": "c", "client_secret": "s"});
        assert!(resolve("oauth2_authorization_code", &obj(base.clone())).is_ok());
        let mut rev = obj(base.clone());
        rev.insert(
            "revocation_endpoint".into(),
            json!("https://other.example/revoke"),
        );
        assert!(resolve("oauth2_authorization_code", &rev).is_err());
        let mut pkj = obj(base);
        pkj.insert("client_auth_method".into(), json!("private_key_jwt"));
        assert!(resolve("oauth2_authorization_code", &pkj).is_err());
    }

    #[test]
    fn required_secrets_follow_the_method() {
        let public = obj(json!({"client_auth_method": "none"}));
        assert!(required_secrets("oauth2_authorization_code", &public).is_empty());
        assert_eq!(
            required_secrets("oauth2_client_credentials", &obj(json!({}))),
            vec!["client_secret"]
        );
    }
}
