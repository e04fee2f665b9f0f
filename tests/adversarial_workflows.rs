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
    let raw = app
        .client
        .get(app.url("/topics/agg/messages"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

/// A join whose deadline passes while its last parts arrive, swept by three
/// sidecars at once: each join finishes exactly once, as `complete` or
/// `timeout`, and its aggregate says which.
#[tokio::test]
async fn the_deadline_sweep_of_three_sidecars_racing_parts_finishes_each_join_once() {
    let fast = |c: &mut streamcar::config::Config| c.retention_interval = Duration::from_millis(10);
    let app = TestApp::start_with(fast).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut config = streamcar::config::Config::for_redis(app.redis.url());
        fast(&mut config);
        others.push(streamcar::start(&config).await.expect("sidecar"));
    }
    let joins: Vec<String> = (0..30).map(|i| format!("j{i}")).collect();
    for join in &joins {
        app.put(
            &format!("/topics/agg/joins/{join}"),
            &json!({"parts": ["a", "b"], "ttl_ms": 300}),
        )
        .await;
        app.post(
            &format!("/topics/agg/joins/{join}/parts/a"),
            &json!({"result": 1}),
        )
        .await;
    }
    // The last parts come around the deadline.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut outcomes = std::collections::HashMap::new();
    for join in &joins {
        let r = app
            .post(
                &format!("/topics/agg/joins/{join}/parts/b"),
                &json!({"result": 2}),
            )
            .await;
        not_5xx(&r);
        outcomes.insert(join.clone(), r);
    }
    let mut finished = Vec::new();
    for _ in 0..100 {
        finished.clear();
        for join in &joins {
            let info = app.get(&format!("/topics/agg/joins/{join}")).await.body;
            if info["state"] != "open" {
                finished.push(info);
            }
        }
        if finished.len() == joins.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finished.len(), joins.len(), "every join finished");
    let history = app.history("agg").await;
    assert_eq!(history.len(), joins.len(), "one aggregate per join");
    for info in &finished {
        let join = info["join"].as_str().unwrap();
        let mine: Vec<&Value> = history
            .iter()
            .filter(|m| m["payload"]["join"] == join)
            .collect();
        assert_eq!(mine.len(), 1, "{join}");
        assert_eq!(mine[0]["payload"]["status"], info["state"], "{join}");
        let part = &outcomes[join];
        if info["state"] == "complete" {
            assert_eq!(part.status, StatusCode::OK, "{}", part.body);
        } else {
            part.assert_problem(409, "join_finished");
        }
    }
    for other in others {
        other.shutdown().await.expect("shutdown");
    }
}
