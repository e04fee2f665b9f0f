//! Per-key ordering (`ordering: "key"` groups): one message per key in
//! progress, in `seq` order; retries and lapsed leases stay at the head of
//! their key; dead-lettering passes the key on; other keys never wait.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

fn receipt(message: &Value) -> String {
    message["receipt"].as_str().expect("receipt").to_owned()
}

fn payloads(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["payload"].clone()).collect()
}

async fn ordered(app: &TestApp, topic: &str, extra: Value) {
    let mut config = json!({"ordering": "key"});
    config
        .as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    app.group(topic, "g", &config).await;
}

async fn publish_keyed(app: &TestApp, topic: &str, key: &str, payloads: &[Value]) {
    let batch: Vec<Value> = payloads
        .iter()
        .map(|p| json!({"key": key, "payload": p}))
        .collect();
    app.publish_batch(topic, &batch).await;
}

async fn settle(app: &TestApp, topic: &str, verb: &str, message: &Value, extra: Value) {
    let mut body = json!({"receipts": [receipt(message)]});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let reply = app
        .post(&format!("/topics/{topic}/groups/g/{verb}"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{verb}: {}", reply.body);
}

/// A nacked, lapsed or rejected head keeps its place: nothing later of its
/// key is delivered before it is done.
#[tokio::test]
async fn a_key_is_delivered_in_order_across_nack_lease_expiry_and_reject() {
    let app = TestApp::start().await;
    ordered(&app, "o", json!({"lease_ms": 1000, "max_deliveries": 5})).await;
    publish_keyed(&app, "o", "u1", &[json!(1), json!(2), json!(3)]).await;

    let first = app.fetch("o", "g", "w1", 10, 0).await;
    assert_eq!(
        payloads(&first),
        [json!(1)],
        "one message of the key at a time"
    );
    settle(&app, "o", "nack", &first[0], json!({"delay_ms": 0})).await;
    let again = app.fetch("o", "g", "w1", 10, 0).await;
    assert_eq!(payloads(&again), [json!(1)], "the retry goes first");
    assert_eq!(again[0]["attempt"], 2);

    // The lease lapses: another consumer gets the same head, not message 2.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let taken = app.fetch("o", "g", "w2", 10, 0).await;
    assert_eq!(payloads(&taken), [json!(1)]);
    assert_eq!(taken[0]["attempt"], 3);

    // Dead-lettering the head passes the key on.
    settle(&app, "o", "reject", &taken[0], json!({})).await;
    let second = app.fetch("o", "g", "w2", 10, 0).await;
    assert_eq!(payloads(&second), [json!(2)]);
    settle(&app, "o", "ack", &second[0], json!({})).await;
    let third = app.fetch("o", "g", "w2", 10, 0).await;
    assert_eq!(payloads(&third), [json!(3)]);
    settle(&app, "o", "ack", &third[0], json!({})).await;
    assert!(app.fetch("o", "g", "w2", 10, 0).await.is_empty());
}

/// A key whose head waits 10 s for its retry delays no other key.
#[tokio::test]
async fn other_keys_flow_while_one_key_waits() {
    let app = TestApp::start().await;
    ordered(&app, "flow", json!({})).await;
    publish_keyed(&app, "flow", "a", &[json!("a1"), json!("a2")]).await;
    publish_keyed(&app, "flow", "b", &[json!("b1"), json!("b2")]).await;

    let got = app.fetch("flow", "g", "w", 10, 0).await;
    assert_eq!(payloads(&got), [json!("a1"), json!("b1")]);
    settle(&app, "flow", "nack", &got[0], json!({"delay_ms": 10000})).await;
    settle(&app, "flow", "ack", &got[1], json!({})).await;
    let next = app.fetch("flow", "g", "w", 10, 0).await;
    assert_eq!(
        payloads(&next),
        [json!("b2")],
        "b goes on; a waits for its head"
    );

    let info = app.get("/topics/flow/groups/g").await.body;
    assert_eq!(info["ordering"], "key");
    let numbers = ["lag", "parked", "pending", "delayed", "dead_lettered"].map(|k| info[k].clone());
    assert_eq!(
        numbers,
        [json!(0), json!(1), json!(1), json!(1), json!(0)],
        "a2 parked, b2 leased, a1 scheduled: {info}"
    );
}

/// One hot key with thousands of messages ahead of a thousand cold keys
/// does not hold the cold ones back, and the hot key still has one message
/// in progress.
#[tokio::test]
async fn a_hot_key_does_not_starve_cold_keys() {
    let app = TestApp::start_with(|c| c.max_body = 8 << 20).await;
    ordered(&app, "hot", json!({"lease_ms": 60000})).await;
    let hot: Vec<Value> = (0..5000).map(|i| json!(i)).collect();
    for chunk in hot.chunks(1000) {
        publish_keyed(&app, "hot", "hot", chunk).await;
    }
    let cold: Vec<Value> = (0..1000)
        .map(|i| json!({"key": format!("cold-{i}"), "payload": "cold"}))
        .collect();
    app.publish_batch("hot", &cold).await;

    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.extend(app.fetch("hot", "g", "w", 1000, 0).await);
        if delivered.len() >= 1001 {
            break;
        }
    }
    let hot_count = delivered.iter().filter(|m| m["key"] == "hot").count();
    let cold_count = delivered.iter().filter(|m| m["payload"] == "cold").count();
    assert_eq!((hot_count, cold_count), (1, 1000));
    assert_eq!(delivered[0]["payload"], 0, "the hot key's first message");
    let info = app.get("/topics/hot/groups/g").await.body;
    assert_eq!(info["parked"], 4999, "{info}");
}

/// Messages without a key are not ordered: they all go at once.
#[tokio::test]
async fn messages_without_a_key_are_unordered() {
    let app = TestApp::start().await;
    ordered(&app, "free", json!({})).await;
    for i in 0..5 {
        app.publish("free", &json!({"payload": i})).await;
    }
    assert_eq!(app.fetch("free", "g", "w", 10, 0).await.len(), 5);
}

/// A replayed dead letter joins the back of its key.
#[tokio::test]
async fn a_replayed_message_joins_the_back_of_its_key() {
    let app = TestApp::start().await;
    ordered(&app, "rp", json!({})).await;
    let msgs = [json!(1), json!(2), json!(3)];
    publish_keyed(&app, "rp", "k", &msgs).await;

    let first = app.fetch("rp", "g", "w", 10, 0).await;
    settle(&app, "rp", "reject", &first[0], json!({})).await;
    let second = app.fetch("rp", "g", "w", 10, 0).await;
    assert_eq!(payloads(&second), [json!(2)]);
    let replayed = app.post("/topics/rp/groups/g/dlq/replay", &json!({})).await;
    assert_eq!(replayed.body["replayed"].as_array().map(Vec::len), Some(1));
    assert!(
        app.fetch("rp", "g", "w", 10, 0).await.is_empty(),
        "the key is busy: the replayed message waits"
    );

    let mut order = Vec::new();
    let mut current = second;
    for _ in 0..3 {
        settle(&app, "rp", "ack", &current[0], json!({})).await;
        current = app.fetch("rp", "g", "w", 10, 0).await;
        if current.is_empty() {
            break;
        }
        assert_eq!(current.len(), 1);
        order.push(current[0]["payload"].clone());
    }
    assert_eq!(order, [json!(3), json!(1)]);
}

/// Ordering is fixed when the group is created.
#[tokio::test]
async fn ordering_cannot_change_on_a_live_group() {
    let app = TestApp::start().await;
    ordered(&app, "cfg", json!({})).await;
    app.put("/topics/cfg/groups/g", &json!({"ordering": "none"}))
        .await
        .assert_problem(409, "group_config_conflict");
    let same = app
        .put(
            "/topics/cfg/groups/g",
            &json!({"ordering": "key", "lease_ms": 5000}),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
    let other = app
        .put("/topics/cfg/groups/g", &json!({"lease_ms": 6000}))
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    let info = app.get("/topics/cfg/groups/g").await.body;
    assert_eq!(
        (info["ordering"].clone(), info["lease_ms"].clone()),
        (json!("key"), json!(6000))
    );

    app.group("cfg", "plain", &json!({})).await;
    let plain = app.get("/topics/cfg/groups/plain").await.body;
    assert_eq!(plain["ordering"], "none");
    app.put("/topics/cfg/groups/plain", &json!({"ordering": "key"}))
        .await
        .assert_problem(409, "group_config_conflict");
    let bad = app
        .put("/topics/cfg/groups/x", &json!({"ordering": "fifo"}))
        .await;
    assert_eq!(
        bad.assert_problem(400, "invalid_field")["field"],
        "ordering"
    );
}

/// Parked messages are owed: `max_backlog` counts them and retention keeps
/// them; deleting the group takes them along.
#[tokio::test]
async fn parked_messages_count_in_the_backlog_and_survive_retention() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(100)).await;
    app.put("/topics/bk", &json!({"retention_ms": 1, "max_backlog": 3}))
        .await;
    ordered(&app, "bk", json!({"lease_ms": 60000})).await;
    publish_keyed(&app, "bk", "k", &[json!(1), json!(2), json!(3)]).await;
    let got = app.fetch("bk", "g", "w", 10, 0).await;
    assert_eq!(got.len(), 1);
    let refused = app
        .post("/topics/bk/messages", &json!({"key": "k", "payload": 4}))
        .await;
    refused.assert_problem(429, "backlog_full");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let topic = app.get("/topics/bk").await.body;
    assert_eq!(topic["length"], 3, "nothing owed was trimmed: {topic}");
    assert_eq!(
        app.delete("/topics/bk/groups/g").await.status,
        StatusCode::NO_CONTENT
    );
    ordered(&app, "bk", json!({"start": "latest"})).await;
    let info = app.get("/topics/bk/groups/g").await.body;
    assert_eq!(
        (info["parked"].clone(), info["lag"].clone()),
        (json!(0), json!(0)),
        "{info}"
    );
}
