//! Promises at the edges of the delivery core, each found broken once by an
//! adversarial probe: leases granted under an older `lease_ms`, receipts
//! reused across deliveries, groups and group incarnations, odd group
//! positions, topics with thousands of groups, requests racing a delete,
//! answers without a size bound, and consumers that pile up.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

fn receipt(message: &Value) -> String {
    message["receipt"].as_str().expect("receipt").to_owned()
}

/// Lowering a group's `lease_ms` never shortens a lease already granted: the
/// holder was told an expiry, and nobody else gets the message before it.
#[tokio::test]
async fn lowering_lease_ms_does_not_hand_out_live_leases() {
    let app = TestApp::start().await;
    app.group("lease", "g", &json!({"lease_ms": 60000})).await;
    app.publish("lease", &json!({"payload": "long job"})).await;
    let held = app.fetch("lease", "g", "w1", 1, 0).await;
    assert_eq!(held.len(), 1);

    app.group("lease", "g", &json!({"lease_ms": 100})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.fetch("lease", "g", "w2", 1, 0).await.is_empty(),
        "the first holder's lease runs until the expiry it was told"
    );
    let acked = app.ack("lease", "g", &[&receipt(&held[0])]).await;
    assert_eq!(acked.body["acked"].as_array().map(Vec::len), Some(1));

    // New leases follow the new setting.
    app.publish("lease", &json!({"payload": "short job"})).await;
    let short = app.fetch("lease", "g", "w1", 1, 0).await;
    assert_eq!(short.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken_over = app.fetch("lease", "g", "w2", 1, 0).await;
    assert_eq!(taken_over.len(), 1, "a 100 ms lease lapses");
    assert_eq!(taken_over[0]["attempt"], 2);
}

/// After a dead letter is replayed, the old holder's receipt names an old
/// delivery: it cannot ack the new holder's delivery, even with the same
/// consumer name and attempt number.
#[tokio::test]
async fn a_receipt_from_before_a_dlq_replay_is_refused() {
    let app = TestApp::start().await;
    app.group(
        "replay",
        "g",
        &json!({"lease_ms": 200, "max_deliveries": 1}),
    )
    .await;
    app.publish("replay", &json!({"id": "x", "payload": 1}))
        .await;
    let first = app.fetch("replay", "g", "w1", 1, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The lapsed lease was the last allowed attempt: dead-lettered.
    assert!(app.fetch("replay", "g", "w2", 1, 0).await.is_empty());
    let replayed = app
        .post("/topics/replay/groups/g/dlq/replay", &json!({}))
        .await;
    assert_eq!(replayed.body["replayed"], json!(["x"]), "{}", replayed.body);

    let second = app.fetch("replay", "g", "w1", 1, 0).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["attempt"], first[0]["attempt"]);
    assert_ne!(receipt(&second[0]), receipt(&first[0]));
    app.ack("replay", "g", &[&receipt(&first[0])])
        .await
        .assert_problem(409, "lease_lost");
    let acked = app.ack("replay", "g", &[&receipt(&second[0])]).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
}

/// A group deleted and created again under the same name is a new group:
/// receipts of the old one are refused.
#[tokio::test]
async fn a_receipt_from_a_deleted_group_is_refused_by_its_successor() {
    let app = TestApp::start().await;
    app.group("again", "g", &json!({})).await;
    app.publish("again", &json!({"payload": 1})).await;
    let old = app.fetch("again", "g", "w1", 1, 0).await;
    assert_eq!(
        app.delete("/topics/again/groups/g").await.status,
        StatusCode::NO_CONTENT
    );
    app.group("again", "g", &json!({"start": "earliest"})).await;
    let new = app.fetch("again", "g", "w1", 1, 0).await;
    assert_eq!(new[0]["id"], old[0]["id"]);
    assert_eq!(new[0]["attempt"], 1);
    assert_ne!(receipt(&new[0]), receipt(&old[0]));
    app.ack("again", "g", &[&receipt(&old[0])])
        .await
        .assert_problem(409, "lease_lost");
    assert_eq!(
        app.ack("again", "g", &[&receipt(&new[0])]).await.status,
        StatusCode::OK
    );
}

/// Two groups deliver the same message to consumers of the same name: each
/// receipt is good only in its own group.
#[tokio::test]
async fn a_receipt_of_one_group_is_refused_by_another() {
    let app = TestApp::start().await;
    app.group("two", "a", &json!({})).await;
    app.group("two", "b", &json!({})).await;
    app.publish("two", &json!({"payload": 1})).await;
    let from_a = app.fetch("two", "a", "w", 1, 0).await;
    let from_b = app.fetch("two", "b", "w", 1, 0).await;
    assert_ne!(receipt(&from_a[0]), receipt(&from_b[0]));
    app.ack("two", "b", &[&receipt(&from_a[0])])
        .await
        .assert_problem(409, "lease_lost");
    assert_eq!(
        app.ack("two", "b", &[&receipt(&from_b[0])]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.ack("two", "a", &[&receipt(&from_a[0])]).await.status,
        StatusCode::OK
    );
}

/// A group started at an odd (but valid) position neither breaks its own
/// topic's retention nor stops the pass for the other topics.
#[tokio::test]
async fn an_odd_group_start_does_not_stop_retention() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(100)).await;
    let retention = json!({"retention_ms": 50});
    app.put("/topics/odd", &retention).await;
    app.group("odd", "g", &json!({"start": "1-9999999999999999999"}))
        .await;
    let plain: Vec<String> = (0..15).map(|i| format!("plain-{i}")).collect();
    for topic in &plain {
        app.put(&format!("/topics/{topic}"), &retention).await;
        app.group(topic, "g", &json!({})).await;
    }
    for topic in &plain {
        for i in 0..3 {
            app.publish(topic, &json!({"payload": i})).await;
        }
        let got = app.fetch(topic, "g", "w", 10, 0).await;
        let receipts: Vec<String> = got.iter().map(receipt).collect();
        let refs: Vec<&str> = receipts.iter().map(String::as_str).collect();
        assert_eq!(app.ack(topic, "g", &refs).await.status, StatusCode::OK);
    }
    // The odd group has delivered nothing: its position is still the odd id.
    for i in 0..3 {
        app.publish("odd", &json!({"payload": i})).await;
    }
    let mut lengths = Vec::new();
    for _ in 0..100 {
        lengths.clear();
        for topic in &plain {
            lengths.push(app.get(&format!("/topics/{topic}")).await.body["length"].clone());
        }
        if lengths.iter().all(|l| l == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lengths.iter().all(|l| l == 0),
        "every plain topic trimmed: {lengths:?}"
    );
    let odd = app.get("/topics/odd").await.body;
    assert_eq!(
        odd["length"], 3,
        "the odd group still owes its entries: {odd}"
    );
    assert_eq!(odd["groups"][0]["lag"], 3, "{odd}");
    let got = app.fetch("odd", "g", "w", 10, 0).await;
    assert_eq!(got.len(), 3, "entries after the odd start are delivered");
}

/// A topic with thousands of groups can be deleted (its keys go to Redis in
/// chunks, below Lua's unpack limit).
#[tokio::test]
async fn a_topic_with_three_thousand_groups_can_be_deleted() {
    let app = TestApp::start().await;
    app.publish("crowded", &json!({"payload": 1})).await;
    for i in 0..3000 {
        let reply = app
            .put(&format!("/topics/crowded/groups/g{i}"), &json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let deleted = app.delete("/topics/crowded").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    app.get("/topics/crowded")
        .await
        .assert_problem(404, "topic_not_found");
    app.get("/topics/crowded/groups/g2999")
        .await
        .assert_problem(404, "group_not_found");
}

/// Requests racing `DELETE topic` answer 404 or succeed, never 5xx; and a
/// topic that exists at the end is listed.
#[tokio::test]
async fn requests_racing_a_topic_delete_never_answer_5xx() {
    let app = TestApp::start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for role in 0..5 {
        let client = app.client.clone();
        let topic = app.url("/topics/race");
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let req = match role {
                    0 => client.put(format!("{topic}/groups/g")).json(&json!({})),
                    1 => client.delete(&topic),
                    2 => client.get(format!("{topic}/groups/g")),
                    3 => client.get(&topic),
                    _ => client
                        .post(format!("{topic}/messages"))
                        .json(&json!({"payload": 1})),
                };
                let resp = req.send().await.expect("request");
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                statuses.push((status, body));
            }
            statuses
        }));
    }
    let mut answers = 0;
    for task in tasks {
        for (status, body) in task.await.expect("task") {
            answers += 1;
            assert!(!status.is_server_error(), "{status}: {body}");
        }
    }
    assert!(answers > 50, "the race ran ({answers} answers)");

    let exists = app.get("/topics/race").await.status == StatusCode::OK;
    let listed = app.get("/topics").await.body["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .any(|t| t == "race");
    assert_eq!(
        listed, exists,
        "GET /topics lists the topic exactly when it exists"
    );
}

/// The group's numbers are exact for any start position, and every message
/// is exactly one of lag, pending, delayed, dead-lettered or acked.
#[tokio::test]
async fn group_numbers_add_up_for_any_start_position() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(app.publish("count", &json!({"payload": i})).await["stream_id"].clone());
    }
    // Redis cannot tell the lag of a group started at an arbitrary id.
    let start = ids[3].as_str().expect("stream id");
    app.group("count", "g", &json!({"start": start, "max_deliveries": 2}))
        .await;
    let info = app.get("/topics/count/groups/g").await.body;
    assert_eq!(
        (info["lag"].clone(), info["pending"].clone()),
        (json!(6), json!(0))
    );

    let got = app.fetch("count", "g", "w", 4, 0).await;
    assert_eq!(got.len(), 4);
    let acked = app.ack("count", "g", &[&receipt(&got[0])]).await;
    assert_eq!(acked.status, StatusCode::OK);
    let nacked = app
        .post(
            "/topics/count/groups/g/nack",
            &json!({"receipts": [receipt(&got[1])], "delay_ms": 60000}),
        )
        .await;
    assert_eq!(nacked.status, StatusCode::OK, "{}", nacked.body);
    let rejected = app
        .post(
            "/topics/count/groups/g/reject",
            &json!({"receipts": [receipt(&got[2])]}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);

    let info = app.get("/topics/count/groups/g").await.body;
    let numbers = ["lag", "pending", "delayed", "dead_lettered"].map(|k| info[k].clone());
    assert_eq!(numbers, [json!(2), json!(1), json!(1), json!(1)], "{info}");
    let topic = app.get("/topics/count").await.body;
    assert_eq!(topic["groups"][0]["lag"], 2, "{topic}");
    assert_eq!(topic["groups"][0]["pending"], 1, "{topic}");

    // A replayed dead letter is owed again.
    app.post("/topics/count/groups/g/dlq/replay", &json!({}))
        .await;
    let info = app.get("/topics/count/groups/g").await.body;
    let numbers = ["lag", "pending", "delayed", "dead_lettered"].map(|k| info[k].clone());
    assert_eq!(numbers, [json!(2), json!(1), json!(2), json!(0)], "{info}");
}

/// Fetch answers stop at their byte budget (the first message always
/// comes); nothing is lost: the rest comes with the next fetches.
#[tokio::test]
async fn fetch_and_history_answers_are_bounded_in_bytes() {
    let app = TestApp::start_with(|c| c.max_body = 2 << 20).await;
    app.group("big", "g", &json!({})).await;
    let blob = "x".repeat(300_000);
    for i in 0..20 {
        app.publish("big", &json!({"payload": {"n": i, "blob": blob}}))
            .await;
    }
    let fetch = |max_bytes: Option<u64>| {
        let mut body = json!({"consumer": "w", "max": 1000});
        if let Some(b) = max_bytes {
            body["max_bytes"] = json!(b);
        }
        let app = &app;
        async move { app.post("/topics/big/groups/g/fetch", &body).await }
    };
    let one = fetch(Some(1)).await;
    assert_eq!(
        one.body["messages"].as_array().map(Vec::len),
        Some(1),
        "the first always comes"
    );
    let bounded = fetch(None).await;
    let got = bounded.body["messages"].as_array().expect("messages").len();
    assert!(
        (10..=14).contains(&got),
        "4 MiB holds 13 messages of 300 kB, got {got}"
    );
    let mut seen = 1 + got;
    for _ in 0..10 {
        seen += fetch(None).await.body["messages"]
            .as_array()
            .map_or(0, Vec::len);
    }
    assert_eq!(seen, 20, "every message delivered exactly once");

    let page = app.get("/topics/big/messages?limit=1000").await;
    let n = page.body["messages"].as_array().expect("messages").len();
    assert!(
        (10..=14).contains(&n),
        "a history page holds 4 MiB, got {n}"
    );
    let after = page.body["next_after"].as_str().expect("cursor");
    let rest = app
        .get(&format!("/topics/big/messages?limit=1000&after={after}"))
        .await;
    assert_eq!(rest.body["messages"].as_array().map(Vec::len), Some(20 - n));

    app.post(
        "/topics/big/groups/g/fetch",
        &json!({"consumer": "w", "max_bytes": 0}),
    )
    .await
    .assert_problem(400, "invalid_field");
}

/// Consumers that own nothing are forgotten after the idle time; one that
/// holds a lease is kept, and its lease still acks.
#[tokio::test]
async fn idle_consumers_that_own_nothing_are_removed() {
    let app = TestApp::start_with(|c| {
        c.retention_interval = Duration::from_millis(100);
        c.consumer_idle = Duration::from_millis(300);
    })
    .await;
    app.group("churn", "g", &json!({"lease_ms": 60000})).await;
    app.publish("churn", &json!({"payload": 1})).await;
    app.publish("churn", &json!({"payload": 2})).await;
    let done = app.fetch("churn", "g", "gone", 1, 0).await;
    assert_eq!(
        app.ack("churn", "g", &[&receipt(&done[0])]).await.status,
        StatusCode::OK
    );
    let held = app.fetch("churn", "g", "holder", 1, 0).await;
    assert_eq!(held.len(), 1);

    let names = |info: &Value| -> Vec<String> {
        info["consumers"]
            .as_array()
            .expect("consumers")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let mut consumers = Vec::new();
    for _ in 0..50 {
        consumers = names(&app.get("/topics/churn/groups/g").await.body);
        if !consumers.contains(&"gone".to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumers, ["holder"]);
    assert_eq!(
        app.ack("churn", "g", &[&receipt(&held[0])]).await.status,
        StatusCode::OK
    );
}
