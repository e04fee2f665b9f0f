//! `--durability replicas:N`: every write waits until N replicas have it;
//! when they do not confirm in time the answer is 503 `durability_timeout`
//! (the write may exist, and a retry with the same idempotency key is safe).

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::proxy::{self, Act, RedisProxy};
use support::{RedisServer, TestApp};

/// Waits (bounded) until `primary` reports `n` connected replicas in sync.
fn wait_for_replicas(primary: &RedisServer, n: usize) {
    for _ in 0..100 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut primary.connection())
            .expect("INFO");
        let online = info.matches("state=online").count();
        if online == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the replicas never came online");
}

/// Blocks the Redis at `url` for `seconds` (`DEBUG SLEEP`, which needs
/// `--enable-debug-command`) from a thread of its own; join it to wait for
/// the end.
fn debug_sleep(url: String, seconds: f64) -> std::thread::JoinHandle<()> {
    let client = redis::Client::open(url).expect("redis url");
    let sleeper = client.clone();
    let hang = std::thread::spawn(move || {
        let mut conn = sleeper.get_connection().expect("connect to redis");
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query(&mut conn)
            .expect("DEBUG SLEEP");
    });
    // Back only once Redis is asleep: a fresh connection's handshake or
    // PING goes unanswered (the kernel still accepts the connection).
    for _ in 0..100 {
        let answered = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(Duration::from_millis(200)))?;
                redis::cmd("PING").query::<String>(&mut conn)
            });
        if answered.is_err() {
            return hang;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("Redis never went to sleep");
}

#[tokio::test]
async fn writes_wait_for_replicas_and_answer_503_when_they_do_not_confirm() {
    let app = TestApp::start_with(|c| {
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_millis(300),
        });
    })
    .await;
    let port = app.redis.port().to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for_replicas(&app.redis, 1);

    let body = json!({"payload": 1, "idempotency_key": "k1"});
    let first = app.post("/topics/d/messages", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // Confirmed by the replica: it has the entry now, not eventually.
    let on_replica: u64 = redis::cmd("XLEN")
        .arg(format!("sc:{{{}:d}}:stream", app.tenant))
        .query(&mut replica.connection())
        .expect("XLEN on the replica");
    assert_eq!(on_replica, 1);

    // Without its replica, a write cannot be confirmed: 503, retryable.
    replica.kill();
    let body = json!({"payload": 2, "idempotency_key": "k2"});
    let refused = app.post("/topics/d/messages", &body).await;
    refused.assert_problem(503, "durability_timeout");
    assert!(refused.headers.contains_key("retry-after"));
    // The write may exist (here it does, on the primary): the retry with
    // the same key, once a replica is back, answers as a duplicate.
    replica.restart();
    wait_for_replicas(&app.redis, 1);
    let retried = app.post("/topics/d/messages", &body).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["duplicate"], true);
    assert_eq!(app.get("/topics/d").await.body["length"], 2);

    // Reads never wait for replicas.
    replica.kill();
    assert_eq!(app.get("/topics/d").await.status, StatusCode::OK);
    assert_eq!(app.history("d").await.len(), 2);
}

#[tokio::test]
async fn asking_for_more_replicas_than_exist_refuses_every_write() {
    let app = TestApp::start_with(|c| {
        c.durability = Some(streamcar::store::Replicas {
            count: 2,
            timeout: Duration::from_millis(200),
        });
    })
    .await;
    let port = app.redis.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for_replicas(&app.redis, 1);
    app.put("/topics/two", &json!({}))
        .await
        .assert_problem(503, "durability_timeout");
    let group = app.put("/topics/two/groups/g", &json!({})).await;
    group.assert_problem(503, "durability_timeout");
}

/// Reads never wait for replicas, even the first read after Redis forgot
/// the scripts (a restart, a `SCRIPT FLUSH`): the script then runs by
/// `EVAL` with its text, and a read-only one must still count as a read,
/// not as a write to confirm (with no replica that was a 503
/// `durability_timeout` on a plain `GET`).
#[tokio::test]
async fn reads_after_a_script_flush_do_not_wait_for_replicas() {
    // Long enough for the declare below to be confirmed on a loaded machine;
    // a read that waited for the (killed) replica would still answer 503.
    let app = TestApp::start_with(|c| {
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_secs(2),
        });
    })
    .await;
    let port = app.redis.port().to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for_replicas(&app.redis, 1);
    app.group("r", "g", &json!({})).await;
    replica.kill();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut app.redis.connection())
        .expect("SCRIPT FLUSH");
    let group = app.get("/topics/r/groups/g").await;
    assert_eq!(group.status, StatusCode::OK, "{}", group.body);
    let topic = app.get("/topics/r").await;
    assert_eq!(topic.status, StatusCode::OK, "{}", topic.body);
}

/// A primary that a failover turned into a replica answers `WAIT` with an
/// error (`WAIT cannot be used with replica instances`). The write may
/// exist: that is a 503 `durability_timeout` (retry with the key), never a
/// 500. (A writable replica makes the write land and the `WAIT` fail.)
#[tokio::test]
async fn a_wait_refused_by_a_demoted_primary_is_a_durability_timeout() {
    let app = TestApp::start_with(|c| {
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_millis(300),
        });
    })
    .await;
    let new_primary = RedisServer::start();
    let mut conn = app.redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .query(&mut conn)
        .expect("CONFIG SET");
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new_primary.port())
        .query(&mut conn)
        .expect("REPLICAOF");
    let body = json!({"payload": 1, "idempotency_key": "k"});
    let reply = app.post("/topics/demoted/messages", &body).await;
    reply.assert_problem(503, "durability_timeout");
    assert!(reply.headers.contains_key("retry-after"));
}

/// `WAIT` counts the replicas that have its own connection's writes. Sent
/// after the write's answer, on a connection the manager had to open again
/// meanwhile, it waits for nothing and confirms at once a write no replica
/// may have. The write and its `WAIT` now go out in one pipeline on one
/// socket: a connection lost after the write's reply (before the `WAIT`'s)
/// fails the publish with a 503, retryable with its idempotency key.
#[tokio::test]
async fn a_connection_lost_between_a_write_and_its_wait_does_not_confirm_the_write() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port().to_string(),
        "--enable-debug-command",
        "local",
    ]);
    wait_for_replicas(&primary, 1);
    let proxy = RedisProxy::start(primary.port()).await;
    let proxy_url = proxy.url();
    let app = TestApp::start_with(|c| {
        c.redis_url = proxy_url;
        c.redis_connections = 1;
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_millis(3000),
        });
    })
    .await;
    let first = json!({"payload": 0, "idempotency_key": "warm-up"});
    let warm = app.post("/topics/cut/messages", &first).await;
    assert_eq!(warm.status, StatusCode::CREATED, "{}", warm.body);

    // The replica stalls, so it cannot confirm anything new for a while:
    // only a `WAIT` on a connection that wrote nothing answers at once.
    let stall = debug_sleep(replica.url(), 1.5);
    let mut armed = true;
    proxy.set_rule(move |chunk| {
        if armed && proxy::carries(chunk, "cut-me") {
            armed = false;
            return Act::RedialAfterReply;
        }
        Act::Forward
    });
    let body = json!({"payload": 1, "idempotency_key": "cut-me"});
    let reply = app.post("/topics/cut/messages", &body).await;
    assert_eq!(proxy.acted(), 1, "the proxy never re-dialed");
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a write whose WAIT could not run on its connection was confirmed: {}",
        reply.body
    );
    assert!(reply.headers.contains_key("retry-after"));
    stall.join().expect("the stall");

    // The write may exist (here it does): the retry answers as a duplicate
    // once the replica confirms it.
    let retried = app.post("/topics/cut/messages", &body).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["duplicate"], true);
}

/// A `--durability-timeout` longer than the connection's response timeout
/// (5 s): the write's `WAIT` must be allowed to run its course and answer
/// `durability_timeout`, not be cut off as a hung Redis (which answered
/// `redis_unavailable` and dropped the connection under every other
/// request on it).
#[tokio::test]
async fn a_durability_timeout_longer_than_the_response_timeout_runs_its_course() {
    let app = TestApp::start_with(|c| {
        c.redis_connections = 1;
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_millis(5500),
        });
    })
    .await;
    let body = json!({"payload": 1, "idempotency_key": "slow"});
    let refused = app.post("/topics/long-wait/messages", &body).await;
    refused.assert_problem(503, "durability_timeout");
}

/// Reads never wait for replicas, so a long `--durability-timeout` (which
/// stretches the writes' response timeout to a second past it) must leave
/// theirs at the usual 5 s: while Redis hangs, a read answers 503 as it
/// does without `--durability`. It waited out the hang instead (up to the
/// durability timeout and a second), and answered 200 once Redis woke.
#[tokio::test]
async fn reads_keep_the_usual_response_timeout_under_a_long_durability_timeout() {
    let app = TestApp::start_with_redis(&["--enable-debug-command", "local"], |c| {
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_secs(60),
        });
    })
    .await;
    let warm = app.get("/topics").await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.body);

    // Redis hangs for 9 s: well past the usual 5-s response timeout, well
    // short of the writes' 61 s.
    let hang = debug_sleep(app.redis.url(), 9.0);
    app.get("/topics")
        .await
        .assert_problem(503, "redis_unavailable");
    hang.join().expect("the hang ends");
}

/// Redis blocks a connection while a `WAIT` on it waits: everything
/// pipelined behind it waits too. Reads never wait for replicas, so they
/// must not share a connection with a write's `WAIT`.
#[tokio::test]
async fn reads_do_not_queue_behind_a_write_waiting_for_its_replicas() {
    let app = TestApp::start_with(|c| {
        c.redis_connections = 1;
        c.durability = Some(streamcar::store::Replicas {
            count: 1,
            timeout: Duration::from_millis(4000),
        });
    })
    .await;
    let port = app.redis.port().to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for_replicas(&app.redis, 1);
    let body = json!({"payload": 1, "idempotency_key": "first"});
    let first = app.post("/topics/r/messages", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    replica.kill();

    // A publish now waits in `WAIT` for a replica that is gone...
    let body = json!({"payload": 2, "idempotency_key": "second"});
    let publish = app.post("/topics/r/messages", &body);
    tokio::pin!(publish);
    let waiting = async {
        loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut app.redis.connection())
                .expect("CLIENT LIST");
            if clients.contains("cmd=wait") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = waiting => {}
        reply = &mut publish => panic!("the publish answered before it waited: {}", reply.body),
    }
    // ...and reads answer meanwhile.
    for path in ["/topics/r", "/topics/r/messages?limit=10", "/topics"] {
        tokio::select! {
            reply = app.get(path) => assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body),
            reply = &mut publish => panic!("{path} waited behind the write's WAIT ({})", reply.status),
        }
    }
    publish.await.assert_problem(503, "durability_timeout");
}

/// Topics per cluster test: about a dozen per primary.
const TOPICS: usize = 36;

/// Three primaries with a replica each, and a sidecar on them with
/// `replicas:1` and a 1-s durability timeout; each topic `{prefix}0…` got
/// one message, confirmed.
struct ConfirmedCluster {
    cluster: support::RedisCluster,
    sidecar: support::StreamcarProcess,
    client: reqwest::Client,
    /// `http://…/v1/tenants/acme`.
    base: String,
    /// The primaries' ports.
    primaries: Vec<u16>,
}

impl ConfirmedCluster {
    async fn start(prefix: &str, body: impl Fn(usize) -> serde_json::Value) -> Self {
        let cluster = support::RedisCluster::start_with(3, 1, 5000, &[]);
        let sidecar = support::StreamcarProcess::start(
            &cluster.urls(),
            &[
                "--redis-cluster",
                "--durability",
                "replicas:1",
                "--durability-timeout",
                "1s",
                "--retention-interval",
                "60m",
                "--metrics-interval",
                "60m",
            ],
        )
        .await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("{}/v1/tenants/acme", sidecar.base);
        let primaries = cluster
            .nodes
            .iter()
            .filter(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.connection())
                    .expect("INFO replication");
                info.contains("role:master")
            })
            .map(RedisServer::port)
            .collect::<Vec<_>>();
        assert_eq!(primaries.len(), 3);
        let confirmed = Self {
            cluster,
            sidecar,
            client,
            base,
            primaries,
        };
        let statuses = confirmed.publish_all(prefix, body).await;
        assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
        confirmed
    }

    /// One publish to each topic, all at once; their statuses.
    async fn publish_all(
        &self,
        prefix: &str,
        body: impl Fn(usize) -> serde_json::Value,
    ) -> Vec<u16> {
        let publishes = (0..TOPICS).map(|i| {
            let sent = self
                .client
                .post(format!("{}/topics/{prefix}{i}/messages", self.base))
                .json(&body(i))
                .send();
            async move { sent.await.expect("sidecar answers").status().as_u16() }
        });
        futures_util::future::join_all(publishes).await
    }

    /// Kills every replica: no write can be confirmed any more.
    fn kill_replicas(&mut self) {
        for node in &mut self.cluster.nodes {
            if !self.primaries.contains(&node.port()) {
                node.kill();
            }
        }
    }
}

/// On a Redis Cluster every primary has one connection, and Redis holds
/// everything behind a `WAIT` on it: with no replica to confirm, writes to
/// one node queue behind each other's `WAIT`s, and the later ones outlast
/// the reply timeout. A reply timeout must give the write up (503: it may
/// exist), never send it again: the first copy still runs once the `WAIT`s
/// ahead of it answer, so a publish without an idempotency key was written
/// twice (redis-rs retries a timed-out cluster request at once, on the same
/// queue).
#[tokio::test]
async fn a_cluster_write_queued_behind_waits_past_its_timeout_runs_once() {
    // The replicas go: one more publish each, one `WAIT` (1 s, never
    // confirmed) each, about a dozen queued on every primary's connection.
    let mut setup = ConfirmedCluster::start("q", |i| json!({"payload": i})).await;
    setup.kill_replicas();
    let statuses = setup.publish_all("q", |i| json!({"payload": i})).await;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "with no replica every write is refused: {statuses:?}"
    );
    // A failed publish leaves its topic's listing to a task that retries
    // for minutes, each try a write (and a `WAIT`) on the node of the
    // tenant's topic set; the nodes that hold neither set only run the
    // publishes. Their queued writes all run once no client is blocked
    // there, several times in a row.
    let holds = |port: u16, key: &str| {
        let node = setup
            .cluster
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("node");
        redis::cmd("EXISTS")
            .arg(key)
            .query::<u64>(&mut node.connection())
            .is_ok()
    };
    let quiet_nodes: Vec<u16> = setup
        .primaries
        .iter()
        .copied()
        .filter(|&port| !holds(port, "sc:{acme}:topics") && !holds(port, "sc:tenants"))
        .collect();
    assert!(!quiet_nodes.is_empty(), "three primaries, two sets");
    let mut quiet = 0;
    for _ in 0..600 {
        let blocked: usize = setup
            .cluster
            .nodes
            .iter()
            .filter(|node| quiet_nodes.contains(&node.port()))
            .map(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("clients")
                    .query(&mut node.connection())
                    .expect("INFO clients");
                usize::from(!info.contains("blocked_clients:0\r"))
            })
            .sum();
        quiet = if blocked == 0 { quiet + 1 } else { 0 };
        if quiet == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(quiet, 5, "the nodes never stopped waiting");
    let mut twice = Vec::new();
    let mut seen = 0;
    for i in 0..TOPICS {
        let stream = format!("sc:{{acme:q{i}}}:stream");
        for node in setup
            .cluster
            .nodes
            .iter()
            .filter(|n| quiet_nodes.contains(&n.port()))
        {
            // Another node's slot answers MOVED.
            let Ok(length) = redis::cmd("XLEN")
                .arg(&stream)
                .query::<u64>(&mut node.connection())
            else {
                continue;
            };
            seen += 1;
            if length > 2 {
                twice.push((i, length));
            }
        }
    }
    assert!(seen > 0, "no topic on the quiet nodes");
    assert!(
        twice.is_empty(),
        "one more publish each, written more than once (topic, length): {twice:?}"
    );
}

/// `/readyz` asks every primary `CLUSTER INFO`: a read, so it must not
/// queue behind the writes' `WAIT`s on the primaries' write connections.
/// With a shard's replica gone, those `WAIT`s each take the durability
/// timeout, and a readiness check behind a dozen of them ran out of time:
/// 503, and the sidecar taken out of service while it serves every read.
#[tokio::test]
async fn readyz_does_not_queue_behind_writes_waiting_for_replicas() {
    let mut setup =
        ConfirmedCluster::start("r", |i| json!({"payload": i, "idempotency_key": "first"})).await;
    let readyz = format!("{}/readyz", setup.sidecar.base);
    let ready = setup.client.get(&readyz).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    setup.kill_replicas();
    // About a dozen writes per primary, each waiting 1 s in vain.
    let publishes = setup.publish_all("r", |i| json!({"payload": i, "idempotency_key": "second"}));
    tokio::pin!(publishes);
    let waiting = async {
        loop {
            let waits: usize = setup
                .cluster
                .nodes
                .iter()
                .filter(|node| setup.primaries.contains(&node.port()))
                .map(|node| {
                    let clients: String = redis::cmd("CLIENT")
                        .arg("LIST")
                        .query(&mut node.connection())
                        .expect("CLIENT LIST");
                    usize::from(clients.contains("cmd=wait"))
                })
                .sum();
            if waits == setup.primaries.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        () = waiting => {}
        statuses = &mut publishes => panic!("the publishes answered before they waited: {statuses:?}"),
    }
    let ready = setup.client.get(&readyz).send().await.expect("readyz");
    let status = ready.status();
    let body = ready.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    let statuses = publishes.await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
}
