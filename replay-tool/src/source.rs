//! Where history comes from: the Redis log streams, or the Postgres archive.

use anyhow::Context as _;
use serval_streams::read::{read_range, RawEntry};
use serval_streams::{EntryId, KeySpace, LogStream};
use sqlx::{PgPool, Row};

use crate::context::Context;

/// Every log stream in Redis: the system stream first, then zone streams (SCAN).
pub async fn log_streams(ctx: &Context) -> anyhow::Result<Vec<String>> {
    let pattern = format!("{}:{{z:*}}:log", ctx.keys.prefix());
    let mut keys: Vec<String> = Vec::new();
    // On a cluster, every primary holds its own slots' keys.
    for node in ctx.redis.primaries().await? {
        let mut conn = node.get_multiplexed_async_connection().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    keys.sort();
    keys.dedup();
    let mut out = vec![ctx.keys.log(&LogStream::System)];
    out.extend(keys);
    Ok(out)
}

/// The log stream of a zone, or all of them.
pub async fn select_streams(
    ctx: &Context,
    zone: Option<&str>,
    all: bool,
) -> anyhow::Result<Vec<String>> {
    match (zone, all) {
        (Some(z), _) => Ok(vec![ctx.keys.log(&LogStream::Zone(z.to_owned()))]),
        (None, true) => log_streams(ctx).await,
        (None, false) => Ok(vec![ctx.keys.log(&LogStream::System)]),
    }
}

/// Streams present in the archive.
pub async fn archived_streams(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT stream FROM event_archive ORDER BY stream")
            .fetch_all(pool)
            .await?,
    )
}

pub fn parse_stream(keys: &KeySpace, key: &str) -> anyhow::Result<LogStream> {
    keys.parse_log(key)
        .with_context(|| format!("{key} is not a log stream of prefix {}", keys.prefix()))
}

/// Reads a stream in pages of `page` entries, calling `f` for each page, from `start`
/// (exclusive, `None` = beginning) to `end` (inclusive).
pub async fn walk_redis<F>(
    ctx: &Context,
    key: &str,
    start: Option<EntryId>,
    end: Option<EntryId>,
    page: usize,
    mut f: F,
) -> anyhow::Result<()>
where
    F: FnMut(Vec<RawEntry>) -> anyhow::Result<()>,
{
    let mut conn = ctx.conn.clone();
    let mut from = match start {
        Some(id) => format!("({id}"),
        None => "-".to_owned(),
    };
    let to = end.map(|e| e.to_string()).unwrap_or_else(|| "+".to_owned());
    loop {
        let entries = read_range(&mut conn, key, &from, &to, page).await?;
        let Some(last) = entries.last().map(|(id, _)| *id) else {
            return Ok(());
        };
        let n = entries.len();
        f(entries)?;
        if n < page {
            return Ok(());
        }
        from = format!("({last}");
    }
}

/// One archived event.
pub struct ArchivedEntry {
    pub entry_id: EntryId,
    pub envelope: Vec<u8>,
    pub sig: Vec<u8>,
    pub key_id: String,
}

/// One page of a stream's archive rows after `after` (exclusive), in entry order.
pub async fn archive_page(
    pool: &PgPool,
    stream: &str,
    after: EntryId,
    page: i64,
) -> anyhow::Result<Vec<ArchivedEntry>> {
    // Every real entry id is above 0-0.
    let (ms, seq) = (after.ms as i64, after.seq as i64);
    let rows = sqlx::query(
        "SELECT entry_ms, entry_seq, envelope, sig, key_id FROM event_archive
         WHERE stream = $1 AND (stream, entry_ms, entry_seq) > ($1, $2, $3)
         ORDER BY stream, entry_ms, entry_seq LIMIT $4",
    )
    .bind(stream)
    .bind(ms)
    .bind(seq)
    .bind(page)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ArchivedEntry {
            entry_id: EntryId::new(r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64),
            envelope: r.get(2),
            sig: r.get(3),
            key_id: r.get(4),
        })
        .collect())
}

/// Reads a stream's archive rows in pages, in entry order.
pub async fn walk_archive<F>(pool: &PgPool, stream: &str, page: i64, mut f: F) -> anyhow::Result<()>
where
    F: FnMut(Vec<ArchivedEntry>) -> anyhow::Result<()>,
{
    let mut after = EntryId::ZERO;
    loop {
        let rows = archive_page(pool, stream, after, page).await?;
        let n = rows.len() as i64;
        let Some(last) = rows.last().map(|r| r.entry_id) else {
            return Ok(());
        };
        after = last;
        f(rows)?;
        if n < page {
            return Ok(());
        }
    }
}
