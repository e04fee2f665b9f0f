//! Operations through the real binary and a real redis-server: metrics,
//! Redis outage and recovery, graceful drain, the Unix socket, the API token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{RedisServer, StreamcarProcess, TestApp, get_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(client: &reqwest::Client, url: String, body: Value) -> support::Reply {
    TestApp::reply(client.post(url).json(&body).send().await.expect("post")).await
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_move_when_messages_flow() {
    let redis = RedisServer::start();
    let sc = StreamcarProcess::start(&redis.url(), &["--metrics-interval", "200ms"]).await;
    let client = reqwest::Client::new();
    let t = format!("{}/v1/tenants/acme/topics/orders", sc.base);
    client
        .put(format!("{t}/groups/billing"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    for i in 0..3 {
        post(
            &client,
            format!("{t}/messages"),
            json!({"payload": i, "idempotency_key": format!("k{i}")}),
        )
        .await;
    }
    post(
        &client,
        format!("{t}/messages"),
        json!({"payload": 0, "idempotency_key": "k0"}),
    )
    .await;
    let got = post(
        &client,
        format!("{t}/groups/billing/fetch"),
        json!({"consumer": "w", "max": 3}),
    )
    .await;
    let msgs = got.body["messages"].as_array().unwrap();
    post(
        &client,
        format!("{t}/groups/billing/ack"),
        json!({"receipts": [msgs[0]["receipt"]]}),
    )
    .await;
    post(
        &client,
        format!("{t}/groups/billing/reject"),
        json!({"receipts": [msgs[1]["receipt"]]}),
    )
    .await;

    let labels = r#"{tenant="acme",topic="orders"}"#;
    let group = r#"{tenant="acme",topic="orders",group="billing"}"#;
    let mut text = String::new();
    for _ in 0..50 {
        text = get_text(&client, format!("{}/metrics", sc.base)).await;
        if sample(&text, &format!("streamcar_group_pending{group}")) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, &format!("streamcar_published_total{labels}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("streamcar_publish_duplicates_total{labels}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("streamcar_delivered_total{group}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("streamcar_acked_total{group}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"streamcar_dead_lettered_total{tenant="acme",topic="orders",group="billing",reason="rejected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("streamcar_group_pending{group}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("streamcar_group_dead_letters{group}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("streamcar_group_lag{group}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("streamcar_publish_to_first_delivery_seconds_count{group}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("streamcar_publish_to_ack_seconds_count{group}")
        ),
        Some(1.0)
    );
    assert!(
        text.contains(r#"route="/v1/tenants/{tenant}/topics/{topic}/messages""#),
        "HTTP durations are labelled by route template"
    );
    assert!(text.contains(r#"streamcar_redis_script_duration_seconds_count{script="publish"}"#));
    assert_eq!(sample(&text, "streamcar_redis_up "), Some(1.0));
    assert!(
        !text.contains(msgs[0]["id"].as_str().unwrap()),
        "no message ids in labels"
    );
}

#[tokio::test]
async fn redis_outage_is_503_then_recovers_without_restarting_streamcar() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let sc = StreamcarProcess::start(&redis.url(), &[]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/tenants/t/topics/o/messages", sc.base);
    assert_eq!(
        post(&client, url.clone(), json!({"payload": 1}))
            .await
            .status,
        StatusCode::CREATED
    );

    redis.kill();
    let ready = TestApp::reply(
        client
            .get(format!("{}/readyz", sc.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    ready.assert_problem(503, "redis_unavailable");
    let refused = post(&client, url.clone(), json!({"payload": 2})).await;
    refused.assert_problem(503, "redis_unavailable");
    assert!(refused.headers.contains_key("retry-after"));

    redis.restart();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = client
            .get(format!("{}/readyz", sc.base))
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "ready again by itself");
    let again = post(&client, url, json!({"payload": 3})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(
        again.body["seq"], 2,
        "the acknowledged publish survived (AOF always)"
    );
}

#[tokio::test]
async fn sigterm_ends_waiting_long_polls_empty_and_exits_zero() {
    let redis = RedisServer::start();
    let mut sc = StreamcarProcess::start(&redis.url(), &["--drain-timeout", "5s"]).await;
    let client = reqwest::Client::new();
    let g = format!("{}/v1/tenants/t/topics/o/groups/g", sc.base);
    client.put(&g).json(&json!({})).send().await.unwrap();
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = format!("{g}/fetch");
        async move { post(&client, url, json!({"consumer": "w", "wait_ms": 30000})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sc.signal(libc::SIGTERM);
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll ended")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["messages"], json!([]));
    let status = sc.wait_exit().await;
    assert_eq!(status.code(), Some(0));
}

async fn unix_get(path: &std::path::Path, uri: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect socket");
    let request = format!("GET {uri} HTTP/1.1\r\nHost: streamcar\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn unix_socket_is_private_serves_the_api_and_is_removed_on_exit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streamcar.sock");
    // A stale socket file from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut sc = StreamcarProcess::start(&redis.url(), &["--socket", path.to_str().unwrap()]).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let health = unix_get(&path, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let topics = unix_get(&path, "/v1/tenants/t/topics").await;
    assert!(topics.starts_with("HTTP/1.1 200"), "{topics}");
    assert!(topics.contains(r#"{"topics":[]}"#), "{topics}");
    sc.signal(libc::SIGTERM);
    assert_eq!(sc.wait_exit().await.code(), Some(0));
    assert!(!path.exists(), "socket file removed on exit");
}

#[tokio::test]
async fn api_token_guards_v1_only() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let sc = StreamcarProcess::start(
        &redis.url(),
        &["--api-token-file", token_file.to_str().unwrap()],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/tenants/t/topics", sc.base);
    let none = TestApp::reply(client.get(&url).send().await.unwrap()).await;
    none.assert_problem(401, "unauthorized");
    let wrong = TestApp::reply(
        client
            .get(&url)
            .bearer_auth("s3cret-token-0123456788")
            .send()
            .await
            .unwrap(),
    )
    .await;
    wrong.assert_problem(401, "unauthorized");
    let right = client
        .get(&url)
        .bearer_auth("s3cret-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    // A single publish is served without the router's layers when no token
    // is configured; with one, it is guarded like every other call.
    let publish = format!("{}/v1/tenants/t/topics/p/messages", sc.base);
    let body = json!({"payload": 1});
    let none = TestApp::reply(client.post(&publish).json(&body).send().await.unwrap()).await;
    none.assert_problem(401, "unauthorized");
    let right = client
        .post(&publish)
        .bearer_auth("s3cret-token-0123456789")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::CREATED);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let status = client
            .get(format!("{}{open}", sc.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{open} stays open");
    }
}

#[test]
fn a_bad_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "short").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .args(["serve", "--api-token-file", token_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api-token-file"));
}

#[tokio::test]
async fn strict_refuses_a_redis_that_may_evict_keys() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .args(["serve", "--strict", "--redis-url", &redis.url()])
        .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .output()
        .await
        .expect("run streamcar");
    assert!(!out.status.success(), "--strict must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allkeys-lru"), "{stderr}");

    // Without --strict it serves (with a warning) and is ready.
    let sc = StreamcarProcess::start(&redis.url(), &[]).await;
    let ready = reqwest::get(format!("{}/readyz", sc.base)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn strict_readiness_fails_when_redis_starts_evicting() {
    let redis = RedisServer::start();
    let sc = StreamcarProcess::start(&redis.url(), &["--strict"]).await;
    let ready = reqwest::get(format!("{}/readyz", sc.base)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let mut conn = redis.connection();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query::<()>(&mut conn)
        .unwrap();
    let reply = TestApp::reply(reqwest::get(format!("{}/readyz", sc.base)).await.unwrap()).await;
    reply.assert_problem(503, "redis_evicts");
}
