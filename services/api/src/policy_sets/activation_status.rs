//! `GET …/policy-sets/{set}/versions/{version}/activation-status` (§11): how far an
//! activation has travelled — the binding, the outbox message of its invalidation, the
//! STS's loaded engine — and the `propagation_status` that sums it up.

use crate::views;
use axum::extract::{Query, State};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Value};
use serval_domain::validation::is_valid_identifier;
use serval_projector::policies::{self as read};
use utoipa::ToSchema;

use crate::params::PathIds;
use crate::schema::invalid_body;
use serval_kit::http::pagination::{self};
use serval_kit::http::ApiError;
use serval_kit::state::App;

use super::live_set;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
    let outbox =
        |id: Option<String>, state: &str, at: Option<chrono::DateTime<Utc>>| OutboxStatus {
            id,
            state: state.to_owned(),
            attempts: u32::from(at.is_some()),
            last_error: None,
            dispatched_at: at.map(pagination::ts),
        };
    let outbox = match activation {
        None => outbox(q.outbox_id.clone(), "missing", None),
        Some(a)
            if a.zone_id != zone
                || a.policy_set_id != set_id
                || a.version_id.as_deref() != Some(version_id.as_str()) =>
        {
            outbox(Some(a.event_id), "mismatch", None)
        }
        Some(a) => match read::dispatch(&app.pool, &a.event_id).await? {
            Some((_, at)) => outbox(Some(a.event_id), "dispatched", Some(at)),
            None => outbox(Some(a.event_id), "pending", None),
        },
    };
    let sts = if !app.sts_local() {
        StsStatus::state("not_configured")
    } else {
        match app.engines.loaded(zone) {
            Some(l) => {
                let loaded = l.version_id == version_id;
                StsStatus {
                    state: if loaded { "loaded" } else { "not_loaded" }.to_owned(),
                    loaded,
                    zone_id: Some(zone.to_owned()),
                    policy_set_version_id: Some(l.version_id.clone()),
                    manifest_sha256: Some(l.manifest_sha256.clone()),
                    loaded_at: Some(pagination::ts(l.loaded_at)),
                    age_seconds: loaded.then(|| (Utc::now() - l.loaded_at).num_seconds().max(0)),
                }
            }
            None => StsStatus {
                zone_id: Some(zone.to_owned()),
                ..StsStatus::state("not_loaded")
            },
        }
    };
    let propagation = if !active {
        "waiting_for_activation"
    } else if matches!(outbox.state.as_str(), "dead" | "mismatch") || sts.state == "failed" {
        "failed"
    } else if outbox.state != "dispatched" {
        "waiting_for_outbox"
    } else if sts.state == "loaded" {
        "loaded"
    } else {
        "waiting_for_sts"
    };
    Ok(Json(views::to_json(&ActivationStatus {
        zone_id: zone.to_owned(),
        policy_set_id: set_id.to_owned(),
        version_id,
        active,
        active_version_id: set.active_version_id,
        manifest_sha256: active_manifest,
        propagation_status: propagation.to_owned(),
        outbox,
        sts,
    })))
}

/// `GET …/policy-sets/{id}/activation-status`: how far an activation has propagated.
#[derive(Serialize, ToSchema)]
pub struct ActivationStatus {
    zone_id: String,
    policy_set_id: String,
    version_id: String,
    active: bool,
    active_version_id: Option<String>,
    manifest_sha256: Option<String>,
    /// `waiting_for_activation`, `waiting_for_outbox`, `waiting_for_sts`, `loaded` or `failed`.
    propagation_status: String,
    outbox: OutboxStatus,
    sts: StsStatus,
}

/// The activation event's publication.
#[derive(Serialize, ToSchema)]
pub struct OutboxStatus {
    id: Option<String>,
    /// `missing`, `mismatch`, `pending` or `dispatched`.
    state: String,
    attempts: u32,
    last_error: Option<String>,
    dispatched_at: Option<String>,
}

/// This process's STS engine for the zone.
#[derive(Serialize, ToSchema)]
pub struct StsStatus {
    /// `loaded`, `not_loaded` or `not_configured`.
    state: String,
    loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_set_version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<i64>,
}

impl StsStatus {
    fn state(state: &str) -> Self {
        StsStatus {
            state: state.to_owned(),
            loaded: false,
            zone_id: None,
            policy_set_version_id: None,
            manifest_sha256: None,
            loaded_at: None,
            age_seconds: None,
        }
    }
}
