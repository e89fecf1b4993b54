//! The Coordinator's request conventions (coordinator.md §1): path ids, JSON bodies read
//! field by field into the `invalid_body` envelope, list queries and pages.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use serval_domain::validation::is_valid_identifier;
use serval_kit::http::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 500;

/// `400 invalid_params` unless every id matches the path-id pattern.
pub fn path_ids(ids: &[&str]) -> Result<(), ApiError> {
    if ids.iter().all(|id| is_valid_identifier(id)) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_params"))
    }
}

/// The schema-failure envelope (§1).
pub fn invalid_body(issues: Vec<Value>) -> ApiError {
    ApiError::bad_request("invalid_body")
        .description("Request body failed validation")
        .with("details", json!({ "issues": issues }))
}

pub fn issue(path: &str, message: &str) -> Value {
    json!({ "path": [path], "message": message })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

/// The JSON object of a body. An empty body without a content type is `{}` (the SDKs send
/// no content type on body-less calls); a JSON content type with an empty body, malformed
/// JSON or a non-object is `400 invalid_body`; another content type `415`.
pub fn object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let typed = headers.contains_key(header::CONTENT_TYPE);
    if body.is_empty() && !(typed && is_json(headers)) {
        return Ok(Map::new());
    }
    if typed && !is_json(headers) {
        return Err(
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_body")
                .description("unsupported content type; send application/json"),
        );
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => match serval_kit::http::body::nul_path(&m) {
            Some(path) => Err(invalid_body(vec![issue(
                &path.join("."),
                "Invalid string: must not contain NUL characters",
            )])),
            None => Ok(m),
        },
        Ok(_) => Err(invalid_body(vec![issue("", "Expected object")])),
        Err(_) => Err(invalid_body(vec![issue("", "Malformed JSON")])),
    }
}

/// Reads fields of a body, collecting every problem into one `invalid_body`.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    issues: Vec<Value>,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Fields {
            map,
            issues: Vec::new(),
        }
    }

    pub fn fail(&mut self, name: &str, message: &str) {
        self.issues.push(issue(name, message));
    }

    pub fn present(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    /// An optional string; `null` counts as absent when `nullable`.
    pub fn string(&mut self, name: &str, required: bool, nullable: bool) -> Option<String> {
        match self.map.get(name) {
            None => {
                if required {
                    self.fail(name, "Required");
                }
                None
            }
            Some(Value::Null) if nullable && !required => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(name, "Expected string");
                None
            }
        }
    }

    /// A required or optional non-empty string.
    pub fn nonempty(&mut self, name: &str, required: bool) -> Option<String> {
        let s = self.string(name, required, false)?;
        if s.is_empty() {
            self.fail(name, "String must contain at least 1 character(s)");
            return None;
        }
        Some(s)
    }

    pub fn int(&mut self, name: &str, lo: i64, hi: i64) -> Option<i64> {
        match self.map.get(name) {
            None => None,
            Some(v) => match v.as_i64() {
                Some(n) if (lo..=hi).contains(&n) && !v.is_f64() => Some(n),
                _ => {
                    self.fail(name, &format!("Expected an integer between {lo} and {hi}"));
                    None
                }
            },
        }
    }

    pub fn object(&mut self, name: &str) -> Option<Map<String, Value>> {
        match self.map.get(name) {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => {
                self.fail(name, "Expected object");
                None
            }
        }
    }

    /// An array of strings, each checked by `item` (a message when refused).
    pub fn strings(
        &mut self,
        name: &str,
        max_items: usize,
        item: impl Fn(&str) -> Option<&'static str>,
    ) -> Option<Vec<String>> {
        let v = self.map.get(name)?;
        let Some(list) = v.as_array() else {
            self.fail(name, "Expected array");
            return None;
        };
        if list.len() > max_items {
            self.fail(
                name,
                &format!("Array must contain at most {max_items} element(s)"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        for v in list {
            match v.as_str() {
                Some(s) => {
                    if let Some(msg) = item(s) {
                        self.fail(name, msg);
                        return None;
                    }
                    out.push(s.to_owned());
                }
                None => {
                    self.fail(name, "Expected string");
                    return None;
                }
            }
        }
        Some(out)
    }

    pub fn one_of(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(name, false, false)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            self.fail(name, &format!("Expected one of {}", allowed.join(", ")));
            None
        }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(invalid_body(self.issues))
        }
    }
}

/// A list filter: its query name and the check its value must pass.
pub type FilterRule = (&'static str, fn(&str) -> bool);

/// A list query (§1): `limit` 1–500 (default 100), `cursor`, and the route's filters.
pub struct ListQuery {
    pub limit: i64,
    pub cursor: Option<String>,
    pub params: HashMap<String, String>,
}

fn invalid_query() -> ApiError {
    ApiError::bad_request("invalid_query")
}

/// Parses a raw query string; a repeated or malformed parameter is `400 invalid_query`.
pub fn query_map(raw: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in url_pairs(raw.unwrap_or_default()) {
        if out.insert(k, v).is_some() {
            return Err(invalid_query());
        }
    }
    Ok(out)
}

fn url_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%' && i + 2 < bytes.len() {
            match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b),
            }
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ListQuery {
    /// Parses `limit`, `cursor` and the `allowed` filters (each checked by `check`).
    pub fn parse(raw: Option<&str>, allowed: &[FilterRule]) -> Result<ListQuery, ApiError> {
        let mut params = query_map(raw)?;
        let limit = match params.remove("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(invalid_query)?,
        };
        let cursor = match params.remove("cursor") {
            None => None,
            Some(c) if is_valid_identifier(&c) => Some(c),
            Some(_) => return Err(ApiError::bad_request("invalid_cursor")),
        };
        for (name, check) in allowed {
            if let Some(v) = params.get(*name) {
                if !check(v) {
                    return Err(invalid_query());
                }
            }
        }
        Ok(ListQuery {
            limit,
            cursor,
            params,
        })
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.params.get(name).cloned()
    }
}

/// `{items, next_cursor}`: the cursor is the last id when the page is full.
pub fn page(items: Vec<Value>, ids: Vec<String>, limit: i64) -> Value {
    let next = if items.len() as i64 >= limit {
        ids.last().cloned()
    } else {
        None
    };
    json!({ "items": items, "next_cursor": next })
}
