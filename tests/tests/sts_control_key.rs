//! The control-key class (sts.md §4.6) against the real binary: an application with the
//! `control:invoke` trait mints a `use=resource` mandate for the control audience without a
//! policy decision and without sending `zone_id` (as Caracal's `ControlClient` does), inside
//! its `control:` traits; every other route to the control resource is refused with a
//! `control_resource_requires_control_key` frame.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::runtime::{exchange, exchange_with, server, zone, GRANT, RESOURCE};
use common::{eventually, Admin};
use serde_json::{json, Value};

const CONTROL: &str = "caracal-control";

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Caracal's `ControlClient` request: no `zone_id`, the control audience, `control:read`.
fn control_read<'a>(application_id: &'a str, secret: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("grant_type", GRANT),
        ("application_id", application_id),
        ("client_secret", secret),
        ("resource", CONTROL),
        ("scope", "control:read"),
    ]
}

async fn frames(admin: &Admin, zone: &str, rid: &str) -> Vec<Value> {
    eventually(20, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{zone}/audit/by-request/{rid}"))
            .await;
        v.as_array().filter(|i| !i.is_empty()).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_key_mints_for_the_control_audience_and_nothing_else_does() {
    let (server, issuer) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{}/applications", z.id),
            json!({"name": "ops-key", "registration_method": "managed",
                   "traits": ["control:invoke", "control:scope:control:read",
                              "control:max-ttl:300"]}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let key = a["id"].as_str().unwrap().to_owned();
    let secret = a["client_secret"].as_str().unwrap().to_owned();
    let control_form = control_read(&key, &secret);

    // No `zone_id`: the application's own zone, right after its creation; no policy runs;
    // capped by max-ttl.
    let (s, _, v) = exchange_with(
        &issuer,
        &control_form,
        &[("x-request-id", "control-mint-1")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["target_resources"], json!([CONTROL]));
    assert_eq!(v["scope"], "control:read");
    assert_eq!(v["expires_in"], 300);
    let m = claims(v["access_token"].as_str().unwrap());
    assert_eq!(
        (m["use"].as_str(), m["sub_type"].as_str(), m["sub"].as_str()),
        (Some("resource"), Some("application"), Some(key.as_str()))
    );
    assert_eq!(m["aud"], json!([CONTROL]));
    assert_eq!(m["target"], json!([CONTROL]));
    assert_eq!(m["zone_id"], z.id.as_str());
    assert_eq!(m["scope"], "control:read");
    assert_eq!(m["sid"], m["root_sid"]);
    assert_eq!(m["iss"], issuer.as_str());
    assert_eq!(m["exp"].as_i64().unwrap() - m["iat"].as_i64().unwrap(), 300);
    let allow = frames(&admin, &z.id, "control-mint-1").await;
    assert_eq!(allow[0]["decision"], "allow", "{allow:?}");
    assert_eq!(
        allow[0]["determining_policies_json"],
        json!([{"policy": "caracal-control-key"}])
    );
    // The mandate verifies against the zone's published keys.
    let jwks: Value = reqwest::get(format!("{issuer}/.well-known/jwks.json?zone_id={}", z.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = {
        let h = v["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .cloned()
            .unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[CONTROL]);
    validation.set_issuer(&[issuer.as_str()]);
    jsonwebtoken::decode::<Value>(
        v["access_token"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .expect("the control mandate verifies");

    // Refused with 403 and a frame: a scope the key does not hold, a binding, a mix, an
    // application that is not a control key.
    let (zid, k, sec) = (z.id.as_str(), key.as_str(), secret.as_str());
    let refusals: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("grant_type", GRANT),
                ("application_id", k),
                ("client_secret", sec),
                ("resource", CONTROL),
                ("scope", "control:write"),
            ],
            "control:write",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("zone_id", zid),
                ("application_id", k),
                ("client_secret", sec),
                ("resource", CONTROL),
                ("scope", "control:read"),
                ("session_id", "0199aaaa-0000-7000-8000-000000000000"),
            ],
            "Session",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("zone_id", zid),
                ("application_id", k),
                ("client_secret", sec),
                ("resource", CONTROL),
                ("resource", RESOURCE),
                ("scope", "control:read"),
            ],
            "only the control resource",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("zone_id", zid),
                ("application_id", z.app.as_str()),
                ("client_secret", z.secret.as_str()),
                ("resource", CONTROL),
                ("scope", "control:read"),
            ],
            "not a control key",
        ),
    ];
    for (i, (form, why)) in refusals.iter().enumerate() {
        let rid = format!("control-refused-{i}");
        let (s, _, v) = exchange_with(&issuer, form, &[("x-request-id", &rid)]).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("access_denied")),
            "{why}: {v}"
        );
        let d = v["error_description"].as_str().unwrap_or_default();
        assert!(d.contains("control key") && d.contains(why), "{why}: {v}");
        let f = frames(&admin, &z.id, &rid).await;
        assert_eq!(
            f[0]["evaluation_status"], "control_resource_requires_control_key",
            "{f:?}"
        );
    }

    // A key that ends soon mints nothing that outlives it.
    let ends = (chrono::Utc::now() + chrono::Duration::seconds(120)).format("%Y-%m-%dT%H:%M:%SZ");
    let (s, soon) = admin
        .post(
            &format!("/v1/zones/{}/applications", z.id),
            json!({"name": "ops-key-2", "registration_method": "managed",
                   "traits": ["control:invoke", "control:scope:control:read",
                              format!("control:expires:{ends}")]}),
        )
        .await;
    assert_eq!(s, 201, "{soon}");
    let form = [
        ("grant_type", GRANT),
        ("application_id", soon["id"].as_str().unwrap()),
        ("client_secret", soon["client_secret"].as_str().unwrap()),
        ("resource", CONTROL),
        ("scope", "control:read"),
        ("ttl_seconds", "3600"),
    ];
    let (s, _, v) = exchange(&issuer, &form).await;
    assert_eq!(s, 200, "{v}");
    let life = v["expires_in"].as_i64().unwrap();
    assert!((100..=120).contains(&life), "{v}");

    // A session mandate presented for the control resource: refused, with evidence.
    let (s, _, v) = exchange_with(
        &issuer,
        &[
            ("grant_type", GRANT),
            ("zone_id", zid),
            ("application_id", k),
            ("client_secret", sec),
            ("resource", CONTROL),
            ("scope", "control:read"),
            ("subject_token", "eyJhbGciOiJFUzI1NiJ9.e30.AA"),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ],
        &[("x-request-id", "control-with-subject")],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let f = frames(&admin, &z.id, "control-with-subject").await;
    assert_eq!(
        f[0]["evaluation_status"], "control_resource_requires_control_key",
        "{f:?}"
    );

    // Without `zone_id`, an application that is not a control key fails authentication, as
    // does a control key with a wrong secret.
    for (app, secret) in [(z.app.as_str(), z.secret.as_str()), (k, "wrong-secret")] {
        let (s, _, v) = exchange(&issuer, &control_read(app, secret)).await;
        assert_eq!(
            (s, v["error_description"].as_str()),
            (401, Some("invalid client credentials")),
            "{v}"
        );
    }
    // A non-control request without `zone_id` is still refused at authentication.
    let (s, _, v) = exchange(
        &issuer,
        &[
            ("grant_type", GRANT),
            ("application_id", k),
            ("client_secret", sec),
            ("resource", RESOURCE),
            ("scope", "agent:lifecycle"),
        ],
    )
    .await;
    assert_eq!(s, 401, "{v}");

    // With the Management API's control resource row (management-api.md §8): the key still
    // mints by the audience, and the row named by its id is the control resource all the same.
    let (s, row) = admin
        .post(
            &format!("/v1/zones/{}/resources", z.id),
            json!({"identifier": CONTROL, "scopes": ["control:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{row}");
    let (s, _, v) = exchange(&issuer, &control_form).await;
    assert_eq!(s, 200, "{v}");
    let row_id = row["id"].as_str().unwrap();
    let (s, _, v) = exchange_with(
        &issuer,
        &[
            ("grant_type", GRANT),
            ("zone_id", zid),
            ("application_id", z.app.as_str()),
            ("client_secret", z.secret.as_str()),
            ("resource", row_id),
            ("scope", "control:read"),
        ],
        &[("x-request-id", "control-by-row-id")],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let f = frames(&admin, &z.id, "control-by-row-id").await;
    assert_eq!(
        f[0]["evaluation_status"], "control_resource_requires_control_key",
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn control_mints_share_the_mint_budget() {
    let (server, issuer) =
        common::runtime::server_with(&[("STS_MINT_RATE_LIMIT_PER_MIN", "2")]).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, false).await;
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{}/applications", z.id),
            json!({"name": "ops-key", "registration_method": "managed",
                   "traits": ["control:invoke", "control:scope:control:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let form = control_read(
        a["id"].as_str().unwrap(),
        a["client_secret"].as_str().unwrap(),
    );
    let first = exchange(&issuer, &form).await;
    assert_eq!(first.0, 200, "{}", first.2);
    assert_eq!(first.2["expires_in"], 900, "no max-ttl trait: the default");
    assert_eq!(exchange(&issuer, &form).await.0, 200);
    let (s, _, v) = exchange(&issuer, &form).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (403, Some("control mint rate limit exceeded")),
        "{v}"
    );
}

/// Read-your-writes without a zone: a control key the Management API acknowledged but no
/// projector has applied yet (the request names no zone to wait for) is found once the
/// catalog catches up, instead of failing authentication.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_key_acknowledged_but_not_yet_projected_mints_without_a_zone() {
    use common::{Keys, Options, Server};
    let keys = Keys::default();
    let db = common::fresh_db().await;
    let prefix = common::unique(common::KEY_PREFIX);
    let port = common::reserved_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let opts = |services: Vec<&'static str>| Options {
        env: vec![
            ("SERVAL_STS_PORT".into(), port.to_string()),
            ("ISSUER_URL".into(), issuer.clone()),
            ("SERVAL_WRITE_VISIBILITY_TIMEOUT_MS".into(), "20000".into()),
        ],
        ..Options::sharing(&db, &prefix, &keys, services)
    };
    let mut first = Server::start(opts(vec![])).await;
    let (_, z) = Admin::new(&first)
        .post("/v1/zones", json!({"name": "control"}))
        .await;
    let zone = z["id"].as_str().unwrap().to_owned();
    first
        .checkpointed(&["zones", "admin_tokens", "catalog", "policies"])
        .await;
    first.kill();

    // No projector runs: the application is durable in the log only.
    let services = Server::start(opts(vec!["api", "sts"])).await;
    let (s, a) = Admin::new(&services)
        .post(
            &format!("/v1/zones/{zone}/applications"),
            json!({"name": "fresh-key", "registration_method": "managed",
                   "traits": ["control:invoke", "control:scope:control:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let (key, secret) = (
        a["id"].as_str().unwrap().to_owned(),
        a["client_secret"].as_str().unwrap().to_owned(),
    );
    let mint = tokio::spawn({
        let issuer = issuer.clone();
        async move { exchange(&issuer, &control_read(&key, &secret)).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!mint.is_finished(), "answered before the key was projected");
    let _projector = Server::start(opts(vec!["projector"])).await;
    let (s, _, v) = mint.await.unwrap();
    assert_eq!(s, 200, "the first attempt mints: {v}");
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["zone_id"],
        zone.as_str()
    );
}
