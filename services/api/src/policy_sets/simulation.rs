//! `POST …/policy-sets/{set}/simulate` (§11): a decision of a policy-set version on a given
//! input, or re-evaluated against the zone's recorded token exchanges (`history`).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use serval_domain::policy::bundle::{self as bundle_rules, INPUT_SCHEMA_VERSION};
use utoipa::ToSchema;

use crate::params::PathIds;
use crate::policy_history::HistoryBody;
use crate::schema::{self, Issue};
use serval_kit::http::body::RawBody;
use serval_kit::http::ApiError;
use serval_kit::state::App;

use super::{set_version, verify_manifest};

/// Input-shape warnings of a simulation input (they alone decide `would_activate`).
fn input_warnings(zone: &str, input: &Value) -> Vec<String> {
    let mut w = Vec::new();
    let schema = input
        .get("schema_version")
        .and_then(Value::as_str)
        .unwrap_or("");
    if schema != INPUT_SCHEMA_VERSION {
        w.push(format!("input_schema_mismatch:{schema}"));
    }
    if input.pointer("/principal/zone_id").and_then(Value::as_str) != Some(zone) {
        w.push("principal_zone_mismatch".to_owned());
    }
    for (key, warning) in [
        ("resource", "missing_resource"),
        ("action", "missing_action"),
        ("context", "missing_context"),
    ] {
        if !input.get(key).is_some_and(Value::is_object) {
            w.push(warning.to_owned());
        }
    }
    w
}

/// What a simulation answers: the decision on `input`, or the history re-evaluation.
#[derive(Serialize, ToSchema)]
pub struct Simulation {
    /// Always `true`: nothing is activated.
    dry_run: bool,
    would_activate: bool,
    policy_set_id: String,
    version_id: String,
    schema_version: String,
    input_schema_version: String,
    manifest_sha256: String,
    policies: Vec<String>,
    warnings: Vec<String>,
    /// How the decision was reached (`evaluation`, `reason`, …).
    #[schema(value_type = Object)]
    explanation: Value,
    /// The policy's `result` document (`null` without input).
    result: Value,
    /// The history re-evaluation, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    history: Option<Value>,
}

/// `POST …/policy-sets/{id}/simulate`.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicySetSimulate)]
pub struct SimulateBody {
    /// The version to evaluate.
    #[schema(min_length = 1)]
    version_id: String,
    /// The policy input to evaluate (absent: only the manifest is checked).
    #[schema(value_type = Option<Object>)]
    input: Option<Map<String, Value>>,
    /// Re-evaluate the zone's recorded decisions (a Serval extension).
    history: Option<HistoryBody>,
}

pub(super) async fn simulate(
    State(app): State<App>,
    ids: PathIds,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let SimulateBody {
        version_id,
        input,
        history,
    } = schema::strict(&headers, &raw)?;
    let input = input.map(Value::Object);
    let history = match history.map(HistoryBody::resolve).transpose() {
        Ok(h) => h,
        Err((path, message)) => {
            return Err(schema::refusal(&[Issue::new(&["history", path], message)]))
        }
    };
    let version = set_version(&app, &zone, &set, &version_id, "version_not_found").await?;
    let checked = verify_manifest(&app, &zone, &version.manifest, true).await?;
    let bundle = app.engines.compile_version(&app.pool, &version).await?;
    let mut warnings = Vec::new();
    let (result, explanation, would_activate) = match &input {
        None => (
            Value::Null,
            json!({ "evaluation": "not_executed", "reason": "no_input" }),
            true,
        ),
        Some(input) => {
            let shape = input_warnings(&zone, input);
            let would = shape.is_empty();
            warnings.extend(shape);
            match bundle.evaluate(input) {
                Ok(r) => {
                    let decision = r.get("decision").cloned().unwrap_or(Value::Null);
                    let reason = bundle_rules::deny_reason(&r)
                        .map(str::to_owned)
                        .or_else(|| {
                            r.pointer("/determining_policies/0/policy")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        });
                    let explanation = json!({
                        "evaluation": "executed",
                        "decision": decision,
                        "policy_set_version_id": version.id,
                        "manifest_sha256": checked.manifest_sha256,
                        "reason": reason,
                    });
                    (r, explanation, would)
                }
                Err(e) => {
                    warnings.push("sts_simulation_failed:policy_eval_failed".to_owned());
                    (
                        Value::Null,
                        json!({ "evaluation": "failed", "reason": e.to_string() }),
                        would,
                    )
                }
            }
        }
    };
    let history = match history {
        Some(h) => Some(
            crate::policy_history::replay(&app, &zone, &bundle, &h)
                .await
                .map_err(|e| ApiError::internal(format!("history simulation: {e}")))?,
        ),
        None => None,
    };
    Ok(Json(crate::views::to_json(&Simulation {
        dry_run: true,
        would_activate,
        policy_set_id: set,
        version_id: version.id.clone(),
        schema_version: checked.schema_version.clone(),
        input_schema_version: INPUT_SCHEMA_VERSION.to_owned(),
        manifest_sha256: checked.manifest_sha256.clone(),
        policies: checked.policy_version_ids.clone(),
        warnings,
        explanation,
        result,
        history,
    }))
    .into_response())
}
