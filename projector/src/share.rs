//! Projection work shared by several `serval` processes.
//!
//! Each process's projector is a **worker** holding a lease in `<p>:{sys}:workers` (a sorted
//! set: member = worker id, score = lease end in Redis's clock), renewed every
//! [`HEARTBEAT`] for [`LEASE`]. Every worker reads the live members with its renewal and
//! owns the streams it wins by rendezvous hashing (highest SHA-256 of `worker \n stream`):
//! each stream has one owner among the living, a new worker takes a fair share, and when a
//! worker dies its lease lapses within [`LEASE`] and its streams fall to the survivors —
//! each moving only the dead worker's streams. A worker that stops cleanly leaves at once.
//!
//! Ownership only decides who does the work; exactly-once is the checkpoint guard's (a batch
//! commits only from the position it started at), so two workers that briefly both think
//! they own a stream — views differ for up to one heartbeat — never apply an entry twice.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::Script;
use serval_streams::{KeySpace, RedisClient, RedisConn};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// How long a worker's lease lasts without renewal: the bound on a dead worker's streams
/// staying unowned.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a worker renews its lease and re-reads the members.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one renewal may take.
const BEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Renews `ARGV[1]`'s lease for `ARGV[2]` ms (or removes it when `ARGV[3]` is `1`), drops
/// lapsed leases (and any lease longer than one `LEASE`) and returns the living members. Redis's clock, so workers' clocks may
/// disagree.
const BEAT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A lease no renewal can have made (past now + LEASE) would own streams for good.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + tonumber(ARGV[2])), '+inf')
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

pub struct WorkShare {
    id: String,
    key: String,
    members: RwLock<Arc<Vec<String>>>,
    /// Moves whenever the members change.
    version: watch::Sender<u64>,
    script: Script,
}

impl WorkShare {
    pub fn new(keys: &KeySpace) -> Arc<Self> {
        Self::with_id(keys, uuid::Uuid::now_v7().to_string())
    }

    /// A worker under a known id: a process restarted after a crash takes its own lease
    /// back at once instead of waiting for it to lapse.
    pub fn with_id(keys: &KeySpace, id: String) -> Arc<Self> {
        Arc::new(WorkShare {
            members: RwLock::new(Arc::new(vec![id.clone()])),
            id,
            key: keys.workers(),
            version: watch::Sender::new(0),
            script: Script::new(BEAT_LUA),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The living workers as of the last heartbeat (this one included).
    pub fn members(&self) -> Arc<Vec<String>> {
        self.members
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Whether this worker applies `stream` (always, while it is alone).
    pub fn owns(&self, stream: &str) -> bool {
        let members = self.members();
        if members.len() <= 1 {
            return true;
        }
        owner(&members, stream) == Some(self.id.as_str())
    }

    /// Renews the lease and reads the members.
    pub async fn beat(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        // The answer holds this worker: the script renewed it before reading.
        let mut members = self.call(conn, false).await?;
        members.sort();
        let changed = {
            let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
            if **m != members {
                *m = Arc::new(members);
                true
            } else {
                false
            }
        };
        if changed {
            let n = self.members().len();
            tracing::info!(worker = %self.id, workers = n, "projection work re-shared");
            crate::metrics::METRICS.workers.set(n as i64);
            self.version.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Leaves the share at once (a clean stop), so the others take the streams over now.
    pub async fn leave(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        self.call(conn, true).await.map(drop)
    }

    /// One run of the lease script: renews (or, `leaving`, removes) this worker's lease
    /// and returns the living members.
    async fn call(
        &self,
        conn: &mut RedisConn,
        leaving: bool,
    ) -> Result<Vec<String>, redis::RedisError> {
        self.script
            .key(&self.key)
            .arg(&self.id)
            .arg(LEASE.as_millis() as u64)
            .arg(if leaving { "1" } else { "0" })
            .invoke_async(conn)
            .await
    }

    /// Renews the lease every [`HEARTBEAT`] until `stop`, then leaves.
    pub async fn run(self: Arc<Self>, client: RedisClient, mut stop: watch::Receiver<bool>) {
        let mut conn: Option<RedisConn> = None;
        loop {
            if conn.is_none() {
                conn = client.connect().await.ok();
            }
            if let Some(c) = conn.as_mut() {
                // Bounded well inside the lease, so a slow Redis cannot hold a renewal
                // until the lease has lapsed.
                match tokio::time::timeout(BEAT_TIMEOUT, self.beat(c)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "projection worker lease not renewed"),
                    Err(_) => tracing::warn!("projection worker lease renewal timed out"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        if let Some(c) = conn.as_mut() {
            let _ = self.leave(c).await;
        }
    }
}

/// The member that wins `stream` by rendezvous hashing.
pub fn owner<'a>(members: &'a [String], stream: &str) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| {
            let d = Sha256::new()
                .chain_update(m.as_bytes())
                .chain_update(b"\n")
                .chain_update(stream.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&d[..8]);
            u64::from_be_bytes(first)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> Vec<String> {
        (0..2_000).map(|i| format!("p:{{z:{i}}}:log")).collect()
    }

    #[test]
    fn every_stream_has_one_owner_and_the_share_is_fair() {
        let members: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
        let mut counts = [0usize; 3];
        for s in streams() {
            let o = owner(&members, &s).unwrap();
            counts[members.iter().position(|m| m == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((500..=833).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_death_moves_only_the_dead_workers_streams() {
        let all: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
        let survivors: Vec<String> = vec!["w0".into(), "w2".into()];
        for s in streams() {
            let before = owner(&all, &s).unwrap();
            let after = owner(&survivors, &s).unwrap();
            if before != "w1" {
                assert_eq!(before, after, "{s}");
            }
        }
    }
}
