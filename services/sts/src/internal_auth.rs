//! Internal-call signatures (management-api.md §11, sts.md §10): headers
//! `X-Caracal-Gateway-Timestamp` (unix s), `X-Caracal-Gateway-Request` (id) and
//! `X-Caracal-Gateway-Signature` = hex HMAC-SHA256 under `GATEWAY_STS_HMAC_KEY` over
//! `<unix>\n<request id>\n<METHOD>\n<path>\n<hex sha256(body)>`.

use axum::http::{HeaderMap, Method, StatusCode};
use serval_kit::gateway_hmac;
use serval_kit::http::ApiError;
use serval_kit::state::App;

/// Accepted clock difference between caller and STS.
pub const MAX_SKEW_SECS: i64 = 300;

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn verify(
    app: &App,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(key) = app
        .cfg
        .gateway_sts_hmac_key
        .as_deref()
        .filter(|k| !k.is_empty())
    else {
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "config_missing")
                .description("GATEWAY_STS_HMAC_KEY is not configured"),
        );
    };
    let denied =
        || ApiError::unauthorized("access_denied").description("invalid internal signature");
    let (Some(ts), Some(rid), Some(sig)) = (
        header(headers, gateway_hmac::TIMESTAMP),
        header(headers, gateway_hmac::NONCE),
        header(headers, gateway_hmac::SIGNATURE),
    ) else {
        return Err(denied());
    };
    let at: i64 = ts.parse().map_err(|_| denied())?;
    // Checked arithmetic: an extreme timestamp is a refusal, not an overflow.
    let skew = chrono::Utc::now()
        .timestamp()
        .checked_sub(at)
        .and_then(i64::checked_abs);
    if skew.is_none_or(|s| s > MAX_SKEW_SECS) {
        return Err(denied());
    }
    if gateway_hmac::verify(key.as_bytes(), (ts, rid, sig), method.as_str(), path, body) {
        Ok(())
    } else {
        Err(denied())
    }
}
