//! `POST …/policy-sets/{set}/simulate` (§11): a decision of a policy-set version on a given
//! input, or re-evaluated against the zone's recorded token exchanges (`history`).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use serval_domain::policy::bundle::{self as bundle_rules, INPUT_SCHEMA_VERSION};

use crate::params::PathIds;
use crate::schema::Obj;
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

pub(super) async fn simulate(
    State(app): State<App>,
    ids: PathIds,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let (zone, set) = (ids.at(0).to_owned(), ids.at(1).to_owned());
    let mut body = Obj::parse(&headers, &raw)?;
    let version_id = body.string("version_id", 1);
    let input = match body.map.get("input") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            body.fail(&["input"], "Invalid input: expected object");
            None
        }
    };
    let history = match body.map.get("history") {
        None | Some(Value::Null) => None,
        Some(h) => match crate::policy_history::parse(h) {
            Ok(h) => Some(h),
            Err((path, message)) => {
                body.fail(&["history", path], message);
                None
            }
        },
    };
    body.finish()?;
    let version_id = version_id.unwrap_or_default();
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
    let mut out = json!({
        "dry_run": true,
        "would_activate": would_activate,
        "policy_set_id": set,
        "version_id": version.id,
        "schema_version": checked.schema_version,
        "input_schema_version": INPUT_SCHEMA_VERSION,
        "manifest_sha256": checked.manifest_sha256,
        "policies": checked.policy_version_ids,
        "warnings": warnings,
        "explanation": explanation,
        "result": result,
    });
    if let Some(h) = history {
        out["history"] = crate::policy_history::replay(&app, &zone, &bundle, &h)
            .await
            .map_err(|e| ApiError::internal(format!("history simulation: {e}")))?;
    }
    Ok(Json(out).into_response())
}
