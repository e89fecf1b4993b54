//! Simulate against history (a Serval extension of `POST …/policy-sets/:id/simulate`).
//!
//! A `history` member in the simulation body re-evaluates the zone's recorded
//! token-exchange decisions under the candidate version and reports what would change.
//! The evidence is the audit topic `caracal.audit.events`: every `token_exchange` event
//! of the zone whose `metadata_json.policy_input` holds the input the STS evaluated.
//! Messages whose `sig` does not verify under `AUDIT_HMAC_KEY` are not trusted (counted,
//! never evaluated). The walk is newest first, bounded by the window and by `limit`.

use chrono::{DateTime, Duration, Utc};
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use serde_json::{json, Value};
use serval_domain::policy::bundle::{deny_reason, is_allow};
use serval_domain::policy::Bundle;
use serval_streams::read::field_str;
use serval_streams::topics;

use serval_kit::http::pagination;
use serval_kit::state::App;

pub const DEFAULT_LIMIT: u64 = 1_000;
pub const MAX_LIMIT: u64 = 10_000;
pub const DEFAULT_DIFFERENCES: u64 = 20;
pub const MAX_DIFFERENCES: u64 = 100;
/// The window when `since` is not given.
pub const DEFAULT_WINDOW_HOURS: i64 = 24;
/// Topic entries read per `XREVRANGE`.
const PAGE: usize = 500;

#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: u64,
    pub max_differences: u64,
}

/// The `history` member of a simulation body.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SimulationHistory)]
pub struct HistoryBody {
    /// A UTC RFC 3339 time (`…Z`); default: 24 hours before `until`.
    since: Option<String>,
    /// A UTC RFC 3339 time (`…Z`); default: now.
    until: Option<String>,
    /// Decisions re-evaluated at most, 1–10,000 (default 1,000).
    limit: Option<u64>,
    /// Differences reported at most, 0–100 (default 20).
    max_differences: Option<u64>,
}

fn datetime(s: &str) -> Option<DateTime<Utc>> {
    if !s.ends_with('Z') {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

impl HistoryBody {
    /// The request this member asks for; errors name the offending field.
    pub fn resolve(self) -> Result<HistoryRequest, (&'static str, String)> {
        let time = |field: &'static str, v: Option<String>| match v {
            None => Ok(None),
            Some(s) => datetime(&s)
                .map(Some)
                .ok_or((field, "expected a UTC RFC 3339 time (…Z)".to_owned())),
        };
        let h = HistoryRequest {
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            limit: match self.limit {
                None => DEFAULT_LIMIT,
                Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
                Some(_) => {
                    return Err((
                        "limit",
                        format!("expected an integer from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
            max_differences: match self.max_differences {
                None => DEFAULT_DIFFERENCES,
                Some(n) if n <= MAX_DIFFERENCES => n,
                Some(_) => {
                    return Err((
                        "max_differences",
                        format!("expected an integer from 0 to {MAX_DIFFERENCES}"),
                    ))
                }
            },
        };
        if let (Some(s), Some(u)) = (h.since, h.until) {
            if s > u {
                return Err(("since", "since must not be after until".to_owned()));
            }
        }
        Ok(h)
    }
}

fn recorded_reason(data: &Value) -> Option<String> {
    data.get("diagnostics_json")
        .and_then(Value::as_array)
        .and_then(|d| {
            d.iter()
                .find_map(|x| x.get("reason").and_then(Value::as_str))
        })
        .map(str::to_owned)
        .or_else(|| {
            data.get("evaluation_status")
                .and_then(Value::as_str)
                .filter(|s| *s != "complete")
                .map(str::to_owned)
        })
}

/// Re-evaluates the zone's recorded decisions in the window under `bundle`.
pub async fn replay(
    app: &App,
    zone: &str,
    bundle: &Bundle,
    h: &HistoryRequest,
) -> Result<Value, redis::RedisError> {
    let until = h.until.unwrap_or_else(Utc::now);
    let since = h
        .since
        .unwrap_or_else(|| until - Duration::hours(DEFAULT_WINDOW_HOURS));
    let key = app.store.keys().topic(topics::AUDIT_EVENTS);
    let mut conn = app.redis.clone();
    let (mut evaluated, mut unchanged, mut allow_to_deny, mut deny_to_allow) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut no_input, mut bad_sig, mut eval_errors, mut other_events) = (0u64, 0u64, 0u64, 0u64);
    let mut differences = Vec::new();
    let mut truncated = false;
    let mut end = format!("{}-{}", until.timestamp_millis(), u64::MAX);
    let start = format!("{}-0", since.timestamp_millis().max(0));
    'walk: loop {
        let page: StreamRangeReply = conn.xrevrange_count(&key, &end, &start, PAGE).await?;
        let n = page.ids.len();
        for entry in page.ids {
            end = format!("({}", entry.id);
            let Some(data_text) = field_str(&entry.map, "data") else {
                other_events += 1;
                continue;
            };
            let Ok(data) = serde_json::from_str::<Value>(&data_text) else {
                other_events += 1;
                continue;
            };
            if data.get("zone_id").and_then(Value::as_str) != Some(zone)
                || data.get("event_type").and_then(Value::as_str) != Some("token_exchange")
            {
                continue;
            }
            let sig = field_str(&entry.map, "sig");
            // The audit `sig` covers `data` alone (events-and-audit.md §4).
            if !verify_audit(&app.secrets.audit_key, &data_text, sig.as_deref()) {
                bad_sig += 1;
                continue;
            }
            let metadata = match data.get("metadata_json") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
                Some(v) => v.clone(),
                None => Value::Null,
            };
            let Some(input) = metadata.get("policy_input").filter(|v| v.is_object()) else {
                no_input += 1;
                continue;
            };
            if evaluated >= h.limit {
                truncated = true;
                break 'walk;
            }
            evaluated += 1;
            let new = match bundle.evaluate(input) {
                Ok(r) => r,
                Err(_) => {
                    eval_errors += 1;
                    continue;
                }
            };
            let old_allow = data.get("decision").and_then(Value::as_str) == Some("allow");
            let new_allow = is_allow(&new);
            if old_allow == new_allow {
                unchanged += 1;
                continue;
            }
            if old_allow {
                allow_to_deny += 1;
            } else {
                deny_to_allow += 1;
            }
            if (differences.len() as u64) < h.max_differences {
                differences.push(json!({
                    "request_id": data.get("request_id"),
                    "audit_event_id": data.get("id"),
                    "occurred_at": data.get("occurred_at"),
                    "old": { "decision": data.get("decision"), "reason": recorded_reason(&data) },
                    "new": {
                        "decision": new.get("decision"),
                        "reason": deny_reason(&new),
                        "determining_policies": new.get("determining_policies"),
                    },
                }));
            }
        }
        if n < PAGE {
            break;
        }
    }
    Ok(json!({
        "source": topics::AUDIT_EVENTS,
        "window": { "since": pagination::ts(since), "until": pagination::ts(until) },
        "evaluated": evaluated,
        "unchanged": unchanged,
        "changed": allow_to_deny + deny_to_allow,
        "allow_to_deny": allow_to_deny,
        "deny_to_allow": deny_to_allow,
        "skipped": {
            "no_policy_input": no_input,
            "bad_signature": bad_sig,
            "evaluation_error": eval_errors,
            "not_audit_events": other_events,
        },
        "truncated": truncated,
        "differences": differences,
    }))
}

fn verify_audit(key: &[u8], data: &str, sig: Option<&str>) -> bool {
    use hmac::{Hmac, Mac};
    let Some(Ok(sig)) = sig.map(hex::decode) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(data.as_bytes());
    mac.verify_slice(&sig).is_ok()
}
