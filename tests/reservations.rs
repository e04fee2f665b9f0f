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

async fn acquire(app: &TestApp, pool: &str, body: serde_json::Value) -> support::Reply {
    app.post(&format!("/pools/{pool}/acquire"), &body).await
}

#[tokio::test]
async fn capacity_two_under_twenty_acquirers() {
    let app = Arc::new(TestApp::start().await);
    let put = app
        .put("/pools/gpu", &json!({"capacity": 2, "lease_ms": 30000}))
        .await;
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
    assert_eq!(*tokens.iter().max().unwrap(), 20, "tokens count up from 1");
    assert!(max_seen.load(Ordering::Relaxed) >= 1);
    assert_eq!(app.get("/pools/gpu").await.body["in_use"], 0);
}

#[tokio::test]
async fn full_pool_answers_429_and_expiry_frees_the_slot() {
    let app = TestApp::start().await;
    app.put("/pools/p", &json!({"capacity": 1, "lease_ms": 300}))
        .await;
    let first = acquire(&app, "p", json!({"holder": "a"})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let full = acquire(&app, "p", json!({"holder": "b"})).await;
    full.assert_problem(429, "pool_full");
    assert!(full.headers.contains_key("retry-after"));

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
    app.put("/pools/r", &json!({"capacity": 1, "lease_ms": 400}))
        .await;
    let held = acquire(&app, "r", json!({"holder": "a"})).await;
    let id = held.body["reservation_id"].clone();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
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
