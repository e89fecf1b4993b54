//! Governed sessions (management-api.md §14.4, formerly "agent sessions"): served at
//! `/sessions` (current) and `/agent-sessions` (seed), with the same filters and CSV export.

use super::views;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use serde_json::Value;
use serval_domain::catalog::runtime::{LABEL_MAX_CHARS, LIFECYCLES, SESSION_STATUSES};
use serval_domain::catalog::{CatalogKind, Entity, EntityData};
use serval_projector::catalog::{self as read, Filter, Status};

use super::catalog as common;
use super::feed;
use super::params::PathIds;
use super::routes::Routes;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::state::App;

/// The item fields, also the fixed CSV column order.
pub const COLUMNS: [&str; 17] = [
    "session_id",
    "application_id",
    "parent_session_id",
    "status",
    "lifecycle",
    "labels",
    "depth",
    "child_count",
    "subject_authority_record_id",
    "subject_id",
    "federated_user_id",
    "federated_user_issuer",
    "started_at",
    "last_active_at",
    "terminated_at",
    "termination_reason",
    "ttl_seconds",
];

const SUMMARY: &str = "List governed sessions (filters: status, lifecycle, label, application_id, \
                       parent_session_id or parent_id, subject_id; format=csv)";
const ERRORS: &[&str] = &["400 invalid_query", "400 invalid_cursor"];

pub fn router() -> Routes {
    Routes::new("sessions")
        .op(
            Method::GET,
            "/v1/zones/{zone}/sessions",
            list,
            SUMMARY,
            200,
            ERRORS,
        )
        .query::<SessionQuery>()
        .gives_page::<SessionView>()
        .op(
            Method::GET,
            "/v1/zones/{zone}/agent-sessions",
            list,
            SUMMARY,
            200,
            ERRORS,
        )
        .query::<SessionQuery>()
        .gives_page::<SessionView>()
}

fn render(e: &Entity, children: &HashMap<String, i64>) -> Value {
    let EntityData::Session(s) = &e.data else {
        return Value::Null;
    };
    views::to_json(&SessionView {
        session_id: e.id.clone(),
        application_id: s.application_id.clone(),
        parent_session_id: s.parent_session_id.clone(),
        status: s.status.clone(),
        lifecycle: s.lifecycle.clone(),
        labels: s.labels.clone(),
        depth: s.depth,
        child_count: children.get(&e.id).copied().unwrap_or(0),
        subject_authority_record_id: s.subject_authority_record_id.clone(),
        subject_id: s.subject_id.clone(),
        federated_user_id: s.federated_user_id.clone(),
        federated_user_issuer: s.federated_user_issuer.clone(),
        started_at: pagination::ts(e.created_at),
        last_active_at: pagination::ts(s.last_active_at),
        terminated_at: common::opt_ts(s.terminated_at),
        termination_reason: s.termination_reason.clone(),
        ttl_seconds: s.ttl_seconds,
    })
}

/// A governed agent Session, as the Coordinator recorded it.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    session_id: String,
    application_id: String,
    parent_session_id: Option<String>,
    status: String,
    /// `task` or `service`.
    lifecycle: String,
    labels: Vec<String>,
    depth: u32,
    child_count: i64,
    subject_authority_record_id: Option<String>,
    subject_id: Option<String>,
    federated_user_id: Option<String>,
    federated_user_issuer: Option<String>,
    started_at: String,
    last_active_at: String,
    terminated_at: Option<String>,
    termination_reason: Option<String>,
    ttl_seconds: Option<u64>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SessionQuery {
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    status: Option<String>,
    lifecycle: Option<String>,
    application_id: Option<String>,
    parent_session_id: Option<String>,
    /// The seed's name of `parent_session_id`.
    parent_id: Option<String>,
    subject_id: Option<String>,
    label: Option<String>,
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<SessionQuery>,
) -> Result<Response, ApiError> {
    let page = PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::FEED)?;
    let csv_out = feed::is_csv(&q.format)?;
    let mut filters = Vec::new();
    if let Some(v) = &q.status {
        filters.push(Filter::Eq(
            "status",
            feed::one_of("status", v, &SESSION_STATUSES)?,
        ));
    }
    if let Some(v) = &q.lifecycle {
        filters.push(Filter::Eq(
            "lifecycle",
            feed::one_of("lifecycle", v, &LIFECYCLES)?,
        ));
    }
    if let Some(v) = &q.application_id {
        filters.push(Filter::Eq("application_id", v.clone()));
    }
    // The current name wins over the seed's when both are given.
    if let Some(v) = q.parent_session_id.as_ref().or(q.parent_id.as_ref()) {
        filters.push(Filter::Eq("parent_session_id", v.clone()));
    }
    if let Some(v) = &q.subject_id {
        filters.push(Filter::Eq("subject_id", v.clone()));
    }
    if let Some(v) = &q.label {
        if v.is_empty() || v.chars().count() > LABEL_MAX_CHARS {
            return Err(
                ApiError::bad_request("invalid_query").description("label must be 1-64 characters")
            );
        }
        filters.push(Filter::ContainsAll("labels", vec![v.clone()]));
    }
    let zone = ids.at(0);
    let rows = common::list_page(
        &app,
        zone,
        CatalogKind::Session,
        Status::Live,
        &filters,
        &page,
    )
    .await?;
    let page_ids: Vec<String> = rows.iter().map(|e| e.id.clone()).collect();
    let children = read::child_counts(&app.pool, zone, &page_ids).await?;
    Ok(feed::answer(
        feed::Shape {
            name: "sessions",
            zone,
            csv: csv_out,
            columns: &COLUMNS,
            projected: false,
        },
        &rows,
        page.limit,
        |e| (e.created_at, e.id.clone()),
        |e| render(e, &children),
        |e| render(e, &children),
    ))
}
