//! Applications over HTTP against the real binary (management-api.md §6).

mod common;

use common::{Admin, Options, Server};
use serde_json::{json, Value};

async fn zone(admin: &Admin, dcr: bool) -> String {
    let (s, z) = admin
        .post("/v1/zones", json!({"name": "apps", "dcr_enabled": dcr}))
        .await;
    assert_eq!(s, 201, "{z}");
    z["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_application_lifecycle_and_secret_custody() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, false).await;
    let base = format!("/v1/zones/{z}/applications");

    let (s, app) = admin
        .post(
            &base,
            json!({"name": " invoice-agent ", "registration_method": "managed", "traits": ["team:billing"]}),
        )
        .await;
    assert_eq!(s, 201, "{app}");
    let id = app["id"].as_str().unwrap().to_owned();
    let secret = app["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("cs_") && secret.len() == 46, "{secret}");
    assert_eq!(app["name"], "invoice-agent");
    assert_eq!(app["registration_method"], "managed");
    assert_eq!(app["expires_at"], Value::Null);
    assert_eq!(app["updated_at"], Value::Null);
    assert_eq!(app["updated_by"], Value::Null);
    assert!(app.get("archived_at").is_none());
    assert_eq!(app["zone_id"], z.as_str());

    // GET: no secret; traits shown to the global token.
    let (s, got) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!(s, 200);
    assert!(got.get("client_secret").is_none());
    assert_eq!(got["traits"], json!(["team:billing"]));
    assert_eq!(got["archived_at"], Value::Null);

    // Duplicate managed name (case-insensitive) → 409.
    let (s, e) = admin
        .post(
            &base,
            json!({"name": "INVOICE-AGENT", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("application_name_taken"))
    );

    // The audited reveal returns the same secret.
    let (s, r) = admin.get(&format!("{base}/{id}/client-secret")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["client_secret"], secret.as_str());

    // Rotate: a new secret, revealed afterwards.
    let (s, rot) = admin
        .post(&format!("{base}/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(s, 200, "{rot}");
    let rotated = rot["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(rotated, secret);
    let (_, r) = admin.get(&format!("{base}/{id}/client-secret")).await;
    assert_eq!(r["client_secret"], rotated.as_str());

    // PATCH: name, caller-supplied secret; validation codes.
    let own = "s".repeat(40);
    let (s, p) = admin
        .patch(
            &format!("{base}/{id}"),
            json!({"name": "invoice-bot", "client_secret": own}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["name"], "invoice-bot");
    assert!(p.get("client_secret").is_none());
    assert!(p["updated_at"].is_string());
    let (_, r) = admin.get(&format!("{base}/{id}/client-secret")).await;
    assert_eq!(r["client_secret"], own.as_str());
    let (s, e) = admin.patch(&format!("{base}/{id}"), json!({})).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("no_fields")));
    let (s, e) = admin
        .patch(&format!("{base}/{id}"), json!({"client_secret": "short"}))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_application")));
    let (s, e) = admin
        .patch(&format!("{base}/{id}"), json!({"traits": ["x", "x"]}))
        .await;
    assert_eq!((s, e["error"].as_str()), (403, Some("trait_duplicate")));
    let (s, e) = admin
        .patch(&format!("{base}/{id}"), json!({"unknown": 1}))
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_application")));

    // The old name is free again after the rename.
    let (s, other) = admin
        .post(
            &base,
            json!({"name": "invoice-agent", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201, "{other}");

    // Archive: 204, then 404 everywhere; archived list shows it.
    let (s, _) = admin.delete(&format!("{base}/{id}")).await;
    assert_eq!(s, 204);
    let (s, e) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("application_not_found"))
    );
    let (s, _) = admin.delete(&format!("{base}/{id}")).await;
    assert_eq!(s, 404);
    let (s, e) = admin.get(&format!("{base}/{id}/client-secret")).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("application_not_found"))
    );
    let (_, arch) = admin.get(&format!("{base}?status=archived")).await;
    assert_eq!(arch["items"].as_array().unwrap().len(), 1);
    assert!(arch["items"][0]["archived_at"].is_string());
    let (s, e) = admin.get(&format!("{base}?status=nope")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_query")));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_validation_codes() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, false).await;
    let base = format!("/v1/zones/{z}/applications");
    let (s, tok) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "w", "scope": "global", "capability": "write"}),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let writer = admin.with_token(tok["token"].as_str().unwrap());
    for (body, status, code) in [
        (
            json!({"name": "a", "registration_method": "dcr"}),
            400,
            "invalid_application",
        ),
        (
            json!({"name": "", "registration_method": "managed"}),
            400,
            "invalid_application",
        ),
        (
            json!({"registration_method": "managed"}),
            400,
            "invalid_application",
        ),
        (
            json!({"name": "a", "registration_method": "managed", "x": 1}),
            400,
            "invalid_application",
        ),
        (
            json!({"name": "a", "registration_method": "managed", "traits": ["1bad"]}),
            403,
            "trait_invalid",
        ),
        (
            json!({"name": "caracal.sys/a", "registration_method": "managed"}),
            409,
            "reserved_namespace",
        ),
    ] {
        let (s, e) = writer.post(&base, body.clone()).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{body}");
    }
    // A zone token may not use the control trait namespace; the bootstrap token may use
    // the reserved name prefix.
    let (_, zt) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "zw", "scope": "zone", "zone_id": z, "capability": "write"}),
        )
        .await;
    let zone_writer = admin.with_token(zt["token"].as_str().unwrap());
    let (s, e) = zone_writer
        .post(
            &base,
            json!({"name": "c", "registration_method": "managed", "traits": ["control:invoke"]}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (403, Some("trait_forbidden")));
    let (s, listed) = zone_writer.get(&base).await;
    assert_eq!(s, 200);
    assert!(listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a.get("traits").is_none()));
    let (s, _) = admin
        .post(
            &base,
            json!({"name": "caracal.sys/a", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, e) = admin
        .post(
            "/v1/zones/nope/applications",
            json!({"name": "a", "registration_method": "managed"}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (404, Some("zone_not_found")));

    // Pagination walked to the end: 5 apps, pages of 2 → 2 + 2 + 1.
    for i in 0..5 {
        let (s, _) = admin
            .post(
                &base,
                json!({"name": format!("app-{i}"), "registration_method": "managed"}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}?limit=2&cursor={c}"),
            None => format!("{base}?limit=2"),
        };
        let (s, page) = admin.get(&url).await;
        assert_eq!(s, 200);
        for it in page["items"].as_array().unwrap() {
            seen.push(it["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["app-4", "app-3", "app-2", "app-1", "app-0", "caracal.sys/a"]
    );
    let (s, e) = admin.get(&format!("{base}?cursor=!!")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_cursor")));
}

#[tokio::test(flavor = "multi_thread")]
async fn dcr_registration_and_zone_status() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let off = zone(&admin, false).await;
    let (s, e) = admin
        .post(
            &format!("/v1/zones/{off}/applications/dcr"),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (403, Some("dcr_disabled")));

    let z = zone(&admin, true).await;
    let url = format!("/v1/zones/{z}/applications/dcr");
    let (s, app) = admin
        .post(&url, json!({"name": "tmp", "expires_in": 600}))
        .await;
    assert_eq!(s, 201, "{app}");
    assert_eq!(app["registration_method"], "dcr");
    assert_eq!(app["traits"], json!([]));
    assert!(app["client_secret"].as_str().unwrap().starts_with("cs_"));
    let expires =
        chrono::DateTime::parse_from_rfc3339(app["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((590..=601).contains(&left), "{left}");
    for (body, code) in [
        (json!({"name": "x", "expires_in": 0}), "invalid_application"),
        (
            json!({"name": "x", "expires_in": 3601}),
            "invalid_application",
        ),
        (json!({"name": "x", "extra": true}), "invalid_application"),
    ] {
        let (s, e) = admin.post(&url, body).await;
        assert_eq!((s, e["error"].as_str()), (400, Some(code)));
    }
    // DCR secrets are returned once only: no custody copy.
    let id = app["id"].as_str().unwrap();
    let (s, e) = admin
        .get(&format!("/v1/zones/{z}/applications/{id}/client-secret"))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("client_secret_not_stored"))
    );

    let (_, st) = admin.get(&format!("/v1/zones/{z}/dcr-status")).await;
    assert_eq!(st["live_dcr_applications"], 1);
    // Turning DCR off now needs a shutdown mode.
    let (s, e) = admin
        .patch(&format!("/v1/zones/{z}"), json!({"dcr_enabled": false}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("dcr_shutdown_required"))
    );

    // More than 10 registrations per second per zone and actor → 429 (sent at once: the
    // check comes before the costly hashing).
    let burst = (0..14).map(|i| {
        let (admin, url) = (admin.clone(), url.clone());
        async move {
            admin
                .post(&url, json!({"name": format!("burst-{i}")}))
                .await
        }
    });
    let answers = futures::future::join_all(burst).await;
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!limited.is_empty(), "the DCR burst was never limited");
    assert!(limited
        .iter()
        .all(|(_, e)| e["error"] == "dcr_rate_limit_exceeded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reveal_is_published_as_a_signed_credential_revealed_audit_frame() {
    use hmac::{Hmac, Mac};
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, false).await;
    let (_, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "revealed", "registration_method": "managed"}),
        )
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    let resp = admin
        .req(
            reqwest::Method::GET,
            &format!("/v1/zones/{z}/applications/{id}/client-secret"),
        )
        .header("x-request-id", "reveal-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let revealed: Value = resp.json().await.unwrap();
    let secret = revealed["client_secret"].as_str().unwrap().to_owned();

    let store = server.store().await;
    let topic = format!("{}:caracal.audit.events", server.prefix);
    let frames = common::eventually(10, || {
        let mut conn = store.connection();
        let topic = topic.clone();
        async move {
            let v = serval_streams::read::read_range(&mut conn, &topic, "-", "+", 100)
                .await
                .unwrap();
            (!v.is_empty()).then_some(v)
        }
    })
    .await;
    assert_eq!(frames.len(), 1);
    let field = |name: &str| {
        String::from_utf8(
            serval_streams::read::field_bytes(&frames[0].1, name)
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(field("id"), "reveal-req-1");
    let data = field("data");
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(&server.keys.audit).unwrap()).unwrap();
    mac.update(data.as_bytes());
    assert_eq!(field("sig"), hex::encode(mac.finalize().into_bytes()));
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["event_type"], "credential_revealed");
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["zone_id"], z.as_str());
    assert_eq!(event["request_id"], "reveal-req-1");
    assert_eq!(event["metadata_json"]["application_id"], id.as_str());
    assert_eq!(event["metadata_json"]["credential"], "client_secret");
    assert!(event["metadata_json"]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin:"));
    assert!(
        !data.contains(&secret),
        "the secret itself is not in the frame"
    );
    assert!(!field("outbox_id").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_secret_reveal_is_recorded_even_under_one_idempotency_key() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, false).await;
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "reveal-twice", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let path = format!(
        "/v1/zones/{z}/applications/{}/client-secret",
        a["id"].as_str().unwrap()
    );
    for _ in 0..2 {
        let r = admin
            .req(reqwest::Method::GET, &path)
            .header("idempotency-key", "same-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    // Two reveals, two `credential_revealed` records in the zone's audit ledger.
    common::eventually(20, || async {
        let (_, v) = admin
            .get(&format!(
                "/v1/zones/{z}/audit?event_type=credential_revealed"
            ))
            .await;
        (v["items"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
}

/// Issue 14 item 2: an idempotency record is named by the authenticated token (not by the
/// attribution header the client chooses) and never holds the client secret.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_records_hold_no_secret_and_belong_to_their_token() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, false).await;
    let (s, other) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "other", "scope": "global"}),
        )
        .await;
    assert_eq!(s, 201, "{other}");
    let other = admin.with_token(other["token"].as_str().unwrap());
    let path = format!("/v1/zones/{z}/applications");
    let body = json!({"name": "idem-secret", "registration_method": "managed"});
    let create = |who: &Admin| {
        who.req(reqwest::Method::POST, &path)
            .header("idempotency-key", "create-idem-secret")
            .header("x-caracal-authorized-by", "user:alice@example.com")
            .json(&body)
            .send()
    };
    let first = create(&admin).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let secret = first["client_secret"].as_str().unwrap().to_owned();

    // The retry answers the first answer without the secret.
    let again = create(&admin).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert!(again.get("client_secret").is_none(), "{again}");

    // Another token with the same key and attribution header does not reach the record: it
    // creates its own application (a different name is then a conflict on the name).
    let theirs = create(&other).await.unwrap();
    assert_ne!(
        theirs
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let theirs = theirs.text().await.unwrap();
    assert!(!theirs.contains(&secret), "{theirs}");

    // No Redis value holds the secret.
    let store = server.store().await;
    let mut conn = store.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*:idem:*", server.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let v: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        assert!(!v.values().any(|x| x.contains(&secret)), "{key}: {v:?}");
    }
}
