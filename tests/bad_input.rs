//! What bad input gets (the README's error table): every case answers
//! problem+json with the right status and code, writes nothing, and the
//! process keeps serving.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::TestApp;

/// Sends a raw body with an explicit content type.
async fn send_raw(
    app: &TestApp,
    method: Method,
    url: &str,
    ct: &str,
    body: Vec<u8>,
) -> support::Reply {
    let resp = app
        .client
        .request(method, url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("send");
    TestApp::reply(resp).await
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_field_and_write_nothing() {
    let app = TestApp::start().await;
    let url = app.url("/topics/t/messages");
    // (body, expected code, expected field or None)
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("{\"payload\": 1", "invalid_body", None),
        ("not json", "invalid_body", None),
        ("[1,2]", "invalid_body", None),
        ("{\"payload\":1} trailing", "invalid_body", None),
        ("{}", "invalid_field", Some("payload")),
        (
            "{\"payload\":1,\"ttl_ms\":\"soon\"}",
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            "{\"payload\":1,\"ttl_ms\":-5}",
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            "{\"payload\":1,\"ttl_ms\":0}",
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            "{\"payload\":1,\"ttl_ms\":1e40}",
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            "{\"payload\":1,\"delay_ms\":99999999999999999999}",
            "invalid_field",
            Some("delay_ms"),
        ),
        ("{\"payload\":1,\"id\":7}", "invalid_field", Some("id")),
        ("{\"payload\":1,\"id\":\"\"}", "invalid_field", Some("id")),
        (
            "{\"payload\":1,\"id\":\"a\\nb\"}",
            "invalid_field",
            Some("id"),
        ),
        (
            "{\"payload\":1,\"headers\":{\"a\":1}}",
            "invalid_field",
            Some("headers.a"),
        ),
        (
            "{\"payload\":1,\"headers\":[]}",
            "invalid_field",
            Some("headers"),
        ),
        ("{\"payload\":1,\"colour\":\"red\"}", "invalid_field", None),
    ];
    for (body, code, field) in cases {
        let reply = send_raw(
            &app,
            Method::POST,
            &url,
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await;
        let problem = reply.assert_problem(400, code);
        if let Some(field) = field {
            assert_eq!(problem["field"], *field, "body {body}: {problem}");
        }
        if body.contains("colour") {
            assert!(
                problem["detail"].as_str().unwrap().contains("colour"),
                "{problem}"
            );
        }
    }
    let long_id = json!({"payload": 1, "id": "x".repeat(129)});
    app.post("/topics/t/messages", &long_id)
        .await
        .assert_problem(400, "invalid_field");
    let many_headers: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
    app.post(
        "/topics/t/messages",
        &json!({"payload": 1, "headers": many_headers}),
    )
    .await
    .assert_problem(400, "invalid_field");
    // Nothing was written: the topic was never even created.
    app.get("/topics/t")
        .await
        .assert_problem(404, "topic_not_found");
}

#[tokio::test]
async fn topic_config_is_validated() {
    let app = TestApp::start().await;
    for (body, field) in [
        (json!({"dedup_window_ms": 0}), "dedup_window_ms"),
        (json!({"retention_ms": -1}), "retention_ms"),
        (json!({"max_backlog": "lots"}), "max_backlog"),
        (json!({"max_backlog": 1e12}), "max_backlog"),
    ] {
        let reply = app.put("/topics/cfg", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{body}"
        );
    }
    app.put("/topics/cfg", &json!({"retention": 1}))
        .await
        .assert_problem(400, "invalid_field");
    app.get("/topics/cfg")
        .await
        .assert_problem(404, "topic_not_found");
}

#[tokio::test]
async fn invalid_names_are_400() {
    let app = TestApp::start().await;
    let long = "x".repeat(129);
    let bad_names = [
        "a%7Bb",
        "a%7Db",
        "a:b",
        "a%20b",
        "-lead",
        ".dot",
        long.as_str(),
        "caf%C3%A9",
        "a%00b",
    ];
    for bad in bad_names {
        let topic_url = format!(
            "{}/v1/tenants/{}/topics/{bad}/messages",
            app.base, app.tenant
        );
        let reply = app
            .send(Method::POST, &topic_url, Some(&json!({"payload": 1})))
            .await;
        assert_eq!(
            reply.assert_problem(400, "invalid_name")["field"],
            "topic",
            "{bad}"
        );
        let tenant_url = format!("{}/v1/tenants/{bad}/topics/ok/messages", app.base);
        let reply = app
            .send(Method::POST, &tenant_url, Some(&json!({"payload": 1})))
            .await;
        assert_eq!(
            reply.assert_problem(400, "invalid_name")["field"],
            "tenant",
            "{bad}"
        );
    }
    let ok = format!(
        "{}/v1/tenants/{}/topics/{}/messages",
        app.base,
        app.tenant,
        "x".repeat(128)
    );
    let reply = app
        .send(Method::POST, &ok, Some(&json!({"payload": 1})))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "128 characters is allowed"
    );
}

#[tokio::test]
async fn oversized_body_is_413_and_the_server_keeps_serving() {
    let app = TestApp::start_with(|c| c.max_body = 64 * 1024).await;
    let url = app.url("/topics/big/messages");
    let big = format!("{{\"payload\":\"{}\"}}", "a".repeat(100 * 1024));
    let reply = send_raw(
        &app,
        Method::POST,
        &url,
        "application/json",
        big.into_bytes(),
    )
    .await;
    reply.assert_problem(413, "payload_too_large");
    let batch = format!(
        "{{\"messages\":[{{\"payload\":\"{}\"}}]}}",
        "a".repeat(100 * 1024)
    );
    let reply = send_raw(
        &app,
        Method::POST,
        &app.url("/topics/big/messages:batch"),
        "application/json",
        batch.into_bytes(),
    )
    .await;
    reply.assert_problem(413, "payload_too_large");
    // Just under the limit is fine, on the same client.
    let fits = format!("{{\"payload\":\"{}\"}}", "a".repeat(60 * 1024));
    let reply = send_raw(
        &app,
        Method::POST,
        &url,
        "application/json",
        fits.into_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(app.history("big").await.len(), 1);
}

#[tokio::test]
async fn content_type_route_method_and_query_errors() {
    let app = TestApp::start().await;
    let url = app.url("/topics/t/messages");
    send_raw(
        &app,
        Method::POST,
        &url,
        "text/plain",
        b"{\"payload\":1}".to_vec(),
    )
    .await
    .assert_problem(415, "unsupported_media_type");
    app.send(Method::GET, &format!("{}/v1/nope", app.base), None)
        .await
        .assert_problem(404, "route_not_found");
    app.send(Method::PATCH, &app.url("/topics/t"), None)
        .await
        .assert_problem(405, "method_not_allowed");
    app.publish("t", &json!({"payload": 1})).await;
    for query in [
        "after=abc",
        "after=1-2-3",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=x",
        "colour=red",
        "limit=1&limit=2",
    ] {
        let reply = app.get(&format!("/topics/t/messages?{query}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.body
        );
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{query}"
        );
    }
    app.get("/topics/missing")
        .await
        .assert_problem(404, "topic_not_found");
    app.get("/topics/missing/messages")
        .await
        .assert_problem(404, "topic_not_found");
    // Still serving.
    assert_eq!(app.history("t").await.len(), 1);
}

/// `s` percent-encoded byte by byte, for a path segment.
fn encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn text_limits_count_bytes_of_utf8_at_the_boundary() {
    let app = TestApp::start().await;
    // 'é' is 2 bytes, '€' 3, '😀' 4: each "over" value below has fewer
    // characters than the limit but one byte too many.
    let e2 = |n: usize| "é".repeat(n);
    let e3 = |n: usize| "€".repeat(n);
    let e4 = |n: usize| "😀".repeat(n);

    // Message id: 128 bytes.
    let ok = app
        .post("/topics/t/messages", &json!({"payload": 1, "id": e2(64)}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let over = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "id": format!("{}a", e2(64))}),
        )
        .await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "id");
    // idempotency_key: 256 bytes.
    let ok = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "idempotency_key": format!("{}a", e3(85))}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let over = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "idempotency_key": e3(86)}),
        )
        .await;
    assert_eq!(
        over.assert_problem(400, "invalid_field")["field"],
        "idempotency_key"
    );
    // Header names 128 bytes, values 4096 bytes.
    let ok = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "headers": {e2(64): e4(1024)}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let long_name = format!("{}a", e2(64));
    let over = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "headers": {long_name.clone(): "v"}}),
        )
        .await;
    assert_eq!(
        over.assert_problem(400, "invalid_field")["field"],
        format!("headers.{long_name}")
    );
    let over = app
        .post(
            "/topics/t/messages",
            &json!({"payload": 1, "headers": {"h": format!("{}a", e4(1024))}}),
        )
        .await;
    assert_eq!(
        over.assert_problem(400, "invalid_field")["field"],
        "headers.h"
    );
    assert_eq!(
        app.history("t").await.len(),
        3,
        "refused publishes wrote nothing"
    );

    // Idempotency keys (path) and owners: 256 bytes.
    let claim = |key: String, owner: String| {
        let app = &app;
        async move {
            app.post(
                &format!("/idempotency/{}/claim", encode(&key)),
                &json!({"ttl_ms": 60000, "owner": owner}),
            )
            .await
        }
    };
    let ok = claim(e2(128), e4(64)).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let over = claim(format!("{}a", e2(128)), "o".into()).await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "key");
    let over = claim("k".into(), format!("{}a", e4(64))).await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "owner");
    // Checkpoint names (path): 256 bytes.
    let ok = app
        .post(
            &format!("/checkpoints/{}/advance", encode(&format!("{}a", e3(85)))),
            &json!({"seq": 1}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let over = app
        .post(
            &format!("/checkpoints/{}/advance", encode(&e3(86))),
            &json!({"seq": 1}),
        )
        .await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "name");
    // Pool holders: 256 bytes.
    app.put("/pools/p", &json!({"capacity": 5, "lease_ms": 60000}))
        .await;
    let ok = app
        .post("/pools/p/acquire", &json!({"holder": e4(64)}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let over = app
        .post(
            "/pools/p/acquire",
            &json!({"holder": format!("{}a", e4(64))}),
        )
        .await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "holder");
    // Dead-letter ids (path): 128 bytes, like message ids.
    let over = app
        .delete(&format!(
            "/topics/t/groups/g/dlq/{}",
            encode(&format!("{}a", e2(64)))
        ))
        .await;
    assert_eq!(over.assert_problem(400, "invalid_name")["field"], "id");
    // A nack's error text: 4096 bytes.
    app.group("t", "g", &json!({})).await;
    let delivered = app.fetch("t", "g", "w", 1, 0).await;
    let receipt = delivered[0]["receipt"].clone();
    let over = app
        .post(
            "/topics/t/groups/g/nack",
            &json!({"receipts": [receipt], "error": format!("{}a", e2(2048))}),
        )
        .await;
    assert_eq!(over.assert_problem(400, "invalid_field")["field"], "error");
    let ok = app
        .post(
            "/topics/t/groups/g/nack",
            &json!({"receipts": [receipt], "error": e2(2048)}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

/// Every stable `code` the API can answer is in the README's error table.
#[test]
fn every_error_code_is_in_the_readme_error_table() {
    let readme = include_str!("../README.md");
    let start = readme.find("### Errors").expect("an Errors section");
    let end = start + readme[start..].find("\n## ").expect("a section after it");
    let table = &readme[start..end];
    let mut codes: Vec<&str> = vec![
        "invalid_body",
        "invalid_field",
        "invalid_name",
        "invalid_path",
        "invalid_query",
        "invalid_receipt",
        "in_progress",
        "stale_token",
        "reservation_lost",
        "lease_lost",
        "concurrent_change",
        "group_config_conflict",
        "join_config_conflict",
        "part_conflict",
        "join_finished",
        "join_too_large",
        "rate_limited",
        "backlog_full",
        "pool_full",
        "route_not_found",
        "method_not_allowed",
        "payload_too_large",
        "unsupported_media_type",
        "unauthorized",
        "redis_evicts",
        "internal",
    ];
    codes.extend(streamcar::error::NotFoundKind::ALL.map(|k| k.code()));
    codes.extend(streamcar::error::RedisOutage::ALL.map(|k| k.code()));
    for code in codes {
        assert!(
            table.contains(&format!("`{code}`")),
            "{code} is missing from the README's error table"
        );
    }
}
