//! Workflow steps through HTTP: ack with emit (the next step published
//! exactly once however often a step is redone) and fetch that acks first.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

fn receipt(message: &Value) -> String {
    message["receipt"].as_str().expect("receipt").to_owned()
}

#[tokio::test]
async fn ack_with_emit_publishes_the_next_step_with_causation_and_correlation() {
    let app = TestApp::start().await;
    app.group("prompts", "llm", &json!({})).await;
    let source = app
        .publish(
            "prompts",
            &json!({"payload": "hi", "correlation_id": "conv-7", "key": "u1"}),
        )
        .await;
    let got = app.fetch("prompts", "llm", "w", 1, 0).await;
    let reply = app
        .post(
            "/topics/prompts/groups/llm/ack",
            &json!({"receipts": [receipt(&got[0])], "emit": [
                {"topic": "answers", "payload": {"text": "hello"}, "key": "u1", "headers": {"type": "answer"}},
                {"topic": "audit", "payload": 1}
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["acked"], json!([receipt(&got[0])]));
    let emitted = reply.body["emitted"].as_array().expect("emitted");
    assert_eq!(emitted.len(), 2);
    assert_eq!(emitted[0]["duplicate"], false);

    let answers = app.history("answers").await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["causation_id"], source["id"]);
    assert_eq!(answers[0]["correlation_id"], "conv-7");
    assert_eq!(answers[0]["key"], "u1");
    assert_eq!(answers[0]["headers"]["type"], "answer");
    assert_eq!(answers[0]["id"], emitted[0]["id"]);

    let audit = app.history("audit").await;
    assert_eq!(audit[0]["correlation_id"], "conv-7");
    assert!(
        app.fetch("prompts", "llm", "w", 1, 0).await.is_empty(),
        "acked"
    );

    // Without a correlation id upstream, the source's id starts one.
    let plain = app
        .publish("prompts", &json!({"payload": "no correlation"}))
        .await;
    let got = app.fetch("prompts", "llm", "w", 1, 0).await;
    let reply = app
        .post(
            "/topics/prompts/groups/llm/ack",
            &json!({"receipts": [receipt(&got[0])], "emit": [{"topic": "audit", "payload": 2}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let audit = app.history("audit").await;
    assert_eq!(audit[1]["correlation_id"], plain["id"]);
    assert_eq!(audit[1]["causation_id"], plain["id"]);
}

/// A step that fails half-way through its emits (here: the second target
/// is full) is not acked; redone, it emits nothing new for the part that
/// already went out, and exactly one message per index in all.
#[tokio::test]
async fn a_redone_step_emits_each_message_exactly_once() {
    let app = TestApp::start().await;
    app.group("in", "g", &json!({})).await;
    app.put("/topics/full", &json!({"max_backlog": 1})).await;
    app.group("full", "sink", &json!({})).await;
    app.publish("full", &json!({"payload": "blocker"})).await;
    app.publish("in", &json!({"payload": "job"})).await;
    let got = app.fetch("in", "g", "w", 1, 0).await;
    let body = json!({"receipts": [receipt(&got[0])], "emit": [
        {"topic": "out", "payload": "first"},
        {"channel": "user.1", "payload": "to the user"},
        {"topic": "full", "payload": "second"}
    ]});
    app.post("/topics/in/groups/g/ack", &body)
        .await
        .assert_problem(429, "backlog_full");
    assert_eq!(app.history("out").await.len(), 1, "the first emit went out");
    let channel = app.get("/channels/user.1/messages").await;
    assert_eq!(channel.body["top_offset"], 1, "{}", channel.body);

    // The sink catches up; the worker redoes the step with the same receipt.
    let blocker = app.fetch("full", "sink", "s", 1, 0).await;
    assert_eq!(
        app.ack("full", "sink", &[&receipt(&blocker[0])])
            .await
            .status,
        StatusCode::OK
    );
    let redone = app.post("/topics/in/groups/g/ack", &body).await;
    assert_eq!(redone.status, StatusCode::OK, "{}", redone.body);
    assert_eq!(redone.body["emitted"][0]["duplicate"], true);
    assert_eq!(redone.body["emitted"][1]["duplicate"], true);
    assert_eq!(redone.body["emitted"][1]["offset"], 1);
    assert_eq!(redone.body["emitted"][2]["duplicate"], false);
    assert_eq!(app.history("out").await.len(), 1);
    let channel = app.get("/channels/user.1/messages").await;
    let messages = channel.body["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "the channel message once: {}",
        channel.body
    );
    assert_eq!(messages[0]["headers"]["causation_id"], got[0]["id"]);
    let full: Vec<Value> = app.history("full").await;
    assert_eq!(full.len(), 2, "blocker + the second emit, once");
}

/// A worker whose lease was lost emits nothing; the new holder's step is
/// the one that counts, and a late retry of the old one stays refused.
#[tokio::test]
async fn a_lost_lease_emits_nothing() {
    let app = TestApp::start().await;
    app.group("slow", "g", &json!({"lease_ms": 200})).await;
    app.publish("slow", &json!({"payload": 1})).await;
    let old = app.fetch("slow", "g", "w1", 1, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = app.fetch("slow", "g", "w2", 1, 0).await;
    assert_eq!(new.len(), 1);
    let emit = |r: String| json!({"receipts": [r], "emit": [{"topic": "next", "payload": 1}]});
    app.post("/topics/slow/groups/g/ack", &emit(receipt(&old[0])))
        .await
        .assert_problem(409, "lease_lost");
    assert_eq!(
        app.get("/topics/next").await.status,
        StatusCode::NOT_FOUND,
        "nothing was published"
    );
    let ok = app
        .post("/topics/slow/groups/g/ack", &emit(receipt(&new[0])))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(app.history("next").await.len(), 1);
}

#[tokio::test]
async fn ack_with_emit_refuses_bad_requests() {
    let app = TestApp::start().await;
    app.group("bad", "g", &json!({})).await;
    app.publish("bad", &json!({"payload": 1})).await;
    app.publish("bad", &json!({"payload": 2})).await;
    let got = app.fetch("bad", "g", "w", 2, 0).await;
    let two = json!({"receipts": [receipt(&got[0]), receipt(&got[1])],
        "emit": [{"topic": "x", "payload": 1}]});
    app.post("/topics/bad/groups/g/ack", &two)
        .await
        .assert_problem(400, "invalid_field");
    for (emit, field) in [
        (
            json!({"channel": "u1", "topic": "x", "payload": 1}),
            "emit[0].channel",
        ),
        (json!({"channel": "u 1", "payload": 1}), "emit[0].channel"),
        (
            json!({"channel": "u1", "payload": 1, "key": "k"}),
            "emit[0].key",
        ),
        (
            json!({"channel": "u1", "payload": 1, "delay_ms": 5}),
            "emit[0].delay_ms",
        ),
        (
            json!({"channel": "u1", "payload": 1, "ttl_ms": 5}),
            "emit[0].ttl_ms",
        ),
    ] {
        let body = json!({"receipts": [receipt(&got[0])], "emit": [emit]});
        let reply = app.post("/topics/bad/groups/g/ack", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{emit}"
        );
    }
    let no_target = json!({"receipts": [receipt(&got[0])], "emit": [{"payload": 1}]});
    let reply = app.post("/topics/bad/groups/g/ack", &no_target).await;
    assert_eq!(
        reply.assert_problem(400, "invalid_field")["field"],
        "emit[0].topic"
    );
    // Nothing was acked by the refused calls.
    assert_eq!(
        app.ack("bad", "g", &[&receipt(&got[0])]).await.status,
        StatusCode::OK
    );
}

/// Fetch may ack first: one round trip per message for a simple worker.
#[tokio::test]
async fn fetch_acks_the_previous_receipts_first() {
    let app = TestApp::start().await;
    app.group("loop", "g", &json!({})).await;
    for i in 0..3 {
        app.publish("loop", &json!({"payload": i})).await;
    }
    let mut previous: Option<String> = None;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut body = json!({"consumer": "w", "max": 1});
        if let Some(r) = &previous {
            body["ack"] = json!([r]);
        }
        let reply = app.post("/topics/loop/groups/g/fetch", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if let Some(r) = &previous {
            assert_eq!(reply.body["acked"], json!([r]));
            assert_eq!(reply.body["lease_lost"], json!([]));
        } else {
            assert!(reply.body.get("acked").is_none());
        }
        let messages = reply.body["messages"].as_array().expect("messages");
        previous = messages.first().map(receipt);
        seen.extend(messages.iter().map(|m| m["payload"].clone()));
    }
    assert_eq!(seen, [json!(0), json!(1), json!(2)]);
    let info = app.get("/topics/loop/groups/g").await.body;
    assert_eq!(
        (info["lag"].clone(), info["pending"].clone()),
        (json!(0), json!(0))
    );
}

/// The fetch is checked whole before anything is acked; acks of a paused
/// group still count, and a waiting fetch acks at once, not when it ends.
#[tokio::test]
async fn fetch_with_ack_checks_first_and_acks_even_when_nothing_comes() {
    let app = TestApp::start().await;
    app.group("chk", "g", &json!({})).await;
    app.publish("chk", &json!({"payload": 1})).await;
    app.publish("chk", &json!({"payload": 2})).await;
    let got = app.fetch("chk", "g", "w", 2, 0).await;
    let (first, second) = (receipt(&got[0]), receipt(&got[1]));

    let bad = json!({"consumer": "w", "max": 0, "ack": [first]});
    app.post("/topics/chk/groups/g/fetch", &bad)
        .await
        .assert_problem(400, "invalid_field");
    let bad_receipt = json!({"consumer": "w", "ack": [first, "nope"]});
    let reply = app.post("/topics/chk/groups/g/fetch", &bad_receipt).await;
    assert_eq!(
        reply.assert_problem(400, "invalid_receipt")["field"],
        "ack[1]"
    );
    assert_eq!(
        app.get("/topics/chk/groups/g").await.body["pending"],
        2,
        "nothing acked by refused calls"
    );

    app.post("/topics/chk/groups/g/pause", &json!({})).await;
    let paused = json!({"consumer": "w", "ack": [first]});
    let reply = app.post("/topics/chk/groups/g/fetch", &paused).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["acked"], json!([first]));
    assert_eq!(reply.body["messages"], json!([]));
    app.post("/topics/chk/groups/g/resume", &json!({})).await;

    // A long-poll that finds nothing: the ack is done by its first look.
    let waiting = json!({"consumer": "w", "wait_ms": 300, "ack": [second, first]});
    let reply = app.post("/topics/chk/groups/g/fetch", &waiting).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["acked"], json!([second]));
    assert_eq!(reply.body["lease_lost"], json!([first]), "acked before");
    assert_eq!(app.get("/topics/chk/groups/g").await.body["pending"], 0);
}

#[tokio::test]
async fn emitted_messages_carry_the_source_trace_on_without_an_exporter() {
    let app = TestApp::start().await;
    app.group("steps", "g", &json!({})).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let own = "00-11111111111111111111111111111111-2222222222222222-01";
    app.publish(
        "steps",
        &json!({"payload": 1, "headers": {"traceparent": traceparent}}),
    )
    .await;
    let got = app.fetch("steps", "g", "w", 1, 0).await;
    // No exporter: the delivery shows the message's traceparent as stored.
    assert_eq!(got[0]["headers"]["traceparent"], traceparent);
    let reply = app
        .post(
            "/topics/steps/groups/g/ack",
            &json!({"receipts": [receipt(&got[0])], "emit": [
                {"topic": "next", "payload": 2},
                {"topic": "next", "payload": 3, "headers": {"traceparent": own}}
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let next = app.history("next").await;
    assert_eq!(next.len(), 2);
    assert_eq!(next[0]["headers"]["traceparent"], traceparent);
    assert_eq!(
        next[1]["headers"]["traceparent"], own,
        "the worker's own wins"
    );
}
