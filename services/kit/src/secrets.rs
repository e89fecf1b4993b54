//! Secret handling: client-secret generation and Argon2id hashing, and the custody of sealed
//! secrets (AES-256-GCM under a per-zone data key wrapped by `SECRET_STORE_KEK`).
//!
//! A zone's data key is created on first use and kept wrapped in Redis
//! (`<p>:{z:<zone>}:dek`); events and read models only ever hold ciphertext. The additional
//! data binds every ciphertext to its zone, object and purpose, so a sealed value copied
//! into another object does not open.

use std::collections::HashMap;
use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use redis::AsyncCommands;
use serval_streams::KeySpace;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret store unavailable: {0}")]
    Backend(String),
    #[error("sealed value does not open")]
    Corrupt,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// `cs_` + base64url(32 random bytes).
pub fn generate_client_secret() -> String {
    format!("cs_{}", URL_SAFE_NO_PAD.encode(random::<32>()))
}

fn argon2() -> Result<Argon2<'static>, SecretError> {
    // m = 65536 KiB, t = 3, p = 2, 32-byte output (§6: the format STS verifies).
    let params =
        Params::new(65_536, 3, 2, Some(32)).map_err(|e| SecretError::Backend(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_with_salt(secret: &str, salt: &[u8]) -> Result<[u8; 32], SecretError> {
    let mut out = [0u8; 32];
    argon2()?
        .hash_password_into(secret.as_bytes(), salt, &mut out)
        .map_err(|e| SecretError::Backend(e.to_string()))?;
    Ok(out)
}

/// `argon2id$<salt b64>$<hash b64>` (standard base64 without padding, 16-byte salt). Costly
/// by design (64 MiB): runs on the blocking pool.
pub async fn hash_client_secret(secret: String) -> Result<String, SecretError> {
    tokio::task::spawn_blocking(move || {
        let salt = random::<16>();
        let hash = hash_with_salt(&secret, &salt)?;
        Ok(format!(
            "argon2id${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(hash)
        ))
    })
    .await
    .map_err(|e| SecretError::Backend(e.to_string()))?
}

/// Verifies a secret against an `argon2id$…` hash in constant time.
pub fn verify_client_secret(secret: &str, stored: &str) -> bool {
    use subtle::ConstantTimeEq;
    let mut parts = stored.split('$');
    let (Some("argon2id"), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash)) else {
        return false;
    };
    hash_with_salt(secret, &salt).is_ok_and(|h| bool::from(h.as_slice().ct_eq(&hash)))
}

fn seal_with(key: &[u8], aad: &str, plaintext: &[u8]) -> Result<String, SecretError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SecretError::Corrupt)?;
    let nonce = random::<12>();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SecretError::Corrupt)?;
    Ok(format!(
        "v1.{}.{}",
        URL_SAFE_NO_PAD.encode(nonce),
        URL_SAFE_NO_PAD.encode(ct)
    ))
}

fn open_with(key: &[u8], aad: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
    let mut parts = sealed.split('.');
    let (Some("v1"), Some(nonce), Some(ct), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SecretError::Corrupt);
    };
    let nonce = URL_SAFE_NO_PAD
        .decode(nonce)
        .map_err(|_| SecretError::Corrupt)?;
    let ct = URL_SAFE_NO_PAD
        .decode(ct)
        .map_err(|_| SecretError::Corrupt)?;
    if nonce.len() != 12 {
        return Err(SecretError::Corrupt);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SecretError::Corrupt)?;
    cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SecretError::Corrupt)
}

/// What a sealed value belongs to (its additional authenticated data).
pub struct Binding<'a> {
    pub zone_id: &'a str,
    pub object_id: &'a str,
    pub purpose: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> String {
        format!(
            "serval.secret.v1\n{}\n{}\n{}",
            self.zone_id, self.object_id, self.purpose
        )
    }
}

/// The custody of sealed secrets.
pub struct Custody {
    kek: Vec<u8>,
    keys: KeySpace,
    conn: redis::aio::ConnectionManager,
    /// Unwrapped data keys by zone (they never change once created).
    cache: Mutex<HashMap<String, [u8; 32]>>,
}

impl Custody {
    pub fn new(kek: Vec<u8>, keys: KeySpace, conn: redis::aio::ConnectionManager) -> Self {
        Custody {
            kek,
            keys,
            conn,
            cache: Mutex::default(),
        }
    }

    fn cached(&self, zone_id: &str) -> Option<[u8; 32]> {
        let map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        map.get(zone_id).copied()
    }

    async fn data_key(&self, zone_id: &str, create: bool) -> Result<[u8; 32], SecretError> {
        if let Some(k) = self.cached(zone_id) {
            return Ok(k);
        }
        let key = self.keys.data_key(zone_id);
        let aad = format!("serval.dek.v1\n{zone_id}");
        let mut conn = self.conn.clone();
        let backend = |e: redis::RedisError| SecretError::Backend(e.to_string());
        let mut wrapped: Option<String> = conn.get(&key).await.map_err(backend)?;
        if wrapped.is_none() && create {
            let fresh = seal_with(&self.kek, &aad, &random::<32>())?;
            // NX: concurrent first uses agree on one key.
            let _: bool = conn.set_nx(&key, &fresh).await.map_err(backend)?;
            wrapped = conn.get(&key).await.map_err(backend)?;
        }
        let wrapped =
            wrapped.ok_or_else(|| SecretError::Backend("zone data key is missing".into()))?;
        let raw = open_with(&self.kek, &aad, &wrapped)?;
        let dek: [u8; 32] = raw.try_into().map_err(|_| SecretError::Corrupt)?;
        let mut map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(zone_id.to_owned(), dek);
        Ok(dek)
    }

    pub async fn seal(&self, b: &Binding<'_>, plaintext: &[u8]) -> Result<String, SecretError> {
        let dek = self.data_key(b.zone_id, true).await?;
        seal_with(&dek, &b.aad(), plaintext)
    }

    pub async fn open(&self, b: &Binding<'_>, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let dek = self.data_key(b.zone_id, false).await?;
        open_with(&dek, &b.aad(), sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secret_hash_round_trip() {
        let secret = generate_client_secret();
        assert!(secret.starts_with("cs_") && secret.len() == 46);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stored = rt.block_on(hash_client_secret(secret.clone())).unwrap();
        assert!(stored.starts_with("argon2id$"));
        assert!(verify_client_secret(&secret, &stored));
        assert!(!verify_client_secret("cs_other", &stored));
        assert!(!verify_client_secret(&secret, "argon2id$x"));
    }

    #[test]
    fn sealing_binds_the_additional_data() {
        let key = random::<32>();
        let sealed = seal_with(&key, "a", b"secret").unwrap();
        assert_eq!(open_with(&key, "a", &sealed).unwrap(), b"secret");
        assert!(open_with(&key, "b", &sealed).is_err());
        assert!(open_with(&random::<32>(), "a", &sealed).is_err());
        assert!(!sealed.contains("secret"));
    }
}
