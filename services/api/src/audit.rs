//! The audit ledger reads (management-api.md §14.1): the filtered feed (JSON, flat fields or
//! CSV), a request's events, and the explanation of a request's decision.

use super::views;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Map, Value};
use serval_projector::audit::{self as read, LedgerFilter, LedgerRow};
use utoipa::ToSchema;

use super::feed::{self, is_csv, parse_fields, utc_param};
use super::params::PathIds;
use super::routes::Routes;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::redact::redact;
use serval_kit::http::ApiError;
use serval_kit::state::App;

pub fn router() -> Routes {
    let base = "/v1/zones/{zone}/audit";
    Routes::new("audit")
        .op(
            Method::GET,
            base,
            list,
            "The zone's audit ledger (filters; JSON, flat fields or CSV)",
            200,
            &[
                "400 invalid_query",
                "400 invalid_fields",
                "400 invalid_cursor",
            ],
        )
        .query::<LedgerQuery>()
        .gives_page::<LedgerItem>()
        .op(
            Method::GET,
            &format!("{base}/by-request/{{request}}"),
            by_request,
            "A request's audit events, oldest first",
            200,
            &["404 request_not_found"],
        )
        .gives::<RequestEvents>()
        .op(
            Method::GET,
            &format!("{base}/by-request/{{request}}/explain"),
            explain,
            "Why a request was decided as it was (with a rebuilt simulation input)",
            200,
            &["404 request_not_found"],
        )
        .gives::<Explanation>()
}

/// Row fields of the export set.
const ROW_FIELDS: [&str; 11] = [
    "id",
    "occurred_at",
    "event_type",
    "decision",
    "evaluation_status",
    "request_id",
    "ingested_at",
    "policy_set_id",
    "policy_set_version_id",
    "manifest_sha",
    "determining_policies",
];

/// Metadata fields of the export set.
const META_FIELDS: [&str; 35] = [
    "application_id",
    "application_name",
    "resource",
    "requested_scopes",
    "agent_session_id",
    "agent_lifecycle",
    "agent_labels",
    "delegation_edge_id",
    "delegation_hop_count",
    "method",
    "latency_ms",
    "upstream_status",
    "result_class",
    "reason",
    "trace_id",
    "provider_id",
    "connection_id",
    "upstream_host",
    "gateway_status",
    "error_kind",
    "response_bytes",
    "auth_mode",
    "subject_fingerprint",
    "subject",
    "authorized_by",
    "command",
    "subcommand",
    "challenge_id",
    "tier",
    "approver_class",
    "privacy_mode",
    "approver_subject_id",
    "subject_anchor",
    "subject_kind",
    "federated_user_issuer",
];

fn export_set() -> Vec<&'static str> {
    ROW_FIELDS
        .iter()
        .chain(META_FIELDS.iter())
        .copied()
        .collect()
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn metadata(r: &LedgerRow) -> Value {
    let mut m = parse_json(&r.metadata_json);
    redact(&mut m);
    m
}

/// An item of the ledger feed: the whole event, or the flat row of the chosen `fields`.
/// (One such enum per feed, not a generic one: utoipa names every instance of a generic
/// item alike inside `Page<…>`, so two feeds would share one schema.)
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LedgerItem {
    Whole(Box<LedgerEvent>),
    Projected(views::FlatRow),
}

/// One event of the zone's audit ledger (secrets redacted from its metadata).
#[derive(Serialize, ToSchema)]
pub struct LedgerEvent {
    id: String,
    zone_id: String,
    event_type: String,
    request_id: String,
    /// `allow`, `deny`, … (empty for events without a decision).
    decision: String,
    policy_set_id: Option<String>,
    policy_set_version_id: Option<String>,
    manifest_sha: Option<String>,
    evaluation_status: String,
    determining_policies_json: Value,
    diagnostics_json: Value,
    metadata_json: Value,
    occurred_at: String,
    ingested_at: String,
}

fn render(r: &LedgerRow) -> Value {
    views::to_json(&event(r))
}

fn event(r: &LedgerRow) -> LedgerEvent {
    LedgerEvent {
        id: r.id.clone(),
        zone_id: r.zone_id.clone(),
        event_type: r.event_type.clone(),
        request_id: r.request_id.clone(),
        decision: r.decision.clone(),
        policy_set_id: r.policy_set_id.clone(),
        policy_set_version_id: r.policy_set_version_id.clone(),
        manifest_sha: r.manifest_sha.clone(),
        evaluation_status: r.evaluation_status.clone(),
        determining_policies_json: parse_json(&r.determining_policies_json),
        diagnostics_json: parse_json(&r.diagnostics_json),
        metadata_json: metadata(r),
        occurred_at: pagination::ts(r.occurred_at),
        ingested_at: pagination::ts(r.ingested_at),
    }
}

/// `GET …/audit/by-request/{request}`: the request's events, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(transparent)]
pub struct RequestEvents(Vec<LedgerEvent>);

/// Why a request was decided as it was.
#[derive(Serialize, ToSchema)]
pub struct Explanation {
    request_id: String,
    zone_id: String,
    /// `allow`, `deny` or `unknown`.
    final_decision: String,
    denied: Vec<DeniedStep>,
    events: Vec<LedgerEvent>,
}

/// A denying event, with the policy input rebuilt for a simulation.
#[derive(Serialize, ToSchema)]
pub struct DeniedStep {
    event_id: String,
    event_type: String,
    evaluation_status: String,
    determining_policies: Vec<String>,
    diagnostics: Value,
    metadata: Value,
    #[schema(value_type = Object)]
    policy_input: Value,
}

/// Policy names of `determining_policies_json` (`[{"policy": name}]`).
fn policy_names(r: &LedgerRow) -> Vec<String> {
    match parse_json(&r.determining_policies_json) {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("policy").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The flat export row: row fields plus metadata fields.
fn flat(r: &LedgerRow) -> Value {
    let item = render(r);
    let meta = item["metadata_json"].clone();
    let mut m = Map::new();
    for f in ROW_FIELDS {
        let v = match f {
            "determining_policies" => json!(policy_names(r)),
            other => item.get(other).cloned().unwrap_or(Value::Null),
        };
        m.insert(f.to_owned(), v);
    }
    for f in META_FIELDS {
        m.insert(f.to_owned(), meta.get(f).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LedgerQuery {
    since: Option<String>,
    until: Option<String>,
    request_id: Option<String>,
    decision: Option<String>,
    event_type: Option<String>,
    application_id: Option<String>,
    session_id: Option<String>,
    authority_record_id: Option<String>,
    label: Option<String>,
    format: Option<String>,
    fields: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn bad(why: &str) -> ApiError {
    ApiError::bad_request("invalid_query").description(why.to_owned())
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<LedgerQuery>,
) -> Result<Response, ApiError> {
    let page = PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::FEED)?;
    if let Some(d) = &q.decision {
        if !matches!(d.as_str(), "allow" | "deny" | "partial") {
            return Err(bad("decision must be allow, deny or partial"));
        }
    }
    let event_types = match &q.event_type {
        None => None,
        Some(s) => {
            let types: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            if types.is_empty() || types.len() > 16 {
                return Err(bad("event_type lists 1-16 types"));
            }
            Some(types)
        }
    };
    if q.label.as_ref().is_some_and(|l| l.chars().count() > 64) {
        return Err(bad("label is at most 64 characters"));
    }
    let filter = LedgerFilter {
        since: utc_param("since", &q.since)?,
        until: utc_param("until", &q.until)?,
        request_id: q.request_id.clone(),
        decision: q.decision.clone(),
        event_types,
        application_id: q.application_id.clone(),
        session_id: q.session_id.clone(),
        authority_record_id: q.authority_record_id.clone(),
        label: q.label.clone(),
    };
    let csv_out = is_csv(&q.format)?;
    let export = export_set();
    let fields = parse_fields(&q.fields, &export)?;
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
            name: "audit",
            zone: ids.at(0),
            csv: csv_out,
            columns: fields.as_deref().unwrap_or(&export),
            projected: fields.is_some(),
        },
        &rows,
        page.limit,
        |r| (r.occurred_at, r.id.clone()),
        flat,
        render,
    ))
}

async fn rows_of(app: &App, ids: &PathIds) -> Result<Vec<LedgerRow>, ApiError> {
    let rows = read::by_request(&app.pool, ids.at(0), ids.at(1)).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found("request_not_found"));
    }
    Ok(rows)
}

async fn by_request(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let rows = rows_of(&app, &ids).await?;
    Ok(Json(Value::Array(rows.iter().map(render).collect())))
}

/// A simulation input rebuilt from an event's metadata (claims are never stored).
fn policy_input(r: &LedgerRow) -> Value {
    let meta = parse_json(&r.metadata_json);
    let get = |k: &str| meta.get(k).filter(|v| !v.is_null()).cloned();
    let scopes = get("requested_scopes").unwrap_or_else(|| json!([]));
    let mut principal = Map::new();
    principal.insert("type".into(), json!("Application"));
    principal.insert("id".into(), get("application_id").unwrap_or(Value::Null));
    principal.insert("zone_id".into(), json!(r.zone_id));
    for (k, src) in [
        ("registration_method", "registration_method"),
        ("agent_session_id", "agent_session_id"),
        ("lifecycle", "agent_lifecycle"),
        ("labels", "agent_labels"),
    ] {
        if let Some(v) = get(src) {
            principal.insert(k.into(), v);
        }
    }
    let mut context = Map::new();
    context.insert("actor_claims".into(), json!({}));
    context.insert("requested_scopes".into(), scopes.clone());
    context.insert("challenge_resolved".into(), json!(false));
    for k in ["session_id", "agent_session_id", "delegation_edge_id"] {
        if let Some(v) = get(k) {
            context.insert(k.into(), v);
        }
    }
    let mut input = Map::new();
    input.insert("principal".into(), Value::Object(principal));
    input.insert(
        "resource".into(),
        json!({"type": "Resource", "identifier": get("resource"), "scopes": scopes}),
    );
    input.insert("action".into(), json!({"id": "TokenExchange"}));
    input.insert("context".into(), Value::Object(context));
    if let Some(s) = get("session_id") {
        input.insert("session".into(), json!({ "id": s }));
    }
    if let Some(e) = get("delegation_edge_id") {
        input.insert("delegation_edge".into(), json!({ "id": e }));
    }
    Value::Object(input)
}

async fn explain(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let rows = rows_of(&app, &ids).await?;
    let denied: Vec<DeniedStep> = rows
        .iter()
        .filter(|r| r.decision == "deny")
        .map(|r| DeniedStep {
            event_id: r.id.clone(),
            event_type: r.event_type.clone(),
            evaluation_status: r.evaluation_status.clone(),
            determining_policies: policy_names(r),
            diagnostics: parse_json(&r.diagnostics_json),
            metadata: metadata(r),
            policy_input: policy_input(r),
        })
        .collect();
    let final_decision = if !denied.is_empty() {
        "deny".to_owned()
    } else {
        rows.last()
            .map(|r| r.decision.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    Ok(Json(views::to_json(&Explanation {
        request_id: ids.at(1).to_owned(),
        zone_id: ids.at(0).to_owned(),
        final_decision,
        denied,
        events: rows.iter().map(event).collect(),
    })))
}
