//! Liveness, readiness and behaviour while Redis is down, out of memory,
//! busy or read-only; and the tenant list, which keeps only tenants with topics.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn healthz_and_readyz() {
    let app = TestApp::start().await;
    let health = app
        .send(Method::GET, &format!("{}/healthz", app.base), None)
        .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app
        .send(Method::GET, &format!("{}/readyz", app.base), None)
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
}

#[tokio::test]
async fn redis_outage_answers_503_and_recovers_without_restart() {
    let mut app = TestApp::start().await;
    app.publish("t", &json!({"payload": 1})).await;

    app.redis.kill();
    let ready = app
        .send(Method::GET, &format!("{}/readyz", app.base), None)
        .await;
    ready.assert_problem(503, "redis_unavailable");
    assert!(ready.headers.contains_key("retry-after"));
    let publish = app.post("/topics/t/messages", &json!({"payload": 2})).await;
    publish.assert_problem(503, "redis_unavailable");
    let health = app
        .send(Method::GET, &format!("{}/healthz", app.base), None)
        .await;
    assert_eq!(health.status, StatusCode::OK, "the process stays alive");

    // Same port, empty data (no persistence in this test): the sidecar
    // reconnects and reloads its scripts by itself.
    app.redis.restart();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = app
            .send(Method::GET, &format!("{}/readyz", app.base), None)
            .await
            .status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "ready again after Redis returns");
    let publish = app.post("/topics/t/messages", &json!({"payload": 3})).await;
    assert_eq!(publish.status, StatusCode::CREATED, "{}", publish.body);
    app.stop().await;
}

/// One numeric field of Redis's `INFO`.
fn info_number(conn: &mut redis::Connection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{field}:")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO has no {field}"))
}

/// The value of the sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn redis_out_of_memory_is_503_with_retry_after_and_heals_once_memory_is_freed() {
    let app = TestApp::start_with_redis(
        &["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"],
        |_| {},
    )
    .await;
    app.group("t", "g", &json!({})).await;
    assert_eq!(app.publish("t", &json!({"payload": 1})).await["seq"], 1);
    let leased = app.fetch("t", "g", "w", 1, 0).await;
    let receipt = leased[0]["receipt"].as_str().unwrap().to_owned();

    // Fill Redis behind the sidecar's back until a write is refused.
    let mut conn = app.redis.connection();
    let value = vec![b'x'; 64 * 1024];
    let mut filler = 0;
    loop {
        let set = redis::cmd("SET")
            .arg(format!("filler:{filler}"))
            .arg(&value)
            .query::<()>(&mut conn);
        match set {
            Ok(()) => filler += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("OOM"), "{e}");
                break;
            }
        }
        assert!(filler < 10_000, "maxmemory was never reached");
    }
    // The refused SET's own 64 KiB argument counted toward the limit and is
    // freed again, so memory may now sit just under it. Lower maxmemory to
    // 1 MiB below what is used: every write is then refused by a margin no
    // buffer can swing.
    let used = info_number(&mut conn, "used_memory");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - (1 << 20))
        .query::<()>(&mut conn)
        .unwrap();

    let refused = app.post("/topics/t/messages", &json!({"payload": 2})).await;
    refused.assert_problem(503, "redis_out_of_memory");
    assert!(refused.headers.contains_key("retry-after"), "{refused:?}");
    let ready = app.get_root("/readyz").await;
    ready.assert_problem(503, "redis_out_of_memory");
    assert!(ready.headers.contains_key("retry-after"));
    let metrics = app.metrics_text().await;
    assert!(
        sample(
            &metrics,
            r#"streamcar_redis_errors_total{kind="out_of_memory"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Reads and acks still work while Redis is full: consumers can drain.
    let history = app.get("/topics/t/messages").await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let acked = app.ack("t", "g", &[&receipt]).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
    assert_eq!(acked.body["acked"], json!([receipt]));

    // Free the memory: the same sidecar serves again, no restart.
    for n in 0..filler {
        redis::cmd("DEL")
            .arg(format!("filler:{n}"))
            .query::<()>(&mut conn)
            .unwrap();
    }
    let ready = app.get_root("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let accepted = app.post("/topics/t/messages", &json!({"payload": 3})).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["seq"], 2, "the refused publish wrote nothing");
}

#[tokio::test]
async fn a_busy_redis_is_503_redis_busy_until_the_script_is_killed() {
    let app = TestApp::start_with_redis(&["--busy-reply-threshold", "50"], |_| {}).await;
    app.publish("t", &json!({"payload": 1})).await;

    // Another client runs a script that never ends on its own.
    let url = app.redis.url();
    let runaway = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query::<()>(&mut conn)
    });
    let mut probe = app.redis.connection();
    let mut busy = false;
    for _ in 0..500 {
        match redis::cmd("PING").query::<String>(&mut probe) {
            Err(e) if e.code() == Some("BUSY") => {
                busy = true;
                break;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    assert!(busy, "redis never reported BUSY");

    let refused = app.post("/topics/t/messages", &json!({"payload": 2})).await;
    refused.assert_problem(503, "redis_busy");
    assert!(refused.headers.contains_key("retry-after"));
    app.get_root("/readyz")
        .await
        .assert_problem(503, "redis_busy");

    redis::cmd("SCRIPT")
        .arg("KILL")
        .query::<()>(&mut probe)
        .unwrap();
    assert!(runaway.join().unwrap().is_err(), "the script was killed");
    let accepted = app.post("/topics/t/messages", &json!({"payload": 3})).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["seq"], 2);
}

#[tokio::test]
async fn a_redis_that_became_a_replica_is_503_redis_readonly_until_promoted() {
    let app = TestApp::start().await;
    app.publish("t", &json!({"payload": 1})).await;

    // A "primary" that accepts connections and never answers: the replica
    // never syncs, so it keeps its data and stays read-only. Holding the
    // port also keeps another test's Redis from starting on it.
    let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut conn = app.redis.connection();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query::<()>(&mut conn)
        .unwrap();

    let refused = app.post("/topics/t/messages", &json!({"payload": 2})).await;
    refused.assert_problem(503, "redis_readonly");
    assert!(refused.headers.contains_key("retry-after"));
    app.get_root("/readyz")
        .await
        .assert_problem(503, "redis_readonly");

    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query::<()>(&mut conn)
        .unwrap();
    drop(silent);
    let ready = app.get_root("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let accepted = app.post("/topics/t/messages", &json!({"payload": 3})).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["seq"], 2);
}

fn is_listed(conn: &mut redis::Connection, tenant: &str) -> bool {
    redis::cmd("SISMEMBER")
        .arg("sc:tenants")
        .arg(tenant)
        .query(conn)
        .unwrap()
}

/// Waits (bounded) until `tenant` is off the tenant list.
async fn wait_unlisted(conn: &mut redis::Connection, tenant: &str) {
    for _ in 0..200 {
        if !is_listed(conn, tenant) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("tenant {tenant} never left the tenant list");
}

#[tokio::test]
async fn a_tenant_whose_last_topic_is_deleted_leaves_the_tenant_list() {
    let app = TestApp::start_with(|c| {
        c.retention_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let mut conn = app.redis.connection();
    app.publish("a", &json!({"payload": 1})).await;
    app.publish("b", &json!({"payload": 1})).await;
    // Coordination state does not keep a tenant on the list.
    let pool = app
        .put("/pools/gpu", &json!({"capacity": 1, "lease_ms": 1000}))
        .await;
    assert_eq!(pool.status, StatusCode::CREATED);
    assert!(is_listed(&mut conn, &app.tenant));

    // A witness tenant whose only topic is deleted: once it is off the
    // list, a whole prune pass has run since, and it looked at our tenant.
    let witness = format!("{}-w", app.tenant);
    let witness_topic = format!("{}/v1/tenants/{witness}/topics/w", app.base);
    let put = app
        .send(Method::PUT, &witness_topic, Some(&json!({})))
        .await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert!(is_listed(&mut conn, &witness));
    assert_eq!(app.delete("/topics/a").await.status, StatusCode::NO_CONTENT);
    let deleted = app.send(Method::DELETE, &witness_topic, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    wait_unlisted(&mut conn, &witness).await;
    assert!(
        is_listed(&mut conn, &app.tenant),
        "a tenant with a topic left stays listed"
    );

    assert_eq!(app.delete("/topics/b").await.status, StatusCode::NO_CONTENT);
    wait_unlisted(&mut conn, &app.tenant).await;
    // Its pool is untouched, and a new topic lists the tenant again at once.
    assert_eq!(app.get("/pools/gpu").await.status, StatusCode::OK);
    app.publish("c", &json!({"payload": 1})).await;
    assert!(is_listed(&mut conn, &app.tenant));
}

#[tokio::test]
async fn pruning_never_loses_a_tenant_that_creates_a_topic_meanwhile() {
    // A prune pass every millisecond against a tenant that keeps losing
    // and re-creating its only topic: whatever the interleaving, once the
    // last topic is created and the passes have stopped, the tenant is
    // listed (see src/tenants.rs for the argument).
    let mut app = TestApp::start_with(|c| {
        c.retention_interval = std::time::Duration::from_millis(1);
    })
    .await;
    for n in 0..150 {
        app.publish("x", &json!({"payload": n})).await;
        assert_eq!(app.delete("/topics/x").await.status, StatusCode::NO_CONTENT);
    }
    app.publish("x", &json!({"payload": "last"})).await;
    // Shutdown waits for a pass in flight, so none can run after this.
    app.stop().await;
    let mut conn = app.redis.connection();
    assert!(is_listed(&mut conn, &app.tenant));
    let topics: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("sc:{{{}}}:topics", app.tenant))
        .query(&mut conn)
        .unwrap();
    assert_eq!(topics, vec!["x".to_owned()]);
}

/// Redis forgets the scripts (`SCRIPT FLUSH`, as after a restart without
/// them or on a newly promoted replica): the next calls of every kind run
/// them from source and go on answering, with nothing to restart.
#[tokio::test]
async fn scripts_flushed_from_redis_are_run_again_from_source() {
    let app = TestApp::start().await;
    app.group("t", "g", &json!({})).await;
    app.publish("t", &json!({"payload": 1})).await;
    let mut conn = app.redis.connection();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut conn)
        .unwrap();
    let published = app.post("/topics/t/messages", &json!({"payload": 2})).await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.body);
    assert_eq!(published.body["seq"], 2);
    let fetched = app.fetch("t", "g", "c", 10, 0).await;
    assert_eq!(fetched.len(), 2);
    let receipts: Vec<&str> = fetched
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    assert_eq!(app.ack("t", "g", &receipts).await.status, StatusCode::OK);
    let cached: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(streamcar::scripts::Scripts::new().publish.get_hash())
        .query(&mut conn)
        .unwrap();
    assert_eq!(cached, [true], "the publish script is cached again");
}
