//! Signed JWT assertions sent to providers' token endpoints (gateway.md §6.3, RFC 7523):
//! `private_key_jwt` client authentication (`iss` = `sub` = the client id, `aud` = the
//! token endpoint, 60 s) and the `jwt_bearer` grant (`iss` = the client id, `sub` =
//! `assertion_subject` or the client id, `aud` = `assertion_audience` or the endpoint,
//! 5 min, `scope` from the configured scopes). The provider's sealed PKCS#8 `private_key`
//! picks the algorithm: RSA → RS256, P-256 → ES256, P-384 → ES384, P-521 → ES512; `kid`
//! is the configured `key_id`, `x5t#S256` the thumbprint of the configured `certificate`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pkcs8::der::Decode;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const RSA: &str = "1.2.840.113549.1.1.1";
const EC: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const P521: &str = "1.3.132.0.35";

/// How long a client assertion lives.
const CLIENT_ASSERTION_SECS: i64 = 60;
/// How long a jwt-bearer grant assertion lives.
const GRANT_ASSERTION_SECS: i64 = 300;

enum SigningKey {
    Jwt(EncodingKey, Algorithm),
    Es512(Box<p521::ecdsa::SigningKey>),
}

impl SigningKey {
    /// The key of a PKCS#8 `PRIVATE KEY` PEM; the error says why it cannot sign.
    fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem)
            .map_err(|_| "private_key is not PEM".to_owned())?;
        if label != "PRIVATE KEY" {
            return Err("private_key is not a PKCS#8 PRIVATE KEY".into());
        }
        let info = pkcs8::PrivateKeyInfo::from_der(doc.as_bytes())
            .map_err(|_| "private_key is not PKCS#8".to_owned())?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|c| c.to_string());
        let unusable = |e: jsonwebtoken::errors::Error| format!("private_key cannot sign: {e}");
        match (oid.as_str(), curve.as_deref()) {
            // The PKCS#1 key inside the PKCS#8 wrapper is what `from_rsa_der` takes.
            (RSA, _) => Ok(SigningKey::Jwt(
                EncodingKey::from_rsa_der(info.private_key),
                Algorithm::RS256,
            )),
            (EC, Some(P256)) => Ok(SigningKey::Jwt(
                EncodingKey::from_ec_pem(pem.as_bytes()).map_err(unusable)?,
                Algorithm::ES256,
            )),
            (EC, Some(P384)) => Ok(SigningKey::Jwt(
                EncodingKey::from_ec_pem(pem.as_bytes()).map_err(unusable)?,
                Algorithm::ES384,
            )),
            (EC, Some(P521)) => {
                use p521::pkcs8::DecodePrivateKey;
                let secret = p521::SecretKey::from_pkcs8_der(doc.as_bytes())
                    .map_err(|_| "private_key is not a P-521 key".to_owned())?;
                let key = p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes())
                    .map_err(|_| "private_key is not a P-521 key".to_owned())?;
                Ok(SigningKey::Es512(Box::new(key)))
            }
            _ => Err("private_key is neither RSA nor EC P-256/P-384/P-521".into()),
        }
    }

    fn alg_name(&self) -> &'static str {
        match self {
            SigningKey::Jwt(_, Algorithm::RS256) => "RS256",
            SigningKey::Jwt(_, Algorithm::ES384) => "ES384",
            SigningKey::Jwt(..) => "ES256",
            SigningKey::Es512(_) => "ES512",
        }
    }

    fn sign(&self, header: &Map<String, Value>, claims: &Value) -> Result<String, String> {
        match self {
            SigningKey::Jwt(key, alg) => {
                let mut h = Header::new(*alg);
                h.kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
                h.x5t = header.get("x5t").and_then(Value::as_str).map(str::to_owned);
                h.x5t_s256 = header
                    .get("x5t#S256")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                jsonwebtoken::encode(&h, claims, key).map_err(|e| format!("signing: {e}"))
            }
            SigningKey::Es512(key) => {
                use p521::ecdsa::signature::Signer;
                let mut h = header.clone();
                h.insert("alg".into(), json!("ES512"));
                h.insert("typ".into(), json!("JWT"));
                let signed = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(Value::Object(h).to_string()),
                    URL_SAFE_NO_PAD.encode(claims.to_string())
                );
                let sig: p521::ecdsa::Signature = key.sign(signed.as_bytes());
                Ok(format!(
                    "{signed}.{}",
                    URL_SAFE_NO_PAD.encode(sig.to_bytes())
                ))
            }
        }
    }
}

fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `x5t` and `x5t#S256` of the configured certificate (SHA-1 and SHA-256 over its DER).
fn thumbprints(config: &Map<String, Value>) -> Result<Option<(String, String)>, String> {
    let Some(pem) = config_str(config, "certificate") else {
        return Ok(None);
    };
    let (_, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
        .map_err(|_| "certificate is not PEM".to_owned())?;
    Ok(Some((
        URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)),
        URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
    )))
}

fn header(config: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut h = Map::new();
    if let Some(kid) = config_str(config, "key_id") {
        h.insert("kid".into(), json!(kid));
    }
    if let Some((sha1, sha256)) = thumbprints(config)? {
        h.insert("x5t".into(), json!(sha1));
        h.insert("x5t#S256".into(), json!(sha256));
    }
    Ok(h)
}

/// Whether the provider's configuration can sign its assertions (checked when it is saved,
/// so a key that cannot sign is a `400`, not a `502` on first use).
pub fn check(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), String> {
    client_assertion(config, secrets, "https://serval.invalid/token").map(|_| ())
}

fn signed(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    mut claims: Map<String, Value>,
    life: i64,
) -> Result<String, String> {
    if config_str(config, "client_id").is_none() {
        return Err("client_id is required to sign an assertion".into());
    }
    let pem = secrets
        .get("private_key")
        .filter(|p| !p.is_empty())
        .ok_or("private_key is missing")?;
    let key = SigningKey::from_pem(pem)?;
    let now = chrono::Utc::now().timestamp();
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + life));
    claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    tracing::debug!(alg = key.alg_name(), "provider assertion signed");
    key.sign(&header(config)?, &Value::Object(claims))
}

/// A `private_key_jwt` client assertion for `endpoint` (RFC 7523 §2.2).
pub fn client_assertion(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    endpoint: &str,
) -> Result<String, String> {
    let client_id = config_str(config, "client_id").unwrap_or_default();
    let mut c = Map::new();
    c.insert("iss".into(), json!(client_id));
    c.insert("sub".into(), json!(client_id));
    c.insert("aud".into(), json!(endpoint));
    signed(config, secrets, c, CLIENT_ASSERTION_SECS)
}

/// The assertion of a `jwt_bearer` grant for `endpoint` (RFC 7523 §2.1).
pub fn grant_assertion(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    endpoint: &str,
) -> Result<String, String> {
    let client_id = config_str(config, "client_id").unwrap_or_default();
    let mut c = Map::new();
    c.insert("iss".into(), json!(client_id));
    c.insert(
        "sub".into(),
        json!(config_str(config, "assertion_subject").unwrap_or(client_id)),
    );
    c.insert(
        "aud".into(),
        json!(config_str(config, "assertion_audience").unwrap_or(endpoint)),
    );
    let scopes: Vec<&str> = config
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !scopes.is_empty() {
        c.insert("scope".into(), json!(scopes.join(" ")));
    }
    signed(config, secrets, c, GRANT_ASSERTION_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(jwt: &str) -> (Value, Value) {
        let mut it = jwt.split('.');
        let mut next = || -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap()
        };
        (next(), next())
    }

    fn secrets(pem: String) -> BTreeMap<String, String> {
        BTreeMap::from([("private_key".to_owned(), pem)])
    }

    #[test]
    fn each_key_type_signs_with_its_algorithm_and_the_assertion_verifies() {
        let config: Map<String, Value> = serde_json::from_value(json!({
            "client_id": "c-1", "key_id": "k-1", "scopes": ["a", "b"],
            "assertion_subject": "svc@example"
        }))
        .unwrap();
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ES384"),
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let s = secrets(pair.serialize_pem());
            let jwt = client_assertion(&config, &s, "https://idp/token").unwrap();
            let (h, c) = parts(&jwt);
            assert_eq!(
                (h["alg"].as_str(), h["kid"].as_str()),
                (Some(want), Some("k-1"))
            );
            assert_eq!(
                (c["iss"].as_str(), c["sub"].as_str(), c["aud"].as_str()),
                (Some("c-1"), Some("c-1"), Some("https://idp/token"))
            );
            assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
            let alg = if want == "ES256" {
                Algorithm::ES256
            } else {
                Algorithm::ES384
            };
            let public = jsonwebtoken::DecodingKey::from_ec_der(pair.public_key_raw());
            let mut v = jsonwebtoken::Validation::new(alg);
            v.set_audience(&["https://idp/token"]);
            jsonwebtoken::decode::<Value>(&jwt, &public, &v).expect("verifies");

            let grant = grant_assertion(&config, &s, "https://idp/token").unwrap();
            let (_, c) = parts(&grant);
            assert_eq!(c["sub"], "svc@example");
            assert_eq!(c["scope"], "a b");
            assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
        }

        let key = p521::SecretKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
        let pem = {
            use p521::pkcs8::EncodePrivateKey;
            key.to_pkcs8_pem(Default::default()).unwrap().to_string()
        };
        let jwt = client_assertion(&config, &secrets(pem), "https://idp/token").unwrap();
        let (h, _) = parts(&jwt);
        assert_eq!(h["alg"], "ES512");
        let (signed, sig) = jwt.rsplit_once('.').unwrap();
        let sig =
            p521::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        let verifying = {
            use p521::elliptic_curve::sec1::ToEncodedPoint;
            p521::ecdsa::VerifyingKey::from_encoded_point(&key.public_key().to_encoded_point(false))
                .unwrap()
        };
        use p521::ecdsa::signature::Verifier;
        verifying.verify(signed.as_bytes(), &sig).expect("verifies");
    }

    #[test]
    fn keys_that_cannot_sign_are_refused_with_the_reason() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(
            client_assertion(&Map::new(), &secrets(pair.serialize_pem()), "e").is_err(),
            "no client_id"
        );
        let config: Map<String, Value> =
            serde_json::from_value(json!({"client_id": "c-1"})).unwrap();
        let mut bad_cert = config.clone();
        bad_cert.insert("certificate".into(), json!("not a certificate"));
        assert!(check(&bad_cert, &secrets(pair.serialize_pem())).is_err());
        assert!(check(&config, &secrets(pair.serialize_pem())).is_ok());
        assert!(client_assertion(&config, &BTreeMap::new(), "e").is_err());
        for pem in [
            "not a pem".to_owned(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .unwrap()
                .serialize_pem(),
        ] {
            assert!(client_assertion(&config, &secrets(pem), "e").is_err());
        }
    }
}
