//! Authority records (management-api.md §14.3, formerly "sessions"): the anchors STS
//! identity exchanges create, listed with filters and exportable as CSV.

use super::views;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use serval_domain::catalog::runtime::{RECORD_STATUSES, RECORD_TYPES};
use serval_domain::catalog::{CatalogKind, Entity, EntityData};
use serval_projector::catalog::{self as read, Filter, Status};
use utoipa::ToSchema;

use super::catalog::{self as common, WriteCtx};
use super::feed;
use super::params::PathIds;
use super::routes::Routes;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::state::App;

/// The item fields, also the CSV column order.
pub const COLUMNS: [&str; 12] = [
    "authority_record_id",
    "zone_id",
    "authority_record_type",
    "subject_id",
    "federated_user_issuer",
    "parent_authority_record_id",
    "status",
    "expires_at",
    "authenticated_at",
    "created_at",
    "revoked_at",
    "revoked_reason",
];

pub fn router() -> Routes {
    Routes::new("authority-records").op(
        Method::GET,
        "/v1/zones/{zone}/authority-records",
        list,
        "List authority records (filters: authority_record_id, status, subject_id, kind; format=csv)",
        200,
        &["400 invalid_query", "400 invalid_cursor"],
    )
        .query::<RecordQuery>()
    .gives_page::<RecordView>()
}

pub fn render(e: &Entity, now: chrono::DateTime<chrono::Utc>) -> Value {
    let EntityData::AuthorityRecord(r) = &e.data else {
        return Value::Null;
    };
    views::to_json(&RecordView {
        authority_record_id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        authority_record_type: r.record_type.clone(),
        subject_id: r.subject_id.clone(),
        federated_user_issuer: r.federated_user_issuer.clone(),
        parent_authority_record_id: r.parent_id.clone(),
        status: r.effective_status(now).to_owned(),
        expires_at: pagination::ts(r.expires_at),
        authenticated_at: pagination::ts(r.authenticated_at),
        created_at: pagination::ts(e.created_at),
        revoked_at: common::opt_ts(r.revoked_at),
        revoked_reason: r.revoked_reason.clone(),
    })
}

/// An authority record: what a mandate was minted on.
#[derive(Serialize, ToSchema)]
pub struct RecordView {
    authority_record_id: String,
    zone_id: String,
    /// `user` or `application`.
    authority_record_type: String,
    subject_id: String,
    federated_user_issuer: Option<String>,
    parent_authority_record_id: Option<String>,
    /// `active`, `revoked` or `expired`.
    status: String,
    expires_at: String,
    authenticated_at: String,
    created_at: String,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RecordQuery {
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    authority_record_id: Option<String>,
    status: Option<String>,
    subject_id: Option<String>,
    kind: Option<String>,
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<RecordQuery>,
) -> Result<Response, ApiError> {
    let page = PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::FEED)?;
    let csv_out = feed::is_csv(&q.format)?;
    let mut filters = Vec::new();
    if let Some(v) = &q.authority_record_id {
        filters.push(Filter::Id(v.clone()));
    }
    if let Some(v) = &q.status {
        filters.push(Filter::RecordStatus(feed::one_of(
            "status",
            v,
            &RECORD_STATUSES,
        )?));
    }
    if let Some(v) = &q.subject_id {
        filters.push(Filter::Eq("subject_id", v.clone()));
    }
    if let Some(v) = &q.kind {
        filters.push(Filter::Eq(
            "record_type",
            feed::one_of("kind", v, &RECORD_TYPES)?,
        ));
    }
    let zone = ids.at(0);
    let rows = common::list_page(
        &app,
        zone,
        CatalogKind::AuthorityRecord,
        Status::Live,
        &filters,
        &page,
    )
    .await?;
    let now = chrono::Utc::now();
    Ok(feed::answer(
        feed::Shape {
            name: "authority-records",
            zone,
            csv: csv_out,
            columns: &COLUMNS,
            projected: false,
        },
        &rows,
        page.limit,
        |e| (e.created_at, e.id.clone()),
        |e| render(e, now),
        |e| render(e, now),
    ))
}

/// Revokes every active authority record of `subject_id` in the zone (§18: grant
/// revocation, subject revoke), each its own event — relayed as `caracal.sessions.revoke`.
/// Safe to repeat: a record already revoked is skipped, so a retried request finishes a
/// cascade a crash interrupted. Returns how many records it revoked.
pub async fn revoke_subject(
    app: &App,
    ctx: &WriteCtx,
    subject_id: &str,
    reason: &str,
    grant_id: Option<&str>,
) -> Result<usize, ApiError> {
    let ids = read::active_records_of_subject(&app.pool, &ctx.zone, subject_id).await?;
    let ctx = crate::cascade::step_ctx(ctx);
    let changed = ["revoked_at", "revoked_reason", "status"];
    let mut revoked = 0;
    for id in ids {
        // Revoked or expired meanwhile: nothing left to do for that one.
        let now = chrono::Utc::now;
        if crate::cascade::step(app, &ctx, &id, &changed, |d| match d {
            EntityData::AuthorityRecord(r) if r.is_active(now()) => r
                .revoked(now(), reason, grant_id)
                .map(EntityData::AuthorityRecord),
            _ => None,
        })
        .await?
        {
            revoked += 1;
        }
    }
    Ok(revoked)
}
