//! A governed call (gateway.md §3, §9, §13): every check in its order — the first failure
//! answers and nothing reaches the upstream — then the re-exchanged request streamed to
//! the upstream and its answer streamed back, cut when an anchor is revoked mid-stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use http_body::Frame as BodyFrame;
use http_body_util::StreamBody;
use serde_json::{json, Map, Value};
use serval_domain::validation::is_valid_identifier;
use serval_kit::audit_frame::{self, Frame};
use serval_kit::http::request_id::RequestId;
use serval_kit::App;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::sts_client::{self, Exchange};
use crate::upstream;
use crate::Gateway;

const MAX_BEARER: usize = 4096;
/// A mandate must have this long left to be worth exchanging (§3 step 5).
const PREFLIGHT_SECS: i64 = 35;

/// Claims read before the signature is checked; trusted only after it is.
struct Peeked {
    payload: Map<String, Value>,
    exp: i64,
}

fn peek(token: &str) -> Option<Peeked> {
    let mut parts = token.split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok()?;
    let payload: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let exp = payload
        .get("exp")
        .and_then(Value::as_i64)
        .filter(|e| *e != 0)?;
    Some(Peeked { payload, exp })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn claim<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// `subject_fingerprint` (§13): the first 8 bytes of SHA-256 of the bearer, hex.
fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

fn result_class(status: u16) -> &'static str {
    match status {
        200..=299 => "success",
        300..=399 => "redirect",
        400..=499 => "client_error",
        500..=599 => "server_error",
        _ => "unknown",
    }
}

/// The `gateway_resource_request` event of one call, published (off the response path)
/// when it is dropped: after the body ends, is cut or the caller goes away.
struct Evidence {
    app: App,
    frame: Option<Frame>,
    started: Instant,
    bytes: u64,
}

impl Evidence {
    fn set(&mut self, k: &str, v: Value) {
        if let Some(f) = &mut self.frame {
            f.metadata.insert(k.to_owned(), v);
        }
    }

    fn status(&mut self, s: &str) {
        if let Some(f) = &mut self.frame {
            f.evaluation_status = s.to_owned();
        }
    }
}

impl Drop for Evidence {
    fn drop(&mut self) {
        let Some(mut frame) = self.frame.take() else {
            return;
        };
        frame
            .metadata
            .insert("response_bytes".into(), json!(self.bytes));
        frame.metadata.insert(
            "latency_ms".into(),
            json!(self.started.elapsed().as_millis() as u64),
        );
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Err(e) = audit_frame::publish(&app, &[frame]).await {
                tracing::error!(error = ?e, "gateway audit event not published");
            }
        });
    }
}

pub async fn proxy(
    State(app): State<App>,
    Extension(gw): Extension<Arc<Gateway>>,
    RequestId(rid): RequestId,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match governed(&app, &gw, &rid, peer, req).await {
        Ok(resp) => resp,
        Err(e) => e.respond(&rid),
    }
}

async fn governed(
    app: &App,
    gw: &Gateway,
    rid: &str,
    peer: SocketAddr,
    req: Request,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let unauthorized = |d: &str| GatewayError::invalid_token(StatusCode::UNAUTHORIZED, d);
    let bad = |d: &str| GatewayError::invalid_token(StatusCode::BAD_REQUEST, d);
    // 1
    if !gw.revocations.fresh() {
        return Err(GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sts_unavailable",
            "revocation state unavailable".into(),
        ));
    }
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    // 2–5
    let token = bearer(headers).ok_or_else(|| unauthorized("missing bearer token"))?;
    if token.len() > MAX_BEARER {
        return Err(unauthorized("bearer token too large"));
    }
    let peeked = peek(token).ok_or_else(|| unauthorized("malformed bearer token"))?;
    let now = chrono::Utc::now().timestamp();
    if peeked
        .exp
        .checked_sub(now)
        .is_none_or(|left| left < PREFLIGHT_SECS)
    {
        return Err(GatewayError::new(
            StatusCode::UNAUTHORIZED,
            "credential_expired_not_renewable",
            "credential expiring within pre-flight window".into(),
        ));
    }
    // 6–7
    if headers
        .get("x-caracal-client-id")
        .is_some_and(|v| !v.as_bytes().is_empty())
    {
        return Err(bad("client identity derives from the bearer token"));
    }
    let resource = headers
        .get("x-caracal-resource")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("missing routing headers"))?
        .to_owned();
    // 8–9
    let zone = claim(&peeked.payload, "zone_id");
    if !is_valid_identifier(zone) {
        return Err(unauthorized("missing token zone"));
    }
    let client_id = claim(&peeked.payload, "client_id");
    if !is_valid_identifier(client_id) {
        return Err(unauthorized("missing token client"));
    }
    // 10
    let path =
        upstream::safe_path(parts.uri.path()).ok_or_else(|| bad("path traversal not permitted"))?;
    // 11
    let claims = app
        .mandates
        .verify_signature(app, zone, token)
        .await
        .map_err(|_| unauthorized("bearer signature invalid"))?
        .0;
    let (zone, client_id) = (claim(&claims, "zone_id"), claim(&claims, "client_id"));
    // 12: the mandate is spent here, whatever happens after.
    let jti = claim(&claims, "jti");
    let class = claim(&claims, "use");
    if !jti.is_empty() && class != "session" && peeked.exp > now {
        let key = app.store.keys().gateway_seen(zone, jti);
        let mut conn = app.redis.clone();
        let fresh: Result<Option<String>, _> = redis::cmd("SET")
            .arg(&key)
            .arg(rid)
            .arg("NX")
            .arg("EX")
            .arg((peeked.exp - now).max(1))
            .query_async(&mut conn)
            .await;
        match fresh {
            Ok(Some(_)) => {}
            Ok(None) => {
                let mut m = Map::new();
                m.insert("jti".into(), json!(jti));
                m.insert("resource".into(), json!(resource));
                m.insert("client_id".into(), json!(client_id));
                m.insert("subject_fp".into(), json!(fingerprint(token)));
                m.insert("request_id".into(), json!(rid));
                let frame = Frame::refusal(zone, rid, "replay_detected", "anomaly", m);
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = audit_frame::publish(&app, &[frame]).await {
                        tracing::error!(error = ?e, "replay audit event not published");
                    }
                });
                return Err(unauthorized("token replay detected"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay registry unavailable");
                return Err(unauthorized("token replay detected"));
            }
        }
    }
    // 13
    let anchors = ["sid", "root_sid", "agent_session_id", "delegation_edge_id"];
    let mut anchor_ids: Vec<String> = anchors
        .iter()
        .map(|a| claim(&claims, a).to_owned())
        .collect();
    // Every edge of the lineage: revoking an ancestor names only that edge on the topics.
    let lineage: Vec<String> = claims
        .get("delegation_path")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    anchor_ids.extend(lineage);
    if let Some(i) = anchor_ids
        .iter()
        .position(|a| gw.revocations.any_revoked([a.as_str()]))
    {
        let anchor = anchors.get(i).copied().unwrap_or("delegation_path");
        tracing::info!(request_id = %rid, anchor, id = %anchor_ids[i], "call refused: revoked anchor");
        return Err(unauthorized("session revoked"));
    }
    // 14–15
    if gw.breaker.open() {
        return Err(GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sts_unavailable",
            "sts unavailable".into(),
        ));
    }
    let method = parts.method.as_str().to_owned();
    let exchanged = sts_client::exchange(
        app,
        (&gw.sts, gw.local_sts.get()),
        &gw.breaker,
        &Exchange {
            request_id: rid,
            zone_id: zone,
            client_id,
            bearer: token,
            resource: &resource,
            method: &method,
            path: &path,
        },
    )
    .await?;
    let d = &exchanged.directive;
    let mut metadata = Map::new();
    metadata.insert("application_id".into(), json!(client_id));
    metadata.insert("resource".into(), json!(resource));
    metadata.insert("subject_fingerprint".into(), json!(fingerprint(token)));
    metadata.insert("subject_kind".into(), json!(claim(&claims, "sub_type")));
    metadata.insert("method".into(), json!(method));
    metadata.insert(
        "auth_mode".into(),
        d.get("auth_mode").cloned().unwrap_or(Value::Null),
    );
    if let Some(p) = d.get("provider_id") {
        metadata.insert("provider_id".into(), p.clone());
    }
    if let Some(t) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        if let Some(trace) = t.split('-').nth(1) {
            metadata.insert("trace_id".into(), json!(trace));
        }
    }
    let mut evidence = Evidence {
        app: app.clone(),
        frame: Some(Frame {
            zone_id: zone.to_owned(),
            request_id: rid.to_owned(),
            event_type: "gateway_resource_request",
            decision: "allow",
            evaluation_status: "executed".into(),
            determining_policies: json!([]),
            diagnostics: json!([]),
            metadata,
            policy: None,
        }),
        started,
        bytes: 0,
    };
    let fail = |evidence: &mut Evidence, status: &str, kind: &str, e: GatewayError| {
        evidence.status(status);
        evidence.set("error_kind", json!(kind));
        evidence.set("gateway_status", json!(e.status.as_u16()));
        e
    };
    // 16–18
    let base = url::Url::parse(claim(d, "url")).map_err(|_| {
        fail(
            &mut evidence,
            "upstream_rejected",
            "upstream_not_addressable",
            GatewayError::internal(StatusCode::BAD_GATEWAY, "upstream not addressable"),
        )
    })?;
    evidence.set("upstream_host", json!(base.host_str().unwrap_or_default()));
    if let Err(e) = upstream::check_safe(&base, &gw.allowlist).await {
        return Err(fail(
            &mut evidence,
            "upstream_rejected",
            "upstream_not_addressable",
            e,
        ));
    }
    if !upstream::credential_host_allowed(d, &base) {
        return Err(fail(
            &mut evidence,
            "upstream_rejected",
            "provider_host_not_allowed",
            GatewayError::internal(
                StatusCode::BAD_GATEWAY,
                "provider credential not allowed for upstream host",
            ),
        ));
    }
    let mut url = upstream::target_url(&base, &path, parts.uri.query());
    let mut out_headers = upstream::forwarded_headers(headers);
    upstream::inject(d, &exchanged.mandate, &mut out_headers, &mut url)
        .map_err(|e| fail(&mut evidence, "build_failed", "request_build_failed", e))?;
    if let Ok(v) = HeaderValue::from_str(rid) {
        out_headers.insert("x-request-id", v);
    }
    if let Some(h) = headers.get("host") {
        out_headers.insert("x-forwarded-host", h.clone());
    }
    out_headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        out_headers.insert("x-forwarded-for", v);
    }
    // 19: the body is streamed and counted; past the limit the upload is cut.
    let limit = app.cfg.max_request_bytes;
    let mut sent = 0usize;
    let upload = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len();
        if sent > limit {
            return Err(std::io::Error::other(BodyTooLarge));
        }
        Ok::<Bytes, std::io::Error>(chunk)
    });
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| {
        fail(
            &mut evidence,
            "build_failed",
            "request_build_failed",
            GatewayError::internal(StatusCode::BAD_REQUEST, "upstream request build failed"),
        )
    })?;
    let sent_req = gw
        .upstream
        .request(method, url)
        .headers(out_headers)
        .body(reqwest::Body::wrap_stream(upload))
        .send();
    // `UPSTREAM_TIMEOUT` bounds the wait for the response headers only; body reads have
    // the idle cut-off below.
    let headers_within = std::time::Duration::from_secs(app.cfg.upstream_timeout_secs);
    let Ok(sent_req) = tokio::time::timeout(headers_within, sent_req).await else {
        return Err(fail(
            &mut evidence,
            "upstream_error",
            "transport_error",
            GatewayError::internal(StatusCode::GATEWAY_TIMEOUT, "upstream timeout"),
        ));
    };
    let upstream_resp = match sent_req {
        Ok(r) => r,
        Err(e) => {
            let err = if body_too_large(&e) {
                GatewayError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large".into(),
                )
            } else if e.is_timeout() {
                GatewayError::internal(StatusCode::GATEWAY_TIMEOUT, "upstream timeout")
            } else {
                GatewayError::internal(StatusCode::BAD_GATEWAY, "upstream unreachable")
            };
            return Err(fail(
                &mut evidence,
                "upstream_error",
                "transport_error",
                err,
            ));
        }
    };
    let status = upstream_resp.status();
    evidence.set("upstream_status", json!(status.as_u16()));
    evidence.set("gateway_status", json!(status.as_u16()));
    evidence.set("result_class", json!(result_class(status.as_u16())));
    let mut resp_headers = HeaderMap::new();
    for (name, value) in upstream_resp.headers() {
        let n = name.as_str();
        let hop = matches!(
            n,
            "connection"
                | "keep-alive"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "x-caracal-identity"
                | "server"
                | "x-powered-by"
                | "x-aspnet-version"
                | "x-aspnetmvc-version"
                | "refresh"
                | "content-length"
        );
        let absolute_location = matches!(n, "location" | "content-location")
            && value
                .to_str()
                .map(|v| v.starts_with("//") || url::Url::parse(v).is_ok())
                .unwrap_or(true);
        if !hop && !absolute_location {
            resp_headers.append(name.clone(), value.clone());
        }
    }
    let left = (peeked.exp - chrono::Utc::now().timestamp()).max(0);
    resp_headers.insert("x-caracal-token-expires-in", HeaderValue::from(left));
    let idle = std::time::Duration::from_secs(app.cfg.stream_idle_timeout_secs);
    let revocations = gw.revocations.clone();
    // Frames: data as it arrives; a revocation ends the body with the `X-Caracal-Revoked`
    // trailer (§9); an upstream error or idle cut-off aborts it, so the caller sees a
    // truncated body, never a complete-looking one.
    let stream = futures::stream::unfold(
        (upstream_resp.bytes_stream(), evidence, anchor_ids, false),
        move |(mut body, mut evidence, anchors, done)| {
            let revocations = revocations.clone();
            async move {
                if done {
                    return None;
                }
                // Before each read: an anchor revoked mid-stream ends the stream.
                if revocations.any_revoked(anchors.iter().map(String::as_str)) {
                    evidence.set("revocation_interrupted", json!(true));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-caracal-revoked", HeaderValue::from_static("true"));
                    return Some((
                        Ok::<_, std::io::Error>(BodyFrame::trailers(trailers)),
                        (body, evidence, anchors, true),
                    ));
                }
                match tokio::time::timeout(idle, body.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        evidence.bytes += chunk.len() as u64;
                        Some((Ok(BodyFrame::data(chunk)), (body, evidence, anchors, false)))
                    }
                    Ok(None) => None,
                    Ok(Some(Err(e))) => {
                        evidence.status("upstream_error");
                        evidence.set("error_kind", json!("response_copy_failed"));
                        Some((
                            Err(std::io::Error::other(e)),
                            (body, evidence, anchors, true),
                        ))
                    }
                    Err(_) => {
                        evidence.status("upstream_error");
                        evidence.set("error_kind", json!("response_copy_failed"));
                        Some((
                            Err(std::io::Error::other("upstream idle")),
                            (body, evidence, anchors, true),
                        ))
                    }
                }
            }
        },
    );
    resp_headers.insert("trailer", HeaderValue::from_static("X-Caracal-Revoked"));
    let mut resp = Response::new(Body::new(StreamBody::new(stream)));
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(resp)
}

/// Whether the upload was cut at `MAX_REQUEST_BYTES`: [`BodyTooLarge`] somewhere in the
/// error's chain (an `io::Error` hides the error it wraps from `source`, so it is opened).
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if err.is::<BodyTooLarge>() || wrapped.is_some_and(|w| w.is::<BodyTooLarge>()) {
            return true;
        }
        cur = err.source();
    }
    false
}

#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyTooLarge")
    }
}

impl std::error::Error for BodyTooLarge {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_limit_is_found_inside_an_io_error() {
        let e = std::io::Error::other(BodyTooLarge);
        assert!(body_too_large(&e));
        assert!(!body_too_large(&std::io::Error::other("reset")));
    }
}
