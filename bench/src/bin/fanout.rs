//! `fanout`: realtime channels measured against raw Redis pub/sub, in one run.
//!
//! Starts its own `redis-server` and the release sidecar (after raising this
//! process's open-file limit, which both children inherit), then:
//!
//! 1. **Sidecar**: `--connections` WebSockets to `/v1/tenants/{t}/ws`, each
//!    subscribed to `--subscriptions / --connections` channels, spread so
//!    that each of `--channels` channels has the same number of subscribers
//!    on different connections. The sidecar's RSS is read before connecting,
//!    after connecting and after subscribing (idle, nothing published), so
//!    its memory per idle connection is a difference of two readings of one
//!    process. Then `--rate` publishes per second for `--duration` through
//!    `POST …/channels/{c}/messages` (round robin over the channels), each
//!    payload carrying its send time; every delivery's publish→receive
//!    latency is recorded by the receiving socket.
//! 2. **Raw**: the same number of redis-rs pub/sub connections `SUBSCRIBE`d
//!    directly to the same number of live channels, and the same publishes at
//!    the same rate sent as the very same `channel_publish.lua` call the
//!    sidecar makes (history append + `PUBLISH`, built by the same function).
//!    That is what every client connecting to Redis itself would cost: Redis
//!    fans each message out to each subscriber connection. The sidecar run
//!    adds the HTTP publish, one Redis subscription per channel and its own
//!    fan-out to WebSockets, so the ratio of the two is the sidecar's price.
//!
//! Everything shares 2 cores with this process's 2,000-odd client sockets:
//! compare the two runs, not absolute numbers across machines.
//!
//! `cargo run --release -p streamcar-bench --bin fanout`

#[allow(dead_code)] // shared with streamcar-bench, which uses all of it
#[path = "../http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use streamcar::channels::history::{ChannelPublish, publish_call};
use streamcar::keys::ChannelKeys;
use streamcar::names::Tenant;
use streamcar::scripts::Scripts;
use tokio_tungstenite::tungstenite::Message;

/// Command-line options.
#[derive(Parser)]
#[command(
    name = "fanout",
    about = "streamcar channel fan-out vs raw Redis pub/sub"
)]
struct Args {
    /// WebSocket connections (and raw pub/sub connections).
    #[arg(long, default_value_t = 2_000)]
    connections: u64,
    /// Subscriptions over all connections (a multiple of `connections`).
    #[arg(long, default_value_t = 10_000)]
    subscriptions: u64,
    /// Distinct channels (`subscriptions` must be a multiple of it).
    #[arg(long, default_value_t = 1_000)]
    channels: u64,
    /// Publishes per second (each reaches subscriptions / channels sockets).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Publishing tasks, each with its own connection.
    #[arg(long, default_value_t = 16)]
    publishers: u64,
    /// How long each measured run publishes, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = streamcar::config::parse_duration)]
    duration: Duration,
    /// Where to write the JSON results.
    #[arg(long, default_value = "fanout.json")]
    out: PathBuf,
}

/// Targets of the issue: p99 at the delivery rate, memory per connection.
const TARGET_P99_MS: f64 = 50.0;
const TARGET_DELIVERIES_PER_S: f64 = 20_000.0;
const TARGET_KB_PER_CONNECTION: f64 = 20.0;

/// Microseconds since the run started (publishers and receivers share it).
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What every receiver adds to.
#[derive(Default)]
struct Counters {
    subscribed: AtomicU64,
    delivered: AtomicU64,
    other: AtomicU64,
}

/// The payload of every publish: its send time.
#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// A server frame (only what the bench reads).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    payload: Option<Stamp>,
}

/// A raw pub/sub message (what `channel_publish.lua` publishes).
#[derive(Deserialize)]
struct Live {
    payload: Stamp,
}

/// One run's results.
#[derive(Serialize, Default, Clone)]
struct Run {
    published: u64,
    publish_rate: f64,
    expected_deliveries: u64,
    delivered: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    sidecar_cpu_us_per_delivery: f64,
    redis_cpu_us_per_delivery: f64,
}

impl Run {
    /// One mode's run: `published` messages in `took` for `expected`
    /// deliveries, of which `delivered` arrived with `latencies` (µs), and
    /// the CPU the sidecar (zero for raw) and Redis spent meanwhile.
    fn new(
        (published, took): (u64, Duration),
        (expected, delivered): (u64, u64),
        latencies: Vec<u64>,
        (sidecar_cpu, redis_cpu): (Duration, Duration),
    ) -> Self {
        let (p50_ms, p99_ms, max_ms) = percentiles(latencies);
        let per_delivery = |cpu: Duration| cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
        Self {
            published,
            publish_rate: published as f64 / took.as_secs_f64(),
            expected_deliveries: expected,
            delivered,
            deliveries_per_s: delivered as f64 / took.as_secs_f64(),
            p50_ms,
            p99_ms,
            max_ms,
            sidecar_cpu_us_per_delivery: per_delivery(sidecar_cpu),
            redis_cpu_us_per_delivery: per_delivery(redis_cpu),
        }
    }
}

/// The results file.
#[derive(Serialize)]
struct Results {
    connections: u64,
    subscriptions: u64,
    channels: u64,
    rate: u64,
    duration_s: f64,
    rss_kb_before: f64,
    rss_kb_connected: f64,
    rss_kb_subscribed: f64,
    kb_per_idle_connection: f64,
    kb_per_idle_connection_with_subscriptions: f64,
    rss_mb_peak: f64,
    sidecar: Run,
    raw: Run,
    cpus: usize,
    open_files_limit: u64,
}

fn channel_name(c: u64) -> String {
    format!("ch{c}")
}

/// The channels of connection `i`: consecutive numbers modulo the channel
/// count, so every channel gets the same number of subscribers, each on a
/// different connection.
fn channels_of(i: u64, per_connection: u64, channels: u64) -> impl Iterator<Item = u64> {
    (0..per_connection).map(move |j| (i * per_connection + j) % channels)
}

fn percentiles(mut latencies: Vec<u64>) -> (f64, f64, f64) {
    if latencies.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    (pct(0.5), pct(0.99), pct(1.0))
}

/// Publishes at `rate` per second over `publishers` tasks for `duration`,
/// round robin over the channels; `send(task, channel, body)` does one.
async fn publish_at_rate<F, Fut>(args: &Args, send: F) -> (u64, Duration)
where
    F: Fn(u64, u64, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(args.publishers as f64 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..args.publishers {
        let (next, send, channels) = (next.clone(), send.clone(), args.channels);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let body = format!(r#"{{"payload":{{"t":{}}}}}"#, now_us());
                send(task, n % channels, body).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    (total, started.elapsed())
}

/// Waits (bounded) until `expected` deliveries arrived.
async fn drain(counters: &Counters, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_kb(pid: u32) -> f64 {
    procs::memory_mb(pid, "VmRSS") * 1024.0
}

#[allow(clippy::too_many_lines)]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    assert!(
        args.subscriptions % args.connections == 0 && args.subscriptions % args.channels == 0,
        "--subscriptions must be a multiple of --connections and of --channels"
    );
    let per_connection = args.subscriptions / args.connections;
    let per_channel = args.subscriptions / args.channels;
    // Every socket is a descriptor here, in the sidecar and in Redis; the
    // children inherit this limit.
    let open_files_limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let needed = 2 * args.connections + 256;
    assert!(
        open_files_limit >= needed,
        "open-file limit {open_files_limit} < {needed}: raise the hard limit (ulimit -Hn)"
    );
    let _ = now_us();

    let binary = procs::streamcar_binary();
    let dir = std::env::temp_dir().join(format!("streamcar-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = procs::start_redis(&dir).await;
    let sidecar = procs::start_streamcar(&binary, &redis.url).await;
    let (sidecar_pid, redis_pid) = (sidecar.pid(), redis.pid());
    let host = sidecar.url.trim_start_matches("http://").to_owned();
    let tenant = "fanout";
    let http = Arc::new(
        http::Clients::new(
            &host,
            &format!("/v1/tenants/{tenant}"),
            args.publishers as usize,
        )
        .await,
    );

    // Warm the publish path, then the baseline.
    for c in 0..100 {
        http.send(
            0,
            "POST",
            &format!("/channels/warm{c}/messages"),
            r#"{"payload":{"t":0}}"#.to_owned(),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kb(sidecar_pid);

    // 1. Sidecar: connect, then subscribe.
    eprintln!("connecting {} WebSockets…", args.connections);
    let url = format!("ws://{host}/v1/tenants/{tenant}/ws");
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let sockets: Vec<_> = futures_util::stream::iter(0..args.connections)
        .map(|_| {
            let url = url.clone();
            async move {
                let (ws, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .expect("websocket to the sidecar");
                ws
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut sinks = Vec::with_capacity(sockets.len());
    let mut readers = Vec::with_capacity(sockets.len());
    for ws in sockets {
        let (sink, mut stream) = ws.split();
        sinks.push(sink);
        let (counters, latencies) = (counters.clone(), latencies.clone());
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                match serde_json::from_str::<Frame>(&text) {
                    Ok(Frame {
                        kind: "message",
                        payload: Some(stamp),
                    }) => {
                        mine.push(now_us().saturating_sub(stamp.t));
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Frame {
                        kind: "subscribed", ..
                    }) => {
                        counters.subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counters.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies.lock().expect("latencies").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = rss_kb(sidecar_pid);

    eprintln!("subscribing {} channels…", args.subscriptions);
    for (i, sink) in sinks.iter_mut().enumerate() {
        for c in channels_of(i as u64, per_connection, args.channels) {
            let frame = format!(r#"{{"op":"subscribe","channel":"{}"}}"#, channel_name(c));
            sink.feed(Message::text(frame)).await.expect("subscribe");
        }
        sink.flush().await.expect("subscribe");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.subscribed.load(Ordering::Relaxed) < args.subscriptions {
        assert!(
            Instant::now() < deadline,
            "only {} of {} subscriptions confirmed",
            counters.subscribed.load(Ordering::Relaxed),
            args.subscriptions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_subscribed = rss_kb(sidecar_pid);

    eprintln!(
        "sidecar: {} publishes/s for {:?}…",
        args.rate, args.duration
    );
    let (cpu_sc, cpu_redis) = (procs::cpu_time(sidecar_pid), procs::cpu_time(redis_pid));
    let send = {
        let http = http.clone();
        move |task: u64, channel: u64, body: String| {
            let http = http.clone();
            async move {
                let path = format!("/channels/{}/messages", channel_name(channel));
                let (status, reply) = http.send(task as usize, "POST", &path, body).await;
                assert_eq!(status, 201, "publish: {reply}");
            }
        }
    };
    let (published, took) = publish_at_rate(&args, send).await;
    let expected = published * per_channel;
    drain(&counters, expected).await;
    let sidecar_cpu = procs::cpu_time(sidecar_pid) - cpu_sc;
    let redis_cpu = procs::cpu_time(redis_pid) - cpu_redis;
    // Close every socket (the sidecar answers the close, the readers end).
    futures_util::stream::iter(sinks)
        .for_each_concurrent(64, |mut sink| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
        })
        .await;
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let sidecar_run = Run::new(
        (published, took),
        (expected, delivered),
        std::mem::take(&mut *latencies.lock().expect("l")),
        (sidecar_cpu, redis_cpu),
    );
    let rss_mb_peak = procs::memory_mb(sidecar_pid, "VmHWM");
    if counters.other.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "note: {} unexpected frames",
            counters.other.load(Ordering::Relaxed)
        );
    }

    // 2. Raw: redis-rs subscribers straight on Redis, same publishes.
    eprintln!("raw: {} redis-rs subscribers…", args.connections);
    let raw_tenant = Tenant::parse("fanout-raw").expect("tenant");
    let live = |c: u64| ChannelKeys::new(&raw_tenant, &channel_name(c)).live();
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let raw_counters = Arc::new(Counters::default());
    let raw_latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let pubsubs: Vec<_> = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let client = client.clone();
            let channels: Vec<String> = channels_of(i, per_connection, args.channels)
                .map(live)
                .collect();
            async move {
                let mut pubsub = client.get_async_pubsub().await.expect("pub/sub");
                pubsub.subscribe(&channels).await.expect("subscribe");
                pubsub
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut raw_readers = Vec::new();
    for pubsub in pubsubs {
        let (counters, latencies, stop) =
            (raw_counters.clone(), raw_latencies.clone(), stop.clone());
        raw_readers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut messages = pubsub.into_on_message();
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), messages.next()).await;
                match next {
                    Ok(Some(msg)) => {
                        if let Ok(live) = serde_json::from_slice::<Live>(msg.get_payload_bytes()) {
                            mine.push(now_us().saturating_sub(live.payload.t));
                            counters.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => break,
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            latencies.lock().expect("latencies").extend(mine);
        }));
    }
    let scripts = Arc::new(Scripts::new());
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    eprintln!("raw: {} publishes/s for {:?}…", args.rate, args.duration);
    let cpu_redis = procs::cpu_time(redis_pid);
    let send = {
        let raw_tenant = raw_tenant.clone();
        move |_task: u64, channel: u64, body: String| {
            let (scripts, mut conn, tenant) = (scripts.clone(), conn.clone(), raw_tenant.clone());
            async move {
                let keys = ChannelKeys::new(&tenant, &channel_name(channel));
                let message: ChannelPublish = serde_json::from_str(&body).expect("body");
                let reply: (u8, u64, String) = publish_call(&scripts, &keys, &message, false)
                    .expect("call")
                    .invoke_async(&mut conn)
                    .await
                    .expect("raw publish");
                assert_eq!(reply.0, 0);
            }
        }
    };
    let (published, took) = publish_at_rate(&args, send).await;
    let expected = published * per_channel;
    drain(&raw_counters, expected).await;
    let redis_cpu = procs::cpu_time(redis_pid) - cpu_redis;
    stop.store(true, Ordering::Relaxed);
    for reader in raw_readers {
        let _ = reader.await;
    }
    let delivered = raw_counters.delivered.load(Ordering::Relaxed);
    let raw_run = Run::new(
        (published, took),
        (expected, delivered),
        std::mem::take(&mut *raw_latencies.lock().expect("l")),
        (Duration::ZERO, redis_cpu),
    );

    let connections = args.connections as f64;
    let per_conn = (rss_connected - rss_before) / connections;
    let per_conn_subscribed = (rss_subscribed - rss_before) / connections;
    println!(
        "{} connections, {} subscriptions ({per_connection} per connection) on {} channels ({per_channel} subscribers each)",
        args.connections, args.subscriptions, args.channels
    );
    println!(
        "sidecar RSS: {:.1} MB before, {:.1} MB connected, {:.1} MB subscribed, peak {rss_mb_peak:.1} MB",
        rss_before / 1024.0,
        rss_connected / 1024.0,
        rss_subscribed / 1024.0
    );
    println!(
        "per idle connection: {per_conn:.1} KB; with its {per_connection} subscriptions: {per_conn_subscribed:.1} KB"
    );
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "run",
        "publish/s",
        "delivered",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "sidecar µs/d",
        "redis µs/d"
    );
    for (name, run) in [("sidecar", &sidecar_run), ("raw", &raw_run)] {
        println!(
            "{:<8} {:>10.0} {:>5}/{:<6} {:>12.0} {:>8.1} {:>8.1} {:>8.1} {:>12.1} {:>12.1}",
            name,
            run.publish_rate,
            run.delivered,
            run.expected_deliveries,
            run.deliveries_per_s,
            run.p50_ms,
            run.p99_ms,
            run.max_ms,
            run.sidecar_cpu_us_per_delivery,
            run.redis_cpu_us_per_delivery
        );
    }
    let at_rate = sidecar_run.deliveries_per_s >= 0.98 * TARGET_DELIVERIES_PER_S
        && sidecar_run.delivered == sidecar_run.expected_deliveries;
    let targets = [
        (
            format!(
                "every delivery arrives at >= {TARGET_DELIVERIES_PER_S:.0} deliveries/s (sidecar)"
            ),
            at_rate,
        ),
        (
            format!("p99 <= {TARGET_P99_MS} ms at that rate (sidecar)"),
            at_rate && sidecar_run.p99_ms <= TARGET_P99_MS,
        ),
        (
            format!(
                "RSS <= {TARGET_KB_PER_CONNECTION} KB per idle connection (with its subscriptions)"
            ),
            per_conn_subscribed <= TARGET_KB_PER_CONNECTION,
        ),
    ];
    let mut all_met = true;
    for (target, met) in &targets {
        println!("{} {target}", if *met { "PASS" } else { "FAIL" });
        all_met &= met;
    }
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let results = Results {
        connections: args.connections,
        subscriptions: args.subscriptions,
        channels: args.channels,
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        rss_kb_before: round(rss_before),
        rss_kb_connected: round(rss_connected),
        rss_kb_subscribed: round(rss_subscribed),
        kb_per_idle_connection: round(per_conn),
        kb_per_idle_connection_with_subscriptions: round(per_conn_subscribed),
        rss_mb_peak: round(rss_mb_peak),
        sidecar: sidecar_run,
        raw: raw_run,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        open_files_limit,
    };
    procs::write_results(&args.out, &results);
    drop(sidecar);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    if all_met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
