//! The scenarios, each in two modes: `raw` (redis-rs sending the very same
//! Lua script calls the sidecar sends, built by the same functions) and
//! `sidecar` (the same work through streamcar's HTTP API with a keep-alive
//! client). Both modes use the same concurrency and the same Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use streamcar::broker::delivery::{DEFAULT_FETCH_BYTES, FetchReply, ack_call, fetch_call};
use streamcar::broker::publish::{PublishRequest, publish_call};
use streamcar::broker::receipt::Receipt;
use streamcar::keys::TopicKeys;
use streamcar::names::{Consumer, Group, Tenant, Topic};
use streamcar::scripts::Scripts;

use crate::http::Clients;
use crate::load::{self, Measured, Op, Record};
use crate::procs;

/// Tenant every scenario runs under.
const TENANT: &str = "bench";
/// Group every consuming scenario reads with.
const GROUP: &str = "workers";

/// Everything a scenario needs.
#[derive(Clone)]
pub struct Ctx {
    /// The scripts, exactly as the sidecar builds them.
    pub scripts: Arc<Scripts>,
    /// One multiplexed connection, shared by all raw workers (it pipelines).
    pub redis: MultiplexedConnection,
    /// Redis URL (for pub/sub connections).
    pub redis_url: String,
    /// Keep-alive HTTP connections to the sidecar, one per worker.
    pub http: Arc<Clients>,
    /// Process id of the sidecar (for its CPU time).
    pub sidecar_pid: u32,
    /// Process id of Redis (for its CPU time).
    pub redis_pid: u32,
}

/// Raw and sidecar results of one scenario.
pub struct Pair {
    /// Through redis-rs directly.
    pub raw: Measured,
    /// Through the sidecar.
    pub sidecar: Measured,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A publish body like an AI app sends: a prompt with an idempotency key.
fn message_body(mode: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    json!({
        "payload": {"prompt": "Summarize the following support ticket in one line.", "n": n},
        "idempotency_key": format!("{mode}-{n}"),
        "correlation_id": "bench-run",
        "key": format!("user-{}", n % ORDERING_KEYS),
    })
    .to_string()
}

/// Distinct ordering keys (user ids) the bench's messages spread over.
const ORDERING_KEYS: u64 = 1000;

fn parse(body: &str) -> PublishRequest {
    serde_json::from_str(body).expect("bench bodies are valid")
}

fn topic_keys(topic: &str) -> TopicKeys {
    TopicKeys::new(
        &Tenant::parse(TENANT).expect("name"),
        &Topic::parse(topic).expect("name"),
    )
}

impl Ctx {
    /// Empties Redis so every measured run starts from the same state (the
    /// sidecar keeps nothing that matters; scripts stay cached).
    async fn flush(&self) {
        let mut conn = self.redis.clone();
        redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async::<()>(&mut conn)
            .await
            .expect("flush redis");
    }

    async fn put(&self, path: &str, body: Value) {
        let (status, reply) = self.http.send(0, "PUT", path, body.to_string()).await;
        assert!(
            (200..300).contains(&status),
            "setup {path}: {status} {reply}"
        );
    }

    async fn raw_publish(&self, keys: &TopicKeys, messages: &[PublishRequest]) -> i64 {
        let mut conn = self.redis.clone();
        // The reply is one flat array, the status first.
        let reply: Vec<redis::Value> = publish_call(&self.scripts, keys, messages)
            .invoke_async(&mut conn)
            .await
            .expect("raw publish");
        redis::from_redis_value(reply.into_iter().next().expect("a status")).expect("status")
    }

    /// Runs one measured load and records the CPU time the sidecar, Redis
    /// and this load generator spent on it: steadier than throughput on a
    /// shared machine, and the figure that shows where a change saves work.
    async fn metered(&self, run: impl Future<Output = Record>) -> Record {
        let pids = [self.sidecar_pid, self.redis_pid, std::process::id()];
        let before = pids.map(procs::cpu_time);
        let mut record = run.await;
        let after = pids.map(procs::cpu_time);
        record.cpu = [0, 1, 2].map(|i| after[i].saturating_sub(before[i]));
        record
    }

    async fn http_post(&self, worker: usize, path: &str, body: String) -> (u16, Value) {
        self.http.send(worker, "POST", path, body).await
    }
}

/// Single-message publish with an idempotency key.
pub async fn publish(ctx: &Ctx, concurrency: usize, duration: Duration) -> Pair {
    let raw_keys = Arc::new(topic_keys("raw-publish"));
    let c = ctx.clone();
    let raw: Op = Arc::new(move |_| {
        let (c, keys) = (c.clone(), raw_keys.clone());
        Box::pin(async move {
            let msg = parse(&message_body("raw"));
            c.raw_publish(&keys, std::slice::from_ref(&msg)).await;
            1
        })
    });
    let c = ctx.clone();
    let sidecar: Op = Arc::new(move |w| {
        let c = c.clone();
        Box::pin(async move {
            let (status, _) = c
                .http_post(w, "/topics/sc-publish/messages", message_body("sc"))
                .await;
            assert_eq!(status, 201, "sidecar publish");
            1
        })
    });
    measure_pair(ctx, concurrency, duration, raw, sidecar).await
}

/// Parts each mode's time is split into, run alternately (raw, sidecar,
/// raw, sidecar): a few seconds of interference from the shared machine
/// then lands on both modes instead of skewing one of them.
const ROUNDS: u32 = 2;

/// Runs `raw` and `sidecar` alternately for `duration` each in all, every
/// run on an emptied Redis.
async fn measure_pair(
    ctx: &Ctx,
    concurrency: usize,
    duration: Duration,
    raw: Op,
    sidecar: Op,
) -> Pair {
    let (mut raw_record, mut sidecar_record) = (Record::default(), Record::default());
    for _ in 0..ROUNDS {
        for (op, record) in [(&raw, &mut raw_record), (&sidecar, &mut sidecar_record)] {
            ctx.flush().await;
            let run = load::run(concurrency, duration / ROUNDS, op.clone());
            record.merge(ctx.metered(run).await);
        }
    }
    Pair {
        raw: raw_record.summary(),
        sidecar: sidecar_record.summary(),
    }
}

fn batch_bodies(mode: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| message_body(mode)).collect()
}

/// Batches of 100 messages per request; counts messages.
pub async fn publish_batch(ctx: &Ctx, concurrency: usize, duration: Duration) -> Pair {
    const BATCH: usize = 100;
    let raw_keys = Arc::new(topic_keys("raw-batch"));
    let c = ctx.clone();
    let raw: Op = Arc::new(move |_| {
        let (c, keys) = (c.clone(), raw_keys.clone());
        Box::pin(async move {
            let msgs: Vec<PublishRequest> = batch_bodies("rawb", BATCH)
                .iter()
                .map(|b| parse(b))
                .collect();
            c.raw_publish(&keys, &msgs).await;
            BATCH as u64
        })
    });
    let c = ctx.clone();
    let sidecar: Op = Arc::new(move |w| {
        let c = c.clone();
        Box::pin(async move {
            let body = format!(
                "{{\"messages\":[{}]}}",
                batch_bodies("scb", BATCH).join(",")
            );
            let (status, _) = c
                .http_post(w, "/topics/sc-batch/messages:batch", body)
                .await;
            assert_eq!(status, 200, "sidecar batch");
            BATCH as u64
        })
    });
    measure_pair(ctx, concurrency, duration, raw, sidecar).await
}

/// Keeps `topic` full with raw batch publishes until `stop` (the topic's
/// max_backlog makes the producer pause instead of growing without bound).
fn spawn_producer(ctx: &Ctx, topic: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let c = ctx.clone();
    let keys = topic_keys(topic);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let msgs: Vec<PublishRequest> =
                batch_bodies("prod", 100).iter().map(|b| parse(b)).collect();
            if c.raw_publish(&keys, &msgs).await == -2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
}

async fn raw_fetch(c: &Ctx, keys: &TopicKeys, consumer: &Consumer, max: u32) -> FetchReply {
    let group = Group::parse(GROUP).expect("name");
    let mut conn = c.redis.clone();
    fetch_call(
        &c.scripts,
        keys,
        &group,
        consumer,
        max,
        DEFAULT_FETCH_BYTES,
        &[],
    )
    .invoke_async(&mut conn)
    .await
    .expect("raw fetch")
}

/// The receipts of a raw `fetch.lua` reply's deliveries.
fn receipts_of(rows: &FetchReply) -> Vec<Receipt> {
    rows.4
        .iter()
        .map(|(id, attempt, _, delivery)| Receipt {
            stream_id: id.clone(),
            attempt: *attempt,
            delivery: *delivery,
        })
        .collect()
}

async fn raw_ack(c: &Ctx, keys: &TopicKeys, rows: &FetchReply) {
    let group = Group::parse(GROUP).expect("name");
    let receipts = receipts_of(rows);
    if receipts.is_empty() {
        return;
    }
    let mut conn = c.redis.clone();
    let _: redis::Value = ack_call(&c.scripts, keys, &group, &receipts)
        .invoke_async(&mut conn)
        .await
        .expect("raw ack");
}

async fn sidecar_fetch_ack(
    c: &Ctx,
    worker: usize,
    topic: &str,
    consumer: &str,
    wait_ms: u64,
) -> Vec<Value> {
    let messages = sidecar_fetch(c, worker, topic, consumer, wait_ms).await;
    sidecar_ack(c, worker, topic, &messages).await;
    messages
}

/// Fetches up to 100 messages, waiting up to `wait_ms`.
async fn sidecar_fetch(
    c: &Ctx,
    worker: usize,
    topic: &str,
    consumer: &str,
    wait_ms: u64,
) -> Vec<Value> {
    let (status, body) = c
        .http_post(
            worker,
            &format!("/topics/{topic}/groups/{GROUP}/fetch"),
            json!({"consumer": consumer, "max": 100, "wait_ms": wait_ms}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "sidecar fetch");
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// Acks fetched `messages` (nothing to do when there are none).
async fn sidecar_ack(c: &Ctx, worker: usize, topic: &str, messages: &[Value]) {
    if !messages.is_empty() {
        let receipts: Vec<&Value> = messages.iter().map(|m| &m["receipt"]).collect();
        let (status, _) = c
            .http_post(
                worker,
                &format!("/topics/{topic}/groups/{GROUP}/ack"),
                json!({ "receipts": receipts }).to_string(),
            )
            .await;
        assert_eq!(status, 200, "sidecar ack");
    }
}

/// One measured run of a consuming scenario on an emptied Redis: `topic`
/// with a backlog limit, its group declared with `group`, a producer
/// keeping the backlog full while `op` runs.
async fn consuming_run(
    ctx: &Ctx,
    topic: &'static str,
    group: Value,
    (concurrency, duration): (usize, Duration),
    op: Op,
) -> Measured {
    ctx.flush().await;
    ctx.put(&format!("/topics/{topic}"), json!({"max_backlog": 100_000}))
        .await;
    ctx.put(&format!("/topics/{topic}/groups/{GROUP}"), group)
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(ctx, topic, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await; // build a backlog
    let measured = ctx
        .metered(load::run(concurrency, duration, op))
        .await
        .summary();
    stop.store(true, Ordering::Relaxed);
    let _ = producer.await;
    measured
}

/// Fetch up to 100 + ack them, with a producer keeping the backlog full;
/// counts acked messages. `ordered`: the group has `ordering: key` (the
/// messages spread over 1,000 keys, so a fetch gets at most one per key).
pub async fn consume(ctx: &Ctx, concurrency: usize, duration: Duration, ordered: bool) -> Pair {
    let ordering = if ordered { "key" } else { "none" };
    let group = json!({"lease_ms": 60000, "ordering": ordering});
    let run_mode = |topic: &'static str, op: Op| {
        consuming_run(ctx, topic, group.clone(), (concurrency, duration), op)
    };
    let c = ctx.clone();
    let keys = Arc::new(topic_keys("raw-consume"));
    let raw: Op = Arc::new(move |w| {
        let (c, keys) = (c.clone(), keys.clone());
        Box::pin(async move {
            let consumer = Consumer::parse(&format!("raw-{w}")).expect("name");
            let rows = raw_fetch(&c, &keys, &consumer, 100).await;
            raw_ack(&c, &keys, &rows).await;
            rows.4.len() as u64
        })
    });
    let c = ctx.clone();
    let sidecar: Op = Arc::new(move |w| {
        let c = c.clone();
        Box::pin(async move {
            sidecar_fetch_ack(&c, w, "sc-consume", &format!("sc-{w}"), 0)
                .await
                .len() as u64
        })
    });
    Pair {
        raw: run_mode("raw-consume", raw).await,
        sidecar: run_mode("sc-consume", sidecar).await,
    }
}

/// A worker that handles one message at a time: fetch `max: 1`, each
/// fetch acking the previous message (`ack` in the fetch body, one round
/// trip per message); counts delivered messages. Raw: the same `fetch.lua`
/// call with the previous receipt, through redis-rs.
pub async fn consume_single(ctx: &Ctx, concurrency: usize, duration: Duration) -> Pair {
    let run_mode = |topic: &'static str, op: Op| {
        consuming_run(
            ctx,
            topic,
            json!({"lease_ms": 60000}),
            (concurrency, duration),
            op,
        )
    };
    let c = ctx.clone();
    let keys = Arc::new(topic_keys("raw-single"));
    let previous: Arc<Vec<std::sync::Mutex<Vec<Receipt>>>> =
        Arc::new((0..concurrency).map(|_| Default::default()).collect());
    let raw: Op = Arc::new(move |w| {
        let (c, keys, previous) = (c.clone(), keys.clone(), previous.clone());
        Box::pin(async move {
            let consumer = Consumer::parse(&format!("raw-{w}")).expect("name");
            let group = Group::parse(GROUP).expect("name");
            let acks = std::mem::take(&mut *previous[w].lock().expect("receipts"));
            let mut conn = c.redis.clone();
            let rows: FetchReply = fetch_call(
                &c.scripts,
                &keys,
                &group,
                &consumer,
                1,
                DEFAULT_FETCH_BYTES,
                &acks,
            )
            .invoke_async(&mut conn)
            .await
            .expect("raw fetch");
            *previous[w].lock().expect("receipts") = receipts_of(&rows);
            rows.4.len() as u64
        })
    });
    let c = ctx.clone();
    let previous: Arc<Vec<std::sync::Mutex<Vec<Value>>>> =
        Arc::new((0..concurrency).map(|_| Default::default()).collect());
    let sidecar: Op = Arc::new(move |w| {
        let (c, previous) = (c.clone(), previous.clone());
        Box::pin(async move {
            let acks = std::mem::take(&mut *previous[w].lock().expect("receipts"));
            let (status, body) = c
                .http_post(
                    w,
                    &format!("/topics/sc-single/groups/{GROUP}/fetch"),
                    json!({"consumer": format!("sc-{w}"), "max": 1, "ack": acks}).to_string(),
                )
                .await;
            assert_eq!(status, 200, "sidecar fetch: {body}");
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            *previous[w].lock().expect("receipts") =
                messages.iter().map(|m| m["receipt"].clone()).collect();
            messages.len() as u64
        })
    });
    Pair {
        raw: run_mode("raw-single", raw).await,
        sidecar: run_mode("sc-single", sidecar).await,
    }
}

/// Microseconds since the process-wide bench epoch.
fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Keep-alive connections the e2e publisher spreads its publishes over.
const E2E_PUBLISH_CONNECTIONS: u64 = 8;

/// Publish at a fixed 2,000 msg/s while `consumers` long-poll; measures the
/// time from publish start to delivery. Ops = delivered messages per second.
pub async fn e2e_latency(ctx: &Ctx, consumers: usize, duration: Duration) -> Pair {
    let raw = ctx.metered(e2e_mode(ctx, consumers, duration, true)).await;
    let sidecar = ctx.metered(e2e_mode(ctx, consumers, duration, false)).await;
    let (raw, sidecar) = (raw.summary(), sidecar.summary());
    Pair { raw, sidecar }
}

async fn e2e_mode(ctx: &Ctx, consumers: usize, duration: Duration, raw: bool) -> Record {
    let topic = if raw { "raw-e2e" } else { "sc-e2e" };
    ctx.flush().await;
    ctx.put(
        &format!("/topics/{topic}/groups/{GROUP}"),
        json!({"lease_ms": 60000}),
    )
    .await;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..consumers {
        let (c, stop, received) = (ctx.clone(), stop.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let keys = topic_keys(topic);
            let consumer = Consumer::parse(&format!("e2e-{w}")).expect("name");
            let mut pubsub = if raw {
                let client = redis::Client::open(c.redis_url.as_str()).expect("url");
                let mut p = client.get_async_pubsub().await.expect("pubsub");
                p.subscribe(keys.wake_channel()).await.expect("subscribe");
                Some(p)
            } else {
                None
            };
            while !stop.load(Ordering::Relaxed) {
                // Delivered = the fetch's answer is in: the clock stops
                // before the ack (its round trip is not part of delivery).
                let (payloads, now): (Vec<u64>, u64) = if let Some(p) = pubsub.as_mut() {
                    let rows = raw_fetch(&c, &keys, &consumer, 100).await;
                    let now = now_us(epoch);
                    raw_ack(&c, &keys, &rows).await;
                    if rows.4.is_empty() {
                        // Wait for the publish script's wake-up, as the sidecar does.
                        let mut wakeups = p.on_message();
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), wakeups.next()).await;
                    }
                    let payloads = rows
                        .4
                        .iter()
                        .filter_map(|(_, _, f, _)| f.get("payload"))
                        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
                        .filter_map(|v| v["t"].as_u64())
                        .collect();
                    (payloads, now)
                } else {
                    let messages = sidecar_fetch(&c, w, topic, consumer.as_str(), 200).await;
                    let now = now_us(epoch);
                    sidecar_ack(&c, w, topic, &messages).await;
                    let payloads = messages
                        .iter()
                        .filter_map(|m| m["payload"]["t"].as_u64())
                        .collect();
                    (payloads, now)
                };
                received.fetch_add(payloads.len() as u64, Ordering::Relaxed);
                latencies.extend(payloads.iter().map(|t| now.saturating_sub(*t)));
            }
            latencies
        }));
    }
    // Publisher: 2 messages every millisecond.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let keys = Arc::new(topic_keys(topic));
    let mut published = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        for _ in 0..2 {
            let c = ctx.clone();
            let keys = keys.clone();
            // Connections after the consumers' own ones, round robin, as
            // from an app's connection pool: a publish does not queue in
            // this client behind the previous one on its connection (the
            // raw run's multiplexed connection never makes one wait).
            let connection = consumers + (published % E2E_PUBLISH_CONNECTIONS) as usize;
            published += 1;
            tokio::spawn(async move {
                let body = json!({"payload": {"t": now_us(epoch)}}).to_string();
                if raw {
                    c.raw_publish(&keys, &[parse(&body)]).await;
                } else {
                    let (status, _) = c
                        .http_post(connection, &format!("/topics/{topic}/messages"), body)
                        .await;
                    assert_eq!(status, 201);
                }
            });
        }
    }
    // Let the last ones arrive (bounded: a slow machine may lag behind).
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("consumer"));
    }
    let delivered = latencies.len() as u64;
    assert!(
        delivered + 50 >= published,
        "e2e lost messages ({topic}): {delivered} of {published}"
    );
    Record {
        latencies,
        ops: delivered,
        elapsed: duration,
        ..Record::default()
    }
}
