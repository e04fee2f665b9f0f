//! `limits`: measures the publish limits against a private Redis and the
//! release sidecar (the same processes `streamcar-bench` starts).
//!
//! 1. A tenant quota of `--rate`/s: single publishes from `--workers`
//!    keep-alive connections for `--duration`, then the sidecar's own charge
//!    call pipelined straight at Redis (rates no single sidecar reaches).
//!    Both report what was admitted per second of the Redis clock next to
//!    what GCRA allows (rate + burst / window).
//! 2. Publish latency with `max_backlog` set and one group `--behind`
//!    messages behind, against a plain topic, alternating in the same run.
//!
//! `cargo run --release -p streamcar-bench --bin limits -- --rate 15000`

#[allow(dead_code)] // shared with streamcar-bench, which uses all of it
#[path = "../http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use streamcar::coord::limits::{RateReply, charge_cmd};
use streamcar::names::Tenant;

/// Command-line options.
#[derive(Parser)]
#[command(name = "limits", about = "streamcar quota and backlog measurements")]
struct Args {
    /// The quota's publish_per_sec.
    #[arg(long, default_value_t = 15_000)]
    rate: u64,
    /// The quota's burst.
    #[arg(long, default_value_t = 100)]
    burst: u64,
    /// Publishing connections for the quota run.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// How long the HTTP quota run lasts, e.g. `4s`.
    #[arg(long, default_value = "4s", value_parser = streamcar::config::parse_duration)]
    duration: Duration,
    /// Charges sent in the pipelined quota run.
    #[arg(long, default_value_t = 200_000)]
    charges: usize,
    /// How far the slow group is behind in the backlog run.
    #[arg(long, default_value_t = 60_000)]
    behind: u64,
    /// Publishes timed per topic in the backlog run.
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = procs::streamcar_binary();
    let dir = std::env::temp_dir().join(format!("streamcar-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = procs::start_redis(&dir).await;
    let sidecar = procs::start_streamcar(&binary, &redis.url).await;
    let host = sidecar.url.trim_start_matches("http://").to_owned();
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection");

    println!(
        "quota {}/s, burst {} ({} workers, single publishes, {:?})",
        args.rate, args.burst, args.workers, args.duration
    );
    let http = Arc::new(http::Clients::new(&host, "/v1/tenants", args.workers).await);
    let (status, body) = http
        .send(
            0,
            "PUT",
            "/quota/limits",
            json!({"publish_per_sec": args.rate, "burst": args.burst}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "PUT /limits: {body}");
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let t0 = redis_time_us(&mut conn).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.workers {
        let (http, admitted, refused) = (http.clone(), admitted.clone(), refused.clone());
        let duration = args.duration;
        tasks.push(tokio::spawn(async move {
            let body = json!({"payload": worker}).to_string();
            while started.elapsed() < duration {
                match http
                    .send(worker, "POST", "/quota/topics/q/messages", body.clone())
                    .await
                    .0
                {
                    201 => admitted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("publish answered {other}"),
                };
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let window = redis_time_us(&mut conn).await - t0;
    report(
        "HTTP",
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        window,
        &args,
    );

    let tenant = Tenant::parse("quota-raw").expect("tenant");
    let (status, body) = http
        .send(
            0,
            "PUT",
            "/quota-raw/limits",
            json!({"publish_per_sec": args.rate, "burst": args.burst}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "PUT /limits: {body}");
    let scripts = streamcar::scripts::Scripts::new();
    scripts.ensure_loaded(&mut conn).await.expect("scripts");
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for _ in 0..args.charges {
        pipe.add_command(charge_cmd(&scripts, &tenant, 1));
    }
    pipe.cmd("TIME");
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("flood");
    let after = time_value(replies.pop().expect("TIME"));
    let before = time_value(replies.remove(0));
    let charged = replies
        .into_iter()
        .filter(|v| {
            redis::from_redis_value_ref::<RateReply>(v)
                .expect("charge")
                .0
                == 1
        })
        .count() as u64;
    report(
        "pipelined",
        charged,
        args.charges as u64 - charged,
        after - before,
        &args,
    );

    backlog_run(&http, &args).await;
    drop(sidecar);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prints what a quota run admitted per second of Redis time, next to what
/// GCRA allows over that window.
fn report(what: &str, admitted: u64, refused: u64, window_us: u64, args: &Args) {
    let secs = window_us as f64 / 1e6;
    let allowed = args.burst as f64 + args.rate as f64 * secs;
    println!(
        "  {what:9} admitted {admitted:>7} refused {refused:>7} in {secs:.3} s (Redis clock): \
         {:.0}/s admitted; GCRA allows at most {allowed:.0} ({:.0}/s)",
        admitted as f64 / secs,
        allowed / secs
    );
}

/// Times single publishes to a topic with `max_backlog` whose slow group is
/// `behind` messages behind, alternating with a plain topic.
async fn backlog_run(http: &http::Clients, args: &Args) {
    let tenant = "/backlog";
    let send = |method: &'static str, path: String, body: serde_json::Value| async move {
        http.send(0, method, &format!("{tenant}{path}"), body.to_string())
            .await
    };
    let (status, body) = send(
        "PUT",
        "/topics/bp".into(),
        json!({"max_backlog": args.behind * 2}),
    )
    .await;
    assert!(status < 300, "{body}");
    let (status, body) = send("PUT", "/topics/bp/groups/slow".into(), json!({})).await;
    assert!(status < 300, "{body}");
    let (status, body) = send("PUT", "/topics/plain".into(), json!({})).await;
    assert!(status < 300, "{body}");
    let mut written = 0;
    while written < args.behind {
        let n = (args.behind - written).min(1000);
        let messages: Vec<_> = (0..n).map(|i| json!({"payload": i})).collect();
        let (status, body) = send(
            "POST",
            "/topics/bp/messages:batch".into(),
            json!({"messages": messages}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        written += n;
    }
    let (_, info) = send("GET", "/topics/bp".into(), json!(null)).await;
    println!(
        "backlog: topic with max_backlog {} and group 'slow' {} behind, vs a plain topic",
        args.behind * 2,
        info["groups"][0]["lag"]
    );
    let (mut limited, mut plain) = (Vec::new(), Vec::new());
    for i in 0..args.samples * 2 {
        let (topic, samples) = if i % 2 == 0 {
            ("bp", &mut limited)
        } else {
            ("plain", &mut plain)
        };
        let started = Instant::now();
        let (status, body) = send(
            "POST",
            format!("/topics/{topic}/messages"),
            json!({"payload": i}),
        )
        .await;
        samples.push(started.elapsed().as_micros() as u64);
        assert_eq!(status, 201, "{topic}: {body}");
    }
    for (name, samples) in [("max_backlog", &mut limited), ("plain", &mut plain)] {
        samples.sort_unstable();
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
        println!(
            "  {name:11} publish: p50 {} µs, p99 {} µs, mean {} µs ({} samples)",
            at(0.5),
            at(0.99),
            samples.iter().sum::<u64>() / samples.len() as u64,
            samples.len()
        );
    }
}

async fn redis_time_us(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1_000_000 + micros
}

fn time_value(v: redis::Value) -> u64 {
    let (secs, micros): (u64, u64) = redis::from_redis_value(v).expect("TIME");
    secs * 1_000_000 + micros
}
