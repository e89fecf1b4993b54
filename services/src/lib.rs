//! Serval's HTTP services and the `serval` binary's wiring.
//!
//! * [`config`]: typed configuration from Caracal's environment variable names.
//! * [`app`]: shared state, start-up (migrations, projector, bootstrap), listeners.
//! * [`http`]: plumbing every service shares: error body, request ids, bodies, pagination,
//!   health/readiness/metrics.
//! * [`auth`]: admin bearer tokens and the authorization matrix on `/v1`.
//! * [`write`]: the write path: decide → conditional append → wait until visible.
//! * [`api`]: the Management API routes.
//! * [`policy_engine`]: the compiled-engine cache, kept current through the log.
//! * [`secrets`]: client-secret hashing and the custody of sealed secrets.
//! * [`sts`]: the STS's internal policy routes (status, simulate, decide).
#![forbid(unsafe_code)]

pub mod admin_audit;
pub mod api;
pub mod app;
pub mod audit_ingest;
pub mod auth;
pub mod bootstrap;
pub mod cascade;
pub mod config;
pub mod egress;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod oauth;
pub mod policy_engine;
pub mod probes;
pub mod rate_limit;
pub mod secrets;
pub mod sts;
pub mod write;
