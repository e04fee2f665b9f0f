//! Scale probe: every user-growable collection grown to thousands of
//! entries (groups per topic, dead letters, dead letters sharing one
//! message id, consumers…), and each hot path (a call made per message, per
//! request, per fetch, or per item of a background pass) checked to do work
//! independent of that size, O(log N), or bounded by a page. Counted, not
//! timed: `INFO commandstats` (commands run inside scripts count too) or
//! the size of a reply, never the wall clock.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

/// An app with no background pass (retention, gauges) that could run
/// commands while a test counts them.
fn receipts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["receipt"].as_str().expect("receipt"))
        .collect()
}

/// Reading one group (GET group), declaring one (PUT answers with the
/// same reading), fetching from an ordered group while a DLQ replay waits
/// for it to read on, and that replay itself each needed the group's
/// last-delivered id, which `XINFO GROUPS` gives only by listing every
/// group of the topic: O(groups) per call (GET group at 5,000 groups took
/// 8.3 ms, declaring 5,000 groups 19.8 s; after: 0.8 ms and 5.9 s, debug
/// build over HTTP).
#[tokio::test]
async fn one_group_s_calls_do_not_list_every_group() {
    const GROUPS: usize = 1_000;
    let app = TestApp::start_quiet().await;
    app.group("busy", "o", &json!({"ordering": "key"})).await;
    for i in 0..GROUPS {
        app.group("busy", &format!("g{i}"), &json!({})).await;
    }
    let first = app
        .publish("busy", &json!({"payload": 1, "key": "k", "id": "m1"}))
        .await;
    let got = app.fetch("busy", "o", "w", 1, 0).await;
    let reply = app
        .post(
            "/topics/busy/groups/o/reject",
            &json!({"receipts": receipts(&got)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.publish("busy", &json!({"payload": 2, "key": "k", "id": "m2"}))
        .await;

    let listing = ["xinfo|groups"];
    let before = app.command_calls(&listing);
    let info = app.get("/topics/busy/groups/o").await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.body);
    assert_eq!(info.body["last_delivered_id"], first["stream_id"]);
    app.group("busy", "g0", &json!({"lease_ms": 5000})).await;
    // The group has not read m2: the replay of m1 waits behind it.
    let reply = app
        .post("/topics/busy/groups/o/dlq/replay", &json!({"ids": ["m1"]}))
        .await;
    assert_eq!(reply.body["replayed"], json!(["m1"]), "{}", reply.body);
    assert_eq!(app.get("/topics/busy/groups/o").await.body["parked"], 1);
    let got = app.fetch("busy", "o", "w", 10, 0).await;
    assert_eq!(
        app.command_calls(&listing),
        before,
        "{listing:?} around GET and PUT group, a replay and a fetch"
    );
    // Order holds: m2 (published before the replay) first, then m1.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "m2");
    app.ack("busy", "o", &receipts(&got)).await;
    let got = app.fetch("busy", "o", "w", 10, 0).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "m1");
    assert_eq!(got[0]["attempt"], 1);

    // The kept copy agrees with Redis for every start position.
    let second = app.history("busy").await[1]["stream_id"].clone();
    app.group("busy", "late", &json!({"start": "latest"})).await;
    app.group("busy", "at", &json!({"start": first["stream_id"]}))
        .await;
    let ms = first["stream_id"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    app.group("busy", "ms", &json!({"start": ms})).await;
    let mut redis = app.redis.connection();
    let rows: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("sc:{{{}:busy}}:stream", app.tenant))
        .query(&mut redis)
        .unwrap();
    for (group, expected) in [
        ("late", second.clone()),
        ("at", first["stream_id"].clone()),
        ("ms", json!(format!("{ms}-0"))),
        ("g1", json!("0-0")),
        ("o", second),
    ] {
        let row = rows
            .iter()
            .find(|r| r[1] == redis::Value::BulkString(group.as_bytes().to_vec()))
            .expect("group row");
        let redis::Value::BulkString(id) = &row[7] else {
            panic!("{row:?}")
        };
        assert_eq!(json!(String::from_utf8_lossy(id)), expected, "{group}");
        let info = app.get(&format!("/topics/busy/groups/{group}")).await;
        assert_eq!(info.body["last_delivered_id"], expected, "{group}");
    }
}

/// Publishes `n` messages with a 1 ms ttl and lets fetches dead-letter
/// them all as `expired` (1000 per fetch). Returns their stream ids.
async fn dead_letter_expired(
    app: &TestApp,
    topic: &str,
    group: &str,
    n: usize,
    id: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut sids = Vec::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..n.min(i + 1000))
            .map(|j| json!({"payload": j, "ttl_ms": 1, "id": id(j)}))
            .collect();
        i += batch.len();
        let published = app.publish_batch(topic, &batch).await;
        for r in published["results"].as_array().unwrap() {
            sids.push(r["stream_id"].as_str().unwrap().to_owned());
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..n.div_ceil(1000) + 1 {
        assert!(app.fetch(topic, group, "w", 1000, 0).await.is_empty());
    }
    sids
}

/// "Replay all" scans at most 10,000 dead letters per request. Dead letters
/// whose topic entry was trimmed by retention cannot be replayed and stay
/// in the DLQ (as documented), and every request scanned from the oldest:
/// once 10,000 of them led the DLQ, each request rescanned the same ones
/// and answered `more: true`, and none ever reached the dead letters
/// behind them, so a client following `more` looped forever.
#[tokio::test]
async fn replay_all_gets_past_dead_letters_it_cannot_replay() {
    const STUCK: usize = 10_000;
    let app = TestApp::start_quiet().await;
    app.group("dl", "g", &json!({})).await;
    let sids = dead_letter_expired(&app, "dl", "g", STUCK, |j| format!("old{j}")).await;
    // Retention trims them (the group is done with them), as trim.lua would.
    let mut redis = app.redis.connection();
    let stream = format!("sc:{{{}:dl}}:stream", app.tenant);
    let last = sids.last().unwrap();
    let (ms, seq) = last.split_once('-').unwrap();
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(format!("{ms}-{}", seq.parse::<u64>().unwrap() + 1))
        .query(&mut redis)
        .unwrap();
    assert_eq!(trimmed, STUCK as u64);
    dead_letter_expired(&app, "dl", "g", 1, |_| "fresh".into()).await;
    assert_eq!(
        app.get("/topics/dl/groups/g").await.body["dead_lettered"],
        STUCK + 1
    );

    let (mut replayed, mut missing) = (Vec::new(), 0);
    let mut body = json!({});
    for _ in 0..5 {
        let reply = app.post("/topics/dl/groups/g/dlq/replay", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        replayed.extend(reply.body["replayed"].as_array().unwrap().clone());
        missing += reply.body["missing"].as_array().unwrap().len();
        if reply.body["more"] != true {
            break;
        }
        body = json!({"after": reply.body["next_after"]});
    }
    assert_eq!(replayed, vec![json!("fresh")], "{missing} reported missing");
    assert_eq!(missing, STUCK);

    // With `ids`, `after` keeps their dead letters up to it: of two dead
    // letters of one message id, the later one is replayed.
    dead_letter_expired(&app, "dl", "g", 2, |_| "twice".into()).await;
    let dlq = format!("sc:{{{}:dl}}:g:g:dlq", app.tenant);
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&dlq)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(2)
        .query(&mut redis)
        .unwrap();
    let older = &newest[1].0;
    let reply = app
        .post(
            "/topics/dl/groups/g/dlq/replay",
            &json!({"ids": ["twice"], "after": older}),
        )
        .await;
    assert_eq!(reply.body["replayed"], json!(["twice"]), "{}", reply.body);
    let left: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&dlq)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut redis)
        .unwrap();
    assert_eq!(&left[0].0, older, "the earlier dead letter stays");
}

/// Message ids need not be unique, and the DLQ index keeps one entry per
/// message id listing all its dead letters. A replay took each dead letter
/// off that entry by reading and rewriting the whole entry: k dead letters
/// of one id cost O(k²) in one script call (5,000 of them: an 80 KB entry
/// read 5,000 times, 3.2 s during which Redis served no one). Counted: the
/// entry is read and written a bounded number of times per call.
#[tokio::test]
async fn replaying_many_dead_letters_of_one_id_reads_its_index_once() {
    const LETTERS: usize = 2_000;
    let app = TestApp::start_quiet().await;
    app.group("sh", "g", &json!({})).await;
    dead_letter_expired(&app, "sh", "g", LETTERS, |_| "same".into()).await;
    app.publish("sh", &json!({"payload": 0, "id": "other"}))
        .await;
    let got = app.fetch("sh", "g", "w", 1, 0).await;
    let reply = app
        .post(
            "/topics/sh/groups/g/reject",
            &json!({"receipts": receipts(&got)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let index = ["hget", "hset", "hdel"];
    let before = app.command_calls(&index);
    let reply = app
        .post("/topics/sh/groups/g/dlq/replay", &json!({"ids": ["same"]}))
        .await;
    let after = app.command_calls(&index);
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["replayed"].as_array().unwrap().len(), LETTERS);
    // group_keys reads the ordering, the index entry is read to find the
    // dead letters and once more to drop them; each replay clears the
    // entry's delivery (HDEL).
    assert!(after[0] - before[0] <= 3, "HGET {before:?} → {after:?}");
    assert!(after[1] - before[1] <= 1, "HSET {before:?} → {after:?}");
    assert!(
        after[2] - before[2] <= LETTERS as u64 + 1,
        "HDEL {before:?} → {after:?}"
    );
    let dlq = app.get("/topics/sh/groups/g/dlq").await.body;
    assert_eq!(dlq["messages"].as_array().unwrap().len(), 1, "{dlq}");
    assert_eq!(dlq["messages"][0]["id"], "other");

    // Replaying all takes the rest off the index too: nothing is left.
    let reply = app.post("/topics/sh/groups/g/dlq/replay", &json!({})).await;
    assert_eq!(reply.body["replayed"], json!(["other"]), "{}", reply.body);
    let mut redis = app.redis.connection();
    let left: u64 = redis::cmd("HLEN")
        .arg(format!("sc:{{{}:sh}}:g:g:dlq:index", app.tenant))
        .query(&mut redis)
        .unwrap();
    assert_eq!(left, 0);
}

/// Every command Redis runs while `during` does, as `MONITOR` prints them
/// (commands run by a script show as `[0 lua]` after its EVALSHA).
async fn monitored<F: std::future::Future<Output = ()>>(app: &TestApp, during: F) -> Vec<String> {
    // Ends at a marker sent once `during` is done, not at a read timeout: a
    // timeout that hit in the middle of a line lost that line (an EVALSHA
    // line lost merged two scripts' commands into one).
    const STOP: &str = "streamcar-test-monitor-stop";
    let mut conn = app.redis.connection();
    redis::cmd("MONITOR").exec(&mut conn).expect("MONITOR");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        loop {
            match conn.recv_response() {
                Ok(redis::Value::SimpleString(line)) if line.contains(STOP) => return lines,
                Ok(redis::Value::SimpleString(line)) => lines.push(line),
                Ok(_) => {}
                Err(e) => panic!("MONITOR stopped: {e}"),
            }
        }
    });
    during.await;
    let _: String = redis::cmd("ECHO")
        .arg(STOP)
        .query(&mut app.redis.connection())
        .expect("ECHO");
    reader.join().expect("the MONITOR reader")
}

/// The retention pass forgets consumers that own nothing and have been
/// idle long enough (worker names come and go). It listed every consumer of
/// a group and removed the idle ones inside one script: 50,000 consumers
/// held Redis for 57–72 ms in every pass even with none to remove, and
/// 96 ms removing them all at once. Counted: no script call removes more
/// than 1,000 consumers, and none lists the consumers.
#[tokio::test]
async fn pruning_many_idle_consumers_takes_bounded_script_calls() {
    const CONSUMERS: usize = 3_000;
    let app = TestApp::start_with(|c| {
        c.retention_interval = Duration::from_millis(100);
        c.metrics_interval = Duration::ZERO;
        c.consumer_idle = Duration::from_millis(1);
    })
    .await;
    app.group("cs", "g", &json!({"lease_ms": 60000})).await;
    app.publish("cs", &json!({"payload": 1})).await;
    let held = app.fetch("cs", "g", "holder", 1, 0).await;
    // What fetches that found nothing leave behind: consumers owning nothing.
    let stream = format!("sc:{{{}:cs}}:stream", app.tenant);
    let mut redis = app.redis.connection();
    let mut pipe = redis::pipe();
    for i in 0..CONSUMERS {
        pipe.cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&stream)
            .arg("g")
            .arg(format!("worker-{i}"))
            .ignore();
    }
    pipe.exec(&mut redis).unwrap();

    let count = || -> usize {
        let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("g")
            .query(&mut app.redis.connection())
            .unwrap();
        reply.consumers.len()
    };
    let lines = monitored(&app, async {
        for _ in 0..100 {
            if count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(count(), 1, "the idle consumers are gone, the holder stays");
    let (mut removed, mut most, mut in_script, mut listed_in_script) = (0, 0, 0, 0);
    for line in &lines {
        if line.contains("\"EVALSHA\"") {
            in_script = 0;
        } else if line.contains(" lua] ") {
            if line.contains("\"DELCONSUMER\"") {
                removed += 1;
                in_script += 1;
                most = most.max(in_script);
            }
            if line.contains("\"XINFO\" \"CONSUMERS\"") {
                listed_in_script += 1;
            }
        }
    }
    assert!(removed >= CONSUMERS, "{removed} removed");
    assert!(most <= 1000, "{most} consumers removed by one script call");
    assert_eq!(listed_in_script, 0, "XINFO CONSUMERS inside a script");
    assert_eq!(
        app.ack("cs", "g", &receipts(&held)).await.status,
        StatusCode::OK
    );
}
