//! `durability`: what `--durability replicas:1` costs a publisher, against
//! `leader` in the same run. One `redis-server` primary with one replica
//! (both on loopback, no persistence), two release sidecars on that
//! primary, one with each mode; `--messages` single publishes by
//! `--workers` concurrent clients to each, alternating modes for
//! `--rounds` rounds; the best round of each mode, and the ratio
//! replicas:1 / leader (throughput; 1.0 = free).
//!
//! `cargo run --release -p streamcar-bench --bin durability`

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

/// Command-line options.
#[derive(Parser)]
#[command(
    name = "durability",
    about = "streamcar: cost of --durability replicas:1"
)]
struct Args {
    /// Publishes per mode and round.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Concurrent publishing clients (1 shows the per-publish latency cost).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Rounds (each runs both modes).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// Publishes `messages` to `topic` with `workers` clients; messages per second.
async fn publish_rate(host: &str, topic: &str, messages: u64, workers: usize) -> f64 {
    let clients = Arc::new(http::Clients::new(host, "/v1/tenants/bench", workers).await);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (clients, next, topic) = (clients.clone(), next.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let path = format!("/topics/{topic}/messages");
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let body = json!({"payload": {"worker": worker}}).to_string();
                let (status, reply) = clients.send(worker, "POST", &path, body).await;
                assert_eq!(status, 201, "publish: {reply}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = procs::streamcar_binary();
    let dir = std::env::temp_dir().join(format!("streamcar-durability-{}", std::process::id()));
    let replica_dir = dir.join("replica");
    std::fs::create_dir_all(&replica_dir).expect("temp dir");
    let primary = procs::start_redis(&dir).await;
    let port = primary.url.rsplit(':').next().expect("port").to_owned();
    let _replica =
        procs::start_redis_with(&replica_dir, &["--replicaof", "127.0.0.1", &port]).await;
    let client = redis::Client::open(primary.url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("primary");
    for attempt in 0.. {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if info.contains("state=online") {
            break;
        }
        assert!(attempt < 200, "the replica never came online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader =
        procs::start_streamcar_with(&binary, &primary.url, &["--durability", "leader"]).await;
    let replicas =
        procs::start_streamcar_with(&binary, &primary.url, &["--durability", "replicas:1"]).await;
    let host = |p: &procs::Proc| p.url.trim_start_matches("http://").to_owned();

    let (mut best_leader, mut best_replicas) = (0f64, 0f64);
    for round in 0..args.rounds {
        let l = publish_rate(
            &host(&leader),
            &format!("l{round}"),
            args.messages,
            args.workers,
        )
        .await;
        let r = publish_rate(
            &host(&replicas),
            &format!("r{round}"),
            args.messages,
            args.workers,
        )
        .await;
        println!("round {round}: leader {l:.0}/s, replicas:1 {r:.0}/s");
        best_leader = best_leader.max(l);
        best_replicas = best_replicas.max(r);
    }
    println!(
        "publish, {} workers: leader {best_leader:.0}/s, replicas:1 {best_replicas:.0}/s, ratio replicas:1 / leader {:.2}",
        args.workers,
        best_replicas / best_leader
    );
    drop((leader, replicas));
    let _ = std::fs::remove_dir_all(&dir);
}
