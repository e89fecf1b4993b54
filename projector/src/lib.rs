//! Serval's projections: the only writers of Postgres read models.
//!
//! * [`runner`]: reads the log from a projection's checkpoint, verifies every entry, applies
//!   a batch and advances the checkpoint in **one transaction** (exactly-once effect).
//! * [`visibility`]: read-your-writes: waiting until a projection has passed an entry.
//! * [`zones`], [`admin_tokens`]: read models (writer and queries side by side).
//! * [`archive`]: every event verbatim, bytes and signature.
//! * [`relay`]: publishes Caracal's public topics from the log (at-least-once).
//! * [`status`]: lag and dead letters, for `/ready` and `/metrics`.
#![forbid(unsafe_code)]

pub mod admin_audit;
pub mod admin_tokens;
pub mod archive;
pub mod audit;
pub mod catalog;
pub mod chain;
pub mod delegations;
pub mod metrics;
pub mod policies;
pub mod projection;
pub mod relay;
mod relay_coordination;
pub mod revocations;
pub mod runner;
pub mod sessions;
pub mod share;
pub mod status;
pub mod upkeep;
pub mod visibility;
pub mod zones;

pub use projection::{Applied, Projection};
pub use runner::{ProjectorConfig, Runner};
/// The pool type runners take, for binaries that start them without depending on `sqlx`.
pub use sqlx::PgPool;
pub use visibility::Visibility;
