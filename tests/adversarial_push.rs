//! Adversarial push delivery: apps that answer late, never, half, with odd
//! statuses or headers, huge bodies or not HTTP at all; live changes to the
//! pushed group; shutdown while pushes are in flight. The app is a raw TCP
//! server on loopback (so it can misbehave below HTTP), scripted per request;
//! everything else is checked through the sidecar's HTTP API.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::TestApp;
use support::push_app::{
    self, PushApp, Reply, Seen, TENANT, WAIT, after, http, sidecar, sidecar_draining,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// One subscription entry (topic `orders`, group `push`).
fn subscription(url: &str, extra: Value) -> Value {
    push_app::subscription("adv", url, extra)
}

/// A sidecar without subscriptions on the Redis of `app` (stopped or not).
async fn another_sidecar(app: &TestApp) -> TestApp {
    let url = app.redis.url();
    TestApp::start_with(|c| *c = streamcar::config::Config::for_redis(url)).await
}

/// The group's path.
const G: &str = "/topics/orders/groups/push";

async fn call(app: &TestApp, method: Method, p: &str, body: Option<Value>) -> Value {
    let url = format!("{}/v1/tenants/{TENANT}{p}", app.base);
    let reply = app.send(method, &url, body.as_ref()).await;
    assert!(reply.status.is_success(), "{p}: {}", reply.body);
    reply.body
}

async fn get(app: &TestApp, p: &str) -> Value {
    call(app, Method::GET, p, None).await
}

async fn post(app: &TestApp, p: &str, body: Value) -> Value {
    call(app, Method::POST, p, Some(body)).await
}

async fn publish(app: &TestApp, body: Value) -> String {
    let reply = post(app, "/topics/orders/messages", body).await;
    reply["id"].as_str().unwrap().to_owned()
}

async fn publish_many(app: &TestApp, messages: Vec<Value>) {
    post(
        app,
        "/topics/orders/messages:batch",
        json!({ "messages": messages }),
    )
    .await;
}

/// Deliveries `consumer` fetches from the group (waiting up to 1 s).
async fn fetch(app: &TestApp, consumer: &str) -> Vec<Value> {
    let body = json!({"consumer": consumer, "max": 10, "wait_ms": 1000});
    let reply = post(app, &format!("{G}/fetch"), body).await;
    reply["messages"].as_array().unwrap().clone()
}

/// Waits (bounded) until `done`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the group at `p` satisfies `check`.
async fn wait_group_at(app: &TestApp, p: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        // Not found until the sidecar has declared it.
        let url = format!("{}/v1/tenants/{TENANT}{p}", app.base);
        let g = app.send(Method::GET, &url, None).await.body;
        if g["name"].is_string() && check(&g) {
            return g;
        }
        assert!(Instant::now() < deadline, "{p}: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_group(app: &TestApp, check: impl Fn(&Value) -> bool) -> Value {
    wait_group_at(app, G, check).await
}

/// Waits until nothing is undelivered, leased, scheduled or parked.
async fn settled(app: &TestApp) -> Value {
    wait_group(app, |g| {
        g["lag"] == 0 && g["pending"] == 0 && g["delayed"] == 0 && g["parked"] == 0
    })
    .await
}

async fn wait_subscription(app: &TestApp, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = format!("{}/v1/subscriptions", app.base);
        let sub = app.send(Method::GET, &url, None).await.body["subscriptions"][0].clone();
        if check(&sub) {
            return sub;
        }
        assert!(Instant::now() < deadline, "subscription: {sub}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fast_backoff() -> Value {
    json!({"initial_ms": 50, "max_ms": 50, "multiplier": 1.0, "jitter": 0.0})
}

/// The payload of a request of one delivery, as a string.
fn payload(seen: &Seen) -> String {
    serde_json::from_slice::<Value>(&seen.body)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// (all, distinct) counts.
fn counted(ids: &[String]) -> (usize, usize) {
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    (ids.len(), distinct.len())
}

/// A 6 s push on a group whose lease (2 s, or 4 s) is lowered to 1.5 s
/// while it is in flight (`before_fetch`: after the sidecar read the group,
/// before the message is published): nobody else may get the message.
async fn lease_lowered(before_fetch: bool) {
    let app_server = PushApp::start_raw(|_, seen| {
        let pause = if payload(seen) == "warm" { 0 } else { 6000 };
        after(Duration::from_millis(pause), http(200, &[], ""))
    })
    .await;
    let lease = if before_fetch { 4000 } else { 2000 };
    let config = json!({"group_config": {"lease_ms": lease}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    // Once a first message is acked, the sidecar has read the group's lease.
    publish(&app, json!({"payload": "warm"})).await;
    wait_subscription(&app, |s| s["acked"] == 1).await;
    // Renewed every 750 ms from then on: a margin a loaded machine keeps.
    let lower = || call(&app, Method::PUT, G, Some(json!({"lease_ms": 1500})));
    if before_fetch {
        lower().await;
    }
    publish(&app, json!({"payload": "slow"})).await;
    app_server.wait_for(2).await;
    if !before_fetch {
        lower().await;
    }
    let deadline = Instant::now() + WAIT;
    while app_server.ok().len() < 2 {
        assert!(Instant::now() < deadline, "the app never answered");
        let body = json!({"consumer": "intruder"});
        let reply = post(&app, &format!("{G}/fetch"), body).await;
        assert_eq!(reply["messages"], json!([]), "leased twice while pushed");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    settled(&app).await;
    let sub = wait_subscription(&app, |s| s["acked"] == 2).await;
    assert_eq!(sub["nacked"], 0, "{sub}");
    assert_eq!(app_server.seen().len(), 2, "pushed twice");
}

#[tokio::test]
async fn a_lease_lowered_while_a_push_is_in_flight_is_still_kept_alive() {
    lease_lowered(false).await;
}

#[tokio::test]
async fn a_lease_lowered_just_before_the_fetch_is_kept_alive_from_the_start() {
    lease_lowered(true).await;
}

#[tokio::test]
async fn retry_after_huge_negative_dated_or_garbage_never_breaks_the_nack() {
    let app_server = PushApp::start_raw(|_, seen| {
        let retry_after = match payload(seen).as_str() {
            "huge" => "99999999999999",
            "u64max" => "18446744073709551615",
            "far-date" => "Fri, 31 Dec 9999 23:59:59 GMT",
            "negative" => "-5",
            "garbage" => "soon, maybe",
            "past-date" => "Wed, 21 Oct 2015 07:28:00 GMT",
            _ => "1.5",
        };
        if seen.header("streamcar-attempt") == "1" {
            http(429, &[("retry-after", retry_after)], "slow down")
        } else {
            http(200, &[], "")
        }
    })
    .await;
    let config = json!({"group_config": {"backoff": fast_backoff(), "max_deliveries": 3}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    let all = [
        "huge",
        "u64max",
        "far-date",
        "negative",
        "garbage",
        "past-date",
        "fraction",
    ];
    for p in all {
        publish(&app, json!({ "payload": p })).await;
    }
    // The three far-off ones wait (Retry-After capped, still a valid nack);
    // the others come back after the group's backoff (or at once) and are acked.
    let g = wait_group(&app, |g| {
        g["delayed"] == 3 && g["lag"] == 0 && g["pending"] == 0
    })
    .await;
    assert_eq!(g["dead_lettered"], 0, "{g}");
    let sub = wait_subscription(&app, |s| s["acked"] == 4).await;
    assert_eq!(sub["nacked"], 7, "{sub}");
    assert_eq!(sub["last_error"], "HTTP 429: slow down", "{sub}");
    let seen = app_server.seen();
    let again: Vec<String> = seen
        .iter()
        .filter(|s| s.header("streamcar-attempt") == "2")
        .map(payload)
        .collect();
    assert_eq!(again.len(), 4, "{again:?}");
    assert!(
        !again.iter().any(|p| all[..3].contains(&p.as_str())),
        "{again:?}"
    );
}

#[tokio::test]
async fn redirects_informational_and_odd_statuses_are_judged_by_the_table() {
    let app_server = PushApp::start_raw(|_, seen| match payload(seen).as_str() {
        "redirect" => http(302, &[("location", "http://127.0.0.1:9/elsewhere")], ""),
        "permanent" => http(308, &[("location", "/hook2")], ""),
        "early-hints" => {
            let mut bytes = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n".to_vec();
            let Reply::Raw(rest) = http(200, &[], "ok") else {
                unreachable!()
            };
            bytes.extend(rest);
            Reply::Raw(bytes)
        }
        "no-content" => Reply::Raw(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_vec()),
        "odd" => http(599, &[], "what"),
        "switch" => Reply::Raw(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                .to_vec(),
        ),
        _ => http(418, &[], "short and stout"),
    })
    .await;
    let config = json!({"group_config": {"backoff": fast_backoff(), "max_deliveries": 2}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    let all = [
        "redirect",
        "permanent",
        "early-hints",
        "no-content",
        "odd",
        "switch",
        "teapot",
    ];
    for p in all {
        publish(&app, json!({ "payload": p })).await;
    }
    // Redirects are not followed (a 3xx is an answer: retried, then dead),
    // a 101 is no success: only the 204 and the 200 after a 103 are acks.
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 5, "{g}");
    let sub = wait_subscription(&app, |s| s["acked"] == 2).await;
    assert_eq!(sub["rejected"], 0, "{sub}");
    let dlq = get(&app, &format!("{G}/dlq")).await;
    let mut dead: Vec<String> = dlq["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m["payload"], m["last_error"]))
        .collect();
    dead.sort();
    let want = [
        r#""odd" "HTTP 599: what""#,
        r#""permanent" "HTTP 308: Permanent Redirect""#,
        r#""redirect" "HTTP 302: Found""#,
        r#""switch" "HTTP 101: Switching Protocols""#,
        r#""teapot" "HTTP 418: short and stout""#,
    ];
    assert_eq!(dead, want);
    // Two tries each for the dead ones, one for the acked ones.
    assert_eq!(app_server.seen().len(), 5 * 2 + 2);
}

#[tokio::test]
async fn a_100_mb_answer_is_not_buffered_whole() {
    let app_server =
        PushApp::start_raw(|_, seen| Reply::Huge(if payload(seen) == "err" { 503 } else { 200 }))
            .await;
    let config = json!({"group_config": {"backoff": fast_backoff(), "max_deliveries": 1}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    let pid = i32::try_from(std::process::id()).unwrap();
    let before = support::proc_memory_bytes(pid, "VmRSS");
    publish(&app, json!({"payload": "ok"})).await;
    publish(&app, json!({"payload": "err"})).await;
    // The 2xx is an ack (its body, not an object, is not read to the end);
    // the 503 a nack with the start of its body.
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 1, "{g}");
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 1, "{sub}");
    let dlq = get(&app, &format!("{G}/dlq")).await;
    let error = format!("HTTP 503: {}", "x".repeat(200));
    assert_eq!(dlq["messages"][0]["last_error"], error);
    let peak = support::proc_memory_bytes(pid, "VmHWM");
    assert!(
        peak < before + (48 << 20),
        "peak RSS {} MB over {} MB before: an answer was buffered",
        peak >> 20,
        before >> 20
    );
}

/// A loopback port whose server accepts and then does `then` with each connection.
async fn bad_server(then: fn(TcpStream) -> tokio::task::JoinHandle<()>) -> (u16, JoinOnDrop) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(then(stream));
        }
    });
    (port, JoinOnDrop(task))
}

/// Stops the server task when dropped.
struct JoinOnDrop(tokio::task::JoinHandle<()>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn servers_that_never_read_close_at_once_or_speak_no_http_cost_attempts_then_dead_letter() {
    // Accepts and never reads nor answers; accepts and closes; greets like SSH.
    let (silent, _a) = bad_server(|s| {
        tokio::spawn(async move {
            tokio::time::sleep(WAIT * 3).await;
            drop(s);
        })
    })
    .await;
    let (closing, _b) = bad_server(|s| tokio::spawn(async move { drop(s) })).await;
    let (ssh, _c) = bad_server(|mut s| {
        tokio::spawn(async move {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
    })
    .await;
    let config = json!({"timeout_ms": 300, "max_in_flight": 2,
        "group_config": {"backoff": fast_backoff(), "max_deliveries": 2}});
    let mut entries = Vec::new();
    for (name, port) in [("silent", silent), ("closing", closing), ("ssh", ssh)] {
        let mut e = subscription(&format!("http://127.0.0.1:{port}/hook"), config.clone());
        e["name"] = json!(name);
        e["group"] = json!(name);
        entries.push(e);
    }
    let app = sidecar(entries).await;
    for i in 0..3 {
        publish(&app, json!({ "payload": i })).await;
    }
    for name in ["silent", "closing", "ssh"] {
        let p = format!("/topics/orders/groups/{name}");
        let g = wait_group_at(&app, &p, |g| g["dead_lettered"] == 3).await;
        assert_eq!(
            (g["lag"].as_u64(), g["pending"].as_u64()),
            (Some(0), Some(0)),
            "{name}: {g}"
        );
        let want = if name == "silent" {
            "timeout after 300 ms"
        } else {
            "connection broken"
        };
        for m in get(&app, &format!("{p}/dlq")).await["messages"]
            .as_array()
            .unwrap()
        {
            assert_eq!(m["attempts"], 2, "{name}: {m}");
            let error = m["last_error"].as_str().unwrap();
            assert!(error.starts_with(want), "{name}: {error}");
        }
    }
}

#[tokio::test]
async fn a_5xx_storm_on_an_ordered_group_keeps_key_order_bounds_and_acks_exactly_once() {
    // Two of three requests fail, in every shape.
    let app_server = PushApp::start_raw(|n, _| match n % 6 {
        0 | 3 => after(Duration::from_millis(5), http(200, &[], "ok")),
        1 => http(500, &[], "boom"),
        2 => http(503, &[("retry-after", "0")], ""),
        4 => Reply::Raw(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 50\r\n\r\ncut".to_vec()),
        _ => Reply::Raw(Vec::new()),
    })
    .await;
    let config = json!({"max_in_flight": 6, "group_config": {"ordering": "key", "paused": true,
        "backoff": fast_backoff(), "max_deliveries": 100}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    wait_group(&app, |g| g["paused"] == true).await;
    let messages = (0..40).map(|i| json!({"payload": i, "key": format!("k{}", i % 5)}));
    publish_many(&app, messages.collect()).await;
    post(&app, &format!("{G}/resume"), json!({})).await;
    let g = settled(&app).await;
    assert_eq!(g["dead_lettered"], 0, "{g}");
    let sub = wait_subscription(&app, |s| s["acked"] == 40).await;
    assert_eq!(
        counted(&app_server.ok()),
        (40, 40),
        "each message answered 2xx once"
    );
    let seen = app_server.seen();
    assert_eq!(
        sub["nacked"].as_u64().unwrap() + 40,
        seen.len() as u64,
        "{sub}"
    );
    assert_eq!(app_server.most_per_key(), 1);
    let most = app_server.most_concurrent();
    assert!(most <= 6, "{most} requests at once");
    for k in 0..5 {
        let key = format!("k{k}");
        let mut seqs: Vec<u64> = seen
            .iter()
            .filter(|s| s.header("ce-subject") == key)
            .map(|s| s.header("streamcar-seq").parse().unwrap())
            .collect();
        // Retries repeat a seq; a later one never comes before an earlier one is done.
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{key}: {seqs:?}");
        seqs.dedup();
        assert_eq!(seqs.len(), 8, "{key}: {seqs:?}");
    }
}

#[tokio::test]
async fn a_group_paused_deleted_or_its_topic_deleted_under_pushes_in_flight_recovers() {
    let app_server = PushApp::start_raw(|_, seen| {
        let pause = if payload(seen).starts_with("slow") {
            600
        } else {
            0
        };
        after(Duration::from_millis(pause), http(200, &[], ""))
    })
    .await;
    let config = json!({"max_in_flight": 1, "group_config": {"backoff": fast_backoff()}});
    let app = sidecar(vec![subscription(&app_server.url(), config)]).await;
    let ok_has = |id: &str| app_server.ok().iter().any(|o| o == id);
    let pushed = |id: &str| app_server.seen().iter().any(|s| s.header("ce-id") == id);

    // Paused while a push is in flight: that one is still acked, nothing
    // else is pushed until resumed.
    let slow = publish(&app, json!({"payload": "slow-1"})).await;
    app_server.wait_for(1).await;
    post(&app, &format!("{G}/pause"), json!({})).await;
    let waiting = publish(&app, json!({"payload": "after-pause"})).await;
    wait_subscription(&app, |s| s["acked"] == 1).await;
    assert!(ok_has(&slow));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app_server.seen().len(), 1, "pushed while paused");
    post(&app, &format!("{G}/resume"), json!({})).await;
    settled(&app).await;
    assert!(ok_has(&waiting));

    // The group, then the topic, deleted while a push is in flight: the
    // sidecar declares them again and goes on pushing.
    for (slow, deleted) in [("slow-2", G), ("slow-3", "/topics/orders")] {
        let slow = publish(&app, json!({ "payload": slow })).await;
        wait_until("pushed", || pushed(&slow)).await;
        call(&app, Method::DELETE, deleted, None).await;
        let next = publish(&app, json!({"payload": format!("after {deleted}")})).await;
        wait_until("pushed after the delete", || ok_has(&next)).await;
        settled(&app).await;
    }
    let sub = wait_subscription(&app, |_| true).await;
    assert_eq!(sub["state"], "running", "{sub}");
}

#[tokio::test]
async fn shutdown_ends_within_the_drain_timeout_and_acks_only_2xx_answers() {
    let app_server = PushApp::start_raw(|_, seen| match payload(seen).as_str() {
        "hang" => Reply::Hang,
        // Answered within the drain, but late enough that its retry
        // cannot be pushed before the drain starts, however slow the
        // machine: the other sidecar then sees attempt 2.
        "fail" => after(Duration::from_millis(1000), http(500, &[], "no")),
        _ => after(Duration::from_millis(200), http(200, &[], "")),
    })
    .await;
    let config = json!({"max_in_flight": 3, "timeout_ms": 3_600_000,
        "group_config": {"backoff": fast_backoff(), "lease_ms": 1000}});
    let entries = vec![subscription(&app_server.url(), config)];
    let mut app = sidecar_draining(entries, Duration::from_millis(1500)).await;
    let mut ids = HashMap::new();
    for p in ["hang", "fail", "ok"] {
        ids.insert(publish(&app, json!({ "payload": p })).await, p);
    }
    app_server.wait_for(3).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopped.is_ok(), "the drain did not end");
    // Another sidecar finds the two not answered 2xx (the hung one given
    // back at the drain's end, the failed one nacked), never the acked one.
    let other = another_sidecar(&app).await;
    let mut back = Vec::new();
    let deadline = Instant::now() + WAIT;
    while back.len() < 2 {
        assert!(Instant::now() < deadline, "given back: {back:?}");
        for m in fetch(&other, "next").await {
            back.push(ids[m["id"].as_str().unwrap()]);
            assert_eq!(m["attempt"], 2, "{m}");
        }
    }
    back.sort_unstable();
    assert_eq!(back, ["fail", "hang"]);
    assert_eq!(app_server.ok().len(), 1);
}

#[tokio::test]
async fn shutdown_while_the_app_is_down_dead_letters_nothing() {
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = json!({"group_config": {"max_deliveries": 1}});
    let mut app =
        sidecar_draining(vec![subscription(&url, config)], Duration::from_millis(300)).await;
    publish(&app, json!({"payload": "unseen"})).await;
    wait_subscription(&app, |s| s["state"] == "app_unreachable").await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopped.is_ok(), "the drain did not end");
    let other = another_sidecar(&app).await;
    let g = get(&other, G).await;
    assert_eq!(g["dead_lettered"], 0, "the app never saw it: {g}");
    // Given back at once, as the same attempt.
    let messages = fetch(&other, "next").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["payload"], "unseen");
    assert_eq!(messages[0]["attempt"], 1);
}

#[tokio::test]
async fn an_app_whose_accept_queue_is_full_costs_no_attempt_even_with_a_short_timeout() {
    // A listener that never accepts, its queue filled: connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let connect = TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            fillers.push(s);
        }
    }
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = json!({"timeout_ms": 500, "group_config": {"max_deliveries": 1}});
    let app = sidecar(vec![subscription(&url, config)]).await;
    publish(&app, json!({"payload": "queued"})).await;
    // The app never took the connection: not an attempt, as when it refuses.
    let sub = wait_subscription(&app, |s| s["state"] == "app_unreachable").await;
    assert_eq!(sub["nacked"], 0, "{sub}");
    // Given back (due at once, no attempt) before the state shows, not
    // held leased in the sidecar for the outage (see
    // `tests/adversarial_kill.rs`).
    let g = get(&app, G).await;
    assert_eq!(
        (
            g["dead_lettered"].as_u64(),
            g["pending"].as_u64(),
            g["delayed"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "{g}"
    );
    drop(listener);
}
