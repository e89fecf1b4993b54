//! What a projection is: a named writer of one read model.

use std::future::Future;

use serval_domain::Event;
use serval_streams::RecordedEvent;
use sqlx::PgConnection;

/// A verified, decoded event handed to a projection.
#[derive(Debug, Clone)]
pub struct Applied {
    pub recorded: RecordedEvent,
    pub event: Event,
}

pub trait Projection: Send + Sync + 'static {
    /// Unique name; keys the checkpoint rows.
    fn name(&self) -> &'static str;

    /// Whether this projection does anything with an event. A batch it wants nothing of
    /// costs no transaction: the runner only moves its position (`Runner::apply`).
    fn wants(&self, _event: &Applied) -> bool {
        true
    }

    /// Whether applying a batch does something the transaction cannot take back (the
    /// relay publishes topic messages). Such a batch first claims its checkpoint rows, so
    /// a runner that lost a race stops before it acts; for the others the guarded
    /// checkpoint move at commit is enough, and the claim's round trip is saved.
    fn acts_outside_transaction(&self) -> bool {
        false
    }

    /// The shortest time between two of this projection's transactions while it follows the
    /// live log: `Some` for a copy no read waits for (the archive) or that only rare reads
    /// wait for (the audit ledger), so that under a steady stream of writes it commits one
    /// batch per period instead of one per write, and costs the writes less. A backlog or a
    /// replay is read at full speed.
    fn pace(&self) -> Option<std::time::Duration> {
        None
    }

    /// Applies a batch inside the runner's transaction. Must not commit.
    fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
