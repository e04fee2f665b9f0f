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
        assert_eq!(
            reply.content_type(),
            "application/problem+json",
            "{}",
            reply.body
        );
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
/// or come from two topics whose groups share a name: duplicates are
/// detected within the delivery's source entry, not by the message id.
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
    // Each still carries the idempotency key the contract names.
    for message in app.history("audit").await {
        assert_eq!(message["idempotency_key"], "emit:worker:o-1:0", "{message}");
    }
}

/// A join of 1,000 parts (names of 128 bytes) with odd values: numbers of
/// 20+ digits, unicode, `null`, deep nesting, errors that are objects. One
/// aggregate, every value exactly as sent, in the aggregate and in `GET`.
#[tokio::test]
async fn a_join_of_1000_parts_with_odd_values_aggregates_once_and_exactly() {
    let app = TestApp::start().await;
    let names: Vec<String> = (0..1000).map(|i| format!("{i:0>128}")).collect();
    let declared = app
        .put(
            "/topics/agg/joins/big",
            &json!({"parts": names, "ttl_ms": 600000, "key": "ключ-😀", "correlation_id": "c"}),
        )
        .await;
    assert_eq!(declared.status, StatusCode::CREATED, "{}", declared.body);
    assert_eq!(declared.body["missing"].as_array().unwrap().len(), 1000);
    let value = |i: usize| -> String {
        match i % 5 {
            0 => format!("{{\"result\": 123456789012345678901234567890{i}}}"),
            1 => format!("{{\"result\": \"é€😀\\u0000\\ud83d\\ude00 {i}\"}}"),
            2 => "{\"result\": null}".to_owned(),
            3 => format!("{{\"result\": {}{i}{}}}", "[".repeat(100), "]".repeat(100)),
            _ => format!("{{\"error\": {{\"code\": {i}, \"n\": -1.5e300}}}}"),
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let url = app.url(&format!("/topics/agg/joins/big/parts/{name}"));
        let client = app.client.clone();
        let body = value(i);
        tasks.spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("part");
            (r.status(), r.text().await.unwrap_or_default())
        });
        while tasks.len() >= 32 {
            let (status, body) = tasks.join_next().await.unwrap().unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let history = app.history("agg").await;
    assert_eq!(history.len(), 1, "one aggregate");
    let aggregate = &history[0];
    assert_eq!(aggregate["payload"]["status"], "failed");
    assert_eq!(aggregate["key"], "ключ-😀");
    let results = aggregate["payload"]["results"].as_object().unwrap();
    let errors = aggregate["payload"]["errors"].as_object().unwrap();
    assert_eq!((results.len(), errors.len()), (800, 200));
    // Every value exactly as sent (compared as JSON text of the value).
    let info = app.get("/topics/agg/joins/big").await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.body);
    for (i, name) in names.iter().enumerate() {
        let sent: Value = serde_json::from_str(&value(i)).unwrap();
        let (field, kind) = if i % 5 == 4 {
            (&sent["error"], "errors")
        } else {
            (&sent["result"], "results")
        };
        assert_eq!(&aggregate["payload"][kind][name], field, "part {i}");
        assert_eq!(&info.body[kind][name], field, "part {i}");
    }
    // The raw text keeps every digit.
    let raw = support::get_text(&app.client, app.url("/topics/agg/messages")).await;
    assert!(
        raw.contains("1234567890123456789012345678900"),
        "digits kept"
    );
}

/// The `bytes` bound of a join follows `--max-body`: the part that would
/// pass it is `413 join_too_large` and recorded nothing; the join still
/// completes with smaller parts. Bodies over `--max-body` are `413` before
/// anything is read.
#[tokio::test]
async fn a_join_over_max_body_refuses_the_part_that_passes_it() {
    let app = TestApp::start_with(|c| c.max_body = 4096).await;
    let parts: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    app.put(
        "/topics/agg/joins/j",
        &json!({"parts": parts, "ttl_ms": 60000}),
    )
    .await;
    let big = "x".repeat(1800);
    for p in ["p0", "p1"] {
        let r = app
            .post(
                &format!("/topics/agg/joins/j/parts/{p}"),
                &json!({"result": big}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    app.post("/topics/agg/joins/j/parts/p2", &json!({"result": big}))
        .await
        .assert_problem(413, "join_too_large");
    app.post(
        "/topics/agg/joins/j/parts/p2",
        &json!({"result": "x".repeat(5000)}),
    )
    .await
    .assert_problem(413, "payload_too_large");
    let info = app.get("/topics/agg/joins/j").await.body;
    assert_eq!(info["missing"], json!(["p2"]), "nothing recorded");
    let done = app
        .post("/topics/agg/joins/j/parts/p2", &json!({"result": 1}))
        .await;
    assert_eq!(done.body["state"], "complete", "{}", done.body);
    assert_eq!(app.history("agg").await.len(), 1);
    // A declaration over the body limit: 413, nothing declared.
    let names: Vec<String> = (0..1000).map(|i| format!("part-{i}")).collect();
    app.put(
        "/topics/agg/joins/huge",
        &json!({"parts": names, "ttl_ms": 1000}),
    )
    .await
    .assert_problem(413, "payload_too_large");
    app.get("/topics/agg/joins/huge")
        .await
        .assert_problem(404, "join_not_found");
}

/// ttl_ms at and past its limits, in every JSON shape.
#[tokio::test]
async fn join_ttl_and_lineage_limits() {
    let app = TestApp::start().await;
    for (ttl, ok) in [
        (json!(1), true),
        (json!(604_800_000_u64), true),
        (json!(604_800_001_u64), false),
        (json!(0), false),
        (json!(-1), false),
        (json!(1.5), false),
        (json!("1000"), false),
        (json!(1e300), false),
        (json!(18_446_744_073_709_551_615_u64), false),
        (json!(null), false),
    ] {
        let reply = app
            .put(
                "/topics/agg/joins/ttl",
                &json!({"parts": ["a"], "ttl_ms": ttl}),
            )
            .await;
        not_5xx(&reply);
        if ok {
            assert!(reply.status.is_success(), "{ttl}: {}", reply.body);
            assert_eq!(app.delete("/topics/agg").await.status, 204);
        } else {
            assert_eq!(
                reply.assert_problem(400, "invalid_field")["field"],
                "ttl_ms",
                "{ttl}"
            );
        }
    }
    for (field, value, ok) in [
        ("key", json!("k".repeat(256)), true),
        ("key", json!("k".repeat(257)), false),
        ("key", json!("é".repeat(128)), true),
        ("key", json!("é".repeat(129)), false),
        ("key", json!("a\nb"), false),
        ("key", json!("a\u{85}b"), false),
        ("key", json!(7), false),
        ("correlation_id", json!(""), false),
        ("correlation_id", json!("c\u{0}"), false),
        ("correlation_id", json!(["c"]), false),
        ("correlation_id", json!("😀".repeat(64)), true),
    ] {
        let mut body = json!({"parts": ["a"], "ttl_ms": 60000});
        body[field] = value.clone();
        let reply = app.put("/topics/agg/joins/lineage", &body).await;
        not_5xx(&reply);
        if ok {
            assert!(reply.status.is_success(), "{value}: {}", reply.body);
            assert_eq!(reply.body[field], value);
            assert_eq!(app.delete("/topics/agg").await.status, 204);
        } else {
            assert_eq!(
                reply.assert_problem(400, "invalid_field")["field"],
                field,
                "{value}"
            );
        }
    }
}

/// A topic deleted and created again under the same name is a new
/// incarnation: parts for the old join are `404`, the same join name can be
/// declared afresh, and old parts count for nothing in it.
#[tokio::test]
async fn joins_of_a_deleted_and_recreated_topic() {
    let app = TestApp::start().await;
    let body = json!({"parts": ["a", "b"], "ttl_ms": 60000});
    app.put("/topics/agg/joins/j", &body).await;
    app.post("/topics/agg/joins/j/parts/a", &json!({"result": "old"}))
        .await;
    assert_eq!(app.delete("/topics/agg").await.status, 204);
    app.post("/topics/agg/joins/j/parts/b", &json!({"result": "late"}))
        .await
        .assert_problem(404, "join_not_found");
    app.get("/topics/agg/joins/j")
        .await
        .assert_problem(404, "join_not_found");
    assert_eq!(
        app.get("/topics/agg").await.status,
        StatusCode::NOT_FOUND,
        "a refused part declares no topic"
    );
    // Declared again: a fresh join, the old part forgotten.
    let again = app.put("/topics/agg/joins/j", &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["missing"], json!(["a", "b"]));
    let b = app
        .post("/topics/agg/joins/j/parts/b", &json!({"result": "new b"}))
        .await;
    assert_eq!(b.body["state"], "open", "{}", b.body);
    app.post("/topics/agg/joins/j/parts/a", &json!({"result": "new a"}))
        .await;
    let history = app.history("agg").await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0]["payload"]["results"],
        json!({"a": "new a", "b": "new b"})
    );

    // A finished join declared again (same or other config) publishes
    // nothing more.
    let same = app.put("/topics/agg/joins/j", &body).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
    assert_eq!(same.body["state"], "complete");
    app.put(
        "/topics/agg/joins/j",
        &json!({"parts": ["a"], "ttl_ms": 60000}),
    )
    .await
    .assert_problem(409, "join_config_conflict");
    assert_eq!(app.history("agg").await.len(), 1);
}

/// Declares, parts, GETs and topic deletes of one join name race each other
/// from two sidecars: every answer is a 2xx or a 4xx problem, and each
/// incarnation's join publishes at most one aggregate.
#[tokio::test]
async fn join_calls_racing_topic_deletes_never_5xx() {
    let app = TestApp::start().await;
    let second = streamcar::start(&streamcar::config::Config::for_redis(app.redis.url()))
        .await
        .expect("second sidecar");
    let bases = [app.base.clone(), format!("http://{}", second.addr())];
    let path = |base: &str, p: &str| format!("{base}/v1/tenants/{}/topics/race{p}", app.tenant);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = app.client.clone();
        let base = bases[worker % 2].clone();
        let urls = (
            path(&base, "/joins/j"),
            path(&base, "/joins/j/parts/a"),
            path(&base, "/joins/j/parts/b"),
            path(&base, ""),
        );
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for round in 0..60 {
                let request = match (worker + round) % 5 {
                    0 => client
                        .put(&urls.0)
                        .json(&json!({"parts": ["a", "b"], "ttl_ms": 60000})),
                    1 => client.post(&urls.1).json(&json!({"result": round})),
                    2 => client.post(&urls.2).json(&json!({"error": "e"})),
                    3 => client.get(&urls.0),
                    _ => client.delete(&urls.3),
                };
                let r = request.send().await.expect("send");
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                statuses.push((status, body));
            }
            statuses
        });
    }
    while let Some(done) = tasks.join_next().await {
        for (status, body) in done.unwrap() {
            assert!(!status.is_server_error(), "{status}: {body}");
        }
    }
    second.shutdown().await.expect("shutdown");
}

/// 100 emits go out once each; 101 are a 400 with nothing emitted or acked.
#[tokio::test]
async fn ack_with_100_emits_and_with_101() {
    let app = TestApp::start().await;
    app.group("in", "g", &json!({})).await;
    app.publish("in", &json!({"payload": "job"})).await;
    let got = app.fetch("in", "g", "w", 1, 0).await;
    let emits = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                if i % 10 == 9 {
                    json!({"channel": format!("user.{i}"), "payload": i})
                } else {
                    json!({"topic": format!("out{}", i % 3), "payload": i, "key": "k"})
                }
            })
            .collect()
    };
    let path = "/topics/in/groups/g/ack";
    let too_many = app
        .post(
            path,
            &json!({"receipts": [receipt(&got[0])], "emit": emits(101)}),
        )
        .await;
    too_many.assert_problem(400, "invalid_field");
    for i in 0..3 {
        let topic = app.get(&format!("/topics/out{i}")).await;
        assert_eq!(topic.status, StatusCode::NOT_FOUND, "nothing emitted");
    }
    let body = json!({"receipts": [receipt(&got[0])], "emit": emits(100)});
    let reply = app.post(path, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let emitted = reply.body["emitted"].as_array().unwrap();
    assert_eq!(emitted.len(), 100);
    assert!(emitted.iter().all(|e| e["duplicate"] == false));
    let total: usize = [
        app.history("out0").await.len(),
        app.history("out1").await.len(),
        app.history("out2").await.len(),
    ]
    .iter()
    .sum();
    assert_eq!(total, 90);
    // The same ack again: the lease is gone (acked), nothing more emitted.
    app.post(path, &body)
        .await
        .assert_problem(409, "lease_lost");
    assert_eq!(app.history("out0").await.len(), 30);
}

/// A step whose emits pass the tenant's quota is a 429 with nothing acked;
/// redone until it goes through, each emit is published once.
#[tokio::test]
async fn a_rate_limited_step_redone_emits_each_message_once() {
    let app = TestApp::start().await;
    app.group("in", "g", &json!({})).await;
    app.publish("in", &json!({"payload": "job"})).await;
    let limits = app
        .put("/limits", &json!({"publish_per_sec": 2, "burst": 2}))
        .await;
    assert!(limits.status.is_success(), "{}", limits.body);
    let got = app.fetch("in", "g", "w", 1, 0).await;
    let emit: Vec<Value> = (0..5)
        .map(|i| json!({"topic": "out", "payload": i}))
        .collect();
    let body = json!({"receipts": [receipt(&got[0])], "emit": emit});
    let mut refused = 0;
    let mut done = None;
    for _ in 0..100 {
        let reply = app.post("/topics/in/groups/g/ack", &body).await;
        if reply.status == StatusCode::OK {
            done = Some(reply);
            break;
        }
        reply.assert_problem(429, "rate_limited");
        assert!(reply.headers.contains_key("retry-after"));
        refused += 1;
        let g = app.get("/topics/in/groups/g").await.body;
        assert_eq!(g["pending"], 1, "nothing acked: {g}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = done.expect("the step went through");
    assert!(refused > 0, "the quota refused at least once");
    let payloads: Vec<Value> = app
        .history("out")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(payloads, [0, 1, 2, 3, 4], "each emit once, in order");
    assert_eq!(done.body["acked"].as_array().unwrap().len(), 1);
}

/// Emits from a receipt whose group was deleted, or of an earlier
/// incarnation of the topic, are refused (404 / 409) and publish nothing;
/// a lowered `lease_ms` does not cut a lease already granted.
#[tokio::test]
async fn emits_from_stale_receipts_publish_nothing() {
    let app = TestApp::start().await;
    let emit = json!([{"topic": "out", "payload": 1}, {"channel": "c1", "payload": 2}]);
    app.group("in", "g", &json!({"lease_ms": 30000})).await;
    app.publish("in", &json!({"payload": "a"})).await;
    app.publish("in", &json!({"payload": "b"})).await;
    let got = app.fetch("in", "g", "w", 2, 0).await;
    assert_eq!(got.len(), 2);
    // lease_ms lowered after the lease was granted: still ours.
    app.group("in", "g", &json!({"lease_ms": 100})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.fetch("in", "g", "other", 1, 0).await.is_empty());
    let ok = app
        .post(
            "/topics/in/groups/g/ack",
            &json!({"receipts": [receipt(&got[0])], "emit": emit}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // The group deleted under the worker.
    assert_eq!(app.delete("/topics/in/groups/g").await.status, 204);
    let gone = app
        .post(
            "/topics/in/groups/g/ack",
            &json!({"receipts": [receipt(&got[1])], "emit": [{"topic": "out", "payload": "x"}]}),
        )
        .await;
    gone.assert_problem(404, "group_not_found");

    // The topic deleted and declared again, the group with it.
    app.group("in", "g", &json!({})).await;
    app.publish("in", &json!({"payload": "c"})).await;
    let old = app.fetch("in", "g", "w", 1, 0).await;
    assert_eq!(app.delete("/topics/in").await.status, 204);
    app.group("in", "g", &json!({})).await;
    app.publish("in", &json!({"payload": "d"})).await;
    let stale = app
        .post(
            "/topics/in/groups/g/ack",
            &json!({"receipts": [receipt(&old[0])], "emit": [{"topic": "out", "payload": "x"}]}),
        )
        .await;
    stale.assert_problem(409, "lease_lost");
    assert_eq!(app.history("out").await.len(), 1, "only the first step's");
}

/// The documented limit: a redo later than the target topic's
/// `dedup_window_ms` publishes its emits again.
#[tokio::test]
async fn a_redo_after_the_target_dedup_window_emits_again_as_documented() {
    let app = TestApp::start().await;
    app.put("/topics/out", &json!({"dedup_window_ms": 1})).await;
    app.put("/topics/full", &json!({"max_backlog": 1})).await;
    app.group("full", "sink", &json!({})).await;
    app.publish("full", &json!({"payload": "blocker"})).await;
    app.group("in", "g", &json!({})).await;
    app.publish("in", &json!({"payload": "job"})).await;
    let got = app.fetch("in", "g", "w", 1, 0).await;
    let body = json!({"receipts": [receipt(&got[0])], "emit": [
        {"topic": "out", "payload": 1}, {"topic": "full", "payload": 2}]});
    app.post("/topics/in/groups/g/ack", &body)
        .await
        .assert_problem(429, "backlog_full");
    let blocker = app.fetch("full", "sink", "s", 1, 0).await;
    app.ack("full", "sink", &[&receipt(&blocker[0])]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let redone = app.post("/topics/in/groups/g/ack", &body).await;
    assert_eq!(redone.status, StatusCode::OK, "{}", redone.body);
    assert_eq!(redone.body["emitted"][0]["duplicate"], false);
    assert_eq!(app.history("out").await.len(), 2, "the window had passed");
}

/// Fetch with `ack`: receipts of another group or topic are lease_lost and
/// touch nothing; 1,000 receipts ack in one call; 1,001 are a 400 with
/// nothing acked; a receipt given twice is acked once and reported once.
#[tokio::test]
async fn fetch_with_ack_of_foreign_duplicate_and_1000_receipts() {
    let app = TestApp::start().await;
    for g in ["g", "h"] {
        app.group("in", g, &json!({})).await;
    }
    app.group("other", "g", &json!({})).await;
    app.publish("other", &json!({"payload": "x"})).await;
    let batch: Vec<Value> = (0..1000).map(|i| json!({"payload": i})).collect();
    for chunk in batch.chunks(500) {
        let r = app
            .post("/topics/in/messages:batch", &json!({"messages": chunk}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let mine = app.fetch("in", "g", "w", 1000, 0).await;
    assert_eq!(mine.len(), 1000);
    let theirs = app.fetch("in", "h", "w", 1, 0).await;
    let elsewhere = app.fetch("other", "g", "w", 1, 0).await;
    let fetch = |ack: Vec<String>| {
        let app = &app;
        async move {
            app.post(
                "/topics/in/groups/g/fetch",
                &json!({"consumer": "w", "ack": ack}),
            )
            .await
        }
    };
    let foreign = fetch(vec![receipt(&theirs[0]), receipt(&elsewhere[0])]).await;
    assert_eq!(foreign.status, StatusCode::OK, "{}", foreign.body);
    assert_eq!(foreign.body["acked"], json!([]));
    assert_eq!(foreign.body["lease_lost"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/topics/in/groups/h").await.body["pending"], 1);
    assert_eq!(app.get("/topics/other/groups/g").await.body["pending"], 1);

    let all: Vec<String> = mine.iter().map(receipt).collect();
    let mut over = all.clone();
    over.push(receipt(&theirs[0]));
    fetch(over).await.assert_problem(400, "invalid_field");
    assert_eq!(app.get("/topics/in/groups/g").await.body["pending"], 1000);

    let twice = fetch(vec![all[0].clone(), all[0].clone()]).await;
    assert_eq!(twice.status, StatusCode::OK, "{}", twice.body);
    assert_eq!(twice.body["acked"], json!([all[0]]), "{}", twice.body);
    assert_eq!(twice.body["lease_lost"], json!([]), "{}", twice.body);

    let rest = fetch(all[1..].to_vec()).await;
    assert_eq!(rest.status, StatusCode::OK, "{}", rest.body);
    assert_eq!(rest.body["acked"].as_array().unwrap().len(), 999);
    let g = app.get("/topics/in/groups/g").await.body;
    assert_eq!(
        (g["pending"].clone(), g["lag"].clone()),
        (json!(0), json!(0))
    );

    // The same for nack and reject: settled once, listed once.
    app.publish("in", &json!({"payload": "again"})).await;
    let got = app.fetch("in", "g", "w", 1, 0).await;
    let r = receipt(&got[0]);
    let nack = app
        .post("/topics/in/groups/g/nack", &json!({"receipts": [r, r]}))
        .await;
    assert_eq!(nack.status, StatusCode::OK, "{}", nack.body);
    assert_eq!(
        (&nack.body["nacked"], &nack.body["lease_lost"]),
        (&json!([r]), &json!([])),
        "{}",
        nack.body
    );
    app.publish("in", &json!({"payload": "once more"})).await;
    let got = app.fetch("in", "h", "w", 2, 0).await;
    let r = receipt(got.last().unwrap());
    let reject = app
        .post("/topics/in/groups/h/reject", &json!({"receipts": [r, r]}))
        .await;
    assert_eq!(reject.status, StatusCode::OK, "{}", reject.body);
    assert_eq!(
        (&reject.body["rejected"], &reject.body["lease_lost"]),
        (&json!([r]), &json!([])),
        "{}",
        reject.body
    );
}

/// An ack (fetch with `ack`, or ack with emit) racing a nack of the same
/// receipt: exactly one of them wins, and the message is either done (and
/// its emit out once) or back for a retry (and nothing emitted).
#[tokio::test]
async fn acks_racing_nacks_of_one_receipt_settle_it_once() {
    let app = TestApp::start().await;
    let backoff = json!({"initial_ms": 1, "max_ms": 1, "multiplier": 1.0, "jitter": 0.0});
    app.group(
        "in",
        "g",
        &json!({"backoff": backoff, "max_deliveries": 100}),
    )
    .await;
    for i in 0..20 {
        app.publish("in", &json!({"payload": i})).await;
    }
    let got = app.fetch("in", "g", "w", 20, 0).await;
    assert_eq!(got.len(), 20);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, m) in got.iter().enumerate() {
        let r = receipt(m);
        let id = m["id"].as_str().unwrap().to_owned();
        let client = app.client.clone();
        let (ack_url, fetch_url, nack_url) = (
            app.url("/topics/in/groups/g/ack"),
            app.url("/topics/in/groups/g/fetch"),
            app.url("/topics/in/groups/g/nack"),
        );
        tasks.spawn(async move {
            let ack = if i % 2 == 0 {
                client
                    .post(ack_url)
                    .json(&json!({"receipts": [r], "emit": [{"topic": "out", "payload": i}]}))
            } else {
                client
                    .post(fetch_url)
                    .json(&json!({"consumer": format!("c{i}"), "ack": [r], "max": 1}))
            };
            let nack = client.post(nack_url).json(&json!({"receipts": [r]}));
            let (a, n) = tokio::join!(ack.send(), nack.send());
            let (a, n) = (a.expect("ack"), n.expect("nack"));
            let (a_status, n_status) = (a.status(), n.status());
            let a_body: Value = a.json().await.unwrap_or_default();
            let n_body: Value = n.json().await.unwrap_or_default();
            (i, id, a_status, a_body, n_status, n_body)
        });
    }
    let mut acked_ids = Vec::new();
    let mut emitted = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, id, a_status, a_body, n_status, n_body) = done.unwrap();
        assert!(!a_status.is_server_error() && !n_status.is_server_error());
        let ack_won =
            a_status == StatusCode::OK && a_body["acked"].as_array().is_some_and(|a| a.len() == 1);
        let nack_won =
            n_status == StatusCode::OK && n_body["nacked"].as_array().is_some_and(|a| a.len() == 1);
        assert!(ack_won != nack_won, "{i}: ack {a_body} nack {n_body}");
        if ack_won {
            acked_ids.push(id);
            if i % 2 == 0 {
                emitted += 1;
            }
        }
    }
    // Every message not acked comes back, and nothing acked does.
    let mut back = Vec::new();
    for _ in 0..50 {
        let more = app.fetch("in", "g", "x", 100, 0).await;
        for m in &more {
            back.push(m["id"].as_str().unwrap().to_owned());
            app.ack("in", "g", &[&receipt(m)]).await;
        }
        if back.len() + acked_ids.len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(back.len() + acked_ids.len(), 20);
    assert!(back.iter().all(|id| !acked_ids.contains(id)));
    // An ack with emit that lost to the nack may have emitted (the emits
    // stand, a redo is a duplicate); one that won emitted exactly once.
    assert!(app.history("out").await.len() >= emitted);
}

/// A push app on a loopback port that answers each request with
/// `answer(payload, attempt)`: (status, body).
async fn push_app(
    answer: impl Fn(&Value, u32) -> (u16, String) + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let answer = answer.clone();
                    async move {
                        let attempt = req
                            .headers()
                            .get("streamcar-attempt")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let body: hyper::body::Incoming = req.into_body();
                        let bytes = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let payload: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                        let (status, text) = answer(&payload, attempt);
                        let mut response =
                            hyper::Response::new(Full::new(bytes::Bytes::from(text)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (url, task)
}

/// Push answers with an emit the sidecar cannot use, or cannot read whole,
/// are never a plain ack: the delivery is nacked with the reason (and
/// dead-lettered with it once out of attempts), so no next step is lost.
/// Answers that are not a JSON object are a plain ack, as documented.
#[tokio::test]
async fn push_answers_with_unusable_emits_are_nacked_never_acked_without_their_step() {
    let (url, server) = push_app(|payload, attempt| {
        let case = payload["case"].as_str().unwrap_or_default().to_owned();
        let good = json!({"emit": [{"topic": "next", "payload": case}]}).to_string();
        let body = match (case.as_str(), attempt) {
            // Over the 1 MiB the sidecar reads: cut off.
            ("huge", 1) => format!(
                "{{\"pad\": \"{}\", \"emit\": [{{\"topic\": \"next\", \"payload\": \"huge\"}}]}}",
                "x".repeat(1_200_000)
            ),
            ("unclosed", 1) => r#"{"emit": [{"topic": "next", "payload": "unclosed"}]"#.to_owned(),
            ("huge" | "unclosed" | "nested", _) => good,
            ("bad_target", _) => r#"{"emit": [{"topic": "bad name", "payload": 1}]}"#.to_owned(),
            ("channel_key", _) => {
                r#"{"emit": [{"channel": "c1", "payload": 1, "key": "k"}]}"#.to_owned()
            }
            ("too_many", _) => {
                json!({"emit": vec![json!({"topic": "next", "payload": 0}); 101]}).to_string()
            }
            ("array", _) => format!("[{good}]"),
            ("string", _) => "\"emit\"".to_owned(),
            _ => String::new(),
        };
        (200, body)
    })
    .await;
    let backoff = json!({"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0});
    let text = json!({"subscriptions": [{
        "name": "adv", "tenant": "acme", "topic": "orders", "group": "push", "url": url,
        "group_config": {"backoff": backoff, "max_deliveries": 2}}]})
    .to_string();
    let subscriptions = streamcar::push::spec::parse(&text, true).expect("valid");
    let app = TestApp::start_with(move |c| c.subscriptions = subscriptions).await;
    let base = format!("{}/v1/tenants/acme", app.base);
    let cases = [
        "huge",
        "unclosed",
        "nested",
        "bad_target",
        "channel_key",
        "too_many",
        "array",
        "string",
    ];
    for case in cases {
        let r = app
            .client
            .post(format!("{base}/topics/orders/messages"))
            .json(&json!({"payload": {"case": case}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let get = |p: &str| {
        let (client, url) = (app.client.clone(), format!("{base}{p}"));
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let mut group = Value::Null;
    for _ in 0..200 {
        group = get("/topics/orders/groups/push").await.1;
        if group["lag"] == 0 && group["pending"] == 0 && group["delayed"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (
            group["lag"].clone(),
            group["pending"].clone(),
            group["delayed"].clone()
        ),
        (json!(0), json!(0), json!(0)),
        "{group}"
    );
    let (_, next) = get("/topics/next/messages").await;
    let mut emitted: Vec<String> = next["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["payload"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    emitted.sort();
    assert_eq!(emitted, ["huge", "nested", "unclosed"], "each step once");
    let (_, dlq) = get("/topics/orders/groups/push/dlq").await;
    let letters = dlq["messages"].as_array().expect("dead letters");
    let mut why: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l["payload"]["case"].as_str().unwrap().to_owned(),
                l["last_error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    why.sort();
    let cases: Vec<&str> = why.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cases, ["bad_target", "channel_key", "too_many"], "{dlq}");
    for (case, error) in &why {
        let expected = match case.as_str() {
            "bad_target" => "invalid emit",
            "channel_key" => "emit[0].key",
            _ => "emit",
        };
        assert!(error.contains(expected), "{case}: {error}");
    }
    server.abort();
}

/// A join that vanished while still in the deadline index (its key expired
/// unswept) leaves the index at the next sweep; the same name declared
/// again keeps its own deadline and times out.
#[tokio::test]
async fn the_sweep_drops_a_vanished_join_and_a_redeclared_one_still_times_out() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(20)).await;
    let body = json!({"parts": ["a"], "ttl_ms": 200});
    app.put("/topics/agg/joins/j", &body).await;
    // The key expires (as after deadline + 24 h with no sweep).
    let index = format!("sc:{{{}:agg}}:joins", app.tenant);
    let mut redis = app.redis.connection();
    let indexed: u64 = redis::cmd("ZCARD").arg(&index).query(&mut redis).unwrap();
    assert_eq!(indexed, 1, "{index}");
    let deleted: u64 = redis::cmd("DEL")
        .arg(format!("sc:{{{}:agg}}:join:j", app.tenant))
        .query(&mut redis)
        .unwrap();
    assert_eq!(deleted, 1);
    let mut left = 1;
    for _ in 0..100 {
        left = redis::cmd("ZCARD").arg(&index).query(&mut redis).unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "the vanished join left the deadline index");
    app.put("/topics/agg/joins/j", &body).await;
    let mut info = Value::Null;
    for _ in 0..100 {
        info = app.get("/topics/agg/joins/j").await.body;
        if info["state"] != "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(info["state"], "timeout", "{info}");
    assert_eq!(app.history("agg").await.len(), 1);
}
