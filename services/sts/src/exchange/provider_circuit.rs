//! The token-endpoint circuit (gateway.md §6.3): five failed token fetches of one provider
//! within 5 minutes open a 30 s circuit for that provider, shared by every STS process
//! through Redis. While it is open no request reaches the token endpoint: an endpoint that
//! is down is not hammered by every governed call, and the calls fail at once instead of
//! after a timeout each.

use redis::Script;
use serval_kit::App;
use std::sync::LazyLock;

/// Failures within the window that open the circuit.
const FAILURES: u32 = 5;
/// The window the failures are counted in, from the first of them.
const WINDOW_MS: u64 = 300_000;
/// How long an opened circuit stays open.
const OPEN_MS: u64 = 30_000;

/// Counts one failure; on the `FAILURES`th it opens the circuit and starts a new count.
/// Both keys carry the zone's hash tag, so the script stays in one slot.
static FAILED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// Whether the provider's circuit is open. An unreachable Redis counts as closed: the
/// breaker protects the token endpoint, it does not gate the exchange.
pub async fn is_open(app: &App, zone: &str, provider: &str) -> bool {
    let key = app.store.keys().provider_circuit(zone, provider);
    let mut conn = app.redis.clone();
    match redis::cmd("EXISTS")
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await
    {
        Ok(n) => n > 0,
        Err(e) => {
            tracing::warn!(error = %e, "provider circuit unreadable; treated as closed");
            false
        }
    }
}

/// Records a failed fetch; true when this failure opened the circuit.
pub async fn failed(app: &App, zone: &str, provider: &str) -> bool {
    let keys = app.store.keys();
    let mut conn = app.redis.clone();
    let opened = FAILED
        .key(keys.provider_fetch_failures(zone, provider))
        .key(keys.provider_circuit(zone, provider))
        .arg(WINDOW_MS)
        .arg(FAILURES)
        .arg(OPEN_MS)
        .invoke_async::<i64>(&mut conn)
        .await;
    serval_kit::metrics::METRICS.provider_refresh_errors.inc();
    match opened {
        Ok(1) => {
            serval_kit::metrics::METRICS.provider_circuit_opened.inc();
            tracing::warn!(
                provider,
                zone,
                "token endpoint failing: circuit open for 30 s"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "provider fetch failure not counted");
            false
        }
    }
}
