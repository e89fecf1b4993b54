//! What run-time tests share: a server whose STS listens where `ISSUER_URL` says, a zone
//! with an application, a resource and (optionally) an active policy granting it, and the
//! STS token exchange.

use serde_json::{json, Value};

use super::{eventually, Admin, Options, Server};

pub const STS_ADMIN: &str = "sts-admin-token-for-tests";
pub const RESOURCE: &str = "resource://tickets";

/// A server whose STS listens where `ISSUER_URL` says (verifiers fetch the JWKS from the
/// issuer).
pub async fn server() -> (Server, String) {
    server_with(&[]).await
}

pub async fn server_with(extra: &[(&str, &str)]) -> (Server, String) {
    let port = super::reserved_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let server = Server::start(Options {
        env: vec![
            ("SERVAL_STS_PORT".into(), port.to_string()),
            ("ISSUER_URL".into(), issuer.clone()),
            ("STS_ADMIN_TOKEN".into(), STS_ADMIN.into()),
        ]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect(),
        ..Default::default()
    })
    .await;
    assert_eq!(server.url("sts"), issuer);
    (server, issuer)
}

/// A zone with a managed application, the `resource://tickets` resource and (when
/// `policy`) an active policy set granting the resource to the application.
pub struct Zone {
    pub id: String,
    pub app: String,
    pub secret: String,
}

pub async fn zone(admin: &Admin, policy: bool) -> Zone {
    zone_with(
        admin,
        policy,
        json!({"upstream_url": "https://tickets.example"}),
    )
    .await
}

/// [`zone`] with the resource's upstream fields (`upstream_url`, `operations`, …) given.
pub async fn zone_with(admin: &Admin, policy: bool, upstream: Value) -> Zone {
    zone_with_policy(admin, policy.then_some(""), upstream).await
}

/// [`zone_with`] whose policy document (when `policy` is given) ends with `policy`'s rules
/// (e.g. `risk` and `approval_tiers`).
pub async fn zone_with_policy(admin: &Admin, policy: Option<&str>, upstream: Value) -> Zone {
    let (s, z) = admin.post("/v1/zones", json!({"name": "sts"})).await;
    assert_eq!(s, 201, "{z}");
    let z = z["id"].as_str().unwrap().to_owned();
    let (s, a) = admin
        .post(
            &format!("/v1/zones/{z}/applications"),
            json!({"name": "ticket-bot", "registration_method": "managed"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let app = a["id"].as_str().unwrap().to_owned();
    let secret = a["client_secret"].as_str().unwrap().to_owned();
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{z}/providers"),
            json!({"name": "mandate", "kind": "caracal_mandate"}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    // `agent:lifecycle` is mintable on a resource with an upstream URL (sts.md §4.2).
    let mut body = json!({"name": "Tickets", "identifier": RESOURCE, "scopes": ["tickets:read"],
                          "credential_provider_id": p["id"]});
    if let (Some(b), Some(u)) = (body.as_object_mut(), upstream.as_object()) {
        b.extend(u.clone());
    }
    let (s, r) = admin.post(&format!("/v1/zones/{z}/resources"), body).await;
    assert_eq!(s, 201, "{r}");
    if let Some(extra) = policy {
        let content = format!(
            "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n\
             app_ids := {{\"bot\": \"{app}\"}}\n\n\
             grants := {{\"{RESOURCE}\": {{\"application\": \"bot\", \"roles\": {{\"agent\": [\"tickets:read\"]}}}}}}\n{extra}"
        );
        let (s, p) = admin
            .post(
                &format!("/v1/zones/{z}/policies"),
                json!({"name": "grants", "content": content}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let (s, set) = admin
            .post(
                &format!("/v1/zones/{z}/policy-sets"),
                json!({"name": "main"}),
            )
            .await;
        assert_eq!(s, 201, "{set}");
        let set = set["id"].as_str().unwrap();
        let (s, v) = admin
            .post(
                &format!("/v1/zones/{z}/policy-sets/{set}/versions"),
                json!({"manifest": [{"policy_version_id": p["version_id"]}]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, act) = admin
            .post(
                &format!("/v1/zones/{z}/policy-sets/{set}/activate"),
                json!({"version_id": v["version_id"]}),
            )
            .await;
        assert_eq!(s, 202, "{act}");
        // Mint only once the STS has loaded the binding (no attempt spends a budget).
        let status = format!(
            "/v1/zones/{z}/policy-sets/{set}/activation-status?version_id={}",
            v["version_id"].as_str().unwrap()
        );
        eventually(20, || async {
            let (_, st) = admin.get(&status).await;
            (st["propagation_status"] == "loaded").then_some(())
        })
        .await;
    }
    Zone { id: z, app, secret }
}

/// `POST /oauth/2/token` with a form body; status, headers' request id, JSON body.
pub async fn exchange(sts: &str, fields: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    exchange_with(sts, fields, &[]).await
}

pub async fn exchange_with(
    sts: &str,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = reqwest::Client::new()
        .post(format!("{sts}/oauth/2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (
        status,
        rid,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub fn bootstrap<'a>(z: &'a Zone, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", &z.id),
        ("application_id", &z.app),
        ("client_secret", &z.secret),
        ("resource", RESOURCE),
        ("scope", scope),
    ]
}

/// A JWT's payload, unverified.
pub fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A JSON call with a bearer (the Coordinator's routes); status and body.
pub async fn call_json(
    base: &str,
    bearer: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A P-256 key pair: its PKCS#8 PEM (for signing) and its public JWK.
pub struct EcKey {
    pub pem: String,
    pub jwk: Value,
}

pub fn p256(kid: &str) -> EcKey {
    use base64::Engine;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    EcKey {
        pem: pair.serialize_pem(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64.encode(&point[1..33]),
            "y": b64.encode(&point[33..]),
        }),
    }
}

/// An ES256 JWS of `claims` under `key`, naming `kid`.
pub fn sign_es256(key: &EcKey, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A P-521 key pair (ES512; `jsonwebtoken` 9 cannot sign with it).
pub struct P521Key {
    pub key: p521::ecdsa::SigningKey,
    pub jwk: Value,
}

pub fn p521(kid: &str) -> P521Key {
    use base64::Engine;
    let key = p521::ecdsa::SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
    let point = p521::ecdsa::VerifyingKey::from(&key).to_encoded_point(false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    P521Key {
        key,
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-521", "kid": kid, "use": "sig", "alg": "ES512",
            "x": b64.encode(point.x().unwrap()),
            "y": b64.encode(point.y().unwrap()),
        }),
    }
}

/// An ES512 JWS of `claims` under `key`, naming `kid`.
pub fn sign_es512(key: &P521Key, kid: &str, claims: &Value) -> String {
    use base64::Engine;
    use p521::ecdsa::signature::Signer;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "ES512", "typ": "JWT", "kid": kid});
    let signed = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let sig: p521::ecdsa::Signature = key.key.sign(signed.as_bytes());
    format!("{signed}.{}", b64.encode(sig.to_bytes()))
}

/// A zone whose resource routes to `upstream`, a root Session A delegating
/// `tickets:read` on the resource to a Session B; returns the zone, B and the edge.
pub async fn governed(
    server: &Server,
    issuer: &str,
    upstream: &str,
) -> (Zone, String, String, String) {
    let admin = Admin::new(server);
    let z = zone_with(
        &admin,
        true,
        json!({"upstream_url": upstream, "operation_enforcement": "enforced",
               "scopes": ["tickets:read", "tickets:write"],
               "operations": [{"method": "GET", "path": "/v1/tickets", "scope": "tickets:read"},
                              {"method": "GET", "path": "/v1/stream", "scope": "tickets:read"},
                              {"method": "POST", "path": "/v1/tickets", "scope": "tickets:write"}]}),
    )
    .await;
    let (s, _, boot) = eventually(20, || async {
        let r = exchange(issuer, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{boot}");
    let lifecycle = boot["access_token"].as_str().unwrap().to_owned();
    let base = server.url("coordinator");
    let zp = format!("/zones/{}", z.id);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = call_json(
            base,
            &lifecycle,
            reqwest::Method::POST,
            &format!("{zp}/agents"),
            Some(json!({"application_id": z.app, "labels": ["agent"]})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["agent_session_id"].as_str().unwrap().to_owned());
    }
    let (s, e) = call_json(
        base,
        &lifecycle,
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
    let edge = e["delegation_edge_id"].as_str().unwrap().to_owned();
    (z, ids[1].clone(), edge, lifecycle)
}

/// A fresh single-use Gateway mandate for Session `b` over `edge`.
pub async fn mint(issuer: &str, z: &Zone, b: &str, edge: &str) -> String {
    let (s, _, v) = exchange(
        issuer,
        &[
            ("grant_type", GRANT),
            ("zone_id", &z.id),
            ("application_id", &z.app),
            ("client_secret", &z.secret),
            ("resource", RESOURCE),
            ("scope", "tickets:read"),
            ("agent_session_id", b),
            ("delegation_edge_id", edge),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_owned()
}
