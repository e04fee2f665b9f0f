//! Retention through HTTP: trimming never removes what a group still owes,
//! and does remove what every group has finished.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::TestApp;

async fn length(app: &TestApp, topic: &str) -> u64 {
    app.get(&format!("/topics/{topic}")).await.body["length"]
        .as_u64()
        .expect("length")
}

async fn receipts_acked(app: &TestApp, topic: &str, group: &str, msgs: &[Value]) {
    let rs: Vec<&str> = msgs
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    let reply = app.ack(topic, group, &rs).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn retention_keeps_what_a_slow_group_owes_and_trims_what_all_finished() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(100)).await;
    app.put("/topics/r", &json!({"retention_ms": 1})).await;
    app.group("r", "fast", &json!({"lease_ms": 60000})).await;
    app.group("r", "slow", &json!({"lease_ms": 60000})).await;
    for i in 0..10 {
        app.publish("r", &json!({"payload": i})).await;
    }
    let all = app.fetch("r", "fast", "f", 10, 0).await;
    receipts_acked(&app, "r", "fast", &all).await;

    // The slow group has read nothing: many retention passes trim nothing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(length(&app, "r").await, 10);

    // Slow: acks 0-3, schedules 4 for a retry, acks 5-7, holds 8-9 leased.
    let slow = app.fetch("r", "slow", "s", 10, 0).await;
    receipts_acked(&app, "r", "slow", &slow[0..4]).await;
    let nack = app
        .post(
            "/topics/r/groups/slow/nack",
            &json!({"receipts": [slow[4]["receipt"]], "delay_ms": 60000}),
        )
        .await;
    assert_eq!(nack.status, 200);
    receipts_acked(&app, "r", "slow", &slow[5..8]).await;

    // Entries 0-3 are finished by both groups and go; 4 (scheduled retry) and
    // everything after it stay.
    let mut len = 0;
    for _ in 0..100 {
        len = length(&app, "r").await;
        if len <= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(len, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(length(&app, "r").await, 6, "and not one more");
    let payloads: Vec<Value> = app
        .history("r")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(payloads, (4..10).map(|i| json!(i)).collect::<Vec<_>>());

    // The retry and the held leases are still deliverable and ackable.
    receipts_acked(&app, "r", "slow", &slow[8..10]).await;
    let info = app.get("/topics/r/groups/slow").await.body;
    assert_eq!(info["delayed"], 1);
}

#[tokio::test]
async fn without_retention_nothing_is_trimmed() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(100)).await;
    app.group("keep", "g", &json!({})).await;
    for i in 0..5 {
        app.publish("keep", &json!({"payload": i})).await;
    }
    let all = app.fetch("keep", "g", "w", 10, 0).await;
    receipts_acked(&app, "keep", "g", &all).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        length(&app, "keep").await,
        5,
        "retention_ms 0 keeps history"
    );
}

/// A retry schedule over 100k entries does not stop retention (the trim
/// reads no schedule: scheduled entries stay in the PEL, and the PEL's
/// oldest id is one O(1) read).
#[tokio::test]
async fn a_huge_retry_schedule_does_not_stop_retention() {
    let app = TestApp::start_with(|c| {
        c.retention_interval = Duration::from_millis(100);
        c.max_body = 4 << 20;
    })
    .await;
    app.put("/topics/sched", &json!({"retention_ms": 1})).await;
    app.group("sched", "g", &json!({})).await;
    for i in 0..10 {
        app.publish("sched", &json!({"payload": i})).await;
    }
    let done = app.fetch("sched", "g", "w", 10, 0).await;
    receipts_acked(&app, "sched", "g", &done).await;

    // 100,001 messages for later: each fetch parks what it reads.
    let later = 100_001;
    let mut sent = 0;
    while sent < later {
        let n = (later - sent).min(1000);
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({"payload": i, "delay_ms": 3_600_000}))
            .collect();
        let reply = app
            .post("/topics/sched/messages:batch", &json!({"messages": batch}))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        sent += n;
    }
    for _ in 0..200 {
        assert!(app.fetch("sched", "g", "w", 1000, 0).await.is_empty());
        let info = app.get("/topics/sched/groups/g").await.body;
        if info["delayed"] == later {
            break;
        }
    }
    let info = app.get("/topics/sched/groups/g").await.body;
    assert_eq!(info["delayed"], later, "{info}");

    let mut len = 0;
    for _ in 0..100 {
        len = length(&app, "sched").await;
        if len == later {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        len, later,
        "the 10 finished entries were trimmed, no scheduled one"
    );
}
