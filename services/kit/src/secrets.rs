//! Secret handling: client-secret generation and Argon2id hashing, and the custody of sealed
//! secrets (AES-256-GCM under a per-zone data key wrapped by `SECRET_STORE_KEK`).
//!
//! A zone's data key is created by the zone's first seal and kept, wrapped by the KEK, in
//! the log (catalog kind `data_key`, so in the archive and back after a restore); events
//! and read models only ever hold ciphertext. A key found only under the Redis key of
//! earlier versions (`<p>:{z:<zone>}:dek`) is recorded in the log on first use. The additional
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
use serval_domain::catalog::{data_key, CatalogEvent, Created, DataKeyData, EntityData, Stamp};
use serval_domain::Event;
use serval_streams::{AppendError, AppendRequest, EventStore, KeySpace, LogStream};
use sqlx::PgPool;

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
    conn: serval_streams::RedisConn,
    pool: PgPool,
    store: EventStore,
    /// Unwrapped data keys by zone (they never change once created).
    cache: Mutex<HashMap<String, [u8; 32]>>,
}

/// Who appends a zone's data key.
const CUSTODIAN: &str = "system:custody";
/// How long a process waits for the read model to show a data key another process
/// recorded first.
const RECORDED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Custody {
    pub fn new(
        kek: Vec<u8>,
        keys: KeySpace,
        conn: serval_streams::RedisConn,
        pool: PgPool,
        store: EventStore,
    ) -> Self {
        Custody {
            kek,
            keys,
            conn,
            pool,
            store,
            cache: Mutex::default(),
        }
    }

    fn cached(&self, zone_id: &str) -> Option<[u8; 32]> {
        let map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        map.get(zone_id).copied()
    }

    /// The zone's wrapped key as the log recorded it (through the catalog read model).
    async fn recorded(&self, zone_id: &str) -> Result<Option<String>, SecretError> {
        let id = data_key::object_id(zone_id);
        let entity = serval_projector::catalog::load(&self.pool, zone_id, &id)
            .await
            .map_err(|e| SecretError::Backend(e.to_string()))?;
        Ok(entity.and_then(|e| match e.data {
            EntityData::DataKey(k) => Some(k.wrapped),
            _ => None,
        }))
    }

    /// Appends the zone's wrapped key at version 0 of its aggregate: if the log already has
    /// one (another process, or a restored log), the append conflicts and nothing changes.
    /// True when this call recorded it.
    async fn record(&self, zone_id: &str, wrapped: &str) -> Result<bool, SecretError> {
        let event = CatalogEvent::Created(Created {
            zone_id: zone_id.to_owned(),
            data: EntityData::DataKey(DataKeyData {
                wrapped: wrapped.to_owned(),
            }),
            stamp: Stamp {
                by: CUSTODIAN.to_owned(),
                via_operator: false,
            },
        });
        let stream = LogStream::Zone(zone_id.to_owned());
        let req = AppendRequest::new(
            stream.clone(),
            Some(zone_id.to_owned()),
            data_key::object_id(zone_id),
            0,
            vec![Event::Catalog(event)],
            CUSTODIAN,
        );
        match self.store.append(&req).await {
            Ok(_) => {
                // A zone's first entry may be this one: tell the projectors.
                if let Err(e) = self.store.hint_activity(&stream).await {
                    tracing::debug!(error = %e, "activity hint not published");
                }
                Ok(true)
            }
            Err(AppendError::VersionConflict { .. }) => Ok(false),
            Err(e) => Err(SecretError::Backend(e.to_string())),
        }
    }

    /// Waits for the read model to show the key the log holds.
    async fn recorded_eventually(&self, zone_id: &str) -> Result<String, SecretError> {
        let deadline = std::time::Instant::now() + RECORDED_WAIT;
        loop {
            if let Some(w) = self.recorded(zone_id).await? {
                return Ok(w);
            }
            if std::time::Instant::now() >= deadline {
                return Err(SecretError::Backend(
                    "the zone's data key is in the log but not yet in the read model".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The zone's data key. It comes from the log (the catalog read model); a key is
    /// created only by sealing (`create`) and only when the log has none for the zone.
    /// A key kept only in Redis by an earlier version is recorded in the log first.
    async fn data_key(&self, zone_id: &str, create: bool) -> Result<[u8; 32], SecretError> {
        if let Some(k) = self.cached(zone_id) {
            return Ok(k);
        }
        let aad = format!("serval.dek.v1\n{zone_id}");
        let wrapped = match self.recorded(zone_id).await? {
            Some(w) => w,
            None => {
                let mut conn = self.conn.clone();
                let backend = |e: redis::RedisError| SecretError::Backend(e.to_string());
                let legacy_key = self.keys.data_key(zone_id);
                let mut legacy: Option<String> = conn.get(&legacy_key).await.map_err(backend)?;
                if legacy.is_none() && create {
                    // Also under the legacy key, `SET NX`: a process of an earlier version
                    // (a rolling upgrade) then agrees on this key instead of minting one.
                    let fresh = seal_with(&self.kek, &aad, &random::<32>())?;
                    let _: bool = conn.set_nx(&legacy_key, &fresh).await.map_err(backend)?;
                    legacy = conn.get(&legacy_key).await.map_err(backend)?;
                }
                let candidate = match (legacy, create) {
                    (Some(w), _) => w,
                    (None, true) => {
                        return Err(SecretError::Backend(
                            "the zone's data key could not be stored".into(),
                        ))
                    }
                    // Sealed data whose key the log does not hold: an error, never a reason
                    // to make a key (data sealed under it would be unreadable).
                    (None, false) => {
                        return Err(SecretError::Backend(
                            "the zone's data key is not in the log".into(),
                        ))
                    }
                };
                if self.record(zone_id, &candidate).await? {
                    candidate
                } else {
                    self.recorded_eventually(zone_id).await?
                }
            }
        };
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
