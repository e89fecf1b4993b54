//! Verifying STS mandates in process (coordinator.md §2.1, §8.1; gateway.md §3): ES256
//! against the zone's published keys, read from the same catalog read model the STS signs
//! from, so no JWKS round trip. Key sets are kept per zone and read again when a token
//! names a `kid` the cached set does not have (at most once a second per zone).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use serval_domain::catalog::signing_key::{self, KeyRef};
use serval_domain::catalog::{CatalogKind, EntityData};
use serval_domain::validation::is_valid_identifier;
use serval_projector::catalog::{self as read, Status};

use crate::state::App;

/// A loaded key set is trusted this long.
const MAX_AGE: Duration = Duration::from_secs(600);
/// An unknown `kid` reads the set again at most this often.
const REFETCH_COOLDOWN: Duration = Duration::from_secs(1);
/// At most this many zones' key sets are kept.
const MAX_ZONES: usize = 256;
/// Mandates longer than this are refused before any parsing.
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Clock tolerance on `exp`, `iat`, `nbf`.
pub const LEEWAY_SECS: u64 = 60;

struct ZoneKeys {
    loaded: Instant,
    keys: HashMap<String, Arc<DecodingKey>>,
}

/// Why a token did not verify (the caller maps it to its route's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("malformed token")]
    Malformed,
    #[error("zone_id claim missing or malformed")]
    Zone,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signature or claims invalid: {0}")]
    Claims(String),
    #[error("key set unavailable")]
    Unavailable,
}

/// Verified claims of a mandate.
#[derive(Debug, Clone)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// A non-empty string claim.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.str(name).filter(|s| !s.is_empty())
    }

    pub fn zone_id(&self) -> &str {
        self.str("zone_id").unwrap_or_default()
    }

    /// The space-separated `scope` claim's tokens.
    pub fn scopes(&self) -> Vec<String> {
        self.str("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Default)]
pub struct MandateVerifier {
    zones: RwLock<HashMap<String, Arc<ZoneKeys>>>,
}

/// The `zone_id` of a token's payload, read without verifying anything.
pub fn unverified_zone(token: &str) -> Result<String, Invalid> {
    let payload = token.split('.').nth(1).ok_or(Invalid::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Invalid::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| Invalid::Malformed)?;
    v.get("zone_id")
        .and_then(Value::as_str)
        .filter(|z| is_valid_identifier(z))
        .map(str::to_owned)
        .ok_or(Invalid::Zone)
}

impl MandateVerifier {
    async fn load(&self, app: &App, zone: &str) -> Result<Arc<ZoneKeys>, Invalid> {
        let rows = read::list(
            &app.pool,
            zone,
            CatalogKind::SigningKey,
            Status::Live,
            &[],
            None,
            10_000,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "signing keys unreadable");
            Invalid::Unavailable
        })?;
        let data: Vec<(String, serval_domain::catalog::SigningKeyData)> = rows
            .into_iter()
            .filter_map(|e| match e.data {
                EntityData::SigningKey(k) => Some((e.id, k)),
                _ => None,
            })
            .collect();
        let refs: Vec<KeyRef<'_>> = data.iter().map(|(kid, key)| KeyRef { kid, key }).collect();
        let mut keys = HashMap::new();
        for k in signing_key::published(&refs, Utc::now()) {
            if let Ok(d) = DecodingKey::from_ec_components(&k.key.x, &k.key.y) {
                keys.insert(k.kid.to_owned(), Arc::new(d));
            }
        }
        let set = Arc::new(ZoneKeys {
            loaded: Instant::now(),
            keys,
        });
        // A zone without keys is remembered too: an unknown zone id costs one read per
        // cooldown, not one per request.
        {
            let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
            if zones.len() >= MAX_ZONES && !zones.contains_key(zone) {
                zones.clear();
            }
            zones.insert(zone.to_owned(), set.clone());
        }
        Ok(set)
    }

    async fn key(&self, app: &App, zone: &str, kid: &str) -> Result<Arc<DecodingKey>, Invalid> {
        let cached = self
            .zones
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(zone)
            .cloned();
        if let Some(set) = &cached {
            if set.loaded.elapsed() < MAX_AGE {
                if let Some(k) = set.keys.get(kid) {
                    return Ok(k.clone());
                }
                if set.loaded.elapsed() < REFETCH_COOLDOWN {
                    return Err(Invalid::UnknownKey);
                }
            }
        }
        let set = self.load(app, zone).await?;
        set.keys.get(kid).cloned().ok_or(Invalid::UnknownKey)
    }

    /// The published key of `zone` a token's header names (ES256 only).
    async fn signing_key_of(
        &self,
        app: &App,
        zone: &str,
        token: &str,
    ) -> Result<Arc<DecodingKey>, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(Invalid::Claims("alg".into()));
        }
        let kid = header.kid.ok_or(Invalid::UnknownKey)?;
        self.key(app, zone, &kid).await
    }

    /// The Gateway's check (gateway.md §3 step 11): an ES256 signature by a published key
    /// of `zone`, and nothing else (the STS judges the claims at the exchange).
    pub async fn verify_signature(
        &self,
        app: &App,
        zone: &str,
        token: &str,
    ) -> Result<Claims, Invalid> {
        let key = self.signing_key_of(app, zone, token).await?;
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = LEEWAY_SECS;
        v.validate_aud = false;
        v.validate_exp = false;
        v.set_required_spec_claims::<&str>(&[]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| Invalid::Claims(e.to_string()))?;
        Ok(Claims(data.claims))
    }

    /// Verifies `token` as a mandate of `zone` (ES256, `iss` = `aud` = `ISSUER_URL`,
    /// 60 s leeway; `exp` checked when present, required when `require` names it).
    pub async fn verify(
        &self,
        app: &App,
        zone: &str,
        token: &str,
        require: &[&str],
    ) -> Result<Claims, Invalid> {
        let key = self.signing_key_of(app, zone, token).await?;
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = LEEWAY_SECS;
        v.set_issuer(&[app.cfg.issuer_url.as_str()]);
        v.set_audience(&[app.cfg.issuer_url.as_str()]);
        v.set_required_spec_claims(require);
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| Invalid::Claims(e.to_string()))?;
        let claims = Claims(data.claims);
        if claims.zone_id() != zone {
            return Err(Invalid::Zone);
        }
        if let Some(iat) = claims.0.get("iat").and_then(Value::as_i64) {
            if iat > Utc::now().timestamp() + LEEWAY_SECS as i64 {
                return Err(Invalid::Claims("iat in the future".into()));
            }
        }
        Ok(claims)
    }
}
