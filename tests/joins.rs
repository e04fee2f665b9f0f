//! Fan-in joins through HTTP: the last part publishes the aggregate exactly
//! once; parts are idempotent; a join never waits forever.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

async fn declare(app: &TestApp, join: &str, body: Value) -> u16 {
    let reply = app.put(&format!("/topics/agg/joins/{join}"), &body).await;
    assert!(reply.status.is_success(), "{}", reply.body);
    reply.status.as_u16()
}

async fn part(app: &TestApp, join: &str, part: &str, body: Value) -> support::Reply {
    app.post(&format!("/topics/agg/joins/{join}/parts/{part}"), &body)
        .await
}

#[tokio::test]
async fn the_last_part_publishes_the_aggregate_once() {
    let app = TestApp::start().await;
    let body = json!({"parts": ["gpt", "claude"], "ttl_ms": 60000});
    assert_eq!(declare(&app, "j1", body.clone()).await, 201);
    assert_eq!(
        declare(&app, "j1", body).await,
        200,
        "the same declaration is a no-op"
    );
    app.put(
        "/topics/agg/joins/j1",
        &json!({"parts": ["gpt"], "ttl_ms": 60000}),
    )
    .await
    .assert_problem(409, "join_config_conflict");

    let first = part(
        &app,
        "j1",
        "gpt",
        json!({"result": {"text": "a", "n": 12345678901234567_u64}}),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        (first.body["recorded"].clone(), first.body["state"].clone()),
        (json!(true), json!("open"))
    );
    assert!(
        app.get("/topics/agg").await.body["length"] == 0,
        "nothing published yet"
    );

    let again = part(
        &app,
        "j1",
        "gpt",
        json!({"result": {"text": "a", "n": 12345678901234567_u64}}),
    )
    .await;
    assert_eq!(again.body["recorded"], false, "a repeat is a no-op");
    part(&app, "j1", "gpt", json!({"result": "other"}))
        .await
        .assert_problem(409, "part_conflict");
    part(&app, "j1", "nope", json!({"result": 1}))
        .await
        .assert_problem(404, "part_not_found");

    let last = part(&app, "j1", "claude", json!({"result": "b"})).await;
    assert_eq!(last.body["state"], "complete", "{}", last.body);
    let history = app.history("agg").await;
    assert_eq!(history.len(), 1);
    let aggregate = &history[0];
    assert_eq!(aggregate["causation_id"], "j1");
    assert_eq!(
        aggregate["payload"],
        json!({"join": "j1", "status": "complete",
               "results": {"gpt": {"text": "a", "n": 12345678901234567_u64}, "claude": "b"},
               "errors": {}, "missing": []})
    );
    // Numbers keep every digit: results are spliced in as sent.
    assert_eq!(
        aggregate["payload"]["results"]["gpt"]["n"].as_u64(),
        Some(12345678901234567)
    );

    let repeat_last = part(&app, "j1", "claude", json!({"result": "b"})).await;
    assert_eq!(repeat_last.body["recorded"], false);
    assert_eq!(app.history("agg").await.len(), 1, "published exactly once");
    let info = app.get("/topics/agg/joins/j1").await.body;
    assert_eq!(info["state"], "complete");
    assert_eq!(info["missing"], json!([]));
}

#[tokio::test]
async fn a_part_error_fails_the_join_and_a_timeout_lists_what_is_missing() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(100)).await;
    declare(&app, "f", json!({"parts": ["a", "b"], "ttl_ms": 60000})).await;
    part(&app, "f", "a", json!({"error": "model timeout"})).await;
    let done = part(&app, "f", "b", json!({"result": 2})).await;
    assert_eq!(done.body["state"], "failed");

    declare(&app, "t", json!({"parts": ["a", "b", "c"], "ttl_ms": 1500})).await;
    part(&app, "t", "b", json!({"result": "only b"})).await;
    let mut info = Value::Null;
    for _ in 0..50 {
        info = app.get("/topics/agg/joins/t").await.body;
        if info["state"] != "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info["state"], "timeout", "{info}");
    assert_eq!(info["missing"], json!(["a", "c"]));
    part(&app, "t", "a", json!({"result": "late"}))
        .await
        .assert_problem(409, "join_finished");

    let history = app.history("agg").await;
    let statuses: Vec<Value> = history
        .iter()
        .map(|m| m["payload"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("failed"), json!("timeout")]);
    assert_eq!(
        history[0]["payload"]["errors"],
        json!({"a": "model timeout"})
    );
    assert_eq!(history[1]["payload"]["missing"], json!(["a", "c"]));

    declare(
        &app,
        "d",
        json!({"parts": ["x"], "ttl_ms": 200, "on_timeout": "dead_letter"}),
    )
    .await;
    for _ in 0..50 {
        info = app.get("/topics/agg/joins/d").await.body;
        if info["state"] != "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info["state"], "dead_lettered");
    assert_eq!(
        app.history("agg").await.len(),
        2,
        "a dead-lettered join publishes nothing"
    );
}

/// Twenty parts posted at once through two sidecars: one aggregate.
#[tokio::test]
async fn concurrent_parts_across_sidecars_complete_the_join_once() {
    let app = TestApp::start().await;
    let second = streamcar::start(&streamcar::config::Config::for_redis(app.redis.url()))
        .await
        .expect("second sidecar");
    let bases = [app.base.clone(), format!("http://{}", second.addr())];
    let parts: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    declare(&app, "many", json!({"parts": parts, "ttl_ms": 60000})).await;
    let mut tasks = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let url = format!(
            "{}/v1/tenants/{}/topics/agg/joins/many/parts/{p}",
            bases[i % 2],
            app.tenant
        );
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"result": i}))
                .send()
                .await
                .expect("part")
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let history = app.history("agg").await;
    assert_eq!(history.len(), 1, "exactly one aggregate");
    assert_eq!(
        history[0]["payload"]["results"]
            .as_object()
            .map(|r| r.len()),
        Some(20)
    );
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_joins_are_refused() {
    let app = TestApp::start().await;
    app.get("/topics/agg/joins/none")
        .await
        .assert_problem(404, "join_not_found");
    part(&app, "none", "a", json!({"result": 1}))
        .await
        .assert_problem(404, "join_not_found");
    for (body, field) in [
        (json!({"parts": [], "ttl_ms": 1000}), "parts"),
        (json!({"parts": ["a", "a"], "ttl_ms": 1000}), "parts"),
        (json!({"parts": ["a"], "ttl_ms": 0}), "ttl_ms"),
        (json!({"parts": ["a"], "ttl_ms": 1000, "key": ""}), "key"),
        (
            json!({"parts": ["a"], "ttl_ms": 1000, "correlation_id": "x".repeat(257)}),
            "correlation_id",
        ),
    ] {
        let reply = app.put("/topics/agg/joins/j", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{body}"
        );
    }
    declare(&app, "j", json!({"parts": ["a"], "ttl_ms": 60000})).await;
    part(&app, "j", "a", json!({"result": 1, "error": "x"}))
        .await
        .assert_problem(400, "invalid_body");
    part(&app, "j", "a", json!({}))
        .await
        .assert_problem(400, "invalid_body");
}

/// A join declared with a `key` and a `correlation_id` publishes its
/// aggregate with both, so an ordered group downstream takes the aggregates
/// of one key in order; the declaration is fixed like its parts.
#[tokio::test]
async fn the_aggregate_carries_the_declared_key_and_correlation_id() {
    let app = TestApp::start().await;
    app.put(
        "/topics/agg/groups/next",
        &json!({"ordering": "key", "start": "earliest"}),
    )
    .await;
    let body = |join: &str| {
        json!({"parts": ["a", "b"], "ttl_ms": 60000, "key": "user-7",
               "correlation_id": format!("req-{join}")})
    };
    for join in ["j1", "j2"] {
        assert_eq!(declare(&app, join, body(join)).await, 201);
    }
    assert_eq!(declare(&app, "j1", body("j1")).await, 200, "same again");
    for other in [
        json!({"parts": ["a", "b"], "ttl_ms": 60000, "key": "user-8", "correlation_id": "req-j1"}),
        json!({"parts": ["a", "b"], "ttl_ms": 60000, "correlation_id": "req-j1"}),
        json!({"parts": ["a", "b"], "ttl_ms": 60000, "key": "user-7"}),
    ] {
        app.put("/topics/agg/joins/j1", &other)
            .await
            .assert_problem(409, "join_config_conflict");
    }
    let info = app.get("/topics/agg/joins/j1").await.body;
    assert_eq!(
        (&info["key"], &info["correlation_id"]),
        (&json!("user-7"), &json!("req-j1"))
    );

    // j1 finishes first, then j2: the group gets them in that order, and
    // never both at once (one key).
    for (join, p) in [("j1", "a"), ("j2", "a"), ("j1", "b"), ("j2", "b")] {
        part(&app, join, p, json!({"result": p})).await;
    }
    let history = app.history("agg").await;
    let lineage: Vec<(&Value, &Value, &Value)> = history
        .iter()
        .map(|m| (&m["key"], &m["correlation_id"], &m["causation_id"]))
        .collect();
    assert_eq!(
        lineage,
        [
            (&json!("user-7"), &json!("req-j1"), &json!("j1")),
            (&json!("user-7"), &json!("req-j2"), &json!("j2")),
        ]
    );
    let first = app.fetch("agg", "next", "w", 10, 0).await;
    assert_eq!(first.len(), 1, "one message of a key at a time: {first:?}");
    assert_eq!(first[0]["payload"]["join"], "j1");
}

/// Sixty joins time out while three sidecars sweep and the last parts
/// arrive right at the deadline, through all three: each join ends once,
/// as `complete` (its last part won) or `timeout` (the sweep won, and the
/// late part got 409), with exactly one aggregate that says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_finish_each_join_once_with_three_sidecars_sweeping() {
    const JOINS: usize = 60;
    let sweep = Duration::from_millis(20);
    let app = TestApp::start_with(|c| c.retention_interval = sweep).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut config = streamcar::config::Config::for_redis(app.redis.url());
        config.retention_interval = sweep;
        others.push(streamcar::start(&config).await.expect("sidecar"));
    }
    let mut bases = vec![app.base.clone()];
    bases.extend(others.iter().map(|s| format!("http://{}", s.addr())));
    let url = |i: usize, path: &str| {
        format!(
            "{}/v1/tenants/{}/topics/agg/joins/j{i}{path}",
            bases[i % 3],
            app.tenant
        )
    };
    for i in 0..JOINS {
        let body = json!({"parts": ["a", "b"], "ttl_ms": 300 + 5 * i as u64});
        let reply = app
            .client
            .put(url(i, ""))
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert!(reply.status().is_success());
        part(&app, &format!("j{i}"), "a", json!({"result": i})).await;
    }
    // Part b of every join around its deadline, through all three sidecars.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut tasks = Vec::new();
    for i in 0..JOINS {
        let (client, url) = (app.client.clone(), url(i, "/parts/b"));
        tasks.push(tokio::spawn(async move {
            let reply = client.post(url).json(&json!({"result": "b"})).send().await;
            reply.expect("part b").status().as_u16()
        }));
    }
    let mut late = std::collections::BTreeSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            200 => {}
            409 => {
                late.insert(format!("j{i}"));
            }
            other => panic!("part b of j{i}: {other}"),
        }
    }
    // Every join ends, once.
    let mut states = std::collections::BTreeMap::new();
    for i in 0..JOINS {
        let join = format!("j{i}");
        let mut info = Value::Null;
        for _ in 0..100 {
            info = app.get(&format!("/topics/agg/joins/{join}")).await.body;
            if info["state"] != "open" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = info["state"].as_str().expect("state").to_owned();
        assert!(state == "complete" || state == "timeout", "{info}");
        assert_eq!(state == "timeout", late.contains(&join), "{info}");
        states.insert(join, state);
    }
    let history = app.history("agg").await;
    let aggregates: std::collections::BTreeMap<String, String> = history
        .iter()
        .map(|m| {
            (
                m["causation_id"].as_str().expect("join").to_owned(),
                m["payload"]["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect();
    assert_eq!(history.len(), JOINS, "one aggregate per join");
    assert_eq!(aggregates, states, "each aggregate says how its join ended");
    for other in others {
        other.shutdown().await.expect("shutdown");
    }
}

/// The deadline is exact, not "at the next sweep": with no sweep running,
/// the first part to come after the deadline finishes the join (as the
/// sweep would have) and is not recorded.
#[tokio::test]
async fn a_part_after_the_deadline_finishes_the_join_without_counting() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_secs(3600)).await;
    // Long enough for the three calls below on a loaded machine.
    declare(&app, "late", json!({"parts": ["a", "b"], "ttl_ms": 1000})).await;
    let body = json!({"parts": ["x"], "ttl_ms": 1000, "on_timeout": "dead_letter"});
    declare(&app, "late-dl", body).await;
    part(&app, "late", "a", json!({"result": 1})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    part(&app, "late", "b", json!({"result": 2}))
        .await
        .assert_problem(409, "join_finished");
    part(&app, "late-dl", "x", json!({"result": 3}))
        .await
        .assert_problem(409, "join_finished");
    let info = app.get("/topics/agg/joins/late").await.body;
    assert_eq!(info["state"], "timeout", "{info}");
    assert_eq!(info["missing"], json!(["b"]));
    let dead = app.get("/topics/agg/joins/late-dl").await.body;
    assert_eq!(dead["state"], "dead_lettered", "{dead}");
    assert_eq!(dead["missing"], json!(["x"]));

    let history = app.history("agg").await;
    assert_eq!(history.len(), 1, "one aggregate: the timeout's");
    assert_eq!(history[0]["payload"]["status"], "timeout");
    assert_eq!(history[0]["payload"]["results"], json!({"a": 1}));
    // Again: finished already, nothing more.
    part(&app, "late", "b", json!({"result": 2}))
        .await
        .assert_problem(409, "join_finished");
    assert_eq!(app.history("agg").await.len(), 1);
    let metrics = app.metrics_text().await;
    let timed_out = metrics
        .lines()
        .find(|l| {
            l.starts_with("streamcar_joins_timed_out_total{")
                && l.contains(&format!("tenant=\"{}\"", app.tenant))
        })
        .unwrap_or_default();
    assert!(timed_out.ends_with(" 2"), "{timed_out}");
}

/// Joins due at once all finish in one sweep (it used to finish 100 per
/// topic per pass: 10,000 due together timed out about 17 minutes late at
/// the default interval). The test holds the retention lock until every
/// deadline has passed, so the first pass sees them all due; counted by
/// the first value of the timed-out counter, not timed.
#[tokio::test]
async fn joins_due_together_finish_in_one_sweep() {
    const JOINS: usize = 250;
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(200)).await;
    let mut redis = app.redis.connection();
    redis::cmd("SET")
        .arg("sc:retention:lock")
        .arg("held-by-the-test")
        .arg("PX")
        .arg(60_000)
        .exec(&mut redis)
        .unwrap();
    for i in 0..JOINS {
        let body = json!({"parts": ["a"], "ttl_ms": 1});
        assert_eq!(declare(&app, &format!("mass-{i}"), body).await, 201);
    }
    redis::cmd("DEL")
        .arg("sc:retention:lock")
        .exec(&mut redis)
        .unwrap();
    let mut first = None;
    for _ in 0..200 {
        let metrics = app.metrics_text().await;
        first = metrics
            .lines()
            .find(|l| {
                l.starts_with("streamcar_joins_timed_out_total{")
                    && l.contains(&format!("tenant=\"{}\"", app.tenant))
            })
            .map(str::to_owned);
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("a sweep ran");
    assert!(first.ends_with(&format!(" {JOINS}")), "{first}");
}
