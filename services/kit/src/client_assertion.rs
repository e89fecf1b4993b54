//! RFC 7523 client assertions (`private_key_jwt`) as a second way for an application to
//! authenticate at the STS, beside its client secret. The application registers public keys
//! as a JWK Set (`jwks`, the RFC 7591 metadata name) through the Management API; the STS
//! accepts a JWT signed by one of them whose `iss` and `sub` are the application, whose
//! `aud` is the token endpoint (or the issuer), that expires within a few minutes and whose
//! `jti` was never presented before. Caracal's clients only ever send secrets and never see
//! the field, so nothing changes for them.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// `client_assertion_type` of a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Keys one application may register (room for a rotation's overlap).
pub const MAX_KEYS: usize = 5;
/// The registered set's size cap (a few RSA-4096 keys fit).
pub const MAX_JWKS_BYTES: usize = 16 * 1024;
/// An assertion may not live longer than this from now: it is a one-request credential.
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated on `exp`, `nbf` and `iat` (not in the future).
pub const LEEWAY_SECS: i64 = 30;
/// The longest `jti` accepted (it is remembered until the assertion expires).
pub const MAX_JTI_CHARS: usize = 256;
/// The longest assertion read at all.
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;

/// JWK members that only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a registered key set was refused (the Management API's `description`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("jwks must be an object with a \"keys\" array and nothing else")]
    Shape,
    #[error("jwks may hold at most {MAX_KEYS} keys")]
    TooMany,
    #[error("jwks must be at most {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("jwks key {0}: only public keys may be registered")]
    Private(usize),
    #[error("jwks key {0}: {1}")]
    Key(usize, &'static str),
    #[error("jwks key ids must be unique")]
    DuplicateKid,
}

/// Why an assertion was refused (logged, never shown: the client sees "invalid client
/// credentials" as for a wrong secret).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssertionError {
    #[error("the application registered no keys")]
    NoKeys,
    #[error("the assertion is not a well-formed JWT")]
    Malformed,
    /// Also every HMAC algorithm: no registered key shape signs with one (`algorithms_of`).
    #[error("no registered key matches the assertion's kid and algorithm")]
    UnknownKey,
    #[error("the assertion's signature or claims are invalid: {0}")]
    Invalid(String),
    #[error("iss and sub must both be the application id")]
    Subject,
    #[error("the assertion expires too far in the future")]
    TooLong,
    #[error("the assertion has no usable jti")]
    Jti,
}

/// The algorithm a key of this shape signs with, if Serval accepts it.
fn algorithms_of(jwk: &Jwk) -> &'static [Algorithm] {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => &[],
        },
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKey(_) => &[],
    }
}

fn check_key(i: usize, raw: &Value) -> Result<(Option<String>, Jwk), JwksError> {
    let obj = raw
        .as_object()
        .ok_or(JwksError::Key(i, "must be an object"))?;
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(JwksError::Private(i));
    }
    let jwk: Jwk = serde_json::from_value(raw.clone())
        .map_err(|_| JwksError::Key(i, "not a JWK (kty EC, OKP or RSA with its members)"))?;
    let algs = algorithms_of(&jwk);
    if algs.is_empty() {
        return Err(JwksError::Key(
            i,
            "unsupported key type (EC P-256/P-384, OKP Ed25519 or RSA)",
        ));
    }
    if let AlgorithmParameters::RSA(p) = &jwk.algorithm {
        let n = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            p.n.trim_end_matches('='),
        )
        .map_err(|_| JwksError::Key(i, "n is not base64url"))?;
        let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
        let n = &n[first..];
        let bits =
            (n.len() * 8).saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize));
        if !(2048..=8192).contains(&bits) {
            return Err(JwksError::Key(i, "RSA keys must have 2048 to 8192 bits"));
        }
        let e = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            p.e.trim_end_matches('='),
        )
        .map_err(|_| JwksError::Key(i, "e is not base64url"))?;
        let e: Vec<u8> = e.into_iter().skip_while(|b| *b == 0).collect();
        let odd = e.last().is_some_and(|b| b & 1 == 1);
        if e.is_empty() || e.len() > 4 || !odd || (e.len() == 1 && e[0] < 3) {
            return Err(JwksError::Key(i, "e must be an odd exponent of at least 3"));
        }
    }
    if let Some(u) = obj.get("use") {
        if u != "sig" {
            return Err(JwksError::Key(i, "use must be \"sig\""));
        }
    }
    if let Some(a) = obj.get("alg") {
        let alg = a
            .as_str()
            .and_then(|s| s.parse::<Algorithm>().ok())
            .ok_or(JwksError::Key(
                i,
                "alg is not an accepted signing algorithm",
            ))?;
        if !algs.contains(&alg) {
            return Err(JwksError::Key(i, "alg does not match the key type"));
        }
    }
    DecodingKey::from_jwk(&jwk).map_err(|_| JwksError::Key(i, "the key does not parse"))?;
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.chars().count() <= 128 => Some(k.clone()),
        Some(_) => {
            return Err(JwksError::Key(
                i,
                "kid must be a string of 1-128 characters",
            ))
        }
    };
    Ok((kid, jwk))
}

/// Checks a key set to register and returns it as stored (compact JSON), or `None` for an
/// empty `keys` array (no keys: client assertions off for the application).
pub fn parse_jwks(v: &Value) -> Result<Option<String>, JwksError> {
    let obj: &Map<String, Value> = v.as_object().ok_or(JwksError::Shape)?;
    let keys = match obj.get("keys") {
        Some(Value::Array(k)) if obj.len() == 1 => k,
        _ => return Err(JwksError::Shape),
    };
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooMany);
    }
    let stored = v.to_string();
    if stored.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    if keys.is_empty() {
        return Ok(None);
    }
    let mut kids = std::collections::BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        let (kid, _) = check_key(i, k)?;
        // Several keys need kids to be told apart.
        if keys.len() > 1 && kid.is_none() {
            return Err(JwksError::Key(
                i,
                "kid is required when several keys are registered",
            ));
        }
        if let Some(kid) = kid {
            if !kids.insert(kid) {
                return Err(JwksError::DuplicateKid);
            }
        }
    }
    Ok(Some(stored))
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    iat: Option<i64>,
    jti: Option<String>,
}

/// A verified assertion: its `jti` (to be consumed once) and expiry (unix seconds).
#[derive(Debug)]
pub struct Verified {
    pub jti: String,
    pub exp: i64,
}

/// Verifies `assertion` against the application's registered `jwks` (as stored by
/// [`parse_jwks`]): signature by a registered key, `iss` = `sub` = `client_id`, `aud` one of
/// `audiences`, unexpired and expiring within [`MAX_LIFETIME_SECS`] of `now`, a `jti`.
/// Single use of the `jti` is the caller's (it needs the store).
pub fn verify(
    assertion: &str,
    jwks: Option<&str>,
    client_id: &str,
    audiences: &[String],
    now: i64,
) -> Result<Verified, AssertionError> {
    let jwks: Value = jwks
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or(AssertionError::NoKeys)?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or(AssertionError::NoKeys)?;
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::Malformed);
    }
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| AssertionError::Malformed)?;
    let candidates: Vec<Jwk> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => keys.len() == 1,
            (None, _) => keys.len() == 1,
        })
        .filter(|k| algorithms_of(k).contains(&header.alg))
        .filter(|k| {
            k.common
                .key_algorithm
                .as_ref()
                .is_none_or(|a| format!("{a:?}") == format!("{:?}", header.alg))
        })
        .collect();
    let Some(jwk) = candidates.first() else {
        return Err(AssertionError::UnknownKey);
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| AssertionError::UnknownKey)?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS as u64;
    v.set_audience(audiences);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<Claims>(assertion, &key, &v)
        .map_err(|e| AssertionError::Invalid(e.to_string()))?;
    let c = data.claims;
    if c.iss != client_id || c.sub != client_id {
        return Err(AssertionError::Subject);
    }
    if c.exp > now.saturating_add(MAX_LIFETIME_SECS + LEEWAY_SECS) {
        return Err(AssertionError::TooLong);
    }
    if c.exp < now.saturating_sub(LEEWAY_SECS) {
        return Err(AssertionError::Invalid("expired".into()));
    }
    if c.iat.is_some_and(|t| t > now.saturating_add(LEEWAY_SECS)) {
        return Err(AssertionError::Invalid("issued in the future".into()));
    }
    let jti = c
        .jti
        .filter(|j| !j.is_empty() && j.chars().count() <= MAX_JTI_CHARS)
        .ok_or(AssertionError::Jti)?;
    Ok(Verified { jti, exp: c.exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_sets_with_private_members_or_odd_shapes_are_refused() {
        let ec = json!({"kty":"EC","crv":"P-256","kid":"a",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        assert!(parse_jwks(&json!({"keys":[ec.clone()]})).unwrap().is_some());
        assert_eq!(parse_jwks(&json!({"keys":[]})), Ok(None));
        let mut private = ec.clone();
        private["d"] = json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI");
        assert_eq!(
            parse_jwks(&json!({"keys":[private]})),
            Err(JwksError::Private(0))
        );
        assert_eq!(
            parse_jwks(&json!({"keys":[{"kty":"oct","k":"c2VjcmV0"}]})),
            Err(JwksError::Private(0))
        );
        assert_eq!(parse_jwks(&json!({"keys":{}})), Err(JwksError::Shape));
        assert_eq!(
            parse_jwks(&json!({"keys":[], "extra":1})),
            Err(JwksError::Shape)
        );
        assert_eq!(
            parse_jwks(&json!({"keys":[ec.clone(), ec.clone()]})),
            Err(JwksError::DuplicateKid)
        );
        let mut wrong_alg = ec.clone();
        wrong_alg["alg"] = json!("RS256");
        assert!(matches!(
            parse_jwks(&json!({"keys":[wrong_alg]})),
            Err(JwksError::Key(0, _))
        ));
        let many: Vec<Value> = (0..6)
            .map(|i| {
                let mut k = ec.clone();
                k["kid"] = json!(format!("k{i}"));
                k
            })
            .collect();
        assert_eq!(
            parse_jwks(&json!({ "keys": many })),
            Err(JwksError::TooMany)
        );
    }

    #[test]
    fn an_assertion_without_registered_keys_or_well_formed_jwt_is_refused() {
        assert_eq!(
            verify("a.b.c", None, "app", &["aud".into()], 0).unwrap_err(),
            AssertionError::NoKeys
        );
        let jwks = json!({"keys":[{"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})
        .to_string();
        assert_eq!(
            verify("not a jwt", Some(&jwks), "app", &["aud".into()], 0).unwrap_err(),
            AssertionError::Malformed
        );
    }
}
