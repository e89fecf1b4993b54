//! A zone's data key: the AES-256 key every sealed secret of the zone is encrypted under,
//! itself wrapped (AES-256-GCM) by the deployment's key-encryption key. One catalog object
//! per zone, created by the zone's first seal and never changed.
//!
//! It lives in the log (so in the archive, and back after a restore) because sealed data
//! without its key is lost data: a key is created only when the log has none for the zone —
//! the creation is a conditional append at version 0 — never because a cache missed it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyData {
    /// `v1.<nonce>.<ciphertext>` of the 32-byte key under the KEK, bound to the zone.
    pub wrapped: String,
}

/// The object id of a zone's data key: one per zone, so concurrent first seals collide on
/// the same aggregate and only one key is ever created.
pub fn object_id(zone_id: &str) -> String {
    format!("dek-{zone_id}")
}
