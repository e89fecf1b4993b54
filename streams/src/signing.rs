//! HMAC-SHA256 event signatures with key ids (`STREAMS_HMAC_KEY`, `STREAMS_HMAC_KEY_PREVIOUS`).
//!
//! The MAC covers a domain-separation label, the key id and the exact envelope bytes:
//! `HMAC(key, "serval.event.v1\n" || kid || "\n" || envelope)`. Binding the key id stops a
//! signature made under one key from being presented under another id.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const LABEL: &[u8] = b"serval.event.v1\n";
/// Caracal's floor for HMAC keys (events-and-audit.md §1).
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is not valid hex")]
    NotHex,
    #[error("key must decode to at least {MIN_KEY_BYTES} bytes, got {0}")]
    TooShort(usize),
}

#[derive(Clone)]
struct Key {
    id: String,
    bytes: Vec<u8>,
}

impl Key {
    fn new(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(Key {
            id: key_id(&bytes),
            bytes,
        })
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(LABEL);
        mac.update(self.id.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }
}

/// The key id: the first 16 hex characters of SHA-256 of the key bytes.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

/// Decodes a hex key from the environment, enforcing the 32-byte floor.
pub fn parse_hex_key(hex_key: &str) -> Result<Vec<u8>, KeyError> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| KeyError::NotHex)?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort(bytes.len()));
    }
    Ok(bytes)
}

/// Signs with the current key; verifies under the current or the previous key.
#[derive(Clone)]
pub struct Signer {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("current_kid", &self.current.id)
            .field("previous_kid", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl Signer {
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Result<Self, KeyError> {
        Ok(Signer {
            current: Key::new(current)?,
            previous: previous.map(Key::new).transpose()?,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// The raw current key, for Caracal's topic `_sig` (which has no key id).
    pub fn current_key(&self) -> &[u8] {
        &self.current.bytes
    }

    pub fn sign(&self, body: &[u8]) -> [u8; 32] {
        self.current.mac(body).finalize().into_bytes().into()
    }

    /// Constant-time verification under the key named by `kid`.
    pub fn verify(&self, kid: &str, body: &[u8], sig: &[u8]) -> bool {
        let key = if kid == self.current.id {
            &self.current
        } else {
            match &self.previous {
                Some(k) if k.id == kid => k,
                _ => return false,
            }
        };
        key.mac(body).verify_slice(sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_under_current_and_previous_keys_only() {
        let old = Signer::new(vec![1; 32], None).unwrap();
        let sig = old.sign(b"body");
        let rotated = Signer::new(vec![2; 32], Some(vec![1; 32])).unwrap();
        assert!(rotated.verify(old.key_id(), b"body", &sig));
        assert!(!rotated.verify(old.key_id(), b"bodY", &sig));
        let retired = Signer::new(vec![2; 32], None).unwrap();
        assert!(!retired.verify(old.key_id(), b"body", &sig));
        // A signature cannot be re-labelled with another key id.
        assert!(!rotated.verify(rotated.key_id(), b"body", &sig));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(parse_hex_key("abcd"), Err(KeyError::TooShort(2)));
        assert_eq!(parse_hex_key("zz"), Err(KeyError::NotHex));
        assert!(parse_hex_key(&"11".repeat(32)).is_ok());
    }
}
