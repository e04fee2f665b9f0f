//! Reservation pools through HTTP: capacity is never exceeded, expiry frees
//! slots, fencing tokens increase, waiting for a slot, renew and release.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::TestApp;

/// Redis's clock in microseconds.
fn redis_time_us(app: &TestApp) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query(&mut app.redis.connection())
        .expect("TIME");
    secs * 1_000_000 + micros
}

async fn acquire(app: &TestApp, pool: &str, body: serde_json::Value) -> support::Reply {
    app.post(&format!("/pools/{pool}/acquire"), &body).await
}

#[tokio::test]
async fn capacity_two_under_twenty_acquirers() {
    let app = Arc::new(TestApp::start().await);
    let created_after = redis_time_us(&app);
    let put = app
        .put("/pools/gpu", &json!({"capacity": 2, "lease_ms": 30000}))
        .await;
    let created_before = redis_time_us(&app);
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    assert_eq!(put.body["in_use"], 0);

    let max_seen = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let max_seen = max_seen.clone();
        tasks.push(tokio::spawn(async move {
            let reply = acquire(
                &app,
                "gpu",
                json!({"holder": format!("w{i}"), "wait_ms": 20000}),
            )
            .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            let token = reply.body["fencing_token"].as_u64().unwrap();
            // While holding: the pool never shows more than its capacity.
            let info = app.get("/pools/gpu").await.body;
            let in_use = info["in_use"].as_u64().unwrap();
            assert!(in_use <= 2, "{info}");
            assert!(info["holders"].as_array().unwrap().len() <= 2);
            max_seen.fetch_max(in_use, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let released = app
                .post(
                    "/pools/gpu/release",
                    &json!({"reservation_id": reply.body["reservation_id"]}),
                )
                .await;
            assert_eq!(released.status, StatusCode::OK, "{}", released.body);
            token
        }));
    }
    let mut tokens = HashSet::new();
    for t in tasks {
        assert!(tokens.insert(t.await.unwrap()), "fencing tokens are unique");
    }
    assert_eq!(tokens.len(), 20);
    // A new pool's tokens count up by one from the Redis clock in
    // microseconds at its creation, so they stay above those of any pool
    // of that name deleted earlier.
    let first = *tokens.iter().min().unwrap();
    assert!(
        (created_after + 1..=created_before + 1).contains(&first),
        "first token {first} is the creation time (µs) + 1"
    );
    assert_eq!(
        tokens,
        (first..first + 20).collect::<HashSet<_>>(),
        "tokens count up by one, without gaps"
    );
    assert!(max_seen.load(Ordering::Relaxed) >= 1);
    assert_eq!(app.get("/pools/gpu").await.body["in_use"], 0);
}

#[tokio::test]
async fn full_pool_answers_429_and_expiry_frees_the_slot() {
    let app = TestApp::start().await;
    app.put("/pools/p", &json!({"capacity": 1, "lease_ms": 1000}))
        .await;
    let first = acquire(&app, "p", json!({"holder": "a"})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let full = acquire(&app, "p", json!({"holder": "b"})).await;
    full.assert_problem(429, "pool_full");
    assert!(full.headers.contains_key("retry-after"));
    // The next holder gets a long lease (the first keeps its 1 s), so it
    // is still there when looked up below.
    app.put("/pools/p", &json!({"capacity": 1, "lease_ms": 60000}))
        .await;

    // The holder dies; its lease runs out and the slot frees itself.
    let second = acquire(&app, "p", json!({"holder": "b", "wait_ms": 5000})).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert!(
        second.body["fencing_token"].as_u64() > first.body["fencing_token"].as_u64(),
        "fencing tokens strictly increase"
    );
    // The dead holder can neither renew nor release any more.
    for action in ["renew", "release"] {
        app.post(
            &format!("/pools/p/{action}"),
            &json!({"reservation_id": first.body["reservation_id"]}),
        )
        .await
        .assert_problem(409, "reservation_lost");
    }
    let info = app.get("/pools/p").await.body;
    assert_eq!(info["in_use"], 1);
    assert_eq!(info["holders"][0]["holder"], "b");
    assert_eq!(
        info["holders"][0]["fencing_token"],
        second.body["fencing_token"]
    );
}

#[tokio::test]
async fn renew_keeps_the_slot() {
    let app = TestApp::start().await;
    app.put("/pools/r", &json!({"capacity": 1, "lease_ms": 2000}))
        .await;
    let held = acquire(&app, "r", json!({"holder": "a"})).await;
    let id = held.body["reservation_id"].clone();
    // Renewed every 300 ms for 3 s, past the 2-s lease.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let renewed = app
            .post("/pools/r/renew", &json!({"reservation_id": id}))
            .await;
        assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
        acquire(&app, "r", json!({"holder": "b"}))
            .await
            .assert_problem(429, "pool_full");
    }
    let released = app
        .post("/pools/r/release", &json!({"reservation_id": id}))
        .await;
    assert_eq!(released.status, StatusCode::OK);
    let next = acquire(&app, "r", json!({"holder": "b"})).await;
    assert_eq!(
        next.status,
        StatusCode::CREATED,
        "released slots are free at once"
    );
}

#[tokio::test]
async fn pool_errors() {
    let app = TestApp::start().await;
    acquire(&app, "none", json!({"holder": "a"}))
        .await
        .assert_problem(404, "pool_not_found");
    app.get("/pools/none")
        .await
        .assert_problem(404, "pool_not_found");
    for (body, field) in [
        (json!({"capacity": 0, "lease_ms": 1000}), "capacity"),
        (json!({"capacity": 1, "lease_ms": 5}), "lease_ms"),
        (json!({"capacity": 1}), "lease_ms"),
    ] {
        let reply = app.put("/pools/bad", &body).await;
        assert_eq!(reply.assert_problem(400, "invalid_field")["field"], field);
    }
    app.put("/pools/ok", &json!({"capacity": 1, "lease_ms": 1000}))
        .await;
    for (body, field) in [
        (json!({"holder": ""}), "holder"),
        (json!({"holder": "a", "wait_ms": 30001}), "wait_ms"),
        (json!({"holder": "a", "lease_ms": 1}), "lease_ms"),
    ] {
        let reply = acquire(&app, "ok", body).await;
        assert_eq!(reply.assert_problem(400, "invalid_field")["field"], field);
    }
    app.post("/pools/ok/renew", &json!({"reservation_id": "forged"}))
        .await
        .assert_problem(409, "reservation_lost");
}

#[tokio::test]
async fn a_deleted_pool_ends_its_reservations_and_tokens_keep_increasing_after_it() {
    let app = Arc::new(TestApp::start().await);
    app.delete("/pools/gpu")
        .await
        .assert_problem(404, "pool_not_found");
    app.put("/pools/gpu", &json!({"capacity": 1, "lease_ms": 30000}))
        .await;
    let held = acquire(&app, "gpu", json!({"holder": "a"})).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    let old_token = held.body["fencing_token"].as_u64().unwrap();
    // Someone waiting for the only slot when the pool goes away.
    let waiter = tokio::spawn({
        let app = app.clone();
        async move { acquire(&app, "gpu", json!({"holder": "b", "wait_ms": 20000})).await }
    });

    let deleted = app.delete("/pools/gpu").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    waiter.await.unwrap().assert_problem(404, "pool_not_found");
    app.get("/pools/gpu")
        .await
        .assert_problem(404, "pool_not_found");
    let id = held.body["reservation_id"].clone();
    app.post("/pools/gpu/renew", &json!({"reservation_id": id}))
        .await
        .assert_problem(404, "pool_not_found");
    app.post("/pools/gpu/release", &json!({"reservation_id": id}))
        .await
        .assert_problem(404, "pool_not_found");
    app.delete("/pools/gpu")
        .await
        .assert_problem(404, "pool_not_found");

    // The same name again is a new pool, empty, whose tokens stay above
    // every token the deleted one handed out (downstream fences hold).
    let again = app
        .put("/pools/gpu", &json!({"capacity": 1, "lease_ms": 30000}))
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["in_use"], 0);
    let next = acquire(&app, "gpu", json!({"holder": "c"})).await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.body);
    let new_token = next.body["fencing_token"].as_u64().unwrap();
    assert!(new_token > old_token, "{new_token} > {old_token}");
    // Tokens are exact integers in JSON (below 2^53) and shown as such.
    assert!(new_token < 1 << 53);
    assert_eq!(
        app.get("/pools/gpu").await.body["holders"][0]["fencing_token"],
        new_token
    );
}
