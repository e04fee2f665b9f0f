//! Quotas and backpressure through HTTP: per-tenant publish limits (GCRA)
//! with 429 + Retry-After + RateLimit headers, refill, isolation between
//! tenants, and a topic's max_backlog.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn burst_then_429_then_refill_and_other_tenants_unaffected() {
    let app = TestApp::start().await;
    let put = app
        .put("/limits", &json!({"publish_per_sec": 5, "burst": 3}))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(app.get("/limits").await.body["limits"]["burst"], 3);

    for i in 0..3 {
        let reply = app.post("/topics/q/messages", &json!({"payload": i})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "burst message {i}");
        assert_eq!(reply.headers["ratelimit-limit"], "3");
    }
    let refused = app
        .post("/topics/q/messages", &json!({"payload": "too many"}))
        .await;
    refused.assert_problem(429, "rate_limited");
    for h in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(refused.headers.contains_key(h), "{h}");
    }
    assert_eq!(refused.headers["ratelimit-remaining"], "0");
    assert_eq!(
        app.history("q").await.len(),
        3,
        "nothing written when refused"
    );

    // Another tenant publishes freely.
    let other = format!(
        "{}/v1/tenants/other-{}/topics/q/messages",
        app.base, app.tenant
    );
    for i in 0..10 {
        let reply = app
            .send(Method::POST, &other, Some(&json!({"payload": i})))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }

    // The bucket refills at 5/s.
    let mut accepted = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = app
            .post("/topics/q/messages", &json!({"payload": "later"}))
            .await;
        if reply.status == StatusCode::CREATED {
            accepted = true;
            break;
        }
        reply.assert_problem(429, "rate_limited");
    }
    assert!(accepted, "refilled");

    // A batch counts each message; larger than the burst can never pass.
    let big: Vec<_> = (0..4).map(|i| json!({"payload": i})).collect();
    let reply = app
        .post("/topics/q/messages:batch", &json!({"messages": big}))
        .await;
    reply.assert_problem(400, "invalid_field");

    let cleared = app.delete("/limits").await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/limits").await.body["limits"],
        serde_json::Value::Null
    );
    for i in 0..10 {
        let reply = app.post("/topics/q/messages", &json!({"payload": i})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "no limit any more");
    }
}

#[tokio::test]
async fn limits_are_validated() {
    let app = TestApp::start().await;
    for (body, field) in [
        (json!({"publish_per_sec": 0, "burst": 1}), "publish_per_sec"),
        (json!({"publish_per_sec": 1, "burst": 0}), "burst"),
        (json!({"publish_per_sec": 1}), "burst"),
        (
            json!({"publish_per_sec": 1.5, "burst": 1}),
            "publish_per_sec",
        ),
    ] {
        let reply = app.put("/limits", &body).await;
        assert_eq!(reply.assert_problem(400, "invalid_field")["field"], field);
    }
}

#[tokio::test]
async fn backlog_full_refuses_publishes_until_the_group_catches_up() {
    let app = TestApp::start().await;
    app.put("/topics/bp", &json!({"max_backlog": 3})).await;
    app.group("bp", "fast", &json!({"lease_ms": 60000})).await;
    app.group("bp", "slow", &json!({"lease_ms": 60000})).await;
    for i in 0..3 {
        app.publish("bp", &json!({"payload": i})).await;
    }
    let full = app
        .post("/topics/bp/messages", &json!({"payload": 3}))
        .await;
    full.assert_problem(429, "backlog_full");
    assert!(full.headers.contains_key("retry-after"));
    assert_eq!(full.headers["ratelimit-limit"], "3");
    assert_eq!(app.history("bp").await.len(), 3, "nothing written");

    // The fast group alone finishing is not enough: the slowest counts.
    let fast = app.fetch("bp", "fast", "f", 10, 0).await;
    let rs: Vec<&str> = fast
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    assert_eq!(app.ack("bp", "fast", &rs).await.status, StatusCode::OK);
    app.post("/topics/bp/messages", &json!({"payload": 3}))
        .await
        .assert_problem(429, "backlog_full");

    // Fetched but not acked still counts; a scheduled retry still counts.
    let slow = app.fetch("bp", "slow", "s", 10, 0).await;
    app.post("/topics/bp/messages", &json!({"payload": 3}))
        .await
        .assert_problem(429, "backlog_full");
    app.ack("bp", "slow", &[slow[0]["receipt"].as_str().unwrap()])
        .await;
    app.post(
        "/topics/bp/groups/slow/nack",
        &json!({"receipts": [slow[1]["receipt"]], "delay_ms": 60000}),
    )
    .await;
    // Backlog of slow is now 2 (one delayed, one pending): publishes flow.
    let ok = app
        .post("/topics/bp/messages", &json!({"payload": 3}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    app.post("/topics/bp/messages", &json!({"payload": 4}))
        .await
        .assert_problem(429, "backlog_full");
}
