//! A zone's mandate signing keys (sts.md §13): one catalog object per key, created by the
//! STS (the first on a zone's first mint, the next on every rotation), never changed.
//!
//! The official verifier caches a zone's JWKS for 5 minutes and never refetches on an
//! unknown `kid`, so a key is **published before it signs**: a rotated-in key carries
//! `signs_from` = rotation time + [`PUBLISH_LEAD_SECS`], and every JWKS served after the
//! rotation lists it. A verifier that cached the document before the rotation has expired
//! its cache by the time the key signs. The key it replaces stays published for
//! [`GRACE_SECS`] after it stopped signing (mandates live at most an hour).
//!
//! The private key is a PKCS#8 document sealed (AES-256-GCM) under the zone's data key; the
//! public half is the JWK's `x`/`y`. Both are fixed at creation.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long before it signs a rotated-in key is published (verifier cache 300 s, plus the
/// STS processes' 30 s key-set refresh, plus margin).
pub const PUBLISH_LEAD_SECS: i64 = 360;
/// How long a replaced key stays published after its successor started signing.
pub const GRACE_SECS: i64 = 24 * 3600;
/// The sealing purpose of a signing key's private half.
pub const SEAL_PURPOSE: &str = "zone_signing_key";
/// A zone's first key signs from this long before its creation, so processes whose clocks
/// lag the creator's still find it signing.
pub const FIRST_KEY_BACKDATE_SECS: i64 = 60;
/// Reservation kind: one key per generation and zone.
pub const GENERATION: &str = "signing_key_generation";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyData {
    /// 1 for a zone's first key, +1 per rotation.
    pub generation: u64,
    /// P-256 public point, base64url without padding (JWK `x`, `y`).
    pub x: String,
    pub y: String,
    /// AES-256-GCM envelope of the PKCS#8 private key.
    pub sealed_private_key: String,
    /// From when this key signs (the newest generation whose time has come signs).
    pub signs_from: DateTime<Utc>,
}

/// A key with its id (the object id is the JWS `kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub kid: &'a str,
    pub key: &'a SigningKeyData,
}

/// The key that signs at `now`: the highest generation whose `signs_from` has come; if none
/// has (a clock far behind the creator's), the first generation, which was published when
/// it was created. `None` only for a zone without keys.
pub fn signing<'a>(keys: &[KeyRef<'a>], now: DateTime<Utc>) -> Option<KeyRef<'a>> {
    keys.iter()
        .filter(|k| k.key.signs_from <= now)
        .max_by_key(|k| k.key.generation)
        .or_else(|| keys.iter().min_by_key(|k| k.key.generation))
        .cloned()
}

/// The keys a JWKS lists at `now`, signing key first: the signing key, every key waiting to
/// sign, and older keys whose successor started signing less than [`GRACE_SECS`] ago.
pub fn published<'a>(keys: &[KeyRef<'a>], now: DateTime<Utc>) -> Vec<KeyRef<'a>> {
    let Some(current) = signing(keys, now) else {
        // Nothing signs yet (only future keys): list them, so verifiers learn them early.
        let mut all: Vec<KeyRef<'a>> = keys.to_vec();
        all.sort_by_key(|k| k.key.generation);
        return all;
    };
    let mut out = vec![current.clone()];
    let mut waiting: Vec<KeyRef<'a>> = keys
        .iter()
        .filter(|k| k.key.generation > current.key.generation)
        .cloned()
        .collect();
    waiting.sort_by_key(|k| k.key.generation);
    out.extend(waiting);
    let mut older: Vec<KeyRef<'a>> = keys
        .iter()
        .filter(|k| k.key.generation < current.key.generation)
        .filter(|k| {
            // Retired when the next generation started signing.
            let successor = keys
                .iter()
                .filter(|s| s.key.generation > k.key.generation && s.key.signs_from <= now)
                .map(|s| s.key.signs_from)
                .min();
            successor.is_some_and(|t| now - t < Duration::seconds(GRACE_SECS))
        })
        .cloned()
        .collect();
    older.sort_by_key(|k| std::cmp::Reverse(k.key.generation));
    out.extend(older);
    out
}

/// The generation and `signs_from` of the key a rotation at `now` adds.
pub fn next(keys: &[KeyRef<'_>], now: DateTime<Utc>) -> (u64, DateTime<Utc>) {
    let generation = keys.iter().map(|k| k.key.generation).max().unwrap_or(0) + 1;
    let signs_from = if generation == 1 {
        // No verifier can have cached a key set of a zone that never had one.
        now - Duration::seconds(FIRST_KEY_BACKDATE_SECS)
    } else {
        now + Duration::seconds(PUBLISH_LEAD_SECS)
    };
    (generation, signs_from)
}

/// Whether a zone whose newest key begins signing at `newest_signs_from` is due for its
/// scheduled rotation (`interval` seconds; 0 = never). Measured from when the newest key
/// signs, so a key rotated in but still waiting to sign never triggers another rotation.
pub fn rotation_due(newest_signs_from: DateTime<Utc>, interval: u64, now: DateTime<Utc>) -> bool {
    let Ok(secs) = i64::try_from(interval) else {
        return false;
    };
    secs > 0
        && newest_signs_from
            .checked_add_signed(Duration::seconds(secs))
            .is_some_and(|due| due <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_is_due_an_interval_after_the_newest_key_signs() {
        let now = Utc::now();
        assert!(rotation_due(now - Duration::seconds(100), 100, now));
        assert!(!rotation_due(now - Duration::seconds(99), 100, now));
        // A rotated-in key waiting to sign defers the next rotation.
        assert!(!rotation_due(
            now + Duration::seconds(PUBLISH_LEAD_SECS),
            1,
            now
        ));
        assert!(!rotation_due(now - Duration::days(999), 0, now));
        assert!(!rotation_due(now, u64::MAX, now));
    }

    fn key(generation: u64, signs_from: DateTime<Utc>) -> SigningKeyData {
        SigningKeyData {
            generation,
            x: "x".into(),
            y: "y".into(),
            sealed_private_key: "s".into(),
            signs_from,
        }
    }

    #[test]
    fn a_rotated_key_is_published_before_it_signs_and_the_old_one_stays_in_grace() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000);
        let (g1, s1) = next(&[], t0);
        assert_eq!(
            (g1, s1),
            (1, t0 - Duration::seconds(FIRST_KEY_BACKDATE_SECS))
        );
        let k1 = key(g1, s1);
        let ids = ["k1", "k2"];
        let one = [KeyRef {
            kid: ids[0],
            key: &k1,
        }];
        let t1 = t0 + Duration::hours(2);
        let (g2, s2) = next(&one, t1);
        assert_eq!(g2, 2);
        assert_eq!(s2, t1 + Duration::seconds(PUBLISH_LEAD_SECS));
        let k2 = key(g2, s2);
        let both = [
            KeyRef {
                kid: ids[0],
                key: &k1,
            },
            KeyRef {
                kid: ids[1],
                key: &k2,
            },
        ];
        // Right after the rotation: k1 still signs, k2 is already published.
        let kids = |v: Vec<KeyRef<'_>>| v.iter().map(|k| k.kid.to_owned()).collect::<Vec<_>>();
        assert_eq!(signing(&both, t1).unwrap().kid, "k1");
        assert_eq!(kids(published(&both, t1)), ["k1", "k2"]);
        // Once its time comes, k2 signs and k1 is kept for the grace period only.
        assert_eq!(signing(&both, s2).unwrap().kid, "k2");
        assert_eq!(kids(published(&both, s2)), ["k2", "k1"]);
        let late = s2 + Duration::seconds(GRACE_SECS);
        assert_eq!(kids(published(&both, late)), ["k2"]);
    }
}
