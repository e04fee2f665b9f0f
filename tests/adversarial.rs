//! Adversarial HTTP input against every route of the OpenAPI document:
//! malformed and hostile bodies, hostile path parameters, wrong methods,
//! a 100 MB streamed body and slow-loris clients. Every answer must be a 4xx
//! problem+json (never a 5xx), the process must keep serving, and its memory
//! must stay bounded.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{RedisServer, StreamcarProcess, TestApp};
use tokio::io::AsyncWriteExt;

/// (method, path template, takes a JSON body) of every documented operation.
async fn operations(app: &TestApp) -> Vec<(Method, String, bool)> {
    let doc = app
        .send(Method::GET, &format!("{}/v1/openapi.json", app.base), None)
        .await
        .body;
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            if let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes()) {
                ops.push((m, path.clone(), op["requestBody"].is_object()));
            }
        }
    }
    ops
}

fn concrete(path: &str, tenant: &str, name: &str) -> String {
    path.replace("{tenant}", tenant)
        .replace("{topic}", name)
        .replace("{group}", name)
        .replace("{pool}", name)
        .replace("{key}", name)
        .replace("{name}", name)
        .replace("{id}", name)
        .replace("{join}", name)
        .replace("{part}", name)
        .replace("{channel}", name)
}

async fn raw(
    app: &TestApp,
    method: Method,
    url: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let mut req = app.client.request(method, url).body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("streamcar answers");
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ct, resp.text().await.unwrap_or_default())
}

fn hostile_bodies() -> Vec<Vec<u8>> {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    [
        "{",
        "[]",
        "null",
        "\"text\"",
        "42",
        "{\"unknown\": 1}",
        "{\"payload\": 1, \"ttl_ms\": 1e999}",
        "{\"payload\": 1, \"delay_ms\": 18446744073709551616}",
        "{\"payload\": 1, \"ttl_ms\": -1, \"delay_ms\": 0.5}",
        "{\"consumer\": \"\\u0000\", \"max\": 0, \"wait_ms\": -5}",
        "{\"receipts\": [\"\\u0000:1:w\", 5, null]}",
        "{\"capacity\": 0, \"lease_ms\": 0}",
        "{\"seq\": -1}",
        "{\"ttl_ms\": 0, \"owner\": \"\"}",
        "{\"payload\": 1, \"headers\": {\"\\u0001\": \"\\u0002\"}}",
        "\u{feff}{}",
        "{\"a\": \"\\ud800\"}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        deep.into_bytes(),
        deep_object.into_bytes(),
        vec![0xff, 0xfe, 0x00],
    ])
    .collect()
}

#[tokio::test]
async fn hostile_bodies_on_every_route_get_4xx_problems() {
    let app = TestApp::start().await;
    let ops = operations(&app).await;
    assert!(ops.len() >= 37);
    for (method, path, takes_body) in &ops {
        if !(method == Method::POST || method == Method::PUT) {
            continue;
        }
        let url = format!("{}{}", app.base, concrete(path, &app.tenant, "n"));
        for body in hostile_bodies() {
            let (status, ct, text) = raw(
                &app,
                method.clone(),
                &url,
                Some("application/json"),
                body.clone(),
            )
            .await;
            assert!(
                status.is_client_error() || status.is_success(),
                "{method} {path} with {:?}: {status} {text}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                assert_eq!(ct, "application/problem+json", "{method} {path}: {text}");
                let problem: Value = serde_json::from_str(&text).expect("problem JSON");
                assert!(problem["code"].is_string(), "{text}");
            }
        }
        // Wrong content types (routes without a body ignore it).
        if !takes_body {
            continue;
        }
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let (status, _, text) = raw(&app, method.clone(), &url, Some(ct), b"{}".to_vec()).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path} {ct}: {text}"
            );
        }
    }
    // Still serving.
    app.publish("alive", &serde_json::json!({"payload": 1}))
        .await;
}

#[tokio::test]
async fn hostile_path_parameters_and_methods_get_4xx_problems() {
    let app = TestApp::start().await;
    let ops = operations(&app).await;
    let long = "x".repeat(10 * 1024);
    let names = [
        long.as_str(),
        "%00",
        "a%0Ab",
        "%E2%80%AE",
        "caf%C3%A9",
        "%F0%9F%92%A3",
        "a%2Fb",
        "..",
        "%7B%7D",
        "a:b",
        "%FF",
    ];
    for (method, path, _) in ops.iter().filter(|(_, p, _)| p.starts_with("/v1")) {
        for name in names {
            for url in [
                format!("{}{}", app.base, concrete(path, name, "ok")),
                format!("{}{}", app.base, concrete(path, &app.tenant, name)),
            ] {
                let body =
                    (method == Method::POST || method == Method::PUT).then(|| b"{}".to_vec());
                let (status, ct, text) = raw(
                    &app,
                    method.clone(),
                    &url,
                    Some("application/json"),
                    body.unwrap_or_default(),
                )
                .await;
                assert!(
                    status.is_client_error() || status.is_success(),
                    "{method} {path} with {name:.40}: {status} {text:.200}"
                );
                if status.is_client_error() {
                    assert_eq!(
                        ct, "application/problem+json",
                        "{method} {url:.120}: {text:.200}"
                    );
                }
            }
        }
        let url = format!("{}{}", app.base, concrete(path, &app.tenant, "ok"));
        let (status, ct, _) = raw(&app, Method::PATCH, &url, None, Vec::new()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "PATCH {path}");
        assert_eq!(ct, "application/problem+json");
    }
    // Duplicate and unknown query parameters.
    for query in [
        "limit=1&limit=2",
        "after=1-0&after=2-0",
        "limit=%00",
        "limit=99999999999999999999999",
    ] {
        let reply = app.get(&format!("/topics/t/messages?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
    }
    app.publish("alive", &serde_json::json!({"payload": 1}))
        .await;
}

/// Resident memory of a process, in MiB.
fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test]
async fn a_100_mb_body_is_refused_early_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let sc = StreamcarProcess::start(&redis.url(), &[]).await;
    let before = rss_mb(sc.pid());
    let addr = sc.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/tenants/t/topics/big/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    let mut sent = 0;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += 1,
            _ => break, // the server stopped reading: refused early
        }
    }
    drop(stream);
    assert!(
        sent < 100,
        "the server kept reading a body far over --max-body"
    );
    let after = rss_mb(sc.pid());
    assert!(
        after < before + 64.0,
        "memory grew from {before:.1} to {after:.1} MiB"
    );
    // A chunked 100 MB body through a normal client: 413, and still serving.
    let client = reqwest::Client::new();
    let body = reqwest::Body::wrap_stream(futures_util_stream(100));
    let resp = client
        .post(format!("{}/v1/tenants/t/topics/big/messages", sc.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let ok = client
        .post(format!("{}/v1/tenants/t/topics/big/messages", sc.base))
        .json(&serde_json::json!({"payload": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(rss_mb(sc.pid()) < before + 64.0);
}

/// `mb` chunks of 1 MiB of spaces, as a body stream.
fn futures_util_stream(
    mb: usize,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter((0..mb).map(|_| Ok(vec![b' '; 1024 * 1024])))
}

#[tokio::test]
async fn slow_loris_clients_do_not_starve_others() {
    let redis = RedisServer::start();
    let sc = StreamcarProcess::start(&redis.url(), &[]).await;
    let addr = sc.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/tenants/t/topics/x/messages HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Dribble one byte on each, while a normal client works.
    for s in &mut slow {
        let _ = s.write_all(b"a").await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for i in 0..20 {
        let resp = client
            .post(format!("{}/v1/tenants/t/topics/x/messages", sc.base))
            .json(&serde_json::json!({"payload": i}))
            .send()
            .await
            .expect("served despite slow clients");
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    drop(slow);
}
