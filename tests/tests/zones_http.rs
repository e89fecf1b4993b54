//! The zone lifecycle over HTTP against the real binary (management-api.md §5).

mod common;

use common::{Admin, Options, Server};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn zone_lifecycle_create_get_list_patch_delete() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);

    let (s, z) = admin
        .post(
            "/v1/zones",
            json!({"name": "  Payments Team  ", "dcr_enabled": true}),
        )
        .await;
    assert_eq!(s, 201, "{z}");
    let id = z["id"].as_str().unwrap().to_owned();
    assert_eq!(z["name"], "Payments Team");
    assert_eq!(z["slug"], "payments-team");
    assert_eq!(z["dcr_enabled"], true);
    assert_eq!(z["operator_coauthor_badge"], true);
    assert_eq!(z["operator_governed"], false);
    assert!(z["created_by"].as_str().unwrap().starts_with("admin:"));
    assert!(z["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        z["created_at"].as_str().unwrap().len(),
        "2026-08-01T09:30:00.000Z".len()
    );

    let (s, got) = admin.get(&format!("/v1/zones/{id}")).await;
    assert_eq!((s, &got), (200, &z));

    // A second zone with the same name gets the next generated slug.
    let (s, z2) = admin
        .post("/v1/zones", json!({"name": "Payments team"}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(z2["slug"], "payments-team-2");

    let (s, st) = admin.get(&format!("/v1/zones/{id}/dcr-status")).await;
    assert_eq!(s, 200);
    assert_eq!(
        st,
        json!({"id": id, "dcr_enabled": true, "live_dcr_applications": 0})
    );

    let (s, p) = admin
        .patch(
            &format!("/v1/zones/{id}"),
            json!({"name": "Payments", "operator_governed": true}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["name"], "Payments");
    assert_eq!(p["operator_governed"], true);
    assert_eq!(p["slug"], "payments-team");
    assert_eq!(p["created_at"], z["created_at"]);

    // Disabling DCR with nothing live records the no_live shutdown and ignores operator flags.
    let (s, p) = admin
        .patch(
            &format!("/v1/zones/{id}"),
            json!({"dcr_enabled": false, "operator_governed": false}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(p["dcr_enabled"], false);
    assert_eq!(p["operator_governed"], true);

    let (s, body) = admin.delete(&format!("/v1/zones/{id}")).await;
    assert_eq!((s, body), (204, serde_json::Value::Null));
    let (s, e) = admin.get(&format!("/v1/zones/{id}")).await;
    assert_eq!((s, e), (404, json!({"error": "zone_not_found"})));
    let (s, e) = admin.delete(&format!("/v1/zones/{id}")).await;
    assert_eq!((s, e), (404, json!({"error": "zone_not_found"})));
    let (s, e) = admin
        .patch(&format!("/v1/zones/{id}"), json!({"name": "x"}))
        .await;
    assert_eq!((s, e), (404, json!({"error": "zone_not_found"})));
    let (_, list) = admin.get("/v1/zones").await;
    let ids: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![z2["id"].clone()],
        "archived zones leave the default list"
    );

    // Slugs stay unique across archived zones.
    let (s, e) = admin
        .post(
            "/v1/zones",
            json!({"name": "again", "slug": "payments-team"}),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(e["error"], "zone_slug_conflict");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_paginates_newest_first_to_the_end() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let mut created = Vec::new();
    for i in 0..7 {
        let (s, z) = admin
            .post("/v1/zones", json!({"name": format!("zone {i}")}))
            .await;
        assert_eq!(s, 201);
        created.push(z["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/zones?limit=3".to_owned(),
            Some(c) => format!("/v1/zones?limit=3&cursor={c}"),
        };
        let (s, page) = admin.get(&path).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        seen.extend(items.iter().map(|z| z["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), 3, "a cursor only comes with a full page");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each zone once");

    // Exactly full last page yields one extra empty page.
    let (_, p) = admin.get("/v1/zones?limit=7").await;
    let (_, last) = admin
        .get(&format!(
            "/v1/zones?limit=7&cursor={}",
            p["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(last, json!({"items": [], "next_cursor": null}));

    for bad in ["0", "501", "abc", "-1"] {
        let (s, e) = admin.get(&format!("/v1/zones?limit={bad}")).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (400, Some("invalid_query")),
            "limit={bad}"
        );
    }
    let (s, e) = admin.get("/v1/zones?cursor=%25%25garbage").await;
    assert_eq!((s, e), (400, json!({"error": "invalid_cursor"})));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_refused_with_documented_errors_and_writes_nothing() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let cases = [
        json!({}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(121)}),
        json!({"name": 5}),
        json!({"name": "ok", "slug": "Not_Valid"}),
        json!({"name": "ok", "slug": ""}),
        json!({"name": "ok", "dcr_enabled": "yes"}),
        json!({"name": "ok", "unknown": 1}),
        json!({"name": "ok", "slug": null}),
        json!(["name"]),
    ];
    for body in cases {
        let (s, e) = admin.post("/v1/zones", body.clone()).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(e["error"], "invalid_zone", "{body}");
    }
    let resp = admin
        .req(Method::POST, "/v1/zones")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = admin
        .req(Method::POST, "/v1/zones")
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = admin
        .req(Method::POST, "/v1/zones")
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{}\"}}", "x".repeat(1_100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let (_, list) = admin.get("/v1/zones").await;
    assert_eq!(list["items"], json!([]), "nothing was written");
    // Refusals are recorded in the admin audit (§14.2); nothing else was written.
    let written: Vec<_> = common::system_log(&server)
        .await
        .into_iter()
        .map(|r| r.envelope.event_type)
        .filter(|t| !t.starts_with("admin_audit."))
        .collect();
    let n = written.len();
    assert_eq!(n, 1, "only the bootstrap token event is in the log");

    let (s, z) = admin.post("/v1/zones", json!({"name": "target"})).await;
    assert_eq!(s, 201);
    let id = z["id"].as_str().unwrap();
    let (s, e) = admin.patch(&format!("/v1/zones/{id}"), json!({})).await;
    assert_eq!((s, e), (400, json!({"error": "no_fields"})));
    let (s, e) = admin
        .patch(
            &format!("/v1/zones/{id}"),
            json!({"dcr_shutdown": "keep_live"}),
        )
        .await;
    assert_eq!(
        (s, e),
        (400, json!({"error": "dcr_shutdown_not_applicable"}))
    );
    let (s, e) = admin
        .patch(
            &format!("/v1/zones/{id}"),
            json!({"dcr_shutdown": "sometimes", "dcr_enabled": false}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_zone")));
    let (s, e) = admin
        .patch(&format!("/v1/zones/{id}"), json!({"bogus": true}))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_zone")));
    let (s, e) = admin.get("/v1/zones/bad%20id").await;
    assert_eq!((s, e), (400, json!({"error": "invalid_params"})));
    let (s, e) = admin.get(&format!("/v1/zones/{}", "a".repeat(129))).await;
    assert_eq!((s, e), (400, json!({"error": "invalid_params"})));
    let (s, e) = admin
        .get("/v1/zones/00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!((s, e), (404, json!({"error": "zone_not_found"})));
    let (s, e) = admin
        .get("/v1/zones/00000000-0000-7000-8000-000000000000/dcr-status")
        .await;
    assert_eq!((s, e), (404, json!({"error": "zone_not_found"})));

    // Reserved namespace: only the bootstrap token.
    let (s, t) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "ops", "scope": "global"}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let ops = admin.with_token(t["token"].as_str().unwrap());
    let (s, e) = ops
        .post("/v1/zones", json!({"name": "caracal.sys/ops"}))
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("reserved_namespace")));
    let (s, e) = ops
        .patch(&format!("/v1/zones/{id}"), json!({"slug": "caracal-sys-x"}))
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("reserved_namespace")));
    let (s, sys) = admin
        .post("/v1/zones", json!({"name": "caracal.sys/platform"}))
        .await;
    assert_eq!(s, 201, "{sys}");
    let sys_id = sys["id"].as_str().unwrap();
    let (_, list) = ops.get("/v1/zones").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|z| z["id"] != sys["id"]),
        "system zone hidden from lists"
    );
    let (s, _) = ops.get(&format!("/v1/zones/{sys_id}")).await;
    assert_eq!(s, 200, "system zone readable by id");
    let (s, e) = ops
        .patch(&format!("/v1/zones/{sys_id}"), json!({"name": "x"}))
        .await;
    assert_eq!((s, e), (403, json!({"error": "system_zone_read_only"})));
    // Percent-encoding the zone id names the same zone (the router decodes it).
    let encoded: String = sys_id.bytes().map(|b| format!("%{b:02X}")).collect();
    let (s, e) = ops
        .patch(&format!("/v1/zones/{encoded}"), json!({"name": "x"}))
        .await;
    assert_eq!((s, e), (403, json!({"error": "system_zone_read_only"})));
    let (s, z) = admin.get(&format!("/v1/zones/{sys_id}")).await;
    assert_eq!((s, &z["name"]), (200, &json!("caracal.sys/platform")));

    // Slug clash on PATCH is a 409, not a 500.
    let (_, other) = admin.post("/v1/zones", json!({"name": "other"})).await;
    let (s, e) = admin
        .patch(&format!("/v1/zones/{id}"), json!({"slug": other["slug"]}))
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("zone_slug_conflict")));
    // ...and the old slug is released when a PATCH changes it.
    let (s, _) = admin
        .patch(&format!("/v1/zones/{id}"), json!({"slug": "renamed"}))
        .await;
    assert_eq!(s, 200);
    let (s, z3) = admin.post("/v1/zones", json!({"name": "target"})).await;
    assert_eq!((s, z3["slug"].as_str()), (201, Some("target")));
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_authorization_matrix() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let (s, z) = admin.post("/v1/zones", json!({"name": "mine"})).await;
    assert_eq!(s, 201);
    let zid = z["id"].as_str().unwrap().to_owned();
    let (_, other) = admin.post("/v1/zones", json!({"name": "theirs"})).await;
    let other_id = other["id"].as_str().unwrap().to_owned();

    let anon = admin
        .http
        .get(format!("{}/v1/zones", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(
        anon.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "invalid_admin_token"})
    );
    let (s, e) = admin.with_token("cat_nope").get("/v1/zones").await;
    assert_eq!((s, e), (401, json!({"error": "invalid_admin_token"})));
    let lower = admin
        .http
        .get(format!("{}/v1/zones", admin.base))
        .header("authorization", format!("bearer {}", admin.token))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 401, "the Bearer prefix is case-sensitive");

    let (s, t) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "reader", "scope": "global", "capability": "read"}),
        )
        .await;
    assert_eq!(s, 201);
    assert!(t["token"].as_str().unwrap().starts_with("cat_"));
    let reader = admin.with_token(t["token"].as_str().unwrap());
    assert_eq!(reader.get("/v1/zones").await.0, 200);
    let (s, e) = reader.post("/v1/zones", json!({"name": "nope"})).await;
    assert_eq!((s, e), (403, json!({"error": "admin_token_read_only"})));

    let (s, t) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "zoned", "scope": "zone", "zone_id": zid}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let zoned = admin.with_token(t["token"].as_str().unwrap());
    let zoned_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(zoned.get(&format!("/v1/zones/{zid}")).await.0, 200);
    assert_eq!(
        zoned
            .patch(&format!("/v1/zones/{zid}"), json!({"name": "renamed"}))
            .await
            .0,
        200
    );
    for (m, p) in [
        (Method::GET, format!("/v1/zones/{other_id}")),
        (Method::PATCH, format!("/v1/zones/{other_id}")),
        (Method::DELETE, format!("/v1/zones/{other_id}")),
        (Method::GET, "/v1/zones".to_owned()),
        (Method::POST, "/v1/zones".to_owned()),
        (Method::GET, "/v1/admin-tokens".to_owned()),
    ] {
        let (s, e) = zoned.call(m.clone(), &p, Some(json!({"name": "x"}))).await;
        assert_eq!(
            (s, e),
            (403, json!({"error": "admin_token_zone_mismatch"})),
            "{m} {p}"
        );
    }

    let (s, e) = admin
        .post("/v1/admin-tokens", json!({"name": "z", "scope": "zone"}))
        .await;
    assert_eq!((s, e), (400, json!({"error": "zone_id_required"})));
    let (s, e) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "z", "scope": "global", "zone_id": zid}),
        )
        .await;
    assert_eq!(
        (s, e),
        (400, json!({"error": "zone_id_not_allowed_for_global"}))
    );

    // Revocation is an event and takes effect.
    assert_eq!(
        admin
            .delete(&format!("/v1/admin-tokens/{zoned_id}"))
            .await
            .0,
        204
    );
    let revoked = common::eventually(10, || async {
        let (s, _) = zoned.get(&format!("/v1/zones/{zid}")).await;
        (s == 401).then_some(())
    });
    revoked.await;
    let (s, e) = admin.delete(&format!("/v1/admin-tokens/{zoned_id}")).await;
    assert_eq!((s, e), (404, json!({"error": "admin_token_not_found"})));
    let (s, list) = admin.get("/v1/admin-tokens").await;
    assert_eq!(s, 200);
    let row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == zoned_id.as_str())
        .unwrap()
        .clone();
    assert!(row["revoked_at"].is_string());
    assert!(row.get("token").is_none() && !row.to_string().contains("token_sha256"));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_headers_and_read_your_writes() {
    // The STS where the Gateway looks for it: its `/ready` checks the STS's `/health`.
    let (server, _) = common::runtime::server().await;
    let admin = Admin::new(&server);
    let resp = admin
        .req(Method::GET, "/v1/zones")
        .header("x-request-id", "req-abc.1:2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-abc.1:2");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let resp = admin
        .req(Method::GET, "/v1/zones")
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    let minted = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&minted).is_ok());
    let head = admin.req(Method::HEAD, "/v1/zones").send().await.unwrap();
    assert_eq!(head.status(), 200);
    for svc in ["api", "coordinator", "sts", "gateway", "audit"] {
        let r = reqwest::get(format!("{}/health", server.url(svc)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{svc}");
        assert!(r.headers().contains_key("x-request-id"));
        let r = reqwest::get(format!("{}/ready", server.url(svc)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{svc}");
        let r = reqwest::get(format!("{}/metrics", server.url(svc)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{svc}");
        let text = r.text().await.unwrap();
        assert!(text.contains("serval_projection_lag_milliseconds"), "{svc}");
        let r = reqwest::get(format!("{}/nope", server.url(svc)))
            .await
            .unwrap();
        // The Gateway proxies every other path: without a mandate it is refused.
        let expected = if svc == "gateway" { 401 } else { 404 };
        assert_eq!(r.status(), expected, "{svc}");
    }

    // A write followed at once by a read always sees it.
    for i in 0..25 {
        let (s, z) = admin
            .post("/v1/zones", json!({"name": format!("ryw {i}")}))
            .await;
        assert_eq!(s, 201);
        let id = z["id"].as_str().unwrap();
        assert_eq!(admin.get(&format!("/v1/zones/{id}")).await.0, 200);
        let (_, p) = admin
            .patch(
                &format!("/v1/zones/{id}"),
                json!({"name": format!("ryw {i}b")}),
            )
            .await;
        assert_eq!(p["name"], format!("ryw {i}b"));
        let (_, g) = admin.get(&format!("/v1/zones/{id}")).await;
        assert_eq!(g["name"], format!("ryw {i}b"));
        let (_, list) = admin.get("/v1/zones?limit=1").await;
        assert_eq!(list["items"][0]["id"], z["id"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_returns_the_first_answer() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let send = |name: &str| {
        admin
            .req(Method::POST, "/v1/zones")
            .header("idempotency-key", "create-ledger-1")
            .json(&json!({"name": name}))
            .send()
    };
    let first = send("ledger").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send("ledger").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first);
    let (_, list) = admin.get("/v1/zones").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "the retry created nothing"
    );
    let other = send("different").await.unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(
        other.json::<serde_json::Value>().await.unwrap()["error"],
        "idempotency_key_conflict"
    );
}
