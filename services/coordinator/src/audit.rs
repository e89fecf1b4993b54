//! Admin audit of the Coordinator (coordinator.md §2.5): every authenticated mutation is
//! recorded before its success is released (else `500 audit_unavailable`); a failed request
//! of an authenticated caller, any method, is recorded after the answer. Requests refused
//! before authentication completed are not recorded, nor are `429`s.
//!
//! The record of the expected success is prepared at authentication and rides the
//! request's first write (one fsync for both, as in the Management API); the answer is
//! compared with it and, when it differs, its own record is appended too.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use serval_domain::admin_audit::AdminAuditRecord;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::App;

use crate::auth::Principal;

/// The request being served, as its record needs it.
struct Call {
    method: Method,
    path: String,
    rid: String,
    /// The documented success of a route whose record may ride its first write.
    expected: Option<StatusCode>,
    caller: Mutex<Option<Principal>>,
}

tokio::task_local! {
    static CALL: Arc<Call>;
}

/// Notes the authenticated caller of the request being served.
pub fn note(p: &Principal) {
    let _ = CALL.try_with(|c| {
        *c.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
        if let Some(expected) = c.expected {
            serval_kit::admin_audit::note_prepared(record(c, p, expected));
        }
    });
}

/// The success status of the mutations whose record is prepared before they write.
fn expected(method: &Method, path: &str) -> Option<StatusCode> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let status = match (method.as_str(), segs.as_slice()) {
        ("POST", ["zones", _, "agents" | "delegations" | "invocations"]) => StatusCode::CREATED,
        ("DELETE", ["zones", _, "agents", _]) => StatusCode::NO_CONTENT,
        ("PATCH", ["zones", _, "agents", _, "suspend" | "resume"])
        | ("POST", ["zones", _, "agents", _, "lease" | "heartbeat"])
        | ("PATCH", ["zones", _, "delegations", _, "revoke"])
        | ("PATCH", ["zones", _, "invocations", _, "start" | "cancel" | "complete"]) => {
            StatusCode::OK
        }
        _ => return None,
    };
    Some(status)
}

fn record(c: &Call, p: &Principal, status: StatusCode) -> AdminAuditRecord {
    let (entity_type, entity_id) = entity(&c.path);
    AdminAuditRecord {
        request_id: c.rid.clone(),
        actor_id: Some(p.subject.clone()),
        actor_name: Some(p.client_id.clone()),
        actor_scope: Some(p.scopes.join(" ")),
        action: format!("{} {}", c.method, c.path),
        method: c.method.as_str().to_owned(),
        path: c.path.clone(),
        zone_id: zone_of(&c.path).or_else(|| Some(p.zone_id.clone())),
        entity_type,
        entity_id,
        status_code: status.as_u16(),
        payload_json: json!({
            "service": "coordinator",
            "operator": p.operator,
            "agent_session_id": p.session_id,
            "delegation_edge_id": p.delegation_edge_id,
        })
        .to_string(),
    }
}

fn entity(path: &str) -> (Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.first() == Some(&"v1") {
        return (Some("session".into()), None);
    }
    let kind = |s: &str| match s {
        "agents" => Some("session"),
        "delegations" => Some("delegation"),
        "invocations" => Some("invocation"),
        "agent-services" => Some("agent_service"),
        "outbox" => Some("outbox"),
        _ => None,
    };
    match segs.as_slice() {
        ["zones", _, k, id, ..] if !matches!(*id, "active" | "inbound" | "outbound") => {
            (kind(k).map(str::to_owned), Some((*id).to_owned()))
        }
        ["zones", _, k, ..] => (kind(k).map(str::to_owned), None),
        _ => (None, None),
    }
}

fn zone_of(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["zones", z, ..] => Some((*z).to_owned()),
        _ => None,
    }
}

pub async fn layer(State(app): State<App>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if matches!(path.as_str(), "/health" | "/ready" | "/metrics" | "/stats") {
        return next.run(req).await;
    }
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let call = Arc::new(Call {
        expected: expected(&method, &path),
        method,
        path,
        rid,
        caller: Mutex::new(None),
    });
    let served = CALL.scope(call.clone(), next.run(req));
    let (resp, early) = match call.expected {
        Some(status) => serval_kit::admin_audit::with_prepared(status, served).await,
        None => (served.await, Default::default()),
    };
    let Some(p) = call.caller.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return resp;
    };
    let status = resp.status();
    let mutation = matches!(
        call.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let failed = status.as_u16() >= 400;
    if (!mutation && !failed) || status == StatusCode::TOO_MANY_REQUESTS {
        return resp;
    }
    let record = record(&call, &p, status);
    let fired = early.fired();
    if serval_kit::admin_audit::settle_early(early, &record).await {
        return resp;
    }
    // A failure after a write whose record already claims success: the correction is
    // durable before the answer goes out, like a success's record.
    if failed && !fired {
        tokio::spawn(async move {
            if let Err(e) = serval_kit::admin_audit::append_record(&app, record).await {
                tracing::warn!(error = %e, "audit record of a failed request not appended");
            }
        });
        return resp;
    }
    match serval_kit::admin_audit::append_record(&app, record).await {
        Ok(()) => resp,
        Err(e) => {
            tracing::error!(error = %e, "coordinator audit record not appended");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit_unavailable")
                .with(
                    "message",
                    json!("operation applied but its audit record could not be persisted"),
                )
                .into_response()
        }
    }
}
