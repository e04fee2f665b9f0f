//! Dead-letter streams through HTTP: listing, replay to one group only,
//! delete, and their errors.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

async fn reject_all(app: &TestApp, topic: &str, group: &str) -> usize {
    let got = app.fetch(topic, group, "w", 100, 0).await;
    let receipts: Vec<&Value> = got.iter().map(|m| &m["receipt"]).collect();
    let reply = app
        .post(
            &format!("/topics/{topic}/groups/{group}/reject"),
            &json!({"receipts": receipts, "error": "nope"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    got.len()
}

#[tokio::test]
async fn replay_redelivers_to_this_group_only_with_attempts_reset() {
    let app = TestApp::start().await;
    app.group("q", "a", &json!({})).await;
    app.group("q", "b", &json!({})).await;
    for i in 0..3 {
        app.publish("q", &json!({"payload": i, "id": format!("m{i}")}))
            .await;
    }
    // Group b finishes everything; group a rejects everything.
    let done = app.fetch("q", "b", "w", 10, 0).await;
    let rs: Vec<&str> = done
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    assert_eq!(app.ack("q", "b", &rs).await.status, StatusCode::OK);
    assert_eq!(reject_all(&app, "q", "a").await, 3);
    assert_eq!(app.get("/topics/q/groups/a").await.body["dead_lettered"], 3);

    // Replay one by id.
    let reply = app
        .post("/topics/q/groups/a/dlq/replay", &json!({"ids": ["m1"]}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["replayed"], json!(["m1"]));
    assert_eq!(reply.body["missing"], json!([]));
    let again = app.fetch("q", "a", "w", 10, 1000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], "m1");
    assert_eq!(again[0]["attempt"], 1, "attempts start over");
    assert_eq!(again[0]["payload"], 1);

    // Group b is untouched.
    assert!(app.fetch("q", "b", "w", 10, 0).await.is_empty());
    let b = app.get("/topics/q/groups/b").await.body;
    assert_eq!(
        (b["pending"].as_u64(), b["dead_lettered"].as_u64()),
        (Some(0), Some(0))
    );

    // Replay the rest (no ids = all).
    let reply = app.post("/topics/q/groups/a/dlq/replay", &json!({})).await;
    assert_eq!(reply.body["replayed"], json!(["m0", "m2"]));
    let rest = app.fetch("q", "a", "w", 10, 1000).await;
    let ids: Vec<&Value> = rest.iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&json!("m0"), &json!("m2")]);
    assert_eq!(app.get("/topics/q/groups/a").await.body["dead_lettered"], 0);
    assert!(
        app.fetch("q", "b", "w", 10, 0).await.is_empty(),
        "b still untouched"
    );
}

#[tokio::test]
async fn list_pages_and_delete_by_message_id() {
    let app = TestApp::start().await;
    app.group("l", "g", &json!({})).await;
    for i in 0..5 {
        app.publish(
            "l",
            &json!({"payload": i, "id": format!("d{i}"), "key": "k"}),
        )
        .await;
    }
    reject_all(&app, "l", "g").await;
    let page = app.get("/topics/l/groups/g/dlq?limit=2").await.body;
    let letters = page["messages"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["id"], "d0");
    assert_eq!(letters[0]["key"], "k", "the original envelope is kept");
    assert!(letters[0]["stream_id"].is_string());
    assert!(letters[0]["dlq_id"].is_string());
    let after = page["next_after"].as_str().unwrap();
    let next = app
        .get(&format!("/topics/l/groups/g/dlq?limit=10&after={after}"))
        .await
        .body;
    let ids: Vec<&Value> = next["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["id"])
        .collect();
    assert_eq!(ids, [&json!("d2"), &json!("d3"), &json!("d4")]);

    let del = app.delete("/topics/l/groups/g/dlq/d3").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    app.delete("/topics/l/groups/g/dlq/d3")
        .await
        .assert_problem(404, "dead_letter_not_found");
    assert_eq!(app.get("/topics/l/groups/g").await.body["dead_lettered"], 4);

    app.get("/topics/l/groups/nope/dlq")
        .await
        .assert_problem(404, "group_not_found");
    app.get("/topics/l/groups/g/dlq?limit=0")
        .await
        .assert_problem(400, "invalid_field");
    app.post("/topics/l/groups/g/dlq/replay", &json!({"ids": []}))
        .await
        .assert_problem(400, "invalid_field");
    let unknown = app
        .post("/topics/l/groups/g/dlq/replay", &json!({"ids": ["nope"]}))
        .await;
    assert_eq!(unknown.body["replayed"], json!([]));
}

/// Replaying all dead letters handles at most 10,000 per request and says
/// when more are left; replay and delete by id find their letters through
/// the index, even behind 10,000 others.
#[tokio::test]
async fn replay_all_is_bounded_per_request_and_ids_are_found_directly() {
    let app = TestApp::start_with(|c| c.max_body = 4 << 20).await;
    app.group("many", "g", &json!({})).await;
    let total = 10_002;
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(1000);
        let batch: Vec<Value> = (sent..sent + n)
            .map(|i| json!({"id": format!("m{i}"), "payload": i}))
            .collect();
        let reply = app
            .post("/topics/many/messages:batch", &json!({"messages": batch}))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        sent += n;
    }
    let mut rejected = 0;
    while rejected < total {
        let got = app.fetch("many", "g", "w", 1000, 0).await;
        assert!(!got.is_empty());
        let receipts: Vec<&Value> = got.iter().map(|m| &m["receipt"]).collect();
        let reply = app
            .post(
                "/topics/many/groups/g/reject",
                &json!({"receipts": receipts}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        rejected += got.len();
    }

    // By id, the newest letter is found without walking the others.
    let one = app
        .post(
            "/topics/many/groups/g/dlq/replay",
            &json!({"ids": ["m10001"]}),
        )
        .await;
    assert_eq!(one.body["replayed"], json!(["m10001"]), "{}", one.body);
    assert_eq!(
        app.delete("/topics/many/groups/g/dlq/m10000").await.status,
        StatusCode::NO_CONTENT
    );
    app.delete("/topics/many/groups/g/dlq/m10000")
        .await
        .assert_problem(404, "dead_letter_not_found");

    let first = app
        .post("/topics/many/groups/g/dlq/replay", &json!({}))
        .await;
    assert_eq!(
        first.body["replayed"].as_array().map(Vec::len),
        Some(10_000)
    );
    assert_eq!(first.body["more"], true);
    let rest = app
        .post("/topics/many/groups/g/dlq/replay", &json!({}))
        .await;
    assert_eq!(rest.body["replayed"].as_array().map(Vec::len), Some(0));
    assert_eq!(rest.body["more"], false);
    let info = app.get("/topics/many/groups/g").await.body;
    assert_eq!(
        (info["delayed"].clone(), info["dead_lettered"].clone()),
        (json!(10_001), json!(0))
    );
}
