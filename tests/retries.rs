//! Failure paths through HTTP against a real redis-server: nack with an
//! explicit delay and with the group's backoff, dead-lettering after
//! max_deliveries (by nacks and by lease expiry), reject, TTL expiry, delayed
//! publish, and an accounting of every message.

mod support;

use serde_json::{Value, json};
use support::TestApp;

/// Redis time at which a delivery was handed out.
fn handed_out_at(delivery: &Value, lease_ms: u64) -> u64 {
    delivery["lease_expires_at"]
        .as_u64()
        .expect("lease_expires_at")
        - lease_ms
}

/// Long-polls (bounded) until one message arrives.
async fn next_delivery(app: &TestApp, topic: &str, group: &str) -> Value {
    for _ in 0..30 {
        if let Some(m) = app
            .fetch(topic, group, "w", 1, 1000)
            .await
            .into_iter()
            .next()
        {
            return m;
        }
    }
    panic!("nothing was delivered");
}

async fn nack(app: &TestApp, topic: &str, group: &str, receipt: &Value, body: Value) -> Value {
    let mut body = body;
    body["receipts"] = json!([receipt]);
    let reply = app
        .post(&format!("/topics/{topic}/groups/{group}/nack"), &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn dlq(app: &TestApp, topic: &str, group: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/topics/{topic}/groups/{group}/dlq"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn nack_with_delay_is_not_delivered_before_the_delay() {
    let app = TestApp::start().await;
    app.group("n", "g", &json!({"lease_ms": 60000})).await;
    app.publish("n", &json!({"payload": "retry me"})).await;
    let first = app.fetch("n", "g", "w", 1, 0).await.remove(0);
    let outcome = nack(&app, "n", "g", &first["receipt"], json!({"delay_ms": 1500})).await;
    assert_eq!(outcome["nacked"], json!([first["receipt"]]));

    assert!(app.fetch("n", "g", "w", 1, 0).await.is_empty(), "not yet");
    let info = app.get("/topics/n/groups/g").await.body;
    assert_eq!(info["delayed"], 1);
    assert_eq!(info["pending"], 0);

    let second = next_delivery(&app, "n", "g").await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["attempt"], 2);
    assert!(
        handed_out_at(&second, 60000) >= handed_out_at(&first, 60000) + 1500,
        "redelivered only after the delay (Redis clock)"
    );
    // The old receipt is no longer valid.
    nack(&app, "n", "g", &second["receipt"], json!({"delay_ms": 0})).await;
    let stale = app
        .post(
            "/topics/n/groups/g/nack",
            &json!({"receipts": [first["receipt"]]}),
        )
        .await;
    stale.assert_problem(409, "lease_lost");
}

#[tokio::test]
async fn nack_without_delay_follows_the_group_backoff() {
    let app = TestApp::start().await;
    let backoff = json!({"initial_ms": 400, "multiplier": 2.0, "max_ms": 10000, "jitter": 0.0});
    app.group("b", "g", &json!({"lease_ms": 60000, "backoff": backoff}))
        .await;
    app.publish("b", &json!({"payload": 1})).await;

    let first = app.fetch("b", "g", "w", 1, 0).await.remove(0);
    nack(&app, "b", "g", &first["receipt"], json!({})).await;
    let second = next_delivery(&app, "b", "g").await;
    assert_eq!(second["attempt"], 2);
    assert!(handed_out_at(&second, 60000) >= handed_out_at(&first, 60000) + 400);

    nack(&app, "b", "g", &second["receipt"], json!({})).await;
    let third = next_delivery(&app, "b", "g").await;
    assert_eq!(third["attempt"], 3);
    assert!(
        handed_out_at(&third, 60000) >= handed_out_at(&second, 60000) + 800,
        "the delay doubles"
    );
}

#[tokio::test]
async fn max_deliveries_by_nacks_ends_in_the_dlq() {
    let app = TestApp::start().await;
    app.group("m", "g", &json!({"max_deliveries": 3})).await;
    app.publish("m", &json!({"payload": {"n": 1}, "id": "poison-1"}))
        .await;
    for attempt in 1..=3 {
        let d = next_delivery(&app, "m", "g").await;
        assert_eq!(d["attempt"], attempt);
        let outcome = nack(
            &app,
            "m",
            "g",
            &d["receipt"],
            json!({"delay_ms": 0, "error": format!("boom {attempt}")}),
        )
        .await;
        if attempt < 3 {
            assert_eq!(outcome["nacked"], json!([d["receipt"]]));
        } else {
            assert_eq!(outcome["dead_lettered"], json!([d["receipt"]]));
        }
    }
    assert!(app.fetch("m", "g", "w", 1, 200).await.is_empty());
    let letters = dlq(&app, "m", "g").await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l["id"], "poison-1");
    assert_eq!(l["payload"], json!({"n": 1}));
    assert_eq!(l["reason"], "max_deliveries");
    assert_eq!(l["attempts"], 3);
    assert_eq!(l["last_error"], "boom 3");
    assert!(l["dead_lettered_at"].as_u64().unwrap() >= l["published_at"].as_u64().unwrap());
    let info = app.get("/topics/m/groups/g").await.body;
    assert_eq!(
        (
            info["pending"].as_u64(),
            info["delayed"].as_u64(),
            info["dead_lettered"].as_u64()
        ),
        (Some(0), Some(0), Some(1))
    );
}

#[tokio::test]
async fn max_deliveries_by_lease_expiry_ends_in_the_dlq() {
    let app = TestApp::start().await;
    app.group("x", "g", &json!({"max_deliveries": 2, "lease_ms": 200}))
        .await;
    app.publish("x", &json!({"payload": "crashy", "id": "c-1"}))
        .await;
    let first = app.fetch("x", "g", "dies-1", 1, 0).await.remove(0);
    assert_eq!(first["attempt"], 1);
    let second = next_delivery(&app, "x", "g").await;
    assert_eq!(second["attempt"], 2);
    // Nobody acks the second attempt either: it must end up dead-lettered.
    let mut letters = Vec::new();
    for _ in 0..50 {
        assert!(
            app.fetch("x", "g", "w", 1, 100).await.is_empty(),
            "no third attempt"
        );
        letters = dlq(&app, "x", "g").await;
        if !letters.is_empty() {
            break;
        }
    }
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], "c-1");
    assert_eq!(letters[0]["reason"], "max_deliveries");
    assert_eq!(letters[0]["attempts"], 2);
    assert_eq!(app.get("/topics/x/groups/g").await.body["pending"], 0);
}

#[tokio::test]
async fn reject_dead_letters_at_once() {
    let app = TestApp::start().await;
    app.group("r", "g", &json!({})).await;
    app.publish("r", &json!({"payload": "bad", "id": "r-1"}))
        .await;
    let d = app.fetch("r", "g", "w", 1, 0).await.remove(0);
    let reply = app
        .post(
            "/topics/r/groups/g/reject",
            &json!({"receipts": [d["receipt"]], "error": "schema mismatch"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["rejected"], json!([d["receipt"]]));
    let letters = dlq(&app, "r", "g").await;
    assert_eq!(letters[0]["reason"], "rejected");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["last_error"], "schema mismatch");
    app.post(
        "/topics/r/groups/g/reject",
        &json!({"receipts": [d["receipt"]]}),
    )
    .await
    .assert_problem(409, "lease_lost");
    assert!(app.fetch("r", "g", "w", 1, 0).await.is_empty());
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let app = TestApp::start().await;
    app.group("t", "g", &json!({"lease_ms": 60000})).await;
    app.publish(
        "t",
        &json!({"payload": "stale", "id": "t-1", "ttl_ms": 100}),
    )
    .await;
    app.publish(
        "t",
        &json!({"payload": "fresh", "id": "t-2", "ttl_ms": 1500}),
    )
    .await;
    app.publish("t", &json!({"payload": "forever", "id": "t-3"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let got = app.fetch("t", "g", "w", 10, 0).await;
    let ids: Vec<&Value> = got.iter().map(|m| &m["id"]).collect();
    assert_eq!(
        ids,
        [&json!("t-2"), &json!("t-3")],
        "t-1 expired before delivery"
    );
    // t-2 is retried after its ttl has passed: it expires instead.
    nack(
        &app,
        "t",
        "g",
        &got[0]["receipt"],
        json!({"delay_ms": 1600}),
    )
    .await;
    let mut letters = Vec::new();
    for _ in 0..50 {
        assert!(app.fetch("t", "g", "w", 10, 100).await.is_empty());
        letters = dlq(&app, "t", "g").await;
        if letters.len() == 2 {
            break;
        }
    }
    let summary: Vec<(Value, Value, Value)> = letters
        .iter()
        .map(|l| (l["id"].clone(), l["reason"].clone(), l["attempts"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("t-1"), json!("expired"), json!(0)),
            (json!("t-2"), json!("expired"), json!(1)),
        ]
    );
}

#[tokio::test]
async fn delayed_publish_is_not_delivered_before_its_time() {
    let app = TestApp::start().await;
    app.group("d", "g", &json!({"lease_ms": 60000})).await;
    let later = app
        .publish("d", &json!({"payload": "later", "delay_ms": 1200}))
        .await;
    app.publish("d", &json!({"payload": "now"})).await;
    let got = app.fetch("d", "g", "w", 10, 0).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0]["payload"], "now",
        "the delayed one waits, the next one flows"
    );
    let delayed = next_delivery(&app, "d", "g").await;
    assert_eq!(delayed["id"], later["id"]);
    assert_eq!(delayed["attempt"], 1, "a delay is not a failed attempt");
    assert!(
        handed_out_at(&delayed, 60000) >= delayed["deliver_at"].as_u64().unwrap(),
        "not before deliver_at (Redis clock)"
    );
}

#[tokio::test]
async fn every_message_is_accounted_for() {
    let app = TestApp::start().await;
    app.group("acc", "g", &json!({"max_deliveries": 2, "lease_ms": 60000}))
        .await;
    let batch: Vec<Value> = (0..40).map(|i| json!({"payload": i})).collect();
    app.post("/topics/acc/messages:batch", &json!({"messages": batch}))
        .await;
    let got = app.fetch("acc", "g", "w", 30, 0).await;
    let mut acked = 0;
    for (i, d) in got.iter().enumerate() {
        let path = match i % 3 {
            0 => "ack",
            1 => "nack",
            _ => "reject",
        };
        let body = if path == "nack" {
            json!({"receipts": [d["receipt"]], "delay_ms": 60000})
        } else {
            json!({"receipts": [d["receipt"]]})
        };
        let reply = app
            .post(&format!("/topics/acc/groups/g/{path}"), &body)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        acked += usize::from(path == "ack");
    }
    // 10 never fetched, 10 acked, 10 scheduled for retry, 10 dead-lettered,
    // and 5 fetched again and left pending.
    app.fetch("acc", "g", "w", 5, 0).await;
    let info = app.get("/topics/acc/groups/g").await.body;
    let count = |f: &str| usize::try_from(info[f].as_u64().unwrap()).unwrap();
    assert_eq!(acked, 10);
    assert_eq!(count("pending"), 5);
    assert_eq!(count("delayed"), 10);
    assert_eq!(count("dead_lettered"), 10);
    assert_eq!(count("lag"), 5);
    assert_eq!(
        acked + count("pending") + count("delayed") + count("dead_lettered") + count("lag"),
        40,
        "every message is acked, pending, delayed, dead-lettered or not yet delivered"
    );
}

#[tokio::test]
async fn nack_and_reject_input_is_validated() {
    let app = TestApp::start().await;
    app.group("v", "g", &json!({})).await;
    app.publish("v", &json!({"payload": 1})).await;
    let d = app.fetch("v", "g", "w", 1, 0).await.remove(0);
    let r = &d["receipt"];
    for (body, field) in [
        (json!({"receipts": [r], "delay_ms": -1}), "delay_ms"),
        (
            json!({"receipts": [r], "delay_ms": 31_536_000_001_u64}),
            "delay_ms",
        ),
        (json!({"receipts": [r], "error": "x".repeat(4097)}), "error"),
        (json!({"receipts": [r], "why": "x"}), "why"),
    ] {
        let reply = app.post("/topics/v/groups/g/nack", &body).await;
        assert_eq!(reply.assert_problem(400, "invalid_field")["field"], field);
    }
    app.post("/topics/v/groups/nope/nack", &json!({"receipts": [r]}))
        .await
        .assert_problem(404, "group_not_found");
    app.post("/topics/v/groups/nope/reject", &json!({"receipts": [r]}))
        .await
        .assert_problem(404, "group_not_found");
    // The delivery is untouched by all of that.
    assert_eq!(app.ack("v", "g", &[r.as_str().unwrap()]).await.status, 200);
}
