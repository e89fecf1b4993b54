//! A zone's mandate signing keys in memory (sts.md §13): loaded from the catalog read model,
//! refreshed every [`REFRESH`] so a key another process rotated in is known long before it
//! signs (it is published [`signing_key::PUBLISH_LEAD_SECS`] ahead), private halves opened
//! once per process. The first key of a zone is created on its first mint; a rotation adds
//! the next generation. Keys are events (`signing_key.created`), one generation per zone
//! reserved in the append, so concurrent creators cannot both add generation `n`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::EncodingKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use serval_domain::catalog::signing_key::{self, KeyRef, SigningKeyData, SEAL_PURPOSE};
use serval_domain::catalog::{self, CatalogCommand, CatalogKind, EntityData, Stamp};
use serval_domain::Event;
use serval_projector::catalog::{self as read, Status};
use serval_schema::projections::CATALOG;
use serval_streams::append::Reservation;
use serval_streams::{AppendRequest, LogStream};
use zeroize::Zeroizing;

use serval_kit::http::ApiError;
use serval_kit::secrets::Binding;
use serval_kit::write::{self, Failure};
use serval_kit::App;

/// How long a loaded key set is trusted before the read model is asked again.
const REFRESH: Duration = Duration::from_secs(30);
/// Who the key events are attributed to.
const ACTOR: &str = "system:sts";
/// At most this many keys are read per zone (a zone rotating every day for years).
const MAX_KEYS: i64 = 10_000;

/// One zone's keys as the read model had them.
struct KeySet {
    loaded: Instant,
    keys: Vec<(String, SigningKeyData)>,
}

impl KeySet {
    fn refs(&self) -> Vec<KeyRef<'_>> {
        self.keys
            .iter()
            .map(|(kid, key)| KeyRef { kid, key })
            .collect()
    }
}

/// The key a mandate is signed with.
pub struct Signer {
    pub kid: String,
    pub key: EncodingKey,
}

#[derive(Default)]
pub struct KeyStore {
    sets: RwLock<HashMap<String, Arc<KeySet>>>,
    /// Opened private keys by `kid` (immutable once created).
    signers: RwLock<HashMap<String, Arc<Signer>>>,
    /// Serializes key creation in this process (other processes race on the reservation).
    creating: tokio::sync::Mutex<()>,
}

impl KeyStore {
    async fn set(&self, app: &App, zone: &str, fresh: bool) -> Result<Arc<KeySet>, ApiError> {
        if !fresh {
            let cached = self
                .sets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(zone)
                .cloned();
            if let Some(s) = cached.filter(|s| s.loaded.elapsed() < REFRESH) {
                return Ok(s);
            }
        }
        let rows = read::list(
            &app.pool,
            zone,
            CatalogKind::SigningKey,
            Status::Live,
            &[],
            None,
            MAX_KEYS,
        )
        .await?;
        let keys = rows
            .into_iter()
            .filter_map(|e| match e.data {
                EntityData::SigningKey(k) => Some((e.id, k)),
                _ => None,
            })
            .collect();
        let set = Arc::new(KeySet {
            loaded: Instant::now(),
            keys,
        });
        // Zones without keys are not remembered: the unauthenticated JWKS route must not
        // grow the cache with every zone id someone makes up.
        if !set.keys.is_empty() {
            self.sets
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(zone.to_owned(), set.clone());
        }
        Ok(set)
    }

    /// The zone's JWKS document, or `None` when the zone has no key yet.
    pub async fn jwks(&self, app: &App, zone: &str) -> Result<Option<Value>, ApiError> {
        let set = self.set(app, zone, false).await?;
        let published = signing_key::published(&set.refs(), Utc::now());
        if published.is_empty() {
            return Ok(None);
        }
        let keys: Vec<Value> = published
            .iter()
            .map(|k| {
                json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                    "kid": k.kid, "x": k.key.x, "y": k.key.y,
                })
            })
            .collect();
        Ok(Some(json!({ "keys": keys })))
    }

    /// The key that signs now, creating the zone's first key if it has none.
    pub async fn signer(&self, app: &App, zone: &str) -> Result<Arc<Signer>, ApiError> {
        let now = Utc::now();
        let set = self.set(app, zone, false).await?;
        let kid = match signing_key::signing(&set.refs(), now) {
            Some(k) => k.kid.to_owned(),
            None => self.create_first(app, zone).await?,
        };
        self.open(app, zone, &kid).await
    }

    /// Creates the zone's first key; never adds one to a zone that has keys.
    async fn create_first(&self, app: &App, zone: &str) -> Result<String, ApiError> {
        let _guard = self.creating.lock().await;
        let set = self.set(app, zone, true).await?;
        if let Some(k) = signing_key::signing(&set.refs(), Utc::now()) {
            return Ok(k.kid.to_owned());
        }
        self.add(app, zone, &set).await
    }

    /// Adds the next generation (published now, signing after the lead time); its `kid`.
    pub async fn rotate(&self, app: &App, zone: &str) -> Result<String, ApiError> {
        let _guard = self.creating.lock().await;
        let set = self.set(app, zone, true).await?;
        self.add(app, zone, &set).await
    }

    /// The scheduled rotation of a zone whose newest key was `observed`: nothing when
    /// another process already added the next one (replicas started together would
    /// otherwise each add a generation).
    async fn rotate_after(
        &self,
        app: &App,
        zone: &str,
        observed: u64,
    ) -> Result<Option<String>, ApiError> {
        let _guard = self.creating.lock().await;
        let set = self.set(app, zone, true).await?;
        if set.keys.iter().any(|(_, k)| k.generation > observed) {
            return Ok(None);
        }
        self.add(app, zone, &set).await.map(Some)
    }

    /// Creates the generation after the newest in `set`. If another process created it
    /// first, waits for it in the read model and answers with it.
    async fn add(&self, app: &App, zone: &str, set: &KeySet) -> Result<String, ApiError> {
        let (generation, signs_from) = signing_key::next(&set.refs(), Utc::now());
        let kid = uuid::Uuid::now_v7().to_string();
        let (data, pkcs8) = generate(app, zone, &kid, generation, signs_from).await?;
        let stamp = Stamp {
            by: ACTOR.to_owned(),
            via_operator: false,
        };
        let command = CatalogCommand::Create {
            zone_id: zone.to_owned(),
            data: EntityData::SigningKey(data.clone()),
        };
        let events = catalog::decide(None, &command, &stamp)
            .map_err(|e| ApiError::internal(format!("signing key: {e}")))?;
        let stream = LogStream::Zone(zone.to_owned());
        let appended = write::execute_visible(app, CATALOG, stream.clone(), None, || {
            let events = events.clone();
            let kid = kid.clone();
            async move {
                let mut req = AppendRequest::new(
                    LogStream::Zone(zone.to_owned()),
                    Some(zone.to_owned()),
                    kid,
                    0,
                    events.into_iter().map(Event::Catalog).collect(),
                    ACTOR,
                );
                req.reserve.push(Reservation {
                    kind: signing_key::GENERATION,
                    value: catalog::reservation_value(&generation.to_string()),
                });
                Ok(req)
            }
        })
        .await;
        match appended {
            Ok(_) => {
                // Usable at once, whether or not the read model shows it yet.
                self.signers
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        kid.clone(),
                        Arc::new(Signer {
                            kid: kid.clone(),
                            key: EncodingKey::from_ec_der(&pkcs8),
                        }),
                    );
                self.set(app, zone, true).await?;
                Ok(kid)
            }
            Err(Failure::Taken { .. }) => {
                // Another process added this generation: it is in the log; wait for the
                // read model to show it.
                for _ in 0..250 {
                    let set = self.set(app, zone, true).await?;
                    if let Some((kid, _)) =
                        set.keys.iter().find(|(_, k)| k.generation == generation)
                    {
                        return Ok(kid.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(ApiError::internal(
                    "a concurrent signing key is not visible in the read model",
                ))
            }
            Err(Failure::Api(e)) => Err(e),
        }
    }

    async fn open(&self, app: &App, zone: &str, kid: &str) -> Result<Arc<Signer>, ApiError> {
        if let Some(s) = self
            .signers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
        {
            return Ok(s.clone());
        }
        let set = self.set(app, zone, false).await?;
        let Some((_, key)) = set.keys.iter().find(|(k, _)| k == kid) else {
            return Err(ApiError::internal(format!("signing key {kid} not loaded")));
        };
        let binding = Binding {
            zone_id: zone,
            object_id: kid,
            purpose: SEAL_PURPOSE,
        };
        let pkcs8 = Zeroizing::new(
            app.custody
                .open(&binding, &key.sealed_private_key)
                .await
                .map_err(|e| ApiError::internal(format!("signing key {kid}: {e}")))?,
        );
        let signer = Arc::new(Signer {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(&pkcs8),
        });
        self.signers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kid.to_owned(), signer.clone());
        Ok(signer)
    }
}

/// A new P-256 key: the public point as JWK coordinates, the PKCS#8 document sealed under
/// the zone's data key (bound to the key's id and purpose).
async fn generate(
    app: &App,
    zone: &str,
    kid: &str,
    generation: u64,
    signs_from: DateTime<Utc>,
) -> Result<(SigningKeyData, Zeroizing<Vec<u8>>), ApiError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| ApiError::internal("cannot generate a signing key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| ApiError::internal("cannot parse a generated signing key"))?;
    // Uncompressed point: 0x04 ‖ x (32) ‖ y (32).
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err(ApiError::internal("unexpected public key encoding"));
    }
    let binding = Binding {
        zone_id: zone,
        object_id: kid,
        purpose: SEAL_PURPOSE,
    };
    let sealed = app
        .custody
        .seal(&binding, pkcs8.as_ref())
        .await
        .map_err(|e| ApiError::internal(format!("cannot seal a signing key: {e}")))?;
    let data = SigningKeyData {
        generation,
        x: URL_SAFE_NO_PAD.encode(&point[1..33]),
        y: URL_SAFE_NO_PAD.encode(&point[33..65]),
        sealed_private_key: sealed,
        signs_from,
    };
    Ok((data, Zeroizing::new(pkcs8.as_ref().to_vec())))
}

/// Rotates every zone whose newest key has signed for `STS_KEY_ROTATION_SECS` (sts.md §13),
/// checking every [`rotation_check`]. Every STS process runs it: the generation reservation
/// lets one of them add the key and the others find it.
pub async fn rotate_on_schedule(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = app.cfg.sts_key_rotation_secs;
    if interval == 0 {
        return;
    }
    let store = KeyStore::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(rotation_check(interval)) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let zones = match read::newest_signing_keys(&app.pool).await {
            Ok(z) => z,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled key rotation cannot list zones");
                continue;
            }
        };
        let now = Utc::now();
        for (zone, generation, signs_from) in zones {
            if !signing_key::rotation_due(signs_from, interval, now) {
                continue;
            }
            match store.rotate_after(&app, &zone, generation).await {
                Ok(Some(kid)) => {
                    tracing::info!(zone = %zone, kid = %kid, "signing key rotated on schedule")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(zone = %zone, error = ?e, "scheduled key rotation failed"),
            }
        }
    }
}

/// How often the schedule is checked: a quarter of the interval, between 1 s and 10 min.
fn rotation_check(interval: u64) -> Duration {
    Duration::from_secs((interval / 4).clamp(1, 600))
}
