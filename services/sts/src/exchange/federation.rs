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
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
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
use super::id_token::{self, Unverified};

/// How long a fetched key set is used.
const JWKS_TTL: Duration = Duration::from_secs(600);
const JWKS_MAX_BYTES: usize = 256 * 1024;
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const LEEWAY_SECS: i64 = 60;
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
    sets: Mutex<HashMap<(String, String), (Instant, KeySet)>>,
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
    ) -> Result<KeySet, StsError> {
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

/// One key of an issuer's set, with the algorithm it declares (kept apart: `jsonwebtoken`'s
/// JWK type cannot hold `ES512`).
#[derive(Clone)]
struct IssuerKey {
    jwk: Jwk,
    alg: Option<String>,
}

#[derive(Clone, Default)]
struct KeySet {
    keys: Vec<IssuerKey>,
}

/// The keys of a JWK Set document; a key this STS cannot read (an unknown `kty`, say) is
/// left out rather than failing the issuer's other keys.
fn key_set(doc: &Value) -> Result<KeySet, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS is not a key set")?;
    let keys = keys
        .iter()
        .filter_map(|k| {
            let mut k = k.as_object()?.clone();
            let alg = match k.remove("alg") {
                Some(Value::String(a)) => Some(a),
                None => None,
                Some(_) => return None,
            };
            let jwk: Jwk = serde_json::from_value(Value::Object(k)).ok()?;
            Some(IssuerKey { jwk, alg })
        })
        .collect();
    Ok(KeySet { keys })
}

async fn fetch(url: &str) -> Result<KeySet, String> {
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
    let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    key_set(&doc)
}

/// §4.5's key rules: a `kid`, `use` absent or `sig`, RSA or EC P-256/P-384/P-521.
fn usable(jwk: &Jwk) -> bool {
    let use_ok = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    let kind_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            ec.curve,
            EllipticCurve::P256 | EllipticCurve::P384 | EllipticCurve::P521
        ),
        _ => false,
    };
    use_ok && kind_ok && jwk.common.key_id.is_some()
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
    let jws = Unverified::parse(token).map_err(invalid)?;
    let iss = jws
        .payload()
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid("iss required"))?;
    let Some(row) = issuer_row(app, &client.zone_id, &iss).await? else {
        return Err(invalid("issuer is not registered in the zone"));
    };
    let EntityData::SubjectIssuer(data) = &row.data else {
        return Err(invalid("issuer is not registered in the zone"));
    };
    let kid = jws.kid.clone();
    let mut set = keys.set(&row.id, data, false).await?;
    if !set
        .keys
        .iter()
        .any(|k| k.jwk.common.key_id.as_deref() == Some(kid.as_str()))
    {
        // The issuer may have rotated: fetch again, at most once per 30 s per issuer.
        set = keys.set(&row.id, data, true).await?;
    }
    let named: Vec<&IssuerKey> = set
        .keys
        .iter()
        .filter(|k| k.jwk.common.key_id.as_deref() == Some(kid.as_str()) && usable(&k.jwk))
        .collect();
    if named.is_empty() {
        return Err(invalid("unknown signing key"));
    }
    // Of the keys the `kid` names, one of the token's algorithm (RFC 7517 §4.4: a key that
    // declares its algorithm is used with that one only).
    let jwk = named
        .iter()
        .find(|k| jws.alg.fits(&k.jwk) && k.alg.as_deref().is_none_or(|a| a == jws.alg.name()))
        .map(|k| &k.jwk)
        .ok_or_else(|| invalid("key does not fit the algorithm"))?;
    let claims = jws.verify(jwk).map_err(|why| {
        tracing::debug!(reason = why, "id token refused");
        invalid(why)
    })?;
    let now = chrono::Utc::now().timestamp();
    let sub = id_token::check_claims(&claims, &data.issuer, &data.audience, now, LEEWAY_SECS)
        .map_err(invalid)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_keeps_every_key_it_can_read_with_its_declared_algorithm() {
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-521", "kid": "p521", "alg": "ES512",
             "x": "AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt",
             "y": "AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1"},
            {"kty": "OKP", "crv": "X448", "kid": "unknown", "x": "AA"},
            {"kty": "EC", "crv": "P-256", "kid": "p256", "alg": 7,
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "plain",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]});
        let set = key_set(&doc).unwrap();
        let kept: Vec<(Option<&str>, Option<&str>)> = set
            .keys
            .iter()
            .map(|k| (k.jwk.common.key_id.as_deref(), k.alg.as_deref()))
            .collect();
        assert_eq!(kept, [(Some("p521"), Some("ES512")), (Some("plain"), None)]);
        assert!(set.keys.iter().all(|k| usable(&k.jwk)));
        assert!(key_set(&json!({"keys": {}})).is_err());
        assert!(key_set(&json!([])).is_err());
    }
}
