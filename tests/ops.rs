//! Liveness, readiness and behaviour while Redis is down.

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
