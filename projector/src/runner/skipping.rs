//! Batches a projection wants nothing of cost no transaction: the position moves in
//! memory (and for waiters) and reaches Postgres with the projection's next transaction,
//! after `FLUSH_AFTER`, or when the runner goes idle.

use std::collections::BTreeMap;

use serval_streams::EntryId;

use crate::projection::Projection;

use super::checkpoints::write_checkpoints;
use super::{Runner, RunnerError};

/// How long a position moved over unwanted entries may stay out of Postgres. Processes
/// without this runner learn positions from the flush's notification, and their fresh reads
/// (`read_cache`) wait for them: a tenth of a second bounds that wait, at most ten small
/// transactions a second per projection.
pub(super) const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

impl<P: Projection> Runner<P> {
    /// Moves the positions of a batch with nothing wanted, no dead letter and no new
    /// stream, without a transaction.
    pub(super) async fn pass_unwanted(
        &mut self,
        positions: &mut BTreeMap<String, EntryId>,
        advanced: Vec<(String, EntryId, u64)>,
    ) -> Result<(), RunnerError> {
        let name = self.name();
        // Nothing here for this projection: move the position without a transaction. The
        // read model is as current as if the batch had been applied, so waiters may pass;
        // Postgres learns the position with the next transaction or within `FLUSH_AFTER`.
        for (stream, last, count) in advanced {
            let db = positions.get(&stream).copied().unwrap_or(EntryId::ZERO);
            self.unflushed.entry(stream.clone()).or_insert((db, 0)).1 += count;
            self.visibility.advance(name, &stream, last);
            positions.insert(stream, last);
        }
        self.unflushed_since
            .get_or_insert_with(std::time::Instant::now);
        if self
            .unflushed_since
            .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
        {
            self.flush(positions).await?;
        }
        Ok(())
    }

    pub(super) fn forget_unflushed(&mut self) {
        self.unflushed.clear();
        self.unflushed_since = None;
    }

    /// Stores the positions moved without a transaction.
    pub(super) async fn flush(
        &mut self,
        positions: &BTreeMap<String, EntryId>,
    ) -> Result<(), RunnerError> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let moves: Vec<(String, EntryId, EntryId, u64)> = self
            .unflushed
            .iter()
            .map(|(stream, (db, n))| {
                let at = positions.get(stream).copied().unwrap_or(*db);
                (stream.clone(), *db, at, *n)
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        write_checkpoints(&mut tx, self.name(), &moves, Default::default()).await?;
        tx.commit().await?;
        self.unflushed.clear();
        self.unflushed_since = None;
        Ok(())
    }
}
