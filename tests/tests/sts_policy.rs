//! The STS's compiled-engine cache through its internal routes: a zone without an active
//! set fails closed, activation and deletion reach the cache through the log, a version is
//! compiled once and reused.

mod common;

use common::{eventually, Admin, Options, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "gateway-sts-test-key";
const APP_ID: &str = "0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e01";

fn doc(body: &str) -> String {
    format!("# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n{body}\n")
}

struct Sts {
    http: reqwest::Client,
    base: String,
}

impl Sts {
    async fn call(&self, method: &str, path: &str, body: Option<Value>, key: &str) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let ts = chrono::Utc::now().timestamp().to_string();
        let rid = uuid::Uuid::new_v4().to_string();
        let canonical = format!(
            "{ts}\n{rid}\n{method}\n{path}\n{}",
            hex::encode(Sha256::digest(&bytes))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(canonical.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let resp = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .header("x-caracal-gateway-timestamp", ts)
            .header("x-caracal-gateway-request", rid)
            .header("x-caracal-gateway-signature", sig)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn decide(&self, zone: &str, input: &Value) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/internal/policy/decide/{zone}"),
            Some(json!({ "input": input })),
            KEY,
        )
        .await
    }
}

fn mint(zone: &str, scopes: &[&str]) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": APP_ID, "zone_id": zone,
                       "agent_session_id": "s-1", "labels": ["clerk"] },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger", "scopes": scopes },
        "action": { "id": "TokenExchange" },
        "delegation_edge": { "id": "e1", "scopes": scopes },
        "context": { "actor_claims": {}, "challenge_resolved": false, "requested_scopes": scopes,
                     "agent_session_id": "s-1", "delegation_edge_id": "e1" }
    })
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.url("sts")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_cache_follows_the_log_and_fails_closed() {
    let server = Server::start(Options {
        env: vec![("GATEWAY_STS_HMAC_KEY".into(), KEY.into())],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let sts = Sts {
        http: reqwest::Client::new(),
        base: server.url("sts").to_owned(),
    };
    let (_, z) = admin.post("/v1/zones", json!({ "name": "Engine" })).await;
    let z = z["id"].as_str().unwrap().to_owned();

    // An extreme timestamp is a refusal, not an overflow that drops the connection.
    let extreme = sts
        .http
        .get(format!("{}/internal/policy/status/{z}", sts.base))
        .header("x-caracal-gateway-timestamp", i64::MIN.to_string())
        .header("x-caracal-gateway-request", "n")
        .header("x-caracal-gateway-signature", "00")
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(extreme.status(), 401);

    // No active set: fail closed.
    let (s, r) = sts.decide(&z, &mint(&z, &["ledger:read"])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (503, Some("policy_eval_failed")),
        "{r}"
    );
    let (s, r) = sts
        .call("GET", &format!("/internal/policy/status/{z}"), None, KEY)
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["loaded"], false);

    // Signatures are required.
    let (s, r) = sts
        .call(
            "GET",
            &format!("/internal/policy/status/{z}"),
            None,
            "wrong-key",
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (401, Some("access_denied")));
    let unsigned = reqwest::get(format!("{}/internal/policy/status/{z}", server.url("sts")))
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    let bindings = doc(&format!("app_ids := {{\"ledger-bot\": \"{APP_ID}\"}}"));
    let wide = doc(
        r#"grants := {"resource://ledger": {"application": "ledger-bot", "roles": {"clerk": ["ledger:read", "ledger:write"]}}}"#,
    );
    let narrow = doc(
        r#"grants := {"resource://ledger": {"application": "ledger-bot", "roles": {"clerk": ["ledger:read"]}}}"#,
    );
    let (_, b) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({"name": "bindings", "content": bindings}),
        )
        .await;
    let (_, g) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({"name": "grants", "content": wide}),
        )
        .await;
    let (_, g2) = admin
        .post(
            &format!(
                "/v1/zones/{z}/policies/{}/versions",
                g["id"].as_str().unwrap()
            ),
            json!({"content": narrow}),
        )
        .await;
    let (_, set) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets"),
            json!({"name": "main"}),
        )
        .await;
    let set = set["id"].as_str().unwrap().to_owned();
    let version = |pv: &Value| json!({"manifest": [{"policy_version_id": b["version_id"]}, {"policy_version_id": pv}]});
    let (s, v1) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/versions"),
            version(&g["version_id"]),
        )
        .await;
    assert_eq!(s, 201, "{v1}");
    let (s, v2) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/versions"),
            version(&g2["version_id"]),
        )
        .await;
    assert_eq!(s, 201, "{v2}");
    let (v1, v2) = (
        v1["version_id"].as_str().unwrap().to_owned(),
        v2["version_id"].as_str().unwrap().to_owned(),
    );

    // Activation reaches the cache through the log: `write` is allowed under v1.
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/activate"),
            json!({"version_id": v1}),
        )
        .await;
    assert_eq!(s, 202);
    let r = eventually(15, || async {
        let (s, r) = sts.decide(&z, &mint(&z, &["ledger:write"])).await;
        (s == 200 && r["policy_set_version_id"] == v1.as_str()).then_some(r)
    })
    .await;
    assert_eq!(r["result"]["decision"], "allow", "{r}");
    let (_, st) = sts
        .call("GET", &format!("/internal/policy/status/{z}"), None, KEY)
        .await;
    assert_eq!(
        (st["loaded"].as_bool(), st["policy_set_version_id"].as_str()),
        (Some(true), Some(v1.as_str()))
    );

    // Compiled once: many decisions compile nothing more.
    let compiled = metric(&server, "serval_policy_bundles_compiled_total").await;
    for _ in 0..50 {
        let (s, _) = sts.decide(&z, &mint(&z, &["ledger:read"])).await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        metric(&server, "serval_policy_bundles_compiled_total").await,
        compiled
    );

    // Issue 14 item 1: a validly signed invalidation naming another zone with this zone's
    // version (a forged or misrouted message) is refused: the other zone stays fail-closed.
    let (_, other) = admin.post("/v1/zones", json!({ "name": "Other" })).await;
    let other = other["id"].as_str().unwrap().to_owned();
    let store = server.store().await;
    let mut conn = store.connection();
    serval_streams::topics::publish(
        &mut conn,
        &format!(
            "{}:{}",
            server.prefix,
            serval_streams::topics::POLICY_INVALIDATE
        ),
        Some(&hex::decode(&server.keys.streams).unwrap()),
        &[
            (
                "outbox_id".to_owned(),
                Some(uuid::Uuid::now_v7().to_string()),
            ),
            ("zone_id".to_owned(), Some(other.clone())),
            ("policy_set_id".to_owned(), Some(set.clone())),
            ("policy_set_version_id".to_owned(), Some(v1.clone())),
        ],
    )
    .await
    .unwrap();
    // Activating the narrower version changes the decision.
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/activate"),
            json!({"version_id": v2}),
        )
        .await;
    assert_eq!(s, 202);
    let r = eventually(15, || async {
        let (s, r) = sts.decide(&z, &mint(&z, &["ledger:write"])).await;
        (s == 200 && r["policy_set_version_id"] == v2.as_str()).then_some(r)
    })
    .await;
    assert_eq!(
        r["result"]["diagnostics"],
        json!([{"reason": "role_scope_mismatch"}]),
        "{r}"
    );
    // The follower handles messages in order: the forged one was handled before this one.
    let (s, r) = sts.decide(&other, &mint(&other, &["ledger:write"])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (503, Some("policy_eval_failed")),
        "another zone's version was installed: {r}"
    );

    // Deleting the active set: deny everything again.
    let (s, _) = admin
        .delete(&format!("/v1/zones/{z}/policy-sets/{set}"))
        .await;
    assert_eq!(s, 204);
    eventually(15, || async {
        let (s, _) = sts.decide(&z, &mint(&z, &["ledger:read"])).await;
        (s == 503).then_some(())
    })
    .await;

    // The internal simulate route compiles what it is given.
    let (s, r) = sts
        .call(
            "POST",
            "/internal/policy/simulate",
            Some(json!({"policy_set_id": "ps", "version_id": "v", "manifest_sha256": "m",
                        "policies": [{"id": "a", "content": doc(&format!("app_ids := {{\"ledger-bot\": \"{APP_ID}\"}}"))},
                                     {"id": "b", "content": doc(r#"grants := {"resource://ledger": {"application": "ledger-bot", "roles": {"clerk": ["ledger:read"]}}}"#)}],
                        "input": mint(&z, &["ledger:read"])})),
            KEY,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["result"]["decision"], "allow");
    let (s, _) = sts
        .call(
            "POST",
            "/internal/policy/simulate",
            Some(json!({"policies": []})),
            KEY,
        )
        .await;
    assert_eq!(s, 400);
    let (s, r) = sts
        .call(
            "POST",
            "/internal/policy/simulate",
            Some(json!({"policies": [{"id": "x", "content": "package x"}]})),
            KEY,
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (422, Some("policy_eval_failed")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_sts_loads_active_bundles_from_the_read_model() {
    let first = Server::start(Options {
        env: vec![("GATEWAY_STS_HMAC_KEY".into(), KEY.into())],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&first);
    let (_, z) = admin.post("/v1/zones", json!({ "name": "Restart" })).await;
    let z = z["id"].as_str().unwrap().to_owned();
    let (_, b) = admin
        .post(&format!("/v1/zones/{z}/policies"), json!({"name": "b", "content": doc(&format!("app_ids := {{\"ledger-bot\": \"{APP_ID}\"}}"))}))
        .await;
    let (_, g) = admin
        .post(&format!("/v1/zones/{z}/policies"), json!({"name": "g", "content": doc(r#"grants := {"resource://ledger": {"application": "ledger-bot", "roles": {"clerk": ["ledger:read"]}}}"#)}))
        .await;
    let (_, set) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets"),
            json!({"name": "main"}),
        )
        .await;
    let set = set["id"].as_str().unwrap().to_owned();
    let (_, v) = admin
        .post(&format!("/v1/zones/{z}/policy-sets/{set}/versions"), json!({"manifest": [{"policy_version_id": b["version_id"]}, {"policy_version_id": g["version_id"]}]}))
        .await;
    admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/activate"),
            json!({"version_id": v["version_id"]}),
        )
        .await;
    admin.settle(&[&z]).await;

    // A separate STS process of the same deployment, started afterwards.
    let sts_only = Server::start(Options {
        env: vec![("GATEWAY_STS_HMAC_KEY".into(), KEY.into())],
        ..Options::sharing(&first.db_url, &first.prefix, &first.keys, vec!["sts"])
    })
    .await;
    let sts = Sts {
        http: reqwest::Client::new(),
        base: sts_only.url("sts").to_owned(),
    };
    let r = eventually(15, || async {
        let (s, r) = sts.decide(&z, &mint(&z, &["ledger:read"])).await;
        (s == 200).then_some(r)
    })
    .await;
    assert_eq!(r["result"]["decision"], "allow", "{r}");
    assert_eq!(r["policy_set_version_id"], v["version_id"]);
}
