//! Logs and metrics.
//!
//! Logs: human-readable or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`). Metrics: the `metrics` facade with a Prometheus
//! recorder installed once per process; `/metrics` renders it. Every metric
//! name lives here, with its help text; labels are tenant, topic, group,
//! reason, route, method, status, script, never message ids.

use std::sync::OnceLock;

use metrics::{Label, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::names::{Group, Tenant, Topic};

/// Messages written by publishes (duplicates not included).
pub const PUBLISHED: &str = "streamcar_published_total";
/// Publishes answered as duplicates of an earlier idempotency key.
pub const PUBLISH_DUPLICATES: &str = "streamcar_publish_duplicates_total";
/// Deliveries handed to consumers.
pub const DELIVERED: &str = "streamcar_delivered_total";
/// Deliveries with attempt > 1.
pub const REDELIVERED: &str = "streamcar_redelivered_total";
/// Acked deliveries.
pub const ACKED: &str = "streamcar_acked_total";
/// Nacked deliveries scheduled for a retry.
pub const NACKED: &str = "streamcar_nacked_total";
/// Receipts refused because their lease was lost.
pub const LEASE_LOST: &str = "streamcar_lease_lost_total";
/// Messages whose ttl passed before delivery.
pub const EXPIRED: &str = "streamcar_expired_total";
/// Messages moved to a dead-letter stream, by reason.
pub const DEAD_LETTERED: &str = "streamcar_dead_lettered_total";
/// Publishes refused by a tenant quota.
pub const RATE_LIMITED: &str = "streamcar_rate_limited_total";
/// Publishes refused by a topic's max_backlog.
pub const BACKLOG_REFUSED: &str = "streamcar_backlog_refused_total";
/// Entries trimmed by retention.
pub const TRIMMED: &str = "streamcar_retention_trimmed_total";
/// Joins finished by their deadline (timed out or dead-lettered).
pub const JOINS_TIMED_OUT: &str = "streamcar_joins_timed_out_total";
/// Topics a retention pass skipped because of an error.
pub const RETENTION_FAILED: &str = "streamcar_retention_failed_total";
/// Entries of a topic not yet delivered to a group.
pub const GROUP_LAG: &str = "streamcar_group_lag";
/// Deliveries of a group not yet acked.
pub const GROUP_PENDING: &str = "streamcar_group_pending";
/// Retries a group has scheduled.
pub const GROUP_DELAYED: &str = "streamcar_group_delayed";
/// Entries in a group's dead-letter stream.
pub const GROUP_DLQ_SIZE: &str = "streamcar_group_dead_letters";
/// Ordered groups: entries waiting behind an earlier message of their key.
pub const GROUP_PARKED: &str = "streamcar_group_parked";
/// Time from publish to first delivery.
pub const PUBLISH_TO_DELIVERY: &str = "streamcar_publish_to_first_delivery_seconds";
/// Time from publish to ack.
pub const PUBLISH_TO_ACK: &str = "streamcar_publish_to_ack_seconds";
/// HTTP request duration by route template.
pub const HTTP_DURATION: &str = "streamcar_http_request_duration_seconds";
/// Lua script duration, round trip included.
pub const SCRIPT_DURATION: &str = "streamcar_redis_script_duration_seconds";
/// Live reservations of a pool.
pub const RESERVATIONS_IN_USE: &str = "streamcar_reservations_in_use";
/// Shared multiplexed Redis connections.
pub const REDIS_CONNECTIONS: &str = "streamcar_redis_connections";
/// Lua script calls waiting for their Redis answer right now.
pub const REDIS_IN_FLIGHT: &str = "streamcar_redis_requests_in_flight";
/// 1 while Redis answers, 0 while it does not (as of the last check).
pub const REDIS_UP: &str = "streamcar_redis_up";

/// Open realtime-channel connections, by transport (`sse`, `ws`).
pub const CHANNEL_CONNECTIONS: &str = "streamcar_channel_connections";
/// Live channel subscriptions of local connections.
pub const CHANNEL_SUBSCRIPTIONS: &str = "streamcar_channel_subscriptions";
/// Channels this sidecar is subscribed to in Redis (one per channel).
pub const CHANNEL_REDIS_SUBSCRIBED: &str = "streamcar_channel_redis_subscribed";
/// Live channel messages handed to local subscribers (one per subscriber).
pub const CHANNEL_FANOUT: &str = "streamcar_channel_fanout_total";
/// Channel connections cut because their outbound queue was full.
pub const CHANNEL_SLOW_CONSUMERS: &str = "streamcar_channel_slow_consumers_total";
/// Channel resumes from a position, by outcome (`recovered`, `reset`).
pub const CHANNEL_RESUMES: &str = "streamcar_channel_resumes_total";

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Latency buckets in seconds: 0.5 ms … 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process-wide Prometheus recorder, installed on first use. Several
/// services in one process (tests) share it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            // Gauges of deleted groups disappear instead of lingering.
            .map(|b| {
                b.idle_timeout(
                    metrics_util::MetricKindMask::GAUGE,
                    Some(std::time::Duration::from_secs(600)),
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .expect("static bucket list is valid");
        let handle = recorder.handle();
        // Another recorder may already be installed (embedding); ours then
        // renders nothing, which is reported once.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!(
        CHANNEL_CONNECTIONS,
        "Open realtime-channel connections, by transport (sse, ws)."
    );
    describe_gauge!(
        CHANNEL_SUBSCRIPTIONS,
        "Channel subscriptions of local connections."
    );
    describe_gauge!(
        CHANNEL_REDIS_SUBSCRIBED,
        "Channels this sidecar is subscribed to in Redis."
    );
    describe_counter!(
        CHANNEL_FANOUT,
        "Live channel messages handed to local subscribers."
    );
    describe_counter!(
        CHANNEL_SLOW_CONSUMERS,
        "Channel connections cut because their outbound queue was full."
    );
    describe_counter!(
        CHANNEL_RESUMES,
        "Channel resumes from a position, by outcome (recovered, reset)."
    );
    describe_counter!(
        PUBLISHED,
        "Messages written by publishes (duplicates excluded)."
    );
    describe_counter!(
        PUBLISH_DUPLICATES,
        "Publishes answered as duplicates of an earlier idempotency key."
    );
    describe_counter!(DELIVERED, "Deliveries handed to consumers.");
    describe_counter!(REDELIVERED, "Deliveries with attempt > 1.");
    describe_counter!(ACKED, "Deliveries acked.");
    describe_counter!(NACKED, "Deliveries nacked and scheduled for a retry.");
    describe_counter!(LEASE_LOST, "Receipts refused because their lease was lost.");
    describe_counter!(EXPIRED, "Messages whose ttl passed before delivery.");
    describe_counter!(DEAD_LETTERED, "Messages dead-lettered, by reason.");
    describe_counter!(RATE_LIMITED, "Publishes refused by a tenant quota.");
    describe_counter!(
        BACKLOG_REFUSED,
        "Publishes refused by a topic's max_backlog."
    );
    describe_counter!(TRIMMED, "Entries trimmed by retention.");
    describe_counter!(
        JOINS_TIMED_OUT,
        "Joins finished by their deadline (timed out or dead-lettered)."
    );
    describe_counter!(
        RETENTION_FAILED,
        "Topics a retention pass skipped because of an error."
    );
    describe_gauge!(GROUP_LAG, "Entries not yet delivered to the group.");
    describe_gauge!(GROUP_PENDING, "Deliveries of the group not yet acked.");
    describe_gauge!(GROUP_DELAYED, "Retries the group has scheduled.");
    describe_gauge!(GROUP_DLQ_SIZE, "Entries in the group's dead-letter stream.");
    describe_gauge!(
        GROUP_PARKED,
        "Entries of an ordered group waiting behind an earlier message of their key."
    );
    describe_histogram!(
        PUBLISH_TO_DELIVERY,
        Unit::Seconds,
        "Time from publish to first delivery (Redis clock)."
    );
    describe_histogram!(
        PUBLISH_TO_ACK,
        Unit::Seconds,
        "Time from publish to ack (Redis clock)."
    );
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration.");
    describe_histogram!(
        SCRIPT_DURATION,
        Unit::Seconds,
        "Lua script round trip duration."
    );
    describe_gauge!(RESERVATIONS_IN_USE, "Live reservations of a pool.");
    describe_gauge!(REDIS_CONNECTIONS, "Shared multiplexed Redis connections.");
    describe_gauge!(REDIS_IN_FLIGHT, "Lua script calls waiting for Redis now.");
    describe_gauge!(REDIS_UP, "1 while Redis answers, 0 while it does not.");
}

/// Labels of a topic's metrics.
pub fn topic_labels(tenant: &Tenant, topic: &Topic) -> Vec<Label> {
    vec![
        Label::new("tenant", tenant.to_string()),
        Label::new("topic", topic.to_string()),
    ]
}

/// Labels of a group's metrics.
pub fn group_labels(tenant: &Tenant, topic: &Topic, group: &Group) -> Vec<Label> {
    let mut labels = topic_labels(tenant, topic);
    labels.push(Label::new("group", group.to_string()));
    labels
}

/// `labels` plus `reason`.
pub fn with_reason(labels: &[Label], reason: &'static str) -> Vec<Label> {
    let mut labels = labels.to_vec();
    labels.push(Label::new("reason", reason));
    labels
}

/// Seconds between two Redis-clock millisecond times (0 if out of order).
pub fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}
