//! Serval's event store on Redis Streams.
//!
//! * [`envelope`]: the signed event envelope (MessagePack via `rmp-serde`).
//! * [`signing`]: HMAC-SHA256 with key ids, current + previous key for rotation.
//! * [`codec`]: domain events ↔ payload bytes, with the upcasting hook on read.
//! * [`keys`]: every Redis key name, hash-tagged per zone so one call touches one slot.
//! * [`append`]: the one atomic conditional-append script.
//! * [`read`]: reading and verifying log entries.
//! * [`connection`]: one Redis or a Redis Cluster behind one connection type.
//! * [`topics`]: Caracal's public `caracal.*` topics and their `_sig` scheme.
#![forbid(unsafe_code)]

pub mod append;
pub mod codec;
pub mod connection;
pub mod entry_id;
pub mod envelope;
pub mod keys;
pub mod read;
pub mod signing;
pub mod topics;

pub use append::{AppendError, AppendOutcome, AppendRequest, EventStore, IdempotencyRecord};
pub use connection::{RedisClient, RedisConn};
pub use entry_id::EntryId;
pub use envelope::Envelope;
pub use keys::{KeySpace, LogStream};
pub use read::{RecordedEvent, VerifyError};
pub use signing::Signer;
