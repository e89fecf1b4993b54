//! Cascades over a Session subtree (coordinator.md §12): suspend, resume, terminate — each
//! Session its own versioned update (a repeat finds nothing to change), then the graph's
//! part: every still-active edge touching an ended Session is revoked in one graph event.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serval_domain::catalog::{Entity, EntityData};
use serval_domain::delegation;
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::sessions as q;

use crate::render::session_data;
use crate::store::{self, Scope, Writer};

/// Whether ending the Sessions `affected` announces the revocation of `record` (§12.1): not
/// when the record is application-typed or another open Session outside the set uses it.
pub async fn announces(
    app: &App,
    zone: &str,
    record: Option<&str>,
    affected: &[String],
) -> Result<bool, ApiError> {
    let Some(record) = record else {
        return Ok(false);
    };
    let row = serval_projector::catalog::load(&app.pool, zone, record).await?;
    if let Some(EntityData::AuthorityRecord(r)) = row.as_ref().map(|e| &e.data) {
        if r.record_type == "application" {
            return Ok(false);
        }
    }
    Ok(q::others_on_record(&app.pool, zone, record, affected).await? == 0)
}

/// The suspension reason of a lapsed service lease.
pub const LEASE_LOST: &str = "service_heartbeat_lost";

/// Suspends `root` and its active descendants (through active Sessions); the count. For
/// [`LEASE_LOST`] the root is suspended only while its lease is lapsed in the state the
/// suspension is decided on (a heartbeat acknowledged after a sweeper read the lease wins).
pub async fn suspend(
    app: &App,
    w: &Writer,
    zone: &str,
    root: &str,
    reason: &str,
) -> Result<usize, ApiError> {
    let tree = q::subtree(&app.pool, zone, root, &["active"]).await?;
    let targets: Vec<&Entity> = tree
        .iter()
        .filter(|e| session_data(e).is_some_and(|s| s.status == "active"))
        .collect();
    let ids: Vec<String> = targets.iter().map(|e| e.id.clone()).collect();
    let mut n = 0;
    for e in targets {
        let is_root = e.id == root;
        let record = session_data(e).and_then(|s| s.subject_authority_record_id.clone());
        let announce = announces(app, zone, record.as_deref(), &ids).await?;
        let done = store::update_from(
            app,
            w,
            zone,
            &e.id,
            Some((*e).clone()),
            &["status"],
            |cur| {
                let s = session_data(cur)?;
                if is_root
                    && reason == LEASE_LOST
                    && s.heartbeat_deadline_at.is_none_or(|d| d > Utc::now())
                {
                    return None;
                }
                let mut next = s.suspended(reason)?;
                next.revokes_subject = Some(announce);
                Some(EntityData::Session(next))
            },
        )
        .await?;
        if is_root && reason == LEASE_LOST && done.is_none() {
            return Ok(0);
        }
        n += usize::from(done.is_some());
    }
    if n > 0 {
        // A cascade that follows in the same task (a sweep pass, a revocation's targets)
        // decides its §12.1 exemptions on this one's end.
        store::catch_up(app, zone).await;
    }
    Ok(n)
}

/// Resumes `root` and its contiguous suspended descendants; the count.
pub async fn resume(app: &App, w: &Writer, zone: &str, root: &str) -> Result<usize, ApiError> {
    let tree = q::subtree(&app.pool, zone, root, &["suspended"]).await?;
    let lease = Duration::seconds(app.cfg.service_agent_lease_seconds as i64);
    let mut n = 0;
    for e in tree
        .iter()
        .filter(|e| session_data(e).is_some_and(|s| s.status == "suspended"))
    {
        let done = store::update_from(
            app,
            w,
            zone,
            &e.id,
            Some((*e).clone()),
            &["status"],
            |cur| {
                let s = session_data(cur)?;
                Some(EntityData::Session(s.resumed(Utc::now(), lease)?))
            },
        )
        .await?;
        n += usize::from(done.is_some());
    }
    Ok(n)
}

/// How a subtree ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The route, a subject gone inactive, a Delegation revocation: root `terminated`.
    Terminate,
    /// The TTL sweep: root `expired` (reason `ttl`).
    Expire,
}

/// Ends `root` and every open descendant, then revokes the active edges touching them.
/// Returns the Sessions ended (root first).
pub async fn terminate(
    app: &App,
    w: &Writer,
    zone: &str,
    root: &str,
    reason: &str,
    ending: Ending,
) -> Result<Vec<String>, ApiError> {
    terminate_fenced(app, w, zone, root, reason, ending, None).await
}

/// As [`terminate`]; with `generation`, the root ends only while its lease generation is
/// still that one (checked in the conditional update, so a holder fenced between the
/// caller's read and the write cannot end its successor's Session).
pub async fn terminate_fenced(
    app: &App,
    w: &Writer,
    zone: &str,
    root: &str,
    reason: &str,
    ending: Ending,
    generation: Option<u64>,
) -> Result<Vec<String>, ApiError> {
    let tree = q::subtree(&app.pool, zone, root, &["active", "suspended"]).await?;
    let open: Vec<&Entity> = tree
        .iter()
        .filter(|e| {
            session_data(e).is_some_and(|s| matches!(s.status.as_str(), "active" | "suspended"))
        })
        .collect();
    let ids: Vec<String> = open.iter().map(|e| e.id.clone()).collect();
    let now = Utc::now();
    let mut ended = Vec::new();
    let mut announced: HashSet<String> = HashSet::new();
    for e in open {
        let is_root = e.id == root;
        let record = session_data(e).and_then(|s| s.subject_authority_record_id.clone());
        let mut announce = announces(app, zone, record.as_deref(), &ids).await?;
        // One revocation per record per cascade.
        if let Some(r) = &record {
            announce = announce && announced.insert(r.clone());
        }
        let why = if is_root { reason } else { "parent_terminated" };
        let done = store::update_from(
            app,
            w,
            zone,
            &e.id,
            Some((*e).clone()),
            &["status"],
            |cur| {
                let s = session_data(cur)?;
                if is_root && generation.is_some_and(|g| g != s.lease_generation) {
                    return None;
                }
                let mut next = match (is_root, ending) {
                    (true, Ending::Expire) => s.expired(now)?,
                    _ => s.terminated(now, why)?,
                };
                next.revokes_subject = Some(announce);
                Some(EntityData::Session(next))
            },
        )
        .await?;
        match done {
            Some(_) => ended.push(e.id.clone()),
            // A fenced root ends nothing below it either.
            None if is_root && generation.is_some() => return Ok(Vec::new()),
            None => {}
        }
    }
    revoke_touching(app, w, zone, &ended, reason, now).await?;
    Ok(ended)
}

/// Revokes every active edge with an ended Session at either end (one graph event).
pub async fn revoke_touching(
    app: &App,
    w: &Writer,
    zone: &str,
    ended: &[String],
    reason: &str,
    at: DateTime<Utc>,
) -> Result<usize, ApiError> {
    if ended.is_empty()
        || !serval_projector::delegations::any_active_touching(&app.pool, zone, ended).await?
    {
        return Ok(0);
    }
    let written = store::graph_write(
        app,
        w,
        zone,
        Scope::Touching(ended.to_vec()),
        None,
        |view| {
            Ok(
                delegation::decide_end_sessions(&view.graph, ended, reason, at).map(|ev| {
                    let n = match &ev {
                        delegation::DelegationEvent::EdgesRevoked(r) => r.edge_ids.len(),
                        _ => 0,
                    };
                    (ev, n)
                }),
            )
        },
    )
    .await?;
    Ok(written.map(|(n, _, _)| n).unwrap_or(0))
}
