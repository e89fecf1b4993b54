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
