//! The control-key class (sts.md §4.6) [extended]: an application with the trait
//! `control:invoke` mints a `use=resource` mandate for the control audience
//! (`CONTROL_AUDIENCE`) without a policy decision, inside its `control:` traits
//! ([`serval_domain::catalog::control_key`]). Caracal's `ControlClient` sends no `zone_id`:
//! the application's own zone is used. Any other route to the control resource is refused
//! `403 access_denied` with a `control_resource_requires_control_key` frame.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Duration, Utc};
use serde_json::json;
use serval_domain::catalog::control_key::{self, ControlAsk};
use serval_domain::catalog::EntityData;
use serval_kit::audit_frame::Frame;
use serval_kit::freshness::{self, Dep};
use serval_kit::App;
use serval_projector::catalog as read;
use serval_schema::projections;
use serval_streams::LogStream;

use super::client_auth::Client;
use super::error::StsError;
use super::form::{TokenForm, ACCESS_TOKEN};
use super::limits;
use super::{
    create_authority_record, lifetime, persist, request_metadata, sign, token_response, NewRecord,
    MAX_TTL,
};
use crate::Sts;

/// The policy name control-key decisions are recorded under (no policy runs).
pub const POLICY: &str = "caracal-control-key";
/// Fields that bind a mandate to a subject, Session, Delegation or hold.
const BINDINGS: [&str; 6] = [
    "subject_token",
    "session_id",
    "agent_session_id",
    "delegation_edge_id",
    "approval_id",
    "challenge_id",
];

/// Whether the request names the control resource at all.
pub fn names_control(form: &TokenForm, audience: &str) -> bool {
    form.resources.iter().any(|r| r == audience)
}

/// The shape that may omit `zone_id`: only the control resource, only `control:*` scopes.
pub fn zone_may_be_omitted(form: &TokenForm, audience: &str) -> bool {
    let scopes = form.scopes();
    !form.resources.is_empty()
        && form.resources.iter().all(|r| r == audience)
        && !scopes.is_empty()
        && scopes.iter().all(|s| s.starts_with("control:"))
}

/// The zone of application `id` (any zone); `None` when there is no such application.
///
/// Read-your-writes without a zone to wait for: an application the Management API
/// acknowledged a moment ago may not be projected yet, and nothing in the request names its
/// zone. On a miss for an id minted recently (server ids are UUIDv7, which carry their
/// creation time), every zone's catalog is brought up to its log head (one pipelined head
/// read; only zones that are behind are waited for) and the id is looked up again. Older or
/// foreign ids are answered from the read model as it is, so made-up ids cost one query.
pub async fn zone_of(
    app: &App,
    lookups: &ZoneLookups,
    id: &str,
) -> Result<Option<String>, StsError> {
    if let Some(zone) = lookup(app, id).await? {
        return Ok(Some(zone));
    }
    if !minted_recently(id, Utc::now()) {
        return Ok(None);
    }
    // A catch-up that fails (a zone's projection stalled) does not fail the others' keys:
    // look again, and refuse only when the id is still unknown.
    let caught_up = lookups.every_zone_fresh(app).await;
    match lookup(app, id).await? {
        Some(zone) => Ok(Some(zone)),
        None => caught_up.map(|()| None),
    }
}

/// Coalesces the every-zone catch-ups of zone-less misses: one runs at a time, and a miss
/// that arrived before a completed one started needs no other (that one read every head
/// after the miss arrived). A flood of made-up ids costs at most one catch-up in flight.
#[derive(Default)]
pub struct ZoneLookups {
    /// When the last completed catch-up started.
    last: tokio::sync::Mutex<Option<std::time::Instant>>,
}

fn unavailable() -> StsError {
    StsError::from(serval_kit::http::ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "read_model_unavailable",
    ))
}

impl ZoneLookups {
    /// Every zone's catalog has passed its log head as of a moment after this call began;
    /// the turn and the catch-up together take at most the visibility timeout.
    async fn every_zone_fresh(&self, app: &App) -> Result<(), StsError> {
        let arrived = std::time::Instant::now();
        tokio::time::timeout(app.visibility_timeout(), async {
            let mut last = self.last.lock().await;
            if last.is_some_and(|started| started >= arrived) {
                return Ok(());
            }
            let started = std::time::Instant::now();
            catch_up_every_zone(app).await?;
            *last = Some(started);
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(unavailable()))
    }
}

async fn catch_up_every_zone(app: &App) -> Result<(), StsError> {
    freshness::ensure(app, &[Dep::new(projections::ZONES, LogStream::System)]).await?;
    let zones = serval_projector::zones::all(&app.pool)
        .await
        .map_err(|e| StsError::from(serval_kit::http::ApiError::from(e)))?;
    let deps: Vec<Dep> = zones
        .into_iter()
        .map(|z| Dep::new(projections::CATALOG, LogStream::Zone(z.id)))
        .collect();
    for chunk in deps.chunks(ZONES_PER_HEAD_READ) {
        freshness::ensure(app, chunk).await?;
    }
    Ok(())
}

/// Zones whose heads one pipelined read asks for.
const ZONES_PER_HEAD_READ: usize = 512;

/// How recent an id's UUIDv7 time must be for a miss to wait for the projections: well past
/// the time an acknowledged write takes to be projected.
const RECENT: Duration = Duration::minutes(5);

/// Whether `id` is a UUIDv7 minted within [`RECENT`] of `now` (a little ahead allowed for
/// clock skew between processes).
fn minted_recently(id: &str, now: chrono::DateTime<Utc>) -> bool {
    let Ok(u) = uuid::Uuid::parse_str(id) else {
        return false;
    };
    if u.get_version_num() != 7 {
        return false;
    }
    let Some((secs, nanos)) = u.get_timestamp().map(|t| t.to_unix()) else {
        return false;
    };
    let Some(at) = chrono::DateTime::<Utc>::from_timestamp(secs as i64, nanos) else {
        return false;
    };
    at > now - RECENT && at < now + Duration::minutes(1)
}

async fn lookup(app: &App, id: &str) -> Result<Option<String>, StsError> {
    let found = read::load_many(&app.pool, &[id.to_owned()])
        .await
        .map_err(|e| StsError::from(serval_kit::http::ApiError::from(e)))?;
    Ok(found
        .into_values()
        .find(|e| matches!(e.data, EntityData::Application(_)))
        .map(|e| e.zone_id))
}

/// A request naming the control resource: minted under the contract, or refused.
pub async fn exchange(
    app: &App,
    sts: &Sts,
    rid: &str,
    client: &Client,
    form: &TokenForm,
    frames: &mut Vec<Frame>,
) -> Result<Response, StsError> {
    let audience = app.cfg.control_audience.as_str();
    let requested = form.scopes();
    let now = Utc::now();
    let ask = ControlAsk {
        only_control: form.resources.iter().all(|r| r == audience),
        bound: form.gateway || BINDINGS.iter().any(|f| form.get(f).is_some()),
        scopes: &requested,
    };
    let mut m = request_metadata(client, audience, &requested);
    m.insert("subject_kind".into(), json!("application"));
    let grant = match control_key::check(&client.data.traits, &ask, now) {
        Ok(g) => g,
        Err(why) => {
            let mut m = m;
            m.insert("reason".into(), json!(why.to_string()));
            frames.push(Frame::refusal(
                &client.zone_id,
                rid,
                "token_exchange",
                "control_resource_requires_control_key",
                m,
            ));
            return Err(StsError::access_denied(
                StatusCode::FORBIDDEN,
                format!("the control resource requires a control key: {why}"),
            ));
        }
    };
    // §17: control mints share the per-zone, resource and application budget.
    if !limits::mint_allowed(app, &client.zone_id, audience, &client.id).await {
        frames.push(Frame::refusal(
            &client.zone_id,
            rid,
            "token_exchange",
            "rate_limited",
            m,
        ));
        return Err(StsError::access_denied(
            StatusCode::FORBIDDEN,
            "control mint rate limit exceeded",
        ));
    }
    // The decision is evidence also when the lifetime is then refused.
    frames.push(Frame {
        decision: "allow",
        determining_policies: json!([{ "policy": POLICY }]),
        ..Frame::refusal(&client.zone_id, rid, "token_exchange", "complete", m)
    });
    let mut ttl = lifetime(form.ttl_seconds, MAX_TTL)?;
    if let Some(cap) = grant.max_ttl {
        ttl = ttl.min(cap);
    }
    // Never past the key's own end: `control:expires` or the application's expiry.
    for end in [grant.not_after, client.data.expires_at]
        .into_iter()
        .flatten()
    {
        ttl = ttl.min((end - now).num_seconds().max(1));
    }
    let expires_at = now + Duration::seconds(ttl);
    let signer = sts.keys.signer(app, &client.zone_id).await?;
    let sid = uuid::Uuid::now_v7().to_string();
    let jti = uuid::Uuid::now_v7().to_string();
    let scope = form.get("scope").unwrap_or_default();
    let claims = json!({
        "iss": app.cfg.issuer_url,
        "sub": client.id,
        "aud": [audience],
        "exp": expires_at.timestamp(),
        "iat": now.timestamp(),
        "jti": jti,
        "zone_id": client.zone_id,
        "client_id": client.id,
        "scope": scope,
        "sid": sid,
        "root_sid": sid,
        "use": "resource",
        "sub_type": "application",
        "target": [audience],
    });
    let token = sign(&signer, &claims)?;
    let record = create_authority_record(
        app,
        rid,
        client,
        NewRecord {
            id: &sid,
            parent: None,
            user: None,
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
        "target_resources": [audience],
        "scope": scope,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recent_uuid_v7_ids_are_waited_for() {
        let now = Utc::now();
        assert!(minted_recently(&uuid::Uuid::now_v7().to_string(), now));
        assert!(!minted_recently(&uuid::Uuid::new_v4().to_string(), now));
        assert!(!minted_recently("not-a-uuid", now));
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now - Duration::minutes(10)).timestamp() as u64,
            0,
        ));
        assert!(!minted_recently(&old.to_string(), now));
        let ahead = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now + Duration::hours(1)).timestamp() as u64,
            0,
        ));
        assert!(!minted_recently(&ahead.to_string(), now));
    }
}
