//! A fake upstream over HTTPS for probe and OAuth tests: a private CA (its PEM handed to
//! `serval` as `SERVAL_UPSTREAM_CA_FILE`) and an axum server on `localhost` with token
//! endpoints and protected resources.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = "probe-client";
pub const CLIENT_SECRET: &str = "probe-secret-value";
/// The one authorization code `/ac/token` exchanges.
pub const GOOD_CODE: &str = "good-code";
/// The one refresh token `/ac/token` refreshes.
pub const GOOD_REFRESH: &str = "good-refresh";

pub struct Upstream {
    pub port: u16,
    pub ca_file: PathBuf,
    /// What `GET /jwks` answers (an id-token issuer's key set), and how often it was asked.
    pub jwks: Arc<Mutex<Value>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    /// Requests `POST /broken/token` (a token endpoint answering 500) received.
    pub broken_fetches: Arc<AtomicUsize>,
    /// The uncompressed P-256 point `POST /pkjwt/token` verifies client assertions with.
    pub assertion_key: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

fn client_ok(headers: &HeaderMap) -> bool {
    let want =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {want}"))
}

fn form(body: &Bytes) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn cc_token(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let f = form(&body);
    if !client_ok(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        );
    }
    if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"access_token": "cc-token", "token_type": "Bearer", "expires_in": 3600})),
    )
}

/// A token endpoint taking `private_key_jwt` client authentication (RFC 7523 §2.2): the
/// assertion must verify under `key`, name the client as `iss` and `sub` and this endpoint
/// as `aud`, and live at most 60 s.
fn pkjwt_token(headers: HeaderMap, body: Bytes, key: Vec<u8>) -> (StatusCode, Json<Value>) {
    let f = form(&body);
    let refused = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_client"})),
    );
    if headers.get("authorization").is_some()
        || f.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refused;
    }
    let Some(assertion) = f.get("client_assertion") else {
        return refused;
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[format!("https://{host}/pkjwt/token")]);
    v.set_issuer(&[CLIENT_ID]);
    v.sub = Some(CLIENT_ID.to_owned());
    let ok =
        jsonwebtoken::decode::<Value>(assertion, &jsonwebtoken::DecodingKey::from_ec_der(&key), &v)
            .is_ok_and(|t| {
                let c = &t.claims;
                c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0) <= 60
                    && t.header.kid.as_deref() == Some("pk-1")
            });
    if !ok {
        return refused;
    }
    (
        StatusCode::OK,
        Json(json!({"access_token": "pkjwt-token", "token_type": "Bearer", "expires_in": 3600})),
    )
}

async fn ac_token(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let f = form(&body);
    if !client_ok(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        );
    }
    if f.get("grant_type").map(String::as_str) == Some("refresh_token") {
        // The one refresh token it honours, rotated on use.
        if f.get("refresh_token").map(String::as_str) == Some(GOOD_REFRESH) {
            return (
                StatusCode::OK,
                Json(json!({"access_token": "ac-refreshed-token",
                            "refresh_token": "ac-refresh-token-2",
                            "token_type": "Bearer", "expires_in": 600})),
            );
        }
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        );
    }
    let verifier_ok = f.get("code_verifier").is_some_and(|v| v.len() >= 43);
    if f.get("code").map(String::as_str) == Some(GOOD_CODE) && verifier_ok {
        return (
            StatusCode::OK,
            Json(
                json!({"access_token": "ac-access-token", "refresh_token": "ac-refresh-token",
                        "token_type": "bearer", "expires_in": 600}),
            ),
        );
    }
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant"})),
    )
}

/// Starts the upstream; `localhost` must be in `CARACAL_PRIVATE_EGRESS_HOSTS` of the server.
pub async fn start() -> Upstream {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "serval test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        leaf.pem().into_bytes(),
        leaf_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let jwks = Arc::new(Mutex::new(json!({"keys": []})));
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (jwks.clone(), jwks_fetches.clone());
    let broken_fetches = Arc::new(AtomicUsize::new(0));
    let broken = broken_fetches.clone();
    let assertion_key = Arc::new(Mutex::new(Vec::new()));
    let verifier = assertion_key.clone();
    let app = Router::new()
        .route(
            "/jwks",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let doc = served.lock().unwrap().clone();
                    Json(doc)
                }
            }),
        )
        .route("/cc/token", post(cc_token))
        .route("/ac/token", post(ac_token))
        .route(
            "/pkjwt/token",
            post(move |headers: HeaderMap, body: Bytes| {
                let key = verifier.lock().unwrap().clone();
                async move { pkjwt_token(headers, body, key) }
            }),
        )
        .route(
            "/broken/token",
            post(move || {
                broken.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::INTERNAL_SERVER_ERROR }
            }),
        )
        .route("/guarded", any(|| async { StatusCode::UNAUTHORIZED }))
        .route("/open", any(|| async { StatusCode::OK }))
        .route("/err", any(|| async { StatusCode::BAD_GATEWAY }));
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(SocketAddr::from(([127, 0, 0, 1], 0)), tls)
        .handle(handle.clone())
        .serve(app.into_make_service());
    tokio::spawn(server);
    let addr = handle.listening().await.expect("upstream listens");
    Upstream {
        port: addr.port(),
        ca_file,
        jwks,
        jwks_fetches,
        broken_fetches,
        assertion_key,
        _dir: dir,
    }
}
