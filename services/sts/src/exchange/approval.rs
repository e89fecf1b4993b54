//! Approval holds on the token path (sts.md §7.2, §7.4): a gated allow becomes a hold the
//! caller must have decided, and a retry naming the hold releases at most one mandate.
//!
//! A hold is a catalog aggregate of the zone (kind `approval`, random UUID: unguessable).
//! Issuance is idempotent per binding through `<p>:{z:<zone>}:approval:<binding>` (the
//! hold's id, kept for its window); consumption is a conditional append at the hold's
//! version, so of two racing retries exactly one mints.

use std::sync::OnceLock;

use axum::http::StatusCode;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use serval_domain::catalog::runtime::REISSUE_WINDOW_SECS;
use serval_domain::catalog::step_up::{self, BindingInput, HoldShape, TierDeclaration};
use serval_domain::catalog::{ApprovalData, CatalogCommand, Entity, EntityData};
use serval_domain::policy::bundle::{CONTRACT_SOURCE, CONTRACT_VERSION, DERIVE_SOURCE};
use serval_kit::audit_frame::Frame;
use serval_kit::http::ApiError;
use serval_kit::secrets::Binding;
use serval_kit::App;
use serval_projector::catalog as read;
use sha2::{Digest, Sha256};

use super::client_auth::Client;
use super::delegated::Governed;
use super::error::StsError;
use super::form::TokenForm;
use super::Appended;

/// Hex SHA-256 of the decision contract's source (both parts), bound into every hold.
fn contract_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        let mut h = Sha256::new();
        h.update(CONTRACT_SOURCE.as_bytes());
        h.update(DERIVE_SOURCE.as_bytes());
        hex::encode(h.finalize())
    })
}

/// The request a hold is bound to.
pub struct Request<'a> {
    pub rid: &'a str,
    pub client: &'a Client,
    pub form: &'a TokenForm,
    pub requested: &'a [String],
    pub record: Option<&'a str>,
    pub governed: Option<&'a Governed>,
}

impl Request<'_> {
    fn session(&self) -> &str {
        self.governed.map_or("", |g| g.session_id.as_str())
    }

    fn delegation(&self) -> &str {
        self.governed
            .and_then(|g| g.delegation.as_ref())
            .map_or("", |d| d.lineage.edge.id.as_str())
    }

    /// §7.2: the binding over the canonical request and the policy that decided it.
    pub fn binding(&self, frames: &[Frame]) -> String {
        let (version, manifest) = frames
            .iter()
            .find_map(|f| f.policy.clone())
            .unwrap_or_default();
        step_up::binding(&BindingInput {
            resources: &self.form.resources,
            scopes: self.requested,
            principal: &self.client.id,
            authority_record: self.record.unwrap_or_default(),
            session: self.session(),
            delegation: self.delegation(),
            application: &self.client.id,
            policy_set_version: &version,
            manifest_sha256: &manifest,
            contract_version: CONTRACT_VERSION,
            contract_sha256: contract_sha256(),
        })
    }
}

/// What the hold logic lets the mint do.
pub enum Release {
    /// No gate and no hold named: mint as usual.
    Ungated,
    /// An approved hold: mint, consuming it as the last fallible step.
    Consume(Entity),
    /// A hold consumed less than 120 s ago for this binding: the answer it released, again.
    Replay { hold: Entity, answer: Value },
}

/// The sealing purpose of a released answer kept for re-issue.
const ANSWER_PURPOSE: &str = "approval_answer";

/// Keeps the answer a consumed hold released, sealed under the zone's data key, for the
/// re-issue window. Best effort: without it a lost answer is `409 approval_consumed`.
pub async fn keep_answer(app: &App, hold: &Entity, body: &Value) {
    let doc = json!({ "at": Utc::now().timestamp(), "body": body });
    let binding = Binding {
        zone_id: &hold.zone_id,
        object_id: &hold.id,
        purpose: ANSWER_PURPOSE,
    };
    let sealed = match app.custody.seal(&binding, doc.to_string().as_bytes()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, hold = %hold.id, "released answer not kept");
            return;
        }
    };
    let key = app.store.keys().approval_answer(&hold.zone_id, &hold.id);
    let mut conn = app.redis.clone();
    let kept: Result<(), _> = redis::cmd("SET")
        .arg(&key)
        .arg(sealed)
        .arg("EX")
        .arg(REISSUE_WINDOW_SECS)
        .query_async(&mut conn)
        .await;
    if let Err(e) = kept {
        tracing::warn!(error = %e, hold = %hold.id, "released answer not kept");
    }
}

/// The answer kept for a consumed hold, its `expires_in` counted down.
async fn kept_answer(app: &App, hold: &Entity) -> Option<Value> {
    let key = app.store.keys().approval_answer(&hold.zone_id, &hold.id);
    let mut conn = app.redis.clone();
    let sealed: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .ok()?;
    let binding = Binding {
        zone_id: &hold.zone_id,
        object_id: &hold.id,
        purpose: ANSWER_PURPOSE,
    };
    let plain = app.custody.open(&binding, &sealed?).await.ok()?;
    let doc: Value = serde_json::from_slice(&plain).ok()?;
    let at = doc.get("at")?.as_i64()?;
    let mut body = doc.get("body")?.clone();
    let left = body.get("expires_in")?.as_i64()? - (Utc::now().timestamp() - at);
    if left <= 0 {
        return None;
    }
    body.as_object_mut()?
        .insert("expires_in".into(), json!(left));
    Some(body)
}

/// The gate's declarations of the allowed resources.
fn declarations(frames: &[Frame]) -> Vec<TierDeclaration> {
    frames
        .iter()
        .filter(|f| f.decision == "allow")
        .flat_map(|f| TierDeclaration::from_diagnostics(&f.diagnostics))
        .collect()
}

/// The human-approval hold an entity is, if it is one.
pub fn hold_of(e: &Entity) -> Option<&ApprovalData> {
    match &e.data {
        EntityData::Approval(h) if h.approval_type == "human_approval" => Some(h),
        _ => None,
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `401 interaction_required` answer of a pending hold.
pub fn pending_answer(id: &str, h: &ApprovalData) -> StsError {
    let mut e = StsError::new(
        StatusCode::UNAUTHORIZED,
        "interaction_required",
        "Human approval required for this request",
    );
    e.extra.insert("approval_id".into(), json!(id));
    e.extra
        .insert("approval_type".into(), json!(h.approval_type));
    e.extra.insert("state".into(), json!("pending"));
    e.extra.insert("tier".into(), json!(h.tier));
    e.extra.insert("binding".into(), json!(h.binding));
    e.extra
        .insert("approval_expires_at".into(), json!(ts(h.expires_at)));
    e
}

/// The hold's lifecycle frame (sts.md §19).
pub fn lifecycle_frame(
    req: &Request<'_>,
    event_type: &'static str,
    decision: &'static str,
    id: &str,
    h: &ApprovalData,
) -> Frame {
    let mut m = Map::new();
    m.insert("challenge_id".into(), json!(id));
    m.insert("tier".into(), json!(h.tier));
    m.insert("approver_class".into(), json!(h.approver_class));
    m.insert("privacy_mode".into(), json!(h.privacy_mode));
    m.insert("binding".into(), json!(h.binding));
    m.insert("expires_at".into(), json!(ts(h.expires_at)));
    m.insert("application_id".into(), json!(req.client.id));
    m.insert("session_id".into(), json!(h.session_id));
    m.insert("agent_session_id".into(), json!(req.session()));
    m.insert("delegation_edge_id".into(), json!(req.delegation()));
    m.insert("agent_labels".into(), json!(h.agent_labels));
    if let Some(a) = &h.subject_anchor {
        m.insert("subject_anchor".into(), json!(a));
    }
    Frame {
        decision,
        ..Frame::refusal(&req.client.zone_id, req.rid, event_type, "complete", m)
    }
}

/// A skip frame of the approval path (`approval_invalid`, `approval_rejected`, …).
fn skip(req: &Request<'_>, status: &str, id: &str) -> Frame {
    let mut m = Map::new();
    m.insert("application_id".into(), json!(req.client.id));
    m.insert("approval_id".into(), json!(id));
    m.insert("requested_scopes".into(), json!(req.requested));
    Frame::refusal(&req.client.zone_id, req.rid, "token_exchange", status, m)
}

/// Loads a hold of the zone (waiting once for the catalog when it is not there yet: a
/// hold is appended without waiting for its read model).
async fn load_hold(app: &App, zone: &str, id: &str) -> Result<Option<Entity>, StsError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(None);
    }
    let mut e = read::load(&app.pool, zone, id)
        .await
        .map_err(ApiError::from)?;
    if e.is_none() {
        super::catch_up_catalog(app, zone).await;
        e = read::load(&app.pool, zone, id)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(e.filter(|e| hold_of(e).is_some()))
}

/// §7.2 and §7.4: what the evaluated request may do given its gate and the hold it names.
pub async fn settle(
    app: &App,
    req: &Request<'_>,
    frames: &mut Vec<Frame>,
    now: DateTime<Utc>,
) -> Result<Release, StsError> {
    let binding = req.binding(frames);
    let named = req
        .form
        .get("approval_id")
        .or_else(|| req.form.get("challenge_id"));
    if let Some(id) = named {
        let mismatch = || {
            StsError::access_denied(
                StatusCode::UNAUTHORIZED,
                "approval not found or bindings do not match",
            )
        };
        let Some(mut e) = load_hold(app, &req.client.zone_id, id).await? else {
            frames.push(skip(req, "approval_invalid", id));
            return Err(mismatch());
        };
        // Holds are not waited for before an exchange: a decision acknowledged just now
        // may not be projected yet, so a pending hold is read again once caught up.
        if hold_of(&e).is_some_and(|h| h.state(now) == "pending") {
            super::catch_up_catalog(app, &req.client.zone_id).await;
            if let Some(fresh) = load_hold(app, &req.client.zone_id, id).await? {
                e = fresh;
            }
        }
        let Some(h) = hold_of(&e) else {
            return Err(mismatch());
        };
        if h.principal_id != req.client.id
            || h.session_id != req.record.unwrap_or_default()
            || h.binding != binding
        {
            frames.push(skip(req, "approval_invalid", id));
            return Err(mismatch());
        }
        return by_state(app, req, e.clone(), frames, now).await;
    }
    let Some(shape) = step_up::merge(&declarations(frames)).map_err(|_| {
        StsError::access_denied(
            StatusCode::FORBIDDEN,
            "approval tiers require both an operator and a subject decision",
        )
    })?
    else {
        return Ok(Release::Ungated);
    };
    issue(app, req, shape, binding, frames, now).await
}

/// The answer a named (or re-found) hold gives by its state.
async fn by_state(
    app: &App,
    req: &Request<'_>,
    e: Entity,
    frames: &mut Vec<Frame>,
    now: DateTime<Utc>,
) -> Result<Release, StsError> {
    let Some(h) = hold_of(&e) else {
        return Err(ApiError::internal("not a hold").into());
    };
    match h.state(now) {
        "pending" => Err(pending_answer(&e.id, h)),
        "approved" => Ok(Release::Consume(e)),
        "rejected" => {
            frames.push(skip(req, "approval_rejected", &e.id));
            Err(StsError::access_denied(
                StatusCode::FORBIDDEN,
                "approval was rejected",
            ))
        }
        "expired" => {
            frames.push(skip(req, "approval_expired", &e.id));
            Err(StsError::access_denied(
                StatusCode::UNAUTHORIZED,
                "approval expired",
            ))
        }
        _ => match (h.reissues(now), kept_answer(app, &e).await) {
            (true, Some(answer)) => Ok(Release::Replay { hold: e, answer }),
            _ => {
                frames.push(skip(req, "approval_already_consumed", &e.id));
                Err(StsError::new(
                    StatusCode::CONFLICT,
                    "approval_consumed",
                    "approval was already consumed",
                ))
            }
        },
    }
}

/// How long a binding's holder may be missing from the read model before it is taken to
/// have failed (a creator appends right after taking the binding).
const CREATING_MS: i64 = 10_000;

/// The holder value: `<hold id>|<unix ms when taken>`.
fn holder_value(id: &str) -> String {
    format!("{id}|{}", Utc::now().timestamp_millis())
}

fn holder_age_ms(holder: &str) -> Option<i64> {
    let (_, at) = holder.split_once('|')?;
    Some(Utc::now().timestamp_millis() - at.parse::<i64>().ok()?)
}

/// Compare-and-set of the binding's hold id (a terminal hold gives way to a new one).
const SWAP_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"#;

/// The user a governed request acts for (its Session's `user` subject record): the hold's
/// subject anchor, so only that user (same issuer, same `sub`) decides it.
pub struct Anchor {
    pub record: String,
    pub sub: String,
    pub issuer: Option<String>,
}

/// The anchor of the request's Session, if it acts for a Federated user.
async fn anchor_of(app: &App, req: &Request<'_>) -> Result<Option<Anchor>, StsError> {
    let Some(record) = req
        .governed
        .and_then(|g| g.session.subject_authority_record_id.clone())
    else {
        return Ok(None);
    };
    let e = read::load(&app.pool, &req.client.zone_id, &record)
        .await
        .map_err(ApiError::from)?;
    Ok(match e.map(|e| e.data) {
        Some(EntityData::AuthorityRecord(r)) if r.record_type == "user" => Some(Anchor {
            record,
            sub: r.subject_id,
            issuer: r.federated_user_issuer,
        }),
        _ => None,
    })
}

/// The hold a request of this shape and binding gets (not yet stored).
fn shape_hold(
    req: &Request<'_>,
    shape: &HoldShape,
    binding: String,
    anchor: Option<&Anchor>,
    now: DateTime<Utc>,
) -> ApprovalData {
    ApprovalData {
        session_id: req.record.unwrap_or_default().to_owned(),
        principal_id: req.client.id.clone(),
        application_id: Some(req.client.id.clone()),
        approval_type: "human_approval".into(),
        tier: shape.tier.clone(),
        approver_class: shape.approver_class.clone(),
        privacy_mode: shape.privacy_mode.clone(),
        subject_anchor: anchor.map(|a| a.sub.clone()),
        binding,
        metadata_json: json!({
            "resources": req.form.resources,
            "scopes": req.requested,
            "agent_session_id": req.session(),
            "delegation_edge_id": req.delegation(),
            "subject_anchor_record": anchor.map(|a| a.record.clone()),
            "subject_anchor_issuer": anchor.and_then(|a| a.issuer.clone()),
        }),
        decision_reason: None,
        expires_at: now + Duration::seconds(shape.window_seconds),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        principal_federated: anchor.is_some(),
        agent_labels: req
            .governed
            .map(|g| g.session.labels.clone())
            .unwrap_or_default(),
        consumed_record_id: None,
        approver_session_id: None,
    }
}

/// The name an approval hold's id has in Redis keys (ids never appear in key names).
pub fn hold_digest(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// §7.2: the binding's live hold is returned (an approved one releases the mint, a
/// rejected one refuses); otherwise a new hold is created.
async fn issue(
    app: &App,
    req: &Request<'_>,
    shape: HoldShape,
    binding: String,
    frames: &mut Vec<Frame>,
    now: DateTime<Utc>,
) -> Result<Release, StsError> {
    let zone = &req.client.zone_id;
    let key = app.store.keys().approval_binding(zone, &binding);
    let id = uuid::Uuid::new_v4().to_string();
    let mine = holder_value(&id);
    let window = shape.window_seconds;
    let anchor = anchor_of(app, req).await?;
    let mut conn = app.redis.clone();
    // Where a status or decision call naming only this id finds the hold's zone before
    // the hold is projected (see `approval_routes::find`). Written before the hold can be
    // answered, so no answer names an id that cannot be found.
    let _: () = redis::cmd("SET")
        .arg(app.store.keys().approval_zone(&hold_digest(&id)))
        .arg(zone)
        .arg("EX")
        .arg(window + 60)
        .query_async(&mut conn)
        .await
        .map_err(ApiError::from)?;
    // `SET NX GET` needs Redis 7; a script gives the same answer on 6.2.
    let taken: Option<String> = redis::Script::new(
        "local v = redis.call('GET', KEYS[1]) if v then return v end \
         redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return false",
    )
    .key(&key)
    .arg(&mine)
    .arg(window)
    .invoke_async(&mut conn)
    .await
    .map_err(ApiError::from)?;
    if let Some(holder) = taken {
        let holder_id = holder.split_once('|').map_or(holder.as_str(), |(id, _)| id);
        if let Some(e) = load_hold(app, zone, holder_id).await? {
            let live = hold_of(&e).is_some_and(|h| {
                matches!(h.state(now), "pending" | "approved" | "rejected") && h.binding == binding
            });
            if live {
                return by_state(app, req, e, frames, now).await;
            }
        } else if holder_age_ms(&holder).is_some_and(|age| age < CREATING_MS) {
            // Another request is creating this binding's hold right now: the same hold.
            let hold = shape_hold(req, &shape, binding, anchor.as_ref(), now);
            return Err(pending_answer(holder_id, &hold));
        }
        // The holder ended (expired or consumed) or was never written: replace it.
        let swapped: i64 = redis::Script::new(SWAP_LUA)
            .key(&key)
            .arg(&holder)
            .arg(&mine)
            .arg(window)
            .invoke_async(&mut conn)
            .await
            .map_err(ApiError::from)?;
        if swapped != 1 {
            return Err(StsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "a concurrent request is creating this approval; retry",
            ));
        }
    }
    let hold = shape_hold(req, &shape, binding, anchor.as_ref(), now);
    let created = super::append_catalog(
        app,
        req.rid,
        (zone, &id),
        None,
        &CatalogCommand::Create {
            zone_id: zone.clone(),
            data: EntityData::Approval(hold.clone()),
        },
        &format!("application:{}", req.client.id),
    )
    .await;
    if let Err(e) = created {
        super::release_if_held(app, &key, &mine).await;
        return Err(e.into());
    }
    frames.push(lifecycle_frame(
        req,
        "step_up_issued",
        "pending",
        &id,
        &hold,
    ));
    Err(pending_answer(&id, &hold))
}

/// Marks an approved hold consumed by the mint whose authority record is `record`: the
/// last fallible step before the mandate leaves. A concurrent consumer wins alone.
pub async fn consume(
    app: &App,
    rid: &str,
    e: &Entity,
    record: &str,
    now: DateTime<Utc>,
) -> Result<ApprovalData, StsError> {
    let consumed_already = || {
        StsError::new(
            StatusCode::CONFLICT,
            "approval_consumed",
            "approval was already consumed",
        )
    };
    let Some(h) = hold_of(e) else {
        return Err(consumed_already());
    };
    let next = h.consumed(record, now).map_err(|_| consumed_already())?;
    let appended = super::append_catalog(
        app,
        rid,
        (&e.zone_id, &e.id),
        Some(e),
        &CatalogCommand::Replace {
            data: EntityData::Approval(next.clone()),
            changed_fields: vec!["consumed_at".into(), "consumed_record_id".into()],
            secret_rotated: false,
        },
        "sts",
    )
    .await;
    match appended {
        Ok(()) => Ok(next),
        Err(Appended::Conflict) => Err(consumed_already()),
        Err(Appended::Failed(e)) => Err(e),
    }
}

/// The extra metadata of a consumption frame.
pub fn consumed_metadata(f: &mut Frame, reissued: bool, record: Option<&str>) {
    f.metadata.insert("reissued".into(), Value::Bool(reissued));
    f.metadata
        .insert("consumed_authority_record_id".into(), json!(record));
}
