//! The Gateway's side of the exchange: the request HMAC (sts.md §11.2), the operation floor
//! (§5.3) and the private upstream directive (§9.2) with the provider credential opened
//! from its sealed form.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use serde_json::{json, Map, Value};
use serval_domain::catalog::{EntityData, ResourceData};
use serval_kit::gateway_hmac;
use serval_kit::secrets::Binding;
use serval_kit::App;
use serval_projector::catalog as read;
use sha2::{Digest, Sha256};

use super::error::StsError;
use super::form::TokenForm;

/// How far the Gateway's clock may be from ours.
const SKEW_SECS: i64 = 60;
/// How long a consumed nonce is remembered (longer than the window it can be used in).
const NONCE_TTL_SECS: u64 = 2 * SKEW_SECS as u64 + 10;
/// The sealed provider configuration's binding purpose (the Management API seals it).
const PROVIDER_SECRETS: &str = "provider_config";

fn refused_because(why: &'static str) -> StsError {
    tracing::warn!(reason = why, "gateway exchange signature refused");
    StsError::access_denied(
        StatusCode::UNAUTHORIZED,
        "invalid gateway exchange signature",
    )
}

/// A verified Gateway request's nonce, not yet consumed.
pub struct Nonce {
    key: String,
    ts: String,
}

/// §11.2: timestamp within ±60 s, `gateway_request_id` = `X-Request-Id`, the signature over
/// `ts\nnonce\nMETHOD\npath\nsha256(body)` in constant time. The nonce is consumed by
/// [`consume_nonce`] before anything the request changes.
pub fn check_signature(
    app: &App,
    headers: &HeaderMap,
    form: &TokenForm,
    path: &str,
    body: &[u8],
) -> Result<Nonce, StsError> {
    let key = app
        .gateway_key()
        .ok_or_else(|| refused_because("no key configured"))?;
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(nonce), Some(sig)) = (
        get(gateway_hmac::TIMESTAMP),
        get(gateway_hmac::NONCE),
        get(gateway_hmac::SIGNATURE),
    ) else {
        return Err(refused_because("headers missing"));
    };
    let ts_n: i64 = ts.parse().map_err(|_| refused_because("bad timestamp"))?;
    let skew = Utc::now()
        .timestamp()
        .checked_sub(ts_n)
        .and_then(i64::checked_abs);
    if nonce.is_empty() || skew.is_none_or(|s| s > SKEW_SECS) {
        return Err(refused_because("timestamp outside the window"));
    }
    let rid = get("x-request-id");
    if rid.is_none() || form.get("gateway_request_id") != rid {
        return Err(refused_because(
            "gateway_request_id differs from X-Request-Id",
        ));
    }
    if !gateway_hmac::verify(&key, (ts, nonce, sig), "POST", path, body) {
        return Err(refused_because("signature mismatch"));
    }
    Ok(Nonce {
        key: app
            .store
            .keys()
            .gateway_nonce(&hex::encode(Sha256::digest(nonce.as_bytes()))),
        ts: ts.to_owned(),
    })
}

/// The nonce unused: consumed here (Redis unavailable → refused).
pub async fn consume_nonce(app: &App, n: &Nonce) -> Result<(), StsError> {
    let mut conn = app.redis.clone();
    let fresh: Option<String> = redis::cmd("SET")
        .arg(&n.key)
        .arg(&n.ts)
        .arg("NX")
        .arg("EX")
        .arg(NONCE_TTL_SECS)
        .query_async(&mut conn)
        .await
        .map_err(|_| refused_because("nonce registry unavailable"))?;
    if fresh.is_none() {
        return Err(refused_because("nonce reused"));
    }
    Ok(())
}

/// §5.3: an `enforced` resource admits only a declared `(method, path)` whose scope the
/// presented mandate carries.
pub fn operation_permitted(
    r: &ResourceData,
    method: &str,
    path: &str,
    presented: &[String],
) -> bool {
    if r.operation_enforcement != "enforced" {
        return true;
    }
    let (method, path) = (method.to_ascii_uppercase(), path.trim());
    r.operations.iter().any(|op| {
        op.method.eq_ignore_ascii_case(&method) && op.path == path && presented.contains(&op.scope)
    })
}

fn unavailable(identifier: &str, reason: &str) -> StsError {
    StsError::new(
        StatusCode::BAD_GATEWAY,
        "http_request_failed",
        format!("upstream credential for resource {identifier} is unavailable: {reason}"),
    )
}

/// An OAuth access token as the credential: `Authorization`/`Bearer` unless the provider
/// overrides them.
fn oauth_directive(d: &mut Map<String, Value>, cfg: &Map<String, Value>, token: String) {
    d.insert("auth_mode".into(), json!("provider_oauth"));
    d.insert("provider_token".into(), json!(token));
    d.insert(
        "auth_header".into(),
        json!(str_of(cfg, "auth_header").unwrap_or("Authorization")),
    );
    d.insert(
        "auth_scheme".into(),
        json!(str_of(cfg, "auth_scheme").unwrap_or("Bearer")),
    );
}

fn str_of<'a>(cfg: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    cfg.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// §9.2: the upstream directive of one granted resource. The plaintext credential exists
/// only in the returned value, which goes to the Gateway alone.
pub async fn directive(
    app: &App,
    tokens: &super::provider_tokens::ProviderTokens,
    (zone, subject): (&str, &str),
    r: &ResourceData,
    view: Option<&super::zone_cache::ZoneView>,
) -> Result<Value, StsError> {
    let mut d = Map::new();
    d.insert(
        "url".into(),
        json!(r.upstream_url.clone().unwrap_or_default()),
    );
    let Some(pid) = r.credential_provider_id.as_deref() else {
        d.insert("auth_mode".into(), json!("caracal_jwt"));
        return Ok(Value::Object(d));
    };
    let entity = match view.and_then(|v| v.provider(pid)) {
        Some(kept) => kept,
        None => {
            let loaded = read::load(&app.pool, zone, pid)
                .await
                .map_err(|_| unavailable(&r.identifier, "provider unreadable"))?;
            if let Some(v) = view {
                v.keep_provider(pid, loaded.clone());
            }
            loaded
        }
    };
    let Some(provider) = entity.filter(|e| e.archived_at.is_none()) else {
        return Err(unavailable(&r.identifier, "provider not found"));
    };
    let EntityData::Provider(p) = &provider.data else {
        return Err(unavailable(&r.identifier, "provider not found"));
    };
    let cfg: Map<String, Value> = serde_json::from_str(&p.config_json).unwrap_or_default();
    let secrets = || async {
        let Some(sealed) = &p.sealed_secrets else {
            return Err(unavailable(&r.identifier, "credential not provisioned"));
        };
        let plain = app
            .custody
            .open(
                &Binding {
                    zone_id: zone,
                    object_id: pid,
                    purpose: PROVIDER_SECRETS,
                },
                sealed,
            )
            .await
            .map_err(|_| unavailable(&r.identifier, "credential cannot be opened"))?;
        serde_json::from_slice::<BTreeMap<String, String>>(&plain)
            .map_err(|_| unavailable(&r.identifier, "credential cannot be opened"))
    };
    let secret = |s: &BTreeMap<String, String>, k: &str| {
        s.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| unavailable(&r.identifier, "credential not provisioned"))
    };
    d.insert("provider_id".into(), json!(pid));
    let hosts = cfg
        .get("allowed_token_hosts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let forward = cfg
        .get("forward_caracal_identity")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match p.kind.as_str() {
        "none" => {
            d.insert("auth_mode".into(), json!("none"));
        }
        "caracal_mandate" => {
            d.insert("auth_mode".into(), json!("caracal_jwt"));
        }
        "api_key" => {
            let s = secrets().await?;
            d.insert("auth_mode".into(), json!("provider_apikey"));
            d.insert("provider_token".into(), json!(secret(&s, "api_key")?));
            if str_of(&cfg, "auth_location") == Some("query") {
                d.insert("auth_location".into(), json!("query"));
                d.insert(
                    "query_param_name".into(),
                    json!(str_of(&cfg, "query_param_name").unwrap_or_default()),
                );
            } else {
                d.insert("auth_location".into(), json!("header"));
                if let Some(h) = str_of(&cfg, "header_name") {
                    d.insert("auth_header".into(), json!(h));
                }
                if let Some(sc) = str_of(&cfg, "auth_scheme") {
                    d.insert("auth_scheme".into(), json!(sc));
                }
            }
        }
        "bearer_token" => {
            let s = secrets().await?;
            d.insert("auth_mode".into(), json!("provider_oauth"));
            d.insert("provider_token".into(), json!(secret(&s, "bearer_token")?));
            d.insert(
                "auth_header".into(),
                json!(str_of(&cfg, "auth_header").unwrap_or("Authorization")),
            );
            d.insert(
                "auth_scheme".into(),
                json!(str_of(&cfg, "auth_scheme").unwrap_or("Bearer")),
            );
        }
        "http_basic" => {
            let s = secrets().await?;
            let user = str_of(&cfg, "username").unwrap_or_default().trim();
            let pass = secret(&s, "password")?;
            d.insert("auth_mode".into(), json!("provider_oauth"));
            d.insert(
                "provider_token".into(),
                json!(STANDARD.encode(format!("{user}:{pass}"))),
            );
            d.insert("auth_header".into(), json!("Authorization"));
            d.insert("auth_scheme".into(), json!("Basic"));
        }
        "oauth2_client_credentials" => {
            let s = secrets().await?;
            let token = tokens
                .client_credentials(app, &provider, &r.identifier, &cfg, &s)
                .await?;
            oauth_directive(&mut d, &cfg, token);
        }
        "oauth2_authorization_code" => {
            let s = secrets().await?;
            let (token, connection) = super::provider_tokens::connection_token(
                app,
                (zone, pid),
                subject,
                &r.identifier,
                &cfg,
                &s,
            )
            .await?;
            oauth_directive(&mut d, &cfg, token);
            d.insert("connection_id".into(), json!(connection));
        }
        other => {
            return Err(unavailable(
                &r.identifier,
                &format!("provider kind {other} is not served by this STS"),
            ))
        }
    }
    if matches!(p.kind.as_str(), "api_key" | "bearer_token" | "http_basic") && !hosts.is_empty() {
        d.insert("allowed_token_hosts".into(), json!(hosts));
    }
    if forward && matches!(p.kind.as_str(), "api_key" | "bearer_token" | "http_basic") {
        d.insert("forward_caracal_identity".into(), json!(true));
    }
    Ok(Value::Object(d))
}
