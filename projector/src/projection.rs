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

    /// Applies a batch inside the runner's transaction. Must not commit.
    fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
