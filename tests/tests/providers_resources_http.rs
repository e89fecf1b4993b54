//! Providers (§7) and resources (§8) over HTTP against the real binary.

mod common;

use common::{Admin, Server};
use serde_json::{json, Value};

async fn zone(admin: &Admin) -> String {
    let (s, z) = admin.post("/v1/zones", json!({"name": "catalog"})).await;
    assert_eq!(s, 201, "{z}");
    z["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_kinds_sealing_and_lifecycle() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin).await;
    let base = format!("/v1/zones/{z}/providers");

    let (s, p) = admin
        .post(
            &base,
            json!({"name": "Stripe API", "kind": "api_key",
                   "config_json": {"api_key": "sk_live_SECRET123", "header_name": "X-Api-Key"}}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(p["identifier"], "provider://stripe-api");
    assert_eq!(p["kind"], "api_key");
    assert_eq!(
        p["config_json"],
        json!({"header_name": "X-Api-Key", "auth_location": "header"})
    );
    assert_eq!(p["secret_config_keys"], json!(["api_key"]));
    assert_eq!(p["connectivity_failed_at"], Value::Null);
    assert!(!p.to_string().contains("sk_live_SECRET123"));

    // Derived identifiers take the next suffix; explicit clashes are 409.
    let (s, p2) = admin
        .post(&base, json!({"name": "stripe api", "kind": "none"}))
        .await;
    assert_eq!(s, 201, "{p2}");
    assert_eq!(p2["identifier"], "provider://stripe-api-2");
    let (s, e) = admin
        .post(
            &base,
            json!({"identifier": "provider://stripe-api", "kind": "none"}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("provider_identifier_conflict"))
    );

    // OAuth providers without a check are stamped unverified; defaults are written back.
    let (s, o) = admin
        .post(
            &base,
            json!({"identifier": "provider://idp", "kind": "oauth2_client_credentials",
                   "config_json": {"token_endpoint": "https://idp.example.com/token",
                                   "client_id": "c1", "client_secret": "topsecret-value"}}),
        )
        .await;
    assert_eq!(s, 201, "{o}");
    assert_eq!(o["name"], "provider://idp");
    assert!(o["connectivity_failed_at"].is_string());
    assert_eq!(
        o["config_json"]["allowed_token_hosts"],
        json!(["idp.example.com"])
    );
    assert_eq!(
        o["config_json"]["client_auth_method"],
        "client_secret_basic"
    );

    for (body, status, code) in [
        (json!({"kind": "none"}), 400, "invalid_provider"),
        (
            json!({"name": "x", "kind": "smoke_signals"}),
            400,
            "invalid_provider",
        ),
        (
            json!({"identifier": "github", "kind": "none"}),
            400,
            "invalid_provider_identifier",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"header_name": "X-K"}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "bearer_token", "config_json": {"bearer_token": "Bearer abc"}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "none", "config_json": {"extra": 1}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "none", "check": true}),
            400,
            "provider_check_unsupported",
        ),
    ] {
        let (s, e) = admin.post(&base, body.clone()).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{body}");
    }

    // PATCH: config without secrets keeps the sealed document; kind needs config.
    let (s, u) = admin
        .patch(
            &format!("{base}/{id}"),
            json!({"config_json": {"header_name": "X-Key-2"}}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["config_json"]["header_name"], "X-Key-2");
    assert_eq!(u["secret_config_keys"], json!(["api_key"]));
    let (s, e) = admin
        .patch(&format!("{base}/{id}"), json!({"kind": "none"}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("provider_config_required"))
    );
    let (s, e) = admin.patch(&format!("{base}/{id}"), json!({})).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("no_fields")));
    let (s, u) = admin
        .patch(
            &format!("{base}/{id}"),
            json!({"kind": "none", "config_json": {}}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["secret_config_keys"], json!([]));

    let (s, _) = admin.delete(&format!("{base}/{id}")).await;
    assert_eq!(s, 204);
    let (s, e) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("provider_not_found")));
    // The identifier is free again once archived.
    let (s, _) = admin
        .post(
            &base,
            json!({"identifier": "provider://stripe-api", "kind": "none"}),
        )
        .await;
    assert_eq!(s, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_scopes_operations_and_provider_binding() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin).await;
    let (_, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "upstream", "kind": "caracal_mandate"}),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{z}/resources");

    let (s, r) = admin
        .post(
            &base,
            json!({"name": "Billing API", "scopes": ["invoices:read", "invoices:write"],
                   "upstream_url": "https://billing.internal", "credential_provider_id": pid,
                   "operations": [{"method": "get", "path": "/invoices", "scope": "invoices:read"}]}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["identifier"], "resource://billing-api");
    assert_eq!(r["operations"][0]["method"], "GET");
    assert_eq!(r["operation_enforcement"], "enforced");

    let ok = |extra: Value| {
        let mut b = json!({"name": "n", "scopes": ["s"], "upstream_url": "https://u.example",
                           "credential_provider_id": pid});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, status, code) in [
        (json!({"name": "n"}), 400, "invalid_resource"),
        (
            json!({"name": "n", "scopes": ["s"], "upstream_url": "https://u.example"}),
            400,
            "credential_provider_required",
        ),
        (
            json!({"name": "n", "scopes": ["s"], "credential_provider_id": pid}),
            400,
            "upstream_url_required",
        ),
        (
            ok(json!({"credential_provider_id": "missing"})),
            404,
            "provider_not_found",
        ),
        (
            ok(json!({"identifier": "provider://x"})),
            400,
            "invalid_resource_identifier",
        ),
        (
            ok(json!({"identifier": "resource://billing-api"})),
            409,
            "resource_identifier_conflict",
        ),
        (
            ok(json!({"operations": [{"method": "GET", "path": "x", "scope": "s"}]})),
            400,
            "operation_path_must_be_absolute",
        ),
        (
            ok(json!({"operations": [{"method": "GET", "path": "/x", "scope": "t"}]})),
            400,
            "operation_scope_not_in_resource_scopes",
        ),
        (
            ok(
                json!({"operations": [{"method": "GET", "path": "/x", "scope": "s"}, {"method": "get", "path": "/x", "scope": "s"}]}),
            ),
            400,
            "operation_duplicate",
        ),
        (
            ok(json!({"operations": [{"method": "", "path": "", "scope": "s"}]})),
            400,
            "operation_method_and_path_required",
        ),
        (
            ok(json!({"operation_enforcement": "loose"})),
            400,
            "invalid_resource",
        ),
        (
            ok(json!({"upstream_url": "ftp://x"})),
            400,
            "invalid_resource",
        ),
    ] {
        let (s, e) = admin.post(&base, body.clone()).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{body}");
    }

    // PATCH re-validates operations against the effective scopes.
    let (s, e) = admin
        .patch(&format!("{base}/{id}"), json!({"scopes": ["other"]}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("operation_scope_not_in_resource_scopes"))
    );
    let (s, u) = admin
        .patch(
            &format!("{base}/{id}"),
            json!({"scopes": ["invoices:read"], "name": "Billing"}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["scopes"], json!(["invoices:read"]));
    assert_eq!(u["name"], "Billing");
    let (s, e) = admin.patch(&format!("{base}/{id}"), json!({})).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("no_fields")));

    let (s, list) = admin.get(&base).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (s, _) = admin.delete(&format!("{base}/{id}")).await;
    assert_eq!(s, 204);
    let (s, e) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("resource_not_found")));
    let (_, arch) = admin.get(&format!("{base}?status=archived")).await;
    assert_eq!(arch["items"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_byte_secret_is_sealed_not_a_dropped_connection() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin).await;
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "utf8", "kind": "bearer_token",
                   "config_json": {"bearer_token": "abcdefé1"}}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
}

/// §8: the control resource (identifier `CONTROL_AUDIENCE`) is created and edited by global
/// tokens only, invisible to zone tokens, never deleted, and bound to the zone's synthetic
/// "no credential" provider, which is itself protected.
#[tokio::test(flavor = "multi_thread")]
async fn the_control_resource_is_global_only_undeletable_and_bound_to_the_none_provider() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin).await;
    let base = format!("/v1/zones/{z}/resources");
    let none = format!("provider-none-{z}");
    let (s, t) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "zone-writer", "scope": "zone", "zone_id": z, "capability": "write"}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let zoned = admin.with_token(t["token"].as_str().unwrap());
    let control = json!({"identifier": "caracal-control", "scopes": ["control:invoke"]});
    let protected = |v: &Value| v["error"] == "protected_resource";

    // A zone token may not create it, and its refusal creates nothing.
    let (s, e) = zoned.post(&base, control.clone()).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    let (s, _) = admin.get(&format!("/v1/zones/{z}/providers/{none}")).await;
    assert_eq!(s, 404, "nothing was created for the refused request");
    // Until it exists, the synthetic id is answered like any other unknown provider.
    let (s, e) = admin
        .patch(
            &format!("/v1/zones/{z}/providers/{none}"),
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = admin
        .delete(&format!("/v1/zones/{z}/providers/{none}"))
        .await;
    assert_eq!(s, 404, "{e}");
    // A body binding it to another provider is refused before anything is written.
    let (_, other) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "upstream", "kind": "caracal_mandate"}),
        )
        .await;
    let other = other["id"].as_str().unwrap().to_owned();
    let mut bound = control.clone();
    bound["credential_provider_id"] = json!(other);
    let (s, e) = admin.post(&base, bound).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    // A global create refused by a later check leaves no provider behind either.
    let mut bad = control.clone();
    bad["operations"] = json!([{"method": "GET", "path": "/x", "scope": "not:declared"}]);
    let (s, e) = admin.post(&base, bad).await;
    assert_eq!(
        (s, &e["error"]),
        (400, &json!("operation_scope_not_in_resource_scopes"))
    );
    let (s, _) = admin.get(&format!("/v1/zones/{z}/providers/{none}")).await;
    assert_eq!(s, 404);
    // Nobody else takes the synthetic provider's identifier, explicitly or derived.
    let (s, e) = zoned
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"identifier": "provider://none", "kind": "none"}),
        )
        .await;
    assert_eq!(
        (s, &e["error"]),
        (409, &json!("provider_identifier_conflict"))
    );
    let (s, p) = zoned
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "none", "kind": "none"}),
        )
        .await;
    assert_eq!(
        (s, &p["identifier"]),
        (201, &json!("provider://none-2")),
        "{p}"
    );

    // A global token creates it: no upstream, bound to the synthetic provider.
    let (s, r) = admin.post(&base, control.clone()).await;
    assert_eq!(s, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["identifier"], "caracal-control");
    assert_eq!(r["credential_provider_id"], json!(none));
    assert_eq!(r["upstream_url"], Value::Null);
    let (s, p) = admin.get(&format!("/v1/zones/{z}/providers/{none}")).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (&p["name"], &p["identifier"], &p["kind"]),
        (
            &json!("No credential"),
            &json!("provider://none"),
            &json!("none")
        )
    );
    // The request's admin-audit record is the resource's; the provider's write has none.
    let trail = |entity: String| {
        let admin = admin.clone();
        let path = format!("/v1/zones/{z}/admin-audit?entity_id={entity}");
        async move {
            let (s, t) = admin.get(&path).await;
            assert_eq!(s, 200, "{t}");
            t["items"].as_array().unwrap().clone()
        }
    };
    let records = trail(id.clone()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (&records[0]["method"], &records[0]["status_code"]),
        (&json!("POST"), &json!(201))
    );
    let writes: Vec<Value> = trail(none.clone())
        .await
        .into_iter()
        .filter(|r| r["method"] != "GET")
        .collect();
    let outcomes: Vec<(&Value, &Value)> = writes
        .iter()
        .map(|r| (&r["method"], &r["status_code"]))
        .collect();
    assert_eq!(
        outcomes,
        [
            (&json!("DELETE"), &json!(404)),
            (&json!("PATCH"), &json!(404))
        ],
        "besides reads, only the writes tried before it existed name it"
    );
    // One per zone.
    let (s, e) = admin.post(&base, control.clone()).await;
    assert_eq!(
        (s, &e["error"]),
        (409, &json!("resource_identifier_conflict"))
    );

    // Zone tokens do not see it; global tokens do.
    let (s, ordinary) = zoned
        .post(
            &base,
            json!({"name": "billing", "scopes": ["s"], "upstream_url": "https://u.example",
                   "credential_provider_id": other}),
        )
        .await;
    assert_eq!(s, 201, "{ordinary}");
    let ordinary = ordinary["id"].as_str().unwrap().to_owned();
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = zoned.get(&base).await;
    assert_eq!(ids(&list), vec![ordinary.clone()]);
    let (_, list) = admin.get(&base).await;
    assert_eq!(ids(&list), vec![ordinary.clone(), id.clone()]);
    let one = format!("{base}/{id}");
    // Grants never name it: hidden from zone tokens, refused for global ones.
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "agent", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let grant = json!({"application_id": a["id"], "user_id": "u1", "resource_id": id,
                       "scopes": ["control:invoke"]});
    let grants = format!("/v1/zones/{z}/grants");
    let (s, e) = zoned.post(&grants, grant.clone()).await;
    assert_eq!((s, &e["error"]), (404, &json!("resource_not_found")));
    let (s, e) = admin.post(&grants, grant).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    for (s, e) in [
        zoned.get(&one).await,
        zoned.patch(&one, json!({"name": "mine"})).await,
        zoned.delete(&one).await,
        zoned
            .call(reqwest::Method::POST, &format!("{one}/test"), None)
            .await,
    ] {
        assert_eq!((s, &e["error"]), (404, &json!("resource_not_found")));
    }
    // Nor its provider, whose existence would tell the row exists.
    let none_path = format!("/v1/zones/{z}/providers/{none}");
    for (s, e) in [
        zoned.get(&none_path).await,
        zoned.patch(&none_path, json!({"name": "mine"})).await,
        zoned.delete(&none_path).await,
        zoned
            .call(reqwest::Method::POST, &format!("{none_path}/test"), None)
            .await,
    ] {
        assert_eq!((s, &e["error"]), (404, &json!("provider_not_found")));
    }
    let providers = format!("/v1/zones/{z}/providers?limit=500");
    let (_, zone_view) = zoned.get(&providers).await;
    let (_, global_view) = admin.get(&providers).await;
    assert!(!ids(&zone_view).contains(&none), "{zone_view}");
    assert!(ids(&global_view).contains(&none), "{global_view}");
    assert_eq!(ids(&zone_view).len() + 1, ids(&global_view).len());

    // Global tokens edit it, but never rename it or rebind it.
    let (s, r) = admin
        .patch(&one, json!({"scopes": ["control:invoke", "control:read"]}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["scopes"], json!(["control:invoke", "control:read"]));
    assert_eq!(r["credential_provider_id"], json!(none));
    for body in [
        json!({"identifier": "resource://renamed"}),
        json!({"credential_provider_id": other}),
        json!({"credential_provider_id": null}),
    ] {
        let (s, e) = admin.patch(&one, body.clone()).await;
        assert!(s == 409 && protected(&e), "{body}: {s} {e}");
    }
    let (s, e) = admin
        .patch(
            &format!("{base}/{ordinary}"),
            json!({"identifier": "caracal-control"}),
        )
        .await;
    assert!(s == 409 && protected(&e), "{s} {e}");

    // Nobody deletes it or its provider.
    let (s, e) = admin.delete(&one).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    let provider = format!("/v1/zones/{z}/providers/{none}");
    let (s, e) = admin.delete(&provider).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    let (s, e) = admin.patch(&provider, json!({"kind": "api_key"})).await;
    assert!(s == 409 && protected(&e), "{s} {e}");
    let (s, r) = admin.get(&one).await;
    assert_eq!((s, &r["archived_at"]), (200, &Value::Null));
    let (s, p) = admin.get(&provider).await;
    assert_eq!((s, &p["kind"]), (200, &json!("none")));
}
