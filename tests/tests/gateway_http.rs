//! The Gateway (gateway.md) against the real binary and a local echo upstream: a governed
//! call is verified, re-exchanged at the STS, credential-injected and streamed; every
//! refusal of the pipeline answers before anything reaches the upstream; replays and
//! revoked Delegations are refused; the audit trail holds the call.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::response::IntoResponse;
use common::runtime::{
    bootstrap, call_json, claims, exchange, governed, mint, server, zone_with, RESOURCE,
};
use common::{eventually, Admin, Options, Server};
use serde_json::{json, Value};

/// An upstream that answers every request with what it received, and counts them.
struct Echo {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn echo() -> Echo {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/v1/stream" {
                // A slow stream: a chunk every 100 ms for 10 s.
                let chunks = futures::stream::unfold(0u32, |n| async move {
                    if n >= 100 {
                        return None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from(format!("chunk {n}\n"))),
                        n + 1,
                    ))
                });
                return axum::body::Body::from_stream(chunks).into_response();
            }
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            (
                [("x-upstream", "echo"), ("server", "echo/1")],
                axum::Json(json!({"method": method, "path": path, "query": query,
                                   "headers": headers, "body": String::from_utf8_lossy(&body)})),
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Echo { url, hits }
}

/// Headers, path, and the answer expected: status, `error`, part of the description.
type Refusal<'a> = (Vec<(&'a str, String)>, &'a str, u16, &'a str, &'a str);

struct Call {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Call {
    let mut req =
        reqwest::Client::new().request(method, format!("{}{path}", server.url("gateway")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = resp.text().await.unwrap();
    Call {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn refused(c: &Call, status: u16, error: &str, description: &str) {
    assert_eq!(c.status, status, "{}", c.body);
    assert_eq!(c.body["error"], error, "{}", c.body);
    assert!(
        c.body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains(description),
        "{description}: {}",
        c.body
    );
    assert!(c.body["requestId"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        c.headers.get("x-request-id").map(String::as_str),
        c.body["requestId"].as_str()
    );
}

/// Audit events of a request id on `caracal.audit.events`.
async fn audit_events(server: &Server, rid: &str) -> Vec<Value> {
    let key = server.key_space().topic("caracal.audit.events");
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let data: String = redis::from_redis_value(e.map.get("data")?).ok()?;
            let v: Value = serde_json::from_str(&data).ok()?;
            (v["request_id"] == rid).then_some(v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_governed_call_reaches_the_upstream_with_a_resource_mandate_and_nothing_else_does() {
    let upstream = echo().await;
    let (server, issuer) = server().await;
    let (z, b, edge, lifecycle) = governed(&server, &issuer, &upstream.url).await;
    let gateway_mandate = mint(&issuer, &z, &b, &edge).await;
    let presented = claims(&gateway_mandate);

    // The governed call.
    let ok = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets?limit=5",
        &[
            ("authorization", &format!("Bearer {gateway_mandate}")),
            ("x-caracal-resource", RESOURCE),
            ("x-request-id", "gw-call-1"),
            ("x-caracal-session", "leak"),
            ("baggage", "caracal.agent_session_id=s, team=blue"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, server.logs());
    assert_eq!(ok.headers["x-request-id"], "gw-call-1");
    assert_eq!(ok.headers["x-upstream"], "echo");
    assert!(!ok.headers.contains_key("server"), "{:?}", ok.headers);
    assert!(
        ok.headers["x-caracal-token-expires-in"]
            .parse::<i64>()
            .unwrap()
            > 35
    );
    let seen = &ok.body;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/v1/tickets");
    assert_eq!(seen["query"], "limit=5");
    let h = seen["headers"].as_object().unwrap();
    assert_eq!(h["x-request-id"], "gw-call-1");
    assert!(h.keys().all(|k| !k.starts_with("x-caracal-")), "{h:?}");
    assert_eq!(h["baggage"], "team=blue");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    let bearer = h["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_ne!(bearer, gateway_mandate);
    let m = claims(bearer);
    assert_eq!(m["use"], "resource");
    assert_eq!(m["aud"], json!([RESOURCE]));
    assert_eq!(m["scope"], "tickets:read");
    assert_eq!(m["root_sid"], presented["root_sid"]);
    assert_ne!(m["sid"], presented["sid"]);
    assert_eq!(m["delegation_edge_id"], edge.as_str());
    assert_eq!(m["agent_session_id"], b.as_str());
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);

    // Every refusal answers before the upstream.
    let auth = format!("Bearer {}", mint(&issuer, &z, &b, &edge).await);
    let r = |extra: Vec<(&'static str, String)>| extra;
    let cases: Vec<Refusal> = vec![
        (
            r(vec![("x-caracal-resource", RESOURCE.into())]),
            "/v1/tickets",
            401,
            "invalid_token",
            "missing bearer token",
        ),
        (
            r(vec![
                ("authorization", format!("Bearer {}", "a".repeat(5000))),
                ("x-caracal-resource", RESOURCE.into()),
            ]),
            "/v1/tickets",
            401,
            "invalid_token",
            "bearer token too large",
        ),
        (
            r(vec![
                ("authorization", "Bearer not.a-jwt".into()),
                ("x-caracal-resource", RESOURCE.into()),
            ]),
            "/v1/tickets",
            401,
            "invalid_token",
            "malformed bearer token",
        ),
        (
            r(vec![
                ("authorization", auth.clone()),
                ("x-caracal-resource", RESOURCE.into()),
                ("x-caracal-client-id", "me".into()),
            ]),
            "/v1/tickets",
            400,
            "invalid_token",
            "client identity derives from the bearer token",
        ),
        (
            r(vec![("authorization", auth.clone())]),
            "/v1/tickets",
            400,
            "invalid_token",
            "missing routing headers",
        ),
        (
            r(vec![
                ("authorization", auth.clone()),
                ("x-caracal-resource", RESOURCE.into()),
            ]),
            // Double-encoded: the client's URL parser already resolves `%2e%2e`.
            "/v1/%252e%252e/admin",
            400,
            "invalid_token",
            "path traversal not permitted",
        ),
        (
            r(vec![
                ("authorization", auth.clone()),
                ("x-caracal-resource", RESOURCE.into()),
            ]),
            "/v1/%5cadmin",
            400,
            "invalid_token",
            "path traversal not permitted",
        ),
    ];
    for (headers, path, status, error, description) in &cases {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let c = call(&server, reqwest::Method::GET, path, &hs).await;
        refused(&c, *status, error, description);
    }
    // A signature that does not verify (the payload changed).
    let parts: Vec<&str> = auth.trim_start_matches("Bearer ").split('.').collect();
    let mut payload = claims(auth.trim_start_matches("Bearer "));
    payload["scope"] = json!("tickets:read tickets:write");
    use base64::Engine;
    let forged = format!(
        "Bearer {}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[("authorization", &forged), ("x-caracal-resource", RESOURCE)],
    )
    .await;
    refused(&c, 401, "invalid_token", "bearer signature invalid");
    // A lifecycle (session) mandate is no Gateway mandate: the STS refuses it.
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[
            ("authorization", &format!("Bearer {lifecycle}")),
            ("x-caracal-resource", RESOURCE),
        ],
    )
    .await;
    refused(&c, 401, "invalid_token", "invalid subject_token");
    // A write with a read-only mandate: the operation floor (the mandate is spent).
    let c = call(
        &server,
        reqwest::Method::POST,
        "/v1/tickets",
        &[("authorization", &auth), ("x-caracal-resource", RESOURCE)],
    )
    .await;
    refused(&c, 403, "operation_not_permitted", "POST /v1/tickets");
    // The same mandate again: a replay.
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[
            ("authorization", &auth),
            ("x-caracal-resource", RESOURCE),
            ("x-request-id", "gw-replay-1"),
        ],
    )
    .await;
    refused(&c, 401, "invalid_token", "token replay detected");
    // A mandate replayed after a successful call.
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[
            ("authorization", &format!("Bearer {gateway_mandate}")),
            ("x-caracal-resource", RESOURCE),
        ],
    )
    .await;
    refused(&c, 401, "invalid_token", "token replay detected");
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        1,
        "a refusal reached the upstream"
    );

    // After the issuer revokes the Delegation, a mandate minted before it is refused.
    let before = mint(&issuer, &z, &b, &edge).await;
    let (s, v) = call_json(
        server.url("coordinator"),
        &lifecycle,
        reqwest::Method::PATCH,
        &format!("/zones/{}/delegations/{edge}/revoke", z.id),
        None,
    )
    .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[
            ("authorization", &format!("Bearer {before}")),
            ("x-caracal-resource", RESOURCE),
        ],
    )
    .await;
    assert!(
        c.status == 401 || c.status == 403,
        "{} {}",
        c.status,
        c.body
    );
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        1,
        "a revoked mandate reached the upstream"
    );

    // The audit trail: the STS's decision and the Gateway's call share the request id.
    let trail = eventually(20, || async {
        let t = audit_events(&server, "gw-call-1").await;
        (t.iter()
            .any(|e| e["event_type"] == "gateway_resource_request"))
        .then_some(t)
    })
    .await;
    assert!(
        trail
            .iter()
            .any(|e| e["event_type"] == "token_exchange" && e["decision"] == "allow"),
        "{trail:?}"
    );
    let call_event = trail
        .iter()
        .find(|e| e["event_type"] == "gateway_resource_request")
        .unwrap();
    assert_eq!(call_event["decision"], "allow");
    assert_eq!(call_event["evaluation_status"], "executed");
    let md = &call_event["metadata_json"];
    assert_eq!(md["gateway_status"], 200, "{call_event}");
    assert_eq!(md["upstream_status"], 200);
    assert_eq!(md["result_class"], "success");
    assert_eq!(md["method"], "GET");
    assert_eq!(md["auth_mode"], "caracal_jwt");
    assert_eq!(md["subject_fingerprint"].as_str().unwrap().len(), 16);
    assert!(md["response_bytes"].as_u64().unwrap() > 0);
    let replay = eventually(20, || async {
        let t = audit_events(&server, "gw-replay-1").await;
        t.into_iter().find(|e| e["event_type"] == "replay_detected")
    })
    .await;
    assert_eq!(replay["decision"], "deny");
    assert_eq!(replay["evaluation_status"], "anomaly");
    assert!(
        !serde_json::to_string(&trail)
            .unwrap()
            .contains(&gateway_mandate),
        "a mandate reached the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_calls_through_the_gateway() {
    let upstream = echo().await;
    let (server, issuer) = server().await;
    let admin = Admin::new(&server);
    let z = zone_with(
        &admin,
        true,
        json!({"upstream_url": upstream.url, "operation_enforcement": "enforced",
               "scopes": ["tickets:read", "tickets:write"],
               "operations": [{"method": "GET", "path": "/v1/tickets", "scope": "tickets:read"},
                              {"method": "POST", "path": "/v1/tickets", "scope": "tickets:write"}]}),
    )
    .await;
    // The policy binding is loaded once a bootstrap mint succeeds.
    eventually(20, || async {
        let r = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(())
    })
    .await;
    common::run_interop(
        &server,
        "gateway_sdk.py",
        &[
            ("STS_URL", &issuer),
            ("COORDINATOR_URL", server.url("coordinator")),
            ("GATEWAY_URL", server.url("gateway")),
            ("ZONE_ID", &z.id),
            ("APPLICATION_ID", &z.app),
            ("CLIENT_SECRET", &z.secret),
            ("RESOURCE", RESOURCE),
        ],
    );
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        2,
        "only the two allowed calls reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_ends_a_stream_in_flight() {
    let upstream = echo().await;
    let (server, issuer) = server().await;
    let (z, b, edge, lifecycle) = governed(&server, &issuer, &upstream.url).await;
    let mandate = mint(&issuer, &z, &b, &edge).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/stream", server.url("gateway")))
        .header("authorization", format!("Bearer {mandate}"))
        .header("x-caracal-resource", RESOURCE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let mut resp = resp;
    let mut received = String::new();
    // Read a few chunks, then revoke the Delegation the mandate rests on.
    while received.matches("chunk").count() < 3 {
        let chunk = resp.chunk().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (s, v) = call_json(
        server.url("coordinator"),
        &lifecycle,
        reqwest::Method::PATCH,
        &format!("/zones/{}/delegations/{edge}/revoke", z.id),
        None,
    )
    .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    while let Ok(Some(c)) = resp.chunk().await {
        received.push_str(&String::from_utf8_lossy(&c));
    }
    let chunks = received.matches("chunk").count();
    // The upstream streams 100 chunks over 10 s; the revocation cut it long before.
    assert!(
        chunks < 60,
        "the stream ran on after the revocation: {chunks} chunks"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    let trail = eventually(20, || async {
        let key = server.key_space().topic("caracal.audit.events");
        let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
        let mut conn = client.connect().await.unwrap();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        reply.ids.into_iter().find_map(|e| {
            let data: String = redis::from_redis_value(e.map.get("data")?).ok()?;
            let v: Value = serde_json::from_str(&data).ok()?;
            (v["event_type"] == "gateway_resource_request"
                && v["metadata_json"]["revocation_interrupted"] == true)
                .then_some(v)
        })
    })
    .await;
    assert!(trail["metadata_json"]["response_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_revocation_snapshot_reloads_on_the_admin_token_only() {
    let server = Server::shared().await;
    let url = format!("{}/internal/revocations/reload", server.url("gateway"));
    let client = reqwest::Client::new();
    let resp = client
        .post(&url)
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["revocations"].is_u64(), "{v}");
    for bearer in [None, Some("wrong")] {
        let mut req = client.post(&url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        assert_eq!(req.send().await.unwrap().status(), 404);
    }
    // Other methods on the path are governed calls: refused without a mandate.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
}

/// gateway.md §2: `/ready` adds the Gateway's own checks — the STS must answer `/health`.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_names_an_unreachable_sts() {
    let ready = |base: String| async move {
        let r = reqwest::get(format!("{base}/ready")).await.unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap())
    };
    let port = common::reserved_port();
    let sts = format!("http://127.0.0.1:{port}");
    let server = Server::start(Options {
        env: vec![
            ("SERVAL_STS_PORT".into(), port.to_string()),
            ("STS_URL".into(), sts.clone()),
            ("ISSUER_URL".into(), sts.clone()),
        ],
        ..Default::default()
    })
    .await;
    eventually(20, || async {
        let (s, v) = ready(server.url("gateway").to_owned()).await;
        (s == 200 && v == json!({"ok": true, "ready": true})).then_some(())
    })
    .await;

    // A Gateway whose STS is down.
    let dead = common::reserved_port();
    let lone = Server::start(Options {
        env: vec![("STS_URL".into(), format!("http://127.0.0.1:{dead}"))],
        ..Options::sharing(
            &server.db_url,
            &server.prefix,
            &server.keys,
            vec!["gateway"],
        )
    })
    .await;
    // Stale until its first revocation snapshot, then the STS check speaks.
    eventually(20, || async {
        let (s, v) = ready(lone.url("gateway").to_owned()).await;
        assert_eq!(s, 503, "{v}");
        (v == json!({"ok": false, "ready": false, "reason": "sts_unreachable"})).then_some(())
    })
    .await;
}

/// The OAuth provider kinds (gateway.md §6.2–§6.3): a client-credentials token fetched by
/// the STS and reused, and the Subject's authorization-code connection — used as stored,
/// refreshed when it is about to expire (the rotated tokens written back), refused when it
/// cannot be refreshed. The upstream sees only the injected credential.
#[tokio::test(flavor = "multi_thread")]
async fn oauth_providers_inject_fetched_and_refreshed_tokens() {
    use common::upstream::{self, CLIENT_ID, CLIENT_SECRET, GOOD_REFRESH};
    let up = upstream::start().await;
    let upstream = echo().await;
    let ca = up.ca_file.display().to_string();
    let (server, issuer) = common::runtime::server_with(&[
        ("SERVAL_UPSTREAM_CA_FILE", ca.as_str()),
        ("CARACAL_PRIVATE_EGRESS_HOSTS", "localhost"),
    ])
    .await;
    let admin = Admin::new(&server);
    let (z, b, edge, _) = governed(&server, &issuer, &upstream.url).await;
    let (_, resources) = admin.get(&format!("/v1/zones/{}/resources", z.id)).await;
    let resource = resources["items"][0]["id"].as_str().unwrap().to_owned();
    let bind = |provider: String| {
        let (admin, path) = (&admin, format!("/v1/zones/{}/resources/{resource}", z.id));
        async move {
            let (s, v) = admin
                .patch(&path, json!({"credential_provider_id": provider}))
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    let governed_call = || async {
        let m = mint(&issuer, &z, &b, &edge).await;
        call(
            &server,
            reqwest::Method::GET,
            "/v1/tickets",
            &[
                ("authorization", &format!("Bearer {m}")),
                ("x-caracal-resource", RESOURCE),
            ],
        )
        .await
    };
    let providers = format!("/v1/zones/{}/providers", z.id);

    // Client credentials: fetched once, then served from the STS's memory.
    let (s, cc) = admin
        .post(
            &providers,
            json!({"name": "cc", "kind": "oauth2_client_credentials",
                   "config_json": {"token_endpoint": up.url("/cc/token"), "client_id": CLIENT_ID,
                                   "client_secret": CLIENT_SECRET, "scopes": ["read"]}}),
        )
        .await;
    assert_eq!(s, 201, "{cc}");
    bind(cc["id"].as_str().unwrap().to_owned()).await;
    for _ in 0..2 {
        let c = governed_call().await;
        assert_eq!(c.status, 200, "{}", c.body);
        assert_eq!(
            c.body["headers"]["authorization"], "Bearer cc-token",
            "{}",
            c.body
        );
    }

    // Authorization code: the Subject's connection (the mandate's `sub`, the application).
    let (s, ac) = admin
        .post(
            &providers,
            json!({"name": "ac", "kind": "oauth2_authorization_code",
                   "config_json": {"authorization_endpoint": up.url("/authorize"),
                                   "token_endpoint": up.url("/ac/token"),
                                   "redirect_uri": "https://serval.example/cb",
                                   "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}),
        )
        .await;
    assert_eq!(s, 201, "{ac}");
    let ac_id = ac["id"].as_str().unwrap().to_owned();
    bind(ac_id.clone()).await;
    let connections = format!("/v1/zones/{}/provider-connections", z.id);
    let connect = |access: &'static str, refresh: &'static str, expires_in: i64| {
        let (admin, connections, ac_id, app) = (&admin, &connections, &ac_id, &z.app);
        async move {
            let at = (chrono::Utc::now() + chrono::Duration::seconds(expires_in)).to_rfc3339();
            let (s, v) = admin
                .post(
                    connections,
                    json!({"subject_id": app, "provider_id": ac_id, "access_token": access,
                           "refresh_token": refresh, "expires_at": at}),
                )
                .await;
            assert!(s == 200 || s == 201, "{s} {v}");
            v["id"].as_str().unwrap().to_owned()
        }
    };
    // No connection yet: refused, nothing reaches the upstream, the skip is evidence.
    let before = upstream.hits.load(Ordering::SeqCst);
    let m = mint(&issuer, &z, &b, &edge).await;
    let c = call(
        &server,
        reqwest::Method::GET,
        "/v1/tickets",
        &[
            ("authorization", &format!("Bearer {m}")),
            ("x-caracal-resource", RESOURCE),
            ("x-request-id", "gw-oauth-no-connection"),
        ],
    )
    .await;
    assert_eq!(c.status, 403, "{}", c.body);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), before);
    let skipped = eventually(20, || async {
        let events = audit_events(&server, "gw-oauth-no-connection").await;
        events
            .into_iter()
            .find(|e| e["evaluation_status"] == "credential_not_provisioned")
    })
    .await;
    assert_eq!(skipped["event_type"], "token_exchange", "{skipped}");
    let conn = connect("stored-access", GOOD_REFRESH, 3600).await;
    let c = governed_call().await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["headers"]["authorization"], "Bearer stored-access");
    // About to expire: refreshed at the token endpoint, the rotated tokens written back.
    connect("stale-access", GOOD_REFRESH, 10).await;
    let c = governed_call().await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.body["headers"]["authorization"],
        "Bearer ac-refreshed-token"
    );
    let row = eventually(20, || async {
        let (_, list) = admin.get(&connections).await;
        let v = list["items"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == conn.as_str())?
            .clone();
        let later = v["expires_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > chrono::Utc::now() + chrono::Duration::seconds(300));
        later.then_some(v)
    })
    .await;
    assert_eq!(row["subject_id"], z.app.as_str(), "{row}");
    // Expired with a refresh token the provider refuses: not renewable.
    connect("dead-access", "revoked-refresh", -60).await;
    let before = upstream.hits.load(Ordering::SeqCst);
    let c = governed_call().await;
    assert_eq!(c.status, 403, "{}", c.body);
    assert_eq!(
        c.body["error"], "credential_expired_not_renewable",
        "{}",
        c.body
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), before);
    // It is marked expired (§6.3), and keeps answering so until a new consent.
    let dead = eventually(20, || async {
        let (_, list) = admin.get(&connections).await;
        list["items"]
            .as_array()?
            .iter()
            .find(|c| c["status"] == "expired")
            .cloned()
    })
    .await;
    assert_eq!(dead["status"], "expired", "{dead}");
    let c = governed_call().await;
    assert_eq!(
        (c.status, c.body["error"].as_str()),
        (403, Some("credential_expired_not_renewable")),
        "{}",
        c.body
    );

    // `private_key_jwt`: the STS signs a client assertion with the provider's sealed key.
    // A key that cannot sign is refused when the provider is saved.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (s, v) = admin
        .post(
            &providers,
            json!({"name": "pk-ed", "kind": "oauth2_client_credentials",
                   "config_json": {"token_endpoint": up.url("/pkjwt/token"), "client_id": CLIENT_ID,
                                   "client_auth_method": "private_key_jwt",
                                   "private_key": ed.serialize_pem()}}),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_provider_config")),
        "{v}"
    );
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    *up.assertion_key.lock().unwrap() = pair.public_key_raw().to_vec();
    let (s, pk) = admin
        .post(
            &providers,
            json!({"name": "pk", "kind": "oauth2_client_credentials",
                   "config_json": {"token_endpoint": up.url("/pkjwt/token"), "client_id": CLIENT_ID,
                                   "client_auth_method": "private_key_jwt", "key_id": "pk-1",
                                   "private_key": pair.serialize_pem()}}),
        )
        .await;
    assert_eq!(s, 201, "{pk}");
    bind(pk["id"].as_str().unwrap().to_owned()).await;
    let c = governed_call().await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.body["headers"]["authorization"], "Bearer pkjwt-token",
        "{}",
        c.body
    );

    let before = upstream.hits.load(Ordering::SeqCst);
    // A token endpoint that fails: five failed fetches within 5 minutes open the
    // provider's circuit for 30 s; then calls fail at once and the endpoint is left alone.
    let (s, down) = admin
        .post(
            &providers,
            json!({"name": "cc-down", "kind": "oauth2_client_credentials",
                   "config_json": {"token_endpoint": up.url("/broken/token"), "client_id": CLIENT_ID,
                                   "client_secret": CLIENT_SECRET}}),
        )
        .await;
    assert_eq!(s, 201, "{down}");
    bind(down["id"].as_str().unwrap().to_owned()).await;
    let failing = |c: &Call| {
        (c.status, c.body["error"].as_str().map(str::to_owned))
            == (502, Some("http_request_failed".to_owned()))
    };
    for _ in 0..5 {
        let c = governed_call().await;
        assert!(failing(&c), "{} {}", c.status, c.body);
        assert!(
            c.body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("answered 500")),
            "{}",
            c.body
        );
    }
    assert_eq!(up.broken_fetches.load(Ordering::SeqCst), 5);
    for _ in 0..3 {
        let c = governed_call().await;
        assert!(failing(&c), "{} {}", c.status, c.body);
        assert!(
            c.body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("circuit open")),
            "{}",
            c.body
        );
    }
    assert_eq!(up.broken_fetches.load(Ordering::SeqCst), 5);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), before);
}

/// sts.md §11.2 and §5.1 step 6, the re-exchange as the Gateway sends it: the record this
/// STS process minted a moment ago is bound from memory, yet refused once its subject is
/// revoked; a nonce is good once, even after a successful exchange.
#[tokio::test(flavor = "multi_thread")]
async fn the_re_exchange_refuses_a_revoked_subject_record_and_a_reused_nonce() {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    const KEY: &str = "6b0b7ac1c3c54f0d8a2e9e4b5d6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
    let upstream = echo().await;
    let (server, issuer) = common::runtime::server_with(&[("GATEWAY_STS_HMAC_KEY", KEY)]).await;
    let (z, b, edge, _) = governed(&server, &issuer, &upstream.url).await;
    let presented = mint(&issuer, &z, &b, &edge).await;
    let re_exchange = |nonce: &'static str, rid: &'static str| {
        let (issuer, presented, zone, app) = (
            issuer.clone(),
            presented.clone(),
            z.id.clone(),
            z.app.clone(),
        );
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", common::runtime::GRANT),
                    ("zone_id", zone.as_str()),
                    ("application_id", app.as_str()),
                    ("subject_token", presented.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("resource", RESOURCE),
                    ("request_method", "GET"),
                    ("request_path", "/v1/tickets"),
                    ("gateway_request_id", rid),
                ])
                .finish();
            let ts = chrono::Utc::now().timestamp().to_string();
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
            mac.update(
                format!(
                    "{ts}\n{nonce}\nPOST\n/oauth/2/token\n{}",
                    hex::encode(Sha256::digest(body.as_bytes()))
                )
                .as_bytes(),
            );
            let sig = hex::encode(mac.finalize().into_bytes());
            let resp = reqwest::Client::new()
                .post(format!("{issuer}/oauth/2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-request-id", rid)
                .header("x-caracal-gateway-timestamp", ts)
                .header("x-caracal-gateway-request", nonce)
                .header("x-caracal-gateway-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = re_exchange("nonce-one", "re-1").await;
    assert_eq!(s, 200, "{v}\n{}", server.logs());
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["use"],
        "resource"
    );
    assert_eq!(v["upstreams"][RESOURCE]["url"], upstream.url.as_str());

    let (s, v) = re_exchange("nonce-one", "re-2").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "access_denied");
    assert_eq!(v["error_description"], "invalid gateway exchange signature");

    // Revoking a grant revokes every active record of its subject (management-api.md §18):
    // the presented mandate's record among them.
    let admin = Admin::new(&server);
    let sub = claims(&presented)["sub"].as_str().unwrap().to_owned();
    let (_, list) = admin.get(&format!("/v1/zones/{}/resources", z.id)).await;
    let resource_id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identifier"] == RESOURCE)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .unwrap();
    let grants = format!("/v1/zones/{}/grants", z.id);
    let (s, g) = admin
        .post(
            &grants,
            json!({"application_id": z.app, "user_id": sub, "resource_id": resource_id,
                   "scopes": ["tickets:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let (s, v) = admin
        .delete(&format!("{grants}/{}", g["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = re_exchange("nonce-two", "re-3").await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "access_denied");
    assert_eq!(
        v["error_description"],
        "token authority record is not active for this application"
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);
}
