//! Prometheus metrics of the projector (default registry, scraped by every service).

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

pub struct ProjectorMetrics {
    pub applied: IntCounterVec,
    pub batches: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub apply_errors: IntCounterVec,
    pub published: IntCounterVec,
    pub feed_misses: IntCounterVec,
    pub workers: IntGauge,
}

pub static METRICS: LazyLock<ProjectorMetrics> = LazyLock::new(|| {
    ProjectorMetrics {
    applied: register_int_counter_vec!(
        "serval_projection_events_applied_total",
        "Events applied to a read model (committed).",
        &["projection"]
    )
    .expect("metric registers once"),
    batches: register_int_counter_vec!(
        "serval_projection_batches_total",
        "Batches committed by a projection.",
        &["projection"]
    )
    .expect("metric registers once"),
    dead_letters: register_int_counter_vec!(
        "serval_projection_dead_letters_total",
        "Log entries a projection refused (never applied).",
        &["projection", "reason"]
    )
    .expect("metric registers once"),
    apply_errors: register_int_counter_vec!(
        "serval_projection_apply_errors_total",
        "Batches rolled back and retried after a database error.",
        &["projection"]
    )
    .expect("metric registers once"),
    published: register_int_counter_vec!(
        "serval_relay_messages_published_total",
        "Messages the relay published to public topics.",
        &["topic"]
    )
    .expect("metric registers once"),
    feed_misses: register_int_counter_vec!(
        "serval_projection_feed_misses_total",
        "Live reads a runner made from Redis itself because the process's log feed did not hold its window (behind the feed's tail, a stream not followed yet or past its 512-stream cap, the feed reconnecting).",
        &["projection"]
    )
    .expect("metric registers once"),
    workers: register_int_gauge!(
        "serval_projection_workers",
        "Projection workers (serval processes) sharing the log's streams, as this one last saw them."
    )
    .expect("metric registers once"),
}
});
