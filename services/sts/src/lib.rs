//! The STS (:8080): the token exchange that mints mandates (`exchange/`), the zones'
//! signing keys and their JWKS (`keys.rs`, `key_routes.rs`), the internal policy routes
//! (`policy_routes.rs`, signed with the Gateway HMAC key, `internal_auth.rs`), and the
//! policy-engine cache kept current from `caracal.policy.invalidate`.

mod approval_routes;
pub mod exchange;
mod internal_auth;
pub mod key_routes;
pub mod keys;
mod policy_routes;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::post;
use axum::{Extension, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use serval_kit::App;

/// What the STS keeps in memory besides the shared state.
#[derive(Default)]
pub struct Sts {
    pub keys: keys::KeyStore,
    pub secrets: exchange::client_auth::SecretVerifier,
    /// Federated user issuers' key sets (`exchange::federation`).
    pub issuers: exchange::federation::IssuerKeys,
    /// Client-credentials tokens for upstream directives (`exchange::provider_tokens`).
    pub provider_tokens: exchange::provider_tokens::ProviderTokens,
    /// What exchanges read of their zones (`exchange::zone_cache`).
    pub zones: exchange::zone_cache::ZoneCache,
    /// Zone-less control-key lookups that must wait for every zone (`exchange::control`).
    pub control_zones: exchange::control::ZoneLookups,
}

/// Marks this process as serving the STS and keeps its engine cache current: follows
/// policy invalidations and loads every active binding.
pub fn start(app: &App, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    app.sts_local.store(true, Ordering::Relaxed);
    // The follower first, so it reads the topic's head before the warm-up loads.
    let listen = tokio::spawn(serval_kit::policy_engine::listen(app.clone(), stop.clone()));
    tokio::spawn(serval_kit::policy_engine::warm(app.clone()));
    let rotation = tokio::spawn(keys::rotate_on_schedule(app.clone(), stop.clone()));
    vec![listen, rotation]
}

pub fn router() -> Router<App> {
    let sts = Arc::new(Sts::default());
    policy_routes::router()
        .merge(key_routes::router())
        .merge(approval_routes::router())
        .route("/oauth/2/token", post(exchange::token))
        .layer(Extension(sts))
}
