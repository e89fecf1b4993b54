//! Request bodies parsed into the Rust types the OpenAPI document is generated from.
//!
//! A body type derives both `Deserialize` (what the handler reads) and `ToSchema` (what the
//! document shows). Before deserializing, the body is checked against that same schema —
//! types, required fields, string lengths, item counts, enumerations — so every refusal
//! names the field in Caracal's wording and the document cannot drift from the checks.
//!
//! Two refusal styles (management-api.md §2): the schema-exception routes ([`strict`]) answer
//! `400 invalid_body` with every issue in `details.issues`; the others ([`lenient`]) answer
//! `400 <route code>` describing the first issue.

use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use serval_kit::http::body::{check_content_type, nul_path, parse_lenient};
use serval_kit::http::ApiError;

pub fn invalid_body(issues: Vec<Value>) -> ApiError {
    ApiError::bad_request("invalid_body")
        .description("Request body failed validation")
        .with("details", json!({ "issues": issues }))
}

/// One problem with a body, at a path of property names and item indexes.
#[derive(Debug, Clone)]
pub struct Issue {
    pub path: Vec<String>,
    pub message: String,
}

impl Issue {
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        Issue {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({ "path": self.path, "message": self.message })
    }

    fn describe(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path.join("."), self.message)
        }
    }
}

/// The JSON kind of a value, in zod's words.
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

fn type_name(t: &Type) -> &'static str {
    match t {
        Type::Object => "object",
        Type::String => "string",
        Type::Integer => "integer",
        Type::Number => "number",
        Type::Boolean => "boolean",
        Type::Array => "array",
        Type::Null => "null",
    }
}

fn matches_type(t: &Type, v: &Value) -> bool {
    match (t, v) {
        (Type::Object, Value::Object(_))
        | (Type::String, Value::String(_))
        | (Type::Boolean, Value::Bool(_))
        | (Type::Array, Value::Array(_))
        | (Type::Null, Value::Null) => true,
        (Type::Number, Value::Number(_)) => true,
        (Type::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

/// Checks `v` against the type list of a schema; `None` when it passes.
fn type_issue(types: &SchemaType, v: &Value) -> Option<String> {
    let types: Vec<&Type> = match types {
        SchemaType::AnyValue => return None,
        SchemaType::Type(t) => vec![t],
        SchemaType::Array(ts) => ts.iter().collect(),
    };
    if types.iter().any(|t| matches_type(t, v)) {
        return None;
    }
    let expected: Vec<&str> = types
        .iter()
        .filter(|t| !matches!(t, Type::Null))
        .map(|t| type_name(t))
        .collect();
    Some(format!(
        "Invalid input: expected {}, received {}",
        expected.join(" or "),
        kind(Some(v))
    ))
}

/// Named schemas a body's schema refers to.
struct Named(Vec<(String, RefOr<Schema>)>);

impl Named {
    fn of<T: ToSchema>() -> Self {
        let mut out = Vec::new();
        T::schemas(&mut out);
        out.push((T::name().into_owned(), T::schema()));
        Named(out)
    }

    fn resolve<'a>(&'a self, s: &'a RefOr<Schema>) -> Option<&'a Schema> {
        match s {
            RefOr::T(s) => Some(s),
            RefOr::Ref(r) => {
                let name = r.ref_location.rsplit('/').next()?;
                self.0
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, s)| match s {
                        RefOr::T(s) => Some(s),
                        RefOr::Ref(_) => None,
                    })
            }
        }
    }

    /// Checks `v` at `path` against `schema`, pushing every issue found.
    fn check(
        &self,
        schema: &RefOr<Schema>,
        v: &Value,
        path: &mut Vec<String>,
        out: &mut Vec<Issue>,
    ) {
        let Some(schema) = self.resolve(schema) else {
            return;
        };
        let at = |path: &Vec<String>, message: String| Issue {
            path: path.clone(),
            message,
        };
        match schema {
            Schema::Object(o) => {
                if let Some(m) = type_issue(&o.schema_type, v) {
                    out.push(at(path, m));
                    return;
                }
                if let (Some(values), false) = (&o.enum_values, v.is_null()) {
                    if !values.contains(v) {
                        let names: Vec<String> = values.iter().map(Value::to_string).collect();
                        out.push(at(
                            path,
                            format!("Invalid option: expected one of {}", names.join("|")),
                        ));
                        return;
                    }
                }
                match v {
                    Value::String(s) => {
                        let n = s.chars().count();
                        if let Some(min) = o.min_length.filter(|min| n < *min) {
                            out.push(at(
                                path,
                                format!("Too small: expected string to have >={min} characters"),
                            ));
                        }
                        if let Some(max) = o.max_length.filter(|max| n > *max) {
                            out.push(at(
                                path,
                                format!("Too big: expected string to have <={max} characters"),
                            ));
                        }
                    }
                    Value::Object(map) => {
                        // In declaration order (utoipa's `preserve_order`), as zod reports.
                        for (name, prop) in &o.properties {
                            path.push(name.clone());
                            match map.get(name) {
                                Some(value) => self.check(prop, value, path, out),
                                None if o.required.contains(name) => {
                                    let expected = match self.resolve(prop) {
                                        Some(Schema::Object(p)) => match &p.schema_type {
                                            SchemaType::Type(t) => type_name(t),
                                            _ => "value",
                                        },
                                        Some(Schema::Array(_)) => "array",
                                        _ => "value",
                                    };
                                    out.push(at(
                                        path,
                                        format!(
                                            "Invalid input: expected {expected}, received undefined"
                                        ),
                                    ));
                                }
                                None => {}
                            }
                            path.pop();
                        }
                    }
                    _ => {}
                }
            }
            Schema::Array(a) => {
                if let Some(m) = type_issue(&a.schema_type, v) {
                    out.push(at(path, m));
                    return;
                }
                let Value::Array(items) = v else {
                    return;
                };
                if let Some(min) = a.min_items.filter(|min| items.len() < *min) {
                    out.push(at(
                        path,
                        format!("Too small: expected array to have >={min} items"),
                    ));
                }
                if let Some(max) = a.max_items.filter(|max| items.len() > *max) {
                    out.push(at(
                        path,
                        format!("Too big: expected array to have <={max} items"),
                    ));
                }
                if let ArrayItems::RefOrSchema(item) = &a.items {
                    for (i, value) in items.iter().enumerate() {
                        path.push(i.to_string());
                        self.check(item, value, path, out);
                        path.pop();
                    }
                }
            }
            // `Option<Nested>`: `null`, or the nested type's checks.
            Schema::OneOf(one) => {
                let is_null = |s: &RefOr<Schema>| {
                    matches!(s, RefOr::T(Schema::Object(o))
                        if matches!(o.schema_type, SchemaType::Type(Type::Null)))
                };
                if v.is_null() && one.items.iter().any(is_null) {
                    return;
                }
                let real: Vec<&RefOr<Schema>> = one.items.iter().filter(|s| !is_null(s)).collect();
                if let [only] = real.as_slice() {
                    self.check(only, v, path, out);
                }
            }
            // Other composites (tagged unions) are left to serde.
            _ => {}
        }
    }
}

/// Every issue of `map` against `T`'s schema, then `T` itself.
fn typed<T: DeserializeOwned + ToSchema>(
    map: Map<String, Value>,
    extra: impl FnOnce(&Map<String, Value>) -> Vec<Issue>,
) -> Result<T, Vec<Issue>> {
    let value = Value::Object(map);
    let mut issues = Vec::new();
    Named::of::<T>().check(&T::schema(), &value, &mut Vec::new(), &mut issues);
    if let Value::Object(map) = &value {
        issues.extend(extra(map));
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        use serde_path_to_error::Segment;
        let path = e
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Map { key } => Some(key.clone()),
                Segment::Enum { variant } => Some(variant.clone()),
                Segment::Unknown => None,
            })
            .collect();
        vec![Issue {
            path,
            message: format!("Invalid input: {}", e.inner()),
        }]
    })
}

/// A schema-exception body (§2 style 1): any failure answers `400 invalid_body` with
/// `details.issues`, all of them.
pub fn strict<T: DeserializeOwned + ToSchema>(
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<T, ApiError> {
    strict_with(headers, raw, |_| Vec::new())
}

/// [`strict`] with the issues of rules a schema cannot state (patterns of array items, …),
/// found on the raw object and answered together with the schema's.
pub fn strict_with<T: DeserializeOwned + ToSchema>(
    headers: &HeaderMap,
    raw: &[u8],
    extra: impl FnOnce(&Map<String, Value>) -> Vec<Issue>,
) -> Result<T, ApiError> {
    check_content_type(headers, raw)?;
    let value: Value = if raw.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(raw).map_err(|e| {
            invalid_body(vec![Issue::new(&[], format!("Invalid JSON: {e}")).to_json()])
        })?
    };
    let Value::Object(map) = value else {
        return Err(invalid_body(vec![Issue::new(
            &[],
            format!(
                "Invalid input: expected object, received {}",
                kind(Some(&value))
            ),
        )
        .to_json()]));
    };
    if let Some(path) = nul_path(&map) {
        return Err(refusal(&[Issue {
            path,
            message: "Invalid string: must not contain NUL characters".to_owned(),
        }]));
    }
    typed(map, extra).map_err(|issues| refusal(&issues))
}

/// A lenient body (unknown fields dropped): the first issue answers `400 <code>`.
pub fn lenient<T: DeserializeOwned + ToSchema>(
    headers: &HeaderMap,
    raw: &[u8],
    code: &str,
) -> Result<T, ApiError> {
    let map = parse_lenient(headers, raw, code)?;
    typed(map, |_| Vec::new()).map_err(|issues| {
        let first = issues.first().map(Issue::describe).unwrap_or_default();
        ApiError::bad_request(code).description(first)
    })
}

/// Further issues a handler finds after the schema's (patterns, cross-field rules), answered
/// in the schema-exception style.
pub fn refuse(issues: Vec<Issue>) -> Result<(), ApiError> {
    if issues.is_empty() {
        Ok(())
    } else {
        Err(refusal(&issues))
    }
}

/// The schema-exception refusal of `issues`.
pub fn refusal(issues: &[Issue]) -> ApiError {
    invalid_body(issues.iter().map(Issue::to_json).collect())
}

/// `Option<Option<T>>` fields: absent → `None`, `null` → `Some(None)` (with
/// `#[serde(default, deserialize_with = "present")]`).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
