//! `serval-replay`: the history tool for auditors and operators.
//!
//! * [`checkpoint`] — an audit-ledger export checked against signed checkpoints, offline.
//! * [`verify`]  — signatures, version sequences, and the archive's agreement with Redis.
//! * [`tail`]    — follow a topic or log as JSON lines, optionally through a consumer group.
//! * [`export`]  — a range of the log to JSON Lines or MessagePack, signatures preserved.
//! * [`replay`]  — the read models as they stood at a point in time, in a separate schema.
//! * [`rebuild`] — rebuild a projection in a shadow schema and swap it in atomically.
//! * [`restore`] — re-create the Redis log from the Postgres archive, byte for byte.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod context;
pub mod export;
pub mod progress;
pub mod rebuild;
pub mod replay;
pub mod restore;
pub mod source;
pub mod tail;
pub mod verify;
