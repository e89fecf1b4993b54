//! Bodies of the schema-exception routes (management-api.md §2 style 1): any schema failure
//! answers `400 invalid_body`, "Request body failed validation", with `details.issues`.

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

use serval_kit::http::body::check_content_type;
use serval_kit::http::ApiError;

pub fn invalid_body(issues: Vec<Value>) -> ApiError {
    ApiError::bad_request("invalid_body")
        .description("Request body failed validation")
        .with("details", json!({ "issues": issues }))
}

fn issue(path: &[&str], message: impl Into<String>) -> Value {
    json!({ "path": path, "message": message.into() })
}

fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// A JSON object body being checked field by field; issues accumulate until [`Obj::finish`].
pub struct Obj {
    pub map: Map<String, Value>,
    issues: Vec<Value>,
}

impl Obj {
    pub fn parse(headers: &HeaderMap, raw: &[u8]) -> Result<Obj, ApiError> {
        check_content_type(headers, raw)?;
        let value: Value = if raw.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(raw)
                .map_err(|e| invalid_body(vec![issue(&[], format!("Invalid JSON: {e}"))]))?
        };
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                issues: Vec::new(),
            }),
            other => Err(invalid_body(vec![issue(
                &[],
                format!(
                    "Invalid input: expected object, received {}",
                    kind(Some(&other))
                ),
            )])),
        }
    }

    pub fn fail(&mut self, path: &[&str], message: impl Into<String>) {
        self.issues.push(issue(path, message));
    }

    /// A required string of at least `min` characters.
    pub fn string(&mut self, key: &str, min: usize) -> Option<String> {
        match self.map.get(key) {
            Some(Value::String(s)) if s.chars().count() >= min => Some(s.clone()),
            Some(Value::String(_)) => {
                self.fail(
                    &[key],
                    format!("Too small: expected string to have >={min} characters"),
                );
                None
            }
            other => {
                let k = kind(other);
                self.fail(
                    &[key],
                    format!("Invalid input: expected string, received {k}"),
                );
                None
            }
        }
    }

    /// An optional string (`null` and absence both mean none).
    pub fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            other => {
                let k = kind(other);
                self.fail(
                    &[key],
                    format!("Invalid input: expected string, received {k}"),
                );
                None
            }
        }
    }

    pub fn finish(self) -> Result<Map<String, Value>, ApiError> {
        if self.issues.is_empty() {
            Ok(self.map)
        } else {
            Err(invalid_body(self.issues))
        }
    }
}
