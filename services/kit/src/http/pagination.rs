//! Keyset pagination (management-api.md §1.1): `{"items": [...], "next_cursor": …}`.
//!
//! The cursor is base64url of `{"ts": "<RFC 3339, full precision>", "id": "<row id>"}`;
//! `next_cursor` is set only when the page is full.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub default_limit: i64,
    pub max_limit: i64,
}

pub const STANDARD: Family = Family {
    default_limit: 200,
    max_limit: 500,
};

/// Event feeds: audit, admin-audit, authority-records, sessions.
pub const FEED: Family = Family {
    default_limit: 100,
    max_limit: 1000,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CursorBody {
    ts: String,
    id: String,
}

pub struct Page {
    pub limit: i64,
    pub after: Option<(DateTime<Utc>, String)>,
}

impl PageQuery {
    pub fn parse(&self, family: Family) -> Result<Page, ApiError> {
        let limit = match &self.limit {
            None => family.default_limit,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=family.max_limit).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request("invalid_query").description(format!(
                        "limit must be an integer from 1 to {}",
                        family.max_limit
                    )))
                }
            },
        };
        let after = match &self.cursor {
            None => None,
            Some(c) => {
                Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid_cursor"))?)
            }
        };
        Ok(Page { limit, after })
    }
}

pub fn encode_cursor(ts: DateTime<Utc>, id: &str) -> String {
    let body = CursorBody {
        ts: ts.to_rfc3339_opts(SecondsFormat::Micros, true),
        id: id.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap_or_default())
}

pub fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, String)> {
    if c.is_empty() || c.len() > 512 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok()?;
    let body: CursorBody = serde_json::from_slice(&bytes).ok()?;
    let ts = DateTime::parse_from_rfc3339(&body.ts)
        .ok()?
        .with_timezone(&Utc);
    Some((ts, body.id))
}

/// Renders a page; `key` gives each item's `(created_at, id)` for the next cursor.
pub fn page<T>(
    items: &[T],
    limit: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, String),
    render: impl Fn(&T) -> Value,
) -> Value {
    let next = if items.len() as i64 == limit {
        items.last().map(|last| {
            let (ts, id) = key(last);
            encode_cursor(ts, &id)
        })
    } else {
        None
    };
    json!({ "items": items.iter().map(render).collect::<Vec<_>>(), "next_cursor": next })
}

/// Timestamps of top-level columns render as `2026-08-01T09:30:00.000Z` (§1).
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_with_full_precision() {
        let t = DateTime::parse_from_rfc3339("2026-08-01T09:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = encode_cursor(t, "z1");
        assert_eq!(decode_cursor(&c), Some((t, "z1".to_owned())));
        assert_eq!(decode_cursor("not-a-cursor!"), None);
    }

    #[test]
    fn limits_are_checked() {
        let q = |l: &str| {
            PageQuery {
                limit: Some(l.into()),
                cursor: None,
            }
            .parse(STANDARD)
        };
        assert!(q("0").is_err());
        assert!(q("501").is_err());
        assert!(q("x").is_err());
        assert_eq!(q("500").map(|p| p.limit).ok(), Some(500));
    }
}
