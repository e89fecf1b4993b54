//! Rate limits (management-api.md §3.5): fixed one-minute windows keyed on Redis server
//! time, one counter key per (bucket, subject, window), so every check is one atomic
//! script call on one key. A Redis failure lets the request through (and is logged): the
//! limits protect capacity, they are not an authorization decision.

use std::net::IpAddr;

use redis::Script;

use crate::state::App;

/// `INCR` the key of the current window (Redis `TIME`), expire it with the window, and
/// return the count. KEYS[1] = key stem; the window number is appended here.
const WINDOW_LUA: &str = r"
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. math.floor(tonumber(t[1]) / 60)
local n = redis.call('INCR', key)
if n == 1 then redis.call('EXPIRE', key, 61) end
return n
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Any `/v1/` request, per client IP, before authentication.
    V1Ip,
    /// Any `/v1/` request, per admin token, after authorization.
    V1Token,
    /// Failed authentications, per client IP.
    AuthFailIp,
    /// `/ready`, per client IP.
    ReadyIp,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::V1Ip => "v1ip",
            Bucket::V1Token => "v1tok",
            Bucket::AuthFailIp => "authfail",
            Bucket::ReadyIp => "ready",
        }
    }

    fn limit(self, app: &App) -> u64 {
        match self {
            Bucket::V1Ip | Bucket::V1Token => app.cfg.api_v1_rate_limit_per_min,
            Bucket::AuthFailIp => app.cfg.admin_auth_fail_limit_per_min,
            Bucket::ReadyIp => app.cfg.ready_rate_limit_per_min,
        }
    }
}

/// A subject as it appears in a key name: 24 hex characters of its SHA-256 (tokens and ids
/// never appear in key names).
pub fn subject_digest(subject: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(subject.as_bytes())[..12])
}

/// The counter key stem of a subject in a bucket, hash-tagged: the script names the
/// minute's key itself, which a cluster accepts only in the slot of the key it was given.
fn stem(app: &App, bucket: &str, subject: &str) -> String {
    format!(
        "{}:rl:{{{}:{}}}",
        app.store.keys().prefix(),
        bucket,
        subject_digest(subject)
    )
}

/// Counts one event for `subject`; true when it is over the bucket's limit (0 = disabled).
pub async fn exceeded(app: &App, bucket: Bucket, subject: &str) -> bool {
    minute_exceeded(app, bucket.name(), subject, bucket.limit(app)).await
}

/// Counts one event for `subject` in the named bucket's current minute (Redis clock); true
/// when over `limit` (0 = disabled). Redis failures let it through.
pub async fn minute_exceeded(app: &App, bucket: &str, subject: &str, limit: u64) -> bool {
    if limit == 0 {
        return false;
    }
    let mut conn = app.store.connection();
    let n: Result<u64, _> = Script::new(WINDOW_LUA)
        .key(stem(app, bucket, subject))
        .invoke_async(&mut conn)
        .await;
    match n {
        Ok(n) => n > limit,
        Err(e) => {
            tracing::warn!(error = %e, bucket, "rate limiter unavailable; request allowed");
            false
        }
    }
}

pub fn ip_subject(ip: Option<IpAddr>) -> String {
    ip.map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A window opened by the first event (not aligned to the clock): the first `INCR` sets
/// the expiry. KEYS[1] = counter key, ARGV[1] = window length in milliseconds.
const OPENED_WINDOW_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// Counts one event in a window that opens at the first event (§3.5: DCR registrations,
/// 1 s; outbound probes, 60 s); true when over `limit`. Redis failures let it through.
pub async fn opened_window_exceeded(
    app: &App,
    bucket: &str,
    subject: &str,
    limit: u64,
    window_ms: u64,
) -> bool {
    let key = format!(
        "{}:rl:{bucket}:{}",
        app.store.keys().prefix(),
        subject_digest(subject)
    );
    match count_in_opened_window(app, &key, window_ms).await {
        Ok(n) => n > limit,
        Err(e) => {
            tracing::warn!(error = %e, bucket, "rate limiter unavailable; request allowed");
            false
        }
    }
}

/// Counts one event on `key` in a window opened by its first event; the count so far. The
/// caller decides what a Redis failure means (the API lets it through, the STS refuses).
pub async fn count_in_opened_window(
    app: &App,
    key: &str,
    window_ms: u64,
) -> Result<u64, redis::RedisError> {
    let mut conn = app.store.connection();
    Script::new(OPENED_WINDOW_LUA)
        .key(key)
        .arg(window_ms)
        .invoke_async(&mut conn)
        .await
}
