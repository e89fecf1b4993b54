//! The Gateway↔STS request MAC (gateway.md §4.2, sts.md §11.2): HMAC-SHA256 under
//! `GATEWAY_STS_HMAC_KEY` over `"{ts}\n{nonce}\n{METHOD}\n{path}\n{hex sha256(body)}"`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const TIMESTAMP: &str = "x-caracal-gateway-timestamp";
pub const NONCE: &str = "x-caracal-gateway-request";
pub const SIGNATURE: &str = "x-caracal-gateway-signature";

/// The MAC key: the configured value (hex of at least 32 bytes) as its text bytes, the
/// convention the internal policy routes and their callers have always used.
pub fn key(configured: Option<&str>) -> Option<Vec<u8>> {
    let k = configured?.trim();
    hex::decode(k)
        .ok()
        .filter(|raw| raw.len() >= 32)
        .map(|_| k.as_bytes().to_vec())
}

fn mac(
    key: &[u8],
    ts: &str,
    nonce: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(
        format!(
            "{ts}\n{nonce}\n{}\n{path}\n{}",
            method.to_ascii_uppercase(),
            hex::encode(Sha256::digest(body))
        )
        .as_bytes(),
    );
    Some(mac)
}

/// The signature (lowercase hex).
pub fn sign(key: &[u8], ts: &str, nonce: &str, method: &str, path: &str, body: &[u8]) -> String {
    mac(key, ts, nonce, method, path, body)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `signature` (hex) is right, compared in constant time.
pub fn verify(
    key: &[u8],
    (ts, nonce, signature): (&str, &str, &str),
    method: &str,
    path: &str,
    body: &[u8],
) -> bool {
    let (Ok(sig), Some(m)) = (
        hex::decode(signature),
        mac(key, ts, nonce, method, path, body),
    ) else {
        return false;
    };
    m.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_over_what_it_signed() {
        let key = [7u8; 32];
        let sig = sign(&key, "100", "n1", "post", "/oauth/2/token", b"a=1");
        assert!(verify(
            &key,
            ("100", "n1", &sig),
            "POST",
            "/oauth/2/token",
            b"a=1"
        ));
        assert!(!verify(
            &key,
            ("100", "n1", &sig),
            "POST",
            "/oauth/2/token",
            b"a=2"
        ));
        assert!(!verify(
            &key,
            ("101", "n1", &sig),
            "POST",
            "/oauth/2/token",
            b"a=1"
        ));
        assert!(!verify(
            &key,
            ("100", "n1", &sig),
            "POST",
            "/internal/x",
            b"a=1"
        ));
    }
}
