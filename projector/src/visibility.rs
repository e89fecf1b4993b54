//! Where each projection stands on each log stream, as this process knows it: what reads
//! wait on for read-your-writes (`serval_kit::freshness`).
//!
//! In-process, the runner advances a `watch` channel after each commit. Out of process, the
//! runner's transaction also sends `pg_notify('serval_checkpoints', …)`, and
//! [`Visibility::listen`] feeds the same channels from Postgres.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serval_streams::EntryId;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

pub const NOTIFY_CHANNEL: &str = "serval_checkpoints";

#[derive(Default)]
pub struct Visibility {
    /// stream → projection → position. Looked up by `&str` on every read, so a known pair
    /// costs no allocation.
    channels: RwLock<HashMap<String, HashMap<String, watch::Sender<EntryId>>>>,
}

impl Visibility {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn sender(&self, projection: &str, stream: &str) -> watch::Sender<EntryId> {
        {
            let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = map.get(stream).and_then(|m| m.get(projection)) {
                return tx.clone();
            }
        }
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        map.entry(stream.to_owned())
            .or_default()
            .entry(projection.to_owned())
            .or_insert_with(|| watch::channel(EntryId::ZERO).0)
            .clone()
    }

    /// Records that `projection` has committed everything up to `id` on `stream`.
    pub fn advance(&self, projection: &str, stream: &str, id: EntryId) {
        self.sender(projection, stream).send_if_modified(|cur| {
            if id > *cur {
                *cur = id;
                true
            } else {
                false
            }
        });
    }

    /// Follows `projection`'s position on `stream`: changes with every commit this process
    /// learns of.
    pub fn subscribe(&self, projection: &str, stream: &str) -> watch::Receiver<EntryId> {
        self.sender(projection, stream).subscribe()
    }

    /// Where this process knows `projection` to stand on `stream` (zero when unknown).
    pub fn current(&self, projection: &str, stream: &str) -> EntryId {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        map.get(stream)
            .and_then(|m| m.get(projection))
            .map(|tx| *tx.borrow())
            .unwrap_or(EntryId::ZERO)
    }

    /// Waits until `projection` has passed `id` on `stream`, at most `timeout`.
    /// Returns whether it did.
    pub async fn wait(
        &self,
        pool: &PgPool,
        projection: &str,
        stream: &str,
        id: EntryId,
        timeout: Duration,
    ) -> bool {
        let sender = self.sender(projection, stream);
        let mut rx = sender.subscribe();
        if *rx.borrow_and_update() >= id {
            return true;
        }
        // The runner may live in another process, or have passed before we subscribed.
        if let Ok(Some(cp)) = crate::runner::load_checkpoint(pool, projection, stream).await {
            self.advance(projection, stream, cp);
            if cp >= id {
                return true;
            }
        }
        tokio::time::timeout(timeout, async {
            loop {
                if rx.changed().await.is_err() {
                    return false;
                }
                if *rx.borrow_and_update() >= id {
                    return true;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Follows checkpoint notifications from runners in other processes. Runs until the
    /// task is dropped; reconnects on errors.
    pub async fn listen(self: Arc<Self>, pool: PgPool) {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if listener.listen(NOTIFY_CHANNEL).await.is_ok() {
                        while let Ok(n) = listener.recv().await {
                            let mut parts = n.payload().splitn(3, ' ');
                            if let (Some(p), Some(s), Some(id)) =
                                (parts.next(), parts.next(), parts.next())
                            {
                                if let Ok(id) = id.parse() {
                                    self.advance(p, s, id);
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint listener cannot connect"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
