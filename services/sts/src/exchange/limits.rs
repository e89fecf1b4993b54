//! The STS's rate limits (sts.md §17). Unlike the Management API's, they **fail closed**:
//! when Redis cannot count, every non-Gateway exchange is refused (`429`) and a mint is
//! skipped. Each check is one script on one hash slot.

use axum::http::StatusCode;
use redis::Script;

use serval_kit::rate_limit::{count_in_opened_window, subject_digest};
use serval_kit::App;

use super::error::StsError;

/// Counts a failure in a 60 s window opened by the first; past the limit, blocks the id for
/// 60 s. KEYS[1] counter, KEYS[2] block flag, ARGV[1] limit. Returns 1 when now blocked.
const FAILURE_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if n > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', 60)
  return 1
end
return 0
";

/// Both keys of an application id's failure budget, in one slot.
fn failure_keys(app: &App, application_id: &str) -> (String, String) {
    app.store
        .keys()
        .sts_auth_failures(&subject_digest(application_id))
}

fn limited(description: &str) -> StsError {
    StsError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "provider_rate_limited",
        description,
    )
}

/// §5.1 step 2: a locked-out application id, or a limiter that cannot answer, is refused
/// before authentication.
pub async fn check_lockout(app: &App, application_id: &str) -> Result<(), StsError> {
    if app.cfg.sts_auth_fail_limit_per_min == 0 {
        return Ok(());
    }
    let (_, blocked) = failure_keys(app, application_id);
    let mut conn = app.store.connection();
    let exists: Result<bool, _> = redis::cmd("EXISTS")
        .arg(&blocked)
        .query_async(&mut conn)
        .await;
    match exists {
        Ok(false) => Ok(()),
        Ok(true) => Err(limited("authentication rate limit exceeded")),
        Err(e) => {
            tracing::warn!(error = %e, "STS authentication limiter unavailable");
            Err(limited("authentication rate limit unavailable"))
        }
    }
}

/// Counts a failed authentication; the failure that crosses the limit answers `429`
/// instead of its own error.
pub async fn count_failure(app: &App, application_id: &str, failure: StsError) -> StsError {
    let limit = app.cfg.sts_auth_fail_limit_per_min;
    if limit == 0 {
        return failure;
    }
    let (count, blocked) = failure_keys(app, application_id);
    let mut conn = app.store.connection();
    let now_blocked: Result<i64, _> = Script::new(FAILURE_LUA)
        .key(count)
        .key(blocked)
        .arg(limit)
        .invoke_async(&mut conn)
        .await;
    match now_blocked {
        Ok(0) => failure,
        Ok(_) => limited("authentication rate limit exceeded"),
        Err(e) => {
            tracing::warn!(error = %e, "STS authentication limiter unavailable");
            limited("authentication rate limit unavailable")
        }
    }
}

/// Counts one mint of a resource for an application; true when it may go on (under the
/// limit and counted). Redis unavailable: false (the resource is skipped).
pub async fn mint_allowed(app: &App, zone: &str, resource_id: &str, application_id: &str) -> bool {
    let limit = app.cfg.sts_mint_rate_limit_per_min;
    if limit == 0 {
        return true;
    }
    let key = app.store.keys().mint_budget(
        zone,
        &subject_digest(&format!("{resource_id}\n{application_id}")),
    );
    match count_in_opened_window(app, &key, 60_000).await {
        Ok(n) => n <= limit,
        Err(e) => {
            tracing::warn!(error = %e, "STS mint limiter unavailable; resource skipped");
            false
        }
    }
}
