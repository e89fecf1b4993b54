//! The `serval` binary's wiring: its command line, the projector's runners and start-up.
//! The services themselves live in their own crates (`serval-api`, `serval-coordinator`,
//! `serval-sts`, `serval-gateway`, `serval-audit`) on the shared `serval-kit`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod projector;
pub mod start;
