//! Generated input over every Management API route, driven by the OpenAPI document itself.
//!
//! Each round creates the objects the routes need (zone, application, providers, resource,
//! grant, policy, policy set and version), then sends requests built from each operation's
//! schema: valid bodies (so input reaches past the parsers into the handlers), bodies with
//! one field broken (wrong type, missing, null, hostile strings, unknown fields), bodies that
//! are not JSON objects at all, odd path parameters and list queries. Every answer must be a
//! status the document lists for that operation, and no connection may drop.
//!
//! `SERVAL_FUZZ_SEED` replays a run; `SERVAL_FUZZ_REQUESTS` changes its size.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::{Admin, Options, Server};
use futures::stream::{self, StreamExt};
use reqwest::Method;
use serde_json::{json, Map, Value};

/// xorshift64*: a reproducible generator without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that have broken parsers elsewhere.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "abcdefé1",
    "é",
    "\u{0000}",
    "../../etc/passwd",
    "%2e%2e%2f",
    "provider://",
    "caracal-sys://x",
    "🦊🦊🦊",
    "\u{202e}gnp.exe",
    "null",
    "{\"a\":1}",
    "9999999999999999999999",
    "-1",
    "2026-13-45T99:99:99Z",
    "<script>alert(1)</script>",
    "'; DROP TABLE zones; --",
];

fn hostile(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => Value::String("é".repeat(1 + rng.below(400))),
        1 => Value::String("x".repeat(5_000 + rng.below(20_000))),
        _ => Value::String((*rng.pick(HOSTILE)).to_owned()),
    }
}

fn wrong_type(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(1.5e300),
        4 => json!(u64::MAX),
        5 => json!([]),
        6 => json!({}),
        7 => json!([1, "a", null]),
        _ => json!({"nested": {"deeper": [{}]}}),
    }
}

/// The objects of one round.
#[derive(Default, Clone)]
struct Fixtures {
    zone: String,
    victim_zone: String,
    ids: BTreeMap<&'static str, String>,
    rego: String,
}

impl Fixtures {
    fn id(&self, kind: &str) -> Option<String> {
        self.ids.get(kind).cloned()
    }
}

async fn created(admin: &Admin, path: &str, body: Value) -> Value {
    let (s, v) = admin.post(path, body.clone()).await;
    assert!((200..300).contains(&s), "fixture {path} {body}: {s} {v}");
    v
}

/// Approval holds of the zone, as the STS appends them (a gated mint's hold), so the
/// approvals routes have something to read and decide.
async fn holds(
    server: &Server,
    zone: &str,
    round: usize,
    ids: &mut BTreeMap<&'static str, String>,
) {
    use serval_domain::catalog::{ApprovalData, CatalogEvent, Created, EntityData, Stamp};
    for (n, key) in ["approval", "approval2", "approval3"]
        .into_iter()
        .enumerate()
    {
        let id = format!("hold-{round}-{n}-{}", uuid::Uuid::new_v4().simple());
        let data = EntityData::Approval(ApprovalData {
            session_id: "ar-fuzz".into(),
            principal_id: "app-fuzz".into(),
            application_id: None,
            approval_type: "human_approval".into(),
            tier: "standard".into(),
            approver_class: if n == 2 { "subject" } else { "operator" }.into(),
            privacy_mode: "standard".into(),
            subject_anchor: None,
            binding: format!("b{n}"),
            metadata_json: json!({"resource": "docs"}),
            decision_reason: None,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            satisfied_at: None,
            rejected_at: None,
            consumed_at: None,
            approver_subject_id: None,
            principal_federated: false,
            agent_labels: vec![],
            consumed_record_id: None,
            approver_session_id: None,
        });
        let event = CatalogEvent::Created(Created {
            zone_id: zone.to_owned(),
            data,
            stamp: Stamp {
                by: "sts".into(),
                via_operator: false,
            },
        });
        common::produce(server, zone, &id, 0, event, "sts").await;
        ids.insert(key, id);
    }
}

async fn fixtures(server: &Server, admin: &Admin, round: usize, rego: &str) -> Fixtures {
    let name = |what: &str| format!("fz{round}-{what}-{}", uuid::Uuid::new_v4().simple());
    let zone = created(admin, "/v1/zones", json!({ "name": name("zone") })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim_zone = created(admin, "/v1/zones", json!({ "name": name("victim") })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let z = format!("/v1/zones/{zone}");
    let mut ids = BTreeMap::new();
    let app = created(
        admin,
        &format!("{z}/applications"),
        json!({ "name": name("app"), "registration_method": "managed" }),
    )
    .await;
    ids.insert("application", app["id"].as_str().unwrap().to_owned());
    let provider = created(
        admin,
        &format!("{z}/providers"),
        json!({ "name": name("p"), "kind": "api_key",
                "config_json": { "api_key": "k-123", "header_name": "X-Api-Key" } }),
    )
    .await;
    ids.insert("provider", provider["id"].as_str().unwrap().to_owned());
    let oauth = created(
        admin,
        &format!("{z}/providers"),
        json!({ "name": name("o"), "kind": "oauth2_authorization_code",
                "config_json": { "client_id": "c", "client_secret": "s",
                  "authorization_endpoint": "https://auth.example.test/authorize",
                  "token_endpoint": "https://auth.example.test/token",
                  "redirect_uri": "https://app.example.test/callback" } }),
    )
    .await;
    ids.insert("oauth_provider", oauth["id"].as_str().unwrap().to_owned());
    let resource = created(
        admin,
        &format!("{z}/resources"),
        json!({ "name": name("r"), "scopes": ["read", "write"],
                "upstream_url": "https://upstream.example.test/api",
                "credential_provider_id": ids["provider"] }),
    )
    .await;
    ids.insert("resource", resource["id"].as_str().unwrap().to_owned());
    let grant = created(
        admin,
        &format!("{z}/grants"),
        json!({ "application_id": ids["application"], "user_id": "u-1",
                "resource_id": ids["resource"], "scopes": ["read"] }),
    )
    .await;
    ids.insert("grant", grant["id"].as_str().unwrap().to_owned());
    let policy = created(
        admin,
        &format!("{z}/policies"),
        json!({ "name": name("pol"), "content": rego }),
    )
    .await;
    ids.insert("policy", policy["id"].as_str().unwrap().to_owned());
    ids.insert(
        "policy_version",
        policy["version_id"].as_str().unwrap().to_owned(),
    );
    let set = created(
        admin,
        &format!("{z}/policy-sets"),
        json!({ "name": name("set") }),
    )
    .await;
    ids.insert("policy_set", set["id"].as_str().unwrap().to_owned());
    let version = created(
        admin,
        &format!("{z}/policy-sets/{}/versions", ids["policy_set"]),
        json!({ "manifest": [{ "policy_version_id": ids["policy_version"] }] }),
    )
    .await;
    ids.insert(
        "set_version",
        version["version_id"].as_str().unwrap().to_owned(),
    );
    created(
        admin,
        &format!("{z}/policy-sets/{}/activate", ids["policy_set"]),
        json!({ "version_id": ids["set_version"] }),
    )
    .await;
    let token = created(
        admin,
        "/v1/admin-tokens",
        json!({ "name": name("tok"), "scope": "zone", "zone_id": zone, "capability": "read" }),
    )
    .await;
    ids.insert("admin_token", token["id"].as_str().unwrap().to_owned());
    holds(server, &zone, round, &mut ids).await;
    // The holds are read from the catalog projection: wait until it has them.
    let last = ids["approval3"].clone();
    common::eventually(10, || async {
        let (s, _) = admin
            .get(&format!("/v1/zones/{zone}/approvals/{last}"))
            .await;
        (s == 200).then_some(())
    })
    .await;
    Fixtures {
        zone,
        victim_zone,
        ids,
        rego: rego.to_owned(),
    }
}

/// One documented operation.
#[derive(Clone)]
struct Operation {
    method: Method,
    path: String,
    body: Option<Value>,
    statuses: BTreeSet<u16>,
    /// The JSON schema of each documented answer, by status.
    answers: BTreeMap<u16, Value>,
    /// The documented query parameters.
    query: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push(Operation {
                method: Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path: path.clone(),
                body: op
                    .pointer("/requestBody/content/application~1json/schema")
                    .cloned(),
                statuses: op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|s| s.parse().unwrap())
                    .collect(),
                query: op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect(),
                answers: op["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter_map(|(s, r)| {
                        r.pointer("/content/application~1json/schema")
                            .map(|schema| (s.parse().unwrap(), schema.clone()))
                    })
                    .collect(),
            });
        }
    }
    out
}

struct Generator<'a> {
    schemas: &'a Map<String, Value>,
    fx: &'a Fixtures,
    path: &'a str,
}

impl Generator<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .schemas
                .get(r.trim_start_matches("#/components/schemas/"))
                .unwrap_or(&Value::Null),
            None => schema,
        }
    }

    /// The properties and required names of an object schema (through `allOf`).
    fn object_parts(&self, schema: &Value) -> (Map<String, Value>, Vec<String>) {
        let schema = self.resolve(schema);
        let mut props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut required: Vec<String> = schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(all) = schema["allOf"].as_array() {
            for part in all {
                let (p, r) = self.object_parts(part);
                props.extend(p);
                required.extend(r);
            }
        }
        (props, required)
    }

    /// A plausible value for a named field, so valid bodies reach the handlers.
    fn named(&self, rng: &mut Rng, name: &str) -> Option<Value> {
        let id = |k: &str| self.fx.id(k).map(Value::String);
        Some(match name {
            "application_id" => id("application")?,
            "resource_id" => id("resource")?,
            "credential_provider_id" => id("provider")?,
            "provider_id" => {
                if self.path.contains("connections") || self.path.contains("provider-grants") {
                    id("oauth_provider")?
                } else {
                    id("provider")?
                }
            }
            "policy_version_id" => id("policy_version")?,
            "version_id" => id("set_version")?,
            "zone_id" => Value::String(self.fx.zone.clone()),
            "content" => Value::String(self.fx.rego.clone()),
            "registration_method" => json!("managed"),
            "kind" => json!(rng.pick(&["api_key", "bearer_token", "http_basic", "none"])),
            "config_json" => rng
                .pick(&[
                    json!({"api_key": "k", "header_name": "X-Key"}),
                    json!({"bearer_token": "abcdefé1"}),
                    json!({"username": "u", "password": "p"}),
                    json!({}),
                ])
                .clone(),
            "identifier" => {
                let prefix = if self.path.contains("resources") {
                    "resource"
                } else {
                    "provider"
                };
                json!(format!("{prefix}://fz-{}", rng.next() % 1_000_000))
            }
            "name" => json!(format!("fz-{}", rng.next() % 1_000_000_000)),
            "scopes" => json!(["read"]),
            "upstream_url" => json!("https://upstream.example.test/v2"),
            "expires_at" | "since" | "until" => json!("2030-01-01T00:00:00Z"),
            "input" => json!({"schema_version": "caracal.policy.input.v1"}),
            "operations" => json!([{"method": "GET", "path": "/items", "scope": "read"}]),
            "operation_enforcement" => json!("enforced"),
            _ => return None,
        })
    }

    fn value(&self, rng: &mut Rng, schema: &Value, name: &str, depth: usize) -> Value {
        if let Some(v) = self.named(rng, name) {
            if rng.chance(85) {
                return v;
            }
        }
        let schema = self.resolve(schema);
        if let Some(values) = schema["enum"].as_array() {
            return rng.pick(values).clone();
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema[key].as_array() {
                let real: Vec<&Value> = options
                    .iter()
                    .filter(|o| o["type"] != json!("null"))
                    .collect();
                if let Some(o) = real.first() {
                    return self.value(rng, o, name, depth);
                }
                return Value::Null;
            }
        }
        if schema.get("allOf").is_some() || schema.get("properties").is_some() {
            return self.object(rng, schema, depth + 1);
        }
        let ty = match &schema["type"] {
            Value::String(t) => t.clone(),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null")
                .to_owned(),
            _ => "object".to_owned(),
        };
        match ty.as_str() {
            "string" => {
                let min = schema["minLength"].as_u64().unwrap_or(1) as usize;
                json!("v".repeat(min.max(3)))
            }
            "integer" => json!(1 + rng.below(100)),
            "number" => json!(1.5),
            "boolean" => json!(rng.chance(50)),
            "array" => {
                let n = schema["minItems"].as_u64().unwrap_or(1).max(1) as usize;
                Value::Array(
                    (0..n)
                        .map(|_| self.value(rng, &schema["items"], name, depth + 1))
                        .collect(),
                )
            }
            "null" => Value::Null,
            _ if depth > 3 => json!({}),
            _ => self.object(rng, schema, depth + 1),
        }
    }

    fn object(&self, rng: &mut Rng, schema: &Value, depth: usize) -> Value {
        let (props, required) = self.object_parts(schema);
        let mut out = Map::new();
        for (name, prop) in &props {
            if required.contains(name) || rng.chance(60) {
                out.insert(name.clone(), self.value(rng, prop, name, depth));
            }
        }
        Value::Object(out)
    }

    /// A valid body, then (usually) one thing broken in it.
    fn body(&self, rng: &mut Rng, schema: &Value) -> Value {
        let mut body = self.object(rng, schema, 0);
        let (props, required) = self.object_parts(schema);
        let Value::Object(map) = &mut body else {
            return body;
        };
        let names: Vec<&String> = props.keys().collect();
        match rng.below(10) {
            0..=2 => {}
            3 if !required.is_empty() => {
                map.remove(rng.pick(&required));
            }
            4 | 5 if !names.is_empty() => {
                map.insert((*rng.pick(&names)).clone(), wrong_type(rng));
            }
            6 | 7 if !names.is_empty() => {
                map.insert((*rng.pick(&names)).clone(), hostile(rng));
            }
            8 => {
                map.insert(format!("unknown_{}", rng.below(5)), hostile(rng));
            }
            _ => {
                // Every field broken at once.
                for n in names {
                    let v = if rng.chance(50) {
                        wrong_type(rng)
                    } else {
                        hostile(rng)
                    };
                    map.insert(n.clone(), v);
                }
            }
        }
        body
    }
}

/// A concrete path for a documented one.
/// `late`: the last tenth of a round, when deletes may take the round's real objects (earlier
/// they would leave the rest of the round nothing to reach).
fn concrete(rng: &mut Rng, fx: &Fixtures, path: &str, method: &Method, late: bool) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let Some(param) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            out.push((*seg).to_owned());
            continue;
        };
        let before = if i > 0 { segments[i - 1] } else { "" };
        let real = match (param, before) {
            ("zone", _) => Some(fx.zone.clone()),
            // The round's main zone is never archived or changed: zone writes take the victim.
            ("id", "zones") if *method != Method::GET => Some(fx.victim_zone.clone()),
            ("id", "zones") => Some(fx.zone.clone()),
            ("id", "applications") => fx.id("application"),
            ("id", "providers") => fx.id(if rng.chance(50) {
                "provider"
            } else {
                "oauth_provider"
            }),
            ("id", "resources") => fx.id("resource"),
            ("id", "grants") => fx.id("grant"),
            ("id", "policies") => fx.id("policy"),
            ("id", "policy-sets") => fx.id("policy_set"),
            ("version", _) => fx.id("set_version"),
            ("id", "admin-tokens") => fx.id("admin_token"),
            ("id", "approvals" | "step-up-challenges") => {
                let hold: &&str = rng.pick(&["approval", "approval2", "approval3"]);
                fx.id(hold)
            }
            _ => None,
        };
        let real = real.filter(|_| late || *method != Method::DELETE || param == "zone");
        let value = match (real, rng.below(10)) {
            (Some(v), 0..=6) => v,
            (_, 7) => "missing".to_owned(),
            (_, 8) => uuid::Uuid::now_v7().to_string(),
            _ => {
                let h = hostile(rng);
                let s = h.as_str().unwrap_or("x");
                url::form_urlencoded::byte_serialize(s.as_bytes())
                    .collect::<String>()
                    .chars()
                    .take(2_000)
                    .collect()
            }
        };
        out.push(if value.is_empty() {
            "%20".into()
        } else {
            value
        });
    }
    out.join("/")
}

/// A query string over the operation's documented parameters (and sometimes one it does
/// not know), with plausible and hostile values.
fn query(rng: &mut Rng, names: &[String], fx: &Fixtures) -> String {
    let plausible = |rng: &mut Rng, name: &str| -> String {
        let v: &[&str] = match name {
            "limit" => &["0", "1", "-1", "abc", "1000000", "50", ""],
            "cursor" => &["garbage", "", "eyJ4IjoxfQ", "%00"],
            "format" => &["csv", "json", "xml", ""],
            "status" => &["active", "revoked", "archived", "all", "bogus", "pending"],
            "fields" => &["id", "id,action", "nope", ""],
            "state" => &["pending", "approved", "bogus"],
            "since" | "until" => &["2020-01-01T00:00:00Z", "yesterday", "2099-01-01T00:00:00Z"],
            "lifecycle" => &["task", "service", "x"],
            _ => &["x", "1", "true", ""],
        };
        match name {
            "version_id" => fx.id("set_version").unwrap_or_default(),
            "application_id" => fx.id("application").unwrap_or_default(),
            "resource_id" => fx.id("resource").unwrap_or_default(),
            "provider_id" => fx.id("provider").unwrap_or_default(),
            _ => (*rng.pick(v)).to_owned(),
        }
    };
    let mut parts = Vec::new();
    for name in names {
        if rng.chance(30) {
            let v = if rng.chance(80) {
                plausible(rng, name)
            } else {
                hostile(rng)
                    .as_str()
                    .unwrap_or("x")
                    .chars()
                    .take(300)
                    .collect()
            };
            parts.push(format!(
                "{name}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            ));
        }
    }
    if rng.chance(5) {
        parts.push("unknown_param=1".to_owned());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Where `v` departs from `schema` (types, required properties, enumerations, items, through
/// references and compositions), or `None`.
fn mismatch(schemas: &Map<String, Value>, schema: &Value, v: &Value, at: &str) -> Option<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = schemas.get(r.trim_start_matches("#/components/schemas/"))?;
        return mismatch(schemas, target, v, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        if let Some(m) = all.iter().find_map(|s| mismatch(schemas, s, v, at)) {
            return Some(m);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            if options
                .iter()
                .all(|s| mismatch(schemas, s, v, at).is_some())
            {
                return Some(format!("{at}: {v} matches no option of {key}"));
            }
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Some(format!("{at}: {v} is not {types:?}"));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !v.is_null() && !values.contains(v) {
            return Some(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    if let Value::Object(map) = v {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !map.contains_key(name) {
                return Some(format!("{at}.{name}: required, missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                if let Some(value) = map.get(name) {
                    if let Some(m) = mismatch(schemas, prop, value, &format!("{at}.{name}")) {
                        return Some(m);
                    }
                }
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (v, schema.get("items")) {
        for (i, value) in items.iter().enumerate() {
            if let Some(m) = mismatch(schemas, item, value, &format!("{at}[{i}]")) {
                return Some(m);
            }
        }
    }
    None
}

/// One generated request, described for the failure report.
struct Sent {
    op: String,
    url: String,
    body: String,
}

impl Sent {
    fn answered(&self, status: u16, text: &str) -> String {
        format!(
            "{} → {status} {}\n    url: {}\n    body: {}",
            self.op,
            text.chars().take(300).collect::<String>(),
            self.url,
            self.body
        )
    }
}

/// Fails, naming the run's seed and the first findings, when `found` is not empty.
fn none(seed: u64, what: &str, found: &[String]) {
    assert!(
        found.is_empty(),
        "SERVAL_FUZZ_SEED={seed}: {} {what}:\n{}",
        found.len(),
        found[..found.len().min(30)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_input_over_every_route_answers_only_documented_statuses() {
    let server = Server::start(Options {
        env: vec![
            ("API_V1_RATE_LIMIT_PER_MIN".into(), "0".into()),
            ("ADMIN_AUTH_FAIL_LIMIT_PER_MIN".into(), "0".into()),
        ],
        ..Options::default()
    })
    .await;
    let admin = Admin::new(&server);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    let doc: Value = http
        .get(format!("{}/docs/openapi.json", server.api()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
    let ops = operations(&doc);
    assert!(ops.len() >= 70, "{} operations", ops.len());
    let (_, templates) = admin.get("/v1/policy-templates").await;
    let rego = templates[0]["content"].as_str().unwrap().to_owned();

    let seed: u64 = std::env::var("SERVAL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let total: usize = std::env::var("SERVAL_FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_500);
    eprintln!("SERVAL_FUZZ_SEED={seed} SERVAL_FUZZ_REQUESTS={total}");
    let rounds = 7;
    let mut rng = Rng(seed);
    let mut off_spec: Vec<String> = Vec::new();
    let mut off_shape: Vec<String> = Vec::new();
    let mut internal: Vec<String> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut per_op: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut sent = 0usize;
    for round in 0..rounds {
        let fx = fixtures(&server, &admin, round, &rego).await;
        let gen = |rng: &mut Rng, op: &Operation, late: bool| -> (reqwest::RequestBuilder, Sent) {
            let path = concrete(rng, &fx, &op.path, &op.method, late);
            let q = if op.method == Method::GET {
                query(rng, &op.query, &fx)
            } else {
                String::new()
            };
            let url = format!("{}{path}{q}", server.api());
            let mut req = http.request(op.method.clone(), &url);
            if op.path != "/v1/zones/{zone}/provider-connections/oauth/callback"
                && op.path != "/v1/zones/{zone}/provider-grants/oauth/callback"
                || rng.chance(50)
            {
                req = req.bearer_auth(&server.keys.admin_token);
            }
            if rng.chance(10) {
                req = req.header("Idempotency-Key", format!("fz-{}", rng.below(50)));
            }
            let mut body_text = String::new();
            if let Some(schema) = &op.body {
                let g = Generator {
                    schemas: &schemas,
                    fx: &fx,
                    path: &op.path,
                };
                let (ct, raw) = match rng.below(20) {
                    0 => ("application/json", "{".to_owned()),
                    1 => ("application/json", "[1,2]".to_owned()),
                    2 => ("application/json", "\"s\"".to_owned()),
                    3 => ("text/plain", "name=x".to_owned()),
                    4 => ("application/json", String::new()),
                    5 => (
                        "application/json",
                        format!("{{\"name\":\"{}\"}}", "x".repeat(1_100_000)),
                    ),
                    _ => ("application/json", g.body(rng, schema).to_string()),
                };
                body_text = raw.chars().take(300).collect();
                req = req.header("Content-Type", ct).body(raw);
            }
            (
                req,
                Sent {
                    op: format!("{} {}", op.method, op.path),
                    url: url.chars().take(300).collect(),
                    body: body_text,
                },
            )
        };
        let n = total / rounds + usize::from(round < total % rounds);
        type Planned = (reqwest::RequestBuilder, Sent, Operation);
        let batch: Vec<Planned> = (0..n)
            .map(|i| {
                // Every operation in turn, then at random: each is reached every round.
                let op = if i < ops.len() {
                    &ops[i]
                } else {
                    rng.pick(&ops)
                };
                let (req, s) = gen(&mut rng, op, i * 10 >= n * 9);
                (req, s, op.clone())
            })
            .collect();
        let results = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        stream::iter(batch)
            .for_each_concurrent(8, |(req, s, op)| {
                let results = results.clone();
                async move {
                    let r = req.send().await;
                    let outcome = match r {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let json = resp
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| v.starts_with("application/json"));
                            let text = resp.text().await.unwrap_or_default();
                            Ok((status, json, text))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    results.lock().await.push((s, op, outcome));
                }
            })
            .await;
        for (s, op, outcome) in results.lock().await.drain(..) {
            sent += 1;
            match outcome {
                Ok((status, json, text)) => {
                    *by_status.entry(status).or_default() += 1;
                    per_op.entry(s.op.clone()).or_default().insert(status);
                    // Every JSON answer is what the document says it is.
                    if let (true, Some(schema)) = (json, op.answers.get(&status)) {
                        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        if let Some(m) = mismatch(&schemas, schema, &parsed, "$") {
                            off_shape.push(format!("{} → {status}: {m}\n    url: {}", s.op, s.url));
                        }
                    }
                    if status == 500 {
                        internal.push(s.answered(status, &text));
                    }
                    if !op.statuses.contains(&status) {
                        off_spec.push(s.answered(status, &text));
                    }
                }
                Err(e) => dropped.push(format!("{}: {e}\n    url: {}", s.op, s.url)),
            }
        }
    }
    eprintln!("statuses: {by_status:?}");
    let reached_handlers = per_op
        .values()
        .filter(|s| s.iter().any(|c| (200..300).contains(c)))
        .count();
    eprintln!(
        "operations answering 2xx at least once: {reached_handlers} of {}",
        ops.len()
    );
    assert!(sent >= 10_000 || total < 10_000, "{sent} requests");
    none(seed, "dropped connections", &dropped);
    none(seed, "answers outside the documented statuses", &off_spec);
    none(seed, "answers not shaped as documented", &off_shape);
    // `500` is documented (the panic layer's answer) but is always a defect.
    none(seed, "internal errors", &internal);
    // No input left a projection behind: a write after the run is visible at once.
    let resp = admin
        .req(Method::POST, "/v1/zones")
        .json(&json!({ "name": format!("after-{seed}") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let z: Value = resp.json().await.unwrap();
    let (s, got) = admin
        .get(&format!(
            "/v1/zones/{}",
            z["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(
        s, 200,
        "the zones projection fell behind during the run: {got}"
    );
    // Valid input reached the handlers of most operations (not only their parsers); those
    // it cannot reach need state only the run-time services make (approval holds, audit
    // events of a request) or a provider's real OAuth redirect (the callbacks).
    assert!(
        reached_handlers * 10 >= ops.len() * 8,
        "only {reached_handlers} of {} operations ever answered 2xx: {per_op:?}",
        ops.len()
    );
}

/// U+0000 cannot be stored by Postgres (text or jsonb): a body holding one anywhere is refused
/// before it can become an event no projection could apply.
#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_anywhere_in_a_body_is_refused_at_the_door() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "nul"})).await;
    let zone = z["id"].as_str().unwrap();
    for (path, body, code) in [
        (
            "/v1/zones".to_owned(),
            json!({"name": "a\u{0}b"}),
            "invalid_zone",
        ),
        (
            format!("/v1/zones/{zone}/providers"),
            json!({"name": "p", "kind": "api_key",
                   "config_json": {"api_key": "k\u{0}", "header_name": "X-Key"}}),
            "invalid_provider",
        ),
        (
            format!("/v1/zones/{zone}/policy-sets"),
            json!({"name": "s", "description": "d\u{0}"}),
            "invalid_body",
        ),
        (
            format!("/v1/zones/{zone}/resources"),
            json!({"name": "r", "scopes": ["read"], "operations":
                   [{"method": "GET", "path": "/\u{0}", "scope": "read"}]}),
            "invalid_resource",
        ),
    ] {
        let (s, e) = admin.post(&path, body).await;
        assert_eq!(s, 400, "{path}: {e}");
        assert_eq!(e["error"], code, "{path}: {e}");
    }
    let (_, e) = admin
        .post(
            &format!("/v1/zones/{zone}/policy-sets"),
            json!({"name": "s", "description": "d\u{0}"}),
        )
        .await;
    assert_eq!(e["details"]["issues"][0]["path"], json!(["description"]));
    // Nor in a query string: a filter holding one is refused before it reaches Postgres.
    for q in [
        "approvals?principal=%00",
        "agent-sessions?label=a%00",
        "grants?application_id=%00",
    ] {
        let (s, e) = admin.get(&format!("/v1/zones/{zone}/{q}")).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (400, Some("invalid_query")),
            "{q}: {e}"
        );
    }
    let (s, _) = admin
        .get(&format!("/v1/zones/{zone}/approvals?principal=%2500"))
        .await;
    assert_eq!(s, 200, "an encoded percent sign is no NUL");
    // Nothing was written, and the zone's projections are current.
    let (s, sets) = admin.get(&format!("/v1/zones/{zone}/policy-sets")).await;
    assert_eq!(s, 200);
    assert_eq!(sets["items"], json!([]));
}
