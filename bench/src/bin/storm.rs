//! `storm`: a reconnect storm on the client edge, measured.
//!
//! A private Redis and two release sidecars with `--edge-listen`; `--clients`
//! WebSocket clients, half on each, each subscribed to a shared channel
//! (`all`, history large enough for the run) and its own (`user.<i>`).
//! While `--broadcasts` messages go to `all` (at `--rate` per second) and
//! two to each user channel, one sidecar is killed with SIGKILL a third of
//! the way in. Its clients reconnect to the survivor with their last
//! `<epoch>:<offset>` positions. Reported: clients, messages expected and
//! received, lost, duplicates or gaps, resets, resume time (from losing the
//! socket to being subscribed again on the survivor: p50, p99, max), and
//! the survivor's RSS before, at peak, and after.
//!
//! `cargo run --release -p streamcar-bench --bin storm -- --clients 2000`

#[allow(dead_code)] // shared with streamcar-bench, which uses all of it
#[path = "../http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use streamcar::config::JwtAlg;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Command-line options.
#[derive(Parser)]
#[command(name = "storm", about = "streamcar client-edge reconnect storm")]
struct Args {
    /// WebSocket clients (half on each sidecar).
    #[arg(long, default_value_t = 2_000)]
    clients: usize,
    /// Messages published to the shared channel during the storm.
    #[arg(long, default_value_t = 300)]
    broadcasts: u64,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// How long clients may take to settle after the last publish, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = streamcar::config::parse_duration)]
    settle: Duration,
    /// Where to write the JSON results.
    #[arg(long, default_value = "storm.json")]
    out: std::path::PathBuf,
}

const TENANT: &str = "storm";
const SECRET: &[u8] = b"storm-bench-secret-0123456789abcdef-0123";

/// What one client saw.
#[derive(Default)]
struct Seen {
    positions: HashMap<String, (String, u64)>,
    received: u64,
    gaps: u64,
    resets: u64,
    resume: Option<Duration>,
    reconnects: u64,
}

impl Seen {
    fn take(&mut self, frame: &Value) {
        let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
        let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str() {
            Some("message") => {
                let offset = frame["offset"].as_u64().unwrap_or(0);
                let (last_epoch, last) = self
                    .positions
                    .entry(channel)
                    .or_insert_with(|| (epoch.clone(), 0));
                if *last_epoch != epoch || offset != *last + 1 {
                    self.gaps += 1;
                }
                *last_epoch = epoch;
                *last = offset;
                self.received += 1;
            }
            Some("reset") => {
                self.resets += 1;
                let top = frame["top_offset"].as_u64().unwrap_or(0);
                self.positions.insert(channel, (epoch, top));
            }
            Some("subscribed") => {
                self.positions.entry(channel).or_insert((epoch, 0));
            }
            _ => {}
        }
    }
}

/// One client: subscribes, and on losing its sidecar resumes on the other.
async fn client(
    urls: Arc<[String; 2]>,
    first: usize,
    token: String,
    channels: [String; 2],
    expected: u64,
    deadline: Arc<tokio::sync::watch::Receiver<Option<Instant>>>,
    subscribed_count: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let mut at = first;
    let mut lost_at: Option<Instant> = None;
    let mut counted = false;
    loop {
        let mut request = urls[at].as_str().into_client_request().expect("url");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            at = 1 - at;
            continue;
        };
        for channel in &channels {
            let since = seen.positions.get(channel).map(|(e, o)| format!("{e}:{o}"));
            let frame = json!({ "op": "subscribe", "channel": channel, "since": since });
            if ws
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let mut subscribed = 0;
        loop {
            if seen.received >= expected {
                return seen;
            }
            let over = deadline.borrow().is_some_and(|d| Instant::now() > d);
            if over {
                return seen;
            }
            let next = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
            let Ok(next) = next else { continue };
            match next {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if frame["type"] == "subscribed" {
                        subscribed += 1;
                        if subscribed == channels.len() {
                            if let Some(lost) = lost_at.take() {
                                seen.resume = Some(lost.elapsed());
                            }
                            if !counted {
                                counted = true;
                                subscribed_count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    seen.take(&frame);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        lost_at.get_or_insert_with(Instant::now);
        seen.reconnects += 1;
        at = 1 - at;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = procs::streamcar_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = procs::start_redis(dir.path()).await;
    let key_path = dir.path().join("edge.key");
    std::fs::write(&key_path, SECRET).expect("key file");
    let key = key_path.to_str().expect("utf-8 path");
    let max = (args.clients * 2).to_string();
    let mut sidecars = Vec::new();
    let mut edge_urls = Vec::new();
    for _ in 0..2 {
        let port = procs::free_port();
        let listen = format!("127.0.0.1:{port}");
        sidecars.push(Some(
            procs::start_streamcar_with(
                &binary,
                &redis.url,
                &[
                    "--edge-listen",
                    &listen,
                    "--jwt-key-file",
                    key,
                    "--edge-max-connections",
                    &max,
                ],
            )
            .await,
        ));
        edge_urls.push(format!("ws://{listen}/v1/edge/ws"));
    }
    let survivor_host = sidecars[0]
        .as_ref()
        .expect("sidecar")
        .url
        .trim_start_matches("http://")
        .to_owned();
    let survivor_pid = sidecars[0].as_ref().expect("sidecar").pid();
    let api = http::Clients::new(&survivor_host, &format!("/v1/tenants/{TENANT}"), 16).await;
    let (status, body) = api
        .send(
            0,
            "PUT",
            "/channels/all",
            json!({ "history_size": 10_000, "history_ttl_ms": 600_000 }).to_string(),
        )
        .await;
    assert!(status < 300, "declare all: {status} {body}");
    let rss_idle = procs::memory_mb(survivor_pid, "VmRSS");

    let signing = streamcar::edge::jwt::load_encoding_key(JwtAlg::Hs256, &key_path).expect("key");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let urls = Arc::new([edge_urls[0].clone(), edge_urls[1].clone()]);
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let deadline = Arc::new(deadline_rx);
    let subscribed = Arc::new(AtomicU64::new(0));
    let expected = args.broadcasts + 2;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let user = format!("user.{i}");
        let claims = json!({ "sub": format!("u{i}"), "tenant": TENANT,
            "channels": ["all", user], "exp": exp });
        let token = streamcar::edge::jwt::sign(JwtAlg::Hs256, &signing, &claims).expect("sign");
        tasks.spawn(client(
            urls.clone(),
            i % 2,
            token,
            ["all".to_owned(), user],
            expected,
            deadline.clone(),
            subscribed.clone(),
        ));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let connect_started = Instant::now();
    while (subscribed.load(Ordering::Relaxed) as usize) < args.clients {
        assert!(
            connect_started.elapsed() < Duration::from_secs(120),
            "clients did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_in = connect_started.elapsed();
    let rss_connected = procs::memory_mb(survivor_pid, "VmRSS");

    let publish_user = |n: u64| {
        let api = &api;
        async move {
            let mut pending = futures_util::stream::iter(0..args.clients)
                .map(|i| async move {
                    let body = json!({ "payload": { "n": n } }).to_string();
                    api.send(i, "POST", &format!("/channels/user.{i}/messages"), body)
                        .await
                })
                .buffer_unordered(16);
            while let Some((status, body)) = pending.next().await {
                assert_eq!(status, 201, "{body}");
            }
        }
    };
    publish_user(1).await;
    let storm_started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut killed_at = None;
    for n in 1..=args.broadcasts {
        if n == args.broadcasts / 3 {
            // SIGKILL (Proc's drop): no drain, sockets just vanish.
            drop(sidecars[1].take());
            killed_at = Some(storm_started.elapsed());
        }
        let (status, body) = api
            .send(
                0,
                "POST",
                "/channels/all/messages",
                json!({ "payload": { "n": n } }).to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        tokio::time::sleep(every).await;
    }
    publish_user(2).await;
    let _ = deadline_tx.send(Some(Instant::now() + args.settle));
    let mut all = Vec::new();
    while let Some(seen) = tasks.join_next().await {
        all.push(seen.expect("client task"));
    }
    let settled_in = storm_started.elapsed();
    let rss_after = procs::memory_mb(survivor_pid, "VmRSS");
    let rss_peak = procs::memory_mb(survivor_pid, "VmHWM");

    let received: u64 = all.iter().map(|s| s.received).sum();
    let lost = (expected * args.clients as u64).saturating_sub(received);
    let gaps: u64 = all.iter().map(|s| s.gaps).sum();
    let resets: u64 = all.iter().map(|s| s.resets).sum();
    let mut resumes: Vec<f64> = all
        .iter()
        .filter_map(|s| s.resume)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    resumes.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let results = json!({
        "clients": args.clients,
        "broadcasts": args.broadcasts,
        "messages_expected": expected * args.clients as u64,
        "messages_received": received,
        "messages_lost": lost,
        "gaps_or_duplicates": gaps,
        "resets": resets,
        "clients_resumed": resumes.len(),
        "reconnects": all.iter().map(|s| s.reconnects).sum::<u64>(),
        "resume_ms_p50": round(percentile(&resumes, 0.50)),
        "resume_ms_p99": round(percentile(&resumes, 0.99)),
        "resume_ms_max": round(resumes.last().copied().unwrap_or(0.0)),
        "connect_all_ms": round(connected_in.as_secs_f64() * 1000.0),
        "killed_at_ms": killed_at.map(|d| round(d.as_secs_f64() * 1000.0)),
        "settled_ms": round(settled_in.as_secs_f64() * 1000.0),
        "survivor_rss_mb_idle": round(rss_idle),
        "survivor_rss_mb_connected": round(rss_connected),
        "survivor_rss_mb_after": round(rss_after),
        "survivor_rss_mb_peak": round(rss_peak),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    let text = serde_json::to_string_pretty(&results).expect("json");
    println!("{text}");
    std::fs::write(&args.out, text).expect("write results");
    if lost > 0 || gaps > 0 {
        eprintln!("storm: messages were lost or out of order");
        std::process::exit(1);
    }
}
