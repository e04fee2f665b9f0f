//! Adversarial probes of realtime channels, through the public HTTP API
//! against a real redis-server: positions at their limits, big integers,
//! bad input, keys deleted under a publisher, config changed under a
//! replaying subscriber, and what one history page costs Redis.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::TestApp;
use support::sse::Sse;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Longest any single wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(15);

async fn publish(app: &TestApp, channel: &str, body: &Value) -> Value {
    let reply = app
        .post(&format!("/channels/{channel}/messages"), body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

async fn publish_n(app: &TestApp, channel: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for i in 0..n {
        last = publish(app, channel, &json!({ "payload": { "i": i } })).await;
    }
    last
}

fn offsets(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(app: &TestApp) -> Ws {
    let url = app.url("/ws").replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

async fn ws_send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next text frame, raw (pings skipped); panics when the socket closes.
async fn ws_next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait limit")
            .expect("socket open")
            .expect("frame");
        match msg {
            WsMessage::Text(text) => return text.as_str().to_owned(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn ws_next(ws: &mut Ws) -> Value {
    serde_json::from_str(&ws_next_text(ws).await).expect("JSON frame")
}

/// Every bad input on the channel routes is a 4xx problem+json with a
/// stable code: never a 5xx, a panic or a hang.
#[tokio::test]
async fn bad_input_on_channel_routes_is_a_4xx_problem() {
    let app = TestApp::start().await;
    let last = publish_n(&app, "bad", 2).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let long_epoch = "9".repeat(33);
    let get = |q: &str| app.url(&format!("/channels/bad/messages?{q}"));
    let mut cases: Vec<(Method, String, Option<Value>, &str)> = Vec::new();
    for since in [
        "",
        "0",
        "-1",
        ":",
        ":1",
        "e:",
        "e:-1",
        "e:1.5",
        "e:+1",
        "e:%201",
        "%20e:1",
        "e:1e3",
        "a:b:1",
        "%FF:1",
        "e:18446744073709551615",
        "e:18446744073709551616",
        "e:99999999999999999999999999",
        &format!("{long_epoch}:1"),
        &format!("{epoch}:0x1"),
        &format!("{epoch}:01"),
    ] {
        cases.push((
            Method::GET,
            get(&format!("since={since}")),
            None,
            "invalid_field",
        ));
    }
    for q in ["limit=0", "limit=1001", "limit=18446744073709551615"] {
        cases.push((Method::GET, get(q), None, "invalid_field"));
    }
    for q in [
        "limit=-1",
        "limit=1.5",
        "limit=abc",
        "limit=",
        "limit=18446744073709551616",
        "foo=1",
        "since=e:1&since=e:2",
    ] {
        cases.push((Method::GET, get(q), None, "invalid_query"));
    }
    let put = app.url("/channels/bad");
    for (body, code) in [
        (json!([]), "invalid_body"),
        (json!("x"), "invalid_body"),
        (json!({ "history_size": -1 }), "invalid_field"),
        (json!({ "history_size": 10_001 }), "invalid_field"),
        (json!({ "history_size": 1.5 }), "invalid_field"),
        (json!({ "history_size": "5" }), "invalid_field"),
        (
            json!({ "history_size": 18_446_744_073_709_551_615u64 }),
            "invalid_field",
        ),
        (json!({ "history_size": 1e300 }), "invalid_field"),
        (json!({ "history_ttl_ms": 0 }), "invalid_field"),
        (
            json!({ "history_ttl_ms": 2_592_000_001u64 }),
            "invalid_field",
        ),
        (json!({ "history_ttl_ms": -5 }), "invalid_field"),
        (json!({ "history_size": 5, "extra": 1 }), "invalid_field"),
    ] {
        cases.push((Method::PUT, put.clone(), Some(body), code));
    }
    let post = app.url("/channels/bad/messages");
    for body in [
        json!({}),
        json!({ "payload": 1, "extra": 1 }),
        json!({ "payload": 1, "idempotency_key": "k".repeat(257) }),
        json!({ "payload": 1, "idempotency_key": "a\u{0}b" }),
        json!({ "payload": 1, "idempotency_key": 5 }),
        json!({ "payload": 1, "headers": { "k": 1 } }),
        json!({ "payload": 1, "headers": [] }),
    ] {
        cases.push((Method::POST, post.clone(), Some(body), "invalid_field"));
    }
    cases.push((
        Method::PUT,
        app.url(&format!("/channels/{}", "c".repeat(129))),
        Some(json!({})),
        "invalid_name",
    ));
    cases.push((
        Method::GET,
        app.url("/channels/a%00b"),
        None,
        "invalid_name",
    ));
    cases.push((Method::GET, app.url("/channels/.dot"), None, "invalid_name"));
    cases.push((Method::GET, app.url("/channels/%FF"), None, "invalid_path"));
    cases.push((
        Method::DELETE,
        app.url("/channels/bad"),
        None,
        "method_not_allowed",
    ));
    cases.push((
        Method::GET,
        app.url("/ws"),
        None,
        "websocket_upgrade_required",
    ));

    for (method, url, body, code) in cases {
        let reply = app.send(method.clone(), &url, body.as_ref()).await;
        assert!(
            reply.status.is_client_error(),
            "{method} {url} {body:?}: {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(
            reply.content_type(),
            "application/problem+json",
            "{method} {url}"
        );
        assert_eq!(
            reply.body["code"], code,
            "{method} {url} {body:?}: {}",
            reply.body
        );
    }

    // Raw bodies: not JSON, not UTF-8, too large, wrong type, empty.
    let raw = |method: Method, url: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut req = app.client.request(method, url).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req
    };
    for (req, status, code) in [
        (
            raw(Method::POST, &post, None, b"{".to_vec()),
            400,
            "invalid_body",
        ),
        (
            raw(Method::POST, &post, None, b"".to_vec()),
            400,
            "invalid_field",
        ),
        (
            raw(Method::POST, &post, None, vec![b'"', 0xFF, b'"']),
            400,
            "invalid_body",
        ),
        (
            raw(
                Method::POST,
                &post,
                None,
                br#"{"payload":1,"payload":2}"#.to_vec(),
            ),
            400,
            "invalid_body",
        ),
        (
            raw(
                Method::POST,
                &post,
                Some("text/plain"),
                br#"{"payload":1}"#.to_vec(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                Method::POST,
                &post,
                None,
                format!(r#"{{"payload":"{}"}}"#, "x".repeat(2 << 20)).into_bytes(),
            ),
            413,
            "payload_too_large",
        ),
        (
            raw(Method::PUT, &put, None, b"{\"history_size\":".to_vec()),
            400,
            "invalid_body",
        ),
    ] {
        let reply = TestApp::reply(req.send().await.expect("request")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            reply.body
        );
        reply.assert_problem(status, code);
    }

    // Last-Event-ID: garbage, and bytes that are not visible ASCII.
    let events = app.url("/channels/bad/events");
    for value in [
        reqwest::header::HeaderValue::from_static("garbage"),
        reqwest::header::HeaderValue::from_static("e:18446744073709551616"),
        reqwest::header::HeaderValue::from_bytes(b"\xFF\xFE:1").unwrap(),
    ] {
        let resp = app
            .client
            .get(&events)
            .header("last-event-id", value)
            .send()
            .await
            .unwrap();
        TestApp::reply(resp)
            .await
            .assert_problem(400, "invalid_field");
    }
    // Nothing above wrote a message.
    let info = app.get("/channels/bad").await;
    assert_eq!(info.body["top_offset"], 2, "{}", info.body);
    assert_eq!(info.body["epoch"], epoch.as_str());
}

/// The peak RSS of the test's redis-server, in bytes.
fn redis_peak(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut app.redis.connection())
        .unwrap();
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id")
        .trim()
        .parse()
        .unwrap();
    support::proc_memory_bytes(pid, "VmHWM")
}

/// A history page holds about `--channel-queue-bytes` of messages, and so
/// must what Redis reads to build it: a page of 1000 large messages must
/// not be loaded whole into the script only to hand back two of them (a
/// replay from the start then costs Redis the whole history per page).
#[tokio::test]
async fn a_page_of_large_messages_costs_redis_about_one_page() {
    let app = TestApp::start().await;
    app.put("/channels/big", &json!({ "history_size": 1000 }))
        .await;
    let big = "x".repeat(600 << 10);
    let mut last = Value::Null;
    for i in 0..120 {
        last = publish(&app, "big", &json!({ "payload": { "i": i, "big": big } })).await;
    }
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let before = redis_peak(&app);

    // One page from the start: at most about 1 MiB of messages.
    let page = app
        .get(&format!(
            "/channels/big/messages?since={epoch}:0&limit=1000"
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["recovered"], true);
    assert_eq!(offsets(&page.body), vec![1], "about one queue of bytes");
    // A replay from the start, page by page, to the end.
    let mut sse = Sse::open(
        &app.url("/channels/big/events"),
        Some(&format!("{epoch}:0")),
    )
    .await;
    for expected in 1..=120u64 {
        let event = sse.expect().await;
        assert_eq!(event.data["offset"], expected, "{}", event.event);
    }
    let growth = redis_peak(&app).saturating_sub(before);
    eprintln!("redis peak growth {} KiB", growth >> 10);
    assert!(
        growth < 48 << 20,
        "Redis peak RSS grew {} MiB to serve pages of about 1 MiB",
        growth >> 20
    );
}
