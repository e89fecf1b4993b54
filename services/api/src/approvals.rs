//! Approvals (management-api.md §15, formerly "step-up challenges"): the operator plane
//! reads holds and decides them. Served under the current names (`/approvals`, `approve`,
//! `reject`) and the seed's (`/step-up-challenges`, `satisfy`).

use super::views;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use serval_domain::catalog::runtime::{
    Decision, DecisionRefused, APPROVAL_STATES, REASON_MAX_CHARS,
};
use serval_domain::catalog::{CatalogCommand, CatalogKind, Entity, EntityData};
use serval_projector::catalog::{self as read, Filter, Status};

use super::catalog::{self as common, WriteCtx};
use super::feed;
use super::params::PathIds;
use super::routes::Routes;
use super::schema;
use serval_kit::http::body::RawBody;
use serval_kit::http::pagination::{self, PageQuery};
use serval_kit::http::ApiError;
use serval_kit::request::Req;
use serval_kit::state::App;

const KIND: CatalogKind = CatalogKind::Approval;
const TIER_MAX_CHARS: usize = 64;
const PRINCIPAL_MAX_CHARS: usize = 128;
const DECISION_ERRORS: &[&str] = &[
    "400 invalid_body",
    "403 subject_approval_required",
    "404 zone_not_found",
    "404 approval_not_found",
    "409 approval_not_decidable",
];

pub fn router() -> Routes {
    let mut r = Routes::new("approvals");
    for base in ["approvals", "step-up-challenges"] {
        r = r
            .op(
                Method::GET,
                &format!("/v1/zones/{{zone}}/{base}"),
                list,
                "List approval holds (filters: state, tier, principal, since, until)",
                200,
                &["400 invalid_query", "400 invalid_cursor"],
            )
            .query::<ApprovalQuery>()
            .gives_page::<ApprovalView>()
            .op(
                Method::GET,
                &format!("/v1/zones/{{zone}}/{base}/{{id}}"),
                get_one,
                "Get an approval hold",
                200,
                &["404 approval_not_found"],
            )
            .gives::<ApprovalView>();
    }
    r.op(
        Method::GET,
        "/v1/zones/{zone}/approvals/counts",
        counts,
        "Count a zone's approval holds per state",
        200,
        &[],
    )
    .gives::<ApprovalCounts>()
    .op(
        Method::POST,
        "/v1/zones/{zone}/approvals/{id}/approve",
        approve,
        "Approve a pending hold (approve capability)",
        200,
        DECISION_ERRORS,
    )
    .takes::<DecisionBody>()
    .gives::<DecisionView>()
    .op(
        Method::POST,
        "/v1/zones/{zone}/approvals/{id}/reject",
        reject,
        "Reject a pending hold (approve capability)",
        200,
        DECISION_ERRORS,
    )
    .takes::<DecisionBody>()
    .gives::<DecisionView>()
    .op(
        Method::POST,
        "/v1/zones/{zone}/step-up-challenges/{id}/satisfy",
        approve,
        "Satisfy a step-up challenge (the seed's name of approve)",
        200,
        DECISION_ERRORS,
    )
    .takes::<DecisionBody>()
    .gives::<DecisionView>()
}

/// Decisions on other holds with the same binding.
type Priors = HashMap<String, (i64, i64)>;

fn render(e: &Entity, priors: &Priors, now: chrono::DateTime<chrono::Utc>) -> Value {
    let EntityData::Approval(h) = &e.data else {
        return Value::Null;
    };
    // The counts include this hold's own decision; "prior" means the others'.
    let (mut approved, mut rejected) = priors.get(&h.binding).copied().unwrap_or((0, 0));
    if h.rejected_at.is_some() {
        rejected -= 1;
    } else if h.satisfied_at.is_some() {
        approved -= 1;
    }
    views::to_json(&ApprovalView {
        id: e.id.clone(),
        zone_id: e.zone_id.clone(),
        session_id: h.session_id.clone(),
        principal_id: h.principal_id.clone(),
        application_id: h.application_id.clone(),
        approval_type: h.approval_type.clone(),
        tier: h.tier.clone(),
        approver_class: h.approver_class.clone(),
        privacy_mode: h.privacy_mode.clone(),
        subject_anchor: h.subject_anchor.clone(),
        binding: h.binding.clone(),
        metadata_json: h.metadata_json.clone(),
        decision_reason: h.decision_reason.clone(),
        created_at: pagination::ts(e.created_at),
        expires_at: pagination::ts(h.expires_at),
        satisfied_at: common::opt_ts(h.satisfied_at),
        rejected_at: common::opt_ts(h.rejected_at),
        consumed_at: common::opt_ts(h.consumed_at),
        approver_subject_id: h.approver_subject_id.clone(),
        principal_federated: h.principal_federated,
        prior_approved: approved.max(0),
        prior_rejected: rejected.max(0),
        state: h.state(now).to_owned(),
    })
}

/// An approval hold (§15).
#[derive(Serialize, ToSchema)]
pub struct ApprovalView {
    id: String,
    zone_id: String,
    session_id: String,
    principal_id: String,
    application_id: Option<String>,
    approval_type: String,
    tier: String,
    approver_class: String,
    privacy_mode: String,
    subject_anchor: Option<String>,
    binding: String,
    metadata_json: Value,
    decision_reason: Option<String>,
    created_at: String,
    expires_at: String,
    satisfied_at: Option<String>,
    rejected_at: Option<String>,
    consumed_at: Option<String>,
    approver_subject_id: Option<String>,
    principal_federated: bool,
    /// Decisions on other holds with the same binding.
    prior_approved: i64,
    prior_rejected: i64,
    /// `pending`, `approved`, `rejected`, `expired` or `consumed`.
    state: String,
}

/// `GET …/approvals/counts`: holds per state.
#[derive(Serialize, ToSchema)]
pub struct ApprovalCounts {
    pending: i64,
    approved: i64,
    rejected: i64,
    expired: i64,
    consumed: i64,
}

/// What an approve, reject or satisfy answers.
#[derive(Serialize, ToSchema)]
pub struct DecisionView {
    id: String,
    state: String,
    satisfied_at: Option<String>,
    rejected_at: Option<String>,
    approver_subject_id: Option<String>,
}

async fn priors(app: &App, zone: &str, rows: &[Entity]) -> Result<Priors, ApiError> {
    let bindings: Vec<String> = rows
        .iter()
        .filter_map(|e| match &e.data {
            EntityData::Approval(h) => Some(h.binding.clone()),
            _ => None,
        })
        .collect();
    Ok(read::binding_decisions(&app.pool, zone, &bindings).await?)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ApprovalQuery {
    limit: Option<String>,
    cursor: Option<String>,
    state: Option<String>,
    tier: Option<String>,
    principal: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn bounded(name: &str, v: &str, max: usize) -> Result<String, ApiError> {
    if v.is_empty() || v.chars().count() > max {
        return Err(ApiError::bad_request("invalid_query")
            .description(format!("{name} must be 1-{max} characters")));
    }
    Ok(v.to_owned())
}

async fn list(
    State(app): State<App>,
    ids: PathIds,
    Query(q): Query<ApprovalQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    }
    .parse(pagination::STANDARD)?;
    let mut filters = Vec::new();
    if let Some(v) = &q.state {
        filters.push(Filter::ApprovalState(feed::one_of(
            "state",
            v,
            &APPROVAL_STATES,
        )?));
    }
    if let Some(v) = &q.tier {
        filters.push(Filter::Eq("tier", bounded("tier", v, TIER_MAX_CHARS)?));
    }
    if let Some(v) = &q.principal {
        filters.push(Filter::Eq(
            "principal_id",
            bounded("principal", v, PRINCIPAL_MAX_CHARS)?,
        ));
    }
    let since = feed::utc_param("since", &q.since)?;
    let until = feed::utc_param("until", &q.until)?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(ApiError::bad_request("invalid_query").description("since is after until"));
        }
    }
    let instant = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    filters.extend(since.map(|t| Filter::CreatedFrom(instant(t))));
    filters.extend(until.map(|t| Filter::CreatedTo(instant(t))));
    let zone = ids.at(0);
    let rows = common::list_page(&app, zone, KIND, Status::Live, &filters, &page).await?;
    let priors = priors(&app, zone, &rows).await?;
    let now = chrono::Utc::now();
    Ok(Json(common::page_body(&rows, page.limit, |e| {
        render(e, &priors, now)
    })))
}

async fn load(app: &App, zone: &str, id: &str) -> Result<Entity, ApiError> {
    read::load(&app.pool, zone, id)
        .await?
        .filter(|e| e.kind() == KIND)
        .ok_or_else(|| ApiError::not_found("approval_not_found"))
}

async fn get_one(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let e = load(&app, ids.at(0), ids.at(1)).await?;
    let priors = priors(&app, ids.at(0), std::slice::from_ref(&e)).await?;
    Ok(Json(render(&e, &priors, chrono::Utc::now())))
}

async fn counts(State(app): State<App>, ids: PathIds) -> Result<Json<Value>, ApiError> {
    let counts = read::approval_state_counts(&app.pool, ids.at(0)).await?;
    let n = |s: &str| counts.get(s).copied().unwrap_or(0);
    let [pending, approved, rejected, expired, consumed] = APPROVAL_STATES.map(n);
    Ok(Json(views::to_json(&ApprovalCounts {
        pending,
        approved,
        rejected,
        expired,
        consumed,
    })))
}

async fn approve(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    decide(&app, req, ids, &raw, Decision::Approve).await
}

async fn reject(
    State(app): State<App>,
    req: Req,
    ids: PathIds,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    decide(&app, req, ids, &raw, Decision::Reject).await
}

fn decision_body(e: &Entity) -> Value {
    let EntityData::Approval(h) = &e.data else {
        return Value::Null;
    };
    views::to_json(&DecisionView {
        id: e.id.clone(),
        state: h
            .state(h.satisfied_at.or(h.rejected_at).unwrap_or(e.created_at))
            .to_owned(),
        satisfied_at: common::opt_ts(h.satisfied_at),
        rejected_at: common::opt_ts(h.rejected_at),
        approver_subject_id: h.approver_subject_id.clone(),
    })
}

const _: () = assert!(
    REASON_MAX_CHARS == 500,
    "DecisionBody documents max_length = 500"
);

/// The body of an approve, reject or step-up satisfy (§15).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(as = ApprovalDecision)]
pub struct DecisionBody {
    /// Recorded with the decision.
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// The single guarded update of §15, decided again on every conflict retry so a concurrent
/// decision or consumption is seen.
async fn decide(
    app: &App,
    req: Req,
    ids: PathIds,
    raw: &[u8],
    decision: Decision,
) -> Result<Response, ApiError> {
    let DecisionBody { reason } = schema::lenient(&req.headers, raw, "invalid_body")?;
    // The approver is the token, never the body or an attribution header.
    let approver = format!("admin:{}", req.principal.token.id);
    let ctx = WriteCtx::new(app, ids.at(0), &req, raw).await?;
    load(app, &ctx.zone, ids.at(1)).await?;
    let w = common::commit(app, &ctx, ids.at(1), |state| {
        let Some(EntityData::Approval(h)) = state.map(|e| &e.data) else {
            return Err(ApiError::not_found("approval_not_found"));
        };
        let now = chrono::Utc::now();
        let next = h
            .decided(decision, &approver, reason.as_deref(), now)
            .map_err(|refused| match refused {
                DecisionRefused::NotDecidable(state) => {
                    ApiError::conflict("approval_not_decidable").with("state", json!(state))
                }
                DecisionRefused::SubjectOnly | DecisionRefused::OperatorOnly => {
                    ApiError::forbidden("subject_approval_required")
                        .description("this hold is reserved for the subject's own decision")
                }
            })?;
        let decided_at = match decision {
            Decision::Approve => "satisfied_at",
            Decision::Reject => "rejected_at",
        };
        let mut changed = vec!["approver_subject_id".to_owned(), decided_at.to_owned()];
        if reason.is_some() {
            changed.push("decision_reason".into());
        }
        changed.sort();
        Ok(CatalogCommand::Replace {
            data: EntityData::Approval(next),
            changed_fields: changed,
            secret_rotated: false,
        })
    })
    .await
    .map_err(ApiError::from)?;
    common::answer(app, &ctx, w, StatusCode::OK, Some(&decision_body)).await
}
