//! The admin audit feed (management-api.md §14.2): `GET /v1/zones/:zoneId/admin-audit`,
//! JSON pages or a CSV export, optionally projected to chosen `fields`.

use super::views;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Value};
use serval_projector::admin_audit::{self as read, AuditFilter, AuditRow};
use utoipa::ToSchema;

use super::feed::{self, is_csv, parse_fields, utc_param};
use super::params::PathIds;
use super::routes::Routes;
use axum::http::Method;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::redact::redact;
use serval_kit::http::ApiError;
use serval_kit::state::App;

pub fn router() -> Routes {
    Routes::new("admin audit")
        .op(
            Method::GET,
            "/v1/zones/{zone}/admin-audit",
            list,
            "The zone's admin audit (hash-chained; JSON or CSV)",
            200,
            &[
                "400 invalid_query",
                "400 invalid_fields",
                "400 invalid_cursor",
            ],
        )
        .query::<FeedQuery>()
        .gives_page::<AdminAuditItem>()
}

/// The export set: the item's fields plus two read from the payload.
const EXPORT: [&str; 17] = [
    "id",
    "request_id",
    "actor_id",
    "actor_name",
    "actor_scope",
    "action",
    "method",
    "path",
    "entity_type",
    "entity_id",
    "status_code",
    "payload_json",
    "occurred_at",
    "chain_seq",
    "signed",
    "change_kind",
    "changed_fields",
];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    since: Option<String>,
    until: Option<String>,
    actor_id: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<String>,
    method: Option<String>,
    format: Option<String>,
    fields: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn render(r: &AuditRow) -> Value {
    let mut payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_else(|_| json!({}));
    redact(&mut payload);
    views::to_json(&AdminAuditView {
        id: r.id.clone(),
        request_id: r.request_id.clone(),
        actor_id: r.actor_id.clone(),
        actor_name: r.actor_name.clone(),
        actor_scope: r.actor_scope.clone(),
        action: r.action.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        entity_type: r.entity_type.clone(),
        entity_id: r.entity_id.clone(),
        status_code: r.status_code,
        payload_json: payload,
        occurred_at: pagination::ts(r.occurred_at),
        chain_seq: r.chain_seq.to_string(),
        signed: r.signed,
    })
}

/// An item of the trail: the whole record, or the flat row of the chosen `fields`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AdminAuditItem {
    Whole(Box<AdminAuditView>),
    Projected(views::FlatRow),
}

/// One record of the admin audit trail (secrets redacted from the payload).
#[derive(Serialize, ToSchema)]
pub struct AdminAuditView {
    id: String,
    request_id: String,
    actor_id: Option<String>,
    actor_name: Option<String>,
    actor_scope: Option<String>,
    action: String,
    method: String,
    path: String,
    entity_type: Option<String>,
    entity_id: Option<String>,
    status_code: i32,
    payload_json: Value,
    occurred_at: String,
    /// The record's place in the zone's chain (a decimal string).
    chain_seq: String,
    signed: bool,
}

/// The flat export row: item fields plus `change_kind`, `changed_fields` from the payload.
fn flat(r: &AuditRow) -> Value {
    let mut v = render(r);
    let change_kind = v["payload_json"]["change_kind"].clone();
    let changed = v["payload_json"]["changed_fields"].clone();
    if let Value::Object(m) = &mut v {
        m.insert("change_kind".into(), change_kind);
        m.insert("changed_fields".into(), changed);
    }
    v
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let page = PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::FEED)?;
    let method = match q.method.as_deref() {
        None => None,
        Some(m @ ("POST" | "PUT" | "PATCH" | "DELETE")) => Some(m.to_owned()),
        Some(_) => {
            return Err(ApiError::bad_request("invalid_query")
                .description("method must be POST, PUT, PATCH or DELETE"))
        }
    };
    let filter = AuditFilter {
        since: utc_param("since", &q.since)?,
        until: utc_param("until", &q.until)?,
        actor_id: q.actor_id.clone(),
        entity_type: q.entity_type.clone(),
        entity_id: q.entity_id.clone(),
        method,
    };
    let csv_out = is_csv(&q.format)?;
    let fields = parse_fields(&q.fields, &EXPORT)?;
    let rows = read::list(
        &app.pool,
        ids.at(0),
        &filter,
        page.after.clone(),
        page.limit,
    )
    .await?;
    Ok(feed::answer(
        feed::Shape {
            name: "admin-audit",
            zone: ids.at(0),
            csv: csv_out,
            columns: fields.as_deref().unwrap_or(&EXPORT),
            projected: fields.is_some(),
        },
        &rows,
        page.limit,
        |r| (r.occurred_at, r.id.clone()),
        flat,
        render,
    ))
}
