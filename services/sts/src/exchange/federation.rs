//! The federation class (sts.md §4.5): an application exchanges a Federated user's id
//! token, issued by one of the zone's registered issuers, for that user's `use=session`,
//! `sub_type=user` mandate. No policy runs; the id token is the evidence.
//!
//! An issuer's JWKS is fetched over HTTPS through the egress-guarded client (no redirects,
//! at most 256 KiB, 5 s) and kept 10 minutes per issuer row and URL, never served stale: a
//! failed refetch fails the exchange.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};
use serval_domain::catalog::subject_issuer::subject_refusal;
use serval_domain::catalog::{CatalogKind, Entity, EntityData, SubjectIssuerData};
use serval_kit::audit_frame::Frame;
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::catalog::{self as read, Filter, Status};

use super::client_auth::Client;
use super::error::StsError;
use super::form::TokenForm;

/// How long a fetched key set is used.
const JWKS_TTL: Duration = Duration::from_secs(600);
const JWKS_MAX_BYTES: usize = 256 * 1024;
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const LEEWAY_SECS: u64 = 60;
/// A set is fetched again for an unknown `kid` once it is this old.
const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// The policy name federation decisions are recorded under (no policy runs).
pub const POLICY: &str = "caracal-subject-federation";
/// Fields a federation request must not carry.
const NOT_WITH_ID_TOKEN: [&str; 6] = [
    "resource",
    "scope",
    "session_id",
    "agent_session_id",
    "delegation_edge_id",
    "approval_id",
];

/// Issuer key sets by (issuer row, JWKS URL).
#[derive(Default)]
pub struct IssuerKeys {
    sets: Mutex<HashMap<(String, String), (Instant, JwkSet)>>,
}

/// A verified federated identity.
pub struct Federated {
    pub sub: String,
    pub issuer_id: String,
}

fn invalid(reason: &str) -> StsError {
    StsError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        format!("invalid subject_token: {reason}"),
    )
}

/// §4.5: the fields a federation request may not carry (`400 invalid_token`).
pub fn check_form(form: &TokenForm) -> Result<(), StsError> {
    let present = NOT_WITH_ID_TOKEN
        .iter()
        .any(|f| form.get(f).is_some() || (*f == "resource" && !form.resources.is_empty()));
    if present {
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "an id_token exchange carries no resource, scope, session, delegation or approval",
        ));
    }
    Ok(())
}

/// The payload of a JWS without verifying it (only to select the issuer row).
fn unverified_payload(token: &str) -> Option<Map<String, Value>> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The zone's live issuer row whose `issuer` equals `iss` byte for byte.
async fn issuer_row(app: &App, zone: &str, iss: &str) -> Result<Option<Entity>, StsError> {
    let rows = read::list(
        &app.pool,
        zone,
        CatalogKind::SubjectIssuer,
        Status::Live,
        &[Filter::Eq("issuer", iss.to_owned())],
        None,
        1,
    )
    .await
    .map_err(ApiError::from)?;
    Ok(rows.into_iter().next())
}

impl IssuerKeys {
    /// The issuer's key set; `unknown_kid` asks for a refetch of a set older than 30 s.
    async fn set(
        &self,
        issuer_id: &str,
        data: &SubjectIssuerData,
        unknown_kid: bool,
    ) -> Result<JwkSet, StsError> {
        let key = (issuer_id.to_owned(), data.jwks_url.clone());
        if let Some((at, set)) = self
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            let keep = if unknown_kid { REFETCH_AFTER } else { JWKS_TTL };
            if at.elapsed() < keep {
                return Ok(set.clone());
            }
        }
        let set = fetch(&data.jwks_url).await.map_err(|e| {
            tracing::warn!(issuer = %data.issuer, error = %e, "issuer JWKS unavailable");
            invalid("issuer keys unavailable")
        })?;
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        // Rows that were archived or re-pointed leave their old entries behind; drop the
        // lapsed ones so the map stays as small as the live issuers.
        sets.retain(|_, (at, _)| at.elapsed() < JWKS_TTL);
        sets.insert(key, (Instant::now(), set.clone()));
        Ok(set)
    }
}

async fn fetch(url: &str) -> Result<JwkSet, String> {
    if !url.starts_with("https://") || !serval_kit::egress::literal_allowed(url) {
        return Err("JWKS URL not allowed".into());
    }
    let resp = serval_kit::oauth::client()
        .get(url)
        .timeout(JWKS_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if resp.status().as_u16() != 200 {
        return Err(format!("JWKS answered {}", resp.status()));
    }
    let body = serval_kit::oauth::read_capped(resp, JWKS_MAX_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| format!("JWKS is not a key set: {e}"))
}

/// §4.5's key rules: a `kid`, `use` absent or `sig`, RSA or EC P-256/P-384 (P-521 has no
/// verifier here, so such a key verifies nothing).
fn usable(jwk: &Jwk) -> bool {
    let use_ok = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    let kind_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::EllipticCurve(ec) => {
            matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384)
        }
        _ => false,
    };
    use_ok && kind_ok && jwk.common.key_id.is_some()
}

fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => {
            true
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        _ => false,
    }
}

/// Verifies the id token against the zone's registered issuer: signature by the issuer's
/// key named by `kid`, an asymmetric algorithm, `iss`, `aud` containing the audience,
/// `exp` required, `iat` not in the future, 60 s leeway; then the `sub` rules.
pub async fn verify(
    app: &App,
    keys: &IssuerKeys,
    client: &Client,
    token: &str,
) -> Result<Federated, StsError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384
    ) {
        return Err(invalid("unsupported algorithm"));
    }
    let kid = header.kid.ok_or_else(|| invalid("kid required"))?;
    let iss = unverified_payload(token)
        .and_then(|p| p.get("iss").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| invalid("iss required"))?;
    let Some(row) = issuer_row(app, &client.zone_id, &iss).await? else {
        return Err(invalid("issuer is not registered in the zone"));
    };
    let EntityData::SubjectIssuer(data) = &row.data else {
        return Err(invalid("issuer is not registered in the zone"));
    };
    let mut set = keys.set(&row.id, data, false).await?;
    if !set
        .keys
        .iter()
        .any(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
    {
        // The issuer may have rotated: fetch again, at most once per 30 s per issuer.
        set = keys.set(&row.id, data, true).await?;
    }
    let jwk = set
        .keys
        .iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()) && usable(k))
        .ok_or_else(|| invalid("unknown signing key"))?;
    if !key_fits(jwk, header.alg) {
        return Err(invalid("key does not fit the algorithm"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid("unusable signing key"))?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS;
    v.set_issuer(&[data.issuer.as_str()]);
    v.set_audience(&[data.audience.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
        .map_err(|e| {
            tracing::debug!(error = %e, "id token refused");
            invalid("verification failed")
        })?
        .claims;
    let now = chrono::Utc::now().timestamp();
    if let Some(iat) = claims.get("iat") {
        match iat.as_i64() {
            Some(t) if t <= now.saturating_add(LEEWAY_SECS as i64) => {}
            _ => return Err(invalid("iat is in the future")),
        }
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("sub required"))?;
    if let Some(reason) = subject_refusal(sub) {
        return Err(invalid(reason));
    }
    Ok(Federated {
        sub: sub.to_owned(),
        issuer_id: row.id.clone(),
    })
}

/// The audit frame of a federation decision (`allow`, or a refusal with its reason).
pub fn frame(client: &Client, rid: &str, outcome: Result<&Federated, &str>) -> Frame {
    let mut m = Map::new();
    m.insert("application_id".into(), json!(client.id));
    m.insert("application_name".into(), json!(client.data.name));
    m.insert("subject_kind".into(), json!("user"));
    match outcome {
        Ok(f) => {
            m.insert("subject_id".into(), json!(f.sub));
            m.insert("federated_user_issuer".into(), json!(f.issuer_id));
            Frame {
                decision: "allow",
                determining_policies: json!([{ "policy": POLICY }]),
                ..Frame::refusal(&client.zone_id, rid, "token_exchange", "complete", m)
            }
        }
        Err(status) => Frame::refusal(&client.zone_id, rid, "token_exchange", status, m),
    }
}
