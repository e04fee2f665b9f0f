//! Adversarial tests of the workflow features (ack with emit, fetch with
//! ack, joins, push answers with emit): races with deletes and re-creation,
//! inputs at and past every limit, odd values. Each asserts what must hold
//! whatever the timing: a problem document with the right status (never a
//! 5xx), exactly one next step or aggregate, nothing lost.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Reply, TestApp};

fn receipt(message: &Value) -> String {
    message["receipt"].as_str().expect("receipt").to_owned()
}

/// A 2xx, or a 4xx problem document: never a 5xx.
#[track_caller]
fn not_5xx(reply: &Reply) {
    assert!(
        !reply.status.is_server_error(),
        "{}: {}",
        reply.status,
        reply.body
    );
    if !reply.status.is_success() {
        let ct = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(ct, "application/problem+json", "{}", reply.body);
    }
}

/// Fetches one message of `topic`/`group` and acks it with `emit`.
async fn step(app: &TestApp, topic: &str, group: &str, emit: Value) -> Reply {
    let got = app.fetch(topic, group, "w", 1, 0).await;
    assert_eq!(got.len(), 1, "one message to work on");
    app.post(
        &format!("/topics/{topic}/groups/{group}/ack"),
        &json!({"receipts": [receipt(&got[0])], "emit": emit}),
    )
    .await
}

/// The emits of two steps are two next steps, even when the two source
/// messages share a client-given `id` (ids are not checked for uniqueness)
/// or come from two topics whose groups share a name: the idempotency key
/// names the delivery's source entry, not only the message id.
#[tokio::test]
async fn emits_of_distinct_sources_sharing_a_message_id_never_collide() {
    let app = TestApp::start().await;
    for topic in ["orders", "refunds"] {
        app.group(topic, "worker", &json!({})).await;
    }
    // Two topics, one group name, one client id.
    for topic in ["orders", "refunds"] {
        app.publish(topic, &json!({"payload": topic, "id": "o-1"}))
            .await;
        let reply = step(
            &app,
            topic,
            "worker",
            json!([{"topic": "audit", "payload": topic}]),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["emitted"][0]["duplicate"], false, "{topic}");
    }
    // One topic, two messages with one client id.
    app.publish("orders", &json!({"payload": "again", "id": "o-1"}))
        .await;
    let reply = step(
        &app,
        "orders",
        "worker",
        json!([{"topic": "audit", "payload": "again"}]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["emitted"][0]["duplicate"], false);
    // The topic deleted and created again: its first message is new work.
    assert_eq!(app.delete("/topics/orders").await.status, 204);
    app.group("orders", "worker", &json!({})).await;
    app.publish("orders", &json!({"payload": "reborn", "id": "o-1"}))
        .await;
    let reply = step(
        &app,
        "orders",
        "worker",
        json!([{"topic": "audit", "payload": "reborn"}]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["emitted"][0]["duplicate"], false);

    let audit: Vec<Value> = app
        .history("audit")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(audit, ["orders", "refunds", "again", "reborn"]);
}
