//! `POST /oauth/2/token` (sts.md §3–§5, §8–§10): the RFC 8693 token exchange.
//!
//! Built so far: the encoding rules ([`form`]), client-secret authentication
//! ([`client_auth`]), the authority-record binding of `session_id`, Session and Delegation
//! references with the whole lineage ([`delegated`]), the per-resource checks and the policy
//! decision, lifetimes, the authority record as an event, the ES256 mandate signed with the
//! zone's key ([`crate::keys`]), `jti` registration and the `token_exchange` audit frames
//! ([`audit`]). That mints the **bootstrap** class (`use=session`, scope `agent:lifecycle`)
//! and the **delegated mint** (`use=gateway`). The Gateway re-exchange and federation
//! answer with the refusal the contract gives when their inputs cannot be validated.

pub mod approval;
pub mod client_auth;
pub mod control;
pub mod delegated;
pub mod error;
pub mod federation;
pub mod form;
pub mod gateway;
pub mod id_token;
pub mod limits;
pub mod provider_circuit;
pub mod provider_tokens;
pub mod zone_cache;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Map, Value};
use serval_domain::catalog::{
    self, AuthorityRecordData, CatalogCommand, Entity, EntityData, ResourceData, Stamp,
};
use serval_domain::policy::bundle::INPUT_SCHEMA_VERSION;
use serval_domain::Event;
use serval_kit::freshness::{self, Dep};
use serval_projector::catalog::{self as read, Filter, Status};
use serval_schema::projections;
use serval_streams::{AppendError, AppendRequest, LogStream};

use serval_kit::http::ApiError;
use serval_kit::mandate::Claims;
use serval_kit::policy_engine::EngineError;
use serval_kit::App;

use self::client_auth::Client;
use self::delegated::Governed;
use self::error::StsError;
use self::form::{TokenForm, ACCESS_TOKEN, ID_TOKEN};
use crate::Sts;
use serval_kit::audit_frame::{self as audit, Frame};

/// The scope of the bootstrap class.
pub const LIFECYCLE_SCOPE: &str = "agent:lifecycle";
/// Lifetimes without a subject token (§8.4).
const DEFAULT_TTL: i64 = 900;
const MAX_TTL: i64 = 3_600;

/// What an exchange never reads from the read model, or reads only by id with a wait of
/// its own on a miss: the authority records and audit entries every mint and call adds,
/// approval holds, invocations, admin-audit records — and, for the policies, anything but
/// policy events. Without this each mint would wait for the previous one's record to be
/// projected.
pub(crate) const UNREAD_BY_EXCHANGES: freshness::Skippable = freshness::Skippable {
    name: "sts-exchange",
    accepts: unread_by_exchanges,
};

fn unread_by_exchanges(projection: &str, e: &serval_streams::Envelope) -> bool {
    let policy = matches!(e.aggregate_kind.as_str(), "policy" | "policy_sets");
    if projection == projections::POLICIES {
        return !policy;
    }
    policy
        || matches!(
            e.aggregate_kind.as_str(),
            "approval" | "invocation" | "admin_audit" | "audit"
        )
        || e.event_type == "authority_record.created"
}

/// The request id of a token request: the inbound `X-Request-Id` verbatim, else a UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

pub async fn token(
    State(app): State<App>,
    Extension(sts): Extension<Arc<Sts>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = request_id(&headers);
    let mut frames = Vec::new();
    match exchange(&app, &sts, &rid, &uri, &headers, &body, &mut frames).await {
        Ok(mut resp) => {
            if let Ok(v) = HeaderValue::from_str(&rid) {
                resp.headers_mut().insert("x-request-id", v);
            }
            resp
        }
        Err(e) => {
            // Every decision taken is evidence, also when the exchange fails after it; an
            // allow that did not become a mandate is followed by `exchange_denied`.
            if !frames.is_empty() {
                // A hold is the allow's outcome, not its failure.
                if e.code != "interaction_required" {
                    if let Some(allow) = frames.iter().find(|f| f.decision == "allow") {
                        let mut denied = allow.denied("exchange_denied");
                        denied.metadata.insert("error".into(), json!(e.code));
                        frames.push(denied);
                    }
                }
                if let Err(pe) = audit::publish(&app, &frames).await {
                    tracing::error!(error = ?pe, request_id = %rid, "audit frames of a failed exchange not published");
                    return StsError::from(pe).respond(&rid);
                }
            }
            e.respond(&rid)
        }
    }
}

/// What every per-resource check of one exchange shares.
#[derive(Clone, Copy)]
struct Ask<'a> {
    rid: &'a str,
    client: &'a Client,
    form: &'a TokenForm,
    requested: &'a [String],
    /// The bound authority record (`session_id`).
    record: Option<&'a str>,
    governed: Option<&'a Governed>,
    /// The Gateway path: the verified subject token's claims and the operation the Gateway
    /// saw (`request_method`, `request_path`).
    subject: Option<&'a Claims>,
    operation: (&'a str, &'a str),
    /// A retry naming an approval hold: the policy runs with `challenge_resolved`.
    challenge_resolved: bool,
    view: Option<&'a zone_cache::ZoneView>,
}

/// A resource the exchange granted.
struct Granted {
    id: String,
    identifier: String,
    data: ResourceData,
}

/// The exchange; the audit frames of its decisions are collected in `frames` (published
/// here before a success, by [`token`] after a failure).
async fn exchange(
    app: &App,
    sts: &Sts,
    rid: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    frames: &mut Vec<Frame>,
) -> Result<Response, StsError> {
    let mut form = form::parse(uri.query(), headers, body)?;
    // §4.6: Caracal's ControlClient sends no `zone_id`; the application's zone stands in,
    // and only a control key may use it (checked after authentication).
    if form.get("zone_id").is_none()
        && !form.gateway
        && control::zone_may_be_omitted(&form, &app.cfg.control_audience)
    {
        if let Some(app_id) = form.get("application_id").map(str::to_owned) {
            // A locked-out id costs no lookup.
            limits::check_lockout(app, &app_id).await?;
            if let Some(zone) = control::zone_of(app, &sts.control_zones, &app_id).await? {
                form.derive_zone(zone);
            }
        }
    }
    // §11.2 (step 1): a Gateway request's signature is checked before anything else; its
    // nonce is consumed while the zone is read (one Redis flight for both), and a reused
    // nonce wins over whatever the read found.
    let via_gateway = form.gateway;
    let view = if via_gateway {
        let nonce = gateway::check_signature(app, headers, &form, uri.path(), body)?;
        let (consumed, view) = tokio::join!(
            gateway::consume_nonce(app, &nonce),
            zone_view(app, sts, &form)
        );
        consumed?;
        view?
    } else {
        // §5.1 step 2's lock-out read rides in the same flight; the read-your-writes answer
        // still comes first.
        let app_id = form.get("application_id").unwrap_or_default();
        let (view, lockout) = tokio::join!(
            zone_view(app, sts, &form),
            limits::check_lockout(app, app_id)
        );
        let view = view?;
        lockout?;
        view
    };
    let view = view.as_deref();
    let application_id = form.get("application_id").unwrap_or_default().to_owned();
    // A Gateway-authenticated request needs no secret but a subject token, and skips the
    // authentication-failure limiter.
    let client = if via_gateway {
        if form.get("subject_token").is_none() {
            return Err(StsError::invalid_client());
        }
        sts.secrets.identify(app, &form, view).await?
    } else {
        match sts.secrets.authenticate(app, &form, view).await {
            // §5.1 step 3: a missing `zone_id` is a failed authentication for any other
            // application.
            Ok(c)
                if form.zone_derived
                    && !serval_domain::catalog::control_key::is_control_key(&c.data.traits) =>
            {
                tracing::info!(
                    application_id = %application_id,
                    "no zone_id from an application that is not a control key"
                );
                return Err(limits::count_failure(
                    app,
                    &application_id,
                    StsError::invalid_client(),
                )
                .await);
            }
            Ok(c) => c,
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                return Err(limits::count_failure(app, &application_id, e).await)
            }
            Err(e) => return Err(e),
        }
    };
    match form.get("subject_token_type") {
        Some(ID_TOKEN) if !via_gateway => {
            return federate(app, sts, rid, &client, &form, frames).await;
        }
        Some(ID_TOKEN) => {
            return Err(StsError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "invalid subject_token",
            ))
        }
        // Every route to the control resource ends at its contract (and its evidence).
        Some(ACCESS_TOKEN)
            if !via_gateway && control::names_control(&form, &app.cfg.control_audience) =>
        {
            return control::exchange(app, sts, rid, &client, &form, frames).await;
        }
        Some(ACCESS_TOKEN) if !via_gateway => {
            return Err(StsError::access_denied(
                StatusCode::FORBIDDEN,
                "resource exchanges must use the Gateway",
            ))
        }
        _ => {}
    }
    if form.resources.is_empty() {
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "at least one resource is required",
        ));
    }
    // §4.6: the control resource is minted only by the control-key contract.
    if control::names_control(&form, &app.cfg.control_audience) {
        return control::exchange(app, sts, rid, &client, &form, frames).await;
    }
    let now = Utc::now();
    let requested = form.scopes();
    let subject = if via_gateway {
        Some(verify_subject(app, &client, &form).await?)
    } else {
        None
    };
    let (bound_record, refs) = match &subject {
        Some(claims) => (
            Some(bind_subject_record(app, &client, &form, claims, now, view).await?),
            delegated::Refs::from_subject(&form, claims)?,
        ),
        None => (
            bind_authority_record(app, &client, &form, now, view).await?,
            delegated::Refs::from_form(&form, &requested),
        ),
    };
    let governed = delegated::check(app, &client, &refs, now, view).await?;
    let mut granted: Vec<Granted> = Vec::with_capacity(form.resources.len());
    let ask = Ask {
        rid,
        client: &client,
        form: &form,
        requested: &requested,
        record: bound_record.as_deref(),
        governed: governed.as_ref(),
        subject: subject.as_ref(),
        operation: (
            form.get("request_method").unwrap_or_default(),
            form.get("request_path").unwrap_or_default(),
        ),
        challenge_resolved: !via_gateway
            && form
                .get("approval_id")
                .or(form.get("challenge_id"))
                .is_some(),
        view,
    };
    for r in &form.resources {
        let g = check_resource(app, &ask, r, frames).await?;
        // A resource named twice (by identifier and by id) is one target.
        if let Some(g) = g.filter(|g| !granted.iter().any(|x| x.id == g.id)) {
            granted.push(g);
        }
    }
    if granted.is_empty() {
        let reason = frames_reason(frames);
        return Err(StsError::access_denied(
            StatusCode::FORBIDDEN,
            match reason {
                Some(r) => format!("policy denied ({r})"),
                None => "policy denied".to_owned(),
            },
        ));
    }
    // §7: a gated allow needs a decided hold; the Gateway path never gates.
    let hold_req = approval::Request {
        rid,
        client: &client,
        form: &form,
        requested: &requested,
        record: bound_record.as_deref(),
        governed: governed.as_ref(),
    };
    // §8.4: with a subject token the cap is the default (checked before any hold).
    let cap = if via_gateway { DEFAULT_TTL } else { MAX_TTL };
    let mut ttl = lifetime(form.ttl_seconds, cap)?;
    let release = if via_gateway {
        approval::Release::Ungated
    } else {
        approval::settle(app, &hold_req, frames, now).await?
    };
    if let approval::Release::Replay { hold, answer } = release {
        // A lost answer within 120 s of consumption: the same mandate again, never a new
        // one (a `use=gateway` mandate is single use; an approval releases one).
        if let EntityData::Approval(h) = &hold.data {
            let mut f =
                approval::lifecycle_frame(&hold_req, "step_up_consumed", "consumed", &hold.id, h);
            approval::consumed_metadata(&mut f, true, h.consumed_record_id.as_deref());
            frames.push(f);
        }
        let done = std::mem::take(frames);
        audit::publish(app, &done).await?;
        return Ok(token_response(answer));
    }
    let delegation = governed.as_ref().and_then(|g| g.delegation.as_ref());
    if let Some(d) = delegation {
        ttl = d.lineage.lifetime(ttl, now).ok_or_else(|| {
            StsError::access_denied(StatusCode::FORBIDDEN, "delegation has lapsed")
        })?;
    }
    // §4.1: the class is mechanical; only the delegated mint yields a Gateway-ingress
    // mandate, and only its claims name the Session and Delegation.
    let class = match (&subject, delegation) {
        (Some(_), _) => "resource",
        (None, Some(_)) => "gateway",
        (None, None) => "session",
    };
    let targets: Vec<String> = granted.iter().map(|g| g.identifier.clone()).collect();
    let expires_at = now + Duration::seconds(ttl);
    // The key first: a zone whose key cannot be opened must not collect orphan records.
    let signer = sts.keys.signer(app, &client.zone_id).await?;
    let sid = uuid::Uuid::now_v7().to_string();
    let jti = uuid::Uuid::now_v7().to_string();
    // A resource mandate inherits the presented mandate's subject, scope and root.
    let scope = match &subject {
        Some(c) => c.text("scope").map(str::to_owned),
        None => form.get("scope").map(str::to_owned),
    }
    .filter(|s| !s.trim().is_empty());
    let (sub, sub_type, root_sid) = match &subject {
        Some(c) => (
            c.text("sub").unwrap_or(&client.id).to_owned(),
            c.text("sub_type").unwrap_or("application").to_owned(),
            c.text("root_sid").unwrap_or(&sid).to_owned(),
        ),
        None => (client.id.clone(), "application".to_owned(), sid.clone()),
    };
    let aud = if subject.is_some() {
        json!(targets)
    } else {
        json!([app.cfg.issuer_url])
    };
    let mut claims = json!({
        "iss": app.cfg.issuer_url,
        "sub": sub,
        "aud": aud,
        "exp": expires_at.timestamp(),
        "iat": now.timestamp(),
        "jti": jti,
        "zone_id": client.zone_id,
        "client_id": client.id,
        "sid": sid,
        "root_sid": root_sid,
        "use": class,
        "sub_type": sub_type,
        "target": targets,
    });
    if let Some(m) = claims.as_object_mut() {
        if let Some(s) = &scope {
            m.insert("scope".into(), json!(s));
        }
        if let Some(g) = governed.as_ref().filter(|_| delegation.is_some()) {
            m.extend(g.claims());
        }
    }
    let token = sign(&signer, &claims)?;
    // §9.2: the upstream directives, Gateway path only; a credential that cannot be had
    // fails the exchange before anything durable is written.
    let mut upstreams = Map::new();
    if via_gateway {
        for g in &granted {
            let directive = gateway::directive(
                app,
                &sts.provider_tokens,
                (&client.zone_id, &sub),
                &g.data,
                view,
            )
            .await;
            match directive {
                Ok(d) => {
                    upstreams.insert(g.identifier.clone(), d);
                }
                Err(e) => {
                    // §5.2: the credential's failure is evidence too.
                    let mut m = Map::new();
                    m.insert("application_id".into(), json!(client.id));
                    m.insert("resource".into(), json!(g.identifier));
                    m.insert("error".into(), json!(e.code));
                    let status = credential_skip(&e);
                    frames.push(Frame::refusal(
                        &client.zone_id,
                        rid,
                        "token_exchange",
                        status,
                        m,
                    ));
                    return Err(e);
                }
            }
        }
    }
    // The mint's durable effects at once (none depends on another): the authority record,
    // the `jti` and the decisions' evidence; the token leaves only when all three are in.
    let record_created = create_authority_record(
        app,
        rid,
        &client,
        NewRecord {
            id: &sid,
            parent: bound_record.as_deref(),
            user: None,
        },
        now,
        expires_at,
    );
    let minted = persist(app, rid, &client, frames, record_created, (&jti, now, ttl)).await?;
    if let Some(v) = view {
        v.keep_minted(&sid, minted);
    }
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "issued_token_type": ACCESS_TOKEN,
        "target_resources": targets,
    });
    if let Some(m) = body.as_object_mut() {
        if let Some(s) = &scope {
            m.insert("scope".into(), json!(s));
        }
        if via_gateway {
            m.insert("upstreams".into(), Value::Object(upstreams));
        }
    }
    // §7.4: an approved hold is consumed as the last fallible step, conditionally on its
    // version: of two racing retries one answers, the other gets `409 approval_consumed`
    // (its record and `jti` were never handed out and lapse with their lifetime).
    if let approval::Release::Consume(e) = &release {
        let h = approval::consume(app, rid, e, &sid, now).await?;
        let mut f = approval::lifecycle_frame(&hold_req, "step_up_consumed", "consumed", &e.id, &h);
        approval::consumed_metadata(&mut f, false, Some(&sid));
        if let Err(pe) = audit::publish(app, &[f]).await {
            tracing::error!(error = ?pe, request_id = %rid, "step_up_consumed frame not published");
        }
        approval::keep_answer(app, e, &body).await;
    }
    Ok(token_response(body))
}

/// A token answer: never cached (RFC 6749 §5.1).
fn token_response(body: Value) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// What every `token_exchange` frame of one resource says about the request (§19).
/// Read-your-writes: an exchange sees every write acknowledged before it began (an
/// application, grant or policy binding the Management API just answered for; compiled
/// bundles themselves follow `caracal.policy.invalidate`). After the wait, the zone's view:
/// what it keeps is at least as new as every acknowledged write. Only zones that exist get a
/// view (made-up zone ids must not churn the cache).
async fn zone_view(
    app: &App,
    sts: &Sts,
    form: &TokenForm,
) -> Result<Option<Arc<zone_cache::ZoneView>>, StsError> {
    let Some(zone) = form
        .get("zone_id")
        .filter(|z| serval_domain::validation::is_valid_identifier(z))
    else {
        return Ok(None);
    };
    let stream = LogStream::Zone(zone.to_owned());
    freshness::ensure_skipping(
        app,
        &[
            Dep::new(projections::ZONES, LogStream::System),
            Dep::new(projections::CATALOG, stream.clone()),
            Dep::new(projections::POLICIES, stream),
        ],
        UNREAD_BY_EXCHANGES,
    )
    .await?;
    if serval_kit::read_cache::zone(app, zone).await?.is_some() {
        return Ok(Some(sts.zones.view(app, zone).await));
    }
    Ok(None)
}

fn request_metadata(client: &Client, resource: &str, requested: &[String]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("application_id".into(), json!(client.id));
    m.insert("application_name".into(), json!(client.data.name));
    m.insert(
        "application_registration_method".into(),
        json!(client.data.registration_method.as_str()),
    );
    m.insert("resource".into(), json!(resource));
    m.insert("requested_scopes".into(), json!(requested));
    m
}

/// An ES256 JWS of `claims` under the zone's signing key, naming its `kid`.
fn sign(signer: &crate::keys::Signer, claims: &Value) -> Result<String, StsError> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(signer.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &signer.key)
        .map_err(|e| StsError::from(ApiError::internal(format!("signing: {e}"))))
}

/// The mint's durable effects at once (none depends on another): the authority record,
/// the `jti` and the decisions' evidence; the token leaves only when all three are in.
async fn persist<T>(
    app: &App,
    rid: &str,
    client: &Client,
    frames: &mut Vec<Frame>,
    record: impl std::future::Future<Output = Result<T, StsError>>,
    (jti, now, ttl): (&str, DateTime<Utc>, i64),
) -> Result<T, StsError> {
    let done = std::mem::take(frames);
    let (recorded, registered, published) = tokio::join!(
        record,
        register_jti(app, client, jti, now, ttl),
        audit::publish(app, &done),
    );
    if let Err(e) = published {
        // Not published: [`token`] publishes them with the failure.
        *frames = done;
        return Err(e.into());
    }
    let e = match (recorded, registered) {
        (Ok(r), Ok(())) => return Ok(r),
        (Err(e), _) | (_, Err(e)) => e,
    };
    // The decisions are on record; the failure gets its own frame.
    if let Some(allow) = done.iter().find(|f| f.decision == "allow") {
        let mut denied = allow.denied("exchange_denied");
        denied.metadata.insert("error".into(), json!(e.code));
        if let Err(pe) = audit::publish(app, &[denied]).await {
            tracing::error!(error = ?pe, request_id = %rid, "exchange_denied frame not published");
        }
    }
    Err(e)
}

/// §4.5: a Federated user's id token becomes that user's session mandate (no policy; the
/// verified token is the evidence, recorded as an allow of `caracal-subject-federation`).
async fn federate(
    app: &App,
    sts: &Sts,
    rid: &str,
    client: &Client,
    form: &TokenForm,
    frames: &mut Vec<Frame>,
) -> Result<Response, StsError> {
    federation::check_form(form)?;
    let token = form.get("subject_token").unwrap_or_default();
    let fed = match federation::verify(app, &sts.issuers, client, token).await {
        Ok(f) => f,
        Err(e) => {
            frames.push(federation::frame(
                client,
                rid,
                Err("subject_federation_invalid"),
            ));
            return Err(e);
        }
    };
    let ttl = lifetime(form.ttl_seconds, MAX_TTL)?;
    let now = Utc::now();
    let expires_at = now + Duration::seconds(ttl);
    let signer = sts.keys.signer(app, &client.zone_id).await?;
    let sid = uuid::Uuid::now_v7().to_string();
    let jti = uuid::Uuid::now_v7().to_string();
    let claims = json!({
        "iss": app.cfg.issuer_url,
        "sub": fed.sub,
        "aud": [app.cfg.issuer_url],
        "exp": expires_at.timestamp(),
        "iat": now.timestamp(),
        "jti": jti,
        "zone_id": client.zone_id,
        "client_id": client.id,
        "sid": sid,
        "root_sid": sid,
        "use": "session",
        "sub_type": "user",
    });
    let token = sign(&signer, &claims)?;
    frames.push(federation::frame(client, rid, Ok(&fed)));
    let record = create_authority_record(
        app,
        rid,
        client,
        NewRecord {
            id: &sid,
            parent: None,
            user: Some((&fed.sub, &fed.issuer_id)),
        },
        now,
        expires_at,
    );
    persist(app, rid, client, frames, record, (&jti, now, ttl)).await?;
    Ok(token_response(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "issued_token_type": ACCESS_TOKEN,
    })))
}

fn frames_reason(frames: &[Frame]) -> Option<String> {
    frames.iter().find_map(|f| {
        if f.evaluation_status == "complete" {
            f.diagnostics
                .as_array()
                .and_then(|d| d.iter().find_map(|x| x.get("reason")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        } else {
            None
        }
    })
}

/// The skip reason of §5.2 for a credential that could not be had on the Gateway path.
fn credential_skip(e: &StsError) -> &'static str {
    match e.code {
        "credential_expired_not_renewable" => "credential_refresh_failed",
        "access_denied" => "credential_not_provisioned",
        _ if e.description.contains("not provisioned") => "credential_not_provisioned",
        _ => "provider_unavailable",
    }
}

/// §8.4: `0`/absent = default; negative or above the cap refused (after evaluation).
fn lifetime(ttl: i64, cap: i64) -> Result<i64, StsError> {
    match ttl {
        0 => Ok(DEFAULT_TTL),
        t if t < 0 => Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "ttl_seconds must be positive",
        )),
        t if t > cap => Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "ttl_seconds exceeds token TTL cap",
        )),
        t => Ok(t),
    }
}

/// §5.1 step 5: the subject token of the Gateway path is a `use=gateway` mandate of this
/// zone and issuer (ES256, a current or grace-period key, 60 s leeway); anything else is
/// `401 invalid_token` "invalid subject_token" (resource mandates and session mandates
/// included).
async fn verify_subject(app: &App, client: &Client, form: &TokenForm) -> Result<Claims, StsError> {
    let invalid = || {
        StsError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "invalid subject_token",
        )
    };
    let token = form.get("subject_token").ok_or_else(invalid)?;
    let claims = app
        .mandates
        .verify(app, &client.zone_id, token, &["exp", "iat"])
        .await
        .map_err(|e| {
            tracing::debug!(error = ?e, "subject token refused");
            invalid()
        })?;
    if claims.str("use") != Some("gateway") {
        return Err(invalid());
    }
    Ok(claims)
}

/// §5.1 step 6: the subject token's `sid` names an active, unexpired record of the zone
/// whose subject is the token's `sub`, issued to this application (and equal to
/// `session_id` when one is sent).
async fn bind_subject_record(
    app: &App,
    client: &Client,
    form: &TokenForm,
    claims: &Claims,
    now: DateTime<Utc>,
    view: Option<&zone_cache::ZoneView>,
) -> Result<String, StsError> {
    let Some(sid) = claims.text("sid") else {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "invalid_token",
            "missing token authority record",
        ));
    };
    let denied = || {
        StsError::access_denied(
            StatusCode::FORBIDDEN,
            "token authority record is not active for this application",
        )
    };
    if form.get("session_id").is_some_and(|s| s != sid)
        || claims.text("client_id") != Some(&client.id)
    {
        return Err(denied());
    }
    let bound = |r: &AuthorityRecordData| {
        if r.is_active(now) && Some(r.subject_id.as_str()) == claims.text("sub") {
            Ok(sid.to_owned())
        } else {
            Err(denied())
        }
    };
    if let Some(r) = view.and_then(|v| v.minted(sid)) {
        return bound(&r);
    }
    let mut record = read::load(&app.pool, &client.zone_id, sid)
        .await
        .map_err(ApiError::from)?;
    if record.is_none() {
        // Not projected yet. When the log says the record is still at its first version,
        // nothing has changed it since the mint that signed this token created it: active
        // until the token's `exp`, with the token's subject (both verified above). Any
        // other answer waits for the read model and decides on the row.
        let stream = LogStream::Zone(client.zone_id.clone());
        if app.store.version(&stream, sid).await.ok() == Some(1) {
            return Ok(sid.to_owned());
        }
        catch_up_catalog(app, &client.zone_id).await;
        record = read::load(&app.pool, &client.zone_id, sid)
            .await
            .map_err(ApiError::from)?;
    }
    let Some(Entity {
        data: EntityData::AuthorityRecord(r),
        archived_at: None,
        ..
    }) = record
    else {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "invalid_token",
            "missing token authority record",
        ));
    };
    bound(&r)
}

/// §5.4: a `session_id` must name an active, unexpired `application` record of the caller
/// in the zone.
async fn bind_authority_record(
    app: &App,
    client: &Client,
    form: &TokenForm,
    now: DateTime<Utc>,
    view: Option<&zone_cache::ZoneView>,
) -> Result<Option<String>, StsError> {
    let Some(id) = form.get("session_id") else {
        return Ok(None);
    };
    let usable = |r: &AuthorityRecordData| {
        r.is_active(now) && r.record_type == "application" && r.subject_id == client.id
    };
    let ok = if let Some(r) = view.and_then(|v| v.minted(id)) {
        usable(&r)
    } else {
        let mut record = match view.and_then(|v| v.object(id)) {
            Some(Some(e)) => Some(e),
            _ => read::load(&app.pool, &client.zone_id, id)
                .await
                .map_err(ApiError::from)?,
        };
        if record.is_none() {
            // Records are not waited for before an exchange (`unread_by_exchanges`): a
            // record minted just now is waited for here, once.
            catch_up_catalog(app, &client.zone_id).await;
            record = read::load(&app.pool, &client.zone_id, id)
                .await
                .map_err(ApiError::from)?;
        }
        // Only a found record is kept: a record's creation does not replace the view, so
        // a kept absence could outlive it.
        if let (Some(v), Some(e)) = (view, &record) {
            v.keep_object(id, Some(e.clone()));
        }
        match record
            .as_ref()
            .filter(|e| e.archived_at.is_none())
            .map(|e| &e.data)
        {
            Some(EntityData::AuthorityRecord(r)) => usable(r),
            _ => false,
        }
    };
    if !ok {
        return Err(StsError::access_denied(
            StatusCode::FORBIDDEN,
            "authority record is not an active record of this application",
        ));
    }
    Ok(Some(id.to_owned()))
}

/// A resource of the zone by public identifier or row id, live (kept in the zone's view).
async fn resolve(
    app: &App,
    zone: &str,
    r: &str,
    view: Option<&zone_cache::ZoneView>,
) -> Result<Option<Entity>, ApiError> {
    if let Some(found) = view.and_then(|v| v.resource(r)) {
        return Ok(found);
    }
    let found = resolve_from_read_model(app, zone, r).await?;
    if let Some(v) = view {
        v.keep_resource(r, found.clone());
    }
    Ok(found)
}

async fn resolve_from_read_model(
    app: &App,
    zone: &str,
    r: &str,
) -> Result<Option<Entity>, ApiError> {
    let by_identifier = read::list(
        &app.pool,
        zone,
        catalog::CatalogKind::Resource,
        Status::Live,
        &[Filter::Eq("identifier", r.to_owned())],
        None,
        1,
    )
    .await?;
    if let Some(e) = by_identifier.into_iter().next() {
        return Ok(Some(e));
    }
    Ok(read::load(&app.pool, zone, r)
        .await?
        .filter(|e| e.is_live() && matches!(e.data, EntityData::Resource(_))))
}

/// The scopes a resource can be minted for: its declared scopes, plus `agent:lifecycle`
/// when it has an upstream URL (§4.2).
fn mintable_scopes(r: &ResourceData) -> Vec<String> {
    let mut s = r.scopes.clone();
    if r.upstream_url.as_deref().is_some_and(|u| !u.is_empty())
        && !s.iter().any(|x| x == LIFECYCLE_SCOPE)
    {
        s.push(LIFECYCLE_SCOPE.to_owned());
    }
    s
}

/// §5.2 for one resource: existence, scopes, the policy decision. A failing resource is
/// skipped and audited; an engine error fails the request.
async fn check_resource(
    app: &App,
    ask: &Ask<'_>,
    r: &str,
    frames: &mut Vec<Frame>,
) -> Result<Option<Granted>, StsError> {
    let Ask {
        rid,
        client,
        form,
        requested,
        record,
        governed,
        subject,
        operation,
        challenge_resolved,
        view,
    } = *ask;
    let mut metadata = request_metadata(client, r, requested);
    metadata.insert("session_id".into(), json!(record.unwrap_or_default()));
    let (session_ref, edge_ref) = match governed {
        Some(g) => (
            g.session_id.as_str(),
            g.delegation
                .as_ref()
                .map_or("", |d| d.lineage.edge.id.as_str()),
        ),
        None => (
            form.get("agent_session_id").unwrap_or_default(),
            form.get("delegation_edge_id").unwrap_or_default(),
        ),
    };
    metadata.insert("agent_session_id".into(), json!(session_ref));
    metadata.insert("delegation_edge_id".into(), json!(edge_ref));
    metadata.insert("subject_kind".into(), json!("application"));
    let skipped = |status: &str, metadata: Map<String, Value>| {
        Frame::refusal(&client.zone_id, rid, "token_exchange", status, metadata)
    };
    let resource = match resolve(app, &client.zone_id, r, view).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            frames.push(skipped("resource_not_found", metadata));
            return Ok(None);
        }
        Err(e) => {
            frames.push(skipped("exchange_denied", metadata));
            return Err(e.into());
        }
    };
    let EntityData::Resource(data) = &resource.data else {
        frames.push(skipped("resource_not_found", metadata));
        return Ok(None);
    };
    // §5.2: the control resource named by its row id is still the control resource.
    if data.identifier == app.cfg.control_audience {
        frames.push(skipped("control_resource_requires_control_key", metadata));
        return Err(StsError::access_denied(
            StatusCode::FORBIDDEN,
            "the control resource requires a control key",
        ));
    }
    let scopes = mintable_scopes(data);
    if !requested.iter().all(|s| scopes.contains(s)) {
        frames.push(skipped("scope_mismatch", metadata));
        return Ok(None);
    }
    let delegation = governed.and_then(|g| g.delegation.as_ref());
    if delegation.is_some_and(|d| !d.lineage.covers(&resource.id, &data.identifier)) {
        frames.push(skipped("resource_outside_delegation", metadata));
        return Ok(None);
    }
    if let Some(claims) = subject {
        if !gateway::operation_permitted(data, operation.0, operation.1, &claims.scopes()) {
            frames.push(skipped("operation_not_permitted", metadata));
            return Err(StsError::new(
                StatusCode::FORBIDDEN,
                "operation_not_permitted",
                format!(
                    "operation {} {} is not permitted on resource {}",
                    operation.0.to_ascii_uppercase(),
                    operation.1.trim(),
                    data.identifier
                ),
            ));
        }
    }
    if !limits::mint_allowed(app, &client.zone_id, &resource.id, &client.id).await {
        frames.push(skipped("rate_limited", metadata));
        return Ok(None);
    }
    let mut principal = json!({
        "type": "Application",
        "id": client.id,
        "zone_id": client.zone_id,
        "registration_method": client.data.registration_method.as_str(),
    });
    if let (Some(g), Some(p)) = (governed, principal.as_object_mut()) {
        p.insert("agent_session_id".into(), json!(g.session_id));
        p.insert("lifecycle".into(), json!(g.session.lifecycle));
        p.insert("labels".into(), json!(g.session.labels));
    }
    let mut input = json!({
        "schema_version": INPUT_SCHEMA_VERSION,
        "principal": principal,
        "resource": {
            "type": "Resource",
            "id": resource.id,
            "identifier": data.identifier,
            "scopes": scopes,
        },
        "action": { "id": "TokenExchange" },
        "session": { "id": record.unwrap_or_default() },
        "context": {
            "actor_claims": { "caracal_client_id": client.id },
            "trace_id": rid,
            "session_id": record.unwrap_or_default(),
            "agent_session_id": session_ref,
            "delegation_edge_id": edge_ref,
            "challenge_resolved": challenge_resolved,
            "requested_scopes": requested,
        },
    });
    if let (Some(claims), Some(m)) = (subject, input.as_object_mut()) {
        if let Some(ctx) = m.get_mut("context").and_then(Value::as_object_mut) {
            ctx.insert("subject_claims".into(), Value::Object(claims.0.clone()));
        }
        if let Some(action) = m.get_mut("action").and_then(Value::as_object_mut) {
            action.insert("method".into(), json!(operation.0.to_ascii_uppercase()));
            action.insert("path".into(), json!(operation.1));
        }
    }
    if let (Some(edge), Some(m)) = (
        governed.and_then(Governed::edge_input),
        input.as_object_mut(),
    ) {
        m.insert("delegation_edge".into(), edge);
    }
    metadata.insert("policy_input".into(), input.clone());
    let decided = app.engines.decide(&app.pool, &client.zone_id, &input).await;
    let (result, policy) = match decided {
        Ok(d) => (
            d.result,
            Some((
                d.loaded.version_id.clone(),
                d.loaded.manifest_sha256.clone(),
            )),
        ),
        // A zone without an active policy set evaluates the deny-all module (§6.1).
        Err(EngineError::NoPolicy) => (
            json!({
                "decision": "deny",
                "evaluation_status": "complete",
                "determining_policies": [],
                "diagnostics": [{ "reason": "no_active_policy_set" }],
            }),
            None,
        ),
        Err(e) => {
            tracing::error!(error = %e, zone = %client.zone_id, "policy evaluation failed");
            frames.push(skipped("policy_eval_failed", metadata));
            return Err(StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "policy_eval_failed",
                "policy evaluation unavailable",
            ));
        }
    };
    // Only a complete allow or deny is usable (§6.4).
    let usable = result.get("evaluation_status").and_then(Value::as_str) == Some("complete")
        && matches!(
            result.get("decision").and_then(Value::as_str),
            Some("allow" | "deny")
        );
    if !usable {
        frames.push(skipped("policy_eval_failed", metadata));
        return Err(StsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_eval_failed",
            "policy evaluation unavailable",
        ));
    }
    let allow = serval_domain::policy::bundle::is_allow(&result);
    let diagnostics = result.get("diagnostics").cloned().unwrap_or(json!([]));
    frames.push(Frame {
        zone_id: client.zone_id.clone(),
        request_id: rid.to_owned(),
        event_type: "token_exchange",
        decision: if allow { "allow" } else { "deny" },
        evaluation_status: "complete".to_owned(),
        determining_policies: result
            .get("determining_policies")
            .cloned()
            .unwrap_or(json!([])),
        diagnostics,
        metadata,
        policy,
    });
    Ok(allow.then(|| Granted {
        id: resource.id.clone(),
        identifier: data.identifier.clone(),
        data: data.clone(),
    }))
}

/// The authority record a mint creates.
struct NewRecord<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    /// A Federated user's record: `(sub, issuer row)`.
    user: Option<(&'a str, &'a str)>,
}

/// The mint's authority record (§5.1 step 13) as an event: an `application` record of the
/// caller (a `user` record for federation), expiring with the mandate.
async fn create_authority_record(
    app: &App,
    rid: &str,
    client: &Client,
    NewRecord { id, parent, user }: NewRecord<'_>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<AuthorityRecordData, StsError> {
    let data = AuthorityRecordData {
        record_type: if user.is_some() {
            "user"
        } else {
            "application"
        }
        .into(),
        subject_id: user.map_or_else(|| client.id.clone(), |(sub, _)| sub.to_owned()),
        application_id: Some(client.id.clone()),
        federated_user_issuer: user.map(|(_, issuer)| issuer.to_owned()),
        parent_id: parent.map(str::to_owned),
        status: "active".into(),
        expires_at,
        authenticated_at: now,
        revoked_at: None,
        revoked_reason: None,
        revoked_by_grant: None,
    };
    append_catalog(
        app,
        rid,
        (&client.zone_id, id),
        None,
        &CatalogCommand::Create {
            zone_id: client.zone_id.clone(),
            data: EntityData::AuthorityRecord(data.clone()),
        },
        &format!("application:{}", client.id),
    )
    .await
    .map_err(StsError::from)?;
    Ok(data)
}

/// Why a catalog append did not happen.
pub enum Appended {
    /// The aggregate moved on since it was read.
    Conflict,
    Failed(StsError),
}

impl From<AppendError> for Appended {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::VersionConflict { .. } => Appended::Conflict,
            e => Appended::Failed(ApiError::internal(format!("append: {e}")).into()),
        }
    }
}

impl From<Appended> for StsError {
    fn from(a: Appended) -> Self {
        match a {
            Appended::Conflict => ApiError::internal("append: version conflict").into(),
            Appended::Failed(e) => e,
        }
    }
}

/// Waits once for the zone's catalog projection to reach the log head: what an exchange
/// does when an object it reads by id (a record, a hold) may not be projected yet.
pub(crate) async fn catch_up_catalog(app: &App, zone: &str) {
    let stream = LogStream::Zone(zone.to_owned());
    serval_kit::write::catch_up(app, projections::CATALOG, &stream).await;
}

/// Deletes `key` only while it still holds `value` (a lease or reservation this request
/// took); best effort.
pub(crate) async fn release_if_held(app: &App, key: &str, value: &str) {
    let mut conn = app.redis.clone();
    let _: Result<i64, _> = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
    .key(key)
    .arg(value)
    .invoke_async(&mut conn)
    .await;
}

/// Appends one catalog command of the zone, decided on `state` (`None`: a new aggregate)
/// and conditional on its version: a concurrent writer makes it a conflict.
pub(crate) async fn append_catalog(
    app: &App,
    rid: &str,
    (zone, id): (&str, &str),
    state: Option<&Entity>,
    command: &CatalogCommand,
    actor: &str,
) -> Result<(), Appended> {
    let stamp = Stamp {
        by: actor.to_owned(),
        via_operator: false,
    };
    let events = catalog::decide(state, command, &stamp)
        .map_err(|e| Appended::Failed(ApiError::internal(format!("catalog: {e}")).into()))?;
    let req = AppendRequest::new(
        LogStream::Zone(zone.to_owned()),
        Some(zone.to_owned()),
        id.to_owned(),
        state.map_or(0, |e| e.version),
        events.into_iter().map(Event::Catalog).collect(),
        actor.to_owned(),
    )
    .with_request_id(rid);
    app.store.append(&req).await?;
    Ok(())
}

/// §12: every issued `jti` registered set-if-absent for the token's lifetime; a collision
/// or a Redis error fails the exchange (the token is never returned).
async fn register_jti(
    app: &App,
    client: &Client,
    jti: &str,
    now: DateTime<Utc>,
    ttl: i64,
) -> Result<(), StsError> {
    let key = app.store.keys().jti(&client.zone_id, jti);
    let mut conn = app.redis.clone();
    let set: bool = redis::cmd("SET")
        .arg(&key)
        .arg(format!("{}|{}", client.id, now.timestamp()))
        .arg("NX")
        .arg("EX")
        .arg(ttl.max(1))
        .query_async::<Option<String>>(&mut conn)
        .await
        .map_err(ApiError::from)?
        .is_some();
    if !set {
        let mut metadata = Map::new();
        metadata.insert("jti".into(), json!(jti));
        metadata.insert("app_id".into(), json!(client.id));
        audit::publish(
            app,
            &[Frame::refusal(
                &client.zone_id,
                jti,
                "jti_collision",
                "anomaly",
                metadata,
            )],
        )
        .await?;
        return Err(ApiError::internal("jti collision").into());
    }
    Ok(())
}
