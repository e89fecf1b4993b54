//! Approval holds and federation at the STS (sts.md §4.5, §7) against the real binary:
//! a delegated mint whose scope the zone's policy gates becomes a hold; the hold is
//! observed (long-poll), decided by an operator or by a Federated user with the session
//! mandate their id token bought, and a retry naming it releases exactly one mandate (a
//! lost answer is re-issued for the same authority record). Every refusal of the
//! federation exchange and of the decision endpoint answers its documented error.

mod common;

use base64::Engine;
use common::runtime::{
    bootstrap, call_json, claims, exchange, p256, p521, server_with, sign_es256, sign_es512,
    zone_with_policy, EcKey, Zone, GRANT, RESOURCE,
};
use common::upstream::{self, Upstream};
use common::{eventually, Admin, Server};
use serde_json::{json, Value};

const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const IDP: &str = "https://idp.example";
const AUDIENCE: &str = "serval-tests";

fn gated_policy(approver: &str) -> String {
    format!(
        "\nrisk := [{{\"scope\": \"tickets:read\", \"tier\": \"payments\"}}]\n\
         approval_tiers := [{{\"tier\": \"payments\", \"approver\": \"{approver}\", \"ttl_seconds\": 600}}]\n"
    )
}

async fn start(up: &Upstream) -> (Server, String) {
    let ca = up.ca_file.display().to_string();
    server_with(&[
        ("SERVAL_UPSTREAM_CA_FILE", ca.as_str()),
        ("CARACAL_PRIVATE_EGRESS_HOSTS", "localhost"),
    ])
    .await
}

/// A governed pair: Session `a` delegated `tickets:read` on the resource to Session `b`.
struct Governed {
    session: String,
    edge: String,
}

async fn governed(issuer: &str, server: &Server, z: &Zone) -> Governed {
    governed_for(issuer, server, z, None).await
}

/// [`governed`] with Sessions acting for a user (`subject_session_id`: their record).
async fn governed_for(issuer: &str, server: &Server, z: &Zone, subject: Option<&str>) -> Governed {
    let (s, _, boot) = eventually(20, || async {
        let r = exchange(issuer, &bootstrap(z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{boot}");
    let lifecycle = boot["access_token"].as_str().unwrap();
    let base = server.url("coordinator");
    let zp = format!("/zones/{}", z.id);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = call_json(
            base,
            lifecycle,
            reqwest::Method::POST,
            &format!("{zp}/agents"),
            Some(match subject {
                Some(s) => json!({"application_id": z.app, "labels": ["agent"],
                                  "subject_session_id": s}),
                None => json!({"application_id": z.app, "labels": ["agent"]}),
            }),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["agent_session_id"].as_str().unwrap().to_owned());
    }
    let (s, e) = call_json(
        base,
        lifecycle,
        reqwest::Method::POST,
        &format!("{zp}/delegations"),
        Some(
            json!({"source_session_id": ids[0], "target_session_id": ids[1],
                    "issuer_application_id": z.app, "receiver_application_id": z.app,
                    "scopes": ["tickets:read"], "constraints": {"resources": [RESOURCE]},
                    "ttl_seconds": 900}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    Governed {
        session: ids[1].clone(),
        edge: e["delegation_edge_id"].as_str().unwrap().to_owned(),
    }
}

fn mint<'a>(z: &'a Zone, g: &'a Governed, approval: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("grant_type", GRANT),
        ("zone_id", z.id.as_str()),
        ("application_id", z.app.as_str()),
        ("client_secret", z.secret.as_str()),
        ("resource", RESOURCE),
        ("scope", "tickets:read"),
        ("agent_session_id", g.session.as_str()),
        ("delegation_edge_id", g.edge.as_str()),
    ];
    if let Some(a) = approval {
        f.push(("approval_id", a));
    }
    f
}

/// `GET /approvals/{id}[?wait=N]`: status and body.
async fn status(issuer: &str, id: &str, query: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{issuer}/approvals/{id}{query}"))
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// A hold's answer: `401 interaction_required` with every documented member.
fn assert_hold(r: &(u16, Option<String>, Value)) -> String {
    let (s, rid, v) = r;
    assert_eq!(*s, 401, "{v}");
    assert_eq!(v["error"], "interaction_required", "{v}");
    assert_eq!(v["approval_type"], "human_approval");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["tier"], "payments");
    assert_eq!(v["binding"].as_str().unwrap().len(), 64);
    assert!(v["approval_expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["requestId"].as_str(), rid.as_deref());
    v["approval_id"].as_str().unwrap().to_owned()
}

async fn frames(admin: &Admin, z: &str, event_type: &str, n: usize) -> Vec<Value> {
    eventually(20, || async {
        let (_, v) = admin
            .get(&format!("/v1/zones/{z}/audit?event_type={event_type}"))
            .await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= n).then_some(items)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gated_mint_is_held_until_an_operator_decides_and_releases_one_mandate() {
    let up = upstream::start().await;
    let (server, issuer) = start(&up).await;
    let admin = Admin::new(&server);
    let policy = gated_policy("any");
    let z = zone_with_policy(
        &admin,
        Some(&policy),
        json!({"upstream_url": "https://t.example"}),
    )
    .await;
    let g = governed(&issuer, &server, &z).await;

    // The gated mint is held, and asking again returns the same hold.
    let held = exchange(&issuer, &mint(&z, &g, None)).await;
    let id = assert_hold(&held);
    let again = exchange(&issuer, &mint(&z, &g, None)).await;
    assert_eq!(assert_hold(&again), id);
    assert_eq!(again.2["binding"], held.2["binding"]);

    // Observing: pending; malformed ids and waits are refused.
    let (s, v) = status(&issuer, &id, "").await;
    assert_eq!(
        (s, v["state"].as_str(), v["id"].as_str()),
        (200, Some("pending"), Some(id.as_str()))
    );
    assert_eq!(status(&issuer, "not-a-uuid", "").await.0, 404);
    assert_eq!(
        status(&issuer, &uuid::Uuid::new_v4().to_string(), "")
            .await
            .0,
        404
    );
    let (s, v) = status(&issuer, &id, "?wait=soon").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_token")));
    assert_eq!(status(&issuer, &id, "?wait=-1").await.0, 400);

    // A retry naming the pending hold is held again; a hold of another binding is refused.
    assert_eq!(
        assert_hold(&exchange(&issuer, &mint(&z, &g, Some(&id))).await),
        id
    );
    let stranger = uuid::Uuid::new_v4().to_string();
    let r = exchange(&issuer, &mint(&z, &g, Some(&stranger))).await;
    assert_eq!(
        (r.0, r.2["error"].as_str()),
        (401, Some("access_denied")),
        "{}",
        r.2
    );
    assert!(r.2.get("access_token").is_none());

    // A waiting observer sees the operator's decision.
    let waiter = {
        let (issuer, id) = (issuer.clone(), id.clone());
        tokio::spawn(async move { status(&issuer, &id, "?wait=20").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, v) = admin
        .post(
            &format!("/v1/zones/{}/approvals/{id}/approve", z.id),
            json!({"reason": "looks right"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = waiter.await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");

    // The retry mints once; the hold is consumed.
    let (s, _, v) = exchange(&issuer, &mint(&z, &g, Some(&id))).await;
    assert_eq!(s, 200, "{v}");
    let m = claims(v["access_token"].as_str().unwrap());
    assert_eq!(
        (m["use"].as_str(), m["scope"].as_str()),
        (Some("gateway"), Some("tickets:read"))
    );
    assert_eq!(status(&issuer, &id, "").await.1["state"], "consumed");
    // A lost answer is re-issued within 120 s: the same mandate, never a second one (a
    // `use=gateway` mandate is single use, and an approval releases one).
    let (s, _, again) = exchange(&issuer, &mint(&z, &g, Some(&id))).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["access_token"], v["access_token"]);
    assert!(again["expires_in"].as_i64() <= v["expires_in"].as_i64());
    assert_eq!(
        claims(again["access_token"].as_str().unwrap())["sid"],
        m["sid"]
    );

    // A new request after consumption is a new hold; a rejected hold refuses.
    let next = assert_hold(&exchange(&issuer, &mint(&z, &g, None)).await);
    assert_ne!(next, id);
    let (s, v) = admin
        .post(
            &format!("/v1/zones/{}/approvals/{next}/reject", z.id),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for approval in [Some(next.as_str()), None] {
        let r = exchange(&issuer, &mint(&z, &g, approval)).await;
        assert_eq!(
            (r.0, r.2["error"].as_str()),
            (403, Some("access_denied")),
            "{}",
            r.2
        );
        assert_eq!(r.2["error_description"], "approval was rejected");
    }

    // The hold's lifecycle is evidence: issued (pending), consumed twice (once re-issued).
    let issued = frames(&admin, &z.id, "step_up_issued", 2).await;
    assert!(
        issued.iter().all(|f| f["decision"] == "pending"),
        "{issued:?}"
    );
    let consumed = frames(&admin, &z.id, "step_up_consumed", 2).await;
    let reissued: Vec<bool> = consumed
        .iter()
        .map(|f| f["metadata_json"]["reissued"].as_bool().unwrap_or_default())
        .collect();
    assert!(
        reissued.contains(&true) && reissued.contains(&false),
        "{consumed:?}"
    );
}

fn id_token(key: &EcKey, kid: &str, iss: &str, sub: &str, aud: &str, exp_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    sign_es256(
        key,
        kid,
        &json!({"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + exp_in}),
    )
}

fn federate<'a>(z: &'a Zone, token: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", z.id.as_str()),
        ("application_id", z.app.as_str()),
        ("client_secret", z.secret.as_str()),
        ("subject_token", token),
        ("subject_token_type", ID_TOKEN),
    ]
}

async fn decide(issuer: &str, id: &str, bearer: Option<&str>, body: Value) -> (u16, Value, bool) {
    let mut req = reqwest::Client::new()
        .post(format!("{issuer}/approvals/{id}/decision"))
        .json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let s = resp.status().as_u16();
    let challenged = resp.headers().get("www-authenticate").is_some();
    (s, resp.json().await.unwrap_or(Value::Null), challenged)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_federated_user_gets_a_session_mandate_and_decides_a_subject_approval() {
    let up = upstream::start().await;
    let (server, issuer) = start(&up).await;
    let admin = Admin::new(&server);
    let policy = gated_policy("subject");
    let z = zone_with_policy(
        &admin,
        Some(&policy),
        json!({"upstream_url": "https://t.example"}),
    )
    .await;
    let issuers = format!("/v1/zones/{}/subject-issuers", z.id);

    // Registration: HTTPS without credentials, query or fragment; one live row per issuer.
    for bad in [
        json!({"issuer": "http://idp.example", "jwks_url": up.url("/jwks"), "audience": AUDIENCE}),
        json!({"issuer": IDP, "jwks_url": format!("{}?x=1", up.url("/jwks")), "audience": AUDIENCE}),
        json!({"issuer": "https://u:p@idp.example", "jwks_url": up.url("/jwks"), "audience": AUDIENCE}),
        json!({"issuer": IDP, "jwks_url": up.url("/jwks"), "audience": ""}),
        json!({"issuer": IDP, "jwks_url": up.url("/jwks")}),
    ] {
        let (s, v) = admin.post(&issuers, bad.clone()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_subject_issuer")),
            "{bad} {v}"
        );
    }
    let (s, row) = admin
        .post(
            &issuers,
            json!({"issuer": IDP, "jwks_url": up.url("/jwks"), "audience": "other"}),
        )
        .await;
    assert_eq!(s, 201, "{row}");
    let row_id = row["id"].as_str().unwrap().to_owned();
    assert_eq!(
        row["created_by"].as_str().map(|c| c.starts_with("admin:")),
        Some(true)
    );
    let (s, v) = admin
        .post(
            &issuers,
            json!({"issuer": IDP, "jwks_url": up.url("/jwks"), "audience": AUDIENCE}),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("subject_issuer_exists"))
    );
    let (s, v) = admin
        .patch(
            &format!("{issuers}/{row_id}"),
            json!({"audience": AUDIENCE}),
        )
        .await;
    assert_eq!((s, v["audience"].as_str()), (200, Some(AUDIENCE)), "{v}");
    let (s, list) = admin.get(&issuers).await;
    assert_eq!((s, list["items"].as_array().map(Vec::len)), (200, Some(1)));

    // The id token of a registered issuer buys the user's session mandate.
    let key = p256("idp-1");
    let p521_key = p521("idp-2");
    *up.jwks.lock().unwrap() = json!({"keys": [key.jwk, p521_key.jwk]});
    let alice = id_token(&key, "idp-1", IDP, "alice@example.com", AUDIENCE, 300);
    let (s, _, v) = exchange(&issuer, &federate(&z, &alice)).await;
    assert_eq!(s, 200, "{v}");
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "issued_token_type",
            "token_type"
        ]
    );
    assert_eq!(v["expires_in"], 900);
    let user_token = v["access_token"].as_str().unwrap().to_owned();
    let m = claims(&user_token);
    assert_eq!(
        (m["use"].as_str(), m["sub_type"].as_str(), m["sub"].as_str()),
        (Some("session"), Some("user"), Some("alice@example.com"))
    );
    assert!(m.get("scope").is_none() && m.get("target").is_none(), "{m}");
    assert_eq!(m["sid"], m["root_sid"]);
    assert_eq!(m["aud"], json!([issuer]));
    let sid = m["sid"].as_str().unwrap();
    let record = eventually(20, || async {
        let (_, r) = admin
            .get(&format!(
                "/v1/zones/{}/authority-records?authority_record_id={sid}",
                z.id
            ))
            .await;
        r["items"].as_array().and_then(|i| i.first()).cloned()
    })
    .await;
    assert_eq!(record["authority_record_type"], "user", "{record}");
    assert_eq!(record["subject_id"], "alice@example.com");
    // The key set was fetched once and is reused.
    let (s, _, _) = exchange(&issuer, &federate(&z, &alice)).await;
    assert_eq!(s, 200);
    assert_eq!(up.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    // ES512 (P-521) id tokens verify as well.
    let es512_token = |key: &common::runtime::P521Key, sub: &str, aud: &str| {
        let now = chrono::Utc::now().timestamp();
        sign_es512(
            key,
            "idp-2",
            &json!({"iss": IDP, "sub": sub, "aud": [aud], "iat": now, "exp": now + 300}),
        )
    };
    let (s, _, v) = exchange(
        &issuer,
        &federate(&z, &es512_token(&p521_key, "bob", AUDIENCE)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let bob = claims(v["access_token"].as_str().unwrap());
    assert_eq!(
        (bob["sub"].as_str(), bob["sub_type"].as_str()),
        (Some("bob"), Some("user"))
    );

    // Refusals: each `401 invalid_token` naming the reason, nothing minted.
    let other = p256("idp-1");
    let other_p521 = p521("idp-2");
    let hs = {
        let now = chrono::Utc::now().timestamp();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("idp-1".into());
        jsonwebtoken::encode(
            &h,
            &json!({"iss": IDP, "sub": "mallory", "aud": AUDIENCE, "iat": now, "exp": now + 300}),
            &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
        )
        .unwrap()
    };
    for (token, why) in [
        (
            id_token(&key, "idp-1", IDP, "alice", "someone-else", 300),
            "verification failed",
        ),
        (
            id_token(&key, "idp-1", IDP, "alice", AUDIENCE, -3600),
            "verification failed",
        ),
        (
            id_token(&key, "idp-9", IDP, "alice", AUDIENCE, 300),
            "unknown signing key",
        ),
        (
            id_token(&other, "idp-1", IDP, "alice", AUDIENCE, 300),
            "verification failed",
        ),
        (
            id_token(
                &key,
                "idp-1",
                "https://other.example",
                "alice",
                AUDIENCE,
                300,
            ),
            "not registered",
        ),
        (
            id_token(&key, "idp-1", IDP, "caracal:admin", AUDIENCE, 300),
            "reserved prefix",
        ),
        (
            id_token(&key, "idp-1", IDP, " alice", AUDIENCE, 300),
            "whitespace",
        ),
        (hs, "unsupported algorithm"),
        (
            es512_token(&other_p521, "bob", AUDIENCE),
            "verification failed",
        ),
        (
            es512_token(&p521_key, "bob", "someone-else"),
            "verification failed",
        ),
        (
            // The ES256 key named for an ES512 signature.
            {
                let t = es512_token(&p521_key, "bob", AUDIENCE);
                let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(json!({"alg": "ES512", "kid": "idp-1"}).to_string());
                format!("{h}.{}", t.split_once('.').unwrap().1)
            },
            "key does not fit the algorithm",
        ),
        ("not-a-jwt".to_owned(), "malformed"),
    ] {
        let (s, _, v) = exchange(&issuer, &federate(&z, &token)).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("invalid_token")),
            "{why}: {v}"
        );
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{why}: {v}"
        );
    }
    let mut with_resource = federate(&z, &alice);
    with_resource.push(("resource", RESOURCE));
    let (s, _, v) = exchange(&issuer, &with_resource).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_token")),
        "{v}"
    );
    let failed = frames(&admin, &z.id, "token_exchange", 1).await;
    assert!(
        failed
            .iter()
            .any(|f| f["evaluation_status"] == "subject_federation_invalid"),
        "{failed:?}"
    );

    // A subject-class hold is decided by the user, not the operator.
    let g = governed(&issuer, &server, &z).await;
    let held = exchange(&issuer, &mint(&z, &g, None)).await;
    let id = assert_hold(&held);
    let binding = held.2["binding"].as_str().unwrap().to_owned();
    let (s, v) = admin
        .post(
            &format!("/v1/zones/{}/approvals/{id}/approve", z.id),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("subject_approval_required"))
    );
    let approve = json!({"decision": "approved", "binding": binding, "reason": "mine"});
    let (s, v, challenged) = decide(&issuer, &id, None, approve.clone()).await;
    assert_eq!(
        (s, v["error"].as_str(), challenged),
        (401, Some("invalid_token"), true)
    );
    for bad in [
        json!({"decision": "maybe", "binding": binding}),
        json!({"binding": binding}),
        json!({"decision": "approved", "binding": binding, "reason": "x".repeat(501)}),
    ] {
        let (s, v, _) = decide(&issuer, &id, Some(&user_token), bad).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_token")),
            "{v}"
        );
    }
    let (s, _, boot) = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(s, 200);
    let app_token = boot["access_token"].as_str().unwrap();
    let (s, v, _) = decide(&issuer, &id, Some(app_token), approve.clone()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let (s, v, _) = decide(&issuer, &id, Some("not-a-mandate"), approve.clone()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    let wrong = json!({"decision": "approved", "binding": "ab".repeat(32)});
    let (s, v, _) = decide(&issuer, &id, Some(&user_token), wrong).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("access_denied")),
        "{v}"
    );
    let (s, v, _) = decide(&issuer, &id, Some(&user_token), approve.clone()).await;
    assert_eq!(
        (s, v["state"].as_str(), v["id"].as_str()),
        (200, Some("approved"), Some(id.as_str())),
        "{v}"
    );
    let (s, v, _) = decide(&issuer, &id, Some(&user_token), approve).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("access_denied")),
        "{v}"
    );
    assert_eq!(v["error_description"], "approval is not pending");

    // The user's approval releases the mint; the decision is on record as the subject's.
    let (s, _, v) = exchange(&issuer, &mint(&z, &g, Some(&id))).await;
    assert_eq!(s, 200, "{v}");
    let decided = frames(&admin, &z.id, "step_up_decided", 1).await;
    assert_eq!(decided[0]["decision"], "approved");
    assert_eq!(
        decided[0]["metadata_json"]["approver_plane"], "subject",
        "{decided:?}"
    );
    assert_eq!(decided[0]["metadata_json"]["approver_session_id"], sid);
    assert_eq!(
        decided[0]["metadata_json"]["approver_subject_id"],
        "subject:alice@example.com"
    );

    // A request acting for Alice is anchored to her: another user cannot decide it, nor can
    // the record it acts through; Alice, signed in afresh, can.
    let alice_sid = m["sid"].as_str().unwrap().to_owned();
    let ga = governed_for(&issuer, &server, &z, Some(&alice_sid)).await;
    let held = exchange(&issuer, &mint(&z, &ga, None)).await;
    let anchored = assert_hold(&held);
    let body = json!({"decision": "approved", "binding": held.2["binding"]});
    let bob_token = {
        let bob = id_token(&key, "idp-1", IDP, "bob@example.com", AUDIENCE, 300);
        let (s, _, v) = exchange(&issuer, &federate(&z, &bob)).await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    };
    let (s, v, _) = decide(&issuer, &anchored, Some(&bob_token), body.clone()).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (403, Some("approval belongs to another subject")),
        "{v}"
    );
    let (s, v, _) = decide(&issuer, &anchored, Some(&user_token), body.clone()).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (403, Some("an approver cannot decide its own request")),
        "{v}"
    );
    let (s, _, fresh) = exchange(&issuer, &federate(&z, &alice)).await;
    assert_eq!(s, 200, "{fresh}");
    let (s, v, _) = decide(&issuer, &anchored, fresh["access_token"].as_str(), body).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");

    // Caracal's official clients: federation, ApprovalRequired, the user's decision through
    // `decide_approval`, the long-poll and the released mint.
    let g2 = governed(&issuer, &server, &z).await;
    let bob = id_token(&key, "idp-1", IDP, "bob@example.com", AUDIENCE, 300);
    common::run_interop(
        &server,
        "sts_approvals.py",
        &[
            ("STS_URL", issuer.as_str()),
            ("ZONE_ID", z.id.as_str()),
            ("APPLICATION_ID", z.app.as_str()),
            ("CLIENT_SECRET", z.secret.as_str()),
            ("RESOURCE", RESOURCE),
            ("SESSION_ID", g2.session.as_str()),
            ("EDGE_ID", g2.edge.as_str()),
            ("ID_TOKEN", bob.as_str()),
        ],
    );

    // An archived issuer's tokens buy nothing more.
    assert_eq!(admin.delete(&format!("{issuers}/{row_id}")).await.0, 204);
    let (s, _, v) = exchange(&issuer, &federate(&z, &alice)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
}
