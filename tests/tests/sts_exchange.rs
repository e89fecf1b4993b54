//! The STS token exchange (sts.md §3–§5, §8–§13) against the real binary: the bootstrap
//! class end to end (application secret → policy → authority record → ES256 mandate →
//! `jti` → audit frames), every refusal it can reach, the JWKS and key rotation, and the
//! official Python clients (`caracalai-oauth`, `caracalai-verify`) against it.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{eventually, Admin};
use serde_json::{json, Value};

use common::runtime::{
    bootstrap, exchange, exchange_with, server, server_with, zone, RESOURCE, STS_ADMIN,
};

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The `token_exchange` frames of a zone's request that reached the audit ledger.
async fn frames(admin: &Admin, zone: &str, rid: &str, n: usize) -> Vec<Value> {
    eventually(20, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{zone}/audit/by-request/{rid}"))
            .await;
        let items = v.as_array().cloned().unwrap_or_default();
        (items.len() >= n).then_some(items)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_mints_a_session_mandate_with_its_record_jti_and_audit() {
    let (server, issuer) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    // The active binding reaches the STS through the log; until then the zone denies.
    let (s, rid, body) = eventually(20, || async {
        let r = exchange_with(
            &issuer,
            &bootstrap(&z, "agent:lifecycle"),
            &[("x-request-id", "req-boot-1")],
        )
        .await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(rid.as_deref(), Some("req-boot-1"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "agent:lifecycle");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["target_resources"], json!([RESOURCE]));
    let token = body["access_token"].as_str().unwrap();
    let header = segment(token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let claims = segment(token, 1);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], json!([issuer]));
    assert_eq!(claims["sub"], z.app.as_str());
    assert_eq!(claims["client_id"], z.app.as_str());
    assert_eq!(claims["zone_id"], z.id.as_str());
    assert_eq!(claims["use"], "session");
    assert_eq!(claims["sub_type"], "application");
    assert_eq!(claims["scope"], "agent:lifecycle");
    assert_eq!(claims["target"], json!([RESOURCE]));
    assert_eq!(claims["sid"], claims["root_sid"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims.get("nbf").is_none() && claims.get("act").is_none());
    // The signature is raw r‖s (64 bytes).
    let sig = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(2).unwrap())
        .unwrap();
    assert_eq!(sig.len(), 64);

    // The JWKS lists the signing key (the zone's first, created by this mint).
    let jwks: reqwest::Response =
        reqwest::get(format!("{issuer}/.well-known/jwks.json?zone_id={}", z.id))
            .await
            .unwrap();
    assert_eq!(jwks.status(), 200);
    assert_eq!(
        jwks.headers()["cache-control"],
        "public, max-age=300, must-revalidate"
    );
    let jwks: Value = jwks.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], header["kid"]);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(keys[0].get("d").is_none(), "no private part in the JWKS");

    // The authority record is an event, readable through the Management API.
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let record = eventually(20, || async {
        let (_, v) = admin
            .get(&format!(
                "/v1/zones/{}/authority-records?authority_record_id={sid}",
                z.id
            ))
            .await;
        v["items"].as_array().and_then(|i| i.first().cloned())
    })
    .await;
    assert_eq!(record["subject_id"], z.app.as_str());
    assert_eq!(record["status"], "active");

    // The jti is registered for the token's life.
    let mut conn = server.store().await.connection();
    let jti = claims["jti"].as_str().unwrap();
    let key = format!("{}:{{z:{}}}:jti:{jti}", server.prefix, z.id);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((850..=900).contains(&ttl), "jti ttl {ttl}");

    // The decision is an audit frame, ingested into the ledger with its policy input.
    let items = frames(&admin, &z.id, "req-boot-1", 1).await;
    let allow = items
        .iter()
        .find(|i| i["decision"] == "allow")
        .unwrap_or_else(|| panic!("{items:?}"));
    assert_eq!(allow["event_type"], "token_exchange");
    assert_eq!(allow["evaluation_status"], "complete");
    assert!(allow["policy_set_version_id"].is_string(), "{allow}");
    assert_eq!(allow["metadata_json"]["application_id"], z.app.as_str());
    assert_eq!(
        allow["metadata_json"]["policy_input"]["context"]["requested_scopes"],
        json!(["agent:lifecycle"])
    );

    // Nothing secret is in the log: the signing key's private half is sealed.
    let logs = server.logs();
    assert!(!logs.contains(&z.secret));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_answers_its_documented_error() {
    let (server, sts) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let other = zone(&admin, true).await;
    // Wait for the binding to load, so refusals below are the ones under test.
    eventually(20, || async {
        (exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await.0 == 200).then_some(())
    })
    .await;
    let code = |r: &(u16, Option<String>, Value)| {
        (
            r.0,
            r.2["error"].as_str().unwrap_or_default().to_owned(),
            r.2["error_description"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };

    // Encoding rules, before authentication.
    let raw = reqwest::Client::new()
        .post(format!("{sts}/oauth/2/token"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 415);
    let rid = raw.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["requestId"], rid.as_str());
    // The inbound request id is used verbatim, in the header and the body (sts.md §1).
    let mut wrong_grant = bootstrap(&z, "agent:lifecycle");
    wrong_grant[0] = ("grant_type", "password");
    let r = exchange_with(&sts, &wrong_grant, &[("x-request-id", "odd id/1 ~")]).await;
    assert_eq!(r.1.as_deref(), Some("odd id/1 ~"));
    assert_eq!(r.2["requestId"], "odd id/1 ~");
    let mut dup = bootstrap(&z, "agent:lifecycle");
    dup.push(("zone_id", "again"));
    assert_eq!(
        code(&exchange(&sts, &dup).await),
        (
            400,
            "invalid_token".into(),
            "duplicate form field: zone_id".into()
        )
    );
    let mut assertion = bootstrap(&z, "agent:lifecycle");
    assertion.push(("client_assertion", ""));
    assert_eq!(code(&exchange(&sts, &assertion).await).0, 400);
    let mut ttl = bootstrap(&z, "agent:lifecycle");
    ttl.push(("ttl_seconds", "ten"));
    assert_eq!(code(&exchange(&sts, &ttl).await).2, "invalid ttl_seconds");
    let names: Vec<String> = (0..33).map(|i| format!("resource://r{i}")).collect();
    let mut many = bootstrap(&z, "agent:lifecycle");
    many.extend(names.iter().map(|n| ("resource", n.as_str())));
    assert_eq!(
        code(&exchange(&sts, &many).await),
        (
            400,
            "invalid_token".into(),
            "at most 32 resource values are accepted".into()
        )
    );
    let gateway = exchange_with(
        &sts,
        &bootstrap(&z, "agent:lifecycle"),
        &[("x-caracal-gateway-timestamp", "1")],
    )
    .await;
    assert_eq!(
        code(&gateway),
        (
            401,
            "access_denied".into(),
            "invalid gateway exchange signature".into()
        )
    );
    let mut grant = bootstrap(&z, "agent:lifecycle");
    grant[0] = ("grant_type", "client_credentials");
    assert_eq!(
        code(&exchange(&sts, &grant).await).2,
        "unsupported grant_type"
    );

    // Client authentication.
    let mut wrong = bootstrap(&z, "agent:lifecycle");
    wrong[3] = ("client_secret", "cs_wrong");
    assert_eq!(
        code(&exchange(&sts, &wrong).await),
        (
            401,
            "access_denied".into(),
            "invalid client credentials".into()
        )
    );
    let mut unknown = bootstrap(&z, "agent:lifecycle");
    unknown[2] = ("application_id", "no-such-app");
    assert_eq!(code(&exchange(&sts, &unknown).await).0, 401);
    let mut elsewhere = bootstrap(&z, "agent:lifecycle");
    elsewhere[1] = ("zone_id", &other.id);
    assert_eq!(code(&exchange(&sts, &elsewhere).await).1, "zone_invalid");

    // After authentication.
    let no_resource: Vec<_> = bootstrap(&z, "agent:lifecycle")
        .into_iter()
        .filter(|(k, _)| *k != "resource")
        .collect();
    assert_eq!(
        code(&exchange(&sts, &no_resource).await),
        (
            400,
            "invalid_token".into(),
            "at least one resource is required".into()
        )
    );
    let mut subject = bootstrap(&z, "agent:lifecycle");
    subject.push(("subject_token", "x.y.z"));
    subject.push((
        "subject_token_type",
        "urn:ietf:params:oauth:token-type:access_token",
    ));
    assert_eq!(
        code(&exchange(&sts, &subject).await),
        (
            403,
            "access_denied".into(),
            "resource exchanges must use the Gateway".into()
        )
    );
    let mut edge = bootstrap(&z, "tickets:read");
    edge.push(("delegation_edge_id", "e1"));
    assert_eq!(
        code(&exchange(&sts, &edge).await).2,
        "delegation requires a target Session"
    );
    let mut session = bootstrap(&z, "tickets:read");
    session.push(("agent_session_id", "s-none"));
    assert_eq!(code(&exchange(&sts, &session).await).2, "Session not found");
    let mut record = bootstrap(&z, "agent:lifecycle");
    record.push(("session_id", "ar-none"));
    assert_eq!(code(&exchange(&sts, &record).await).0, 403);
    let mut long = bootstrap(&z, "agent:lifecycle");
    long.push(("ttl_seconds", "3601"));
    assert_eq!(
        code(&exchange(&sts, &long).await).2,
        "ttl_seconds exceeds token TTL cap"
    );
    let mut negative = bootstrap(&z, "agent:lifecycle");
    negative.push(("ttl_seconds", "-5"));
    assert_eq!(
        code(&exchange(&sts, &negative).await).2,
        "ttl_seconds must be positive"
    );
    let mut short = bootstrap(&z, "agent:lifecycle");
    short.push(("ttl_seconds", "60"));
    assert_eq!(exchange(&sts, &short).await.2["expires_in"], 60);

    // A business scope without a Session or Delegation matches no rule of the contract.
    let business = exchange_with(
        &sts,
        &bootstrap(&z, "tickets:read"),
        &[("x-request-id", "req-business")],
    )
    .await;
    assert_eq!(
        code(&business),
        (
            403,
            "access_denied".into(),
            "policy denied (no_rule_matched)".into()
        )
    );
    // Skips are audited with their reason.
    let mut missing = bootstrap(&z, "agent:lifecycle");
    missing[4] = ("resource", "resource://nowhere");
    let r = exchange_with(&sts, &missing, &[("x-request-id", "req-missing")]).await;
    assert_eq!(
        code(&r),
        (403, "access_denied".into(), "policy denied".into())
    );
    let mut scope = bootstrap(&z, "tickets:write");
    scope[4] = ("resource", RESOURCE);
    let r = exchange_with(&sts, &scope, &[("x-request-id", "req-scope")]).await;
    assert_eq!(r.0, 403);
    let items = frames(&admin, &z.id, "req-missing", 1).await;
    assert_eq!(items[0]["evaluation_status"], "resource_not_found");
    assert_eq!(items[0]["decision"], "deny");
    let items = frames(&admin, &z.id, "req-scope", 1).await;
    assert_eq!(items[0]["evaluation_status"], "scope_mismatch");
    let items = frames(&admin, &z.id, "req-business", 1).await;
    assert_eq!(items[0]["evaluation_status"], "complete");
    assert_eq!(
        items[0]["diagnostics_json"],
        json!([{"reason": "no_rule_matched"}])
    );

    // A zone without an active policy set denies everything.
    let bare = zone(&admin, false).await;
    assert_eq!(
        code(&exchange(&sts, &bootstrap(&bare, "agent:lifecycle")).await).2,
        "policy denied (no_active_policy_set)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_and_rotation_publish_the_next_key_before_it_signs() {
    let (server, sts) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let jwks = |zone: String| {
        let sts = sts.clone();
        async move {
            let r = reqwest::get(format!("{sts}/.well-known/jwks.json?zone_id={zone}"))
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let r = reqwest::get(format!("{sts}/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A zone that never minted has no keys.
    assert_eq!(jwks(z.id.clone()).await.0, 404);
    let first = eventually(20, || async {
        let r = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r.2)
    })
    .await;
    let kid1 = segment(first["access_token"].as_str().unwrap(), 0)["kid"].clone();

    let rotate = |token: &'static str| {
        let url = format!("{sts}/internal/zones/{}/signing-key/rotate", z.id);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(rotate("wrong").await.0, 401);
    let (s, body) = rotate(STS_ADMIN).await;
    assert_eq!(s, 200, "{body}");
    let rotated: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rotated["rotated"], true);
    let kid2 = rotated["kid"].clone();
    assert_ne!(kid1, kid2);
    // Published at once, signing only later: a mint right after the rotation is signed
    // with the key every verifier already knows.
    let (_, doc) = jwks(z.id.clone()).await;
    let kids: Vec<&Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids, [&kid1, &kid2]);
    let after = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(after.0, 200);
    assert_eq!(
        segment(after.2["access_token"].as_str().unwrap(), 0)["kid"],
        kid1
    );
    // The key events are in the log; the private halves only sealed.
    let pool = common::pool(&server.db_url).await;
    let docs: Vec<Value> = sqlx::query_scalar(
        "SELECT doc FROM catalog_objects WHERE kind = 'signing_key' AND zone_id = $1",
    )
    .bind(&z.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(docs.len(), 2);
    for d in docs {
        let sealed = d["data"]["signing_key"]["sealed_private_key"]
            .as_str()
            .unwrap();
        assert!(!sealed.contains("PRIVATE KEY") && sealed.len() > 100);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn official_oauth_and_verify_clients_accept_the_bootstrap_mandate() {
    let (server, sts) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    eventually(20, || async {
        (exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await.0 == 200).then_some(())
    })
    .await;
    common::run_interop(
        &server,
        "sts_bootstrap.py",
        &[
            ("STS_URL", &sts),
            ("ZONE_ID", &z.id),
            ("APPLICATION_ID", &z.app),
            ("CLIENT_SECRET", &z.secret),
            ("RESOURCE", RESOURCE),
            ("STS_ADMIN_TOKEN", STS_ADMIN),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_lock_the_application_out_and_mints_are_budgeted() {
    let (server, sts) = server_with(&[
        ("STS_AUTH_FAIL_LIMIT_PER_MIN", "3"),
        ("STS_MINT_RATE_LIMIT_PER_MIN", "2"),
    ])
    .await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    // Two mints of the resource fit the budget (the first waits for the binding).
    eventually(20, || async {
        (exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await.0 == 200).then_some(())
    })
    .await;
    let second = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(second.0, 200, "{}", second.2);
    // The third is skipped as rate limited: no resource left, so the exchange is denied.
    let third = exchange_with(
        &sts,
        &bootstrap(&z, "agent:lifecycle"),
        &[("x-request-id", "req-third")],
    )
    .await;
    assert_eq!(
        (third.0, third.2["error"].as_str()),
        (403, Some("access_denied"))
    );
    let items = frames(&admin, &z.id, "req-third", 1).await;
    assert_eq!(items[0]["evaluation_status"], "rate_limited");

    // Three failures answer 401; the fourth crosses the limit and answers 429, and from
    // then on the application id is locked out, right secret or not.
    let mut wrong = bootstrap(&z, "agent:lifecycle");
    wrong[3] = ("client_secret", "cs_wrong");
    for _ in 0..3 {
        assert_eq!(exchange(&sts, &wrong).await.0, 401);
    }
    let locked = exchange(&sts, &wrong).await;
    assert_eq!(
        (locked.0, locked.2["error"].as_str()),
        (429, Some("provider_rate_limited"))
    );
    let right = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(right.0, 429, "{}", right.2);
    assert_eq!(
        right.2["error_description"],
        "authentication rate limit exceeded"
    );
}

/// `STS_KEY_ROTATION_SECS`: a zone whose newest key has signed that long gets its next key
/// published by the schedule (not signing yet), and a key waiting to sign never triggers
/// another rotation.
#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_on_schedule_and_publish_before_signing() {
    let (server, sts) = server_with(&[("STS_KEY_ROTATION_SECS", "2")]).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let first = eventually(20, || async {
        let r = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r.2)
    })
    .await;
    let kid1 = segment(first["access_token"].as_str().unwrap(), 0)["kid"].clone();
    let jwks_kids = || async {
        let doc: Value = reqwest::get(format!("{sts}/.well-known/jwks.json?zone_id={}", z.id))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].clone())
            .collect::<Vec<Value>>()
    };
    // The first key signed from 60 s before its creation: the schedule rotates at once.
    let kids = eventually(30, || async {
        let kids = jwks_kids().await;
        (kids.len() == 2).then_some(kids)
    })
    .await;
    assert_eq!(kids[0], kid1);
    // Several more checks (every second): the waiting key defers the schedule.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(jwks_kids().await, kids);
    let after = exchange(&sts, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(after.0, 200, "{}", after.2);
    assert_eq!(
        segment(after.2["access_token"].as_str().unwrap(), 0)["kid"],
        kid1
    );
}
