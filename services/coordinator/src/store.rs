//! How the Coordinator writes: catalog objects (Sessions, service registrations,
//! invocations) one aggregate each, and the zone's Delegation graph as one aggregate whose
//! version is the epoch. Every write is a conditional append retried on a version conflict
//! (decided again once the read model has caught up with the log). A write answers once it
//! is durable, from the state it decided: it does not wait for the read model. Every
//! request reads a fresh catalog from its authentication on (`auth.rs`), and a decision
//! made on a read model that has not yet passed a write conflicts and is made again, so
//! no reader acts on state older than a write acknowledged before it began.

use axum::http::StatusCode;
use serval_domain::catalog::{self, CatalogCommand, Entity, EntityData, Stamp};
use serval_domain::delegation::{self, DelegationEvent};
use serval_domain::Event;
use serval_kit::http::ApiError;
use serval_kit::write::{self, Failure, Outcome};
use serval_kit::App;
use serval_schema::projections::CATALOG;
use serval_streams::append::{Idempotency, Reservation};
use serval_streams::{AppendRequest, LogStream};
use std::collections::HashMap;
use std::sync::Arc;

const UNCHANGED: &str = "__unchanged";

/// Who a write is attributed to, and the request it came from.
#[derive(Debug, Clone)]
pub struct Writer {
    pub actor: String,
    pub request_id: Option<String>,
}

impl Writer {
    pub fn system(job: &str) -> Writer {
        Writer {
            actor: format!("system:{job}"),
            request_id: None,
        }
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            by: self.actor.clone(),
            via_operator: false,
        }
    }

    fn request(
        &self,
        zone: &str,
        aggregate_id: &str,
        expected: u64,
        events: Vec<Event>,
    ) -> AppendRequest {
        let mut req = AppendRequest::new(
            LogStream::Zone(zone.to_owned()),
            Some(zone.to_owned()),
            aggregate_id,
            expected,
            events,
            self.actor.clone(),
        );
        if let Some(r) = &self.request_id {
            req = req.with_request_id(r);
        }
        req
    }
}

fn failure(f: Failure) -> ApiError {
    ApiError::from(f)
}

/// Creates a catalog object; with `idem`, a retry of the same request finds the first
/// one's record instead of creating another.
pub async fn create(
    app: &App,
    w: &Writer,
    zone: &str,
    id: &str,
    data: EntityData,
    reserve: Vec<Reservation>,
    idem: Option<Idempotency>,
) -> Result<Outcome, Failure> {
    let command = CatalogCommand::Create {
        zone_id: zone.to_owned(),
        data,
    };
    write::execute(app, CATALOG, LogStream::Zone(zone.to_owned()), idem, || {
        let command = command.clone();
        let reserve = reserve.clone();
        async move {
            let events = catalog::decide(None, &command, &w.stamp())
                .map_err(|_| Failure::Api(ApiError::conflict("conflict")))?
                .into_iter()
                .map(Event::Catalog)
                .collect();
            let mut req = w.request(zone, id, 0, events);
            req.reserve = reserve;
            Ok(req)
        }
    })
    .await
}

/// The object `id` as the read model has it; when the read model does not have it yet but
/// the log does (created by a write still being projected), once it has caught up.
async fn current(app: &App, zone: &str, id: &str) -> Result<Option<Entity>, ApiError> {
    let found = serval_projector::catalog::load(&app.pool, zone, id).await?;
    if found.is_some() {
        return Ok(found);
    }
    let stream = LogStream::Zone(zone.to_owned());
    if app
        .store
        .version(&stream, id)
        .await
        .map_err(ApiError::from)?
        == 0
    {
        return Ok(None);
    }
    write::catch_up(app, CATALOG, &stream).await;
    Ok(serval_projector::catalog::load(&app.pool, zone, id).await?)
}

/// Waits until the zone's catalog read model has passed every entry of its log appended
/// before this call (bounded; `false` on timeout): for a task that reads what it, or a
/// write not waited for at authentication, just appended.
pub async fn catch_up(app: &App, zone: &str) -> bool {
    write::catch_up(app, CATALOG, &LogStream::Zone(zone.to_owned())).await
}

/// Replaces an object's data with what `change` makes of the current object; `Ok(None)`
/// when `change` declines (nothing to do). Conflicts reload and ask `change` again. The
/// object after the write is folded from the state the write was decided on.
pub async fn update<F>(
    app: &App,
    w: &Writer,
    zone: &str,
    id: &str,
    changed_fields: &[&str],
    change: F,
) -> Result<Option<Entity>, ApiError>
where
    F: Fn(&Entity) -> Option<EntityData>,
{
    update_from(app, w, zone, id, None, changed_fields, change).await
}

/// [`update`], decided first on `known` (the object as this request just read it from a
/// fresh read model), saving a read: a stale `known` conflicts and is read again.
pub async fn update_from<F>(
    app: &App,
    w: &Writer,
    zone: &str,
    id: &str,
    known: Option<Entity>,
    changed_fields: &[&str],
    change: F,
) -> Result<Option<Entity>, ApiError>
where
    F: Fn(&Entity) -> Option<EntityData>,
{
    let fields: Vec<String> = changed_fields.iter().map(|s| s.to_string()).collect();
    let decided_on: std::sync::Mutex<Option<Entity>> = std::sync::Mutex::new(None);
    let known = std::sync::Mutex::new(known.filter(|e| e.id == id && e.zone_id == zone));
    let outcome = write::execute(app, CATALOG, LogStream::Zone(zone.to_owned()), None, || {
        let fields = fields.clone();
        let change = &change;
        let decided_on = &decided_on;
        let first = known.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            let current = match first {
                Some(e) => Some(e),
                None => current(app, zone, id).await?,
            }
            .filter(Entity::is_live);
            let Some(current) = current else {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::NOT_MODIFIED,
                    UNCHANGED,
                )));
            };
            let Some(data) = change(&current) else {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::NOT_MODIFIED,
                    UNCHANGED,
                )));
            };
            let command = CatalogCommand::Replace {
                data,
                changed_fields: fields,
                secret_rotated: false,
            };
            let events = catalog::decide(Some(&current), &command, &w.stamp())
                .map_err(|_| Failure::Api(ApiError::conflict("conflict")))?
                .into_iter()
                .map(Event::Catalog)
                .collect();
            let version = current.version;
            *decided_on.lock().unwrap_or_else(|p| p.into_inner()) = Some(current);
            Ok(w.request(zone, id, version, events))
        }
    })
    .await;
    match outcome {
        Ok(o @ Outcome::Applied { .. }) => {
            let before = decided_on.lock().unwrap_or_else(|p| p.into_inner()).take();
            Ok(o.folded(before).flatten())
        }
        Ok(Outcome::ReplayUnrecorded { .. }) => {
            Ok(serval_projector::catalog::load(&app.pool, zone, id).await?)
        }
        Ok(Outcome::Replay { .. }) => Ok(None),
        Err(Failure::Api(e)) if e.code() == Some(UNCHANGED) => Ok(None),
        Err(f) => Err(failure(f)),
    }
}

pub use serval_projector::delegations::{GraphView, Scope};

pub async fn load_view(app: &App, zone: &str, scope: &Scope) -> Result<GraphView, ApiError> {
    Ok(serval_projector::delegations::view(&app.pool, zone, scope).await?)
}

/// Per zone, this process's turn to write the zone's Delegation graph, and the whole graph
/// as of its last write. Correctness is the graph's version (every event is appended
/// conditionally on the epoch it was decided at); the turn lines up the process's own
/// writers of one zone, so each decides once instead of all deciding on the same epoch and
/// all but one conflicting (with 16 concurrent creators, a creation could lose the 64
/// rounds `execute` allows), and the graph kept in memory spares each decision a
/// `REPEATABLE READ` view and the wait for the previous write's projection.
#[derive(Default)]
pub struct GraphTurns {
    zones: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Turn>>>>,
}

/// One zone's turn.
#[derive(Default)]
struct Turn {
    /// The whole graph at its epoch, valid while the log's version of the graph is that
    /// epoch (checked before each use: another process may have written).
    whole: Option<GraphView>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        unstash(self.whole.take());
    }
}

/// Zones whose turn is remembered; idle ones are forgotten past it.
const TURNS_KEPT: usize = 4_096;

/// Zones with more edges (any status) are decided on partial views read per decision.
const WHOLE_GRAPH_MAX: i64 = 20_000;

/// Edges kept in memory over all zones' turns (about 1 KiB each).
const WHOLE_GRAPHS_BUDGET: usize = 200_000;

static KEPT_EDGES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Gives a turn its whole graph back, within the process's budget.
fn stash(v: GraphView) -> Option<GraphView> {
    use std::sync::atomic::Ordering;
    let n = v.graph.edges.len();
    let mut kept = KEPT_EDGES.load(Ordering::Relaxed);
    loop {
        if kept + n > WHOLE_GRAPHS_BUDGET {
            return None;
        }
        match KEPT_EDGES.compare_exchange(kept, kept + n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(v),
            Err(now) => kept = now,
        }
    }
}

/// Takes a turn's whole graph out of the budget.
fn unstash(v: Option<GraphView>) -> Option<GraphView> {
    if let Some(v) = &v {
        KEPT_EDGES.fetch_sub(v.graph.edges.len(), std::sync::atomic::Ordering::Relaxed);
    }
    v
}

impl GraphTurns {
    fn of(&self, zone: &str) -> Arc<tokio::sync::Mutex<Turn>> {
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        if zones.len() >= TURNS_KEPT && !zones.contains_key(zone) {
            zones.retain(|_, t| Arc::strong_count(t) > 1);
        }
        zones.entry(zone.to_owned()).or_default().clone()
    }
}

/// The zone's whole graph at the log's version of it: the turn's own when still current
/// (one `HGET`), else read again once the read model has passed the log's head; `None`
/// when the zone is too large or the read model moved on meanwhile (the caller then
/// decides on partial views).
async fn whole_graph(
    app: &App,
    zone: &str,
    stream: &LogStream,
    kept: Option<GraphView>,
) -> Result<Option<GraphView>, ApiError> {
    let id = delegation::graph_id(zone);
    let logged = app
        .store
        .version(stream, &id)
        .await
        .map_err(ApiError::from)?;
    if let Some(v) = kept {
        if v.epoch == logged {
            return Ok(Some(v));
        }
    }
    if !write::catch_up(app, CATALOG, stream).await {
        return Ok(None);
    }
    let whole = serval_projector::delegations::whole_view(&app.pool, zone, WHOLE_GRAPH_MAX).await?;
    Ok(whole.filter(|v| v.epoch == logged))
}

fn turns() -> &'static GraphTurns {
    static TURNS: std::sync::OnceLock<GraphTurns> = std::sync::OnceLock::new();
    TURNS.get_or_init(GraphTurns::default)
}

/// Appends one graph event decided by `decide` on a fresh view (retried on a conflict);
/// `Ok(None)` when `decide` finds nothing to do. Returns the event and the new epoch.
pub async fn graph_write<F, T>(
    app: &App,
    w: &Writer,
    zone: &str,
    scope: Scope,
    idem: Option<Idempotency>,
    decide: F,
) -> Result<Option<(T, u64, Outcome)>, ApiError>
where
    F: Fn(&GraphView) -> Result<Option<(DelegationEvent, T)>, ApiError>,
    T: Clone,
{
    let id = delegation::graph_id(zone);
    let stream = LogStream::Zone(zone.to_owned());
    let turn = turns().of(zone);
    // Bounded: a writer that waited its deadline for the turn goes on without it (the
    // epoch still decides), so a stalled projector cannot queue a zone's writers forever.
    let wait = std::time::Duration::from_millis(app.cfg.write_deadline_ms);
    let mut held = tokio::time::timeout(wait, turn.lock()).await.ok();
    let first = match held.as_deref_mut() {
        Some(t) => whole_graph(app, zone, &stream, unstash(t.whole.take())).await?,
        None => None,
    };
    // The first attempt decides on the whole graph; a conflict means another process wrote,
    // and later attempts read partial views once the read model has caught up.
    let first = std::sync::Mutex::new(first);
    let kept: std::sync::Mutex<Option<GraphView>> = std::sync::Mutex::new(None);
    let decided: std::sync::Mutex<Option<(T, u64)>> = std::sync::Mutex::new(None);
    let lock = |m: &std::sync::Mutex<Option<GraphView>>| {
        m.lock().unwrap_or_else(|p| p.into_inner()).take()
    };
    let outcome = write::execute(app, CATALOG, stream.clone(), idem, || {
        let scope = scope.clone();
        let decide = &decide;
        let decided = &decided;
        let (first, kept) = (&first, &kept);
        let id = id.clone();
        async move {
            lock(kept);
            let whole = lock(first);
            let from_whole = whole.is_some();
            let view = match whole {
                Some(v) => v,
                None => load_view(app, zone, &scope).await?,
            };
            let decision = decide(&view);
            let epoch = view.epoch;
            if from_whole {
                *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
            }
            let Some((event, extra)) = decision? else {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::NOT_MODIFIED,
                    UNCHANGED,
                )));
            };
            *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some((extra, epoch + 1));
            Ok(w.request(zone, &id, epoch, vec![Event::Delegation(event)]))
        }
    })
    .await;
    if let Some(t) = held.as_deref_mut() {
        // The whole graph stays with the turn when it is still the graph at its epoch: a
        // decision that appended nothing left it as it was; an applied one moves it on by
        // its own events.
        t.whole = match (&outcome, lock(&kept)) {
            (Ok(o @ Outcome::Applied { .. }), Some(mut v)) => {
                if let Outcome::Applied {
                    events, envelopes, ..
                } = o
                {
                    for (e, env) in events.iter().zip(envelopes) {
                        if let Event::Delegation(de) = e {
                            delegation::evolve(&mut v.graph, &env.meta(), de);
                            v.epoch = env.aggregate_version;
                        }
                    }
                }
                stash(v)
            }
            (Err(Failure::Api(_)), Some(v)) => stash(v),
            _ => None,
        };
    }
    drop(held);
    match outcome {
        Ok(o) => {
            let d = decided.lock().unwrap_or_else(|p| p.into_inner()).take();
            Ok(d.map(|(extra, epoch)| (extra, epoch, o)))
        }
        Err(Failure::Api(e)) if e.code() == Some(UNCHANGED) => Ok(None),
        Err(f) => Err(failure(f)),
    }
}
