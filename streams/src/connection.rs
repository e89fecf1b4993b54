//! Where Redis is — one node or a Redis Cluster — and the one connection type every Serval
//! caller uses, so the same binary runs on both.
//!
//! `REDIS_URL` names a cluster as `redis+cluster://[user:pass@]host:port[,host:port…]` (or a
//! comma-separated list of `redis://` seed URLs); anything else is one node. On a cluster a
//! command may only name keys of one hash slot, so the callers that read or write several
//! streams at once go through [`by_slot`] and [`xread`], which split by slot and run the
//! parts concurrently (one round trip per node, multiplexed). A cluster has no blocking read
//! over several slots: a cluster reader reads without blocking and then waits for a wake
//! (every writer `PUBLISH`es [`WAKE_CHANNEL`] after it appended; Redis Cluster delivers a
//! `PUBLISH` to subscribers on every node) or for [`WAKE_POLL`], whichever comes first — a
//! lost wake costs one poll, never an entry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamKey, StreamReadOptions, StreamReadReply};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::watch;

/// The pub/sub channel a cluster writer announces appends on (payload: the stream key).
pub const WAKE_CHANNEL: &str = "serval.wake";
/// How long a cluster reader waits for a wake before it reads again anyway.
pub const WAKE_POLL: Duration = Duration::from_millis(100);
/// Connect and answer timeouts of shared connections.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where Redis is. Cheap to clone.
#[derive(Clone)]
pub enum RedisClient {
    Single(redis::Client),
    Cluster(Arc<Cluster>),
}

pub struct Cluster {
    seeds: Vec<String>,
    wake: Arc<Wake>,
}

impl RedisClient {
    /// Parses `REDIS_URL` (see the module documentation).
    pub fn open(url: &str) -> RedisResult<Self> {
        match cluster_seeds(url) {
            Some(seeds) => {
                // Validates every seed now rather than at the first connection.
                ClusterClientBuilder::new(seeds.clone()).build()?;
                Ok(RedisClient::Cluster(Arc::new(Cluster {
                    wake: Arc::new(Wake::new(seeds.clone())),
                    seeds,
                })))
            }
            None => Ok(RedisClient::Single(redis::Client::open(url)?)),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// A shared, reconnecting connection (answers within 5 s).
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        self.connect_with_timeout(TIMEOUT).await
    }

    /// A connection of its own for a reader that blocks up to `block` (a blocking read
    /// stalls every command multiplexed behind it on a shared connection).
    pub async fn connect_blocking(&self, block: Duration) -> RedisResult<RedisConn> {
        self.connect_with_timeout(block + TIMEOUT).await
    }

    async fn connect_with_timeout(&self, answer: Duration) -> RedisResult<RedisConn> {
        match self {
            RedisClient::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(TIMEOUT)
                    .set_response_timeout(answer)
                    .set_number_of_retries(3);
                Ok(RedisConn::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            RedisClient::Cluster(c) => {
                let conn = ClusterClientBuilder::new(c.seeds.clone())
                    .connection_timeout(TIMEOUT)
                    .response_timeout(answer)
                    .retries(6)
                    .build()?
                    .get_async_connection()
                    .await?;
                Ok(RedisConn::Cluster(conn, c.wake.clone()))
            }
        }
    }

    /// One single-node client per primary: for commands a cluster answers per node
    /// (`SCAN`). A single Redis is its own only primary.
    pub async fn primaries(&self) -> RedisResult<Vec<redis::Client>> {
        match self {
            RedisClient::Single(c) => Ok(vec![c.clone()]),
            RedisClient::Cluster(c) => {
                let mut conn = self.connect().await?;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await?;
                let template = redis::Client::open(c.seeds[0].as_str())?;
                let mut out = Vec::new();
                for line in nodes.lines() {
                    let parts: Vec<&str> = line.split(' ').collect();
                    let (Some(addr), Some(flags)) = (parts.get(1), parts.get(2)) else {
                        continue;
                    };
                    if !flags.split(',').any(|f| f == "master")
                        || flags.split(',').any(|f| f == "fail")
                    {
                        continue;
                    }
                    // `host:port@busport[,hostname]`
                    let hostport = addr.split('@').next().unwrap_or(addr);
                    let Some((host, port)) = hostport.rsplit_once(':') else {
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        continue;
                    };
                    let mut info = template.get_connection_info().clone();
                    info.addr = redis::ConnectionAddr::Tcp(host.to_owned(), port);
                    out.push(redis::Client::open(info)?);
                }
                Ok(out)
            }
        }
    }
}

/// The seed URLs of a cluster `REDIS_URL`, `None` for a single node.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        return Some(
            hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}"))
                .collect(),
        );
    }
    if url.contains(',') {
        return Some(url.split(',').map(|s| s.trim().to_owned()).collect());
    }
    None
}

/// A connection to a single Redis or to a cluster; implements the `redis` crate's
/// [`ConnectionLike`], so every typed command works on it. Cheap to clone (multiplexed).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection, Arc<Wake>),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(..))
    }

    /// Tells cluster readers that `key` got entries (nothing to do on a single node, whose
    /// readers block on the streams themselves). Fire and forget: a lost wake costs one
    /// [`WAKE_POLL`].
    pub fn wake(&self, key: &str) {
        if let RedisConn::Cluster(conn, _) = self {
            let mut conn = conn.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let _: RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(WAKE_CHANNEL)
                    .arg(key)
                    .query_async(&mut conn)
                    .await;
            });
        }
    }

    fn wake_receiver(&self) -> Option<(Arc<Wake>, watch::Receiver<u64>)> {
        match self {
            RedisConn::Single(_) => None,
            RedisConn::Cluster(_, wake) => Some((wake.clone(), wake.subscribe())),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c, _) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c, _) => c.get_db(),
        }
    }
}

/// The hash slot of a key (Redis Cluster's CRC16 of the key or of its `{tag}`).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16_384
}

/// Runs commands that may name keys of different slots and returns their answers in order:
/// one pipeline on a single node; on a cluster, one pipeline per slot, run concurrently.
/// Each command is given with the key that routes it. Not atomic across commands.
pub async fn by_slot<T: FromRedisValue>(
    conn: &mut RedisConn,
    cmds: Vec<(String, Cmd)>,
) -> RedisResult<Vec<T>> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    if !conn.is_cluster() {
        let mut pipe = redis::pipe();
        for (_, c) in cmds {
            pipe.add_command(c);
        }
        return pipe.query_async(conn).await;
    }
    let mut groups: BTreeMap<u16, (Vec<usize>, Pipeline)> = BTreeMap::new();
    for (i, (key, c)) in cmds.into_iter().enumerate() {
        let (idx, pipe) = groups
            .entry(slot(key.as_bytes()))
            .or_insert_with(|| (Vec::new(), redis::pipe()));
        idx.push(i);
        pipe.add_command(c);
    }
    let n: usize = groups.values().map(|(i, _)| i.len()).sum();
    let answers = futures::future::try_join_all(groups.into_values().map(|(idx, pipe)| {
        let mut conn = conn.clone();
        async move {
            let values: Vec<Value> = pipe.query_async(&mut conn).await?;
            Ok::<_, RedisError>((idx, values))
        }
    }))
    .await?;
    let mut out: Vec<Option<Value>> = vec![None; n];
    for (idx, values) in answers {
        for (i, v) in idx.into_iter().zip(values) {
            out[i] = Some(v);
        }
    }
    out.into_iter()
        .map(|v| T::from_redis_value(&v.unwrap_or(Value::Nil)))
        .collect()
}

/// `XREAD COUNT count [BLOCK block] STREAMS keys… ids…` on either kind of Redis. On a
/// cluster the keys are read per slot without blocking; with `block`, an empty round waits
/// for a wake (or [`WAKE_POLL`]) and reads again until `block` has passed.
pub async fn xread(
    conn: &mut RedisConn,
    streams: &[(String, String)],
    count: usize,
    block: Option<Duration>,
) -> RedisResult<Vec<StreamKey>> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let Some((hub, mut wake)) = conn.wake_receiver() else {
        let keys: Vec<&str> = streams.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<&str> = streams.iter().map(|(_, id)| id.as_str()).collect();
        let mut opts = StreamReadOptions::default().count(count);
        if let Some(b) = block {
            opts = opts.block(b.as_millis().max(1) as usize);
        }
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(conn, &keys, &ids, &opts).await?;
        return Ok(reply.map(|r| r.keys).unwrap_or_default());
    };
    let mut groups: BTreeMap<u16, Vec<&(String, String)>> = BTreeMap::new();
    for s in streams {
        groups.entry(slot(s.0.as_bytes())).or_default().push(s);
    }
    let deadline = block.map(|b| Instant::now() + b);
    wake.borrow_and_update();
    let mut seen = hub.newest();
    // The slots to read this round: every one, unless a wake named some since the last.
    let mut only: Option<BTreeSet<u16>> = None;
    loop {
        let round = groups
            .iter()
            .filter(|(s, _)| only.as_ref().is_none_or(|o| o.contains(s)))
            .map(|(_, g)| g);
        let replies = futures::future::try_join_all(round.map(|group| {
            let mut conn = conn.clone();
            async move {
                let keys: Vec<&str> = group.iter().map(|(k, _)| k.as_str()).collect();
                let ids: Vec<&str> = group.iter().map(|(_, id)| id.as_str()).collect();
                let opts = StreamReadOptions::default().count(count);
                let reply: Option<StreamReadReply> =
                    redis::AsyncCommands::xread_options(&mut conn, &keys, &ids, &opts).await?;
                Ok::<_, RedisError>(reply.map(|r| r.keys).unwrap_or_default())
            }
        }))
        .await?;
        let found: Vec<StreamKey> = replies
            .into_iter()
            .flatten()
            .filter(|k| !k.ids.is_empty())
            .collect();
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if !found.is_empty() || left.is_zero() {
            return Ok(found);
        }
        let woken = tokio::time::timeout(left.min(WAKE_POLL), wake.changed()).await;
        wake.borrow_and_update();
        let newest = hub.newest();
        only = match woken {
            // Woken: only the slots named since the last round (all when the record of
            // wakes no longer reaches back that far).
            Ok(Ok(())) => hub.woken_since(seen),
            // The poll: everything.
            _ => None,
        };
        seen = newest;
    }
}

/// The wakes a client heard lately: (sequence, slot), for readers to re-read only the
/// slots named since their last round.
#[derive(Default)]
struct Heard {
    wakes: VecDeque<(u64, u16)>,
    /// Sequence of the newest wake.
    newest: u64,
    /// Wakes up to this sequence may have been missed (the subscription dropped).
    lost_up_to: u64,
}

/// Wakes remembered per client.
const HEARD: usize = 4_096;

/// The cluster's wake subscription: one per client, started by its first waiter.
pub struct Wake {
    seeds: Vec<String>,
    tick: watch::Sender<u64>,
    heard: Mutex<Heard>,
    started: Once,
}

impl Wake {
    fn new(seeds: Vec<String>) -> Self {
        Wake {
            seeds,
            tick: watch::Sender::new(0),
            heard: Mutex::default(),
            started: Once::new(),
        }
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn newest(&self) -> u64 {
        self.heard().newest
    }

    /// The slots woken after `seen`; `None` when some may have been missed or forgotten.
    fn woken_since(&self, seen: u64) -> Option<BTreeSet<u16>> {
        let h = self.heard();
        if seen < h.lost_up_to || h.wakes.front().is_some_and(|(s, _)| *s > seen + 1) {
            return None;
        }
        Some(
            h.wakes
                .iter()
                .filter(|(s, _)| *s > seen)
                .map(|(_, slot)| *slot)
                .collect(),
        )
    }

    /// A wake for `key` (`None`: the subscription dropped, anything may have been missed).
    fn hear(&self, key: Option<&[u8]>) {
        {
            let mut h = self.heard();
            h.newest += 1;
            let n = h.newest;
            match key {
                Some(k) => {
                    h.wakes.push_back((n, slot(k)));
                    if h.wakes.len() > HEARD {
                        h.wakes.pop_front();
                    }
                }
                None => h.lost_up_to = n,
            }
        }
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    fn subscribe(self: &Arc<Self>) -> watch::Receiver<u64> {
        self.started.call_once(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(listen(Arc::downgrade(self)));
            }
        });
        self.tick.subscribe()
    }
}

/// Follows [`WAKE_CHANNEL`] on one node after another (every node of a cluster delivers
/// it) until the client is gone.
async fn listen(wake: std::sync::Weak<Wake>) {
    use futures::StreamExt;
    let mut turn = 0usize;
    loop {
        let Some(w) = wake.upgrade() else { return };
        let seed = w.seeds[turn % w.seeds.len()].clone();
        drop(w);
        turn += 1;
        if let Ok(client) = redis::Client::open(seed.as_str()) {
            if let Ok(mut pubsub) = client.get_async_pubsub().await {
                if pubsub.subscribe(WAKE_CHANNEL).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(m) = messages.next().await {
                        let Some(w) = wake.upgrade() else { return };
                        w.hear(Some(m.get_payload_bytes()));
                    }
                }
            }
        }
        // The node went away: everyone reads again now, then the next seed.
        if let Some(w) = wake.upgrade() {
            w.hear(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}bar"), slot(b"{}bar"));
        assert_eq!(slot(b"a:{z:1}:log"), slot(b"z:1"));
    }

    #[test]
    fn a_reader_rereads_only_the_slots_woken_since_its_last_round() {
        let w = Wake::new(Vec::new());
        let seen = w.newest();
        w.hear(Some(b"p:{z:1}:log"));
        w.hear(Some(b"p:{z:2}:log"));
        assert_eq!(
            w.woken_since(seen),
            Some(BTreeSet::from([slot(b"z:1"), slot(b"z:2")]))
        );
        let seen = w.newest();
        assert_eq!(w.woken_since(seen), Some(BTreeSet::new()));
        // A dropped subscription: anything may have been missed.
        w.hear(None);
        assert_eq!(w.woken_since(seen), None);
        let seen = w.newest();
        for _ in 0..HEARD + 1 {
            w.hear(Some(b"k"));
        }
        // Forgotten wakes: everything.
        assert_eq!(w.woken_since(seen), None);
    }

    #[test]
    fn cluster_urls_list_their_seeds() {
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://127.0.0.1:7001,127.0.0.1:7002"),
            Some(vec![
                "redis://127.0.0.1:7001".to_owned(),
                "redis://127.0.0.1:7002".to_owned()
            ])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@h:1,h:2/"),
            Some(vec![
                "redis://u:p@h:1".to_owned(),
                "redis://u:p@h:2".to_owned()
            ])
        );
        assert_eq!(
            cluster_seeds("redis://a:1, redis://b:2"),
            Some(vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()])
        );
    }
}
