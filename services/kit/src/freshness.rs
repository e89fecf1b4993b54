//! Read-your-writes on the read side (ARCHITECTURE.md "Freshness"): a write is answered
//! once its events are durable in the log; a request that reads a read model first makes
//! sure the projections it reads have passed every log entry appended before it began.
//!
//! The heads of the log streams a request depends on are read from Redis, then compared
//! with the projection positions this process tracks (in-process commits and
//! `serval_checkpoints` notifications from other processes). Only a read model that is
//! behind is waited for, at most the visibility timeout; past it the request is refused
//! with `503 read_model_unavailable`, never answered from an older state.
//!
//! Head reads are shared: a request joins the next pipelined read that *starts after it
//! arrived* (so the heads it sees are at least those of its own start), and concurrent
//! requests share one Redis round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serval_schema::projections::{ADMIN_AUDIT, ADMIN_TOKENS, AUDIT, CATALOG, POLICIES, ZONES};
use serval_streams::{EntryId, EventStore, LogStream};
use tokio::sync::oneshot;

use crate::http::ApiError;
use crate::state::App;

/// A read model a request depends on: a projection's position on a log stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub projection: &'static str,
    pub stream: LogStream,
}

impl Dep {
    pub fn new(projection: &'static str, stream: LogStream) -> Self {
        Dep { projection, stream }
    }
}

type Heads = Arc<HashMap<String, EntryId>>;
type Waiter = (Vec<String>, oneshot::Sender<Result<Heads, String>>);

#[derive(Default)]
struct Pending {
    waiters: Vec<Waiter>,
    in_flight: bool,
}

/// Coalesces stream-head reads: one pipelined Redis call answers every request that
/// arrived before it started.
#[derive(Default, Clone)]
pub struct HeadReader {
    pending: Arc<Mutex<Pending>>,
}

impl HeadReader {
    /// The heads of `keys` as of a moment after this call began.
    pub async fn heads(&self, store: &EventStore, keys: Vec<String>) -> Result<Heads, String> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.waiters.push((keys, tx));
            !std::mem::replace(&mut p.in_flight, true)
        };
        if start {
            // Its own task: a caller that goes away must not strand the others.
            tokio::spawn(flights(self.pending.clone(), store.clone()));
        }
        match tokio::time::timeout(HEAD_READ_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the head read was abandoned".to_owned()),
            Err(_) => Err("the head read timed out".to_owned()),
        }
    }
}

/// A caller never waits longer than this for heads (Redis unreachable, a flight lost).
const HEAD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Clears `in_flight` however the flight task ends (a panic included), so later callers
/// start a new one instead of waiting for a flight that is gone.
struct FlightGuard {
    pending: Arc<Mutex<Pending>>,
    ended_normally: bool,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.ended_normally {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.in_flight = false;
        }
    }
}

/// Reads heads until no request is waiting.
async fn flights(pending: Arc<Mutex<Pending>>, store: EventStore) {
    let mut guard = FlightGuard {
        pending: pending.clone(),
        ended_normally: false,
    };
    loop {
        let batch = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.waiters.is_empty() {
                p.in_flight = false;
                guard.ended_normally = true;
                return;
            }
            std::mem::take(&mut p.waiters)
        };
        let mut keys: Vec<String> = batch.iter().flat_map(|(k, _)| k.iter().cloned()).collect();
        keys.sort_unstable();
        keys.dedup();
        let answer = match store.last_entry_ids(&keys).await {
            Ok(ids) => Ok(Arc::new(
                keys.into_iter().zip(ids).collect::<HashMap<_, _>>(),
            )),
            Err(e) => Err(e.to_string()),
        };
        for (_, tx) in batch {
            let _ = tx.send(answer.clone());
        }
    }
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "read_model_unavailable").description(format!(
        "the read model could not be brought up to date: {detail}; retry the request"
    ))
}

/// Waits until every dependency has passed the head its stream had when this call began;
/// `503 read_model_unavailable` when one does not within the visibility timeout or the
/// heads cannot be read.
pub async fn ensure(app: &App, deps: &[Dep]) -> Result<(), ApiError> {
    if deps.is_empty() {
        return Ok(());
    }
    wait_for(app, deps, None).await
}

/// Entries past a projection's position that a reader may treat as applied (it never reads
/// what they change, or reads it by id with its own wait on a miss). `name` tells readers
/// apart in the [`SkipMemo`]: what one reader may skip another may have to wait for.
#[derive(Clone, Copy)]
pub struct Skippable {
    pub name: &'static str,
    pub accepts: fn(projection: &str, entry: &serval_streams::Envelope) -> bool,
}

/// Longest unapplied tail inspected instead of waiting.
const TAIL_INSPECTED: usize = 64;

/// [`ensure`], except that a dependency whose unapplied tail (at most 64 entries) holds only
/// entries `skippable` accepts is not waited for: a reader whose own kind of write follows
/// every request (the STS's authority records) does not wait for the previous one's
/// projection.
pub async fn ensure_skipping(
    app: &App,
    deps: &[Dep],
    skippable: Skippable,
) -> Result<(), ApiError> {
    wait_for(app, deps, Some(skippable)).await
}

async fn wait_for(app: &App, deps: &[Dep], skippable: Option<Skippable>) -> Result<(), ApiError> {
    let keys: Vec<String> = deps
        .iter()
        .map(|d| app.store.keys().log(&d.stream))
        .collect();
    let heads = app
        .heads
        .heads(&app.store, keys.clone())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "log heads unreadable");
            unavailable("the log is unreachable")
        })?;
    let deadline = Instant::now() + app.visibility_timeout();
    let behind: Vec<(&Dep, &String, EntryId, EntryId)> = deps
        .iter()
        .zip(&keys)
        .filter_map(|(d, key)| {
            let head = heads.get(key).copied().unwrap_or(EntryId::ZERO);
            let at = app.visibility.current(d.projection, key);
            (at < head).then_some((d, key, at, head))
        })
        .collect();
    // The tails of every projection behind are inspected at once (one Redis flight, not
    // one per projection).
    let skipped: Vec<bool> = match skippable {
        Some(skippable) => {
            futures::future::join_all(behind.iter().map(|(d, key, at, head)| {
                tail_skippable(app, key, (*at, *head), d.projection, skippable)
            }))
            .await
        }
        None => vec![false; behind.len()],
    };
    for ((d, key, _, head), skipped) in behind.into_iter().zip(skipped) {
        if skipped {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !app
            .visibility
            .wait(&app.pool, d.projection, key, head, left)
            .await
        {
            tracing::warn!(projection = d.projection, stream = %key, "read model behind the log head");
            return Err(unavailable(&format!(
                "projection {} is behind",
                d.projection
            )));
        }
    }
    Ok(())
}

/// Whether every entry after `at` up to `head` is one `skippable` accepts (any doubt: no).
/// Only the part past what an earlier request of this process already found skippable is
/// read: log entries never change, so under a stream of mints each entry is read once, not
/// by every exchange that starts while it is unapplied.
async fn tail_skippable(
    app: &App,
    key: &str,
    (at, head): (EntryId, EntryId),
    projection: &'static str,
    skippable: Skippable,
) -> bool {
    // A projection far behind its head is waited for as before: past 2 s of log time only
    // `TAIL_INSPECTED` entries are inspected, so a stopped projector still shows.
    let run = (key, projection, skippable.name);
    let known = (head.ms.saturating_sub(at.ms) <= MEMO_LAG_MS)
        .then(|| app.skips.known(run, at))
        .flatten();
    if known.is_some_and(|to| head <= to) {
        return true;
    }
    let from = known.unwrap_or(at);
    let ok = entries_all(app, key, (from, head), TAIL_INSPECTED, |e| {
        (skippable.accepts)(projection, e)
    })
    .await;
    if ok {
        app.skips.record(run, (from, head));
    }
    ok
}

/// Whether every entry of `key` after `from` up to `to` is one `skippable` accepts for
/// `projection`: from this process's memo when it knows, else by reading the range (at most
/// 64 entries; one Redis round trip), remembered for the next caller. `from > to` (a
/// position that went backwards) is never skippable.
pub async fn range_skippable(
    app: &App,
    key: &str,
    projection: &'static str,
    skippable: Skippable,
    (from, to): (EntryId, EntryId),
) -> bool {
    if from > to {
        return false;
    }
    from == to || tail_skippable(app, key, (from, to), projection, skippable).await
}

/// How far (log time) a projection may be behind its head for a remembered run to count.
const MEMO_LAG_MS: u64 = 2_000;

/// Whether this process has found every entry of `key` after `from` up to `to` skippable
/// for `projection` by `skippable` (in [`ensure_skipping`]); reads nothing.
pub fn known_skippable(
    app: &App,
    key: &str,
    projection: &'static str,
    skippable: Skippable,
    (from, to): (EntryId, EntryId),
) -> bool {
    app.skips
        .known((key, projection, skippable.name), from)
        .is_some_and(|known_to| to <= known_to)
}

/// Per stream, projection and reader ([`Skippable::name`]), the last contiguous run of
/// log entries `(from, to]` that reader found skippable: it grows while requests find its
/// continuation skippable and is replaced when one inspects a range that does not touch
/// it, or once it is a minute old (a log that lost its tail in a failover could reuse
/// ids).
#[derive(Default)]
pub struct SkipMemo {
    runs: Mutex<HashMap<String, Run>>,
}

#[derive(Clone, Copy)]
struct Run {
    from: EntryId,
    to: EntryId,
    born: Instant,
}

/// A run is forgotten this long after it began.
const MEMO_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Which run: the log stream's key, the projection, the reader.
type RunRef<'a> = (&'a str, &'static str, &'static str);

fn run_key((key, projection, reader): RunRef<'_>) -> String {
    format!("{reader}|{projection}|{key}")
}

/// Streams remembered at most (past it the memo starts over).
const MEMO_STREAMS: usize = 4_096;

impl SkipMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The end of the run that holds position `at`.
    fn known(&self, run: RunRef<'_>, at: EntryId) -> Option<EntryId> {
        let k = run_key(run);
        let runs = self.lock();
        let r = runs.get(&k)?;
        (r.from <= at && at <= r.to && r.born.elapsed() < MEMO_AGE).then_some(r.to)
    }

    /// `(from, to]` was found skippable: it extends the run it starts in, else replaces an
    /// older one (or one past its age).
    fn record(&self, run: RunRef<'_>, (from, to): (EntryId, EntryId)) {
        let k = run_key(run);
        let fresh = Run {
            from,
            to,
            born: Instant::now(),
        };
        let mut runs = self.lock();
        if runs.len() >= MEMO_STREAMS && !runs.contains_key(&k) {
            runs.clear();
        }
        let r = runs.entry(k).or_insert(fresh);
        if r.born.elapsed() >= MEMO_AGE {
            *r = fresh;
        } else if r.from <= from && from <= r.to {
            r.to = r.to.max(to);
        } else if to > r.to {
            *r = fresh;
        }
    }
}

/// Whether every log entry of `key` after `from` up to `to` (at most `max` of them) decodes
/// and satisfies `pred`; false on any doubt (more entries, an unreadable one, Redis down,
/// an unknown `from`).
pub async fn entries_all(
    app: &App,
    key: &str,
    (from, to): (EntryId, EntryId),
    max: usize,
    pred: impl Fn(&serval_streams::Envelope) -> bool,
) -> bool {
    if from == EntryId::ZERO || to <= from {
        return to == from && from != EntryId::ZERO;
    }
    let mut conn = app.store.connection();
    let Ok(entries) =
        serval_streams::read::read_range(&mut conn, key, &format!("({from}"), &to.to_string(), max)
            .await
    else {
        return false;
    };
    let reaches = entries.last().is_some_and(|(id, _)| *id == to);
    reaches
        && entries.iter().all(|(_, fields)| {
            let Some(redis::Value::BulkString(env)) = fields.get("env") else {
                return false;
            };
            serval_streams::Envelope::decode(env).is_ok_and(|e| pred(&e))
        })
}

/// The read models a Management API request reads, from its method and path. Every request
/// reads the zones and admin tokens (authentication); a zone's routes read its catalog and
/// policies, the audit routes their ledgers. A create that reads no other object of its
/// zone (its uniqueness is checked by the append's reservations) does not wait for the
/// zone's catalog.
pub fn api_deps(method: &Method, path: &str) -> Vec<Dep> {
    let mut deps = vec![
        Dep::new(ZONES, LogStream::System),
        Dep::new(ADMIN_TOKENS, LogStream::System),
    ];
    // Decoded as the router decodes it: wait on the stream of the zone it will read.
    let Some(zone) = crate::auth::zone_of_path(path) else {
        return deps;
    };
    let stream = LogStream::Zone(zone.into_owned());
    let rest: Vec<&str> = path.split('/').skip(4).collect();
    let self_contained_create =
        *method == Method::POST && matches!(rest.as_slice(), ["providers"] | ["applications"]);
    if !self_contained_create {
        deps.push(Dep::new(CATALOG, stream.clone()));
        deps.push(Dep::new(POLICIES, stream.clone()));
    }
    match rest.first() {
        Some(&"admin-audit") => deps.push(Dep::new(ADMIN_AUDIT, stream)),
        Some(&"audit") => deps.push(Dep::new(AUDIT, stream)),
        _ => {}
    }
    deps
}

/// Middleware for `/v1`: the request's read models are brought up to its start first.
pub async fn api_layer(State(app): State<App>, req: Request, next: Next) -> Response {
    let deps = api_deps(req.method(), req.uri().path());
    let t0 = Instant::now();
    if let Err(e) = ensure(&app, &deps).await {
        return e.into_response();
    }
    tracing::debug!(elapsed_us = t0.elapsed().as_micros() as u64, "fresh");
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_memo_keeps_one_contiguous_run_per_stream_projection_and_reader() {
        let m = SkipMemo::default();
        let id = |ms| EntryId::new(ms, 0);
        let sts = ("k", CATALOG, "sts");
        assert_eq!(m.known(sts, id(5)), None);
        m.record(sts, (id(5), id(8)));
        // Positions inside the run (its start included) know its end; others know nothing.
        assert_eq!(m.known(sts, id(5)), Some(id(8)));
        assert_eq!(m.known(sts, id(8)), Some(id(8)));
        assert_eq!(m.known(sts, id(4)), None);
        assert_eq!(m.known(sts, id(9)), None);
        assert_eq!(
            m.known(("k", POLICIES, "sts"), id(6)),
            None,
            "per projection"
        );
        assert_eq!(
            m.known(("other", CATALOG, "sts"), id(6)),
            None,
            "per stream"
        );
        // What one reader may skip, another may have to wait for.
        assert_eq!(
            m.known(("k", CATALOG, "coordinator"), id(6)),
            None,
            "per reader"
        );
        m.record(("k", CATALOG, "coordinator"), (id(8), id(30)));
        assert_eq!(
            m.known(sts, id(8)),
            Some(id(8)),
            "another reader's run is not this one's"
        );
        // A continuation extends it; a range that does not touch it replaces it only when
        // newer.
        m.record(sts, (id(8), id(12)));
        assert_eq!(m.known(sts, id(6)), Some(id(12)));
        m.record(sts, (id(1), id(3)));
        assert_eq!(m.known(sts, id(6)), Some(id(12)));
        m.record(sts, (id(20), id(25)));
        assert_eq!(m.known(sts, id(6)), None);
        assert_eq!(m.known(sts, id(21)), Some(id(25)));
    }

    fn names(deps: &[Dep]) -> Vec<&'static str> {
        deps.iter().map(|d| d.projection).collect()
    }

    #[test]
    fn zone_routes_read_the_zone_catalog_except_self_contained_creates() {
        let z = "/v1/zones/z1";
        assert_eq!(
            names(&api_deps(&Method::GET, "/v1/zones")),
            [ZONES, ADMIN_TOKENS]
        );
        assert_eq!(
            names(&api_deps(&Method::GET, &format!("{z}/providers"))),
            [ZONES, ADMIN_TOKENS, CATALOG, POLICIES]
        );
        assert_eq!(
            names(&api_deps(&Method::POST, &format!("{z}/providers"))),
            [ZONES, ADMIN_TOKENS]
        );
        assert_eq!(
            names(&api_deps(&Method::POST, &format!("{z}/resources"))),
            [ZONES, ADMIN_TOKENS, CATALOG, POLICIES]
        );
        assert_eq!(
            names(&api_deps(&Method::POST, &format!("{z}/providers/p1/test"))),
            [ZONES, ADMIN_TOKENS, CATALOG, POLICIES]
        );
        assert_eq!(
            names(&api_deps(&Method::GET, &format!("{z}/admin-audit"))),
            [ZONES, ADMIN_TOKENS, CATALOG, POLICIES, ADMIN_AUDIT]
        );
        let d = api_deps(&Method::GET, "/v1/zones/z%31/providers");
        assert_eq!(d[2], Dep::new(CATALOG, LogStream::Zone("z1".into())));
        let d = api_deps(&Method::GET, &format!("{z}/audit/search"));
        assert_eq!(
            d.last(),
            Some(&Dep::new(AUDIT, LogStream::Zone("z1".into())))
        );
    }
}
