//! Publishing through HTTP: ids, server sequence, idempotency, batches and
//! the stored envelope, against a real redis-server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{RedisServer, StreamcarProcess, TestApp, get_text};

#[tokio::test]
async fn publish_answers_201_with_id_stream_id_and_seq() {
    let app = TestApp::start().await;
    let reply = app
        .post("/topics/orders/messages", &json!({"payload": {"n": 1}}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let body = &reply.body;
    assert_eq!(body["seq"], 1);
    assert_eq!(body["duplicate"], false);
    let id = body["id"].as_str().expect("id");
    let uuid = uuid::Uuid::parse_str(id).expect("default id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "default id is a UUIDv7");
    let stream_id = body["stream_id"].as_str().expect("stream_id");
    assert!(stream_id.contains('-'), "{stream_id}");

    let reply = app
        .post(
            "/topics/orders/messages",
            &json!({"payload": null, "id": "order-42"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["id"], "order-42", "a client id is kept");
    assert_eq!(reply.body["seq"], 2);
}

#[tokio::test]
async fn sequence_has_no_gaps_under_concurrency() {
    let app = TestApp::start().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = app.client.clone();
        let url = app.url("/topics/seq/messages");
        // every fourth message repeats an idempotency key: duplicates must not use a seq
        let idem = format!("k{}", i / 4 * 4);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"payload": i, "idempotency_key": idem}))
                .send()
                .await
                .expect("send");
            TestApp::reply(resp).await
        }));
    }
    let mut seqs = BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let reply = task.await.expect("task");
        if reply.status == StatusCode::CREATED {
            created += 1;
            assert!(seqs.insert(reply.body["seq"].as_u64().expect("seq")));
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    }
    assert_eq!(created, 25, "one message per idempotency key");
    let expected: BTreeSet<u64> = (1..=25).collect();
    assert_eq!(seqs, expected, "seq is 1..=N without gaps");

    let history = app.history("seq").await;
    let stored: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        stored,
        (1..=25).collect::<Vec<_>>(),
        "stream order matches seq"
    );
}

#[tokio::test]
async fn duplicate_idempotency_key_returns_first_message_and_writes_nothing() {
    let app = TestApp::start().await;
    let first = app
        .post(
            "/topics/pay/messages",
            &json!({"payload": {"amount": 5}, "idempotency_key": "charge-1"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app
        .post(
            "/topics/pay/messages",
            &json!({"payload": {"amount": 999}, "idempotency_key": "charge-1"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true);
    for field in ["id", "stream_id", "seq"] {
        assert_eq!(again.body[field], first.body[field], "{field}");
    }
    let other = app
        .publish("pay", &json!({"payload": 1, "idempotency_key": "charge-2"}))
        .await;
    assert_eq!(other["seq"], 2, "a duplicate does not consume a seq");

    let history = app.history("pay").await;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[0]["payload"],
        json!({"amount": 5}),
        "the first payload is kept"
    );
}

#[tokio::test]
async fn twenty_concurrent_publishes_of_one_key_make_exactly_one_message() {
    let app = TestApp::start().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = app.client.clone();
        let url = app.url("/topics/race/messages");
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"payload": i, "idempotency_key": "same"}))
                .send()
                .await
                .expect("send");
            TestApp::reply(resp).await
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    let created: Vec<&Value> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .map(|r| &r.body)
        .collect();
    assert_eq!(created.len(), 1, "exactly one publish wins");
    for reply in &replies {
        assert_eq!(reply.body["id"], created[0]["id"]);
        assert_eq!(reply.body["seq"], 1);
    }
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.body["duplicate"] == true)
            .count(),
        19
    );
    assert_eq!(app.history("race").await.len(), 1);
}

#[tokio::test]
async fn idempotency_key_is_forgotten_after_the_dedup_window() {
    let app = TestApp::start().await;
    let put = app
        .put("/topics/win", &json!({"dedup_window_ms": 50}))
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    let first = app
        .publish("win", &json!({"payload": 1, "idempotency_key": "k"}))
        .await;
    assert_eq!(first["seq"], 1);
    // Poll (bounded) until Redis has expired the record; no timing is asserted.
    let mut second = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        second = app
            .publish("win", &json!({"payload": 2, "idempotency_key": "k"}))
            .await;
        if second["duplicate"] == false {
            break;
        }
    }
    assert_eq!(second["duplicate"], false, "window passed: accepted again");
    assert_eq!(second["seq"], 2);
    assert_ne!(second["id"], first["id"]);
}

#[tokio::test]
async fn history_keeps_the_full_envelope() {
    let app = TestApp::start().await;
    let published = app
        .publish(
            "env",
            &json!({
                "payload": {"prompt": "hi", "n": [1, 2.5, null]},
                "id": "m-1",
                "key": "user-7",
                "idempotency_key": "idem-1",
                "causation_id": "c-1",
                "correlation_id": "r-1",
                "ttl_ms": 60000,
                "delay_ms": 5000,
                "headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                "schema_version": "2"
            }),
        )
        .await;
    let history = app.history("env").await;
    assert_eq!(history.len(), 1);
    let m = &history[0];
    assert_eq!(m["id"], "m-1");
    assert_eq!(m["stream_id"], published["stream_id"]);
    assert_eq!(m["seq"], 1);
    assert_eq!(m["payload"], json!({"prompt": "hi", "n": [1, 2.5, null]}));
    assert_eq!(m["key"], "user-7");
    assert_eq!(m["idempotency_key"], "idem-1");
    assert_eq!(m["causation_id"], "c-1");
    assert_eq!(m["correlation_id"], "r-1");
    assert_eq!(m["schema_version"], "2");
    assert_eq!(
        m["headers"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let published_at = m["published_at"].as_u64().expect("published_at");
    assert!(published_at > 1_600_000_000_000, "Redis clock in ms");
    assert_eq!(m["expires_at"].as_u64(), Some(published_at + 60000));
    assert_eq!(m["deliver_at"].as_u64(), Some(published_at + 5000));

    // A bare message has nulls and empty headers, not missing fields.
    app.publish("env", &json!({"payload": "x"})).await;
    let history = app.history("env").await;
    let bare = &history[1];
    assert_eq!(bare["headers"], json!({}));
    assert_eq!(bare["key"], Value::Null);
    assert_eq!(bare["expires_at"], Value::Null);
}

#[tokio::test]
async fn history_pages_with_after_and_limit() {
    let app = TestApp::start().await;
    for i in 0..7 {
        app.publish("page", &json!({"payload": i})).await;
    }
    let first = app.get("/topics/page/messages?limit=3").await;
    assert_eq!(first.status, StatusCode::OK);
    let msgs = first.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["payload"], 0);
    let after = first.body["next_after"].as_str().unwrap();
    assert_eq!(after, msgs[2]["stream_id"]);
    let second = app
        .get(&format!("/topics/page/messages?limit=3&after={after}"))
        .await;
    let msgs = second.body["messages"].as_array().unwrap();
    let payloads: Vec<&Value> = msgs.iter().map(|m| &m["payload"]).collect();
    assert_eq!(payloads, [&json!(3), &json!(4), &json!(5)]);
    let all = app.history("page").await;
    assert_eq!(all.len(), 7);
    let last = all[6]["stream_id"].as_str().unwrap();
    let end = app
        .get(&format!("/topics/page/messages?after={last}"))
        .await;
    assert_eq!(end.body["messages"], json!([]));
    assert_eq!(end.body["next_after"], Value::Null);
}

#[tokio::test]
async fn batch_publishes_in_order_and_one_bad_item_fails_alone() {
    let app = TestApp::start().await;
    app.publish("b", &json!({"payload": "before", "idempotency_key": "old"}))
        .await;
    let reply = app
        .post(
            "/topics/b/messages:batch",
            &json!({"messages": [
                {"payload": 1},
                {"payload": 2, "ttl_ms": "soon"},
                {"payload": 3, "idempotency_key": "old"},
                {"payload": 4, "idempotency_key": "new"},
                {"payload": 5, "idempotency_key": "new"},
                {"nopayload": 6},
                {"payload": 7, "key": ""}
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(errors.len(), 7);

    assert_eq!(results[0]["seq"], 2);
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(errors[0], Value::Null);

    assert_eq!(results[1], Value::Null);
    assert_eq!(errors[1]["status"], 400);
    assert_eq!(errors[1]["field"], "messages[1].ttl_ms");

    assert_eq!(
        results[2]["duplicate"], true,
        "duplicate of an earlier publish"
    );
    assert_eq!(results[2]["seq"], 1);

    assert_eq!(results[3]["seq"], 3);
    assert_eq!(results[4]["duplicate"], true, "duplicate inside the batch");
    assert_eq!(results[4]["id"], results[3]["id"]);

    assert_eq!(results[5], Value::Null);
    assert_eq!(errors[5]["field"], "messages[5].nopayload", "{}", errors[5]);
    assert_eq!(errors[6]["field"], "messages[6].key");

    let payloads: Vec<Value> = app
        .history("b")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!("before"), json!(1), json!(4)]);
}

#[tokio::test]
async fn batch_size_is_bounded() {
    let app = TestApp::start().await;
    let empty = app
        .post("/topics/b/messages:batch", &json!({"messages": []}))
        .await;
    empty.assert_problem(400, "invalid_field");
    let many: Vec<Value> = (0..1001).map(|i| json!({"payload": i})).collect();
    let too_many = app
        .post("/topics/b/messages:batch", &json!({"messages": many}))
        .await;
    assert_eq!(
        too_many.assert_problem(400, "invalid_field")["field"],
        "messages"
    );
    let full: Vec<Value> = (0..1000).map(|i| json!({"payload": i})).collect();
    let ok = app
        .post("/topics/b/messages:batch", &json!({"messages": full}))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["results"][999]["seq"], 1000);
}

/// The request's `traceparent` is the sidecar's addition: it never counts
/// against the message's 64 headers (a full message used to become a 400),
/// a message's own traceparent wins, and a malformed one is dropped.
#[tokio::test]
async fn traceparent_joins_a_full_set_of_headers_after_validation() {
    let app = TestApp::start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers: serde_json::Map<String, Value> =
        (0..64).map(|i| (format!("h{i:02}"), json!("v"))).collect();
    let send = |body: Value, trace: &'static str| {
        let request = app
            .client
            .post(app.url("/topics/tp/messages"))
            .header("traceparent", trace)
            .json(&body);
        async move { TestApp::reply(request.send().await.expect("send")).await }
    };

    let full = send(json!({"payload": 1, "headers": headers}), traceparent).await;
    assert_eq!(full.status, StatusCode::CREATED, "{}", full.body);
    let own = send(
        json!({"payload": 2, "headers": {"traceparent": "mine"}}),
        traceparent,
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let bad = send(json!({"payload": 3}), "not-a-trace").await;
    assert_eq!(bad.status, StatusCode::CREATED, "{}", bad.body);

    let batch = app
        .client
        .post(app.url("/topics/tp/messages:batch"))
        .header("traceparent", traceparent)
        .json(&json!({"messages": [{"payload": 4, "headers": headers}]}))
        .send()
        .await
        .expect("send");
    let batch = TestApp::reply(batch).await;
    assert_eq!(batch.body["errors"][0], Value::Null, "{}", batch.body);

    // The client's own limit still holds.
    let mut too_many = headers.clone();
    too_many.insert("h64".into(), json!("v"));
    let refused = send(json!({"payload": 5, "headers": too_many}), traceparent).await;
    assert_eq!(
        refused.assert_problem(400, "invalid_field")["field"],
        "headers"
    );

    let history = app.history("tp").await;
    assert_eq!(history.len(), 4);
    assert_eq!(history[0]["headers"].as_object().unwrap().len(), 65);
    assert_eq!(history[0]["headers"]["traceparent"], traceparent);
    assert_eq!(history[1]["headers"]["traceparent"], "mine");
    assert_eq!(
        history[2]["headers"],
        json!({}),
        "a malformed traceparent is dropped"
    );
    assert_eq!(history[3]["headers"]["traceparent"], traceparent);
}

/// Concurrent single publishes to one topic share script calls (group
/// commit): each caller must still get exactly its own message's answer.
/// 300 publishes at once, every third sharing an idempotency key with
/// another caller, one topic with a backlog limit that refuses some.
#[tokio::test]
async fn concurrent_publishes_each_get_their_own_answer() {
    let app = std::sync::Arc::new(TestApp::start().await);
    app.put("/topics/busy", &json!({"max_backlog": 250})).await;
    app.group("busy", "g", &json!({})).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let app = app.clone();
        tasks.spawn(async move {
            let mut body = json!({"payload": {"n": i}});
            if i % 3 == 0 {
                body["idempotency_key"] = json!(format!("k{}", i / 6));
            }
            (i, app.post("/topics/busy/messages", &body).await)
        });
    }
    let mut written = std::collections::BTreeMap::new();
    let mut by_key: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, reply) = done.expect("task");
        match reply.status {
            StatusCode::CREATED => {
                assert_eq!(reply.body["duplicate"], false);
                let seq = reply.body["seq"].as_u64().unwrap();
                assert!(
                    written.insert(seq, (i, reply.body.clone())).is_none(),
                    "seq {seq} twice"
                );
            }
            StatusCode::OK => assert_eq!(reply.body["duplicate"], true, "{}", reply.body),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(reply.body["code"], "backlog_full");
                refused += 1;
                continue;
            }
            other => panic!("publish {i}: {other} {}", reply.body),
        }
        if i % 3 == 0 {
            by_key
                .entry(format!("k{}", i / 6))
                .or_default()
                .push(reply.body);
        }
    }
    // Seqs without gaps; exactly the backlog limit written.
    assert_eq!(written.len(), 250, "refused {refused}");
    assert_eq!(
        written.keys().copied().collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>()
    );
    // Each answer names the caller's own message.
    let history = app.history("busy").await;
    assert_eq!(history.len(), 250);
    for m in &history {
        let (i, answer) = &written[&m["seq"].as_u64().unwrap()];
        assert_eq!(m["id"], answer["id"]);
        assert_eq!(m["stream_id"], answer["stream_id"]);
        assert_eq!(
            m["payload"]["n"], *i,
            "seq {} answered to the wrong caller",
            m["seq"]
        );
    }
    // Callers sharing an idempotency key got one message's id and seq.
    for (key, answers) in by_key {
        let firsts: BTreeSet<String> = answers.iter().map(|a| a["id"].to_string()).collect();
        assert_eq!(firsts.len(), 1, "{key}: {answers:?}");
    }
}

/// A single publish is served without the router when its path is plain
/// (`src/http/dispatch.rs`); one whose names are percent-escaped goes
/// through the router, which decodes them. Both are the same publish, and
/// both are measured under the route's template (a process of its own, so
/// the metrics count only this test's calls).
#[tokio::test]
async fn a_publish_is_the_same_whichever_way_it_is_routed() {
    let redis = RedisServer::start();
    let sc = StreamcarProcess::start(&redis.url(), &[]).await;
    let client = reqwest::Client::new();
    let topic = |name: &str| format!("{}/v1/tenants/t/topics/{name}/messages", sc.base);
    let send = |url: String, body: &'static str| {
        let request = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        async move { TestApp::reply(request.send().await.expect("publish")).await }
    };
    let plain = send(topic("a.b"), r#"{"payload": 1}"#).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{}", plain.body);
    let escaped = send(topic("a%2Eb"), r#"{"payload": 2}"#).await;
    assert_eq!(escaped.status, StatusCode::CREATED, "{}", escaped.body);
    assert_eq!(escaped.body["seq"], 2, "the same topic: {}", escaped.body);
    let history: Value = client
        .get(topic("a.b"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("history JSON");
    assert_eq!(support::payloads(&history), [&json!(1), &json!(2)]);

    // Refusals are answered and measured the same way too.
    send(topic("a.b"), "{")
        .await
        .assert_problem(400, "invalid_body");
    send(topic("a%2Eb"), "{")
        .await
        .assert_problem(400, "invalid_body");
    let metrics = get_text(&client, format!("{}/metrics", sc.base)).await;
    let count = |status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("streamcar_http_request_duration_seconds_count{")
                    && l.contains(r#"route="/v1/tenants/{tenant}/topics/{topic}/messages""#)
                    && l.contains(r#"method="POST""#)
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("201"), Some(2), "{metrics}");
    assert_eq!(count("400"), Some(2), "{metrics}");
}
