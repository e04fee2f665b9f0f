//! Logs and metrics.
//!
//! Logs: human-readable or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`). Metrics: the `metrics` facade with Prometheus
//! recorders installed once per process; `/metrics` renders them. Every
//! metric name lives here, with its help text; labels are tenant, topic,
//! group, reason, route, method, status, script, pool, state, never message
//! ids, and every label takes values from a bounded set (names that exist in
//! Redis, route templates, fixed methods and statuses).
//!
//! Memory is O(series), never O(observations): a thread folds histogram
//! samples into buckets every few seconds whether or not anything scrapes,
//! and series of topics and groups expire when idle (see [`Metrics`]).

mod exact;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
    describe_counter, describe_gauge, describe_histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
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

// Push delivery (`--subscriptions`); labels: `subscription`, plus
// `outcome` (acked, taken_over, rejected, nacked, timeout, broken,
// unreachable) or `state` (running, backing_off, app_unreachable, draining).
/// Push requests to the app, by subscription and outcome.
pub const PUSH_REQUESTS: &str = "streamcar_push_requests_total";
/// Push request duration until the app answered (or the timeout).
pub const PUSH_DURATION: &str = "streamcar_push_request_duration_seconds";
/// Push requests outstanding now.
pub const PUSH_IN_FLIGHT: &str = "streamcar_push_in_flight";
/// 1 for the state a subscription is in, 0 for the others.
pub const PUSH_STATE: &str = "streamcar_push_state";
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

// Client edge (`--edge-listen`); labels: `tenant` (from verified tokens
// only), `transport` (`ws`, `sse`), `reason` (a fixed set of codes).
/// Open edge connections, by tenant and transport.
pub const EDGE_CONNECTIONS: &str = "streamcar_edge_connections";
/// Edge connections opened, by tenant and transport (with the gauge: churn).
pub const EDGE_CONNECTIONS_OPENED: &str = "streamcar_edge_connections_opened_total";
/// Edge tokens refused, by reason (the tenant of a refused token is unknown).
pub const EDGE_AUTH_FAILURES: &str = "streamcar_edge_auth_failures_total";
/// Edge connections refused before upgrade by a limit, by reason
/// (`too_many_connections`, `origin_not_allowed`).
pub const EDGE_REFUSED: &str = "streamcar_edge_refused_total";
/// Subscriptions and publishes of edge clients refused as not granted, by tenant.
pub const EDGE_FORBIDDEN: &str = "streamcar_edge_forbidden_total";
/// Edge connections ended because their token expired, by tenant.
pub const EDGE_TOKEN_EXPIRIES: &str = "streamcar_edge_token_expiries_total";

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

/// How often histogram samples are folded into their buckets. The recorder
/// keeps every raw sample (16 bytes) until then, so without this timer a
/// sidecar nobody scrapes grows by every observation it ever made.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A topic's or group's series not updated for this long is dropped: that
/// is how series of deleted topics and groups (and of topics nobody uses any
/// more) leave `/metrics` and memory.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(600);

/// Expiry only runs while rendering; when nothing scraped for this long the
/// upkeep thread renders (and discards) the expiring series itself, so an
/// unscraped sidecar with topic churn stays bounded too.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The process-wide metrics, rendered by `/metrics`.
///
/// Two Prometheus recorders behind one facade: series about a topic (every
/// metric with a `topic` label: per-topic and per-group counters, gauges and
/// histograms) expire after [`IDLE_EXPIRY`] without an update; process-wide
/// series (HTTP and script durations, Redis state, tenant quotas, pools)
/// never do. One recorder cannot do both, as its idle timeout applies by
/// metric kind, and process-wide handles are cached for the lifetime of the
/// process (`http::observe`, `scripts`): an expired entry would orphan them,
/// their samples recorded but never drained or shown.
pub struct Metrics {
    process: PrometheusHandle,
    scoped: PrometheusHandle,
    /// Keeps renders and upkeeps apart from histogram records.
    gate: Arc<exact::Gate>,
    /// When the expiring series were last rendered (ms since `epoch`).
    last_render_ms: AtomicU64,
    epoch: Instant,
}

impl Metrics {
    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.gate.fold(|| {
            let mut text = self.process.render();
            text.push_str(&self.render_scoped());
            text
        })
    }

    fn render_scoped(&self) -> String {
        let text = self.scoped.render();
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_render_ms.store(now, Ordering::Relaxed);
        text
    }

    /// Folds raw histogram samples into buckets, and sweeps expired series
    /// when no scrape did for [`SWEEP_INTERVAL`].
    fn upkeep(&self) {
        self.gate.fold(|| {
            self.process.run_upkeep();
            self.scoped.run_upkeep();
            let since = Duration::from_millis(self.last_render_ms.load(Ordering::Relaxed));
            if self.epoch.elapsed().saturating_sub(since) >= SWEEP_INTERVAL {
                drop(self.render_scoped());
            }
        });
    }
}

/// Installs the recorder (see [`metrics`]) with an idle expiry that also
/// outlasts `gauge_refresh`, the interval at which group gauges are set
/// again (`--metrics-interval`): a live group's gauges are never dropped
/// between two refreshes. Later calls change nothing.
pub fn install(gauge_refresh: Duration) -> &'static Metrics {
    METRICS.get_or_init(|| build(IDLE_EXPIRY.max(gauge_refresh.saturating_mul(3))))
}

/// The process-wide recorder, installed on first use (with the default
/// expiry if [`install`] was not called first). Several services in one
/// process (tests) share it.
pub fn metrics() -> &'static Metrics {
    install(Duration::ZERO)
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The recorder to install and the handles that render it.
fn recorders(idle_expiry: Duration) -> (Split, Metrics) {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("static bucket list is valid")
    };
    let process = Arc::new(builder().build_recorder());
    let scoped = Arc::new(
        builder()
            .idle_timeout(MetricKindMask::ALL, Some(idle_expiry))
            .build_recorder(),
    );
    let gate = Arc::new(exact::Gate::new({
        let (process, scoped) = (Arc::clone(&process), Arc::clone(&scoped));
        move |key: &Key| {
            let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
            pick(&process, &scoped, key).register_histogram(key, &metadata)
        }
    }));
    let metrics = Metrics {
        process: process.handle(),
        scoped: scoped.handle(),
        gate: Arc::clone(&gate),
        last_render_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    (
        Split {
            process,
            scoped,
            gate,
        },
        metrics,
    )
}

fn build(idle_expiry: Duration) -> Metrics {
    let (recorder, metrics) = recorders(idle_expiry);
    // Another recorder may already be installed (embedding); ours then
    // renders nothing, which is reported once.
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
    }
    describe();
    // A thread rather than a task: it runs whatever the runtime is doing
    // (or whether there is one), and the process has exactly one recorder.
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(|| {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                if let Some(metrics) = METRICS.get() {
                    metrics.upkeep();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no metrics upkeep thread: memory grows until /metrics is scraped");
    }
    metrics
}

/// Whether a series belongs to a topic (and so expires when idle).
fn topic_scoped(key: &Key) -> bool {
    key.labels().any(|label| label.key() == "topic")
}

/// Sends each series to the expiring or the process-wide recorder. A metric
/// name always carries the same label names, so each name lives in exactly
/// one of them and the two renders never repeat a name.
struct Split {
    process: Arc<PrometheusRecorder>,
    scoped: Arc<PrometheusRecorder>,
    gate: Arc<exact::Gate>,
}

impl Split {
    fn pick(&self, key: &Key) -> &PrometheusRecorder {
        pick(&self.process, &self.scoped, key)
    }
}

/// The recorder of a series: `scoped` for a topic's, else `process`.
fn pick<'a>(
    process: &'a PrometheusRecorder,
    scoped: &'a PrometheusRecorder,
    key: &Key,
) -> &'a PrometheusRecorder {
    if topic_scoped(key) { scoped } else { process }
}

impl Recorder for Split {
    // Descriptions go to both: each renders help text only for names it has
    // series of.
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.process
            .describe_counter(key.clone(), unit, description.clone());
        self.scoped.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.process
            .describe_gauge(key.clone(), unit, description.clone());
        self.scoped.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.process
            .describe_histogram(key.clone(), unit, description.clone());
        self.scoped.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.pick(key).register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.pick(key).register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.gate
            .wrap(key, self.pick(key).register_histogram(key, metadata))
    }
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
    describe_push();
    describe_edge();
}

fn describe_edge() {
    describe_gauge!(
        EDGE_CONNECTIONS,
        "Open edge connections, by tenant and transport."
    );
    describe_counter!(
        EDGE_CONNECTIONS_OPENED,
        "Edge connections opened, by tenant and transport."
    );
    describe_counter!(EDGE_AUTH_FAILURES, "Edge tokens refused, by reason.");
    describe_counter!(
        EDGE_REFUSED,
        "Edge connections refused before upgrade, by reason."
    );
    describe_counter!(
        EDGE_FORBIDDEN,
        "Edge subscriptions and publishes refused as not granted, by tenant."
    );
    describe_counter!(
        EDGE_TOKEN_EXPIRIES,
        "Edge connections ended by their token's expiry, by tenant."
    );
}

fn describe_push() {
    describe_counter!(
        PUSH_REQUESTS,
        "Push requests to the app, by subscription and outcome."
    );
    describe_histogram!(
        PUSH_DURATION,
        Unit::Seconds,
        "Push request duration until the app answered."
    );
    describe_gauge!(PUSH_IN_FLIGHT, "Push requests outstanding now.");
    describe_gauge!(
        PUSH_STATE,
        "1 for the state a push subscription is in, 0 for the others."
    );
}

/// Labels of a topic's metrics.
pub fn topic_labels(tenant: &Tenant, topic: &Topic) -> Vec<Label> {
    vec![
        Label::new("tenant", tenant.as_str().to_owned()),
        Label::new("topic", topic.as_str().to_owned()),
    ]
}

/// Labels of a group's metrics.
pub fn group_labels(tenant: &Tenant, topic: &Topic, group: &Group) -> Vec<Label> {
    let mut labels = topic_labels(tenant, topic);
    labels.push(Label::new("group", group.as_str().to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads record while a third folds and renders in a loop: every
    /// sample is counted. Ungated, metrics-util's bucket dropped some (32 of
    /// the 600,000 in one run; see `exact`).
    #[test]
    fn folding_while_recording_loses_no_sample() {
        const PER_THREAD: u64 = 300_000;
        let (recorder, metrics) = recorders(IDLE_EXPIRY);
        let key = Key::from_parts(PUBLISH_TO_ACK, vec![Label::new("topic", "p")]);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let histogram = recorder.register_histogram(&key, &metadata);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    metrics.upkeep();
                    drop(metrics.render());
                }
            });
            let writers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..PER_THREAD {
                            histogram.record(0.25);
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().expect("writer");
            }
            done.store(true, Ordering::Relaxed);
        });
        let text = metrics.render();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("streamcar_publish_to_ack_seconds_count{topic=\"p\"} "));
        assert_eq!(count, Some(&*(2 * PER_THREAD).to_string()), "{text}");
    }

    /// A sample parked while a render runs is kept even when that render
    /// expires its series (idle until then): it shows in a series of its
    /// own, as a sample recorded just after the expiry would. It used to be
    /// replayed into the expired series' handle, which nothing renders.
    #[test]
    fn a_sample_parked_during_the_render_that_expires_its_series_is_kept() {
        // A zero expiry: a series not updated since the previous render is gone.
        let (recorder, metrics) = recorders(Duration::ZERO);
        let key = Key::from_parts(PUBLISH_TO_ACK, vec![Label::new("topic", "p")]);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        // As `histogram!` does: the series is looked up at every record.
        let record = |value: f64| recorder.register_histogram(&key, &metadata).record(value);
        let count = |text: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("streamcar_publish_to_ack_seconds_count{topic=\"p\"} ")
                })
                .map(str::to_owned)
        };
        record(0.25);
        assert_eq!(count(&metrics.render()).as_deref(), Some("1"));
        // A record (another thread) lands while the next render runs: it
        // parks, and this render drops the series, idle since the last one.
        let during = metrics.gate.fold(|| {
            std::thread::scope(|s| s.spawn(|| record(0.5)).join().expect("record"));
            let mut text = metrics.process.render();
            text.push_str(&metrics.render_scoped());
            text
        });
        assert_eq!(count(&during), None, "{during}");
        let after = metrics.render();
        assert_eq!(count(&after).as_deref(), Some("1"), "{after}");
    }

    #[test]
    fn topic_series_expire_when_idle_and_process_series_never_do() {
        // A zero expiry: a series not updated since the previous render is gone.
        let (recorder, metrics) = recorders(Duration::ZERO);
        metrics::with_local_recorder(&recorder, || {
            let group = [("tenant", "t"), ("topic", "p"), ("group", "g")];
            metrics::counter!(ACKED, &group).increment(1);
            metrics::gauge!(GROUP_LAG, &group).set(3.0);
            metrics::histogram!(PUBLISH_TO_ACK, &group).record(0.5);
            metrics::counter!(RATE_LIMITED, "tenant" => "t").increment(1);
            metrics::gauge!(RESERVATIONS_IN_USE, "tenant" => "t", "pool" => "gpu").set(2.0);
            let http = [("method", "GET"), ("route", "/healthz"), ("status", "200")];
            metrics::histogram!(HTTP_DURATION, &http).record(0.001);
        });
        let process_names = [
            "streamcar_rate_limited_total{",
            "streamcar_reservations_in_use{",
            "streamcar_http_request_duration_seconds_count{",
        ];
        let topic_names = [
            "streamcar_acked_total{",
            "streamcar_group_lag{",
            "streamcar_publish_to_ack_seconds_count{",
        ];
        let first = metrics.render();
        for name in process_names.iter().chain(&topic_names) {
            assert!(first.contains(name), "{name} in\n{first}");
        }
        let second = metrics.render();
        for name in process_names {
            assert!(second.contains(name), "{name} kept in\n{second}");
        }
        for name in topic_names {
            assert!(!second.contains(name), "{name} expired in\n{second}");
        }
    }

    #[test]
    fn only_series_with_a_topic_label_are_topic_scoped() {
        let scoped = Key::from_parts(ACKED, vec![Label::new("topic", "p")]);
        let process = Key::from_parts(HTTP_DURATION, vec![Label::new("route", "/v1/x")]);
        assert!(topic_scoped(&scoped));
        assert!(!topic_scoped(&process));
    }
}
