//! The policies read model's rows and how they are read from Postgres.

use chrono::{DateTime, Utc};
use serde_json::Value;
use serval_domain::policy::policies::{Policy, PolicyVersion};
use sqlx::postgres::PgRow;
use sqlx::Row;

pub(super) const POLICY_COLUMNS: &str =
    "id, zone_id, name, description, created_by, created_via_operator, \
    updated_by, updated_via_operator, created_at, updated_at, archived_at, latest_version, version";

pub(super) const VERSION_COLUMNS: &str =
    "id, policy_id, zone_id, version, content, content_sha256, \
    schema_version, created_by, created_via_operator, created_at";

pub(super) fn policy_from_row(r: &PgRow) -> Result<Policy, sqlx::Error> {
    Ok(Policy {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        updated_by: r.try_get("updated_by")?,
        updated_via_operator: r.try_get("updated_via_operator")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
        latest_version: r.try_get::<i64, _>("latest_version")? as u64,
        version: r.try_get::<i64, _>("version")? as u64,
    })
}

pub(super) fn version_from_row(r: &PgRow) -> Result<PolicyVersion, sqlx::Error> {
    Ok(PolicyVersion {
        id: r.try_get("id")?,
        policy_id: r.try_get("policy_id")?,
        zone_id: r.try_get("zone_id")?,
        version: r.try_get::<i64, _>("version")? as u64,
        content: r.try_get("content")?,
        content_sha256: r.try_get("content_sha256")?,
        schema_version: r.try_get("schema_version")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A policy set row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetRow {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: String,
    pub updated_via_operator: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub active_version_id: Option<String>,
    pub latest_version: u64,
}

pub(super) const SET_COLUMNS: &str =
    "id, zone_id, name, description, created_by, created_via_operator, \
    updated_by, updated_via_operator, created_at, updated_at, archived_at, active_version_id, \
    latest_version";

pub(super) fn set_from_row(r: &PgRow) -> Result<PolicySetRow, sqlx::Error> {
    Ok(PolicySetRow {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        updated_by: r.try_get("updated_by")?,
        updated_via_operator: r.try_get("updated_via_operator")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
        active_version_id: r.try_get("active_version_id")?,
        latest_version: r.try_get::<i64, _>("latest_version")? as u64,
    })
}

/// A policy-set version row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetVersionRow {
    pub id: String,
    pub policy_set_id: String,
    pub zone_id: String,
    pub version: u64,
    pub manifest: Vec<String>,
    pub manifest_sha256: String,
    pub schema_version: String,
    pub created_by: String,
    pub created_via_operator: bool,
    pub created_at: DateTime<Utc>,
}

pub(super) const SET_VERSION_COLUMNS: &str = "id, policy_set_id, zone_id, version, manifest, \
    manifest_sha256, schema_version, created_by, created_via_operator, created_at";

pub(super) fn set_version_from_row(r: &PgRow) -> Result<SetVersionRow, sqlx::Error> {
    let manifest: Value = r.try_get("manifest")?;
    let manifest = manifest
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(SetVersionRow {
        id: r.try_get("id")?,
        policy_set_id: r.try_get("policy_set_id")?,
        zone_id: r.try_get("zone_id")?,
        version: r.try_get::<i64, _>("version")? as u64,
        manifest,
        manifest_sha256: r.try_get("manifest_sha256")?,
        schema_version: r.try_get("schema_version")?,
        created_by: r.try_get("created_by")?,
        created_via_operator: r.try_get("created_via_operator")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The zone's active binding as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub zone_id: String,
    pub policy_set_id: String,
    pub version_id: String,
    pub manifest_sha256: String,
}

/// One binding change (activation or clearing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub event_id: String,
    pub zone_id: String,
    pub policy_set_id: String,
    pub version_id: Option<String>,
    pub stream: String,
    pub entry_ms: u64,
    pub entry_seq: u64,
    pub occurred_at: DateTime<Utc>,
}

pub(super) fn activation_from_row(r: &PgRow) -> Result<Activation, sqlx::Error> {
    Ok(Activation {
        event_id: r.try_get("event_id")?,
        zone_id: r.try_get("zone_id")?,
        policy_set_id: r.try_get("policy_set_id")?,
        version_id: r.try_get("version_id")?,
        stream: r.try_get("stream")?,
        entry_ms: r.try_get::<i64, _>("entry_ms")? as u64,
        entry_seq: r.try_get::<i64, _>("entry_seq")? as u64,
        occurred_at: r.try_get("occurred_at")?,
    })
}
