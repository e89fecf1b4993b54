//! Grants (§12) over HTTP against the real binary.

mod common;

use common::{Admin, Options, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn grant_create_filters_and_revocation() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (_, z) = admin.post("/v1/zones", json!({"name": "grants"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let (_, app) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "bot", "registration_method": "managed"}),
        )
        .await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (_, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "up", "kind": "caracal_mandate"}),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/resources"),
            json!({"name": "docs", "scopes": ["docs:read", "docs:write"], "upstream_url": "https://docs.example",
                   "credential_provider_id": pid}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{z}/grants");

    let (s, g) = admin
        .post(&base, json!({"application_id": app_id, "user_id": "alice", "resource_id": rid, "scopes": ["docs:read"]}))
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["status"], "active");
    assert!(g.get("updated_at").is_none() && g.get("updated_by").is_none());
    let gid = g["id"].as_str().unwrap().to_owned();
    let (s, g2) = admin
        .post(&base, json!({"application_id": app_id, "user_id": "bob", "resource_id": rid, "scopes": ["docs:read", "docs:write"]}))
        .await;
    assert_eq!(s, 201, "{g2}");

    // Schema failures: invalid_body with details.issues.
    let (s, e) = admin
        .post(&base, json!({"application_id": app_id, "user_id": "", "resource_id": rid, "scopes": ["Bad Scope"]}))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_body")));
    let paths: Vec<String> = e["details"]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].to_string())
        .collect();
    assert!(
        paths.contains(&"[\"user_id\"]".to_string())
            && paths.contains(&"[\"scopes\",\"0\"]".to_string()),
        "{e}"
    );
    assert!(e["requestId"].is_string());
    for (body, status, code) in [
        (
            json!({"application_id": "nope", "user_id": "a", "resource_id": rid, "scopes": ["docs:read"]}),
            404,
            "application_not_found",
        ),
        (
            json!({"application_id": app_id, "user_id": "a", "resource_id": "nope", "scopes": ["docs:read"]}),
            404,
            "resource_not_found",
        ),
        (
            json!({"application_id": app_id, "user_id": "a", "resource_id": rid, "scopes": ["docs:admin"]}),
            403,
            "grant_scopes_exceed_resource",
        ),
    ] {
        let (s, e) = admin.post(&base, body.clone()).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{body}");
    }

    // List rows carry names; filters narrow.
    let (s, list) = admin.get(&base).await;
    assert_eq!(s, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["application_name"], "bot");
    assert_eq!(items[0]["resource_name"], "docs");
    assert_eq!(items[0]["provider_id"], pid.as_str());
    assert_eq!(items[0]["provider_kind"], "caracal_mandate");
    assert_eq!(items[0]["provider_name"], "up");
    let count = |q: &str| {
        let admin = admin.clone();
        let url = format!("{base}?{q}");
        async move {
            let (s, l) = admin.get(&url).await;
            assert_eq!(s, 200, "{url}: {l}");
            l["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("user_id=alice").await, 1);
    assert_eq!(count("subject_id=bob").await, 1);
    assert_eq!(count("user_id=alice&subject_id=bob").await, 1);
    assert_eq!(count("scopes=docs:read,docs:write").await, 1);
    assert_eq!(count("scopes=docs:read").await, 2);
    assert_eq!(count(&format!("provider_id={pid}")).await, 2);
    assert_eq!(count("provider_id=other").await, 0);
    assert_eq!(
        count(&format!("application_id={app_id}&resource_id={rid}")).await,
        2
    );
    let (s, e) = admin.get(&format!("{base}?status=bogus")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_query")));

    // Revocation is repeatable; the grant stays readable as revoked.
    let (s, _) = admin.delete(&format!("{base}/{gid}")).await;
    assert_eq!(s, 204);
    let (s, _) = admin.delete(&format!("{base}/{gid}")).await;
    assert_eq!(s, 204);
    let (s, g) = admin.get(&format!("{base}/{gid}")).await;
    assert_eq!((s, g["status"].as_str()), (200, Some("revoked")));
    assert_eq!(count("status=revoked").await, 1);
    assert_eq!(count("status=active").await, 1);
    let (s, e) = admin.delete(&format!("{base}/nope")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("grant_not_found")));
}
