//! Connectivity probes (§7, §8): the create-time `check` and the `…/test` routes against a
//! real HTTPS upstream, the private-address rule, the per-zone probe budget (§3.5), and a
//! complete OAuth authorization-code connection through the callback.

mod common;

use common::upstream::{self, Upstream, CLIENT_ID, CLIENT_SECRET, GOOD_CODE};
use common::{Admin, Options, Server};
use serde_json::{json, Value};

async fn serval(up: &Upstream) -> Server {
    Server::start(Options {
        env: vec![
            (
                "SERVAL_UPSTREAM_CA_FILE".into(),
                up.ca_file.display().to_string(),
            ),
            ("CARACAL_PRIVATE_EGRESS_HOSTS".into(), "localhost".into()),
        ],
        ..Options::default()
    })
    .await
}

async fn zone(admin: &Admin, name: &str) -> String {
    let (_, z) = admin.post("/v1/zones", json!({"name": name})).await;
    z["id"].as_str().unwrap().to_owned()
}

fn cc_provider(token_endpoint: &str, secret: &str, check: bool) -> Value {
    json!({"name": "cc", "kind": "oauth2_client_credentials", "check": check,
           "config_json": {"token_endpoint": token_endpoint, "client_id": CLIENT_ID,
                           "client_secret": secret, "scopes": ["read"]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_checks_and_tests_probe_the_token_endpoint() {
    let up = upstream::start().await;
    let server = serval(&up).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "probes").await;
    let base = format!("/v1/zones/{z}/providers");

    // Client credentials that work: created, verified.
    let (s, p) = admin
        .post(
            &base,
            cc_provider(&up.url("/cc/token"), CLIENT_SECRET, true),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["connectivity_failed_at"], Value::Null);

    // Wrong secret, broken endpoint, an address outside the egress allowlist: 422 with the
    // probe's outcome, and nothing is created.
    let loopback = format!("https://127.0.0.1:{}/cc/token", up.port);
    for (endpoint, secret, status) in [
        (up.url("/cc/token"), "wrong-secret", "auth_failed"),
        (up.url("/broken/token"), CLIENT_SECRET, "endpoint_error"),
        (loopback.clone(), CLIENT_SECRET, "unreachable"),
    ] {
        let mut body = cc_provider(&endpoint, secret, true);
        body["config_json"]["allowed_token_hosts"] = json!(["localhost", "127.0.0.1"]);
        let (s, e) = admin.post(&base, body).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (422, Some("provider_check_failed")),
            "{e}"
        );
        let check = &e["details"]["check"];
        assert_eq!(check["status"], status, "{e}");
        assert!(check["detail"].is_string() && check["checked_at"].is_string());
        assert!(!e.to_string().contains(CLIENT_SECRET) && !e.to_string().contains("wrong-secret"));
    }
    let (_, list) = admin.get(&base).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Authorization code: a made-up code draws invalid_grant, which proves the client.
    let ac = json!({"name": "ac", "kind": "oauth2_authorization_code", "check": true,
        "config_json": {"authorization_endpoint": up.url("/authorize"),
                        "token_endpoint": up.url("/ac/token"), "redirect_uri": "https://serval.example/cb",
                        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}});
    let (s, p) = admin.post(&base, ac).await;
    assert_eq!(s, 201, "{p}");

    // Only the OAuth kinds are checked.
    let (s, e) = admin
        .post(
            &base,
            json!({"name": "k", "kind": "api_key", "check": true,
                            "config_json": {"api_key": "k-123456", "header_name": "x-key"}}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("provider_check_unsupported"))
    );

    // Created without a check: unverified until a test passes; a failing test marks it again.
    let (s, p) = admin
        .post(
            &base,
            cc_provider(&up.url("/cc/token"), CLIENT_SECRET, false),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    assert!(p["connectivity_failed_at"].is_string());
    let pid = p["id"].as_str().unwrap().to_owned();
    let (s, t) = admin.post(&format!("{base}/{pid}/test"), json!({})).await;
    assert_eq!((s, t["status"].as_str()), (200, Some("ok")), "{t}");
    let (_, got) = admin.get(&format!("{base}/{pid}")).await;
    assert_eq!(got["connectivity_failed_at"], Value::Null);
    let (s, _) = admin
        .patch(
            &format!("{base}/{pid}"),
            json!({"config_json": {"token_endpoint": up.url("/broken/token"), "client_id": CLIENT_ID,
                                   "allowed_token_hosts": ["localhost"]}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, t) = admin.post(&format!("{base}/{pid}/test"), json!({})).await;
    assert_eq!(
        (s, t["status"].as_str()),
        (200, Some("endpoint_error")),
        "{t}"
    );
    let (_, got) = admin.get(&format!("{base}/{pid}")).await;
    assert!(got["connectivity_failed_at"].is_string());
    let (s, e) = admin.post(&format!("{base}/nope/test"), json!({})).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("provider_not_found")));

    // §3.5: ten probes per zone per window; this zone has spent seven (refusals before the
    // probe — unsupported kind, unknown provider — spend nothing).
    for _ in 0..3 {
        let (s, _) = admin.post(&format!("{base}/{pid}/test"), json!({})).await;
        assert_eq!(s, 200);
    }
    let (s, e) = admin.post(&format!("{base}/{pid}/test"), json!({})).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (429, Some("provider_test_rate_limited"))
    );
    let (s, e) = admin
        .post(
            &base,
            cc_provider(&up.url("/cc/token"), CLIENT_SECRET, true),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (429, Some("provider_test_rate_limited"))
    );
    // Another zone has its own budget.
    let other = zone(&admin, "other").await;
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{other}/providers"),
            cc_provider(&up.url("/cc/token"), CLIENT_SECRET, true),
        )
        .await;
    assert_eq!(s, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_checks_send_an_invalid_mandate_upstream() {
    let up = upstream::start().await;
    let server = serval(&up).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "resources").await;
    let (_, mandate) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "m", "kind": "caracal_mandate"}),
        )
        .await;
    let (_, key) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "k", "kind": "api_key", "config_json": {"api_key": "k-123456", "header_name": "x-key"}}),
        )
        .await;
    let base = format!("/v1/zones/{z}/resources");
    let resource = |name: &str, path: &str, provider: &Value| {
        json!({"name": name, "scopes": ["r"], "upstream_url": up.url(path),
               "credential_provider_id": provider["id"], "check": true})
    };
    let (s, r) = admin
        .post(&base, resource("guarded", "/guarded", &mandate))
        .await;
    assert_eq!(s, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_owned();
    let (s, r) = admin.post(&base, resource("open", "/open", &mandate)).await;
    assert_eq!(s, 201, "{r}");
    let (s, e) = admin
        .post(&base, resource("broken", "/err", &mandate))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (422, Some("resource_check_failed")),
        "{e}"
    );
    assert_eq!(e["details"]["check"]["status"], "endpoint_error");
    let (s, e) = admin.post(&base, resource("keyed", "/guarded", &key)).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("resource_verification_unsupported"))
    );
    let (s, t) = admin.post(&format!("{base}/{rid}/test"), json!({})).await;
    assert_eq!((s, t["status"].as_str()), (200, Some("guarded")), "{t}");
    let (s, e) = admin.post(&format!("{base}/nope/test"), json!({})).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("resource_not_found")));
    let (_, list) = admin.get(&base).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_code_connection_completes_through_the_callback() {
    let up = upstream::start().await;
    let server = serval(&up).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "oauth").await;
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "ac", "kind": "oauth2_authorization_code",
                "config_json": {"authorization_endpoint": up.url("/authorize"),
                    "token_endpoint": up.url("/ac/token"), "redirect_uri": "https://serval.example/cb",
                    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["repo"]}}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{z}/provider-connections");
    let (s, a) = admin
        .post(
            &format!("{base}/oauth/authorize"),
            json!({"provider_id": pid, "subject_id": "alice"}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let state = a["state"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(format!(
            "{}{base}/oauth/callback?state={state}&code={GOOD_CODE}",
            server.api()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["subject_id"], "alice");
    assert_eq!(c["status"], "active");
    assert!(!c.to_string().contains("ac-access-token"), "{c}");
    let (_, list) = admin.get(&format!("{base}?subject_id=alice")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert!(list["items"][0]["expires_at"].is_string(), "{list}");
    // The state is spent.
    let r = reqwest::Client::new()
        .get(format!(
            "{}{base}/oauth/callback?state={state}&code={GOOD_CODE}",
            server.api()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!std::fs::read_to_string(&server.log)
        .unwrap()
        .contains("ac-access-token"));
}
