//! Adversarial push delivery: apps that answer late, never, half, with odd
//! statuses or headers, huge bodies or not HTTP at all; live changes to the
//! pushed group; shutdown while pushes are in flight. The app is a raw TCP
//! server on loopback (so it can misbehave below HTTP), scripted per request;
//! everything else is checked through the sidecar's HTTP API.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TENANT: &str = "acme";
/// Longest any wait loop of these tests may take.
const WAIT: Duration = Duration::from_secs(20);

/// One request the app received.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// What the app does with one request.
enum Reply {
    /// Writes these bytes, then closes the connection.
    Raw(Vec<u8>),
    /// Waits, then does the rest.
    After(Duration, Box<Reply>),
    /// Writes `head`, then `total` bytes of `x` in 64 KiB chunks, then closes.
    Huge { head: String, total: usize },
    /// Never answers; holds the connection open.
    Hang,
}

/// A complete HTTP/1.1 answer that closes the connection.
fn http(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut text = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    Reply::Raw(text.into_bytes())
}

fn after(pause: Duration, reply: Reply) -> Reply {
    Reply::After(pause, Box::new(reply))
}

type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counts {
    seen: Mutex<Vec<Seen>>,
    now: AtomicUsize,
    most: AtomicUsize,
    /// Requests in progress per `ce-subject`, and the most at once.
    per_key: Mutex<HashMap<String, usize>>,
    per_key_most: AtomicUsize,
    /// `ce-id`s answered with a 2xx, in order.
    ok: Mutex<Vec<String>>,
}

/// The app: a raw HTTP/1.1 server on a loopback port, one request per
/// connection, answering as `script` says.
struct App {
    counts: Arc<Counts>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let script: Script = Arc::new(script);
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone(), script.clone()));
            }
        });
        Self { counts, port, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.counts.seen.lock().unwrap().clone()
    }

    fn ok(&self) -> Vec<String> {
        self.counts.ok.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the app got {} of {n}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (headers, then a `content-length` body).
async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { headers, body })
}

async fn serve(mut stream: TcpStream, counts: Arc<Counts>, script: Script) {
    let Some(seen) = read_request(&mut stream).await else {
        return;
    };
    let n = {
        let mut all = counts.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
    counts.most.fetch_max(now, Ordering::SeqCst);
    let key = seen.headers.get("ce-subject").cloned();
    if let Some(key) = &key {
        let mut per_key = counts.per_key.lock().unwrap();
        let c = per_key.entry(key.clone()).or_default();
        *c += 1;
        counts.per_key_most.fetch_max(*c, Ordering::SeqCst);
    }
    let mut reply = script(n, &seen);
    while let Reply::After(pause, rest) = reply {
        tokio::time::sleep(pause).await;
        reply = *rest;
    }
    if let Some(key) = &key {
        *counts.per_key.lock().unwrap().get_mut(key).unwrap() -= 1;
    }
    counts.now.fetch_sub(1, Ordering::SeqCst);
    match reply {
        Reply::Raw(bytes) => {
            if bytes.starts_with(b"HTTP/1.1 2") {
                let id = seen.header("ce-id").to_owned();
                counts.ok.lock().unwrap().push(id);
            }
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Huge { head, total } => {
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
        }
        Reply::Hang => {
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Reply::After(..) => unreachable!(),
    }
}

/// One subscription entry (topic `orders`, group `push`).
fn subscription(url: &str, extra: Value) -> Value {
    let mut entry = json!({
        "name": "adv", "tenant": TENANT, "topic": "orders", "group": "push", "url": url,
    });
    for (k, v) in extra.as_object().unwrap() {
        entry[k] = v.clone();
    }
    entry
}

/// streamcar in-process with these subscriptions and this drain timeout.
async fn sidecar_draining(entries: Vec<Value>, drain: Duration) -> TestApp {
    let text = json!({ "subscriptions": entries }).to_string();
    let subscriptions = streamcar::push::spec::parse(&text, true).expect("valid subscriptions");
    TestApp::start_with(move |c| {
        c.subscriptions = subscriptions;
        c.drain_timeout = drain;
    })
    .await
}

async fn sidecar(entries: Vec<Value>) -> TestApp {
    sidecar_draining(entries, Duration::from_secs(5)).await
}

fn path(p: &str) -> String {
    format!("/v1/tenants/{TENANT}{p}")
}

async fn call(app: &TestApp, method: Method, p: &str, body: Option<&Value>) -> support::Reply {
    app.send(method, &format!("{}{}", app.base, path(p)), body)
        .await
}

async fn publish(app: &TestApp, body: Value) -> String {
    let reply = call(app, Method::POST, "/topics/orders/messages", Some(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn publish_many(app: &TestApp, messages: Vec<Value>) {
    let body = json!({ "messages": messages });
    let reply = call(
        app,
        Method::POST,
        "/topics/orders/messages:batch",
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn group(app: &TestApp) -> Value {
    let reply = call(app, Method::GET, "/topics/orders/groups/push", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Waits (bounded) until the group satisfies `check`.
async fn wait_group(app: &TestApp, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = call(app, Method::GET, "/topics/orders/groups/push", None).await;
        if reply.status == 200 && check(&reply.body) {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "group: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until nothing is undelivered, leased, scheduled or parked.
async fn settled(app: &TestApp) -> Value {
    wait_group(app, |g| {
        g["lag"] == 0 && g["pending"] == 0 && g["delayed"] == 0 && g["parked"] == 0
    })
    .await
}

async fn subscription_status(app: &TestApp) -> Value {
    let reply = app
        .send(Method::GET, &format!("{}/v1/subscriptions", app.base), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["subscriptions"][0].clone()
}

async fn wait_subscription(app: &TestApp, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let sub = subscription_status(app).await;
        if check(&sub) {
            return sub;
        }
        assert!(Instant::now() < deadline, "subscription: {sub}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_letters(app: &TestApp) -> Vec<Value> {
    let reply = call(app, Method::GET, "/topics/orders/groups/push/dlq", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["messages"].as_array().unwrap().clone()
}

/// Fetches as another consumer until `done`, asserting it never gets anything.
async fn intruder_finds_nothing(app: &TestApp, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "the app never answered");
        let body = json!({"consumer": "intruder"});
        let reply = call(
            app,
            Method::POST,
            "/topics/orders/groups/push/fetch",
            Some(&body),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body["messages"],
            json!([]),
            "leased to another consumer while pushed"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn fast_backoff() -> Value {
    json!({"initial_ms": 50, "max_ms": 50, "multiplier": 1.0, "jitter": 0.0})
}

#[tokio::test]
async fn a_lease_lowered_while_a_push_is_in_flight_is_still_kept_alive() {
    let app_server = App::start(|_, _| after(Duration::from_secs(3), http(200, &[], ""))).await;
    let app = sidecar(vec![subscription(
        &app_server.url(),
        json!({"group_config": {"lease_ms": 2000}}),
    )])
    .await;
    publish(&app, json!({"payload": "slow"})).await;
    app_server.wait_for(1).await;
    // The operator shortens the lease while the handler works: the
    // keep-alive must renew at the new pace, not the one it started with.
    let reply = call(
        &app,
        Method::PUT,
        "/topics/orders/groups/push",
        Some(&json!({"lease_ms": 200})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let counts = app_server.counts.clone();
    intruder_finds_nothing(&app, || !counts.ok.lock().unwrap().is_empty()).await;
    settled(&app).await;
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 0, "{sub}");
    assert_eq!(app_server.seen().len(), 1);
}

#[tokio::test]
async fn a_lease_lowered_just_before_the_fetch_is_kept_alive_from_the_start() {
    let app_server = App::start(|_, _| after(Duration::from_secs(2), http(200, &[], ""))).await;
    let app = sidecar(vec![subscription(
        &app_server.url(),
        json!({"group_config": {"lease_ms": 4000}}),
    )])
    .await;
    // The sidecar has read the group (it declared it); the lease is
    // shortened before anything is fetched, so the first lease granted is
    // already the short one.
    wait_group(&app, |g| g["lease_ms"] == 4000).await;
    let reply = call(
        &app,
        Method::PUT,
        "/topics/orders/groups/push",
        Some(&json!({"lease_ms": 200})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    publish(&app, json!({"payload": "slow"})).await;
    app_server.wait_for(1).await;
    let counts = app_server.counts.clone();
    intruder_finds_nothing(&app, || !counts.ok.lock().unwrap().is_empty()).await;
    settled(&app).await;
    let sub = wait_subscription(&app, |s| s["acked"] == 1).await;
    assert_eq!(sub["nacked"], 0, "{sub}");
    assert_eq!(app_server.seen().len(), 1);
}
