//! The Coordinator's sweepers (coordinator.md §10.5) as writers of events: task TTLs,
//! service leases, invocation deadlines, edge expiry, and the repair of a terminate cascade
//! a crash interrupted. Several processes may run them: every change is a versioned update
//! decided on fresh state, so a repeat finds nothing left to do.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serval_domain::catalog::EntityData;
use serval_domain::delegation;
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::sessions as q;
use tokio::sync::watch;

use crate::cascade::{self, Ending};
use crate::store::{self, Scope, Writer};

/// Rows handled per sweep and kind (`SWEEPER_BATCH_SIZE`).
pub const BATCH: i64 = 500;

pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let every = app.cfg.coordinator_sweep_interval_secs;
    if every == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = once(&app).await {
            tracing::warn!(error = ?e.body, "coordinator sweep failed; retrying next interval");
        }
    }
}

fn logged(what: &str, zone: &str, r: Result<impl Sized, ApiError>) {
    if let Err(e) = r {
        tracing::warn!(error = ?e.body, what, zone, "sweep item failed; retrying next pass");
    }
}

/// One pass of every sweeper. A failing item is logged and left for the next pass; it never
/// stops the others (one zone's trouble must not stall every zone's expiry).
pub async fn once(app: &App) -> Result<(), ApiError> {
    let now = Utc::now();
    for (zone, id, service) in q::due(&app.pool, now, BATCH).await? {
        let r = if service {
            cascade::suspend(
                app,
                &Writer::system("lease-sweeper"),
                &zone,
                &id,
                cascade::LEASE_LOST,
            )
            .await
            .map(|_| ())
        } else {
            let ended = cascade::terminate(
                app,
                &Writer::system("ttl-sweeper"),
                &zone,
                &id,
                "ttl",
                Ending::Expire,
            )
            .await;
            // The next item's exemptions (§12.1) must see this one's end.
            if ended.as_ref().is_ok_and(|e| !e.is_empty()) {
                store::catch_up(app, &zone).await;
            }
            ended.map(|_| ())
        };
        logged("session sweep", &zone, r);
    }
    for (zone, id) in q::invocations_due(&app.pool, now, BATCH).await? {
        let r = store::update(
            app,
            &Writer::system("deadline-enforcer"),
            &zone,
            &id,
            &["status"],
            |cur| match &cur.data {
                EntityData::Invocation(i) => i.swept(Utc::now()).map(EntityData::Invocation),
                _ => None,
            },
        )
        .await;
        logged("invocation deadline", &zone, r);
    }
    let mut by_zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in serval_projector::delegations::due(&app.pool, now, BATCH).await? {
        by_zone.entry(e.zone_id.clone()).or_default().push(e.id);
    }
    let w = Writer::system("edge-cleaner");
    for (zone, ids) in by_zone {
        let r = store::graph_write(app, &w, &zone, Scope::Edges(ids), None, |view| {
            Ok(delegation::decide_expire(&view.graph, Utc::now()).map(|e| (e, ())))
        })
        .await;
        logged("edge expiry", &zone, r);
    }
    // Repairs: what an interrupted cascade, or a start racing its parent's end, left open.
    let w = Writer::system("cascade-repair");
    for (zone, id) in q::stranded(&app.pool, BATCH).await? {
        let r =
            cascade::terminate(app, &w, &zone, &id, "parent_terminated", Ending::Terminate).await;
        if r.as_ref().is_ok_and(|e| !e.is_empty()) {
            store::catch_up(app, &zone).await;
        }
        logged("stranded session", &zone, r);
    }
    let mut orphans: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (zone, session) in q::orphaned_edge_ends(&app.pool, BATCH).await? {
        orphans.entry(zone).or_default().push(session);
    }
    for (zone, ended) in orphans {
        let r =
            cascade::revoke_touching(app, &w, &zone, &ended, "parent_terminated", Utc::now()).await;
        logged("orphaned edges", &zone, r);
    }
    Ok(())
}
