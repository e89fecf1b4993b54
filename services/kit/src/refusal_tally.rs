//! Unauthenticated refusals are counted, not recorded one by one (ARCHITECTURE.md, "Log
//! growth"). The log is never trimmed and the archive is append-only, so a request that
//! proved nothing about its sender must not be able to add an entry of its own: anyone
//! could grow the log at will. A refused `/v1` request **without** a valid admin token is
//! added to the current window's tally; every window with refusals becomes one
//! `unauthenticated_refusals` admin-audit record on the global chain, with totals by status,
//! method and route, the busiest source addresses and the first and last request ids — the
//! evidence of an attack, at a fixed cost per window. Refusals of an authenticated caller
//! are still recorded one by one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use serval_domain::admin_audit::AdminAuditRecord;

use crate::state::App;

/// Distinct (status, method, route) and source-address entries kept per window; the rest
/// are counted under `other`.
const MAX_KEYS: usize = 64;
const MAX_PEERS: usize = 256;
/// Source addresses named in the record.
const TOP_PEERS: usize = 20;

#[derive(Default)]
struct Window {
    started: Option<DateTime<Utc>>,
    total: u64,
    by_route: BTreeMap<(u16, String, String), u64>,
    other_routes: u64,
    by_peer: BTreeMap<String, u64>,
    other_peers: u64,
    first_request_id: Option<String>,
    last_request_id: Option<String>,
}

fn window() -> &'static Mutex<Window> {
    static W: OnceLock<Mutex<Window>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// The route a path belongs to, without its ids: `/<seg>/<collection>` and `{id}` for a
/// third segment, each kept segment at most 32 characters of `[a-z0-9_-]` (so neither an
/// attacker's ids nor their bytes make keys of their own).
fn route_of(path: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32)
            .collect()
    };
    let mut segs = path.trim_start_matches('/').split('/');
    let mut out = String::new();
    for s in segs.by_ref().take(2) {
        out.push('/');
        out.push_str(&clean(s));
    }
    if segs.next().is_some() {
        out.push_str("/{id}");
    }
    out
}

/// Counts one unauthenticated refusal; starts the window's flusher on first use.
pub fn count(app: &App, method: &str, path: &str, status: u16, peer: Option<IpAddr>, rid: &str) {
    static FLUSHER: OnceLock<()> = OnceLock::new();
    FLUSHER.get_or_init(|| {
        let app = app.clone();
        tokio::spawn(async move { flush_forever(app).await });
    });
    let mut w = window().lock().unwrap_or_else(|p| p.into_inner());
    w.started.get_or_insert_with(Utc::now);
    w.total += 1;
    let method: String = method.chars().take(16).collect();
    let key = (status, method, route_of(path));
    if let Some(n) = w.by_route.get_mut(&key) {
        *n += 1;
    } else if w.by_route.len() < MAX_KEYS {
        w.by_route.insert(key, 1);
    } else {
        w.other_routes += 1;
    }
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    if let Some(n) = w.by_peer.get_mut(&peer) {
        *n += 1;
    } else if w.by_peer.len() < MAX_PEERS {
        w.by_peer.insert(peer, 1);
    } else {
        w.other_peers += 1;
    }
    if w.first_request_id.is_none() {
        w.first_request_id = Some(rid.to_owned());
    }
    w.last_request_id = Some(rid.to_owned());
}

fn take() -> Window {
    std::mem::take(&mut *window().lock().unwrap_or_else(|p| p.into_inner()))
}

fn record_of(w: Window, ended: DateTime<Utc>) -> AdminAuditRecord {
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let by_route: Vec<_> = w
        .by_route
        .iter()
        .map(|((status, method, route), n)| {
            json!({"status_code": status, "method": method, "route": route, "count": n})
        })
        .collect();
    let mut peers: Vec<(&String, &u64)> = w.by_peer.iter().collect();
    peers.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<_> = peers
        .iter()
        .take(TOP_PEERS)
        .map(|(p, n)| json!({"address": p, "count": n}))
        .collect();
    let status = w
        .by_route
        .iter()
        .fold(BTreeMap::<u16, u64>::new(), |mut m, ((s, _, _), n)| {
            *m.entry(*s).or_default() += n;
            m
        })
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(401, |(s, _)| s);
    let payload = json!({
        "rls_mode": "control_plane_wildcard",
        "rls_zone_guc": "*",
        "window_started_at": w.started.map(ts),
        "window_ended_at": ts(ended),
        "count": w.total,
        "by_route": by_route,
        "other_routes": w.other_routes,
        "top_sources": top,
        "distinct_sources": w.by_peer.len() as u64 + u64::from(w.other_peers > 0),
        "other_sources_count": w.other_peers,
        "first_request_id": w.first_request_id,
        "last_request_id": w.last_request_id,
    });
    AdminAuditRecord {
        request_id: w.last_request_id.clone().unwrap_or_default(),
        actor_id: None,
        actor_name: None,
        actor_scope: None,
        action: "unauthenticated_refusals".into(),
        method: "*".into(),
        path: "/v1".into(),
        zone_id: None,
        entity_type: None,
        entity_id: None,
        status_code: status,
        payload_json: payload.to_string(),
    }
}

async fn flush_forever(app: App) {
    let every = Duration::from_secs(app.cfg.unauthenticated_audit_window_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        let w = take();
        if w.total == 0 {
            continue;
        }
        let record = record_of(w, Utc::now());
        if let Err(e) = crate::admin_audit::append_record(&app, record).await {
            tracing::warn!(error = %e, "unauthenticated refusals of a window not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_bounded_and_carry_no_ids() {
        assert_eq!(route_of("/v1/zones/abc/applications"), "/v1/zones/{id}");
        assert!(route_of(&format!("/v1/{}", "x".repeat(10_000))).len() <= 100);
        // Multi-byte characters never split (a panic on input, found in review).
        assert_eq!(
            route_of(&format!("/v1/{}/{}", "é".repeat(200), "é".repeat(200))),
            "/v1//{id}"
        );
    }

    #[test]
    fn a_window_becomes_one_record_with_its_totals() {
        let mut w = Window {
            started: Some(Utc::now()),
            total: 3,
            ..Default::default()
        };
        w.by_route
            .insert((401, "GET".into(), "/v1/zones".into()), 2);
        w.by_route
            .insert((404, "GET".into(), "/v1/nowhere".into()), 1);
        w.by_peer.insert("10.0.0.1".into(), 3);
        let r = record_of(w, Utc::now());
        assert_eq!(r.action, "unauthenticated_refusals");
        assert_eq!(r.status_code, 401);
        let p: serde_json::Value = serde_json::from_str(&r.payload_json).unwrap();
        assert_eq!(p["count"], 3);
        assert_eq!(p["top_sources"][0]["count"], 3);
    }
}
