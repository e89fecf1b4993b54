//! Serval's domain: the pure rules of the authority control plane.
//!
//! **Invariant: this crate does no I/O.** No async, no Redis, no SQL, no clock reads, no
//! randomness. Time and identifiers come in through commands and event metadata, so that
//! `decide` and `evolve` are deterministic functions that replay can trust.
#![forbid(unsafe_code)]

pub mod actor;
pub mod admin_audit;
pub mod admin_token;
pub mod audit;
pub mod catalog;
pub mod delegation;
pub mod event;
#[cfg(test)]
pub(crate) mod given;
pub mod merkle;
pub mod policy;
pub mod validation;
pub mod zone;

pub use actor::Actor;
pub use event::{AggregateKind, Event, EventMeta};
