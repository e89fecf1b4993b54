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
use serval_streams::{AppendRequest, EntryId, LogStream};
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

/// Per zone, the last graph event this process appended. Correctness is the graph's version
/// (every event is appended conditionally on the epoch it was decided at); this only lines
/// up the process's own writers of one zone, so each decides once on a view that already
/// has its predecessor instead of all of them deciding on the same epoch and all but one
/// conflicting (with 16 concurrent creators, a creation could lose 64 rounds in a row).
#[derive(Default)]
pub struct GraphTurns {
    zones: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<EntryId>>>>,
}

/// Zones whose turn is remembered; idle ones are forgotten past it.
const TURNS_KEPT: usize = 4_096;

impl GraphTurns {
    fn of(&self, zone: &str) -> Arc<tokio::sync::Mutex<EntryId>> {
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        if zones.len() >= TURNS_KEPT && !zones.contains_key(zone) {
            zones.retain(|_, t| Arc::strong_count(t) > 1);
        }
        zones.entry(zone.to_owned()).or_default().clone()
    }
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
    if let Some(last) = held.as_deref() {
        if *last > EntryId::ZERO {
            write::wait_visible(app, CATALOG, &stream, *last).await;
        }
    }
    let decided: std::sync::Mutex<Option<(T, u64)>> = std::sync::Mutex::new(None);
    let outcome = write::execute(app, CATALOG, stream.clone(), idem, || {
        let scope = scope.clone();
        let decide = &decide;
        let decided = &decided;
        let id = id.clone();
        async move {
            let view = load_view(app, zone, &scope).await?;
            let Some((event, extra)) = decide(&view)? else {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::NOT_MODIFIED,
                    UNCHANGED,
                )));
            };
            *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some((extra, view.epoch + 1));
            Ok(w.request(zone, &id, view.epoch, vec![Event::Delegation(event)]))
        }
    })
    .await;
    if let (Ok(Outcome::Applied { last: appended, .. }), Some(last)) = (&outcome, held.as_mut()) {
        **last = *appended;
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
