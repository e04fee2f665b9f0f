//! Adversarial probes of realtime channels, through the public HTTP API
//! against a real redis-server: positions at their limits, big integers,
//! bad input, keys deleted under a publisher, config changed under a
//! replaying subscriber, and what one history page costs Redis.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;
use support::sse::Sse;
use support::ws::{self, Ws};
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// Bad input, one per line: `METHOD path expected-code [raw body]`.
const BAD_INPUT: &str = include_str!("fixtures/channel-bad-input.txt");

/// Every bad input on the channel routes is a 4xx problem+json with a
/// stable code: never a 5xx, a panic or a hang; and nothing is written.
#[tokio::test]
async fn bad_input_on_channel_routes_is_a_4xx_problem() {
    let app = TestApp::start().await;
    let epoch = publish_n(&app, "bad", 2).await["epoch"].clone();
    let long_key = format!(r#"{{"payload":1,"idempotency_key":"{}"}}"#, "k".repeat(257));
    let huge = format!(r#"{{"payload":"{}"}}"#, "x".repeat(2 << 20));
    let extra = [
        format!("POST /channels/bad/messages invalid_field {long_key}"),
        format!("POST /channels/bad/messages payload_too_large {huge}"),
    ];
    let lines = BAD_INPUT.lines().map(str::to_owned).chain(extra);
    for line in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut parts = line.splitn(4, ' ');
        let (method, path, code) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let path = path.replace('~', &"c".repeat(129));
        let mut req = app.client.request(method.parse().unwrap(), app.url(&path));
        if let Some(body) = parts.next() {
            req = req.body(body.to_owned());
        }
        let reply = TestApp::reply(req.send().await.expect("request")).await;
        let what = &line[..line.len().min(120)];
        assert!(
            reply.status.is_client_error(),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{what}");
        assert_eq!(reply.body["code"], code, "{what}: {}", reply.body);
    }
    let text = app
        .client
        .post(app.url("/channels/bad/messages"))
        .header("content-type", "text/plain")
        .body(r#"{"payload":1}"#)
        .send()
        .await
        .unwrap();
    TestApp::reply(text)
        .await
        .assert_problem(415, "unsupported_media_type");
    // Last-Event-ID: garbage, too large, bytes that are not visible ASCII.
    for value in [&b"garbage"[..], b"e:18446744073709551616", b"\xFF\xFE:1"] {
        let resp = app
            .client
            .get(app.url("/channels/bad/events"))
            .header(
                "last-event-id",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            )
            .send()
            .await
            .unwrap();
        TestApp::reply(resp)
            .await
            .assert_problem(400, "invalid_field");
    }
    let info = app.get("/channels/bad").await;
    assert_eq!(
        (&info.body["top_offset"], &info.body["epoch"]),
        (&json!(2), &epoch)
    );
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
    assert!(
        growth < 48 << 20,
        "Redis peak RSS grew {} MiB to serve pages of about 1 MiB",
        growth >> 20
    );
}

/// Positions at their limits: 0, the top, one past it, past 2^53, the
/// largest accepted offset, another epoch. History, SSE and WebSocket
/// agree: recovered exactly, or not recovered / one reset to the top.
#[tokio::test]
async fn positions_at_their_limits_resume_or_reset() {
    let app = TestApp::start().await;
    let last = publish_n(&app, "lim", 5).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let page = |since: String| {
        let app = &app;
        async move {
            let reply = app
                .get(&format!("/channels/lim/messages?since={since}"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{since}: {}", reply.body);
            reply.body
        }
    };
    let zero = page(format!("{epoch}:0")).await;
    assert_eq!(zero["recovered"], true);
    assert_eq!(offsets(&zero), vec![1, 2, 3, 4, 5]);
    let top = page(format!("{epoch}:5")).await;
    assert_eq!(top["recovered"], true);
    assert_eq!(offsets(&top), Vec::<u64>::new());
    for gone in [
        format!("{epoch}:6"),
        format!("{epoch}:9007199254740992"),
        format!("{epoch}:9007199254740993"),
        format!("{epoch}:9223372036854775807"),
        format!("{epoch}:9223372036854775808"),
        format!("{epoch}:9999999999999999999"),
        "1:3".to_owned(),
        format!("{}:3", "Z".repeat(32)),
        "0:0".to_owned(),
    ] {
        let body = page(gone.clone()).await;
        let seen = (&body["recovered"], offsets(&body), &body["epoch"]);
        assert_eq!(
            seen,
            (&json!(false), vec![1, 2, 3, 4, 5], &json!(epoch)),
            "{gone}"
        );
    }

    // SSE and WebSocket: one reset to the top, then live, for each.
    for since in [
        format!("{epoch}:9007199254740993"),
        format!("{epoch}:9999999999999999999"),
        "0:0".into(),
    ] {
        let top = app.get("/channels/lim").await.body["top_offset"]
            .as_u64()
            .unwrap();
        let sse = Sse::open(&app.url("/channels/lim/events"), Some(&since)).await;
        let mut ws = ws::connect(&app).await;
        ws::send(
            &mut ws,
            json!({ "op": "subscribe", "channel": "lim", "since": since }),
        )
        .await;
        assert_eq!(ws::next(&mut ws).await["recovered"], false, "{since}");
        let next = publish(&app, "lim", &json!({ "payload": "live" })).await;
        assert_eq!(next["offset"], top + 1);
        for mut sub in [Subscriber::Sse(sse), Subscriber::Ws(Box::new(ws))] {
            let (kind, e, at, _) = sub.next().await;
            assert_eq!(
                (kind.as_str(), e.as_str(), at),
                ("reset", epoch.as_str(), top),
                "{since}"
            );
            let (kind, _, at, payload) = sub.next().await;
            assert_eq!(
                (kind.as_str(), at, payload),
                ("message", top + 1, json!("live"))
            );
        }
    }
}

/// Integers beyond 2^53 (and beyond 64 bits) in payloads reach history,
/// SSE and WebSocket subscribers digit for digit: the scripts splice the
/// JSON text, they never hold it as a Lua number.
#[tokio::test]
async fn big_integers_in_payloads_stay_exact_everywhere() {
    let app = TestApp::start().await;
    let mut sse = Sse::open(&app.url("/channels/nums/events"), None).await;
    let mut ws = ws::connect(&app).await;
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "nums" })).await;
    assert_eq!(ws::next(&mut ws).await["type"], "subscribed");
    let digits = [
        "9007199254740993",
        "18446744073709551615",
        "-9223372036854775808",
        "123456789012345678901234567890",
        "1.0000000000000000000000001",
    ];
    let text = r#"{"payload":{"a":9007199254740993,"b":18446744073709551615,"c":-9223372036854775808,"d":123456789012345678901234567890,"e":1.0000000000000000000000001},"headers":{"n":"9007199254740993"}}"#;
    let published = app.post_text("/channels/nums/messages", text).await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.body);
    let history = app
        .client
        .get(app.url("/channels/nums/messages"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frame = ws::next_text(&mut ws).await;
    for d in digits {
        assert!(history.contains(d), "history keeps {d}: {history}");
        assert!(frame.contains(d), "the WebSocket frame keeps {d}: {frame}");
    }
    let event = sse.expect().await;
    assert_eq!(event.data["payload"]["a"], 9_007_199_254_740_993u64);
    assert_eq!(event.data["payload"]["b"], u64::MAX);
    assert_eq!(event.data["payload"]["c"], i64::MIN);
    assert_eq!(event.data["headers"]["n"], "9007199254740993");
    // The same over the WebSocket publish path.
    ws.send(WsMessage::text(
        r#"{"op":"publish","channel":"nums","payload":[18446744073709551615,9007199254740993]}"#,
    ))
    .await
    .unwrap();
    let frame = ws::next_text(&mut ws).await;
    assert!(
        frame.contains("[18446744073709551615,9007199254740993]"),
        "{frame}"
    );
    assert_eq!(sse.expect().await.data["offset"], 2);
}

/// A subscriber over either transport.
enum Subscriber {
    Sse(Sse),
    Ws(Box<Ws>),
}

impl Subscriber {
    /// The next `(kind, epoch, offset or top_offset, payload)`.
    async fn next(&mut self) -> (String, String, u64, Value) {
        let (kind, data) = match self {
            Self::Sse(sse) => {
                let e = sse.expect().await;
                (e.event, e.data)
            }
            Self::Ws(ws) => {
                let f = ws::next(ws).await;
                (f["type"].as_str().unwrap().to_owned(), f)
            }
        };
        let at = if kind == "reset" {
            "top_offset"
        } else {
            "offset"
        };
        let epoch = data["epoch"].as_str().unwrap().to_owned();
        (
            kind,
            epoch,
            data[at].as_u64().unwrap(),
            data["payload"].clone(),
        )
    }

    /// Follows the events from `start` until the subscriber stands at
    /// `end`: every message must be the next offset of its epoch and the
    /// one published there (`sent`); a reset moves it. Returns the resets.
    async fn follow(
        &mut self,
        start: (String, u64),
        end: &(String, u64),
        sent: &HashMap<(String, u64), Value>,
    ) -> usize {
        let (mut at, mut resets) = (start, 0);
        for _ in 0..5000 {
            if &at == end {
                return resets;
            }
            let (kind, epoch, offset, payload) = self.next().await;
            if kind == "reset" {
                resets += 1;
            } else {
                assert_eq!(kind, "message");
                assert_eq!((&epoch, offset), (&at.0, at.1 + 1), "no gap, no duplicate");
                assert_eq!(sent.get(&(epoch.clone(), offset)), Some(&payload));
            }
            at = (epoch, offset);
        }
        panic!("never reached {end:?}; at {at:?}");
    }
}

/// A channel's keys deleted (all, the meta alone, the history alone) while
/// messages are published: an offset never names two messages, and
/// subscribers see each offset in order or a reset, never a silent gap. A
/// position of a deleted epoch is not trusted in the re-created channel.
#[tokio::test]
async fn keys_deleted_under_a_publisher_never_give_a_gap_or_a_duplicate() {
    let app = TestApp::start().await;
    let sse = Sse::open(&app.url("/channels/race/events"), None).await;
    let mut ws = ws::connect(&app).await;
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "race" })).await;
    let subscribed = ws::next(&mut ws).await;
    let start = (subscribed["epoch"].as_str().unwrap().to_owned(), 0);
    let prefix = format!("sc:ch:{{{}:race}}", app.tenant);
    let mut redis = app.redis.connection();
    let deleter = tokio::task::spawn_blocking(move || {
        for i in 0..60 {
            let keys: &[&str] = match i % 3 {
                0 => &[":meta", ":history"],
                1 => &[":meta"],
                _ => &[":history"],
            };
            let mut del = redis::cmd("DEL");
            for k in keys {
                del.arg(format!("{prefix}{k}"));
            }
            let _: i64 = del.query(&mut redis).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    let mut sent = HashMap::new();
    for i in 0..300 {
        let body = publish(&app, "race", &json!({ "payload": i })).await;
        let at = (
            body["epoch"].as_str().unwrap().to_owned(),
            body["offset"].as_u64().unwrap(),
        );
        assert!(
            sent.insert(at.clone(), json!(i)).is_none(),
            "{at:?} named twice"
        );
    }
    deleter.await.unwrap();
    let last = publish(&app, "race", &json!({ "payload": "end" })).await;
    let end = (
        last["epoch"].as_str().unwrap().to_owned(),
        last["offset"].as_u64().unwrap(),
    );
    sent.insert(end.clone(), json!("end"));
    let epochs: std::collections::BTreeSet<&String> = sent.keys().map(|(e, _)| e).collect();
    assert!(epochs.len() > 1, "the deletions started new epochs");

    let sse_resets = Subscriber::Sse(sse)
        .follow(start.clone(), &end, &sent)
        .await;
    let ws_resets = Subscriber::Ws(Box::new(ws))
        .follow(start, &end, &sent)
        .await;
    assert!(sse_resets > 0 && ws_resets > 0, "lost history is announced");

    // A position of an earlier epoch, at an offset the new one also has.
    let old = epochs.iter().find(|e| **e != &end.0).unwrap();
    let page = app
        .get(&format!("/channels/race/messages?since={old}:1"))
        .await;
    assert_eq!(page.body["recovered"], false, "{}", page.body);
    assert_eq!(page.body["epoch"], end.0.as_str());
    let mut again = Sse::open(&app.url("/channels/race/events"), Some(&format!("{old}:1"))).await;
    let reset = again.expect().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.data["epoch"], end.0.as_str());
}

/// The config lowered while subscribers replay a long history page by
/// page: a smaller history_size turns the rest of the replay into one
/// reset to the top (never a jump), and a history_ttl_ms that lets the
/// keys expire gives a new epoch, announced the same way.
#[tokio::test]
async fn config_lowered_under_replaying_subscribers() {
    // Small queues: a page is a few messages, so the replay takes many.
    let app = TestApp::start_with(|c| c.channel_queue_bytes = 4096).await;
    app.put("/channels/shrink", &json!({ "history_size": 1000 }))
        .await;
    let pad = "p".repeat(1000);
    let mut sent = HashMap::new();
    let mut end = (String::new(), 0);
    for i in 0..200 {
        let body = publish(&app, "shrink", &json!({ "payload": [i, pad] })).await;
        end = (
            body["epoch"].as_str().unwrap().to_owned(),
            body["offset"].as_u64().unwrap(),
        );
        sent.insert(end.clone(), json!([i, pad]));
    }
    let epoch = end.0.clone();
    let from = format!("{epoch}:0");
    let mut sse =
        Subscriber::Sse(Sse::open(&app.url("/channels/shrink/events"), Some(&from)).await);
    let mut ws = ws::connect(&app).await;
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "shrink", "since": from }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["recovered"], true);
    let mut ws = Subscriber::Ws(Box::new(ws));
    for sub in [&mut sse, &mut ws] {
        sub.follow((epoch.clone(), 0), &(epoch.clone(), 10), &sent)
            .await;
    }
    let shrunk = app
        .put("/channels/shrink", &json!({ "history_size": 5 }))
        .await;
    assert_eq!(shrunk.status, StatusCode::OK);
    // What was already read ahead is delivered, then one reset to 200 (the
    // WebSocket may have sent everything before the PUT).
    let resets = sse.follow((epoch.clone(), 10), &end, &sent).await;
    assert_eq!(resets, 1, "the rest of the replay is one reset");
    assert!(ws.follow((epoch.clone(), 10), &end, &sent).await <= 1);
    let next = publish(&app, "shrink", &json!({ "payload": "after" })).await;
    sent.insert((epoch.clone(), 201), json!("after"));
    assert_eq!(next["offset"], 201);
    for sub in [&mut sse, &mut ws] {
        sub.follow(end.clone(), &(epoch.clone(), 201), &sent).await;
    }

    // A TTL short enough to expire the history: a new epoch.
    app.put("/channels/shrink", &json!({ "history_ttl_ms": 1 }))
        .await;
    let mut expired = false;
    for _ in 0..100 {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("sc:ch:{{{}:shrink}}:meta", app.tenant))
            .query(&mut app.redis.connection())
            .unwrap();
        if exists == 0 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "the meta expired");
    app.put("/channels/shrink", &json!({ "history_ttl_ms": 60_000 }))
        .await;
    let fresh = publish(&app, "shrink", &json!({ "payload": "fresh" })).await;
    assert_ne!(fresh["epoch"], epoch.as_str());
    let fresh = (fresh["epoch"].as_str().unwrap().to_owned(), 1);
    sent.insert(fresh.clone(), json!("fresh"));
    for sub in [&mut sse, &mut ws] {
        let (kind, e, top, _) = sub.next().await;
        assert_eq!((kind.as_str(), &e, top), ("reset", &fresh.0, 1));
    }
    publish(&app, "shrink", &json!({ "payload": 2 })).await;
    sent.insert((fresh.0.clone(), 2), json!(2));
    for sub in [&mut sse, &mut ws] {
        sub.follow(fresh.clone(), &(fresh.0.clone(), 2), &sent)
            .await;
    }
}

/// A full history (10,000 kept of 10,500 published) replayed from the
/// oldest kept position pages to the end, by history reads, SSE and
/// WebSocket alike; one offset older is not recovered.
#[tokio::test]
async fn a_full_history_replays_page_by_page_to_the_end() {
    let app = TestApp::start().await;
    app.put("/channels/full", &json!({ "history_size": 10_000 }))
        .await;
    let url = app.url("/channels/full/messages");
    let publishers = (0..8).map(|w| {
        let (client, url) = (app.client.clone(), url.clone());
        tokio::spawn(async move {
            for i in (w..10_500).step_by(8) {
                let resp = client
                    .post(&url)
                    .json(&json!({ "payload": i }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
            }
        })
    });
    for p in futures_util::future::join_all(publishers).await {
        p.unwrap();
    }
    let info = app.get("/channels/full").await.body;
    assert_eq!(info["top_offset"], 10_500);
    let epoch = info["epoch"].as_str().unwrap().to_owned();
    let old = app
        .get(&format!("/channels/full/messages?since={epoch}:499"))
        .await;
    assert_eq!(old.body["recovered"], false);
    assert_eq!(offsets(&old.body)[0], 501);

    let (mut at, mut pages) = (500, 0);
    while at < 10_500 {
        let page = app
            .get(&format!(
                "/channels/full/messages?since={epoch}:{at}&limit=1000"
            ))
            .await;
        assert_eq!(page.body["recovered"], true, "{at}");
        let got = offsets(&page.body);
        assert_eq!(got, (at + 1..=at + got.len() as u64).collect::<Vec<_>>());
        at += got.len() as u64;
        pages += 1;
        assert!(pages <= 10, "pages of up to 1000");
    }
    let from = format!("{epoch}:500");
    let mut sse = Sse::open(&app.url("/channels/full/events"), Some(&from)).await;
    let mut ws = ws::connect(&app).await;
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "full", "since": from }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["recovered"], true);
    for expected in 501..=10_500u64 {
        assert_eq!(sse.expect().await.data["offset"], expected);
        assert_eq!(ws::next(&mut ws).await["offset"], expected);
    }
    publish(&app, "full", &json!({ "payload": "live" })).await;
    assert_eq!(sse.expect().await.data["offset"], 10_501);
    assert_eq!(ws::next(&mut ws).await["offset"], 10_501);
}

/// Redis restarted from a snapshot older than the last publishes (a crash
/// between saves, or a failover to a replica that lagged): the tail of the
/// history is lost with its meta, so the data alone looks whole. The epoch
/// must change all the same, or the offsets after the snapshot name two
/// messages each and a client resuming past them skips the new ones.
#[tokio::test]
async fn a_restart_from_an_older_snapshot_is_lost_history() {
    let mut app = TestApp::start().await;
    let before = publish_n(&app, "snap", 3).await;
    let epoch = before["epoch"].as_str().unwrap().to_owned();
    let _: () = redis::cmd("SAVE")
        .query(&mut app.redis.connection())
        .unwrap();
    // Published after the snapshot, and seen by a subscriber, up to 5.
    let mut sse = Sse::open(
        &app.url("/channels/snap/events"),
        Some(&format!("{epoch}:3")),
    )
    .await;
    publish_n(&app, "snap", 2).await;
    assert_eq!(sse.expect().await.data["offset"], 4);
    assert_eq!(sse.expect().await.data["offset"], 5);
    drop(sse);
    app.redis.restart();
    let mut after = Vec::new();
    for i in 0..200 {
        let reply = app
            .post(
                "/channels/snap/messages",
                &json!({ "payload": { "new": i } }),
            )
            .await;
        if reply.status == StatusCode::CREATED {
            after.push(reply.body);
            if after.len() == 3 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(after.len(), 3, "publishing works again");
    for body in &after {
        assert_ne!(body["epoch"], epoch.as_str(), "offsets named twice: {body}");
    }
    // The subscriber comes back at 5: told, not silently moved on.
    let mut sse = Sse::open(
        &app.url("/channels/snap/events"),
        Some(&format!("{epoch}:5")),
    )
    .await;
    let first = sse.expect().await;
    assert_eq!(first.event, "reset", "{first:?}");
}

/// One entry deleted from the middle of the history by someone else
/// (XDEL) is lost history: a new epoch, and a replay over the hole is one
/// reset, never the messages after the hole as if they continued.
#[tokio::test]
async fn a_hole_in_the_history_is_a_reset_not_a_silent_gap() {
    let app = TestApp::start().await;
    let last = publish_n(&app, "holes", 10).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let from = format!("{epoch}:2");
    let mut ws = ws::connect(&app).await;
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "holes", "since": from }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["recovered"], true);
    for expected in 3..=10 {
        assert_eq!(ws::next(&mut ws).await["offset"], expected);
    }
    let _: i64 = redis::cmd("XDEL")
        .arg(format!("sc:ch:{{{}:holes}}:history", app.tenant))
        .arg("5-0")
        .query(&mut app.redis.connection())
        .unwrap();
    let page = app
        .get(&format!("/channels/holes/messages?since={from}"))
        .await;
    assert_eq!(page.body["recovered"], false, "{}", page.body);
    let fresh = page.body["epoch"].as_str().unwrap().to_owned();
    assert_ne!(fresh, epoch, "{}", page.body);
    assert_eq!(offsets(&page.body), Vec::<u64>::new());
    // The WebSocket had its replay before the hole; a publish tells it.
    let next = publish(&app, "holes", &json!({ "payload": "after" })).await;
    assert_eq!(
        (next["epoch"].as_str(), next["offset"].as_u64()),
        (Some(fresh.as_str()), Some(1))
    );
    // One reset to the new epoch (at 0 if a resync read came first, then 1).
    let sent = HashMap::from([((fresh.clone(), 1), json!("after"))]);
    let mut ws = Subscriber::Ws(Box::new(ws));
    let resets = ws.follow((epoch, 10), &(fresh.clone(), 1), &sent).await;
    assert_eq!(resets, 1);
    let mut sse = Subscriber::Sse(Sse::open(&app.url("/channels/holes/events"), Some(&from)).await);
    let (kind, e, top, _) = sse.next().await;
    assert_eq!(
        (kind.as_str(), e.as_str(), top),
        ("reset", fresh.as_str(), 1)
    );
}

/// Messages right at --max-body, each larger than a connection's whole
/// queue: published over HTTP and WebSocket, replayed one per page and
/// delivered live, byte for byte; one byte over is a 413.
#[tokio::test]
async fn messages_at_max_body_larger_than_the_queue() {
    let app = TestApp::start_with(|c| {
        c.max_body = 64 << 10;
        c.channel_queue_bytes = 4096;
    })
    .await;
    let body = |fill: usize| format!(r#"{{"payload":"{}"}}"#, "x".repeat(fill));
    let fill = (64 << 10) - body(0).len();
    let mut sse = Sse::open(&app.url("/channels/max/events"), None).await;
    let mut ws = ws::connect(&app).await;
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "max" })).await;
    let epoch = ws::next(&mut ws).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let published = app.post_text("/channels/max/messages", body(fill)).await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.body);
    app.post_text("/channels/max/messages", body(fill + 1))
        .await
        .assert_problem(413, "payload_too_large");
    // A WebSocket publish frame of exactly --max-body.
    let frame = |fill: usize| {
        format!(
            r#"{{"op":"publish","channel":"max","payload":"{}"}}"#,
            "x".repeat(fill)
        )
    };
    let ws_fill = (64 << 10) - frame(0).len();
    ws.send(WsMessage::text(frame(ws_fill))).await.unwrap();
    for expected in 1..=2u64 {
        let event = sse.expect().await;
        assert_eq!(event.data["offset"], expected);
        let len = event.data["payload"].as_str().unwrap().len();
        assert_eq!(len, if expected == 1 { fill } else { ws_fill });
        assert_eq!(ws::next(&mut ws).await["offset"], expected);
    }
    let mut replay = Sse::open(
        &app.url("/channels/max/events"),
        Some(&format!("{epoch}:0")),
    )
    .await;
    for expected in 1..=2u64 {
        assert_eq!(replay.expect().await.data["offset"], expected);
    }
    let page = app
        .get(&format!("/channels/max/messages?since={epoch}:0"))
        .await;
    assert_eq!(offsets(&page.body), vec![1], "one per page");
    assert_eq!(app.get("/channels/max").await.body["top_offset"], 2);
}
