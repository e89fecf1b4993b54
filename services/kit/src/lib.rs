//! What every Serval service shares: configuration, the process state, HTTP conventions,
//! admin authentication, rate limits, the write path, secret custody, the egress-guarded
//! outbound client, the compiled policy-engine cache and the admin-audit layer.
//!
//! * [`config`]: typed configuration from Caracal's environment variable names.
//! * [`state`]: the shared state and the connections it is built from.
//! * [`serve`]: the layers every service's router gets, listeners, shutdown.
//! * [`http`]: error body, request ids, bodies, pagination, `/health` `/ready` `/metrics`.
//! * [`auth`]: admin bearer tokens and the authorization matrix on `/v1`; [`request`]: the
//!   authenticated request a write handler takes.
//! * [`write`]: the write path: decide → conditional append, answered once durable.
//! * [`freshness`]: read-your-writes on the read side (heads vs projection positions).
//! * [`admin_audit`]: the layer that records every admin write and refusal (§14.2).
//! * [`secrets`]: client-secret hashing and the custody of sealed secrets.
//! * [`egress`], [`oauth`]: the outbound HTTP client's address rule, OAuth exchanges.
//! * [`policy_engine`]: the compiled-engine cache, kept current through the log.
#![forbid(unsafe_code)]

pub mod admin_audit;
pub mod audit_frame;
pub mod auth;
pub mod client_assertion;
pub mod config;
pub mod egress;
pub mod freshness;
pub mod gateway_hmac;
pub mod http;
pub mod mandate;
pub mod metrics;
pub mod oauth;
pub mod policy_engine;
pub mod provider_assertion;
pub mod rate_limit;
pub mod read_cache;
pub mod refusal_tally;
pub mod request;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod write;

pub use state::{App, AppState};
