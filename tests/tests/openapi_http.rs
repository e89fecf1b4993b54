//! The OpenAPI document is generated from the route table: it lists every Management API
//! route (both names of renamed ones), and every path it lists is served.

mod common;

use common::{Admin, Options, Server};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_covers_the_routes_and_every_listed_route_is_served() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/docs", server.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/docs/openapi.json"));
    let doc: Value = http
        .get(format!("{}/docs/openapi.json", server.api()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (m, p) in [
        ("get", "/v1/zones"),
        ("post", "/v1/admin-tokens"),
        ("get", "/v1/zones/{zone}/applications/{id}/client-secret"),
        ("post", "/v1/zones/{zone}/providers"),
        ("delete", "/v1/zones/{zone}/grants/{id}"),
        (
            "post",
            "/v1/zones/{zone}/provider-connections/oauth/authorize",
        ),
        ("post", "/v1/zones/{zone}/provider-grants/oauth/authorize"),
        ("post", "/v1/zones/{zone}/provider-grants/revoke"),
        ("get", "/v1/zones/{zone}/admin-audit"),
        ("post", "/v1/zones/{zone}/policy-sets/{id}/simulate"),
    ] {
        assert!(paths[p][m].is_object(), "{m} {p} is documented");
    }
    let callback = &paths["/v1/zones/{zone}/provider-connections/oauth/callback"]["get"];
    assert!(
        callback["security"].is_null(),
        "the callback needs no token"
    );
    assert!(paths["/v1/zones/{zone}/grants"]["post"]["security"].is_array());
    let create = &paths["/v1/zones/{zone}/providers"]["post"];
    assert!(create["responses"]["409"]["description"]
        .as_str()
        .unwrap()
        .contains("provider_identifier_conflict"));

    // Bodies and answers are described field by field, by schemas that resolve.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str() {
            Some(r) => schemas
                .get(r.trim_start_matches("#/components/schemas/"))
                .unwrap_or_else(|| panic!("{r} does not resolve"))
                .clone(),
            None => v.clone(),
        }
    };
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name.trim_start_matches("#/components/schemas/")),
            "{name} does not resolve"
        );
    }
    let has_fields =
        |s: &Value| s["properties"].is_object() || s["allOf"].is_array() || s["type"] == "array";
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if ["post", "patch", "put"].contains(&method.as_str()) {
                if let Some(body) = op.pointer("/requestBody/content/application~1json/schema") {
                    assert!(has_fields(&resolve(body)), "{method} {path}: {body}");
                }
            }
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status == "204" {
                    continue;
                }
                let schema = answer
                    .pointer("/content/application~1json/schema")
                    .unwrap_or_else(|| panic!("{method} {path} {status} has no schema"));
                assert!(
                    has_fields(&resolve(schema)),
                    "{method} {path} {status}: {schema}"
                );
            }
        }
    }
    // Query parameters come from the types the lists parse them into.
    let names = |p: &str| -> Vec<String> {
        paths[p]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                format!(
                    "{}:{}",
                    x["in"].as_str().unwrap(),
                    x["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let sessions = names("/v1/zones/{zone}/sessions");
    for n in [
        "query:parent_id",
        "query:label",
        "query:cursor",
        "path:zone",
    ] {
        assert!(sessions.contains(&n.to_owned()), "{n} in {sessions:?}");
    }
    assert!(names("/v1/zones").contains(&"query:limit".to_owned()));
    let provider = resolve(&create["requestBody"]["content"]["application/json"]["schema"]);
    assert!(provider["properties"]["config_json"].is_object());
    let answer = resolve(&create["responses"]["201"]["content"]["application/json"]["schema"]);
    assert!(answer.to_string().contains("\"secret_config_keys\""));

    // Every documented operation is a served route (not the router's 404/405).
    let (_, z) = admin.post("/v1/zones", json!({"name": "docs"})).await;
    let zone = z["id"].as_str().unwrap();
    let mut n = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let concrete = path
                .replace("{zone}", zone)
                .replace("{id}", "missing")
                .replace("{version}", "missing");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
            let (s, e) = admin.call(m.clone(), &concrete, body).await;
            assert!(
                s != 405 && e != json!({"error": "not_found"}),
                "{method} {path} is documented but not served: {s} {e}"
            );
            n += 1;
        }
    }
    assert!(n >= 55, "{n} operations");
}
