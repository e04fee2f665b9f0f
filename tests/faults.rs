//! Fault injection under load, Jepsen-style: producers and consumers run
//! against real `streamcar` processes and a real redis-server (AOF
//! `appendfsync always`) while the test kills -9 sidecars, kills -9 and
//! restarts Redis, abandons leases and freezes a sidecar (SIGSTOP) past the
//! lease. Every publish response and every delivery/ack is recorded; the
//! history is then checked:
//!
//! * every acknowledged publish was delivered and acked at least once (an
//!   ack whose answer was lost in a crash counts as indeterminate; the
//!   drained group then shows Redis applied it);
//! * one message per idempotency key, across all restarts;
//! * every redelivery of a message has a higher attempt;
//! * nothing was delivered that was never published;
//! * nothing is unaccounted for (no lag, pending, delayed or dead letters left);
//! * a lease is never held twice: a message is handed out again only after
//!   its previous lease ended, and never after a successful ack;
//! * in an ordered group (`ordering: key`), no two deliveries of one key
//!   overlap (each starts after the previous one of its key was acked,
//!   nacked or its lease ended — Redis clock and the test's clock are the
//!   same machine's), and each key's messages are acked in `seq` order.
//!
//! Randomness is seeded (`STREAMCAR_FAULT_SEED` to replay); the seed is in
//! every failure message.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{RedisServer, StreamcarProcess};
use tokio::sync::{Mutex, RwLock};

const LEASE_MS: u64 = 1000;
const TENANT: &str = "faults";

/// The run's seed (`STREAMCAR_FAULT_SEED`, or the clock), said on stderr.
fn seed() -> u64 {
    let seed = std::env::var("STREAMCAR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fault seed: {seed} (STREAMCAR_FAULT_SEED={seed} to replay)");
    seed
}

/// One delivery as a consumer saw it.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    key: Option<String>,
    seq: u64,
    attempt: u64,
    handed_out: u64,
    lease_expires_at: u64,
    /// Wall clock (ms) just before the ack or nack was sent, if one was.
    settled_at: Option<u64>,
    /// The ack was answered 200.
    acked: bool,
    /// An ack was sent but its answer was lost (the sidecar died): it may
    /// or may not have been applied. Jepsen calls this indeterminate.
    ack_indeterminate: bool,
    /// A nack was sent (applied or not).
    nacked: bool,
}

impl Delivery {
    /// The earliest moment this delivery may have ended: when the client
    /// sent its ack or nack (if it may have applied), else its lease's end.
    fn ended(&self) -> u64 {
        match self.settled_at {
            Some(at) if self.acked || self.ack_indeterminate || self.nacked => {
                at.min(self.lease_expires_at)
            }
            _ => self.lease_expires_at,
        }
    }
}

/// Everything the clients observed.
#[derive(Default)]
struct History {
    /// Acknowledged publishes: id → seq.
    published: BTreeMap<String, u64>,
    deliveries: Vec<Delivery>,
}

/// The sidecars' base URLs; a request picks one and moves on when it fails.
struct Cluster {
    bases: Vec<String>,
    client: reqwest::Client,
}

/// Milliseconds since the epoch by this machine's clock (the one Redis reads).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    fn url(&self, i: usize, path: &str) -> String {
        format!(
            "{}/v1/tenants/{TENANT}{path}",
            self.bases[i % self.bases.len()]
        )
    }

    /// POSTs on sidecar `i`; None on connection errors or timeouts.
    async fn post(&self, i: usize, path: &str, body: &Value) -> Option<(u16, Value)> {
        let resp = self
            .client
            .post(self.url(i, path))
            .json(body)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Some((status, body))
    }

    async fn get(&self, i: usize, path: &str) -> Option<Value> {
        let resp = self.client.get(self.url(i, path)).send().await.ok()?;
        resp.status().is_success().then_some(())?;
        resp.json().await.ok()
    }
}

/// Publishes `count` messages, each retried (same idempotency key) until
/// acknowledged, across whatever sidecars are up. With `keys > 0` message
/// `i` has the ordering key `k<i % keys>`.
async fn produce(
    cluster: Arc<Cluster>,
    history: Arc<Mutex<History>>,
    (count, keys): (usize, usize),
    seed: u64,
) {
    for i in 0..count {
        let id = format!("m-{i}");
        let mut body = json!({"id": id, "payload": {"n": i}, "idempotency_key": id});
        if keys > 0 {
            body["key"] = json!(format!("k{}", i % keys));
        }
        let mut acknowledged = false;
        for attempt in 0..600 {
            if let Some((status, reply)) = cluster
                .post(i + attempt, "/topics/jobs/messages", &body)
                .await
                && (status == 200 || status == 201)
            {
                assert_eq!(reply["id"], id, "seed {seed}");
                let seq = reply["seq"].as_u64().expect("seq");
                history.lock().await.published.insert(id.clone(), seq);
                acknowledged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            acknowledged,
            "seed {seed}: publish of {id} never acknowledged"
        );
    }
}

/// Fetches and acks until `stop`; abandons some leases, stalls past others
/// and (with `nacks`) gives some back for an immediate retry.
async fn consume(
    cluster: Arc<Cluster>,
    history: Arc<Mutex<History>>,
    (name, nacks): (String, bool),
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ fastrand::u64(..));
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let Some((200, reply)) = cluster
            .post(
                turn,
                "/topics/jobs/groups/g/fetch",
                &json!({"consumer": name, "max": 5, "wait_ms": 200}),
            )
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for m in reply["messages"].as_array().cloned().unwrap_or_default() {
            let lease_expires_at = m["lease_expires_at"].as_u64().expect("lease");
            let mut delivery = Delivery {
                id: m["id"].as_str().expect("id").to_owned(),
                key: m["key"].as_str().map(str::to_owned),
                seq: m["seq"].as_u64().expect("seq"),
                attempt: m["attempt"].as_u64().expect("attempt"),
                handed_out: lease_expires_at - LEASE_MS,
                lease_expires_at,
                settled_at: None,
                acked: false,
                ack_indeterminate: false,
                nacked: false,
            };
            let roll = rng.u8(..100);
            if roll < 8 {
                // Abandon: this worker "dies" holding the lease.
            } else if nacks && roll < 16 {
                // Give it back for an immediate retry.
                delivery.settled_at = Some(wall_ms());
                delivery.nacked = true;
                let body = json!({"receipts": [m["receipt"]], "delay_ms": 0});
                let _ = cluster
                    .post(turn, "/topics/jobs/groups/g/nack", &body)
                    .await;
            } else {
                if roll < 12 {
                    // Stall past the lease, then try to commit anyway.
                    tokio::time::sleep(Duration::from_millis(LEASE_MS + 300)).await;
                }
                let receipts = json!({"receipts": [m["receipt"]]});
                delivery.settled_at = Some(wall_ms());
                for attempt in 0..3 {
                    match cluster
                        .post(turn + attempt, "/topics/jobs/groups/g/ack", &receipts)
                        .await
                    {
                        Some((200, _)) => {
                            delivery.acked = true;
                            delivery.ack_indeterminate = false;
                            break;
                        }
                        // Lease lost — or an earlier attempt of ours did land
                        // and its answer was lost; the flag tells which.
                        Some((409, _)) => break,
                        // No answer, or a 503 from a sidecar whose Redis died
                        // after running the script: the ack may have applied.
                        _ => {
                            delivery.ack_indeterminate = true;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            history.lock().await.deliveries.push(delivery);
        }
    }
}

/// Starts `n` consumers named c0, c1, … with seeds derived from `seed`.
fn spawn_consumers(
    cluster: &Arc<Cluster>,
    history: &Arc<Mutex<History>>,
    (n, nacks): (u64, bool),
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|c| {
            tokio::spawn(consume(
                cluster.clone(),
                history.clone(),
                (format!("c{c}"), nacks),
                seed.wrapping_add(c),
                stop.clone(),
            ))
        })
        .collect()
}

/// Waits (bounded) until the group has nothing left: no lag, pending or retries.
async fn drained(cluster: &Cluster, seed: u64) -> Value {
    let mut last = Value::Null;
    for i in 0..600 {
        if let Some(g) = cluster.get(i, "/topics/jobs/groups/g").await {
            if g["lag"] == 0 && g["pending"] == 0 && g["delayed"] == 0 && g["parked"] == 0 {
                return g;
            }
            last = g;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("seed {seed}: the group never drained: {last}");
}

/// The history checks listed in the module docs.
async fn check(cluster: &Cluster, history: &History, count: usize, seed: u64) {
    let group = drained(cluster, seed).await;
    assert_eq!(group["dead_lettered"], 0, "seed {seed}: {group}");

    // Topic contents: exactly one entry per idempotency key, all acknowledged.
    let mut stored = Vec::new();
    let mut after = String::new();
    for i in 0..100 {
        let page = cluster
            .get(i, &format!("/topics/jobs/messages?limit=1000{after}"))
            .await
            .expect("history readable");
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        after = format!("&after={}", page["next_after"].as_str().unwrap());
        stored.extend(msgs.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
    }
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "seed {seed}: an idempotency key was written twice"
    );
    assert_eq!(history.published.len(), count, "seed {seed}");
    let published: BTreeSet<&String> = history.published.keys().collect();
    assert_eq!(
        unique, published,
        "seed {seed}: stored and acknowledged messages differ"
    );

    // Delivered ⊆ published; every published message acked at least once.
    let mut by_id: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &history.deliveries {
        assert!(
            history.published.contains_key(&d.id),
            "seed {seed}: delivered {} that was never published",
            d.id
        );
        by_id.entry(&d.id).or_default().push(d);
    }
    // The group is drained with no dead letters (checked above), so Redis
    // holds every message as acked; on the client side each one must have a
    // delivery whose ack succeeded or whose answer was lost in a crash.
    for id in history.published.keys() {
        let ds = by_id.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        assert!(
            ds.iter().any(|d| d.acked || d.ack_indeterminate),
            "seed {seed}: {id} was never acked: {ds:?}"
        );
    }

    // Attempts increase; leases never overlap; nothing after a successful ack.
    for (id, ds) in &mut by_id {
        ds.sort_by_key(|d| (d.handed_out, d.attempt));
        for pair in ds.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.attempt > a.attempt,
                "seed {seed}: {id} attempts did not increase: {ds:?}"
            );
            assert!(
                !a.acked,
                "seed {seed}: {id} delivered again after a successful ack: {ds:?}"
            );
            assert!(
                b.handed_out >= a.ended(),
                "seed {seed}: {id} handed out while a lease was live: {ds:?}"
            );
        }
    }

    // Ordered keys: deliveries of one key never overlap, and its messages
    // are acked in seq order.
    let mut by_key: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &history.deliveries {
        if let Some(key) = &d.key {
            by_key.entry(key).or_default().push(d);
        }
    }
    for (key, ds) in &mut by_key {
        ds.sort_by_key(|d| (d.handed_out, d.seq));
        for pair in ds.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.handed_out >= a.ended(),
                "seed {seed}: key {key}: {} handed out while {} was in progress: {a:?} {b:?}",
                b.id,
                a.id
            );
        }
        let acked: Vec<u64> = ds.iter().filter(|d| d.acked).map(|d| d.seq).collect();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: key {key} acked out of seq order: {acked:?}"
        );
    }
}

async fn setup(cluster: &Cluster, ordering: &str) {
    for i in 0..50 {
        if let Some(resp) = cluster
            .client
            .put(cluster.url(i, "/topics/jobs/groups/g"))
            .json(&json!({"lease_ms": LEASE_MS, "max_deliveries": 1000, "ordering": ordering}))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
        {
            drop(resp);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not declare the group");
}

/// A Redis with AOF `always` and three sidecars on it.
async fn three_sidecars() -> (RedisServer, Vec<StreamcarProcess>, Arc<Cluster>) {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        sidecars.push(StreamcarProcess::start(&redis.url(), &[]).await);
    }
    let cluster = Arc::new(Cluster {
        bases: sidecars.iter().map(|s| s.base.clone()).collect(),
        client: client(),
    });
    (redis, sidecars, cluster)
}

/// A workload under way on the group: the producer, the consumers, and
/// what they record.
struct Run {
    cluster: Arc<Cluster>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    producer: tokio::task::JoinHandle<()>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    count: usize,
    seed: u64,
}

impl Run {
    /// Declares the group with `ordering`, then starts a producer of
    /// `count` messages over `keys` keys (0: none) and `n` consumers
    /// (`nacks`: they nack some deliveries too).
    async fn start(
        cluster: &Arc<Cluster>,
        ordering: &str,
        (count, keys): (usize, usize),
        (n, nacks): (u64, bool),
        seed: u64,
    ) -> Self {
        setup(cluster, ordering).await;
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = tokio::spawn(produce(
            cluster.clone(),
            history.clone(),
            (count, keys),
            seed,
        ));
        let consumers = spawn_consumers(cluster, &history, (n, nacks), seed, &stop);
        Self {
            cluster: cluster.clone(),
            history,
            stop,
            producer,
            consumers,
            count,
            seed,
        }
    }

    /// The end of every run: the producer is done, the group drains, the
    /// consumers stop, and the history is checked.
    async fn finish_and_check(self) {
        self.producer.await.expect("producer");
        let group = drained(&self.cluster, self.seed).await;
        self.stop.store(true, Ordering::Relaxed);
        for c in self.consumers {
            c.await.expect("consumer");
        }
        let history = self.history.lock().await;
        eprintln!(
            "{} published, {} deliveries, group {group}",
            history.published.len(),
            history.deliveries.len()
        );
        check(&self.cluster, &history, self.count, self.seed).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_message_is_lost_when_the_sidecar_and_redis_crash() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let sidecar = Arc::new(RwLock::new(
        StreamcarProcess::start(&redis.url(), &[]).await,
    ));
    let base = sidecar.read().await.base.clone();
    let cluster = Arc::new(Cluster {
        bases: vec![base],
        client: client(),
    });
    let run = Run::start(&cluster, "none", (300, 0), (3, false), seed).await;

    // Chaos: kill -9 the sidecar three times and Redis twice, at random moments.
    let started = Instant::now();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300 + rng.u64(..700))).await;
        if round % 2 == 0 || round == 3 {
            sidecar.write().await.restart().await;
        } else {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
            redis.restart();
        }
    }
    eprintln!("chaos took {:?}", started.elapsed());
    run.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_sidecars_share_groups_without_double_leases_even_when_one_freezes() {
    let seed = seed();
    let (_redis, sidecars, cluster) = three_sidecars().await;
    let run = Run::start(&cluster, "none", (300, 0), (4, false), seed).await;

    // Freeze one sidecar past the lease: requests through it stall; its
    // consumers' leases expire and move to the others; late acks are fenced.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sidecars[1].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
    sidecars[1].signal(libc::SIGCONT);

    run.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_group_keeps_every_key_in_order_through_stalls_nacks_and_crashes() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut redis, mut sidecars, cluster) = three_sidecars().await;
    // 200 keys × 20 messages.
    let run = Run::start(&cluster, "key", (4000, 200), (6, true), seed).await;

    // Chaos: kill -9 one sidecar (it comes back on its port), then Redis.
    tokio::time::sleep(Duration::from_millis(500 + rng.u64(..1000))).await;
    sidecars[0].restart().await;
    tokio::time::sleep(Duration::from_millis(500 + rng.u64(..1000))).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
    redis.restart();

    run.finish_and_check().await;
}
