//! What the Management API answers, as types: each renderer fills one of these, and the
//! OpenAPI document is generated from the same types (so it cannot drift from the answers).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serval_kit::http::pagination::ts;
use utoipa::ToSchema;

/// A page of a list (§1): `next_cursor` is set when more items may follow.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The chosen `fields` of a feed row (the audit lists with `fields`).
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct FlatRow(serde_json::Map<String, Value>);

/// Who created and last changed an object that always has an updater (zones, policies,
/// policy sets), and when.
#[derive(Serialize, ToSchema)]
pub struct Stamps {
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: String,
    pub updated_via_operator: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl Stamps {
    pub fn new(created: (&str, bool, DateTime<Utc>), updated: (&str, bool, DateTime<Utc>)) -> Self {
        Stamps {
            created_by: created.0.to_owned(),
            created_via_operator: created.1,
            updated_by: updated.0.to_owned(),
            updated_via_operator: updated.1,
            created_at: ts(created.2),
            updated_at: ts(updated.2),
        }
    }
}

/// Who created and last changed an object, and when (§1).
#[derive(Serialize, ToSchema)]
pub struct Attribution {
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: Option<String>,
    pub updated_via_operator: bool,
    /// `2026-08-01T09:30:00.000Z`.
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// The JSON of a view (a struct of strings, numbers and maps with string keys never fails).
pub fn to_json<T: Serialize>(view: &T) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}
