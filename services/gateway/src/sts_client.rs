//! The Gateway's exchange with the STS (gateway.md §4): the signed form request, the
//! mapping of its outcomes and the circuit breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use rand::RngCore;
use serde_json::{Map, Value};
use serval_kit::gateway_hmac;
use serval_kit::http::body::is_json_type as is_json;
use serval_kit::App;

use crate::error::GatewayError;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_PATH: &str = "/oauth/2/token";
/// Bodies read from the STS, success or error.
const MAX_BODY: usize = 16 * 1024;
const OPEN_FOR: Duration = Duration::from_secs(10);
const TRIP_AFTER: u32 = 3;
/// The HTTP client's timeout, for the in-process exchange too.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(5);

/// §4.4: three counted failures without a success in between open the circuit for 10 s.
#[derive(Default)]
pub struct Breaker {
    state: Mutex<(u32, Option<Instant>)>,
}

impl Breaker {
    pub fn open(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1.is_some_and(|t| t.elapsed() < OPEN_FOR)
    }

    fn failed(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        if s.0 >= TRIP_AFTER {
            s.1 = Some(Instant::now());
        }
    }

    fn succeeded(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (0, None);
    }
}

/// Status, whether the body is JSON, and the body (`None`: unreadable or over
/// [`MAX_BODY`]); `Err(timed_out)` when no answer came.
type Answer = Result<(StatusCode, bool, Option<Vec<u8>>), bool>;

/// A request to the in-process STS's router, answered within `within`.
async fn call_local(
    router: &Router,
    req: axum::http::Request<axum::body::Body>,
    within: Duration,
) -> Option<axum::response::Response> {
    match tokio::time::timeout(within, tower::ServiceExt::oneshot(router.clone(), req)).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(never)) => match never {},
        Err(_) => None,
    }
}

/// The exchange over HTTP to `STS_URL`.
async fn send_http(
    app: &App,
    client: &reqwest::Client,
    headers: &[(&str, &str)],
    body: String,
) -> Answer {
    let mut req = client.post(format!("{}{TOKEN_PATH}", app.sts_url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.map_err(|e| e.is_timeout())?;
    let status = resp.status();
    let json = is_json(resp.headers().get("content-type"));
    let body = serval_kit::oauth::read_capped(resp, MAX_BODY).await.ok();
    Ok((status, json, body))
}

/// The exchange handed to the STS's router in this process: the same request (signed, with
/// its nonce) through the same middleware and handler, without the loopback connection.
async fn send_local(router: &Router, headers: &[(&str, &str)], body: String) -> Answer {
    let mut req = axum::http::Request::post(TOKEN_PATH);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let Ok(mut req) = req.body(axum::body::Body::from(body)) else {
        return Err(false);
    };
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))));
    let resp = call_local(router, req, LOCAL_TIMEOUT).await.ok_or(true)?;
    let status = resp.status();
    let json = is_json(resp.headers().get("content-type"));
    let body = axum::body::to_bytes(resp.into_body(), MAX_BODY)
        .await
        .ok()
        .map(|b| b.to_vec());
    Ok((status, json, body))
}

/// The in-process STS's `/health` answered 2xx within 2 s.
pub async fn local_health(router: &Router) -> bool {
    let Ok(req) = axum::http::Request::get("/health").body(axum::body::Body::empty()) else {
        return false;
    };
    call_local(router, req, Duration::from_secs(2))
        .await
        .is_some_and(|r| r.status().is_success())
}

/// What a successful exchange gives the Gateway.
pub struct Exchanged {
    pub mandate: String,
    pub directive: Map<String, Value>,
}

pub struct Exchange<'a> {
    pub request_id: &'a str,
    pub zone_id: &'a str,
    pub client_id: &'a str,
    pub bearer: &'a str,
    pub resource: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

/// §4.1–§4.3.
pub async fn exchange(
    app: &App,
    (client, local): (&reqwest::Client, Option<&Router>),
    breaker: &Breaker,
    x: &Exchange<'_>,
) -> Result<Exchanged, GatewayError> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT)
        .append_pair("zone_id", x.zone_id)
        .append_pair("application_id", x.client_id)
        .append_pair("subject_token", x.bearer)
        .append_pair("subject_token_type", ACCESS_TOKEN)
        .append_pair("resource", x.resource)
        .append_pair("request_method", x.method)
        .append_pair("request_path", x.path)
        .append_pair("gateway_request_id", x.request_id)
        .finish();
    // Unsigned, the exchange would be an ordinary client request without a secret: refused,
    // and counted against the application's lock-out. Without a key nothing is sent.
    let Some(key) = app.gateway_key() else {
        tracing::error!("GATEWAY_STS_HMAC_KEY is missing or not hex of at least 32 bytes");
        return Err(GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sts_unavailable",
            "gateway exchange key not configured".into(),
        ));
    };
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let nonce = hex::encode(raw);
    let sig = gateway_hmac::sign(&key, &ts, &nonce, "POST", TOKEN_PATH, body.as_bytes());
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "application/json"),
        ("user-agent", "caracal-gateway"),
        ("x-request-id", x.request_id),
        (gateway_hmac::TIMESTAMP, ts.as_str()),
        (gateway_hmac::NONCE, nonce.as_str()),
        (gateway_hmac::SIGNATURE, sig.as_str()),
    ];
    let unavailable = |status: StatusCode, msg: &str| {
        GatewayError::new(status, "sts_unavailable", msg.to_owned())
    };
    let answer = match local {
        Some(router) => send_local(router, &headers, body).await,
        None => send_http(app, client, &headers, body).await,
    };
    let (status, json_type, body) = match answer {
        Ok(a) => a,
        Err(timed_out) => {
            breaker.failed();
            return Err(if timed_out {
                unavailable(StatusCode::GATEWAY_TIMEOUT, "sts timeout")
            } else {
                unavailable(StatusCode::BAD_GATEWAY, "sts unavailable")
            });
        }
    };
    if status != StatusCode::OK {
        let parsed: Option<Map<String, Value>> =
            body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        if let Some(err) = parsed
            .as_ref()
            .and_then(|m| m.get("error").and_then(Value::as_str).map(|e| (e, m)))
        {
            let description = err
                .1
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // The STS's own unavailability counts (§4.4); its refusals do not.
            if err.0 == "sts_unavailable" && status.is_server_error() {
                breaker.failed();
            }
            return Err(GatewayError::new(status, err.0, description.to_owned()));
        }
        if status.is_server_error() {
            breaker.failed();
        }
        return Err(unavailable(
            status,
            status.canonical_reason().unwrap_or("sts error"),
        ));
    }
    let invalid = || {
        breaker.failed();
        unavailable(StatusCode::BAD_GATEWAY, "sts response invalid")
    };
    if !json_type {
        return Err(invalid());
    }
    let Some(mut body) = body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(b).ok())
    else {
        return Err(invalid());
    };
    let Some(mandate) = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
    else {
        return Err(invalid());
    };
    breaker.succeeded();
    let directive = body
        .get_mut("upstreams")
        .and_then(Value::as_object_mut)
        .and_then(|u| u.remove(x.resource))
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .filter(|d| {
            d.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| !u.is_empty())
        })
        .ok_or_else(|| {
            GatewayError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                "resource upstream not configured".to_owned(),
            )
        })?;
    Ok(Exchanged { mandate, directive })
}
