//! Delivery through HTTP against a real redis-server: ordering, ack,
//! lease expiry and redelivery, fencing of stale receipts, extend, long-poll
//! wake-ups, many waiting long-polls, and exclusive leases under races.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Reply, TestApp};

fn receipts(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["receipt"].as_str().expect("receipt").to_owned())
        .collect()
}

/// Fetches (long-polling in bounded steps) until one message arrives.
async fn fetch_one(app: &TestApp, topic: &str, group: &str, consumer: &str) -> Value {
    for _ in 0..20 {
        let got = app.fetch(topic, group, consumer, 1, 1000).await;
        if let Some(m) = got.into_iter().next() {
            return m;
        }
    }
    panic!("{consumer} received nothing");
}

#[tokio::test]
async fn fetch_delivers_in_order_with_attempt_receipt_and_lease() {
    let app = TestApp::start().await;
    app.group("o", "g", &json!({"lease_ms": 60000})).await;
    for i in 0..5 {
        app.publish(
            "o",
            &json!({"payload": i, "key": "k", "correlation_id": "c"}),
        )
        .await;
    }
    let got = app.fetch("o", "g", "w1", 10, 0).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "stream order");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["payload"], i);
        assert_eq!(m["attempt"], 1);
        assert_eq!(m["key"], "k");
        assert_eq!(m["correlation_id"], "c");
        assert!(m["id"].is_string());
        let published = m["published_at"].as_u64().unwrap();
        let expires = m["lease_expires_at"].as_u64().unwrap();
        assert!(expires >= published + 60000, "lease starts at hand-off");
        assert!(m["receipt"].as_str().unwrap().len() > 5);
    }
    assert!(
        app.fetch("o", "g", "w2", 10, 0).await.is_empty(),
        "leased messages are not handed out again"
    );
    // max bounds the batch.
    app.publish("o", &json!({"payload": 5})).await;
    app.publish("o", &json!({"payload": 6})).await;
    assert_eq!(app.fetch("o", "g", "w1", 1, 0).await.len(), 1);
}

#[tokio::test]
async fn ack_completes_and_a_second_ack_is_refused() {
    let app = TestApp::start().await;
    app.group("a", "g", &json!({})).await;
    for i in 0..3 {
        app.publish("a", &json!({"payload": i})).await;
    }
    let got = app.fetch("a", "g", "w", 3, 0).await;
    let rs = receipts(&got);
    let reply = app.ack("a", "g", &[&rs[0], &rs[1]]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["acked"], json!([rs[0], rs[1]]));
    assert_eq!(reply.body["lease_lost"], json!([]));
    assert_eq!(app.get("/topics/a/groups/g").await.body["pending"], 1);

    // Acking again: the delivery is no longer current.
    app.ack("a", "g", &[&rs[0]])
        .await
        .assert_problem(409, "lease_lost");
    let mixed = app.ack("a", "g", &[&rs[1], &rs[2]]).await;
    assert_eq!(mixed.status, StatusCode::OK);
    assert_eq!(mixed.body["acked"], json!([rs[2]]));
    assert_eq!(mixed.body["lease_lost"], json!([rs[1]]));
    assert_eq!(app.get("/topics/a/groups/g").await.body["pending"], 0);
    // Acked messages are never delivered again.
    assert!(app.fetch("a", "g", "w", 10, 0).await.is_empty());
}

#[tokio::test]
async fn expired_lease_is_redelivered_to_another_consumer_and_the_stale_receipt_is_refused() {
    let app = TestApp::start().await;
    app.group("l", "g", &json!({"lease_ms": 300})).await;
    app.publish("l", &json!({"payload": "job"})).await;
    let first = app.fetch("l", "g", "dies", 1, 0).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["attempt"], 1);

    // The worker never acks; another consumer gets it once the lease ends.
    let second = fetch_one(&app, "l", "g", "survivor").await;
    assert_eq!(second["id"], first[0]["id"]);
    assert_eq!(second["attempt"], 2, "lease expiry counts as an attempt");
    assert_ne!(second["receipt"], first[0]["receipt"]);

    // The first worker wakes up and tries to commit: refused.
    let stale = app
        .ack("l", "g", &[first[0]["receipt"].as_str().unwrap()])
        .await;
    stale.assert_problem(409, "lease_lost");
    let extend = app
        .post(
            "/topics/l/groups/g/extend",
            &json!({"receipts": [first[0]["receipt"]]}),
        )
        .await;
    extend.assert_problem(409, "lease_lost");

    let ok = app
        .ack("l", "g", &[second["receipt"].as_str().unwrap()])
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["acked"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn extend_keeps_a_lease_past_its_original_expiry() {
    let app = TestApp::start().await;
    app.group("e", "g", &json!({"lease_ms": 1500})).await;
    app.publish("e", &json!({"payload": "long job"})).await;
    let got = app.fetch("e", "g", "busy", 1, 0).await;
    let receipt = got[0]["receipt"].as_str().unwrap().to_owned();
    let original_expiry = got[0]["lease_expires_at"].as_u64().unwrap();

    // Heartbeat every 300 ms for 3 s (twice the lease), while a rival polls.
    let mut last_expiry = original_expiry;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = app
            .post("/topics/e/groups/g/extend", &json!({"receipts": [receipt]}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["extended"][0]["receipt"], receipt);
        last_expiry = reply.body["extended"][0]["lease_expires_at"]
            .as_u64()
            .unwrap();
        assert!(
            app.fetch("e", "g", "rival", 1, 0).await.is_empty(),
            "an extended lease is not handed to another consumer"
        );
    }
    assert!(last_expiry > original_expiry + 1500, "lease moved forward");
    let ack = app.ack("e", "g", &[&receipt]).await;
    assert_eq!(ack.status, StatusCode::OK, "the receipt is still current");

    // A shorter explicit lease is allowed, a longer one is not.
    app.publish("e", &json!({"payload": 2})).await;
    let got = app.fetch("e", "g", "busy", 1, 0).await;
    let r = got[0]["receipt"].clone();
    let short = app
        .post(
            "/topics/e/groups/g/extend",
            &json!({"receipts": [r], "lease_ms": 200}),
        )
        .await;
    assert_eq!(short.status, StatusCode::OK);
    let too_long = app
        .post(
            "/topics/e/groups/g/extend",
            &json!({"receipts": [r], "lease_ms": 1501}),
        )
        .await;
    assert_eq!(
        too_long.assert_problem(400, "invalid_field")["field"],
        "lease_ms"
    );
}

#[tokio::test]
async fn long_poll_wakes_on_publish() {
    // The safety re-check is far beyond the timeout below, so only the
    // pub/sub wake-up can deliver in time.
    let app = TestApp::start_with(|c| c.wake_recheck = Duration::from_secs(120)).await;
    app.group("w", "g", &json!({})).await;
    let waiting = spawn_fetch(&app, "w", "sleeper", 10, 30000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "nothing to deliver yet: still waiting"
    );
    app.publish("w", &json!({"payload": "wake up"})).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll returned on the wake-up")
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["messages"][0]["payload"], "wake up");
}

/// A long-poll fetch running in the background.
fn spawn_fetch(
    app: &TestApp,
    topic: &str,
    consumer: &str,
    max: u32,
    wait_ms: u64,
) -> tokio::task::JoinHandle<Reply> {
    let client = app.client.clone();
    let url = app.url(&format!("/topics/{topic}/groups/g/fetch"));
    let body = json!({"consumer": consumer, "max": max, "wait_ms": wait_ms});
    tokio::spawn(async move {
        let resp = client.post(url).json(&body).send().await.expect("fetch");
        TestApp::reply(resp).await
    })
}

/// One publish of two messages wakes one waiter of the group; that waiter
/// takes one (a full fetch: more may be waiting) and passes the baton, so
/// the second waiter takes the other without waiting for a re-check.
#[tokio::test]
async fn a_full_fetch_passes_the_wake_up_to_the_next_waiter() {
    let app = TestApp::start_with(|c| c.wake_recheck = Duration::from_secs(120)).await;
    app.group("baton", "g", &json!({})).await;
    let first = spawn_fetch(&app, "baton", "a", 1, 30000);
    let second = spawn_fetch(&app, "baton", "b", 1, 30000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!first.is_finished() && !second.is_finished());
    let batch = json!({"messages": [{"payload": 1}, {"payload": 2}]});
    let published = app.post("/topics/baton/messages:batch", &batch).await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), async {
        (first.await.expect("task"), second.await.expect("task"))
    })
    .await
    .expect("both waiters returned on wake-ups");
    let mut payloads: Vec<i64> = [a, b]
        .iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| m["payload"].as_i64().expect("payload"))
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, [1, 2], "each waiter took one message");
}

#[tokio::test]
async fn long_poll_returns_empty_at_its_deadline() {
    let app = TestApp::start().await;
    app.group("d", "g", &json!({})).await;
    assert!(app.fetch("d", "g", "w", 5, 300).await.is_empty());
}

#[tokio::test]
async fn two_hundred_waiting_long_polls_leave_publish_and_ack_working() {
    // One shared connection makes the point sharp: waiting must hold none.
    let app = TestApp::start_with(|c| c.redis_connections = 1).await;
    app.group("many", "g", &json!({"lease_ms": 60000})).await;
    let mut waiters = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let url = app.url("/topics/many/groups/g/fetch");
        waiters.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"consumer": format!("w{i}"), "max": 1, "wait_ms": 10000}))
                .send()
                .await
                .expect("fetch");
            TestApp::reply(resp).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Publishing and acking go through while all of them wait.
    let other = app.publish("other", &json!({"payload": 0})).await;
    assert_eq!(other["seq"], 1);
    app.group("other", "g", &json!({})).await;
    let got = app.fetch("other", "g", "x", 1, 0).await;
    let ack = app
        .ack("other", "g", &[got[0]["receipt"].as_str().unwrap()])
        .await;
    assert_eq!(ack.status, StatusCode::OK);

    for i in 0..50 {
        let reply = app
            .post("/topics/many/messages", &json!({"payload": i}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    // Each of the 50 messages goes to exactly one waiter.
    let mut delivered = Vec::new();
    for w in waiters {
        let reply = w.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        for m in reply.body["messages"].as_array().unwrap() {
            delivered.push(m["seq"].as_u64().unwrap());
        }
    }
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn racing_consumers_never_share_a_live_lease() {
    let app = TestApp::start().await;
    app.group("race", "g", &json!({"lease_ms": 60000})).await;
    let batch: Vec<Value> = (0..300).map(|i| json!({"payload": i})).collect();
    let reply = app
        .post("/topics/race/messages:batch", &json!({"messages": batch}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    let mut tasks = Vec::new();
    for c in 0..4 {
        let client = app.client.clone();
        let url = app.url("/topics/race/groups/g/fetch");
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..1000 {
                let resp = client
                    .post(&url)
                    .json(&json!({"consumer": format!("c{c}"), "max": 7}))
                    .send()
                    .await
                    .expect("fetch");
                let reply = TestApp::reply(resp).await;
                let msgs = reply.body["messages"].as_array().unwrap().clone();
                if msgs.is_empty() {
                    break;
                }
                mine.extend(
                    msgs.iter()
                        .map(|m| m["stream_id"].as_str().unwrap().to_owned()),
                );
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no entry went to two consumers");
    assert_eq!(all.len(), 300, "every entry was delivered");
}

#[tokio::test]
async fn bad_group_consumer_and_receipts() {
    let app = TestApp::start().await;
    app.group("b", "g", &json!({})).await;
    app.publish("b", &json!({"payload": 1})).await;

    app.post("/topics/b/groups/none/fetch", &json!({"consumer": "w"}))
        .await
        .assert_problem(404, "group_not_found");
    app.post(
        "/topics/b/groups/none/ack",
        &json!({"receipts": ["1-0:1:7"]}),
    )
    .await
    .assert_problem(404, "group_not_found");
    app.post(
        "/topics/b/groups/none/extend",
        &json!({"receipts": ["1-0:1:7"]}),
    )
    .await
    .assert_problem(404, "group_not_found");

    for (body, field) in [
        (json!({"consumer": "a b"}), "consumer"),
        (json!({"consumer": ""}), "consumer"),
        (json!({}), "consumer"),
        (json!({"consumer": "w", "max": 0}), "max"),
        (json!({"consumer": "w", "max": 1001}), "max"),
        (json!({"consumer": "w", "wait_ms": 30001}), "wait_ms"),
        (json!({"consumer": "w", "wait_ms": -1}), "wait_ms"),
    ] {
        let reply = app.post("/topics/b/groups/g/fetch", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{body}"
        );
    }

    let got = app.fetch("b", "g", "w", 1, 0).await;
    let real = got[0]["receipt"].as_str().unwrap().to_owned();
    for garbage in [
        "garbage",
        "",
        "1-0",
        "1-0:0:7",
        "x-1:1:7",
        "1-0:1:7:8",
        "1-0:1:intruder",
    ] {
        let reply = app.ack("b", "g", &[garbage]).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_receipt")["field"],
            "receipts[0]",
            "{garbage}"
        );
    }
    app.post("/topics/b/groups/g/ack", &json!({"receipts": []}))
        .await
        .assert_problem(400, "invalid_field");
    app.post("/topics/b/groups/g/ack", &json!({"receipts": [1]}))
        .await
        .assert_problem(400, "invalid_field");

    // Well-formed forgeries: another consumer, another attempt, another entry.
    let mut parts = real.split(':');
    let (id, delivery) = (parts.next().unwrap(), parts.nth(1).unwrap());
    let delivery: u64 = delivery.parse().unwrap();
    for forged in [
        format!("{id}:1:{}", delivery + 1),
        format!("{id}:1:{}", delivery - 1),
        format!("{id}:2:{delivery}"),
        "1-0:1:7".to_owned(),
    ] {
        app.ack("b", "g", &[&forged])
            .await
            .assert_problem(409, "lease_lost");
    }
    // The forgeries changed nothing: the real receipt still acks.
    let ok = app.ack("b", "g", &[&real]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

/// Redis's count of writes since the last save (`INFO persistence`).
fn redis_writes(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(&mut app.redis.connection())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rdb_changes_since_last_save")
}

/// Long-polls keep re-checking a quiet group; those checks must not write
/// (with `appendfsync always` each write is a disk sync, and every replica
/// copies it) — neither on an empty group nor while other consumers hold
/// live leases.
#[tokio::test]
async fn fetching_from_a_quiet_group_writes_nothing() {
    let app = TestApp::start_quiet().await;
    app.group("quiet", "g", &json!({"lease_ms": 60000})).await;
    // History first: one message acked, one held under a live lease by c1.
    app.publish("quiet", &json!({"payload": 1})).await;
    let done = fetch_one(&app, "quiet", "g", "c1").await;
    let acked = app
        .ack("quiet", "g", &[done["receipt"].as_str().unwrap()])
        .await;
    assert_eq!(acked.status, StatusCode::OK);
    app.publish("quiet", &json!({"payload": 2})).await;
    fetch_one(&app, "quiet", "g", "c1").await;
    assert!(app.fetch("quiet", "g", "c2", 10, 0).await.is_empty());

    let before = redis_writes(&app);
    for _ in 0..20 {
        assert!(app.fetch("quiet", "g", "c2", 10, 0).await.is_empty());
    }
    assert!(app.fetch("quiet", "g", "c2", 10, 300).await.is_empty());
    assert_eq!(redis_writes(&app), before, "an empty fetch wrote to Redis");
}

/// Expired leases sitting behind many live ones (in stream order) are found
/// by one fetch and reclaimed, and no live lease is taken. The live leases
/// were granted under a 60 s `lease_ms`, the doomed ones after it was
/// lowered to 1 s: each keeps the expiry it was told, so the outcome does
/// not depend on how fast the test runs.
#[tokio::test]
async fn expired_leases_behind_many_live_ones_are_reclaimed_and_live_ones_kept() {
    let app = TestApp::start().await;
    app.group("r", "g", &json!({"lease_ms": 60000})).await;
    let batch: Vec<Value> = (0..305).map(|i| json!({"payload": i})).collect();
    let published = app
        .post("/topics/r/messages:batch", &json!({"messages": batch}))
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    // The first 300 go to a busy worker, the last 5 to one that will die.
    let busy = app.fetch("r", "g", "busy", 300, 0).await;
    app.group("r", "g", &json!({"lease_ms": 1000})).await;
    let doomed = app.fetch("r", "g", "doomed", 5, 0).await;
    assert_eq!((busy.len(), doomed.len()), (300, 5));
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let reclaimed = app.fetch("r", "g", "rescuer", 10, 0).await;
    let ids = |msgs: &[Value]| -> Vec<Value> { msgs.iter().map(|m| m["id"].clone()).collect() };
    assert_eq!(ids(&reclaimed), ids(&doomed), "exactly the expired ones");
    assert!(reclaimed.iter().all(|m| m["attempt"] == 2));
    let kept = app
        .ack(
            "r",
            "g",
            &receipts(&busy)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.body);
    assert_eq!(kept.body["acked"].as_array().map(Vec::len), Some(300));
}

/// Concurrent acks of one group share script calls (group commit): each
/// caller must get its own receipts' outcome. 200 deliveries, each acked
/// by two racing callers: exactly one of the two wins, the other learns
/// `lease_lost` (409), and the group ends with nothing pending.
#[tokio::test]
async fn concurrent_acks_each_get_their_own_outcome() {
    let app = std::sync::Arc::new(TestApp::start().await);
    app.group("acks", "g", &json!({})).await;
    let batch: Vec<Value> = (0..200).map(|i| json!({"payload": i})).collect();
    let reply = app
        .post("/topics/acks/messages:batch", &json!({"messages": batch}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let got = app.fetch("acks", "g", "w", 200, 0).await;
    assert_eq!(got.len(), 200);
    let mut tasks = tokio::task::JoinSet::new();
    for m in &got {
        for _ in 0..2 {
            let app = app.clone();
            let receipt = m["receipt"].as_str().unwrap().to_owned();
            tasks.spawn(async move {
                let reply = app.ack("acks", "g", &[&receipt]).await;
                (receipt, reply)
            });
        }
    }
    let mut wins: std::collections::HashMap<String, u32> = Default::default();
    while let Some(done) = tasks.join_next().await {
        let (receipt, reply) = done.expect("task");
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.body["acked"], json!([receipt]), "{}", reply.body);
                *wins.entry(receipt).or_default() += 1;
            }
            StatusCode::CONFLICT => assert_eq!(reply.body["code"], "lease_lost"),
            other => panic!("ack: {other} {}", reply.body),
        }
    }
    assert_eq!(wins.len(), 200, "every delivery acked once");
    assert!(wins.values().all(|&n| n == 1), "a receipt acked twice");
    let info = app.get("/topics/acks/groups/g").await.body;
    assert_eq!(
        (info["pending"].clone(), info["lag"].clone()),
        (json!(0), json!(0))
    );
}
