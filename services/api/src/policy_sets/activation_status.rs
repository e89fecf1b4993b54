//! `GET …/policy-sets/{set}/versions/{version}/activation-status` (§11): how far an
//! activation has travelled — the binding, the outbox message of its invalidation, the
//! STS's loaded engine — and the `propagation_status` that sums it up.

use axum::extract::{Query, State};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use serval_domain::validation::is_valid_identifier;
use serval_projector::policies::{self as read};

use crate::params::PathIds;
use crate::schema::invalid_body;
use serval_kit::http::pagination::{self};
use serval_kit::http::ApiError;
use serval_kit::state::App;

use super::live_set;

#[derive(Deserialize)]
pub(super) struct StatusQuery {
    version_id: Option<String>,
    outbox_id: Option<String>,
}

pub(super) async fn activation_status(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let (zone, set_id) = (ids.at(0), ids.at(1));
    for (name, v) in [("version_id", &q.version_id), ("outbox_id", &q.outbox_id)] {
        if v.as_deref().is_some_and(|v| !is_valid_identifier(v)) {
            return Err(invalid_body(vec![json!({
                "path": [name], "message": "must match ^[A-Za-z0-9_.\\-:]{1,128}$"
            })]));
        }
    }
    let set = live_set(&app, zone, set_id, "policy_set_binding_not_found").await?;
    let version_id = match q
        .version_id
        .clone()
        .or_else(|| set.active_version_id.clone())
    {
        Some(v) => v,
        None => return Err(ApiError::not_found("active_policy_set_version_not_found")),
    };
    let active = set.active_version_id.as_deref() == Some(version_id.as_str());
    let active_manifest = match &set.active_version_id {
        Some(v) => read::load_set_version(&app.pool, v)
            .await?
            .map(|v| v.manifest_sha256),
        None => None,
    };
    let activation = match &q.outbox_id {
        Some(o) => read::activation(&app.pool, o).await?,
        None => read::latest_activation(&app.pool, zone, set_id, &version_id).await?,
    };
    let outbox = match activation {
        None => json!({ "id": q.outbox_id, "state": "missing", "attempts": 0,
                        "last_error": null, "dispatched_at": null }),
        Some(a)
            if a.zone_id != zone
                || a.policy_set_id != set_id
                || a.version_id.as_deref() != Some(version_id.as_str()) =>
        {
            json!({ "id": a.event_id, "state": "mismatch", "attempts": 0,
                    "last_error": null, "dispatched_at": null })
        }
        Some(a) => match read::dispatch(&app.pool, &a.event_id).await? {
            Some((_, at)) => json!({ "id": a.event_id, "state": "dispatched", "attempts": 1,
                                     "last_error": null, "dispatched_at": pagination::ts(at) }),
            None => json!({ "id": a.event_id, "state": "pending", "attempts": 0,
                            "last_error": null, "dispatched_at": null }),
        },
    };
    let sts = if !app.sts_local() {
        json!({ "state": "not_configured", "loaded": false })
    } else {
        match app.engines.loaded(zone) {
            Some(l) if l.version_id == version_id => json!({
                "state": "loaded", "loaded": true, "zone_id": zone,
                "policy_set_version_id": l.version_id, "manifest_sha256": l.manifest_sha256,
                "loaded_at": pagination::ts(l.loaded_at),
                "age_seconds": (Utc::now() - l.loaded_at).num_seconds().max(0),
            }),
            Some(l) => json!({
                "state": "not_loaded", "loaded": false, "zone_id": zone,
                "policy_set_version_id": l.version_id, "manifest_sha256": l.manifest_sha256,
                "loaded_at": pagination::ts(l.loaded_at),
            }),
            None => json!({ "state": "not_loaded", "loaded": false, "zone_id": zone }),
        }
    };
    let outbox_state = outbox["state"].as_str().unwrap_or_default();
    let propagation = if !active {
        "waiting_for_activation"
    } else if matches!(outbox_state, "dead" | "mismatch") || sts["state"] == "failed" {
        "failed"
    } else if outbox_state != "dispatched" {
        "waiting_for_outbox"
    } else if sts["state"] == "loaded" {
        "loaded"
    } else {
        "waiting_for_sts"
    };
    Ok(Json(json!({
        "zone_id": zone,
        "policy_set_id": set_id,
        "version_id": version_id,
        "active": active,
        "active_version_id": set.active_version_id,
        "manifest_sha256": active_manifest,
        "propagation_status": propagation,
        "outbox": outbox,
        "sts": sts,
    })))
}
