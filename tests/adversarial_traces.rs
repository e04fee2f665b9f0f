//! Traces under attack: hostile `traceparent` request headers, collector
//! URLs that are not what they seem, and a collector that takes the
//! connection and never answers.
//!
//! The exporter is one per process (see tests/traces.rs), so every test
//! here takes [`EXPORTER`] first: `cargo test` runs a binary's tests as
//! threads of one process, and a live exporter changes what a publish
//! stores.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use support::TestApp;

/// Held by every test that installs an exporter.
static EXPORTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "5af92f3577b34da6a3ce929d0e0e4799";
const SPAN: &str = "00f067aa0ba902b7";

/// Publishes one message with these request headers and returns the
/// `headers` it was stored with (as history shows them).
async fn publish_with(app: &TestApp, topic: &str, headers: HeaderMap) -> Value {
    let sent = app
        .client
        .post(app.url(&format!("/topics/{topic}/messages")))
        .headers(headers)
        .json(&json!({"payload": {"n": 1}}))
        .send()
        .await
        .expect("publish");
    let reply = TestApp::reply(sent).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let history = app.history(topic).await;
    let last = history.last().expect("the message").clone();
    last["headers"].clone()
}

/// The trace id of a stored `traceparent`, if there is one.
fn stored_trace(headers: &Value) -> Option<String> {
    let tp = headers.get("traceparent")?.as_str()?;
    tp.split('-').nth(1).map(str::to_owned)
}

/// Two `traceparent` headers on one request do not say which trace the
/// message is in: W3C Trace Context (and its test suite's
/// `test_traceparent_duplicated`) wants a new trace, never either of them.
/// The sidecar kept the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_traceparent_headers_continue_neither_trace() {
    let _one = EXPORTER.lock().await; // no other test's exporter makes spans
    let app = TestApp::start_quiet().await;
    let mut headers = HeaderMap::new();
    for trace in [TRACE_A, TRACE_B] {
        headers.append(
            "traceparent",
            HeaderValue::from_str(&format!("00-{trace}-{SPAN}-01")).expect("value"),
        );
    }
    let stored = publish_with(&app, "dup", headers).await;
    let trace = stored_trace(&stored);
    assert!(
        trace.as_deref() != Some(TRACE_A) && trace.as_deref() != Some(TRACE_B),
        "a message published with two traceparents joined one of them: {stored}"
    );
    // The same value twice is still two headers, not one.
    let mut twice = HeaderMap::new();
    for _ in 0..2 {
        twice.append(
            "traceparent",
            HeaderValue::from_str(&format!("00-{TRACE_A}-{SPAN}-01")).expect("value"),
        );
    }
    let stored = publish_with(&app, "dup", twice).await;
    assert_ne!(stored_trace(&stored).as_deref(), Some(TRACE_A), "{stored}");
}

/// Malformed values are ignored (never stored, never a failed publish);
/// well-formed ones, including a future version's extra fields, are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traceparent_values_are_ignored_and_never_fail_a_publish() {
    // With another test's exporter live, a publish would store its own span.
    let _one = EXPORTER.lock().await;
    let app = TestApp::start_quiet().await;
    let long = format!("01-{TRACE_A}-{SPAN}-01-{}", "x".repeat(10 * 1024));
    let bad: Vec<Vec<u8>> = vec![
        format!("00-{}-{SPAN}-01", TRACE_A.to_uppercase()).into_bytes(),
        format!("00-{}-{SPAN}-01", "0".repeat(32)).into_bytes(),
        format!("00-{TRACE_A}-{}-01", "0".repeat(16)).into_bytes(),
        format!("ff-{TRACE_A}-{SPAN}-01").into_bytes(),
        format!("00-{TRACE_A}-{SPAN}-01-extra").into_bytes(),
        format!("00-{TRACE_A}-{SPAN}").into_bytes(),
        format!("00_{TRACE_A}_{SPAN}_01").into_bytes(),
        long.into_bytes(),
        // Latin-1 bytes (HTTP allows obs-text in a field value).
        [format!("01-{TRACE_A}-{SPAN}-01-").as_bytes(), b"\xe9\xff"].concat(),
    ];
    for value in bad {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_bytes(&value).expect("a header value"),
        );
        // A huge tracestate rides along: it is no reason to fail either.
        headers.insert(
            "tracestate",
            HeaderValue::from_str(&"k=v,".repeat(2000)).expect("value"),
        );
        let stored = publish_with(&app, "bad", headers).await;
        assert_eq!(
            stored.get("traceparent"),
            None,
            "{:?} was stored",
            String::from_utf8_lossy(&value)
        );
        assert_eq!(stored.get("tracestate"), None, "{stored}");
    }
    for good in [
        format!("00-{TRACE_A}-{SPAN}-01"),
        format!("cc-{TRACE_A}-{SPAN}-01-what-the-future-will-be-like"),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(&good).expect("value"));
        let stored = publish_with(&app, "good", headers).await;
        assert_eq!(stored_trace(&stored).as_deref(), Some(TRACE_A), "{stored}");
    }
}

/// A collector URL with a query (a proxy's routing or tenant parameter):
/// `/v1/traces` goes on the path, the query stays a query. The sidecar
/// appended it to the query (`/?tenant=a/v1/traces`), so every export hit
/// the collector's root and every span was lost without a word.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_query_still_exports_to_the_traces_path() {
    let _one = EXPORTER.lock().await;
    let (addr, spans) = support::otlp::receiver().await;
    let mut app =
        TestApp::start_with(|c| c.otlp_endpoint = Some(format!("http://{addr}/?tenant=a"))).await;
    app.publish("q", &json!({"payload": 1})).await;
    app.stop().await; // flushes
    let received = spans.lock().expect("spans").clone();
    assert!(
        received.iter().any(|s| s.name == "publish"),
        "nothing reached http://{addr}/v1/traces: {received:?}"
    );
}

/// A port that is not a port (`:99999`, `:4318x`, an empty `:`) is refused
/// at start: the HTTP client reads "no port" and sends to port 80, so the
/// sidecar started and exported to a port nobody named.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_whose_port_is_not_a_port_is_refused_at_start() {
    let _one = EXPORTER.lock().await;
    let redis = support::RedisServer::start();
    for bad in [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:4318x",
        "http://127.0.0.1:",
        "http://[::1]:70000/v1/traces",
    ] {
        let mut config = streamcar::config::Config::for_redis(redis.url());
        config.otlp_endpoint = Some(bad.to_owned());
        match streamcar::start(&config).await {
            Ok(server) => {
                server.shutdown().await.expect("shutdown");
                panic!("{bad} was accepted");
            }
            Err(e) => assert!(e.to_string().contains(bad), "{bad}: {e}"),
        }
    }
}

/// A collector that takes the connection and never answers: requests do
/// not wait on it, and the sidecar still stops in about one export timeout
/// (10 s) plus its drain. It waited one export timeout per queued batch of
/// 512 spans (the queue holds 4,096): well over a minute, long past any
/// orchestrator's grace period, for spans that could not be sent anyway.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_hold_up_shutdown() {
    let _one = EXPORTER.lock().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let mut app = TestApp::start_with(|c| {
        c.otlp_endpoint = Some(format!("http://{addr}"));
        c.drain_timeout = Duration::from_secs(1);
    })
    .await;
    // Batches of 1,000 publish and deliver spans pile up behind the hung
    // export (below the queue's 4,096: a full queue refuses the shutdown
    // message itself, and the spans are dropped at once); no request waits
    // on the collector.
    let batch: Vec<Value> = (0..1000).map(|i| json!({"payload": i})).collect();
    for _ in 0..2 {
        let reply = app
            .post("/topics/hung/messages:batch", &json!({"messages": batch}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.group("hung", "g", &json!({})).await;
    let got = app.fetch("hung", "g", "w", 1000, 0).await;
    assert_eq!(got.len(), 1000);
    assert_eq!(app.history("hung").await.len(), 2000);
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "no export was tried"
    );
    // Bounded by one export timeout (10 s) and the 1 s drain; 40 s leaves
    // room for a loaded machine and is far below the queue's worth of
    // export timeouts it took.
    let stopped = tokio::time::timeout(Duration::from_secs(40), app.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown still waiting on the collector after 40 s"
    );
}

/// The same for the caller context of the steps that take one from the
/// request (ack, nack, reject, emit, joins): a join declared with two
/// `traceparent` headers carried the first one's trace on to its aggregate.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_declared_with_two_traceparent_headers_continues_neither_trace() {
    let _one = EXPORTER.lock().await;
    let (addr, _spans) = support::otlp::receiver().await;
    let mut app = TestApp::start_with(|c| c.otlp_endpoint = Some(format!("http://{addr}"))).await;
    let mut request = app
        .client
        .put(app.url("/topics/fanin/joins/j"))
        .json(&json!({"parts": ["a"], "ttl_ms": 60000}));
    for trace in [TRACE_A, TRACE_B] {
        request = request.header("traceparent", format!("00-{trace}-{SPAN}-01"));
    }
    let declared = request.send().await.expect("declare");
    assert!(declared.status().is_success(), "{}", declared.status());
    let part = app
        .post("/topics/fanin/joins/j/parts/a", &json!({"result": 1}))
        .await;
    assert!(part.status.is_success(), "{}", part.body);
    let aggregate = app.history("fanin").await;
    let stored = &aggregate.last().expect("the aggregate")["headers"];
    let trace = stored_trace(stored);
    assert!(
        trace.as_deref() != Some(TRACE_A) && trace.as_deref() != Some(TRACE_B),
        "an aggregate declared with two traceparents joined one of them: {stored}"
    );
    app.stop().await;
}
