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
    if app.store.version(&stream, id).await.map_err(ApiError::from)? == 0 {
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
    let fields: Vec<String> = changed_fields.iter().map(|s| s.to_string()).collect();
    let decided_on: std::sync::Mutex<Option<Entity>> = std::sync::Mutex::new(None);
    let outcome = write::execute(app, CATALOG, LogStream::Zone(zone.to_owned()), None, || {
            let fields = fields.clone();
            let change = &change;
            let decided_on = &decided_on;
            async move {
                let current = current(app, zone, id).await?.filter(Entity::is_live);
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
    let decided: std::sync::Mutex<Option<(T, u64)>> = std::sync::Mutex::new(None);
    let outcome = write::execute(app, CATALOG, LogStream::Zone(zone.to_owned()), idem, || {
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
    match outcome {
        Ok(o) => {
            let d = decided.lock().unwrap_or_else(|p| p.into_inner()).take();
            Ok(d.map(|(extra, epoch)| (extra, epoch, o)))
        }
        Err(Failure::Api(e)) if e.code() == Some(UNCHANGED) => Ok(None),
        Err(f) => Err(failure(f)),
    }
}
