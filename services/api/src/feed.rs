//! What the zone event feeds (audit ledger, admin audit) share: UTC datetime and `fields`
//! parameters, `format=json|csv`, and the answer (a page of items, of flat projections, or
//! a CSV export).

use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use serval_kit::http::pagination;
use serval_kit::http::{csv, ApiError};

/// A "datetime" query parameter: RFC 3339 in UTC with a `Z` suffix only (§1).
pub fn utc_param(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .filter(|_| s.ends_with('Z'))
            .map(|t| Some(t.with_timezone(&Utc)))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_query")
                    .description(format!("{name} must be a UTC datetime ending in Z"))
            }),
    }
}

/// `fields`: a comma list from `allowed` (else `400 invalid_fields`).
pub fn parse_fields(
    v: &Option<String>,
    allowed: &[&'static str],
) -> Result<Option<Vec<&'static str>>, ApiError> {
    let Some(s) = v else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match allowed.iter().find(|a| **a == f) {
            Some(a) => out.push(*a),
            None => {
                return Err(ApiError::bad_request("invalid_fields")
                    .description(format!("unknown field {f:?}")))
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("invalid_fields").description("fields is empty"));
    }
    Ok(Some(out))
}

/// A query value that must be one of `allowed` (else `400 invalid_query`).
pub fn one_of(name: &str, v: &str, allowed: &[&str]) -> Result<String, ApiError> {
    if allowed.contains(&v) {
        Ok(v.to_owned())
    } else {
        Err(ApiError::bad_request("invalid_query")
            .description(format!("{name} must be one of {}", allowed.join(", "))))
    }
}

/// `format`: `json` (default) or `csv`.
pub fn is_csv(v: &Option<String>) -> Result<bool, ApiError> {
    match v.as_deref() {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => {
            Err(ApiError::bad_request("invalid_query").description("format must be json or csv"))
        }
    }
}

pub fn project(row: &Value, fields: &[&str]) -> Value {
    let mut m = Map::new();
    for f in fields {
        m.insert((*f).to_owned(), row.get(*f).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// How a feed answers: its name and zone (for the CSV file name), CSV or JSON, the columns
/// of a CSV export or of projected rows, and whether the caller chose `fields`.
pub struct Shape<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    pub csv: bool,
    pub columns: &'a [&'a str],
    pub projected: bool,
}

/// The feed's answer: a CSV export of `columns`, or a page of `render`ed items — or of flat
/// rows projected to `columns` when the caller chose `fields` (`projected`).
pub fn answer<T>(
    shape: Shape<'_>,
    rows: &[T],
    limit: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, String),
    flat: impl Fn(&T) -> Value,
    render: impl Fn(&T) -> Value,
) -> Response {
    let Shape {
        name,
        zone,
        csv: csv_out,
        columns,
        projected,
    } = shape;
    if csv_out {
        let flat_rows: Vec<Value> = rows.iter().map(&flat).collect();
        return csv::response(name, zone, csv::render(columns, &flat_rows));
    }
    let body = pagination::page(rows, limit, key, |r| {
        if projected {
            project(&flat(r), columns)
        } else {
            render(r)
        }
    });
    Json(body).into_response()
}
