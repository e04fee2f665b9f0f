//! Push delivery (`--subscriptions`): the sidecar POSTs each message to a
//! real app server started here (hyper, on a free loopback port or a Unix
//! socket), which records every request and answers as each test scripts it.
//! Everything is checked from outside: what the app received, and the
//! group, dead letters and subscriptions as the HTTP API reports them.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use support::push_app::{Answer, Bind, PushApp, Seen, TENANT, WAIT, answer, sidecar, subscription};
use support::{StreamcarProcess, TestApp, free_port};

fn path(p: &str) -> String {
    format!("/v1/tenants/{TENANT}{p}")
}

async fn get(app: &TestApp, p: &str) -> Value {
    let reply = app
        .send(Method::GET, &format!("{}{}", app.base, path(p)), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn post(app: &TestApp, p: &str, body: &Value) -> support::Reply {
    app.send(
        Method::POST,
        &format!("{}{}", app.base, path(p)),
        Some(body),
    )
    .await
}

async fn publish(app: &TestApp, body: Value) -> Value {
    let reply = post(app, "/topics/orders/messages", &body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

/// Publishes `batch` in one request (the reply is not asserted).
async fn post_batch(app: &TestApp, batch: &[Value]) -> support::Reply {
    post(
        app,
        "/topics/orders/messages:batch",
        &json!({ "messages": batch }),
    )
    .await
}

/// GET the pushed group, not asserted (it may not be declared yet).
async fn group_reply(app: &TestApp) -> support::Reply {
    app.send(
        Method::GET,
        &format!("{}{}", app.base, path("/topics/orders/groups/push")),
        None,
    )
    .await
}

async fn group(app: &TestApp) -> Value {
    get(app, "/topics/orders/groups/push").await
}

/// Waits (bounded) until the group has nothing undelivered, leased or
/// scheduled, and returns it.
async fn settled(app: &TestApp) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = group_reply(app).await;
        if reply.status == 200 {
            let g = &reply.body;
            if g["lag"] == 0 && g["pending"] == 0 && g["delayed"] == 0 && g["parked"] == 0 {
                return reply.body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "group never settled: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn subscriptions(app: &TestApp) -> Vec<Value> {
    let reply = app
        .send(Method::GET, &format!("{}/v1/subscriptions", app.base), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["subscriptions"].as_array().unwrap().clone()
}

/// Waits (bounded) until the one subscription satisfies `check`.
async fn wait_subscription(app: &TestApp, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let subs = subscriptions(app).await;
        if check(&subs[0]) {
            return subs[0].clone();
        }
        assert!(Instant::now() < deadline, "subscription: {}", subs[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attempts(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.header("streamcar-attempt")).collect()
}

#[tokio::test]
async fn a_2xx_acks_and_the_request_carries_cloudevents_and_streamcar_headers() {
    let server = PushApp::start(|_, _| answer(200)).await;
    let app = sidecar(vec![subscription("orders-hook", &server.url(), json!({}))]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = publish(
        &app,
        json!({"payload": {"sku": "a-1", "qty": 2}, "key": "customer-7",
               "correlation_id": "flow-1", "causation_id": "cause-1",
               "headers": {"type": "order.created", "traceparent": traceparent,
                           "tracestate": "congo=t61rcWkgMzE"}}),
    )
    .await;
    // A traceparent that is not W3C names no trace: neither it nor the
    // tracestate beside it is passed on.
    let second = publish(
        &app,
        json!({"payload": [1, 2, 3],
               "headers": {"traceparent": "00-not-a-trace-01", "tracestate": "rojo=1"}}),
    )
    .await;

    let seen = server.wait_for(2).await;
    let history = get(&app, "/topics/orders/messages?limit=10").await["messages"]
        .as_array()
        .unwrap()
        .clone();
    let by_id = |id: &Value| {
        seen.iter()
            .find(|s| s.header("ce-id") == id)
            .expect("pushed")
    };
    let a = by_id(&first["id"]);
    let b = by_id(&second["id"]);
    assert_eq!(a.path, "/hook");
    for s in [a, b] {
        assert_eq!(s.header("content-type"), "application/json");
        assert_eq!(s.header("ce-specversion"), "1.0");
        assert_eq!(
            s.header("user-agent"),
            concat!("streamcar/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            s.header("ce-source"),
            format!("/v1/tenants/{TENANT}/topics/orders")
        );
        assert_eq!(s.header("streamcar-attempt"), "1");
    }
    // The body is the payload, byte for byte as published.
    assert_eq!(
        serde_json::from_slice::<Value>(&a.body).unwrap(),
        json!({"sku": "a-1", "qty": 2})
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&b.body).unwrap(),
        json!([1, 2, 3])
    );
    assert_eq!(a.header("ce-type"), "order.created");
    assert_eq!(b.header("ce-type"), "streamcar.message");
    assert_eq!(a.header("ce-subject"), "customer-7");
    assert!(!b.headers.contains_key("ce-subject"));
    assert_eq!(a.header("streamcar-correlation-id"), "flow-1");
    assert_eq!(a.header("streamcar-causation-id"), "cause-1");
    assert!(!b.headers.contains_key("streamcar-correlation-id"));
    assert_eq!(a.header("traceparent"), traceparent);
    assert_eq!(a.header("tracestate"), "congo=t61rcWkgMzE");
    assert!(!b.headers.contains_key("traceparent"), "{:?}", b.headers);
    assert!(!b.headers.contains_key("tracestate"), "{:?}", b.headers);
    assert_eq!(a.header("streamcar-seq"), first["seq"].to_string());
    assert_eq!(b.header("streamcar-seq"), second["seq"].to_string());
    for (s, published) in [(a, &first), (b, &second)] {
        let stored = history.iter().find(|m| m["id"] == published["id"]).unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(stored["published_at"].as_u64().unwrap());
        assert_eq!(
            s.header("ce-time"),
            humantime::format_rfc3339_millis(at).to_string()
        );
        let receipt = s.header("streamcar-receipt");
        assert!(
            receipt.starts_with(&format!("{}:1:", stored["stream_id"].as_str().unwrap())),
            "{receipt}"
        );
    }

    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    let sub = wait_subscription(&app, |s| s["acked"] == 2).await;
    assert_eq!(sub["name"], "orders-hook");
    assert_eq!(sub["tenant"], TENANT);
    assert_eq!(sub["topic"], "orders");
    assert_eq!(sub["group"], "push");
    assert_eq!(sub["state"], "running");
    assert_eq!(sub["delivered"], 2);
    assert_eq!(sub["nacked"], 0);
    assert_eq!(sub["rejected"], 0);
    assert_eq!(sub["in_flight"], 0);
    assert!(sub["last_error"].is_null(), "{sub}");
    assert_eq!(server.seen().len(), 2, "each message pushed once");

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            r#"streamcar_push_requests_total{subscription="orders-hook",outcome="acked"} 2"#
        ),
        "{metrics}"
    );
    for line in [
        r#"streamcar_push_state{subscription="orders-hook",state="running"} 1"#,
        r#"streamcar_push_state{subscription="orders-hook",state="app_unreachable"} 0"#,
        r#"streamcar_push_in_flight{subscription="orders-hook"} 0"#,
        r#"streamcar_push_request_duration_seconds_count{subscription="orders-hook"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line}");
    }
}

#[tokio::test]
async fn a_500_is_retried_after_the_group_backoff_then_acked() {
    let server = PushApp::start(|n, _| {
        if n == 0 {
            Answer {
                body: "model crashed".into(),
                ..answer(500)
            }
        } else {
            answer(200)
        }
    })
    .await;
    let backoff = json!({"initial_ms": 300, "max_ms": 300, "multiplier": 1.0, "jitter": 0.0});
    let app = sidecar(vec![subscription(
        "retry",
        &server.url(),
        json!({"group_config": {"backoff": backoff}}),
    )])
    .await;
    let published = publish(&app, json!({"payload": {"n": 1}})).await;
    let seen = server.wait_for(2).await;
    assert_eq!(attempts(&seen), ["1", "2"]);
    assert!(seen.iter().all(|s| s.header("ce-id") == published["id"]));
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(300),
        "redelivered before the group's backoff: {:?}",
        seen[1].at - seen[0].at
    );
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 1);
    assert_eq!(sub["last_error"], "HTTP 500: model crashed");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn retry_after_is_the_delay_of_the_retry() {
    let server = PushApp::start(|n, _| {
        if n == 0 {
            Answer {
                headers: vec![("retry-after", "2".into())],
                ..answer(503)
            }
        } else {
            answer(200)
        }
    })
    .await;
    // The group's own backoff is short: only Retry-After can make it 2 s.
    let backoff = json!({"initial_ms": 100, "max_ms": 100, "jitter": 0.0});
    let app = sidecar(vec![subscription(
        "busy",
        &server.url(),
        json!({"group_config": {"backoff": backoff}}),
    )])
    .await;
    publish(&app, json!({"payload": "x"})).await;
    let seen = server.wait_for(2).await;
    assert_eq!(attempts(&seen), ["1", "2"]);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(2),
        "redelivered {:?} after a Retry-After of 2 s",
        seen[1].at - seen[0].at
    );
    settled(&app).await;
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["last_error"], "HTTP 503: Service Unavailable");
}

#[tokio::test]
async fn refusals_dead_letter_with_the_answer_as_last_error() {
    let server = PushApp::start(|_, seen| {
        // 422 for the bad order, 410 for the gone one.
        let status = if seen.body.starts_with(b"\"bad\"") {
            422
        } else {
            410
        };
        Answer {
            body: format!("order refused: {}", "x".repeat(500)),
            ..answer(status)
        }
    })
    .await;
    let app = sidecar(vec![subscription("refuse", &server.url(), json!({}))]).await;
    let bad = publish(&app, json!({"payload": "bad"})).await;
    let gone = publish(&app, json!({"payload": "gone"})).await;
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 2);
    let dlq = get(&app, "/topics/orders/groups/push/dlq").await;
    let letters = dlq["messages"].as_array().unwrap();
    for (published, code) in [(&bad, 422), (&gone, 410)] {
        let letter = letters.iter().find(|l| l["id"] == published["id"]).unwrap();
        assert_eq!(letter["reason"], "rejected");
        assert_eq!(letter["attempts"], 1);
        let error = letter["last_error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("HTTP {code}: order refused: xxx")),
            "{error}"
        );
        // The start of the body, not all of it.
        assert!(error.len() < 260, "{}", error.len());
    }
    assert_eq!(server.seen().len(), 2, "a refusal is never retried");
    let sub = wait_subscription(&app, |s| s["rejected"] == 2).await;
    assert_eq!(sub["acked"], 0);
}

#[tokio::test]
async fn a_2xx_with_emit_publishes_the_next_step_then_acks() {
    // The first answer's emit has no target (the app's bug): nacked, not
    // acked without its next step. The second emits to a topic and to the
    // user's channel.
    let server = PushApp::start(|n, seen| {
        let order: Value = serde_json::from_slice(&seen.body).unwrap();
        let emit = if n == 0 {
            json!([{"payload": order}])
        } else {
            json!([
                {"topic": "shipped", "payload": {"order": order}, "key": "u1"},
                {"channel": "user.u1", "payload": {"shipped": order}},
            ])
        };
        Answer {
            body: json!({"emit": emit}).to_string(),
            ..answer(200)
        }
    })
    .await;
    let backoff = json!({"initial_ms": 100, "max_ms": 100, "multiplier": 1.0, "jitter": 0.0});
    let app = sidecar(vec![subscription(
        "emit",
        &server.url(),
        json!({"group_config": {"backoff": backoff}}),
    )])
    .await;
    let source = publish(&app, json!({"payload": 7, "correlation_id": "conv-1"})).await;
    let seen = server.wait_for(2).await;
    assert_eq!(attempts(&seen), ["1", "2"]);
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 1);
    assert!(
        sub["last_error"]
            .as_str()
            .unwrap()
            .contains("emit[0].topic"),
        "{sub}"
    );

    let shipped = get(&app, "/topics/shipped/messages").await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(shipped.len(), 1, "one next step, from the good answer");
    assert_eq!(shipped[0]["payload"], json!({"order": 7}));
    assert_eq!(shipped[0]["causation_id"], source["id"]);
    assert_eq!(shipped[0]["correlation_id"], "conv-1");
    assert_eq!(shipped[0]["key"], "u1");

    let channel = get(&app, "/channels/user.u1/messages").await;
    let messages = channel["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{channel}");
    assert_eq!(messages[0]["payload"], json!({"shipped": 7}));
    assert_eq!(messages[0]["headers"]["causation_id"], source["id"]);
    assert_eq!(messages[0]["headers"]["correlation_id"], "conv-1");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_202_leaves_the_delivery_to_the_app_which_acks_it_through_the_api() {
    let server = PushApp::start(|_, _| answer(202)).await;
    let app = sidecar(vec![subscription("takeover", &server.url(), json!({}))]).await;
    publish(&app, json!({"payload": {"job": 1}})).await;
    let seen = server.wait_for(1).await;
    let receipt = seen[0].header("streamcar-receipt").to_owned();
    // Still the app's: leased, neither acked nor retried.
    let g = group(&app).await;
    assert_eq!(g["pending"], 1, "{g}");
    let reply = post(
        &app,
        "/topics/orders/groups/push/ack",
        &json!({"receipts": [receipt]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["acked"], json!([receipt]));
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    assert_eq!(server.seen().len(), 1);
    let sub = subscriptions(&app).await.remove(0);
    assert_eq!(sub["delivered"], 1);
    assert_eq!(sub["acked"], 0, "the sidecar did not ack it: the app did");
}

#[tokio::test]
async fn a_handler_slower_than_the_lease_keeps_its_delivery() {
    let server = PushApp::start_slow(Duration::from_millis(5000)).await;
    let app = sidecar(vec![subscription(
        "slow",
        &server.url(),
        json!({"group_config": {"lease_ms": 2000}}),
    )])
    .await;
    publish(&app, json!({"payload": "slow"})).await;
    server.wait_for(1).await;
    // While the handler runs (two and a half leases), another consumer finds
    // nothing: the sidecar keeps renewing the lease.
    let deadline = Instant::now() + WAIT;
    while server.answered() == 0 {
        assert!(Instant::now() < deadline, "the app never answered");
        let reply = post(
            &app,
            "/topics/orders/groups/push/fetch",
            &json!({"consumer": "intruder"}),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["messages"], json!([]), "delivered twice");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&app).await;
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 0);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn an_app_that_is_down_costs_no_attempt_and_gets_everything_when_back() {
    let mut server = PushApp::start(|_, _| answer(200)).await;
    let app = sidecar(vec![subscription(
        "outage",
        &server.url(),
        json!({"group_config": {"lease_ms": 500, "max_deliveries": 2,
                                "backoff": {"initial_ms": 100, "jitter": 0.0}}}),
    )])
    .await;
    publish(&app, json!({"payload": 0})).await;
    settled(&app).await;
    server.stop().await;

    let mut ids = HashSet::new();
    for i in 1..=3 {
        let p = publish(&app, json!({"payload": i})).await;
        ids.insert(p["id"].as_str().unwrap().to_owned());
    }
    let sub = wait_subscription(&app, |s| s["state"] == "app_unreachable").await;
    assert!(
        sub["last_error"]
            .as_str()
            .unwrap()
            .starts_with("app unreachable"),
        "{sub}"
    );
    // Down for 5 s: ten leases of this group, each of which would burn an
    // attempt if it lapsed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let g = group(&app).await;
    assert_eq!(g["dead_lettered"], 0, "{g}");
    server.resume().await;

    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0, "{g}");
    let seen = server.seen();
    let got: Vec<&str> = seen[1..].iter().map(|s| s.header("ce-id")).collect();
    assert_eq!(got.len(), 3, "each message once: {got:?}");
    assert_eq!(
        got.iter()
            .map(|id| (*id).to_owned())
            .collect::<HashSet<_>>(),
        ids
    );
    assert!(
        attempts(&seen).iter().all(|a| *a == "1"),
        "the outage cost attempts: {:?}",
        attempts(&seen)
    );
    let sub = wait_subscription(&app, |s| s["acked"] == 4).await;
    assert_eq!(sub["state"], "running");
    assert_eq!(sub["nacked"], 0);
}

#[tokio::test]
async fn max_in_flight_bounds_concurrent_requests() {
    let server = PushApp::start_slow(Duration::from_millis(100)).await;
    let app = sidecar(vec![subscription(
        "bounded",
        &server.url(),
        json!({"max_in_flight": 4}),
    )])
    .await;
    let batch: Vec<Value> = (0..40).map(|i| json!({"payload": i})).collect();
    let reply = post_batch(&app, &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    settled(&app).await;
    let seen = server.seen();
    let ids: HashSet<&str> = seen.iter().map(|s| s.header("ce-id")).collect();
    assert_eq!((seen.len(), ids.len()), (40, 40), "each message once");
    assert!(
        server.most_concurrent() <= 4,
        "{} requests at once",
        server.most_concurrent()
    );
    // Forty messages waiting and 100 ms handlers: the sidecar did use its four slots.
    assert_eq!(server.most_concurrent(), 4);
}

#[tokio::test]
async fn batches_carry_an_array_of_deliveries() {
    let server = PushApp::start(|_, _| answer(200)).await;
    let app = sidecar(vec![subscription(
        "batched",
        &server.url(),
        json!({"batch": 10, "max_in_flight": 1, "group_config": {"paused": true}}),
    )])
    .await;
    // Paused while publishing, so the first fetch finds all five.
    let batch: Vec<Value> = (0..5).map(|i| json!({"payload": {"i": i}})).collect();
    post_batch(&app, &batch).await;
    let reply = post(&app, "/topics/orders/groups/push/resume", &json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    settled(&app).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "one request for all five");
    assert_eq!(seen[0].header("content-type"), "application/json");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 5);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["payload"], json!({"i": i}));
        assert_eq!(item["attempt"], 1);
        assert!(item["receipt"].is_string() && item["seq"].is_u64() && item["id"].is_string());
    }
}

#[tokio::test]
async fn unix_socket_urls_work() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        PushApp::start_on(Bind::Unix(dir.path().join("app.sock")), |_, _| answer(204)).await;
    let app = sidecar(vec![subscription("local", &server.url(), json!({}))]).await;
    publish(&app, json!({"payload": {"over": "unix"}})).await;
    settled(&app).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/hook");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
        json!({"over": "unix"})
    );
    wait_subscription(&app, |s| s["acked"] == 1).await;
}

/// Writes a YAML subscriptions file for the binary.
fn yaml_file(dir: &tempfile::TempDir, name: &str, url: &str, extra: &str) -> PathBuf {
    let path = dir.path().join(format!("{name}.yaml"));
    let text = format!(
        "subscriptions:\n  - name: {name}\n    tenant: {TENANT}\n    topic: orders\n    group: push\n    url: \"{url}\"\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The streamcar binary on the Redis of `app`, pushing by the YAML file of
/// one subscription (see [`yaml_file`]), with more arguments; the file's
/// dir is returned to live as long as the process.
async fn start_pusher(
    app: &TestApp,
    name: &str,
    url: &str,
    extra: &str,
    args: &[&str],
) -> (tempfile::TempDir, StreamcarProcess) {
    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(&dir, name, url, extra);
    let mut all = vec!["--subscriptions", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let process = StreamcarProcess::start(&app.redis.url(), &all).await;
    (dir, process)
}

#[tokio::test]
async fn two_sidecars_pushing_to_two_apps_share_the_group() {
    let one = PushApp::start_slow(Duration::from_millis(20)).await;
    let two = PushApp::start_slow(Duration::from_millis(20)).await;
    let app = sidecar(vec![subscription(
        "shared",
        &one.url(),
        json!({"max_in_flight": 2}),
    )])
    .await;
    let (_dir, other) =
        start_pusher(&app, "shared", &two.url(), "    max_in_flight: 2\n", &[]).await;
    let batch: Vec<Value> = (0..60).map(|i| json!({"payload": i})).collect();
    post_batch(&app, &batch).await;
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    let mut ids: Vec<String> = one
        .seen()
        .iter()
        .chain(two.seen().iter())
        .map(|s| s.header("ce-id").to_owned())
        .collect();
    assert!(
        !one.seen().is_empty() && !two.seen().is_empty(),
        "both apps got work"
    );
    ids.sort();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (60, 60),
        "each message pushed once"
    );
    let reply = app
        .send(
            Method::GET,
            &format!("{}/v1/subscriptions", other.base),
            None,
        )
        .await;
    assert_eq!(
        reply.body["subscriptions"][0]["acked"].as_u64().unwrap(),
        two.seen().len() as u64
    );
}

#[tokio::test]
async fn sigterm_lets_pushes_in_flight_finish_and_exits_0() {
    let server = PushApp::start_slow(Duration::from_millis(1500)).await;
    let app = sidecar(Vec::new()).await;
    // Three slots for four messages: one stays undelivered.
    app.send(
        Method::PUT,
        &format!("{}{}", app.base, path("/topics/orders/groups/push")),
        Some(&json!({})),
    )
    .await;
    for i in 0..4 {
        publish(&app, json!({"payload": i})).await;
    }
    let (_dir, mut pusher) = start_pusher(
        &app,
        "draining",
        &server.url(),
        "    max_in_flight: 3\n",
        &["--drain-timeout", "10s"],
    )
    .await;
    server.wait_for(3).await;
    assert_eq!(server.answered(), 0, "still in flight");
    pusher.signal(libc::SIGTERM);
    let status = pusher.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(server.answered(), 3, "every request in flight was answered");
    assert_eq!(server.seen().len(), 3, "nothing fetched after SIGTERM");
    let g = group(&app).await;
    // The three pushed were acked; the fourth waits, undelivered.
    assert_eq!(
        (
            g["lag"].as_u64(),
            g["pending"].as_u64(),
            g["delayed"].as_u64(),
            g["dead_lettered"].as_u64()
        ),
        (Some(1), Some(0), Some(0), Some(0)),
        "{g}"
    );
}

#[tokio::test]
async fn the_drain_timeout_gives_unfinished_pushes_back_at_once() {
    let server = PushApp::start_slow(Duration::from_secs(8)).await;
    let app = sidecar(Vec::new()).await;
    publish(&app, json!({"payload": "long"})).await;
    let (_dir, mut pusher) = start_pusher(
        &app,
        "cut",
        &server.url(),
        "",
        &["--drain-timeout", "500ms"],
    )
    .await;
    server.wait_for(1).await;
    pusher.signal(libc::SIGTERM);
    assert_eq!(pusher.wait_exit().await.code(), Some(0));
    // Nacked with no delay: due at once for the next consumer, not dead.
    let fetched = post(
        &app,
        "/topics/orders/groups/push/fetch",
        &json!({"consumer": "next", "wait_ms": 5000}),
    )
    .await;
    let messages = fetched.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{}", fetched.body);
    assert_eq!(messages[0]["payload"], "long");
    assert_eq!(messages[0]["attempt"], 2);
    assert_eq!(group(&app).await["dead_lettered"], 0);
}

/// Runs the binary to its exit (bounded) and returns (code, stderr).
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("streamcar exits")
        .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
        .await
        .unwrap();
    (status.code(), text)
}

#[tokio::test]
async fn a_bad_subscriptions_file_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cases = [
        (
            "    max_in_flight: 0\n",
            "http://127.0.0.1:1/",
            "subscriptions[0].max_in_flight",
        ),
        ("", "ftp://127.0.0.1/", "subscriptions[0].url"),
        (
            "    group_config: {lease_ms: 5}\n",
            "http://127.0.0.1:1/",
            "subscriptions[0].group_config.lease_ms",
        ),
        (
            "    colour: blue\n",
            "http://127.0.0.1:1/",
            "subscriptions[0]",
        ),
    ];
    for (extra, url, field) in cases {
        let file = yaml_file(&dir, "bad", url, extra);
        let file = file.to_str().unwrap();
        let (code, stderr) = run_to_exit(
            &[
                "serve",
                "--redis-url",
                "redis://127.0.0.1:1",
                "--listen",
                &listen,
                "--subscriptions",
                file,
            ],
            &[],
        )
        .await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
        // The same through the environment.
        let (code, stderr) = run_to_exit(
            &[
                "serve",
                "--redis-url",
                "redis://127.0.0.1:1",
                "--listen",
                &listen,
            ],
            &[("STREAMCAR_SUBSCRIPTIONS", file)],
        )
        .await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
    let (code, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            &listen,
            "--subscriptions",
            "/nonexistent/subs.yaml",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/subs.yaml"), "{stderr}");
}

#[tokio::test]
async fn redis_away_backs_off_then_the_group_is_declared_again() {
    let server = PushApp::start(|_, _| answer(200)).await;
    let mut app = sidecar(vec![subscription(
        "resilient",
        &server.url(),
        json!({"group_config": {"lease_ms": 1000}}),
    )])
    .await;
    publish(&app, json!({"payload": "before"})).await;
    settled(&app).await;
    // This Redis keeps nothing across a restart: the group is gone after it.
    app.redis.kill();
    let sub = wait_subscription(&app, |s| s["state"] == "backing_off").await;
    assert!(
        sub["last_error"].as_str().unwrap().starts_with("fetch"),
        "{sub}"
    );
    app.redis.restart();
    wait_subscription(&app, |s| s["state"] == "running").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = group_reply(&app).await;
        if reply.status == 200 {
            assert_eq!(reply.body["lease_ms"], 1000, "declared with group_config");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group was not declared again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&app, json!({"payload": "after"})).await;
    settled(&app).await;
    let seen = server.seen();
    let bodies: Vec<&[u8]> = seen.iter().map(|s| s.body.as_ref()).collect();
    assert_eq!(bodies, [b"\"before\"".as_slice(), b"\"after\"".as_slice()]);
}

#[test]
fn the_example_subscriptions_file_is_valid() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/subscriptions.yaml");
    let subs = streamcar::push::load(&file).expect("examples/subscriptions.yaml");
    let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["acme-model", "globex-model"]);
}

#[tokio::test]
async fn an_ordered_group_is_pushed_one_message_per_key_at_a_time_in_order() {
    let server = PushApp::start_slow(Duration::from_millis(30)).await;
    let app = sidecar(vec![subscription(
        "ordered",
        &server.url(),
        json!({"max_in_flight": 8, "group_config": {"ordering": "key", "paused": true}}),
    )])
    .await;
    // Published while paused, so every key's messages wait together.
    let batch: Vec<Value> = (0..24)
        .map(|i| json!({"payload": i, "key": format!("user-{}", i % 4)}))
        .collect();
    post_batch(&app, &batch).await;
    post(&app, "/topics/orders/groups/push/resume", &json!({})).await;
    settled(&app).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 24);
    assert_eq!(server.most_per_key(), 1, "two of one key at once");
    assert!(server.most_concurrent() > 1, "keys went in parallel");
    for k in 0..4 {
        let key = format!("user-{k}");
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|s| s.header("ce-subject") == key)
            .map(|s| s.header("streamcar-seq").parse().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{key} out of order");
        assert_eq!(seqs.len(), 6);
    }
}

#[tokio::test]
async fn a_reset_and_a_timeout_are_failed_attempts() {
    let server = PushApp::start(|n, _| match n {
        0 => answer(0),
        1 => Answer {
            pause: Duration::from_secs(2),
            ..answer(200)
        },
        _ => answer(200),
    })
    .await;
    let backoff = json!({"initial_ms": 100, "max_ms": 100, "jitter": 0.0});
    let app = sidecar(vec![subscription(
        "flaky",
        &server.url(),
        json!({"timeout_ms": 300, "group_config": {"backoff": backoff}}),
    )])
    .await;
    publish(&app, json!({"payload": "x"})).await;
    let seen = server.wait_for(3).await;
    assert_eq!(attempts(&seen), ["1", "2", "3"]);
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0);
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 2);
    assert_eq!(sub["last_error"], "timeout after 300 ms");
    let metrics = app.metrics_text().await;
    for outcome in ["broken", "timeout", "acked"] {
        let line = format!(
            r#"streamcar_push_requests_total{{subscription="flaky",outcome="{outcome}"}} 1"#
        );
        assert!(metrics.contains(&line), "{line}");
    }
}

#[test]
fn the_kubernetes_example_subscriptions_are_valid() {
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let file = doc["data"]["subscriptions.yaml"]
        .as_str()
        .expect("subscriptions.yaml");
    let subs = streamcar::push::spec::parse(file, false).expect("the ConfigMap's subscriptions");
    assert_eq!(subs[0].name, "prompts");
    assert_eq!(subs[0].url, "http://127.0.0.1:8080/push/prompts");
}
