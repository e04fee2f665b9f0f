//! `push`: push delivery measured against a private Redis, the release
//! sidecar started with `--subscriptions`, and an app server in this
//! process that answers 200 at once (so the sidecar is what is measured).
//!
//! 0. Pull baseline, same sidecar, same run: `--messages` in another
//!    topic, drained by `max_in_flight` HTTP pull workers fetching `batch`
//!    at a time, each fetch acking the previous one's receipts (`ack` in
//!    the fetch body: one round trip per batch, the best a pull worker can
//!    do); messages per second and sidecar CPU per message.
//! 1. Backlog: `--messages` published while the group is paused, then
//!    resumed; pushed messages per second until the group is settled, and
//!    the sidecar's CPU per message; the ratio push / pull (target ≥ 0.6:
//!    push must not cost a sidecar much more than pull).
//! 2. Steady: `--rate` single publishes per second for `--duration`;
//!    latency from publish (the message's `ce-time`, Redis clock) to the
//!    request reaching the app (ms resolution: `ce-time` has ms).
//!
//! `cargo run --release -p streamcar-bench --bin push -- --max-in-flight 16`

#[allow(dead_code)] // shared with streamcar-bench, which uses all of it
#[path = "../http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Command-line options.
#[derive(Parser)]
#[command(name = "push", about = "streamcar push delivery measurements")]
struct Args {
    /// Messages in the backlog run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// The subscription's max_in_flight.
    #[arg(long, default_value_t = 16)]
    max_in_flight: u32,
    /// The subscription's batch.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Publishes per second in the steady run.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// How long the steady run lasts, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = streamcar::config::parse_duration)]
    duration: Duration,
}

/// What the app has seen: requests, messages, and publish→arrival latencies (ms).
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    messages: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-26T05:22:14.232Z` → ms since the epoch (the sidecar's `ce-time`).
fn rfc3339_ms(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

async fn app(listener: tokio::net::TcpListener, seen: Arc<Seen>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let arrived = now_ms();
                    let published = req
                        .headers()
                        .get("ce-time")
                        .and_then(|v| v.to_str().ok())
                        .and_then(rfc3339_ms);
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let n = match (published, &body) {
                        (Some(_), _) => 1,
                        // A batch: a JSON array of deliveries.
                        (None, Ok(bytes)) => {
                            serde_json::from_slice::<Vec<serde_json::Value>>(bytes)
                                .map_or(0, |v| v.len() as u64)
                        }
                        (None, Err(_)) => 0,
                    };
                    if let Some(p) = published {
                        seen.latencies
                            .lock()
                            .expect("latencies")
                            .push(arrived.saturating_sub(p));
                    }
                    seen.messages.fetch_add(n, Ordering::Relaxed);
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Publishes `messages` to `topic` in batches of 1,000.
async fn publish_backlog(http: &http::Clients, topic: &str, messages: u64) {
    let mut published = 0;
    while published < messages {
        let n = (messages - published).min(1000);
        let batch: Vec<_> = (0..n)
            .map(|i| json!({"payload": {"job": published + i}}))
            .collect();
        let (status, body) = http
            .send(
                0,
                "POST",
                &format!("/topics/{topic}/messages:batch"),
                json!({"messages": batch}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "publish batch: {body}");
        published += n;
    }
}

/// `workers` pull workers drain group `pull` of topic `pulljobs`, fetching
/// `batch` at a time and acking each batch in the next fetch; messages got.
async fn pull(host: &str, workers: usize, batch: u32) -> u64 {
    let clients = Arc::new(http::Clients::new(host, "/v1/tenants/bench", workers).await);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let clients = clients.clone();
        tasks.spawn(async move {
            let mut got = 0u64;
            let mut ack: Vec<serde_json::Value> = Vec::new();
            loop {
                let body =
                    json!({"consumer": format!("w{w}"), "max": batch, "wait_ms": 0, "ack": ack});
                let (status, reply) = clients
                    .send(
                        w,
                        "POST",
                        "/topics/pulljobs/groups/pull/fetch",
                        body.to_string(),
                    )
                    .await;
                assert_eq!(status, 200, "fetch: {reply}");
                let messages = reply["messages"].as_array().cloned().unwrap_or_default();
                if messages.is_empty() {
                    return got;
                }
                got += messages.len() as u64;
                ack = messages.iter().map(|m| m["receipt"].clone()).collect();
            }
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.expect("pull worker");
    }
    total
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = procs::streamcar_binary();
    let dir = std::env::temp_dir().join(format!("streamcar-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = procs::start_redis(&dir).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app port");
    let app_port = listener.local_addr().expect("app addr").port();
    let seen = Arc::new(Seen::default());
    tokio::spawn(app(listener, seen.clone()));

    let file = dir.join("subscriptions.json");
    let subscriptions = json!({"subscriptions": [{
        "name": "bench", "tenant": "bench", "topic": "jobs", "group": "push",
        "url": format!("http://127.0.0.1:{app_port}/jobs"),
        "max_in_flight": args.max_in_flight, "batch": args.batch,
        "group_config": {"paused": true},
    }]});
    std::fs::write(&file, subscriptions.to_string()).expect("write subscriptions");
    let port = procs::free_port();
    let host = format!("127.0.0.1:{port}");
    let mut child = Command::new(&binary)
        .args(["serve", "--redis-url", &redis.url, "--listen", &host])
        .arg("--subscriptions")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn streamcar");
    let sidecar_pid = child.id();
    for _ in 0..200 {
        if http::is_ready(&host).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let http = http::Clients::new(&host, "/v1/tenants/bench", 1).await;
    // The sidecar declares the (paused) group; wait for it.
    for _ in 0..200 {
        if http
            .send(0, "GET", "/topics/jobs/groups/push", String::new())
            .await
            .0
            == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // 0. Pull baseline.
    publish_backlog(&http, "pulljobs", args.messages).await;
    let (status, body) = http
        .send(
            0,
            "PUT",
            "/topics/pulljobs/groups/pull",
            json!({"start": "earliest"}).to_string(),
        )
        .await;
    assert!(status == 200 || status == 201, "declare pull group: {body}");
    let cpu0 = procs::cpu_time(sidecar_pid);
    let started = Instant::now();
    let pulled = pull(&host, args.max_in_flight as usize, args.batch).await;
    let pull_rate = pulled as f64 / started.elapsed().as_secs_f64();
    let pull_cpu = (procs::cpu_time(sidecar_pid) - cpu0).as_secs_f64() * 1e6 / pulled.max(1) as f64;
    println!(
        "pull:    {pulled} messages, {pull_rate:.0} msg/s, sidecar CPU {pull_cpu:.1} µs/msg ({} workers, fetch max {}, ack in the next fetch)",
        args.max_in_flight, args.batch,
    );

    // 1. Backlog.
    publish_backlog(&http, "jobs", args.messages).await;
    let cpu0 = procs::cpu_time(sidecar_pid);
    let started = Instant::now();
    let (status, _) = http
        .send(
            0,
            "POST",
            "/topics/jobs/groups/push/resume",
            "{}".to_owned(),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, group) = http
            .send(0, "GET", "/topics/jobs/groups/push", String::new())
            .await;
        if group["lag"] == 0 && group["pending"] == 0 && group["delayed"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "backlog not drained: {group}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let cpu = procs::cpu_time(sidecar_pid) - cpu0;
    let pushed = seen.messages.load(Ordering::Relaxed);
    let push_rate = pushed as f64 / took.as_secs_f64();
    println!(
        "push:    {pushed} messages in {} requests, {push_rate:.0} msg/s, sidecar CPU {:.1} µs/msg (max_in_flight {}, batch {})",
        seen.requests.load(Ordering::Relaxed),
        cpu.as_secs_f64() * 1e6 / pushed.max(1) as f64,
        args.max_in_flight,
        args.batch,
    );
    let ratio = push_rate / pull_rate;
    println!(
        "push / pull throughput: {ratio:.2} (target >= 0.6): {}",
        if ratio >= 0.6 { "PASS" } else { "FAIL" }
    );

    // 2. Steady rate: publish → arrival latency.
    seen.latencies.lock().expect("latencies").clear();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let (status, body) = http
            .send(
                0,
                "POST",
                "/topics/jobs/messages",
                json!({"payload": {"steady": i}}).to_string(),
            )
            .await;
        assert_eq!(status, 201, "publish: {body}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.latencies.lock().expect("latencies").len() as u64) < total && args.batch == 1 {
        assert!(Instant::now() < deadline, "steady messages not all pushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = seen.latencies.lock().expect("latencies").clone();
    latencies.sort_unstable();
    if latencies.is_empty() {
        println!("steady: no per-message latency with batch > 1");
    } else {
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "steady: {} msg/s for {:?}: publish → app p50 {} ms, p99 {} ms, max {} ms",
            args.rate,
            args.duration,
            pct(0.5),
            pct(0.99),
            latencies[latencies.len() - 1]
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
