//! The write path (ARCHITECTURE.md §3): build the command's events from the current read
//! model, append them atomically and conditionally (with the request's admin-audit record
//! riding along), retry on a version conflict, and answer once the append is durable. Reads
//! see the write because every read first waits for its read models to pass the log heads
//! (`freshness`), not because the write waited.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use serval_domain::Event;
use serval_streams::append::{Idempotency, IdempotencyRecord};
use serval_streams::{AppendError, AppendOutcome, AppendRequest, EntryId, Envelope, LogStream};
use sha2::{Digest, Sha256};

use crate::http::ApiError;
use crate::metrics::METRICS;
use crate::state::App;

/// Conflicts are retried this many times (each after the read model caught up) before
/// the caller gets `409`.
pub const MAX_ATTEMPTS: u32 = 64;

/// Response header set when a write is durable but its read model had not yet passed it.
pub const PROJECTION_HEADER: &str = "x-serval-projection";

pub enum Outcome {
    /// Appended now and durable; every later read sees it (`freshness`).
    Applied {
        aggregate_id: String,
        events: Vec<Event>,
        envelopes: Vec<Envelope>,
        /// The log entry of the last event.
        last: EntryId,
    },
    /// A retry of a request whose first answer was recorded: answer it verbatim.
    Replay { status: u16, body: String },
    /// A retry of a request that was appended but whose answer was not recorded (the first
    /// attempt died in between): answer from the read model.
    ReplayUnrecorded { aggregate_id: String, visible: bool },
}

impl Outcome {
    /// The catalog object after this write when it was applied here: `before` (the state
    /// the append was conditional on) evolved by its events — exactly what the read model
    /// holds once it has passed them, without reading it back. `None` for a replay.
    pub fn folded(
        &self,
        before: Option<serval_domain::catalog::Entity>,
    ) -> Option<Option<serval_domain::catalog::Entity>> {
        let Outcome::Applied {
            events, envelopes, ..
        } = self
        else {
            return None;
        };
        Some(
            events
                .iter()
                .zip(envelopes)
                .fold(before, |s, (e, env)| match e {
                    Event::Catalog(ce) => serval_domain::catalog::evolve(s, &env.meta(), ce),
                    _ => s,
                }),
        )
    }

    /// Whether a read model the answer is read from has the write (a replay whose answer
    /// was not recorded is answered from the read model, after waiting for it).
    pub fn visible(&self) -> bool {
        match self {
            Outcome::ReplayUnrecorded { visible, .. } => *visible,
            Outcome::Applied { .. } | Outcome::Replay { .. } => true,
        }
    }

    /// The first event appended now, with its envelope.
    pub fn first_appended(&self) -> Option<(&Event, &Envelope)> {
        match self {
            Outcome::Applied {
                events, envelopes, ..
            } => events.first().zip(envelopes.first()),
            _ => None,
        }
    }
}

pub enum Failure {
    Api(ApiError),
    /// A uniqueness reservation is held by another aggregate.
    Taken {
        key: String,
    },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Api(e) => e,
            Failure::Taken { key } => {
                ApiError::internal(format!("unmapped reservation conflict on {key}"))
            }
        }
    }
}

/// Reads `Idempotency-Key` (an extension: an official client never sends it). The record is
/// named by (actor, key); the fingerprint binds it to this exact request.
pub fn idempotency(
    headers: &HeaderMap,
    actor_id: &str,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..0x7f).contains(&b)));
    let Some(key) = key else {
        return Err(ApiError::bad_request("invalid_request")
            .description("Idempotency-Key must be 1-255 visible ASCII characters"));
    };
    let key_digest = hex::encode(Sha256::digest(format!("{actor_id}\n{key}").as_bytes()));
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(body);
    Ok(Some(Idempotency {
        key_digest,
        fingerprint: hex::encode(h.finalize()),
        ttl_secs: None,
    }))
}

fn hinted() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static HINTED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    HINTED.get_or_init(Default::default)
}

/// Publishes the activity hint of a zone stream that may just have got its first entry,
/// once per stream and process.
pub async fn hint_new_stream(app: &App, stream: &LogStream) {
    if !matches!(stream, LogStream::Zone(_)) {
        return;
    }
    let key = app.store.keys().log(stream);
    let first = hinted()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone());
    if !first {
        return;
    }
    if let Err(e) = app.store.hint_activity(stream).await {
        tracing::debug!(error = %e, "activity hint not published");
        hinted()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

/// Waits (bounded by the visibility timeout) until `projection` has passed `id` on `stream`.
pub async fn wait_visible(app: &App, projection: &str, stream: &LogStream, id: EntryId) -> bool {
    wait_visible_until(app, projection, stream, id, None).await
}

/// Waits until `projection` has passed every entry of `stream` appended before this call
/// (read-your-writes for a read that missed: a writer elsewhere may have appended without
/// waiting for the read model, as the STS does). False on timeout or when the head is
/// unreadable.
pub async fn catch_up(app: &App, projection: &str, stream: &LogStream) -> bool {
    let key = app.store.keys().log(stream);
    match app.store.last_entry_id(&key).await {
        Ok(head) => wait_visible_until(app, projection, stream, head, None).await,
        Err(e) => {
            tracing::warn!(error = %e, "log head unreadable");
            false
        }
    }
}

/// `wait_visible`, cut at `deadline` when one is given.
async fn wait_visible_until(
    app: &App,
    projection: &str,
    stream: &LogStream,
    id: EntryId,
    deadline: Option<Instant>,
) -> bool {
    let key = app.store.keys().log(stream);
    let mut timeout = app.visibility_timeout();
    if let Some(d) = deadline {
        timeout = timeout.min(d.saturating_duration_since(Instant::now()));
    }
    app.visibility
        .wait(&app.pool, projection, &key, id, timeout)
        .await
}

/// The answer of a write whose deadline passed before anything was appended.
fn deadline_exceeded() -> Failure {
    Failure::Api(
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "write_deadline_exceeded").description(
            "the write could not be completed within its deadline; nothing was written, retry the request",
        ),
    )
}

fn replay(
    record: IdempotencyRecord,
    idem: &Idempotency,
) -> Result<Option<(String, EntryId)>, Failure> {
    if record.fingerprint() != Some(idem.fingerprint.as_str()) {
        return Err(Failure::Api(
            ApiError::conflict("idempotency_key_conflict")
                .description("this Idempotency-Key was used for a different request"),
        ));
    }
    Ok(record
        .aggregate_id()
        .map(str::to_owned)
        .zip(record.last_entry_id()))
}

/// Runs `build` (load state, decide) and appends its request, retrying on version conflicts.
pub async fn execute<F, Fut>(
    app: &App,
    projection: &str,
    stream: LogStream,
    idem: Option<Idempotency>,
    mut build: F,
) -> Result<Outcome, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<AppendRequest, Failure>>,
{
    let deadline = Instant::now() + Duration::from_millis(app.cfg.write_deadline_ms);
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            return Err(deadline_exceeded());
        }
        let mut req = build().await?;
        req.stream = stream.clone();
        req.idempotency = idem.clone();
        let rider = crate::admin_audit::rider(&req);
        if let Some((_, r)) = &rider {
            req.riders.push(r.clone());
        }
        METRICS.append_calls.inc();
        let t0 = std::time::Instant::now();
        let appended = app.store.append(&req).await;
        tracing::debug!(elapsed_us = t0.elapsed().as_micros() as u64, "append");
        match appended {
            Ok(AppendOutcome::Appended {
                entry_ids,
                envelopes,
            }) => {
                METRICS.append_events.inc_by(entry_ids.len() as u64);
                // A new aggregate may be the first entry of its zone's stream: tell the
                // projectors, so they need not wait for their sweep to find the stream.
                // Once per stream and process: a runner keeps a stream it has seen with
                // entries in its blocking read, and a runner started later finds it by its
                // sweep — so repeating the hint would only cost an fsync per create.
                if req.expected_version == 0 {
                    hint_new_stream(app, &stream).await;
                }
                // A rider that did not go with the append goes to the log now.
                crate::admin_audit::note_written(
                    app,
                    &req.aggregate_id,
                    rider.map(|(record, _)| record),
                );
                return Ok(Outcome::Applied {
                    aggregate_id: req.aggregate_id,
                    events: req.events,
                    envelopes,
                    last: entry_ids.last().copied().unwrap_or_default(),
                });
            }
            Ok(AppendOutcome::Duplicate(record)) => {
                let Some(idem) = &idem else {
                    return Err(Failure::Api(ApiError::internal(
                        "duplicate without an idempotency key",
                    )));
                };
                if let Some((status, body)) = record.response() {
                    if record.fingerprint() == Some(idem.fingerprint.as_str()) {
                        return Ok(Outcome::Replay {
                            status,
                            body: body.to_owned(),
                        });
                    }
                }
                let Some((aggregate_id, last)) = replay(record, idem)? else {
                    return Err(Failure::Api(ApiError::internal(
                        "incomplete idempotency record",
                    )));
                };
                let visible =
                    wait_visible_until(app, projection, &stream, last, Some(deadline)).await;
                return Ok(Outcome::ReplayUnrecorded {
                    aggregate_id,
                    visible,
                });
            }
            Err(AppendError::VersionConflict { .. }) => {
                METRICS.append_conflicts.inc();
                // Reload only once the read model has caught up with the log's head.
                let key = app.store.keys().log(&stream);
                let head = app
                    .store
                    .last_entry_id(&key)
                    .await
                    .map_err(ApiError::from)?;
                wait_visible_until(app, projection, &stream, head, Some(deadline)).await;
            }
            Err(AppendError::ReservationTaken { key }) => return Err(Failure::Taken { key }),
            Err(e) => return Err(Failure::Api(ApiError::internal(e))),
        }
    }
    Err(Failure::Api(
        ApiError::conflict("conflict").description("the object kept changing; retry the request"),
    ))
}

/// [`execute`], then waits until `projection` has passed the write: for services that
/// read their own writes back and have no read-side freshness layer (the Coordinator, the
/// STS's signing keys). A wait that times out leaves the write durable and is counted.
pub async fn execute_visible<F, Fut>(
    app: &App,
    projection: &str,
    stream: LogStream,
    idem: Option<Idempotency>,
    build: F,
) -> Result<Outcome, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<AppendRequest, Failure>>,
{
    let outcome = execute(app, projection, stream.clone(), idem, build).await?;
    if let Outcome::Applied { last, .. } = &outcome {
        if !wait_visible_until(app, projection, &stream, *last, None).await {
            METRICS.writes_unprojected.inc();
        }
    }
    Ok(outcome)
}

/// Builds the JSON response of a write, marks it when not yet projected, and records it as
/// the first answer of an idempotent request.
pub async fn respond(
    app: &App,
    stream: &LogStream,
    idem: &Option<Idempotency>,
    status: StatusCode,
    body: Option<Value>,
    visible: bool,
) -> Response {
    if let Some(i) = idem {
        // The record outlives the answer by a day in Redis: it never holds a credential
        // (docs/idempotency.md — a replayed answer omits them).
        let text = body
            .clone()
            .map(|mut b| {
                withhold_credentials(&mut b);
                b.to_string()
            })
            .unwrap_or_default();
        if let Err(e) = app
            .store
            .record_response(stream, &i.key_digest, status.as_u16(), &text)
            .await
        {
            tracing::warn!(error = %e, "could not record the idempotent answer");
        }
    }
    let mut resp = match body {
        Some(b) => (status, Json(b)).into_response(),
        None => status.into_response(),
    };
    if !visible {
        resp.headers_mut()
            .insert(PROJECTION_HEADER, HeaderValue::from_static("pending"));
    }
    resp
}

/// Fields of a write's answer that carry a credential issued or accepted by the write.
const CREDENTIAL_FIELDS: [&str; 10] = [
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "bearer_token",
    "password",
    "private_key",
    "assertion",
];

/// Removes every credential field, at any depth, from an answer about to be recorded.
pub fn withhold_credentials(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !CREDENTIAL_FIELDS.contains(&k.to_ascii_lowercase().as_str()));
            m.values_mut().for_each(withhold_credentials);
        }
        Value::Array(items) => items.iter_mut().for_each(withhold_credentials),
        _ => {}
    }
}

/// Answers a replayed request with its recorded first answer.
pub fn replayed(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut resp = if body.is_empty() {
        status.into_response()
    } else {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}
