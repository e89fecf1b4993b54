//! The JWS checks of a Federated user's id token (sts.md §4.5): the compact form, the
//! asymmetric algorithms RS256/RS384/RS512/ES256/ES384/ES512, the signature by the issuer's
//! key, then the registered claims with a 60 s leeway.
//!
//! `jsonwebtoken` 9 has no ES512 (P-521), so the header is read here, ES512 signatures are
//! checked with RustCrypto's `p521`, and the claims are checked here for every algorithm:
//! one rule set, whichever library checked the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// An algorithm an id token may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Verified by `jsonwebtoken`.
    Jwt(Algorithm),
    /// ECDSA over P-521 with SHA-512, verified by `p521`.
    Es512,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Jwt(Algorithm::RS256),
            "RS384" => Alg::Jwt(Algorithm::RS384),
            "RS512" => Alg::Jwt(Algorithm::RS512),
            "ES256" => Alg::Jwt(Algorithm::ES256),
            "ES384" => Alg::Jwt(Algorithm::ES384),
            "ES512" => Alg::Es512,
            _ => return None,
        })
    }

    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Jwt(Algorithm::RS256) => "RS256",
            Alg::Jwt(Algorithm::RS384) => "RS384",
            Alg::Jwt(Algorithm::RS512) => "RS512",
            Alg::Jwt(Algorithm::ES256) => "ES256",
            Alg::Jwt(Algorithm::ES384) => "ES384",
            Alg::Jwt(_) => "unsupported",
            Alg::Es512 => "ES512",
        }
    }

    /// Whether `jwk` is a key of this algorithm's type and curve.
    pub fn fits(self, jwk: &Jwk) -> bool {
        match (&jwk.algorithm, self) {
            (
                AlgorithmParameters::RSA(_),
                Alg::Jwt(Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512),
            ) => true,
            (AlgorithmParameters::EllipticCurve(ec), Alg::Jwt(Algorithm::ES256)) => {
                ec.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::EllipticCurve(ec), Alg::Jwt(Algorithm::ES384)) => {
                ec.curve == EllipticCurve::P384
            }
            (AlgorithmParameters::EllipticCurve(ec), Alg::Es512) => ec.curve == EllipticCurve::P521,
            _ => false,
        }
    }
}

/// A compact JWS split and its header read, nothing verified yet.
pub struct Unverified<'a> {
    pub alg: Alg,
    pub kid: String,
    /// `header.payload`, the signed bytes.
    signed: &'a str,
    signature: Vec<u8>,
    payload: Map<String, Value>,
}

impl<'a> Unverified<'a> {
    /// Splits `token`; the error is the refusal's reason.
    pub fn parse(token: &'a str) -> Result<Self, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token");
        };
        let header = match URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(Value::Object(m)) => m,
            _ => return Err("malformed token"),
        };
        let payload = match URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(Value::Object(m)) => m,
            _ => return Err("malformed token"),
        };
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| "malformed token")?;
        // RFC 7515 §4.1.11: no extension is understood here, so none may be critical (a
        // present `crit`, whatever its value).
        if header.contains_key("crit") {
            return Err("unsupported critical header");
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .ok_or("unsupported algorithm")?;
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or("kid required")?
            .to_owned();
        Ok(Unverified {
            alg,
            kid,
            signed: &token[..h.len() + 1 + p.len()],
            signature,
            payload,
        })
    }

    /// The claims before verification (only to select the issuer).
    pub fn payload(&self) -> &Map<String, Value> {
        &self.payload
    }

    /// Checks the signature with `jwk` (which must fit the algorithm), then returns the
    /// claims.
    pub fn verify(self, jwk: &Jwk) -> Result<Map<String, Value>, &'static str> {
        if !self.alg.fits(jwk) {
            return Err("key does not fit the algorithm");
        }
        let valid = match self.alg {
            Alg::Jwt(alg) => {
                let key = DecodingKey::from_jwk(jwk).map_err(|_| "unusable signing key")?;
                let sig = URL_SAFE_NO_PAD.encode(&self.signature);
                jsonwebtoken::crypto::verify(&sig, self.signed.as_bytes(), &key, alg)
                    .unwrap_or(false)
            }
            Alg::Es512 => es512_verify(jwk, self.signed.as_bytes(), &self.signature)?,
        };
        if valid {
            Ok(self.payload)
        } else {
            Err("verification failed")
        }
    }
}

fn es512_verify(jwk: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, &'static str> {
    use p521::ecdsa::signature::Verifier;
    let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        return Err("key does not fit the algorithm");
    };
    let coordinate = |c: &str| {
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .filter(|b| b.len() == 66)
            .ok_or("unusable signing key")
    };
    let (x, y) = (coordinate(&ec.x)?, coordinate(&ec.y)?);
    let point = p521::EncodedPoint::from_affine_coordinates(
        p521::FieldBytes::from_slice(&x),
        p521::FieldBytes::from_slice(&y),
        false,
    );
    let key = p521::ecdsa::VerifyingKey::from_encoded_point(&point)
        .map_err(|_| "unusable signing key")?;
    // JWS ECDSA signatures are R || S, 66 bytes each (RFC 7518 §3.4).
    let Ok(sig) = p521::ecdsa::Signature::from_slice(signature) else {
        return Ok(false);
    };
    Ok(key.verify(message, &sig).is_ok())
}

/// The registered claims: `iss` equal to `issuer`, `aud` (a string or an array) containing
/// `audience`, `exp` required and not past, `nbf` and `iat` not in the future, `sub` a
/// string — each with `leeway` seconds. Returns the `sub`.
pub fn check_claims<'c>(
    claims: &'c Map<String, Value>,
    issuer: &str,
    audience: &str,
    now: i64,
    leeway: i64,
) -> Result<&'c str, &'static str> {
    let time = |name: &str| -> Result<Option<i64>, &'static str> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .map(Some)
                .ok_or("verification failed"),
        }
    };
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err("verification failed");
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err("verification failed");
    }
    match time("exp")? {
        Some(exp) if exp.saturating_add(leeway) > now => {}
        _ => return Err("verification failed"),
    }
    if let Some(nbf) = time("nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err("verification failed");
        }
    }
    if let Some(iat) = time("iat")? {
        if iat > now.saturating_add(leeway) {
            return Err("iat is in the future");
        }
    }
    claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("sub required")
}

#[cfg(test)]
mod tests {
    use super::*;
    use p521::ecdsa::signature::Signer;
    use serde_json::json;

    fn p521_pair() -> (p521::ecdsa::SigningKey, Jwk) {
        let key = p521::ecdsa::SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
        let public = p521::ecdsa::VerifyingKey::from(&key).to_encoded_point(false);
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-521", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(public.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(public.y().unwrap()),
        }))
        .unwrap();
        (key, jwk)
    }

    fn es512(key: &p521::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: p521::ecdsa::Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    #[test]
    fn an_es512_token_verifies_and_a_tampered_one_does_not() {
        let (key, jwk) = p521_pair();
        let header = json!({"alg": "ES512", "kid": "k1"});
        let token = es512(&key, &header, &json!({"sub": "alice"}));
        let t = Unverified::parse(&token).unwrap();
        assert_eq!((t.alg, t.kid.as_str()), (Alg::Es512, "k1"));
        assert_eq!(t.verify(&jwk).unwrap()["sub"], "alice");

        let (_, other) = p521_pair();
        let t = Unverified::parse(&token).unwrap();
        assert_eq!(t.verify(&other).err(), Some("verification failed"));

        let forged = format!(
            "{}.{}.{}",
            token.split('.').next().unwrap(),
            URL_SAFE_NO_PAD.encode(json!({"sub": "mallory"}).to_string()),
            token.split('.').nth(2).unwrap()
        );
        let t = Unverified::parse(&forged).unwrap();
        assert_eq!(t.verify(&jwk).err(), Some("verification failed"));

        // A P-521 key never verifies another algorithm, nor a P-256 key ES512.
        let t = Unverified::parse(&token).unwrap();
        let p256: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        }))
        .unwrap();
        assert_eq!(
            t.verify(&p256).err(),
            Some("key does not fit the algorithm")
        );
    }

    #[test]
    fn headers_that_are_not_understood_are_refused() {
        let (key, _) = p521_pair();
        for (header, why) in [
            (
                json!({"alg": "HS256", "kid": "k1"}),
                "unsupported algorithm",
            ),
            (json!({"alg": "none", "kid": "k1"}), "unsupported algorithm"),
            (json!({"alg": "ES512"}), "kid required"),
            (json!({"alg": "ES512", "kid": 7}), "kid required"),
            (json!({"kid": "k1"}), "unsupported algorithm"),
            (
                json!({"alg": "ES512", "kid": "k1", "crit": null}),
                "unsupported critical header",
            ),
            (
                json!({"alg": "ES512", "kid": "k1", "crit": ["b64"]}),
                "unsupported critical header",
            ),
        ] {
            let token = es512(&key, &header, &json!({}));
            assert_eq!(Unverified::parse(&token).err(), Some(why), "{header}");
        }
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.!!.AA"] {
            assert_eq!(
                Unverified::parse(bad).err(),
                Some("malformed token"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_registered_claims_are_checked_with_the_leeway() {
        let now = 1_800_000_000;
        let base = json!({"iss": "https://idp", "aud": ["x", "api"], "sub": "alice",
                          "exp": now + 10, "iat": now});
        let check = |patch: Value| {
            let mut c = base.as_object().unwrap().clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
            check_claims(&c, "https://idp", "api", now, 60).map(str::to_owned)
        };
        assert_eq!(check(json!({})), Ok("alice".to_owned()));
        assert_eq!(check(json!({"aud": "api"})), Ok("alice".to_owned()));
        assert_eq!(check(json!({"exp": now - 59})), Ok("alice".to_owned()));
        for (patch, why) in [
            (json!({"exp": now - 61}), "verification failed"),
            (json!({"exp": null}), "verification failed"),
            (json!({"exp": "soon"}), "verification failed"),
            (json!({"aud": "other"}), "verification failed"),
            (json!({"aud": null}), "verification failed"),
            (json!({"iss": "https://idp/"}), "verification failed"),
            (json!({"nbf": now + 61}), "verification failed"),
            (json!({"iat": now + 61}), "iat is in the future"),
            (json!({"sub": null}), "sub required"),
            (json!({"sub": 7}), "sub required"),
        ] {
            assert_eq!(check(patch.clone()), Err(why), "{patch}");
        }
    }
}
