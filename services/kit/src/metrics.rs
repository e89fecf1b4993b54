//! Service-level Prometheus metrics (default registry, shared with the projector's).

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

pub struct ServiceMetrics {
    pub append_events: IntCounter,
    pub append_calls: IntCounter,
    pub append_conflicts: IntCounter,
    pub writes_unprojected: IntCounter,
    pub http_responses: IntCounterVec,
    pub projection_lag_ms: IntGaugeVec,
    pub dead_letters: IntGauge,
    pub bundles_compiled: IntCounter,
    pub policy_decisions: IntCounterVec,
    pub provider_refresh_errors: IntCounter,
    pub provider_circuit_opened: IntCounter,
}

pub static METRICS: LazyLock<ServiceMetrics> = LazyLock::new(|| ServiceMetrics {
    append_events: register_int_counter!(
        "serval_append_events_total",
        "Events appended to the log by this process."
    )
    .expect("metric registers once"),
    append_calls: register_int_counter!(
        "serval_append_calls_total",
        "Conditional-append script calls made by this process."
    )
    .expect("metric registers once"),
    append_conflicts: register_int_counter!(
        "serval_append_conflicts_total",
        "Appends refused for a version conflict (then retried)."
    )
    .expect("metric registers once"),
    writes_unprojected: register_int_counter!(
        "serval_writes_answered_unprojected_total",
        "Writes answered before the read model passed them (visibility wait timed out)."
    )
    .expect("metric registers once"),
    http_responses: register_int_counter_vec!(
        "serval_http_responses_total",
        "HTTP responses by service and status class.",
        &["service", "class"]
    )
    .expect("metric registers once"),
    projection_lag_ms: register_int_gauge_vec!(
        "serval_projection_lag_milliseconds",
        "How far a projection's checkpoint trails the newest log entry (max over streams).",
        &["projection"]
    )
    .expect("metric registers once"),
    dead_letters: register_int_gauge!(
        "serval_dead_letters",
        "Log entries refused by projections (bad signature, undecodable); never applied."
    )
    .expect("metric registers once"),
    bundles_compiled: register_int_counter!(
        "serval_policy_bundles_compiled_total",
        "Policy bundles compiled by this process (once per policy-set version)."
    )
    .expect("metric registers once"),
    policy_decisions: register_int_counter_vec!(
        "serval_policy_decisions_total",
        "Decisions made under zones' active bundles, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once"),
    provider_refresh_errors: register_int_counter!(
        "caracal_sts_provider_refresh_errors_total",
        "Failed token fetches and refreshes at providers' token endpoints."
    )
    .expect("metric registers once"),
    provider_circuit_opened: register_int_counter!(
        "caracal_sts_provider_circuit_open_total",
        "Times a provider's token-endpoint circuit opened (5 failures in 5 min, open 30 s)."
    )
    .expect("metric registers once"),
});
