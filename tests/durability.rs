//! `--durability replicas:N`: every write waits until N replicas have it;
//! when they do not confirm in time the answer is 503 `durability_timeout`
//! (the write may exist, and a retry with the same idempotency key is safe).

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
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
