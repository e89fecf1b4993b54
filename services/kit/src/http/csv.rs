//! CSV exports (management-api.md §14.1): header row, CRLF line ends (trailing included),
//! arrays joined with one space, formula-looking cells prefixed with `'`, cells with `"`,
//! `,`, CR or LF quoted with doubled quotes.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    };
    if text.contains(['"', ',', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Renders `rows` (objects) under `columns`.
pub fn render(columns: &[&str], rows: &[Value]) -> String {
    let mut out = columns.join(",");
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| cell(r.get(*c).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The download response: `<name>-<zoneId>.csv`.
pub fn response(name: &str, zone_id: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}-{zone_id}.csv\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_are_escaped() {
        let rows = vec![json!({"a": "=1+2", "b": "x,\"y\"", "c": ["p", "q"], "d": null, "e": 7})];
        assert_eq!(
            render(&["a", "b", "c", "d", "e"], &rows),
            "a,b,c,d,e\r\n'=1+2,\"x,\"\"y\"\"\",p q,,7\r\n"
        );
    }
}
