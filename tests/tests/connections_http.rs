//! Provider connections (§13) over HTTP against the real binary, under both names.

mod common;

use common::{Admin, Server};
use serde_json::{json, Value};

async fn zone_with_provider(admin: &Admin, revocation: bool) -> (String, String) {
    let (_, z) = admin.post("/v1/zones", json!({"name": "conn"})).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let mut config = json!({
        "authorization_endpoint": "https://localhost/authorize",
        "token_endpoint": "https://localhost:1/token",
        "redirect_uri": "https://serval.example/callback",
        "client_id": "serval-client",
        "client_secret": "upstream-client-secret-0123456789",
        "scopes": ["repo", "user:email"],
        "authorization_params": {"prompt": "consent"},
    });
    if revocation {
        // Nothing listens on port 1: the upstream call fails and says so.
        config["revocation_endpoint"] = json!("https://localhost:1/revoke");
    }
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "GitHub", "kind": "oauth2_authorization_code", "config_json": config}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    (z, p["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_list_and_revoke_under_both_names() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let (z, pid) = zone_with_provider(&admin, true).await;
    let base = format!("/v1/zones/{z}/provider-connections");
    let seed = format!("/v1/zones/{z}/provider-grants");

    let (s, c) = admin
        .post(
            &base,
            json!({"provider_id": pid, "access_token": "gho_first-access-token",
                   "refresh_token": "ghr_first-refresh", "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["subject_id"], "caracal:shared");
    assert_eq!(c["status"], "active");
    assert_eq!(c["expires_at"], "2030-01-01T00:00:00.000Z");
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "expires_at",
            "id",
            "provider_id",
            "status",
            "subject_id",
            "updated_at",
            "zone_id"
        ]
    );
    let shared_id = c["id"].as_str().unwrap().to_owned();

    // Upsert (through the seed's name): the active row keeps its id, its tokens change.
    let (s, again) = admin
        .post(
            &seed,
            json!({"provider_id": pid, "access_token": "gho_second-access-token"}),
        )
        .await;
    assert_eq!(s, 201, "{again}");
    assert_eq!(again["id"], shared_id.as_str());
    assert_eq!(again["expires_at"], Value::Null);
    let (s, alice) = admin
        .post(
            &base,
            json!({"provider_id": pid, "subject_id": "alice", "access_token": "gho_alice"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_ne!(alice["id"], shared_id.as_str());

    for path in [&base, &seed] {
        let (s, list) = admin.get(path).await;
        assert_eq!(s, 200);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{list}");
        assert!(items
            .iter()
            .all(|i| i["renewable"] == false && !i["refreshed_at"].is_null()));
        assert!(
            !list.to_string().contains("gho_"),
            "tokens are never returned"
        );
    }
    let (_, only) = admin.get(&format!("{base}?subject_id=alice")).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    let (_, none) = admin.get(&format!("{base}?status=revoked")).await;
    assert_eq!(none["items"], json!([]));
    let (s, e) = admin.get(&format!("{base}?status=gone")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_query")));

    // Pagination walks to the end.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (_, page) = admin.get(&format!("{base}?limit=1{q}")).await;
        for i in page["items"].as_array().unwrap() {
            seen.push(i["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2);

    // Revoke: local first, then upstream (which fails: nothing listens there).
    let (s, r) = admin
        .post(&format!("{seed}/revoke"), json!({"provider_id": pid}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "revoked");
    assert_eq!(r["upstream_revocation"], "failed");
    let (s, e) = admin
        .post(&format!("{base}/revoke"), json!({"provider_id": pid}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("provider_connection_not_found"))
    );
    let (_, revoked) = admin.get(&format!("{base}?status=revoked")).await;
    assert_eq!(revoked["items"][0]["id"], shared_id.as_str());
    // A new shared connection after revocation is a new row.
    let (s, fresh) = admin
        .post(
            &base,
            json!({"provider_id": pid, "access_token": "gho_third"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_ne!(fresh["id"], shared_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_use_the_documented_codes() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let (z, pid) = zone_with_provider(&admin, false).await;
    let base = format!("/v1/zones/{z}/provider-connections");
    let (_, key) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "key", "kind": "api_key", "config_json": {"header_name": "X-Key", "api_key": "k-123456"}}),
        )
        .await;
    let key_pid = key["id"].as_str().unwrap();
    let cases = [
        (
            json!({"access_token": "t"}),
            400,
            "invalid_provider_connection",
        ),
        (
            json!({"provider_id": pid}),
            400,
            "invalid_provider_connection",
        ),
        (
            json!({"provider_id": pid, "access_token": ""}),
            400,
            "invalid_provider_connection",
        ),
        (
            json!({"provider_id": pid, "access_token": "t", "expires_at": "tomorrow"}),
            400,
            "invalid_provider_connection",
        ),
        (
            json!({"provider_id": pid, "access_token": "t", "extra": 1}),
            400,
            "invalid_provider_connection",
        ),
        (
            json!({"provider_id": "missing", "access_token": "t"}),
            404,
            "provider_not_found",
        ),
        (
            json!({"provider_id": key_pid, "access_token": "t"}),
            400,
            "provider_connection_unsupported",
        ),
    ];
    for (body, status, code) in cases {
        let (s, e) = admin.post(&base, body.clone()).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{body}");
    }
    let (s, e) = admin
        .post(
            "/v1/zones/nope/provider-connections",
            json!({"provider_id": pid, "access_token": "t"}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (404, Some("zone_not_found")));
    let (s, e) = admin.post(&format!("{base}/revoke"), json!({})).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_provider_connection_revoke"))
    );
    let (s, e) = admin
        .post(
            &format!("{base}/oauth/authorize"),
            json!({"provider_id": 7}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_provider_oauth_authorize"))
    );
    let (s, e) = admin
        .post(
            &format!("{base}/oauth/authorize"),
            json!({"provider_id": key_pid}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("provider_connection_unsupported"))
    );
    let (_, list) = admin.get(&base).await;
    assert_eq!(list["items"], json!([]), "nothing was written");

    // With no revocation endpoint, upstream revocation is unsupported.
    admin
        .post(&base, json!({"provider_id": pid, "access_token": "gho_x"}))
        .await;
    let (s, r) = admin
        .post(&format!("{base}/revoke"), json!({"provider_id": pid}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["upstream_revocation"], "unsupported");
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_issues_pkce_state_that_the_callback_redeems_once() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let (z, pid) = zone_with_provider(&admin, false).await;
    let (other, _) = zone_with_provider(&admin, false).await;
    let base = format!("/v1/zones/{z}/provider-grants");
    let (s, a) = admin
        .post(
            &format!("{base}/oauth/authorize"),
            json!({"provider_id": pid, "subject_id": "alice"}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let state = a["state"].as_str().unwrap().to_owned();
    assert_eq!(state.len(), 43);
    let url = reqwest::Url::parse(a["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("localhost"));
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "serval-client");
    assert_eq!(q["redirect_uri"], "https://serval.example/callback");
    assert_eq!(q["state"], state);
    assert_eq!(q["scope"], "repo user:email");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(!url.as_str().contains("upstream-client-secret"));
    let expires: chrono::DateTime<chrono::Utc> = a["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(ttl.num_seconds() > 590 && ttl.num_seconds() <= 600, "{ttl}");

    // The callback needs no admin token.
    let http = reqwest::Client::new();
    let callback = |zone: &str, query: &str| {
        http.get(format!(
            "{}/v1/zones/{zone}/provider-connections/oauth/callback?{query}",
            server.api()
        ))
        .send()
    };
    let read = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (s, v["error"].as_str().unwrap_or_default().to_owned())
    };
    let r = callback(&z, "code=abc").await.unwrap();
    assert_eq!(read(r).await, (400, "invalid_oauth_callback".to_owned()));
    let r = callback(&z, &format!("state={}&code=abc", "x".repeat(40)))
        .await
        .unwrap();
    assert_eq!(read(r).await, (400, "oauth_state_invalid".to_owned()));
    // Redeemed on another zone: a mismatch, and the state is spent.
    let r = callback(&other, &format!("state={state}&code=abc"))
        .await
        .unwrap();
    assert_eq!(read(r).await, (400, "oauth_state_mismatch".to_owned()));
    let r = callback(&z, &format!("state={state}&code=abc"))
        .await
        .unwrap();
    assert_eq!(read(r).await, (400, "oauth_state_invalid".to_owned()));

    let fresh = |subject: &'static str| {
        let admin = &admin;
        let base = &base;
        let pid = &pid;
        async move {
            let (_, a) = admin
                .post(
                    &format!("{base}/oauth/authorize"),
                    json!({"provider_id": pid, "subject_id": subject}),
                )
                .await;
            a["state"].as_str().unwrap().to_owned()
        }
    };
    let st = fresh("bob").await;
    let r = callback(
        &z,
        &format!("state={st}&error=access_denied&error_description=user+said+no"),
    )
    .await
    .unwrap();
    let s = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("provider_oauth_denied"))
    );
    assert_eq!(body["error_description"], "user said no");
    let st = fresh("bob").await;
    let r = callback(&z, &format!("state={st}")).await.unwrap();
    assert_eq!(
        read(r).await,
        (400, "authorization_code_required".to_owned())
    );
    // The token endpoint is unreachable: the exchange fails upstream.
    let st = fresh("bob").await;
    let r = callback(&z, &format!("state={st}&code=abc")).await.unwrap();
    assert_eq!(
        read(r).await,
        (502, "provider_token_exchange_failed".to_owned())
    );

    let (_, list) = admin.get(&base).await;
    assert_eq!(list["items"], json!([]), "no connection was stored");
    // Every callback that redeemed a state is in the zone's admin audit, unauthenticated
    // (refusals are recorded after the answer); the three that named no live state proved
    // nothing about their sender and are only counted (`refusal_tally`).
    let path = format!("/v1/zones/{z}/admin-audit?entity_type=provider-connections&limit=1000");
    common::eventually(10, || async {
        let (_, audit) = admin.get(&path).await;
        let rows = audit["items"].as_array().cloned().unwrap_or_default();
        let callbacks: Vec<_> = rows
            .iter()
            .filter(|r| r["method"] == "GET" && r["actor_id"].is_null())
            .collect();
        (callbacks.len() == 3 && callbacks.iter().any(|r| r["status_code"] == 502)).then_some(())
    })
    .await;
}
