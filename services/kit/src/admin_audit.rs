//! Recording the admin audit (management-api.md §14.2): a layer around every `/v1` route.
//!
//! A successful `POST/PUT/PATCH/DELETE` is recorded **before** its response is released
//! (if the record cannot be appended, the caller gets `500 audit_unavailable` although the
//! change applied); a response with status ≥ 400 is recorded afterwards, off the request
//! path. Exceptions: `429 rate_limited` answers are not recorded — the budgets exist to
//! protect capacity, and a flood of rejected requests must not grow the (never trimmed) log
//! — and a refusal without a valid admin token is counted into one record per window
//! (`refusal_tally`), not recorded one by one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use serval_domain::admin_audit::{self, AdminAuditEvent, AdminAuditRecord};
use serval_domain::admin_token::TokenScope;
use serval_domain::Event;
use serval_streams::append::Rider;
use serval_streams::{AppendRequest, LogStream};

use crate::auth::{zone_of_path, Principal};
use crate::http::{ApiError, RequestId};
use crate::state::App;

/// Collections whose `<collection>/<id>` pairs name an entity.
const COLLECTIONS: [&str; 15] = [
    "zones",
    "applications",
    "workloads",
    "resources",
    "providers",
    "provider-connections",
    "policies",
    "policy-sets",
    "policy-templates",
    "grants",
    "subject-issuers",
    "subjects",
    "approvals",
    "admin-tokens",
    "operator-conversations",
];

/// Fixed route words that follow a collection but are not ids.
const ROUTE_WORDS: [&str; 6] = ["dcr", "oauth", "revoke", "validate", "counts", "discovery"];

const BODY_LIMIT: usize = 1_048_576;

fn is_mutation(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The innermost `<collection>/<id>` pair of a path, and whether the path ends in a
/// collection (a create, whose id comes from the response).
fn entity_of(path: &str) -> (Option<(String, Option<String>)>, bool) {
    // The seed's names of provider connections and approvals are the same collections.
    let segs: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(|s| match s {
            "provider-grants" => "provider-connections",
            "step-up-challenges" => "approvals",
            s => s,
        })
        .collect();
    let mut found = None;
    let mut ends_in_collection = false;
    for (i, s) in segs.iter().enumerate() {
        if !COLLECTIONS.contains(s) {
            continue;
        }
        match segs.get(i + 1) {
            Some(id) if !ROUTE_WORDS.contains(id) && !id.is_empty() => {
                // The id the handler acted on (the router percent-decodes path parameters).
                let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
                found = Some((s.to_string(), Some(id.into_owned())));
            }
            Some(word) => {
                found = Some((s.to_string(), None));
                ends_in_collection =
                    (*word == "dcr" && i + 2 == segs.len()) || path.ends_with("/oauth/callback");
            }
            None => {
                found = Some((s.to_string(), None));
                ends_in_collection = true;
            }
        }
    }
    (found, ends_in_collection)
}

fn change_kind(method: &Method, path: &str, created: bool) -> &'static str {
    if path.ends_with("/rotate-secret") {
        "secret_rotation"
    } else if *method == Method::DELETE {
        "delete"
    } else if *method == Method::PATCH || *method == Method::PUT {
        "update"
    } else if created {
        "create"
    } else {
        "action"
    }
}

/// The headers a record reads (`Principal::actor`): copying only these keeps the layer
/// from cloning every request's header map (most requests are reads that need no record).
fn attribution_headers(all: &axum::http::HeaderMap) -> axum::http::HeaderMap {
    let mut kept = axum::http::HeaderMap::new();
    for name in ["x-caracal-authorized-by", "x-caracal-created-via"] {
        if let Some(v) = all.get(name) {
            kept.insert(name, v.clone());
        }
    }
    kept
}

/// What the record of a request is built from besides its outcome.
struct RequestFacts {
    method: Method,
    path: String,
    rid: String,
    headers: axum::http::HeaderMap,
    body_json: Option<Value>,
}

fn actor_scope(p: &Principal) -> String {
    match p.token.scope {
        TokenScope::Global => "global",
        TokenScope::Zone => "zone",
    }
    .to_owned()
}

/// The §14.2 record of a request that ended with `status`; `created_id` is the id a `201`
/// create answered with.
fn build_record(
    facts: &RequestFacts,
    status: StatusCode,
    principal: Option<&Principal>,
    created_id: Option<String>,
) -> AdminAuditRecord {
    let RequestFacts {
        method,
        path,
        rid,
        headers,
        body_json,
    } = facts;
    let success = status.is_success() || status.is_redirection();
    let (entity, ends_in_collection) = entity_of(path);
    let created = status == StatusCode::CREATED && ends_in_collection;
    let created_id = if created { created_id } else { None };
    let zone = match zone_of_path(path) {
        Some(z) => Some(z.into_owned()),
        None if path == "/v1/zones" && created => created_id.clone(),
        None => None,
    };
    let mut payload = Map::new();
    payload.insert(
        "rls_mode".into(),
        json!(if zone.is_some() {
            "zone_scoped"
        } else {
            "control_plane_wildcard"
        }),
    );
    payload.insert("rls_zone_guc".into(), json!(zone.as_deref().unwrap_or("*")));
    if success {
        let kind = change_kind(method, path, created);
        payload.insert("change_kind".into(), json!(kind));
        let (fields, rotated) = body_json
            .as_ref()
            .map(admin_audit::changed_fields)
            .unwrap_or_default();
        if !fields.is_empty() {
            payload.insert("changed_fields".into(), json!(fields));
        }
        if rotated || kind == "secret_rotation" {
            payload.insert("secret_rotated".into(), json!(true));
        }
    }
    let (entity_type, entity_id) = match entity {
        Some((t, id)) => (Some(t), id.or(created_id)),
        None => (None, None),
    };
    AdminAuditRecord {
        request_id: rid.clone(),
        actor_id: principal.map(|p| p.actor(headers).id),
        actor_name: principal.map(|p| p.token.name.clone()),
        actor_scope: principal.map(actor_scope),
        action: format!("{method} {path}"),
        method: method.as_str().to_owned(),
        path: path.clone(),
        zone_id: zone,
        entity_type,
        entity_id,
        status_code: status.as_u16(),
        payload_json: Value::Object(payload).to_string(),
    }
}

tokio::task_local! {
    static EARLY: Arc<EarlyAudit>;
    /// Set by a handler that tied a request without an admin token to an authenticated
    /// caller's flow (a redeemed OAuth state): its failure is recorded, not only counted.
    static ATTRIBUTED: AtomicBool;
}

/// Marks the request being served as attributable (see `ATTRIBUTED`).
pub fn note_attributed() {
    let _ = ATTRIBUTED.try_with(|a| a.store(true, Ordering::Relaxed));
}

/// The record of a write, appended with the write itself (a rider of its append) or as
/// soon as the write is in the log — with the route's documented success status — so the
/// answer does not wait for a second fsync. The layer compares it with the record the actual answer calls
/// for and releases the answer only once it is durable; if they differ (the handler failed
/// after its write), the actual record is appended as well.
struct EarlyAudit {
    /// `None` for a service that prepares its own record ([`note_prepared`]).
    facts: Option<RequestFacts>,
    expected: StatusCode,
    state: Mutex<EarlyState>,
}

#[derive(Default)]
struct EarlyState {
    principal: Option<Principal>,
    /// The record a service built itself, for the success it expects.
    prepared: Option<AdminAuditRecord>,
    fired: Option<(AdminAuditRecord, Fired)>,
}

/// How the early record went to the log.
enum Fired {
    /// In the write's own append (a rider): durable with it.
    Rode,
    /// Appended on its own, after the write.
    Spawned(tokio::task::JoinHandle<Result<(), String>>),
}

impl EarlyAudit {
    fn lock(&self) -> std::sync::MutexGuard<'_, EarlyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record for the expected success, once the caller is known.
    fn record(&self, st: &EarlyState, aggregate_id: &str) -> Option<AdminAuditRecord> {
        match &self.facts {
            Some(facts) => {
                let principal = st.principal.as_ref()?;
                Some(build_record(
                    facts,
                    self.expected,
                    Some(principal),
                    Some(aggregate_id.to_owned()),
                ))
            }
            None => st.prepared.clone(),
        }
    }
}

/// Called by a service that builds its own records (the Coordinator, §2.5) once the caller
/// is authenticated: `record` is what a success with the expected status records, and it
/// rides the request's first write like the Management API's.
pub fn note_prepared(record: AdminAuditRecord) {
    let _ = EARLY.try_with(|h| {
        if h.facts.is_none() {
            h.lock().prepared = Some(record);
        }
    });
}

/// How the early record of a request went: settle it with [`settle_early`].
#[derive(Default)]
pub struct Early(Option<(AdminAuditRecord, Fired)>);

/// Runs `served` with an early-record hook for a service that prepares its own records
/// ([`note_prepared`]); `expected` is the route's documented success status.
pub async fn with_prepared<F>(expected: StatusCode, served: F) -> (Response, Early)
where
    F: std::future::Future<Output = Response>,
{
    let hook = Arc::new(EarlyAudit {
        facts: None,
        expected,
        state: Mutex::new(EarlyState::default()),
    });
    let resp = EARLY.scope(hook.clone(), served).await;
    let fired = hook.lock().fired.take();
    (resp, Early(fired))
}

impl Early {
    /// Whether a record went to the log before the answer was known.
    pub fn fired(&self) -> bool {
        self.0.is_some()
    }
}

/// Whether the early record is durable and equals `actual` (then nothing else need be
/// appended); `false` when there was none, it differs, or it could not be appended.
pub async fn settle_early(early: Early, actual: &AdminAuditRecord) -> bool {
    let Some((record, fired)) = early.0 else {
        return false;
    };
    let appended = match fired {
        Fired::Rode => Ok(()),
        Fired::Spawned(handle) => handle.await.map_err(|e| e.to_string()).and_then(|r| r),
    };
    match appended {
        Ok(()) if &record == actual => true,
        Ok(()) => {
            tracing::warn!(
                request_id = %actual.request_id,
                "the answer differs from the write's early audit record; recording it too"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "early admin audit record not appended; retrying");
            false
        }
    }
}

/// Called by the authentication layer: who the request's record names.
pub fn note_principal(p: &Principal) {
    let _ = EARLY.try_with(|h| h.lock().principal = Some(p.clone()));
}

/// The early record of the request being served, as a rider of its first write's append
/// (`write::execute`), when the record belongs on the stream the write appends to: then
/// the record is durable exactly when the write is, with one fsync for both.
pub fn rider(req: &AppendRequest) -> Option<(AdminAuditRecord, Rider)> {
    let hook = EARLY.try_with(Arc::clone).ok()?;
    let st = hook.lock();
    if st.fired.is_some() {
        return None;
    }
    let record = hook.record(&st, &req.aggregate_id)?;
    // A zone's record rides only on a write to that zone's stream (the write passed its
    // zone check); a global record only on a write to the system stream.
    let same_stream = match (&record.zone_id, &req.stream) {
        (Some(z), LogStream::Zone(s)) => z == s && req.zone_id.as_deref() == Some(z.as_str()),
        (None, LogStream::System) => req.zone_id.is_none(),
        _ => false,
    };
    if !same_stream {
        return None;
    }
    let rider = Rider {
        aggregate_id: uuid::Uuid::now_v7().to_string(),
        event: Event::AdminAudit(AdminAuditEvent::Recorded(record.clone())),
    };
    Some((record, rider))
}

/// Called by the write path when a request's first write is in the log: `rode` is the
/// record that went with it, else the record is appended now.
pub fn note_written(app: &App, aggregate_id: &str, rode: Option<AdminAuditRecord>) {
    let Ok(hook) = EARLY.try_with(Arc::clone) else {
        return;
    };
    let mut st = hook.lock();
    if st.fired.is_some() {
        return;
    }
    let rode_along = rode.is_some();
    let record = match rode {
        Some(r) => r,
        None => match hook.record(&st, aggregate_id) {
            Some(r) => r,
            None => return,
        },
    };
    // The write passed its zone check (or created the zone), so the record belongs on the
    // zone's chain even before the zones read model shows a new zone.
    if let Some(zone) = &record.zone_id {
        known_zones()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(zone.clone());
    }
    if rode_along {
        st.fired = Some((record, Fired::Rode));
        return;
    }
    let created = hook.expected == StatusCode::CREATED;
    let (app, early) = (app.clone(), record.clone());
    let handle = tokio::spawn(async move { append(&app, early, created).await });
    st.fired = Some((record, Fired::Spawned(handle)));
}

pub async fn record(State(app): State<App>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let headers = attribution_headers(req.headers());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let mutation = is_mutation(&method);
    // The one GET that changes state: it stores a provider connection.
    let recorded_get = method == Method::GET && path.ends_with("/oauth/callback");
    let (req, body_json) = if mutation {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, BODY_LIMIT).await else {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                .description("request body exceeds the size limit")
                .into_response();
        };
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        (Request::from_parts(parts, Body::from(bytes)), json)
    } else {
        (req, None)
    };
    let facts = RequestFacts {
        method,
        path,
        rid,
        headers,
        body_json,
    };
    let expected = if mutation {
        documented_ok(&facts.method, &facts.path).and_then(|s| StatusCode::from_u16(s).ok())
    } else {
        None
    };
    let t_handler = std::time::Instant::now();
    let served = ATTRIBUTED.scope(AtomicBool::new(false), async {
        let out = match expected {
            Some(expected) => {
                let hook = Arc::new(EarlyAudit {
                    facts: Some(facts),
                    expected,
                    state: Mutex::new(EarlyState::default()),
                });
                let resp = EARLY.scope(hook.clone(), next.run(req)).await;
                let Ok(hook) = Arc::try_unwrap(hook) else {
                    return Err(());
                };
                let st = hook.state.into_inner().unwrap_or_else(|p| p.into_inner());
                let Some(facts) = hook.facts else {
                    return Err(());
                };
                (resp, facts, st.fired)
            }
            None => (next.run(req).await, facts, None),
        };
        Ok((out, ATTRIBUTED.with(|a| a.load(Ordering::Relaxed))))
    });
    let Ok(((resp, facts, fired), attributed)) = served.await else {
        tracing::error!("admin audit hook still shared after the handler");
        return ApiError::internal("admin audit hook still shared").into_response();
    };
    tracing::debug!(
        elapsed_us = t_handler.elapsed().as_micros() as u64,
        "handler"
    );
    let status = resp.status();
    let success = status.is_success() || status.is_redirection();
    if (success && !mutation && !recorded_get) || status == StatusCode::TOO_MANY_REQUESTS {
        return resp;
    }
    let principal = resp.extensions().get::<Principal>().cloned();
    if principal.is_none() && !success && !attributed {
        // Proved nothing about its sender: counted, not given a log entry of its own.
        crate::refusal_tally::count(
            &app,
            facts.method.as_str(),
            &facts.path,
            status.as_u16(),
            peer,
            &facts.rid,
        );
        return resp;
    }
    let (_, ends_in_collection) = entity_of(&facts.path);
    // A create's id is in its response body.
    let (resp, created_id) = if status == StatusCode::CREATED && ends_in_collection {
        let (parts, body) = resp.into_parts();
        let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let id = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        (Response::from_parts(parts, Body::from(bytes)), id)
    } else {
        (resp, None)
    };
    let created = created_id.is_some();
    let record = build_record(&facts, status, principal.as_ref(), created_id);
    if settle_early(Early(fired), &record).await {
        return resp;
    }
    if success {
        let t0 = std::time::Instant::now();
        let appended = append(&app, record, created).await;
        tracing::debug!(
            elapsed_us = t0.elapsed().as_micros() as u64,
            "admin audit appended"
        );
        match appended {
            Ok(()) => resp,
            Err(e) => {
                tracing::error!(error = %e, "admin audit record not appended");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit_unavailable")
                    .description("operation applied but its audit record could not be persisted")
                    .into_response()
            }
        }
    } else {
        tokio::spawn(async move {
            if let Err(e) = append(&app, record, false).await {
                tracing::warn!(error = %e, "admin audit record of a failed request not appended");
            }
        });
        resp
    }
}

/// Appends a named-action record (e.g. `DCR shutdown revoke_live`, §5) for a request that
/// also gets its ordinary record.
pub async fn record_action(
    app: &App,
    req: &crate::request::Req,
    zone: &str,
    action: &str,
    payload: Value,
) -> Result<(), String> {
    let (entity, _) = entity_of(&req.path);
    let (entity_type, entity_id) = match entity {
        Some((t, id)) => (Some(t), id),
        None => (None, None),
    };
    let record = AdminAuditRecord {
        request_id: req.rid.clone(),
        actor_id: Some(req.actor().id),
        actor_name: Some(req.principal.token.name.clone()),
        actor_scope: Some(actor_scope(&req.principal)),
        action: action.to_owned(),
        method: req.method.as_str().to_owned(),
        path: req.path.clone(),
        zone_id: Some(zone.to_owned()),
        entity_type,
        entity_id,
        status_code: 200,
        payload_json: payload.to_string(),
    };
    append(app, record, false).await
}

/// Zones known to exist. A zone row is never deleted (archiving keeps it), so a positive
/// answer never goes stale; ids are UUIDv7, so one set serves every deployment in the
/// process. Saves a read-model query on every audited write.
fn known_zones() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static KNOWN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

const KNOWN_ZONES_MAX: usize = 100_000;

async fn zone_exists(app: &App, zone: &str) -> Result<bool, String> {
    {
        let known = known_zones().lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(zone) {
            return Ok(true);
        }
    }
    let exists = serval_projector::zones::load(&app.pool, zone)
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if exists {
        let mut known = known_zones().lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_ZONES_MAX {
            known.clear();
        }
        known.insert(zone.to_owned());
    }
    Ok(exists)
}

/// Appends a record built elsewhere (the Coordinator's, coordinator.md §2.5) on its zone's
/// chain, or the global one when the zone does not exist. Durable when it returns `Ok`.
pub async fn append_record(app: &App, record: AdminAuditRecord) -> Result<(), String> {
    append(app, record, false).await
}

async fn append(app: &App, mut record: AdminAuditRecord, hint: bool) -> Result<(), String> {
    // A zone chain only for a zone that exists; anything else is on the global chain.
    let known = match &record.zone_id {
        Some(z) => zone_exists(app, z).await?,
        None => false,
    };
    if !known {
        record.zone_id = None;
    }
    let stream = match &record.zone_id {
        Some(z) => LogStream::Zone(z.clone()),
        None => LogStream::System,
    };
    let actor = record
        .actor_id
        .clone()
        .unwrap_or_else(|| "anonymous".to_owned());
    let rid = record.request_id.clone();
    let req = AppendRequest::new(
        stream.clone(),
        record.zone_id.clone(),
        uuid::Uuid::now_v7().to_string(),
        0,
        vec![Event::AdminAudit(AdminAuditEvent::Recorded(record))],
        actor,
    )
    .with_request_id(&rid)
    // A fresh id per record: nothing to serialize against, no versions-index field.
    .one_shot();
    app.store.append(&req).await.map_err(|e| e.to_string())?;
    if hint {
        crate::write::hint_new_stream(app, &stream).await;
    }
    Ok(())
}

/// Path templates and documented success statuses of the mutating routes, for the admin
/// audit's early record (`admin_audit::note_written`). Set once when the router is built.
static DOCUMENTED: std::sync::OnceLock<Vec<(Method, Vec<String>, u16)>> =
    std::sync::OnceLock::new();

pub fn remember_documented<'a>(routes: impl IntoIterator<Item = (Method, &'a str, u16)>) {
    let table = routes
        .into_iter()
        .map(|(method, path, ok)| {
            let segs = path.split('/').map(str::to_owned).collect();
            (method, segs, ok)
        })
        .collect();
    let _ = DOCUMENTED.set(table);
}

/// The documented success status of the route `method path` reaches; where templates
/// overlap (`…/counts` and `…/{id}`), the one with more literal segments wins, as in the
/// router.
pub fn documented_ok(method: &Method, path: &str) -> Option<u16> {
    let segs: Vec<&str> = path.split('/').collect();
    DOCUMENTED
        .get()?
        .iter()
        .filter(|(m, t, _)| {
            m == method
                && t.len() == segs.len()
                && t.iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .max_by_key(|(_, t, _)| t.iter().filter(|s| !s.starts_with('{')).count())
        .map(|(_, _, ok)| *ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_come_from_the_innermost_pair() {
        assert_eq!(
            entity_of("/v1/zones/z1/applications/a1/rotate-secret"),
            (Some(("applications".into(), Some("a1".into()))), false)
        );
        assert_eq!(
            entity_of("/v1/zones/z1/applications"),
            (Some(("applications".into(), None)), true)
        );
        assert_eq!(
            entity_of("/v1/zones/z1/applications/dcr"),
            (Some(("applications".into(), None)), true)
        );
        assert_eq!(entity_of("/v1/zones"), (Some(("zones".into(), None)), true));
        assert_eq!(
            entity_of("/v1/zones/z1/providers/%70-1"),
            (Some(("providers".into(), Some("p-1".into()))), false),
            "the id the handler acts on"
        );
        assert_eq!(
            entity_of("/v1/zones/z1/provider-connections/revoke"),
            (Some(("provider-connections".into(), None)), false)
        );
    }
}
