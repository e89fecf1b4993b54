//! RFC 7523 client assertions at the STS: an application registers public keys (`jwks`)
//! through the Management API and authenticates a token exchange with a JWT signed by one of
//! them instead of its secret — for the token endpoint, short-lived, its `jti` single use.
//! Every other assertion is refused as a wrong secret is, and registering a private key is
//! refused at the API.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{eventually, Admin};
use serde_json::{json, Value};

use common::runtime::{
    bootstrap, claims, exchange, p256, server, sign_es256 as sign, zone, GRANT, RESOURCE,
};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn assertion_claims(app: &str, aud: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": app, "sub": app, "aud": aud, "iat": now, "exp": now + exp_in,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn with_assertion<'a>(zone: &'a str, app: &'a str, jwt: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", zone),
        ("application_id", app),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", jwt),
        ("resource", RESOURCE),
        ("scope", "agent:lifecycle"),
    ]
}

fn refused(r: &(u16, Option<String>, Value)) -> bool {
    r.0 == 401 && r.2["error"] == "access_denied"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_key_signs_single_use_assertions_and_nothing_else_passes() {
    let (server, issuer) = server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let endpoint = format!("{issuer}/oauth/2/token");
    let key = p256("k1");
    let other = p256("k1");

    // Registering: public keys only, through an additive field.
    let path = format!("/v1/zones/{}/applications/{}", z.id, z.app);
    let mut private = key.jwk.clone();
    private["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let (s, body) = admin
        .patch(&path, json!({"jwks": {"keys": [private]}}))
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_application")),
        "{body}"
    );
    let (s, body) = admin
        .patch(&path, json!({"jwks": {"keys": [key.jwk.clone()]}}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["jwks"]["keys"][0]["kid"], "k1");
    assert!(body.get("client_secret").is_none());

    // A good assertion mints like the secret does (the binding reaches the STS via the log).
    let first = eventually(20, || async {
        let jwt = sign(&key, "k1", &assertion_claims(&z.app, &endpoint, 60));
        let r = exchange(&issuer, &with_assertion(&z.id, &z.app, &jwt)).await;
        (r.0 == 200).then_some((jwt, r))
    })
    .await;
    let (jwt, (_, _, body)) = first;
    let mandate = claims(body["access_token"].as_str().unwrap());
    assert_eq!(mandate["sub"], z.app.as_str());
    assert_eq!(mandate["use"], "session");

    // The same assertion again: its jti is spent.
    assert!(refused(
        &exchange(&issuer, &with_assertion(&z.id, &z.app, &jwt)).await
    ));
    // The issuer itself is an accepted audience too.
    let jwt = sign(&key, "k1", &assertion_claims(&z.app, &issuer, 60));
    let r = exchange(&issuer, &with_assertion(&z.id, &z.app, &jwt)).await;
    assert_eq!(r.0, 200, "{}", r.2);

    let cases: Vec<(&str, String)> = vec![
        (
            "another audience",
            sign(
                &key,
                "k1",
                &assertion_claims(&z.app, "https://elsewhere.example/token", 60),
            ),
        ),
        (
            "an hour-long assertion",
            sign(&key, "k1", &assertion_claims(&z.app, &endpoint, 3_600)),
        ),
        (
            "an expired assertion",
            sign(&key, "k1", &assertion_claims(&z.app, &endpoint, -120)),
        ),
        (
            "an unregistered key under the registered kid",
            sign(&other, "k1", &assertion_claims(&z.app, &endpoint, 60)),
        ),
        (
            "an unknown kid",
            sign(&key, "k2", &assertion_claims(&z.app, &endpoint, 60)),
        ),
        ("another issuer", {
            let mut c = assertion_claims(&z.app, &endpoint, 60);
            c["iss"] = json!("someone-else");
            sign(&key, "k1", &c)
        }),
        ("an assertion issued an hour from now", {
            let mut c = assertion_claims(&z.app, &endpoint, 60);
            c["iat"] = json!(chrono::Utc::now().timestamp() + 3_600);
            sign(&key, "k1", &c)
        }),
        ("no jti", {
            let mut c = assertion_claims(&z.app, &endpoint, 60);
            c.as_object_mut().unwrap().remove("jti");
            sign(&key, "k1", &c)
        }),
        ("an unsigned token", {
            let c = assertion_claims(&z.app, &endpoint, 60);
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#),
                URL_SAFE_NO_PAD.encode(c.to_string())
            )
        }),
        ("a payload-tampered copy", {
            let good = sign(&key, "k1", &assertion_claims(&z.app, &endpoint, 60));
            let parts: Vec<&str> = good.split('.').collect();
            let mut c = assertion_claims(&z.app, &endpoint, 60);
            c["jti"] = json!("tampered");
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(c.to_string()),
                parts[2]
            )
        }),
    ];
    for (what, jwt) in &cases {
        let r = exchange(&issuer, &with_assertion(&z.id, &z.app, jwt)).await;
        assert!(refused(&r), "{what}: {} {}", r.0, r.2);
    }

    // Secret and assertion together, or an assertion of another type: the form is refused.
    let jwt = sign(&key, "k1", &assertion_claims(&z.app, &endpoint, 60));
    let mut both = with_assertion(&z.id, &z.app, &jwt);
    both.push(("client_secret", &z.secret));
    let r = exchange(&issuer, &both).await;
    assert_eq!(
        (r.0, r.2["error"].as_str()),
        (400, Some("invalid_token")),
        "{}",
        r.2
    );
    let mut typed = with_assertion(&z.id, &z.app, &jwt);
    typed[3] = ("client_assertion_type", "urn:example:saml");
    let r = exchange(&issuer, &typed).await;
    assert_eq!(
        (r.0, r.2["error"].as_str()),
        (400, Some("invalid_token")),
        "{}",
        r.2
    );

    // The secret keeps working beside the keys.
    let r = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
    assert_eq!(r.0, 200, "{}", r.2);

    // Removing the keys turns assertions off at once (read-your-writes at the STS).
    let (s, body) = admin.patch(&path, json!({"jwks": {"keys": []}})).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.get("jwks").is_none(), "{body}");
    let jwt = sign(&key, "k1", &assertion_claims(&z.app, &endpoint, 60));
    assert!(refused(
        &exchange(&issuer, &with_assertion(&z.id, &z.app, &jwt)).await
    ));
}
