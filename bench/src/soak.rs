//! `--soak <duration>`: hours of traffic compressed into minutes, watching
//! the sidecar's memory and file descriptors rather than its speed.
//!
//! At a steady rate (not flat out, so the run measures a sidecar in
//! service, not one saturated): single and batch publishes, two consumers
//! that ack most deliveries and nack some for a retry, long-polls that
//! time out empty or are abandoned mid-wait by their client, and topics
//! created, used (with a waiting long-poll) and deleted. Nothing scrapes
//! `/metrics` until the end, the case where the recorder used to keep every
//! histogram sample.
//!
//! Every 10 s it reads the sidecar's RSS and open descriptors from
//! `/proc/<pid>`. After a warm-up it reports the slope (MB of RSS per
//! million messages) and fails when the RSS floor rose by more than the
//! bound or descriptors piled up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{self, Clients};
use crate::procs;

/// What the soak run is given.
pub struct Settings {
    /// How long the load runs.
    pub duration: Duration,
    /// Messages published per second (40 % singly, 60 % in batches of 100).
    pub rate: u64,
    /// Largest rise of the RSS floor allowed after warm-up, MB.
    pub max_growth_mb: f64,
}

/// Time between two readings of `/proc/<pid>`.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Workers publishing single messages.
const PUBLISHERS: usize = 8;
/// Consumers of the main topic.
const CONSUMERS: usize = 2;
/// Workers long-polling a quiet topic with a short wait.
const POLLERS: usize = 8;
/// Keep-alive connections, by user: publishers, then the batch publisher,
/// the consumers, the pollers, the quiet topic's publisher, the churn.
const BATCHER: usize = PUBLISHERS;
const FIRST_CONSUMER: usize = BATCHER + 1;
const FIRST_POLLER: usize = FIRST_CONSUMER + CONSUMERS;
const TRICKLE: usize = FIRST_POLLER + POLLERS;
const CHURN: usize = TRICKLE + 1;
/// Names the topic churn cycles through: topics come and go under names
/// that come back, so their series are reused rather than left to expire
/// (expiry takes 10 minutes, longer than a typical soak; see telemetry).
const CHURN_NAMES: u64 = 32;
/// One in this many first deliveries is nacked for a retry.
const NACK_ONE_IN: u64 = 50;
/// Open descriptors allowed above the first reading after warm-up.
const MAX_FD_GROWTH: usize = 16;

/// One reading of the sidecar.
struct Sample {
    at: Duration,
    published: u64,
    acked: u64,
    rss_mb: f64,
    anon_mb: f64,
    fds: usize,
}

/// Counters the workers share.
#[derive(Default)]
struct Progress {
    /// Messages published to the main topic.
    published: AtomicU64,
    /// Of those, acked.
    acked: AtomicU64,
    nacked: AtomicU64,
    churned: AtomicU64,
    abandoned: AtomicU64,
    /// Answers with a status the run did not expect.
    unexpected: AtomicU64,
}

impl Progress {
    fn check(&self, what: &str, status: u16, expected: &[u16], body: &Value) {
        if !expected.contains(&status) && self.unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("soak: {what} answered {status}: {body}");
        }
    }
}

/// Sleeps until the `n`th event of a stream at `per_sec` started at `start`
/// is due; behind schedule it does not sleep (and does not burst beyond
/// catching up).
async fn pace(start: Instant, n: u64, per_sec: f64) {
    let due = start + Duration::from_secs_f64(n as f64 / per_sec);
    tokio::time::sleep_until(due.into()).await;
}

/// Runs the soak against the sidecar at `sidecar_url` (pid `pid`); true
/// when every check passed.
pub async fn run(settings: &Settings, sidecar_url: &str, pid: u32) -> bool {
    let host = sidecar_url.trim_start_matches("http://").to_owned();
    let base = "/v1/tenants/soak";
    let clients = Arc::new(Clients::new(&host, base, CHURN + 1).await);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Retention trims what every group finished; a short dedup window lets
    // Redis forget the idempotency keys, so Redis stays small too.
    for (path, body) in [
        (
            "/topics/main",
            json!({"retention_ms": 1000, "dedup_window_ms": 60000}),
        ),
        ("/topics/main/groups/workers", json!({"lease_ms": 30000})),
        ("/topics/quiet", json!({"retention_ms": 1000})),
        ("/topics/quiet/groups/idle", json!({})),
    ] {
        let (status, reply) = clients.send(0, "PUT", path, body.to_string()).await;
        assert!((200..300).contains(&status), "{path}: {status} {reply}");
    }

    let mut tasks = Vec::new();
    let single_rate = settings.rate as f64 * 0.4 / PUBLISHERS as f64;
    for w in 0..PUBLISHERS {
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                pace(start, n, single_rate).await;
                let body = json!({
                    "payload": {"prompt": "Summarize this support ticket in one line.", "n": n},
                    "idempotency_key": format!("p{w}-{n}"),
                });
                let (status, reply) = clients
                    .send(w, "POST", "/topics/main/messages", body.to_string())
                    .await;
                progress.check("publish", status, &[201], &reply);
                progress.published.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    {
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        let batches_per_sec = settings.rate as f64 * 0.6 / 100.0;
        let body = json!({
            "messages": (0..100)
                .map(|i| json!({"payload": {"prompt": "Classify this review.", "i": i}}))
                .collect::<Vec<_>>()
        })
        .to_string();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                pace(start, n, batches_per_sec).await;
                let (status, reply) = clients
                    .send(BATCHER, "POST", "/topics/main/messages:batch", body.clone())
                    .await;
                progress.check("batch publish", status, &[200], &reply);
                progress.published.fetch_add(100, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for c in 0..CONSUMERS {
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let w = FIRST_CONSUMER + c;
            let group = "/topics/main/groups/workers";
            let fetch = json!({"consumer": format!("c{c}"), "max": 200, "wait_ms": 1000});
            while !stop.load(Ordering::Relaxed) {
                let acked = consume_once(&clients, &progress, w, group, &fetch, true).await;
                progress.acked.fetch_add(acked, Ordering::Relaxed);
            }
        }));
    }
    for p in 0..POLLERS {
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let w = FIRST_POLLER + p;
            let group = "/topics/quiet/groups/idle";
            let fetch = json!({"consumer": format!("lp{p}"), "max": 10, "wait_ms": 250});
            while !stop.load(Ordering::Relaxed) {
                consume_once(&clients, &progress, w, group, &fetch, false).await;
            }
        }));
    }
    {
        // A trickle on the quiet topic wakes its pollers now and then, and
        // clients that give up on a long-poll mid-wait (a fresh connection
        // each, dropped after 20 ms).
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("{base}/topics/quiet/groups/idle/fetch");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if n.is_multiple_of(5) {
                    let (status, reply) = clients
                        .send(
                            TRICKLE,
                            "POST",
                            "/topics/quiet/messages",
                            json!({"payload": n}).to_string(),
                        )
                        .await;
                    progress.check("quiet publish", status, &[201], &reply);
                }
                let body = json!({"consumer": "gives-up", "max": 1, "wait_ms": 5000});
                let give_up = Some(Duration::from_millis(20));
                http::once(&host, "POST", &path, body.to_string(), give_up).await;
                progress.abandoned.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(30)).await;
                n += 1;
            }
        }));
    }
    {
        let (clients, progress, stop) = (clients.clone(), progress.clone(), stop.clone());
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                pace(start, n, 4.0).await;
                churn_topic(&clients, &progress, &host, n % CHURN_NAMES).await;
                n += 1;
            }
        }));
    }

    let samples = sample_until(settings.duration, pid, &progress).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        if let Err(e) = task.await {
            eprintln!("soak: a worker failed: {e}");
            progress.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }
    let metrics_bytes = http::once(&host, "GET", "/metrics", String::new(), None)
        .await
        .map_or(0, |(_, text)| text.len());
    report(settings, &samples, &progress, metrics_bytes)
}

/// One fetch, then an ack of everything delivered (or, when `nack_some`, a
/// nack with a short delay of one in [`NACK_ONE_IN`] first deliveries).
/// Returns how many were acked.
async fn consume_once(
    clients: &Clients,
    progress: &Progress,
    w: usize,
    group: &str,
    fetch: &Value,
    nack_some: bool,
) -> u64 {
    let (status, reply) = clients
        .send(w, "POST", &format!("{group}/fetch"), fetch.to_string())
        .await;
    progress.check("fetch", status, &[200], &reply);
    let messages = reply["messages"].as_array().cloned().unwrap_or_default();
    let (mut ack, mut nack, mut acked) = (Vec::new(), Vec::new(), 0);
    for m in &messages {
        let first = m["attempt"].as_u64() == Some(1);
        let seq = m["seq"].as_u64().unwrap_or(0);
        if nack_some && first && seq.is_multiple_of(NACK_ONE_IN) {
            nack.push(m["receipt"].clone());
        } else {
            ack.push(m["receipt"].clone());
        }
    }
    if !ack.is_empty() {
        let body = json!({ "receipts": ack }).to_string();
        let (status, reply) = clients.send(w, "POST", &format!("{group}/ack"), body).await;
        progress.check("ack", status, &[200], &reply);
        acked = reply["acked"].as_array().map_or(0, Vec::len) as u64;
    }
    if !nack.is_empty() {
        let body = json!({"receipts": nack, "delay_ms": 200, "error": "soak"}).to_string();
        let (status, reply) = clients
            .send(w, "POST", &format!("{group}/nack"), body)
            .await;
        progress.check("nack", status, &[200], &reply);
        progress
            .nacked
            .fetch_add(nack.len() as u64, Ordering::Relaxed);
    }
    acked
}

/// Creates topic `churn-<k>` with a group, publishes to it, consumes it,
/// then deletes it while a long-poll (on a connection of its own) waits on
/// it: that waiter must end (404) and its subscription go.
async fn churn_topic(clients: &Clients, progress: &Arc<Progress>, host: &str, k: u64) {
    let w = CHURN;
    let topic = format!("/topics/churn-{k}");
    let group = format!("{topic}/groups/g");
    let (status, reply) = clients.send(w, "PUT", &group, "{}".into()).await;
    progress.check("churn declare", status, &[200, 201], &reply);
    let batch = json!({"messages": (0..20).map(|i| json!({"payload": i})).collect::<Vec<_>>()});
    let (status, reply) = clients
        .send(
            w,
            "POST",
            &format!("{topic}/messages:batch"),
            batch.to_string(),
        )
        .await;
    progress.check("churn publish", status, &[200], &reply);
    let fetch = json!({"consumer": "w", "max": 20});
    consume_once(clients, progress, w, &group, &fetch, false).await;
    let waiter = {
        let (progress, host) = (progress.clone(), host.to_owned());
        let path = format!("/v1/tenants/soak{group}/fetch");
        let body = json!({"consumer": "late", "max": 1, "wait_ms": 2000}).to_string();
        tokio::spawn(async move {
            let answer = http::once(&host, "POST", &path, body, None).await;
            let (status, _) = answer.unwrap_or((0, Default::default()));
            // Ends at the deadline (200) or when its group is gone (404).
            progress.check("churn long-poll", status, &[200, 404], &Value::Null);
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await; // let it start waiting
    let (status, reply) = clients.send(w, "DELETE", &topic, String::new()).await;
    progress.check("churn delete", status, &[204], &reply);
    if waiter.await.is_err() {
        progress.unexpected.fetch_add(1, Ordering::Relaxed);
    }
    progress.churned.fetch_add(1, Ordering::Relaxed);
}

/// Reads the sidecar every [`SAMPLE_EVERY`] until `duration` has passed.
async fn sample_until(duration: Duration, pid: u32, progress: &Progress) -> Vec<Sample> {
    let start = Instant::now();
    let mut samples = Vec::new();
    println!(
        "{:>6} {:>11} {:>11} {:>9} {:>9} {:>5}",
        "t s", "published", "acked", "RSS MB", "heap MB", "fds"
    );
    loop {
        let sample = Sample {
            at: start.elapsed(),
            published: progress.published.load(Ordering::Relaxed),
            acked: progress.acked.load(Ordering::Relaxed),
            rss_mb: procs::memory_mb(pid, "VmRSS"),
            anon_mb: procs::memory_mb(pid, "RssAnon"),
            fds: procs::open_fds(pid),
        };
        println!(
            "{:>6.0} {:>11} {:>11} {:>9.1} {:>9.1} {:>5}",
            sample.at.as_secs_f64(),
            sample.published,
            sample.acked,
            sample.rss_mb,
            sample.anon_mb,
            sample.fds
        );
        samples.push(sample);
        if start.elapsed() >= duration {
            return samples;
        }
        let next = start + SAMPLE_EVERY * samples.len() as u32;
        tokio::time::sleep_until(next.min(start + duration).into()).await;
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den > 0.0 { num / den } else { 0.0 }
}

/// Prints the figures and the verdicts; true when all passed.
fn report(
    settings: &Settings,
    samples: &[Sample],
    progress: &Progress,
    metrics_bytes: usize,
) -> bool {
    let warm_up = (settings.duration / 5).min(Duration::from_secs(60));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    let (Some(first), Some(last)) = (after.first(), after.last()) else {
        println!("FAIL soak too short to measure (warm-up {warm_up:?})");
        return false;
    };
    let third = after.len().div_ceil(3);
    let floor = |part: &[&Sample]| part.iter().map(|s| s.rss_mb).fold(f64::INFINITY, f64::min);
    let growth = floor(&after[after.len() - third..]) - floor(&after[..third]);
    let points: Vec<(f64, f64)> = after
        .iter()
        .map(|s| (s.published as f64 / 1e6, s.rss_mb))
        .collect();
    let per_million = slope(&points);
    let peak = samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
    let elapsed = last.at.as_secs_f64().max(1.0);
    println!(
        "\npublished {} ({:.0}/s), acked {}, nacked {}, topics churned {}, long-polls abandoned {}",
        last.published,
        last.published as f64 / elapsed,
        last.acked,
        progress.nacked.load(Ordering::Relaxed),
        progress.churned.load(Ordering::Relaxed),
        progress.abandoned.load(Ordering::Relaxed)
    );
    println!(
        "sidecar RSS after warm-up ({:.0} s) {:.1} MB, end {:.1} MB, peak {:.1} MB; floor growth {:+.1} MB; slope {:+.2} MB per million messages",
        warm_up.as_secs_f64(),
        first.rss_mb,
        last.rss_mb,
        peak,
        growth,
        per_million
    );
    println!(
        "open fds after warm-up {}, end {}; /metrics at the end {} bytes",
        first.fds, last.fds, metrics_bytes
    );
    let unexpected = progress.unexpected.load(Ordering::Relaxed);
    let backlog = last.published.saturating_sub(last.acked);
    let checks = [
        (
            format!(
                "RSS floor growth after warm-up <= {} MB",
                settings.max_growth_mb
            ),
            growth <= settings.max_growth_mb,
        ),
        (
            format!("open fds growth after warm-up <= {MAX_FD_GROWTH}"),
            last.fds <= first.fds + MAX_FD_GROWTH,
        ),
        (
            "consumers kept up (backlog < 5 s of publishes)".into(),
            backlog < settings.rate * 5,
        ),
        ("every answer as expected".into(), unexpected == 0),
    ];
    let mut all = true;
    for (what, ok) in checks {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        all &= ok;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 2.0 * f64::from(x) + 1.0))
            .collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0), (2.0, 5.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }
}
