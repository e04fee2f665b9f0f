//! Realtime channels (issue 17): offsets and epochs, bounded history, SSE
//! resume without gap or duplicate, resets for lost positions, fan-out to
//! many subscribers, one WebSocket for many channels, slow consumers, two
//! sidecars on one Redis, and a Redis restart mid-stream. Everything goes
//! through the public HTTP API against a real redis-server.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::sse::Sse;
use support::ws;
use support::{StreamcarProcess, TestApp};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Longest any single wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(15);

fn payload_of(offset: u64) -> Value {
    json!({ "n": offset })
}

async fn publish(app: &TestApp, channel: &str, body: &Value) -> (StatusCode, Value) {
    let reply = app
        .post(&format!("/channels/{channel}/messages"), body)
        .await;
    (reply.status, reply.body)
}

/// Publishes `n` messages and returns the last answer.
async fn publish_n(app: &TestApp, channel: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for i in 0..n {
        let (status, body) = publish(app, channel, &json!({ "payload": { "i": i } })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        last = body;
    }
    last
}

#[tokio::test]
async fn offsets_epochs_and_bounded_history() {
    let app = TestApp::start().await;
    let created = app
        .put("/channels/news", &json!({ "history_size": 5 }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["history_size"], 5);
    assert_eq!(created.body["history_ttl_ms"], 300_000);
    assert_eq!(created.body["top_offset"], 0);
    let again = app
        .put("/channels/news", &json!({ "history_size": 5 }))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let epoch = created.body["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(again.body["epoch"], epoch.as_str());

    for expected in 1..=8u64 {
        let (status, body) = publish(
            &app,
            "news",
            &json!({ "payload": payload_of(expected), "headers": { "k": "v" } }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["offset"], expected);
        assert_eq!(body["epoch"], epoch.as_str());
        assert_eq!(body["duplicate"], false);
    }
    // Idempotency: the same key again is the first publish, nothing written.
    let first = publish(
        &app,
        "news",
        &json!({ "payload": 1, "idempotency_key": "k1" }),
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first.1["offset"], 9);
    let dup = publish(
        &app,
        "news",
        &json!({ "payload": 2, "idempotency_key": "k1" }),
    )
    .await;
    assert_eq!(dup.0, StatusCode::OK);
    assert_eq!(dup.1["offset"], 9);
    assert_eq!(dup.1["duplicate"], true);

    let info = app.get("/channels/news").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["top_offset"], 9);
    assert_eq!(info.body["epoch"], epoch.as_str());

    // Bounded: the last 5 only; from the start, that is not a recovery.
    let all = app.get("/channels/news/messages").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let offsets: Vec<u64> = all.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![5, 6, 7, 8, 9]);
    assert_eq!(all.body["recovered"], false);
    assert_eq!(all.body["messages"][0]["payload"], payload_of(5));
    assert_eq!(all.body["messages"][0]["headers"]["k"], "v");
    assert!(all.body["messages"][0]["published_at"].as_u64().unwrap() > 0);

    let after6 = app
        .get(&format!("/channels/news/messages?since={epoch}:6&limit=2"))
        .await;
    assert_eq!(after6.body["recovered"], true, "{}", after6.body);
    let offsets: Vec<u64> = after6.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![7, 8]);
    let at_top = app
        .get(&format!("/channels/news/messages?since={epoch}:9"))
        .await;
    assert_eq!(at_top.body["recovered"], true);
    assert_eq!(at_top.body["messages"], json!([]));
    for gone in [
        format!("{epoch}:2"),
        "1:3".to_owned(),
        format!("{epoch}:99"),
    ] {
        let reply = app
            .get(&format!("/channels/news/messages?since={gone}"))
            .await;
        assert_eq!(reply.body["recovered"], false, "{gone}: {}", reply.body);
    }

    // No channel key lives forever: the config is kept for 30 days after
    // the last publish or PUT.
    let config_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("sc:ch:{{{}:news}}:config", app.tenant))
        .query(&mut app.redis.connection())
        .unwrap();
    assert!(
        config_ttl > 29 * 24 * 3600 * 1000,
        "config PTTL {config_ttl}"
    );

    // Bad input is a 400 problem, never a crash.
    app.get("/channels/news/messages?since=nope")
        .await
        .assert_problem(400, "invalid_field");
    app.get("/channels/news/messages?limit=0")
        .await
        .assert_problem(400, "invalid_field");
    app.put("/channels/news", &json!({ "history_size": 10_001 }))
        .await
        .assert_problem(400, "invalid_field");
    app.put("/channels/bad:name", &json!({}))
        .await
        .assert_problem(400, "invalid_name");
    app.post("/channels/news/messages", &json!({ "headers": {} }))
        .await
        .assert_problem(400, "invalid_field");
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_while_publishing_goes_on() {
    let app = TestApp::start().await;
    let first = publish_n(&app, "feed", 3).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    // Publishes 4..=40 run while the subscriber resumes from offset 1.
    let publisher = {
        let client = app.client.clone();
        let url = app.url("/channels/feed/messages");
        tokio::spawn(async move {
            for i in 4..=40u64 {
                let resp = client
                    .post(&url)
                    .json(&json!({ "payload": payload_of(i) }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), StatusCode::CREATED);
            }
        })
    };
    let mut sse = Sse::open(
        &app.url("/channels/feed/events"),
        Some(&format!("{epoch}:1")),
    )
    .await;
    for expected in 2..=40u64 {
        let event = sse.expect().await;
        assert_eq!(event.event, "message", "{event:?}");
        assert_eq!(
            event.id.as_deref(),
            Some(format!("{epoch}:{expected}").as_str())
        );
        assert_eq!(event.data["offset"], expected, "no gap, no duplicate");
        assert_eq!(event.data["epoch"], epoch.as_str());
        if expected >= 4 {
            assert_eq!(event.data["payload"], payload_of(expected));
        }
    }
    publisher.await.unwrap();
    // Then live.
    let (_, last) = publish(&app, "feed", &json!({ "payload": "live" })).await;
    assert_eq!(last["offset"], 41);
    let event = sse.expect().await;
    assert_eq!(event.data["offset"], 41);
    assert_eq!(event.data["payload"], "live");

    // ?since= works too, and an up-to-date position replays nothing.
    let mut again = Sse::open(
        &app.url(&format!("/channels/feed/events?since={epoch}:41")),
        None,
    )
    .await;
    publish(&app, "feed", &json!({ "payload": "next" })).await;
    assert_eq!(again.expect().await.data["offset"], 42);
}

#[tokio::test]
async fn lost_positions_get_one_reset_then_live() {
    let app = TestApp::start().await;
    app.put("/channels/short", &json!({ "history_size": 3 }))
        .await;
    let last = publish_n(&app, "short", 10).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();

    for position in [
        format!("{epoch}:2"),
        "123:5".to_owned(),
        format!("{epoch}:50"),
    ] {
        let mut sse = Sse::open(&app.url("/channels/short/events"), Some(&position)).await;
        let reset = sse.expect().await;
        assert_eq!(reset.event, "reset", "{position}: {reset:?}");
        assert_eq!(reset.data["epoch"], epoch.as_str());
        let top = reset.data["top_offset"].as_u64().unwrap();
        assert!(top >= 10);
        assert_eq!(reset.id, Some(format!("{epoch}:{top}")));
        let (_, next) = publish(&app, "short", &json!({ "payload": "after" })).await;
        let live = sse.expect().await;
        assert_eq!(live.event, "message");
        assert_eq!(live.data["offset"], next["offset"]);
    }

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("streamcar_channel_resumes_total{outcome=\"reset\"}"),
        "resume outcomes are counted"
    );

    // An invalid Last-Event-ID is a 400 problem.
    let bad = app
        .client
        .get(app.url("/channels/short/events"))
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    TestApp::reply(bad)
        .await
        .assert_problem(400, "invalid_field");
}

#[tokio::test]
async fn expired_channel_keys_give_a_new_epoch() {
    let app = TestApp::start().await;
    app.put("/channels/brief", &json!({ "history_ttl_ms": 100 }))
        .await;
    let last = publish_n(&app, "brief", 2).await;
    let old = last["epoch"].as_str().unwrap().to_owned();
    // Wait (bounded) until Redis has expired the channel's keys.
    let mut fresh = None;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info = app.get("/channels/brief").await;
        if info.body["epoch"] != old.as_str() {
            fresh = Some(info.body);
            break;
        }
    }
    let fresh = fresh.expect("the channel expired");
    assert_eq!(fresh["top_offset"], 0);
    let mut sse = Sse::open(
        &app.url("/channels/brief/events"),
        Some(&format!("{old}:2")),
    )
    .await;
    let reset = sse.expect().await;
    assert_eq!(reset.event, "reset");
    assert_ne!(reset.data["epoch"], old.as_str());
    let (_, next) = publish(&app, "brief", &json!({ "payload": 1 })).await;
    assert_ne!(next["epoch"], old.as_str());
    let live = sse.expect().await;
    assert_eq!(live.data["offset"], next["offset"]);
    assert_eq!(live.data["epoch"], next["epoch"]);
}

/// The channel's current epoch (asserting the GET succeeded).
async fn epoch_of(app: &TestApp, channel: &str) -> String {
    let info = app.get(&format!("/channels/{channel}")).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.body);
    info.body["epoch"].as_str().expect("epoch").to_owned()
}

// The meta hash survives but the history does not: deleted alone, trimmed
// by someone else, or restored from another moment than the meta. Each is
// lost history, so each must start a new epoch (an old position is then
// answered with a reset, never trusted).
#[tokio::test]
async fn lost_history_with_the_meta_intact_gives_a_new_epoch() {
    let app = TestApp::start().await;
    let mut redis = app.redis.connection();
    let keys = |channel: &str| {
        let prefix = format!("sc:ch:{{{}:{channel}}}", app.tenant);
        (format!("{prefix}:history"), format!("{prefix}:meta"))
    };

    // 1. The history stream deleted alone, with a subscriber at the top.
    let last = publish_n(&app, "gone", 3).await;
    let old = last["epoch"].as_str().unwrap().to_owned();
    let mut sse = Sse::open(&app.url("/channels/gone/events"), Some(&format!("{old}:3"))).await;
    let (history, _) = keys("gone");
    let _: i64 = redis::cmd("DEL").arg(&history).query(&mut redis).unwrap();
    let fresh = epoch_of(&app, "gone").await;
    assert_ne!(fresh, old, "a deleted history is lost history");
    let page = app
        .get(&format!("/channels/gone/messages?since={old}:3"))
        .await;
    assert_eq!(page.body["recovered"], false, "{}", page.body);
    assert_eq!(page.body["top_offset"], 0);
    let (_, next) = publish(&app, "gone", &json!({ "payload": "after" })).await;
    assert_eq!(next["epoch"], fresh.as_str());
    assert_eq!(next["offset"], 1);
    let reset = sse.expect().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.data["epoch"], fresh.as_str());

    // 2. Trimmed to nothing by someone else (the stream still exists).
    let last = publish_n(&app, "trimmed", 4).await;
    let old = last["epoch"].as_str().unwrap().to_owned();
    let (history, _) = keys("trimmed");
    let _: i64 = redis::cmd("XTRIM")
        .arg(&history)
        .arg("MAXLEN")
        .arg(0)
        .query(&mut redis)
        .unwrap();
    let (status, next) = publish(&app, "trimmed", &json!({ "payload": 5 })).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    assert_ne!(
        next["epoch"],
        old.as_str(),
        "trimmed history is lost history"
    );
    assert_eq!(next["offset"], 1);

    // 3. Redis came back with the meta of an earlier moment than the
    //    history (partial data): the history holds offsets the meta never
    //    counted. Publishing must neither fail nor reuse offsets 3 and 4.
    publish_n(&app, "partial", 2).await;
    let (_, meta) = keys("partial");
    let dump: Vec<u8> = redis::cmd("DUMP").arg(&meta).query(&mut redis).unwrap();
    let last = publish_n(&app, "partial", 2).await;
    let old = last["epoch"].as_str().unwrap().to_owned();
    let _: () = redis::cmd("RESTORE")
        .arg(&meta)
        .arg(0)
        .arg(dump)
        .arg("REPLACE")
        .query(&mut redis)
        .unwrap();
    let (status, next) = publish(&app, "partial", &json!({ "payload": "x" })).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    assert_ne!(next["epoch"], old.as_str(), "history ahead of its meta");
    assert_eq!(next["offset"], 1);
    let page = app.get("/channels/partial/messages").await;
    let offsets: Vec<u64> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1], "nothing of the lost epoch is served");

    // No false alarm: a channel that keeps no history loses none, before
    // and after it starts keeping some again.
    app.put("/channels/none", &json!({ "history_size": 0 }))
        .await;
    let last = publish_n(&app, "none", 2).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch_of(&app, "none").await, epoch);
    app.put("/channels/none", &json!({ "history_size": 10 }))
        .await;
    assert_eq!(epoch_of(&app, "none").await, epoch);
    let (_, next) = publish(&app, "none", &json!({ "payload": 3 })).await;
    assert_eq!(next["epoch"], epoch.as_str());
    assert_eq!(next["offset"], 3);
    // And a kept history shrunk by PUT is trimmed, not lost.
    app.put("/channels/none", &json!({ "history_size": 1 }))
        .await;
    publish_n(&app, "none", 2).await;
    assert_eq!(epoch_of(&app, "none").await, epoch);
}

#[tokio::test]
async fn two_hundred_sse_subscribers_get_every_message_in_order() {
    let app = TestApp::start().await;
    let url = app.url("/channels/crowd/events");
    let mut subscribers = Vec::new();
    for _ in 0..200 {
        subscribers.push(Sse::open(&url, None).await);
    }
    // One Redis subscription for all of them.
    let live = format!("sc:ch:{{{}:crowd}}:live", app.tenant);
    let numsub: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&live)
        .query(&mut app.redis.connection())
        .unwrap();
    assert_eq!(
        numsub.1, 1,
        "one Redis subscription per channel per sidecar"
    );

    let last = publish_n(&app, "crowd", 20).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let readers = subscribers.into_iter().map(|mut sse| {
        let epoch = epoch.clone();
        tokio::spawn(async move {
            for expected in 1..=20u64 {
                let event = sse.expect().await;
                assert_eq!(event.event, "message");
                assert_eq!(event.data["offset"], expected);
                assert_eq!(event.data["epoch"], epoch.as_str());
            }
        })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.expect("every subscriber got 1..=20 in order");
    }
    let metrics = app.metrics_text().await;
    for name in [
        "streamcar_channel_connections{transport=\"sse\"}",
        "streamcar_channel_subscriptions",
        "streamcar_channel_redis_subscribed",
        "streamcar_channel_fanout_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }

    // All gone (their tasks dropped the streams): the Redis subscription is
    // released a little later.
    let mut released = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let numsub: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&live)
            .query(&mut app.redis.connection())
            .unwrap();
        if numsub.1 == 0 {
            released = true;
            break;
        }
    }
    assert!(
        released,
        "the channel is unsubscribed after its last subscriber left"
    );
}

#[tokio::test]
async fn one_websocket_many_channels() {
    let app = TestApp::start().await;
    let mut ws = ws::connect(&app).await;
    const N: usize = 1000;
    for i in 0..N {
        ws::send(
            &mut ws,
            json!({ "op": "subscribe", "channel": format!("c{i}") }),
        )
        .await;
    }
    let mut subscribed = 0;
    while subscribed < N {
        let frame = ws::next(&mut ws).await;
        assert_eq!(frame["type"], "subscribed", "{frame}");
        assert_eq!(frame["recovered"], false);
        assert_eq!(frame["top_offset"], 0);
        subscribed += 1;
    }
    // Publish over the same socket, one message per channel.
    for i in 0..N {
        ws::send(
            &mut ws,
            json!({ "op": "publish", "channel": format!("c{i}"), "payload": { "i": i } }),
        )
        .await;
    }
    let mut seen: HashMap<String, Value> = HashMap::new();
    while seen.len() < N {
        let frame = ws::next(&mut ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["offset"], 1, "{frame}");
        let channel = frame["channel"].as_str().unwrap().to_owned();
        let i: usize = channel[1..].parse().unwrap();
        assert_eq!(frame["payload"]["i"], i);
        assert!(seen.insert(channel, frame).is_none(), "no duplicate");
    }

    // Unsubscribed channels go quiet; the others keep flowing, in order.
    ws::send(&mut ws, json!({ "op": "unsubscribe", "channel": "c0" })).await;
    publish(&app, "c0", &json!({ "payload": "quiet" })).await;
    publish(&app, "c1", &json!({ "payload": "loud" })).await;
    let frame = ws::next(&mut ws).await;
    assert_eq!(frame["channel"], "c1", "{frame}");
    assert_eq!(frame["offset"], 2);
}

#[tokio::test]
async fn websocket_resume_and_invalid_frames() {
    let app = TestApp::start().await;
    app.put("/channels/w", &json!({ "history_size": 3 })).await;
    let last = publish_n(&app, "w", 6).await;
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let mut ws = ws::connect(&app).await;

    for (frame, code) in [
        ("not json".to_owned(), "invalid_frame"),
        (json!({ "op": "dance" }).to_string(), "invalid_frame"),
        (
            json!({ "op": "subscribe", "channel": "a:b" }).to_string(),
            "invalid_name",
        ),
        (
            json!({ "op": "subscribe", "channel": "w", "since": "x" }).to_string(),
            "invalid_field",
        ),
        (
            json!({ "op": "unsubscribe", "channel": "w" }).to_string(),
            "not_subscribed",
        ),
        (
            json!({ "op": "publish", "channel": "w" }).to_string(),
            "invalid_frame",
        ),
    ] {
        ws.send(WsMessage::text(frame.clone())).await.unwrap();
        let reply = ws::next(&mut ws).await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], code, "{frame}: {reply}");
        assert!(reply["detail"].is_string());
    }
    ws.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ws::next(&mut ws).await["code"], "invalid_frame");

    // Still usable: resume inside history replays exactly what was missed.
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "w", "since": format!("{epoch}:4") }),
    )
    .await;
    let subscribed = ws::next(&mut ws).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["epoch"], epoch.as_str());
    assert_eq!(subscribed["top_offset"], 6);
    for expected in [5, 6] {
        let m = ws::next(&mut ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["offset"], expected);
        assert_eq!(m["channel"], "w");
    }
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "w" })).await;
    assert_eq!(ws::next(&mut ws).await["code"], "already_subscribed");

    // Older than history: subscribed (not recovered), one reset, then live.
    ws::send(&mut ws, json!({ "op": "unsubscribe", "channel": "w" })).await;
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "w", "since": format!("{epoch}:1") }),
    )
    .await;
    let subscribed = ws::next(&mut ws).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    let reset = ws::next(&mut ws).await;
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["top_offset"], 6);
    assert_eq!(reset["channel"], "w");
    publish(&app, "w", &json!({ "payload": 7 })).await;
    assert_eq!(ws::next(&mut ws).await["offset"], 7);
}

#[tokio::test]
async fn publish_on_one_sidecar_reaches_subscribers_on_another() {
    let app = TestApp::start().await;
    let b = StreamcarProcess::start(&app.redis.url(), &[]).await;
    let url_b = format!("{}/v1/tenants/{}/channels/x/events", b.base, app.tenant);
    let mut sse = Sse::open(&url_b, None).await;
    let (_, published) = publish(&app, "x", &json!({ "payload": "from A" })).await;
    let event = sse.expect().await;
    assert_eq!(event.data["payload"], "from A");
    assert_eq!(event.data["offset"], published["offset"]);
}

/// The value of the first `/metrics` series starting with `series` (0
/// before it exists) from the sidecar at `base`.
async fn metric(base: &str, series: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The slow-consumer counter of `/metrics` (0 before the first one).
async fn slow_consumers(app: &TestApp) -> u64 {
    metric(&app.base, "streamcar_channel_slow_consumers_total").await
}

/// Publishes 16 KiB messages until the sidecar has cut one more slow
/// consumer (bounded); returns the last offset published.
async fn flood_until_cut(app: &TestApp, channel: &str) -> u64 {
    let before = slow_consumers(app).await;
    let big = "x".repeat(16 * 1024);
    let mut last = 0;
    for i in 0..2000 {
        let (status, body) = publish(app, channel, &json!({ "payload": big })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        last = body["offset"].as_u64().unwrap();
        if i % 10 == 9 && slow_consumers(app).await > before {
            return last;
        }
    }
    panic!("no slow consumer after 2000 messages of 16 KiB (last offset {last})");
}

// SSE and WebSocket in one test: both move the one slow-consumer counter.
#[tokio::test]
async fn subscribers_that_stop_reading_are_cut_as_slow_consumers() {
    let app = TestApp::start_with(|c| c.channel_queue_bytes = 64 * 1024).await;
    let config = json!({ "history_size": 10_000, "history_ttl_ms": 600_000 });
    app.put("/channels/flood", &config).await;
    app.put("/channels/flood-ws", &config).await;

    // SSE: stop reading, let the sidecar cut it, then read what arrived.
    let url = app.url("/channels/flood/events");
    let mut sse = Sse::open(&url, None).await;
    let published = flood_until_cut(&app, "flood").await;
    let mut next = 1;
    let mut last_id = None;
    loop {
        let event = sse.next().await.expect("an error event before the end");
        if event.event == "message" {
            assert_eq!(event.data["offset"], next, "in order, no gap");
            next += 1;
            last_id = event.id;
            continue;
        }
        assert_eq!(event.event, "error", "{event:?}");
        assert_eq!(event.data["code"], "slow_consumer");
        break;
    }
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the error"
    );
    assert!(next <= published, "it was cut before the end");
    // It resumes by offset: exactly the rest.
    let mut resumed = Sse::open(&url, last_id.as_deref()).await;
    for expected in next..=published {
        let event = resumed.expect().await;
        assert_eq!(event.event, "message");
        assert_eq!(event.data["offset"], expected);
    }

    // WebSocket, with a small receive buffer so the client stops taking
    // data soon after it stops reading.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let ws_url = app.url("/ws").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, stream)
        .await
        .expect("websocket");
    ws.send(WsMessage::text(
        json!({ "op": "subscribe", "channel": "flood-ws" }).to_string(),
    ))
    .await
    .unwrap();
    let subscribed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(subscribed.to_text().unwrap().contains("subscribed"));
    flood_until_cut(&app, "flood-ws").await;
    let mut next = 1;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait limit")
            .expect("a close frame before the end")
            .expect("frame");
        match frame {
            WsMessage::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["offset"], next, "in order, no gap");
                next += 1;
            }
            WsMessage::Close(Some(close)) => {
                assert_eq!(u16::from(close.code), 4008);
                assert_eq!(close.reason.as_str(), "slow_consumer");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// An SSE client that connects and never reads again: once the socket is
// full the event stream is no longer polled, so only a write deadline can
// end it. The sidecar must let the connection go (it does not hold the
// TCP connection, the subscription and their memory forever), and what it
// holds meanwhile must not grow with what is published.
#[tokio::test]
async fn a_silent_sse_client_is_disconnected_and_its_memory_stays_bounded() {
    let redis = support::RedisServer::start();
    let sc = StreamcarProcess::start(
        &redis.url(),
        &["--channel-queue-bytes", "65536", "--write-timeout", "2s"],
    )
    .await;
    let tenant = format!("silent{}", std::process::id());
    let channel_url = format!("{}/v1/tenants/{tenant}/channels/quiet", sc.base);
    let client = reqwest::Client::new();
    let big = "x".repeat(16 * 1024);
    let publish = |n: u64| {
        let (client, url, big) = (client.clone(), channel_url.clone(), big.clone());
        async move {
            for _ in 0..n {
                let resp = client
                    .post(format!("{url}/messages"))
                    .json(&json!({ "payload": big }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), StatusCode::CREATED);
            }
        }
    };
    // Warm up the publish path, then take the baseline.
    publish(200).await;
    let fds_before = support::open_fds(sc.pid());
    let rss_before = support::proc_memory_bytes(sc.pid(), "VmRSS");

    // A client with a tiny receive window that sends its request and then
    // never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(sc.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let request =
        format!("GET /v1/tenants/{tenant}/channels/quiet/events HTTP/1.1\r\nhost: x\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let sse = "streamcar_channel_connections{transport=\"sse\"}";
    for _ in 0..100 {
        if metric(&sc.base, sse).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&sc.base, sse).await, 1, "the stream is open");

    // 64 MiB published past it, in rounds, far more than any buffer.
    let slow = "streamcar_channel_slow_consumers_total";
    let mut peak = 0;
    for _ in 0..16 {
        publish(256).await;
        peak = peak.max(support::proc_memory_bytes(sc.pid(), "VmRSS"));
    }
    assert_eq!(metric(&sc.base, slow).await, 1, "cut as a slow consumer");
    let growth = peak.saturating_sub(rss_before);
    assert!(
        growth < 24 << 20,
        "RSS grew {growth} bytes while 64 MiB went past a silent client"
    );

    // The sidecar lets the connection go (bounded wait).
    let mut released = false;
    for _ in 0..200 {
        // Descriptors first: the previous metrics connection has had time
        // to close, this one's has not been opened yet.
        if support::open_fds(sc.pid()) <= fds_before && metric(&sc.base, sse).await == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released,
        "a client that never reads is disconnected ({} open fds, {fds_before} before)",
        support::open_fds(sc.pid())
    );
    // The client sees the end once it reads what was sent before.
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    for _ in 0..100_000 {
        let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
            .await
            .expect("the stream ends instead of waiting");
        if !matches!(read, Ok(n) if n > 0) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the server closed the connection");
}

#[tokio::test]
async fn redis_restart_mid_stream_resumes_or_resets_never_skips() {
    let mut app = TestApp::start().await;
    let url = app.url("/channels/r/events");
    let mut sse = Sse::open(&url, None).await;
    let mut ws = ws::connect(&app).await;
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "r" })).await;
    assert_eq!(ws::next(&mut ws).await["type"], "subscribed");
    let last = publish_n(&app, "r", 3).await;
    let old = last["epoch"].as_str().unwrap().to_owned();
    for expected in 1..=3u64 {
        assert_eq!(sse.expect().await.data["offset"], expected);
        assert_eq!(ws::next(&mut ws).await["offset"], expected);
    }

    // Redis without persistence: the restart loses the channel.
    app.redis.restart();
    let mut first = None;
    for _ in 0..200 {
        let (status, body) = publish(&app, "r", &json!({ "payload": "after" })).await;
        if status == StatusCode::CREATED {
            first = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("publishing works again after the restart");
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert_ne!(epoch, old, "lost history means a new epoch");

    // The subscriber is told: one reset to the new epoch, never a silent jump.
    let reset = sse.expect().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.data["epoch"], epoch.as_str());
    let top = reset.data["top_offset"].as_u64().unwrap();
    let (_, final_message) = publish(&app, "r", &json!({ "payload": "final" })).await;
    let final_offset = final_message["offset"].as_u64().unwrap();
    for expected in top + 1..=final_offset {
        let event = sse.expect().await;
        assert_eq!(event.event, "message", "{event:?}");
        assert_eq!(event.data["epoch"], epoch.as_str());
        assert_eq!(
            event.data["offset"], expected,
            "consecutive after the reset"
        );
    }

    // The WebSocket subscriber likewise: a reset frame, then consecutive.
    let reset = ws::next(&mut ws).await;
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["channel"], "r");
    assert_eq!(reset["epoch"], epoch.as_str());
    let top = reset["top_offset"].as_u64().unwrap();
    for expected in top + 1..=final_offset {
        let frame = ws::next(&mut ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["epoch"], epoch.as_str());
        assert_eq!(frame["offset"], expected, "consecutive after the reset");
    }
}

#[tokio::test]
async fn shutdown_ends_subscriber_connections_instead_of_holding_the_drain() {
    // A drain far longer than the wait below: only an ended stream passes.
    let mut app = TestApp::start_with(|c| c.drain_timeout = Duration::from_secs(120)).await;
    let mut sse = Sse::open(&app.url("/channels/bye/events"), None).await;
    let mut ws = ws::connect(&app).await;
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "bye" })).await;
    assert_eq!(ws::next(&mut ws).await["type"], "subscribed");
    let stop = app.stop();
    let ended = async {
        assert!(sse.next().await.is_none(), "the event stream ends");
        let close = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close within the wait limit");
        match close {
            Some(Ok(WsMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    };
    tokio::join!(stop, ended);
}

#[tokio::test]
async fn the_document_names_channel_schemas_apart_from_topic_ones() {
    let app = TestApp::start().await;
    let doc = app.get_root("/v1/openapi.json").await.body;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ChannelHistoryPage"]["properties"]["messages"]["items"]["$ref"],
        "#/components/schemas/ChannelMessage"
    );
    assert_eq!(
        schemas["HistoryPage"]["properties"]["messages"]["items"]["$ref"],
        "#/components/schemas/Message"
    );
}

/// A WebSocket publish that meets a Redis outage answers an error frame
/// that says when to try again, as the HTTP 503 says with `Retry-After`.
#[tokio::test]
async fn a_websocket_publish_during_a_redis_outage_says_when_to_retry() {
    let mut app = TestApp::start().await;
    let mut ws = ws::connect(&app).await;
    app.redis.kill();
    ws::send(
        &mut ws,
        json!({ "op": "publish", "channel": "down", "payload": 1 }),
    )
    .await;
    let frame = ws::next(&mut ws).await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "redis_unavailable", "{frame}");
    assert_eq!(frame["retry_after_ms"], 1000, "{frame}");
}
