//! Adversarial tests of topics, publishing, idempotent publish and retention,
//! through the HTTP API against a real Redis: group commit under mixed
//! concurrent load, topics deleted under publishers, config changed on a
//! live topic, numbers and texts at their limits, and retention around
//! messages some group still owes.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Reply, TestApp};

/// Every message of a topic's history, all pages.
async fn all_history(app: &TestApp, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let path = match &after {
            Some(a) => format!("/topics/{topic}/messages?limit=1000&after={a}"),
            None => format!("/topics/{topic}/messages?limit=1000"),
        };
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let msgs = page.body["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        after = page.body["next_after"].as_str().map(str::to_owned);
        out.extend(msgs);
    }
    out
}

/// Asserts a 4xx is a problem document with a code (never a 5xx).
#[track_caller]
fn assert_4xx_problem(reply: &Reply, what: &str) {
    assert!(
        reply.status.is_client_error(),
        "{what}: {} {}",
        reply.status,
        reply.body
    );
    assert_eq!(reply.content_type(), "application/problem+json", "{what}");
    assert!(reply.body["code"].is_string(), "{what}: {}", reply.body);
}

#[tokio::test]
async fn lowering_the_dedup_window_applies_to_keys_already_seen() {
    let app = TestApp::start().await;
    let put = app
        .put("/topics/dw", &json!({"dedup_window_ms": 86_400_000}))
        .await;
    assert!(put.status.is_success(), "{}", put.body);
    let first = app
        .publish("dw", &json!({"payload": 1, "idempotency_key": "k"}))
        .await;
    assert_eq!(first["seq"], 1);
    app.publish("dw", &json!({"payload": 1, "idempotency_key": "q"}))
        .await;
    // Inside the window: a duplicate.
    let again = app
        .post(
            "/topics/dw/messages",
            &json!({"payload": 2, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);

    // The window goes down to 50 ms: keys seen 200 ms ago are outside it.
    app.put("/topics/dw", &json!({"dedup_window_ms": 50})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let limit = app
        .put("/limits", &json!({"publish_per_sec": 1, "burst": 1}))
        .await;
    assert!(limit.status.is_success(), "{}", limit.body);
    let later = app
        .post(
            "/topics/dw/messages",
            &json!({"payload": 3, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(
        later.status, 201,
        "outside the lowered window: {}",
        later.body
    );
    assert_eq!(later.body["seq"], 3);
    assert_eq!(later.body["duplicate"], false);
    // The duplicate check under a spent quota reads the same window.
    let refused = app
        .post(
            "/topics/dw/messages",
            &json!({"payload": 5, "idempotency_key": "q"}),
        )
        .await;
    refused.assert_problem(429, "rate_limited");
    app.delete("/limits").await;

    // Raised again: keys written from now on are kept for the new window.
    app.put("/topics/dw", &json!({"dedup_window_ms": 86_400_000}))
        .await;
    let kept = app
        .publish("dw", &json!({"payload": 6, "idempotency_key": "r"}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dup = app
        .post(
            "/topics/dw/messages",
            &json!({"payload": 7, "idempotency_key": "r"}),
        )
        .await;
    assert_eq!(dup.status, 200, "{}", dup.body);
    assert_eq!(dup.body["seq"], kept["seq"]);
}

#[tokio::test]
async fn mixed_concurrent_single_publishes_each_get_their_own_answer() {
    let app = std::sync::Arc::new(TestApp::start().await);
    // Group commit on one topic: unique messages, 10 keys published 6 times
    // each, invalid items, delays/ttls, and clients that give up mid-request.
    let mut tasks = Vec::new();
    for i in 0..240usize {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = json!({"payload": {"i": i}, "id": format!("m{i}")});
            match i % 8 {
                0 | 1 => body["idempotency_key"] = json!(format!("k{}", i % 10)),
                2 => body["ttl_ms"] = json!(0),
                3 => body["delay_ms"] = json!(1 + i),
                4 => body["ttl_ms"] = json!(60_000 + i),
                _ => {}
            }
            let url = app.url("/topics/gc/messages");
            let req = app.client.post(&url).json(&body).send();
            if i % 8 == 5 && i % 3 == 0 {
                // Gives up very early: may or may not have been written.
                let _ =
                    tokio::time::timeout(Duration::from_micros(100 * (i as u64 % 40)), req).await;
                return (i, None);
            }
            let reply = TestApp::reply(req.await.unwrap()).await;
            (i, Some(reply))
        }));
    }
    let mut answers = HashMap::new();
    for t in tasks {
        let (i, reply) = t.await.unwrap();
        if let Some(r) = reply {
            answers.insert(i, r);
        }
    }
    let history = all_history(&app, "gc").await;
    let by_stream_id: HashMap<&str, &Value> = history
        .iter()
        .map(|m| (m["stream_id"].as_str().unwrap(), m))
        .collect();
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "seq has no gaps, in stream order"
    );
    let mut first_of_key: HashMap<String, &Value> = HashMap::new();
    for (i, reply) in &answers {
        let i = *i;
        if i % 8 == 2 {
            let p = reply.assert_problem(400, "invalid_field");
            assert_eq!(p["field"], "ttl_ms");
            continue;
        }
        assert!(
            reply.status == 201 || reply.status == 200,
            "{i}: {}",
            reply.body
        );
        let b = &reply.body;
        let stored = by_stream_id
            .get(b["stream_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{i}'s answer is in history: {b}"));
        assert_eq!(stored["seq"], b["seq"], "{i}");
        assert_eq!(stored["id"], b["id"], "{i}");
        if b["duplicate"] == true {
            assert_eq!(reply.status, 200);
            assert!(i % 8 <= 1, "only keyed messages are duplicates: {i}");
        } else {
            assert_eq!(reply.status, 201);
            assert_eq!(b["id"], format!("m{i}"), "its own id");
            assert_eq!(stored["payload"]["i"], i, "its own payload");
            let at = stored["published_at"].as_u64().unwrap();
            let (delay, ttl) = (&stored["deliver_at"], &stored["expires_at"]);
            match i % 8 {
                3 => assert_eq!(delay.as_u64(), Some(at + 1 + i as u64), "{i}"),
                4 => assert_eq!(ttl.as_u64(), Some(at + 60_000 + i as u64), "{i}"),
                _ => assert!(delay.is_null() && ttl.is_null(), "{i}: {stored}"),
            }
        }
        if i % 8 <= 1 {
            let key = format!("k{}", i % 10);
            assert_eq!(stored["idempotency_key"], key.as_str());
            let first = first_of_key.entry(key).or_insert(stored);
            assert_eq!(first["stream_id"], stored["stream_id"], "one write per key");
        }
    }
    let keyed = history.iter().filter(|m| m["idempotency_key"].is_string());
    assert_eq!(keyed.count(), 10, "exactly one message per idempotency key");
}

#[tokio::test]
async fn concurrent_publishes_against_a_backlog_limit_never_overshoot() {
    let app = std::sync::Arc::new(TestApp::start().await);
    app.put("/topics/bl", &json!({"max_backlog": 40})).await;
    app.group("bl", "g", &json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..150usize {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = json!({"payload": i});
            if i % 5 == 0 {
                body["idempotency_key"] = json!(format!("k{}", i % 3));
            }
            (i, app.post("/topics/bl/messages", &body).await)
        }));
    }
    let (mut written, mut dups, mut refused) = (HashSet::new(), 0, 0);
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r.status.as_u16() {
            201 => assert!(written.insert(r.body["seq"].as_u64().unwrap()), "{i}"),
            200 => {
                assert_eq!(r.body["duplicate"], true);
                dups += 1;
            }
            429 => {
                r.assert_problem(429, "backlog_full");
                refused += 1;
            }
            s => panic!("{i}: {s} {}", r.body),
        }
    }
    assert_eq!(
        written,
        (1..=40).collect::<HashSet<u64>>(),
        "exactly the backlog"
    );
    assert_eq!(written.len() + dups + refused, 150);
    let info = app.get("/topics/bl").await.body;
    assert_eq!(info["last_seq"], 40);
    assert_eq!(info["length"], 40);
}

#[tokio::test]
async fn a_topic_deleted_under_publishers_starts_a_clean_incarnation() {
    let app = std::sync::Arc::new(TestApp::start().await);
    for round in 0..4 {
        let mut tasks = Vec::new();
        for i in 0..80usize {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                if i == 40 {
                    let d = app.delete("/topics/dr").await;
                    assert!(d.status == 204 || d.status == 404, "{}", d.body);
                    return None;
                }
                let body = json!({"payload": i, "idempotency_key": format!("k{}", i % 20)});
                let r = app.post("/topics/dr/messages", &body).await;
                assert!(r.status == 201 || r.status == 200, "{}", r.body);
                Some(r.body)
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The incarnation left standing: seq 1..n without gaps, and each
        // key written at most once in it.
        let history = all_history(&app, "dr").await;
        let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "round {round}"
        );
        let info = app.get("/topics/dr").await.body;
        assert_eq!(info["last_seq"], history.len() as u64, "round {round}");
        let mut keys = HashSet::new();
        for m in &history {
            assert!(keys.insert(m["idempotency_key"].as_str().unwrap().to_owned()));
        }
        // Every key again: a duplicate only of a message of this incarnation.
        let ids: HashSet<&str> = history
            .iter()
            .map(|m| m["stream_id"].as_str().unwrap())
            .collect();
        for k in 0..20 {
            let r = app
                .post(
                    "/topics/dr/messages",
                    &json!({"payload": 0, "idempotency_key": format!("k{k}")}),
                )
                .await;
            if r.body["duplicate"] == true {
                assert!(
                    ids.contains(r.body["stream_id"].as_str().unwrap()),
                    "k{k}: {}",
                    r.body
                );
            } else {
                assert_eq!(r.status, 201);
                assert!(!keys.contains(&format!("k{k}")), "k{k} written twice");
            }
        }
        // A delete, then the same keys: all new, from seq 1.
        assert_eq!(app.delete("/topics/dr").await.status, 204);
        let r = app
            .publish("dr", &json!({"payload": 0, "idempotency_key": "k0"}))
            .await;
        assert_eq!(
            (r["seq"].as_u64(), r["duplicate"].as_bool()),
            (Some(1), Some(false))
        );
        assert_eq!(app.delete("/topics/dr").await.status, 204);
    }
}

#[tokio::test]
async fn numbers_at_their_limits_are_exact_or_a_400() {
    let app = TestApp::start().await;
    let year = 365u64 * 24 * 3600 * 1000;
    let raw = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    // (field, value, accepted)
    let cases = [
        ("delay_ms", json!(0), true),
        ("delay_ms", json!(1), true),
        ("delay_ms", json!(year), true),
        ("delay_ms", json!(year + 1), false),
        ("delay_ms", json!(5.0), true),
        ("delay_ms", json!(5.5), false),
        ("delay_ms", json!(-1), false),
        ("delay_ms", json!("5"), false),
        ("delay_ms", json!(9_007_199_254_740_992u64), false),
        ("delay_ms", json!(9_007_199_254_740_993u64), false),
        ("delay_ms", json!(u64::MAX), false),
        ("delay_ms", raw("18446744073709551616"), false),
        ("delay_ms", raw("1e20"), false),
        ("delay_ms", json!(true), false),
        ("ttl_ms", json!(0), false),
        ("ttl_ms", json!(1), true),
        ("ttl_ms", json!(year), true),
        ("ttl_ms", json!(year + 1), false),
        ("ttl_ms", json!(-0.0), false),
        ("ttl_ms", json!(i64::MIN), false),
        ("seq", json!(1), false),
        ("stream_id", json!("1-1"), false),
        ("duplicate", json!(true), false),
    ];
    let mut accepted = 0;
    for (field, value, ok) in cases {
        let mut body = json!({"payload": 1});
        body[field] = value.clone();
        let r = app.post("/topics/n/messages", &body).await;
        if ok {
            assert_eq!(r.status, 201, "{field}={value}: {}", r.body);
            accepted += 1;
            assert_eq!(r.body["seq"], accepted, "server-assigned seq");
        } else {
            let p = r.assert_problem(400, r.body["code"].as_str().unwrap_or("?"));
            assert!(
                p["code"] == "invalid_field" || p["code"] == "invalid_body",
                "{field}={value}: {p}"
            );
        }
    }
    let topic_cases = [
        ("retention_ms", json!(0), true),
        ("retention_ms", json!(315_360_000_000u64), true),
        ("retention_ms", json!(315_360_000_001u64), false),
        ("max_backlog", json!(0), true),
        ("max_backlog", json!(1_000_000_000), true),
        ("max_backlog", json!(1_000_000_001), false),
        ("max_backlog", json!(-1), false),
        ("dedup_window_ms", json!(0), false),
        ("dedup_window_ms", json!(1), true),
        ("dedup_window_ms", json!(2_592_000_000u64), true),
        ("dedup_window_ms", json!(2_592_000_001u64), false),
        ("dedup_window_ms", json!(1.5), false),
        ("dedup_window_ms", json!(u64::MAX), false),
        ("dedup_window_ms", json!(null), true),
    ];
    for (field, value, ok) in topic_cases {
        let r = app.put("/topics/n", &json!({ field: value })).await;
        if ok {
            assert_eq!(r.status, 200, "{field}={value}: {}", r.body);
            if !value.is_null() {
                assert_eq!(app.get("/topics/n").await.body[field], value, "{field}");
            }
        } else {
            assert_4xx_problem(&r, &format!("{field}={value}"));
            assert_eq!(r.status, 400, "{field}={value}");
        }
    }
    // History cursors and page sizes at and past their limits.
    for (query, ok) in [
        ("limit=1", true),
        ("limit=1000", true),
        ("limit=0", false),
        ("limit=1001", false),
        ("limit=-1", false),
        ("limit=1.5", false),
        ("limit=18446744073709551616", false),
        ("after=0", true),
        ("after=0-0", true),
        ("after=9999999999999999999-9999999999999999999", true),
        ("after=18446744073709551615-0", false),
        ("after=(1", false),
        ("after=1-", false),
        ("after=%2B", false),
    ] {
        let r = app.get(&format!("/topics/n/messages?{query}")).await;
        if ok {
            assert_eq!(r.status, 200, "{query}: {}", r.body);
        } else {
            assert_4xx_problem(&r, query);
            assert_eq!(r.status, 400, "{query}");
        }
    }
    // The largest window and backlog still publish and dedupe.
    app.put("/topics/n", &json!({"dedup_window_ms": 2_592_000_000u64, "max_backlog": 1_000_000_000, "retention_ms": 315_360_000_000u64})).await;
    let a = app
        .publish("n", &json!({"payload": 1, "idempotency_key": "big"}))
        .await;
    let b = app
        .publish("n", &json!({"payload": 2, "idempotency_key": "big"}))
        .await;
    assert_eq!(
        (a["seq"].clone(), b["duplicate"].clone()),
        (b["seq"].clone(), json!(true))
    );
}

#[tokio::test]
async fn texts_at_their_limits_and_odd_characters() {
    let app = TestApp::start().await;
    let emoji256 = "😀".repeat(64);
    let emoji_over = format!("{}a", "😀".repeat(64));
    let cases: Vec<(&str, String, bool)> = vec![
        ("idempotency_key", emoji256.clone(), true),
        ("idempotency_key", emoji_over, false),
        ("idempotency_key", "k\u{2028}x{}".into(), true),
        ("idempotency_key", "k\u{85}".into(), false),
        ("idempotency_key", "k\u{7f}".into(), false),
        ("idempotency_key", "k\nx".into(), false),
        ("idempotency_key", String::new(), false),
        ("id", "é".repeat(64), true),
        ("id", format!("{}a", "é".repeat(64)), false),
        ("id", "a\u{0}".into(), false),
        ("key", "x".repeat(256), true),
        ("key", "x".repeat(257), false),
    ];
    for (field, value, ok) in cases {
        let body = json!({"payload": 1, field: value});
        let r = app.post("/topics/tx/messages", &body).await;
        if ok {
            assert_eq!(r.status, 201, "{field}={value:?}: {}", r.body);
            let again = app.post("/topics/tx/messages", &body).await;
            if field == "idempotency_key" {
                assert_eq!(again.status, 200, "{value:?}");
                assert_eq!(again.body["seq"], r.body["seq"]);
            } else {
                assert_eq!(again.status, 201);
            }
        } else {
            r.assert_problem(400, "invalid_field");
            assert_eq!(r.body["field"], field);
        }
    }
    let stored = all_history(&app, "tx").await;
    assert!(
        stored
            .iter()
            .any(|m| m["idempotency_key"] == emoji256.as_str())
    );
    assert!(
        stored
            .iter()
            .any(|m| m["idempotency_key"] == "k\u{2028}x{}")
    );
}

#[tokio::test]
async fn batches_of_duplicates_and_batches_at_the_limit() {
    let app = TestApp::start().await;
    // 1000 items, one key: the first is written, the other 999 point at it.
    let same: Vec<Value> = (0..1000)
        .map(|i| json!({"payload": i, "idempotency_key": "one"}))
        .collect();
    let r = app
        .post("/topics/b/messages:batch", &json!({"messages": same}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert_eq!(results[0]["duplicate"], false);
    for x in &results[1..] {
        assert_eq!(
            (&x["duplicate"], &x["seq"], &x["stream_id"]),
            (&json!(true), &json!(1), &results[0]["stream_id"])
        );
    }
    // 1000 distinct keys, then the same 1000 again: all duplicates, no seq spent.
    let distinct: Vec<Value> = (0..1000)
        .map(|i| json!({"payload": i, "idempotency_key": format!("d{i}")}))
        .collect();
    let first = app
        .post("/topics/b/messages:batch", &json!({"messages": distinct}))
        .await;
    assert_eq!(first.status, 200);
    let again = app
        .post("/topics/b/messages:batch", &json!({"messages": distinct}))
        .await;
    assert_eq!(again.status, 200);
    for (a, b) in first.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again.body["results"].as_array().unwrap())
    {
        assert_eq!(
            (&b["duplicate"], &b["seq"], &b["id"]),
            (&json!(true), &a["seq"], &a["id"])
        );
    }
    assert_eq!(app.get("/topics/b").await.body["last_seq"], 1001);
    // One past the limit, and empty: the whole request is refused.
    let over: Vec<Value> = (0..1001).map(|i| json!({"payload": i})).collect();
    let r = app
        .post("/topics/b/messages:batch", &json!({"messages": over}))
        .await;
    r.assert_problem(400, "invalid_field");
    let r = app
        .post("/topics/b/messages:batch", &json!({"messages": []}))
        .await;
    r.assert_problem(400, "invalid_field");
    // Every item invalid: 200 with an error per item, nothing written.
    let bad: Vec<Value> = (0..3).map(|_| json!({"payload": 1, "ttl_ms": 0})).collect();
    let r = app
        .post("/topics/b/messages:batch", &json!({"messages": bad}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["code"] == "invalid_field")
    );
    assert_eq!(app.get("/topics/b").await.body["last_seq"], 1001);
}

#[tokio::test]
async fn retention_never_loses_leased_parked_delayed_or_retried_messages() {
    let app = TestApp::start_with(|c| c.retention_interval = Duration::from_millis(50)).await;
    app.group("rt", "ord", &json!({"ordering": "key", "lease_ms": 60000}))
        .await;
    app.group("rt", "plain", &json!({"lease_ms": 60000})).await;
    for i in 0..12 {
        let mut body = json!({"payload": i, "key": if i % 3 == 0 { "hot" } else { "other" }});
        if i == 11 {
            body["delay_ms"] = json!(2000);
        }
        app.publish("rt", &body).await;
    }
    // ord: one message per key leased, the rest of each key parked.
    let ord = app.fetch("rt", "ord", "w", 100, 0).await;
    assert_eq!(ord.len(), 2);
    // plain: a retry scheduled, the others leased (the delayed one scheduled).
    let plain = app.fetch("rt", "plain", "w", 100, 0).await;
    assert_eq!(plain.len(), 11);
    let nack = app
        .post(
            "/topics/rt/groups/plain/nack",
            &json!({"receipts": [plain[0]["receipt"]], "delay_ms": 300}),
        )
        .await;
    assert_eq!(nack.status, 200, "{}", nack.body);
    // Retention down to 1 ms with everyone behind: many passes trim nothing.
    app.put("/topics/rt", &json!({"retention_ms": 1})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.get("/topics/rt").await.body["length"], 12);
    // Both groups finish everything: each message exactly once per group.
    for group in ["ord", "plain"] {
        let mut seen = HashSet::new();
        let mut held: Vec<Value> = if group == "ord" {
            ord.clone()
        } else {
            plain[1..].to_vec()
        };
        for _ in 0..200 {
            for m in &held {
                assert!(seen.insert(m["seq"].as_u64().unwrap()), "{group}: {m}");
            }
            let receipts: Vec<&str> = held
                .iter()
                .map(|m| m["receipt"].as_str().unwrap())
                .collect();
            if !receipts.is_empty() {
                assert_eq!(app.ack("rt", group, &receipts).await.status, 200);
            }
            if seen.len() == 12 {
                break;
            }
            held = app.fetch("rt", group, "w", 100, 200).await;
        }
        assert_eq!(seen.len(), 12, "{group} got every message");
    }
    // Now every group is done: the next passes trim the lot.
    let mut len = Value::Null;
    for _ in 0..100 {
        len = app.get("/topics/rt").await.body["length"].clone();
        if len == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(len, 0);
    // Retention racing fetches of a fresh backlog: nothing delivered is lost.
    for i in 0..50 {
        app.publish("rt", &json!({"payload": i})).await;
    }
    let mut got = 0;
    for _ in 0..100 {
        let batch = app.fetch("rt", "plain", "w", 7, 0).await;
        let receipts: Vec<&str> = batch
            .iter()
            .map(|m| m["receipt"].as_str().unwrap())
            .collect();
        got += batch.len();
        if !receipts.is_empty() {
            let a = app.ack("rt", "plain", &receipts).await;
            assert_eq!(a.body["acked"].as_array().unwrap().len(), receipts.len());
        }
        if got == 50 {
            break;
        }
    }
    assert_eq!(got, 50);
}
#[tokio::test]
async fn a_client_idempotency_key_cannot_swallow_an_ack_with_emit() {
    let app = TestApp::start().await;
    app.group("src", "g", &json!({})).await;
    app.publish("src", &json!({"payload": "work"})).await;
    let got = app.fetch("src", "g", "w", 1, 0).await;
    let sid = got[0]["stream_id"].as_str().unwrap();
    // A client publishes to the target under the text of the emit's dedup
    // identity (topic, group, stream id, index) before the step acks.
    let forged = format!("emit:src:g:{sid}:0");
    let f = app
        .publish(
            "out",
            &json!({"payload": "forged", "idempotency_key": forged}),
        )
        .await;
    assert_eq!(f["seq"], 1);
    // The same through a channel emit (index 1).
    let c = app
        .post(
            "/channels/ch/messages",
            &json!({"payload": "forged", "idempotency_key": format!("emit:src:g:{sid}:1")}),
        )
        .await;
    assert!(c.status.is_success(), "{}", c.body);
    let reply = app
        .post(
            "/topics/src/groups/g/ack",
            &json!({"receipts": [got[0]["receipt"]], "emit": [
                {"topic": "out", "payload": "real"}, {"channel": "ch", "payload": "real"}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["emitted"][0]["duplicate"], false,
        "{}",
        reply.body
    );
    assert_eq!(
        reply.body["emitted"][1]["duplicate"], false,
        "{}",
        reply.body
    );
    let payloads: Vec<Value> = all_history(&app, "out")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!("forged"), json!("real")]);
}

#[tokio::test]
async fn lone_surrogates_are_refused_where_they_would_be_stored() {
    let app = TestApp::start().await;
    for body in [
        r#"{"payload": "\ud800"}"#,
        r#"{"payload": {"a\udfff": 1}}"#,
        r#"{"payload": 1, "idempotency_key": "\ud800"}"#,
    ] {
        let r = app.post_text("/topics/sur/messages", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let r = app.get("/topics/sur/messages").await;
    assert!(
        r.status == 404 || r.body["messages"] == json!([]),
        "{}",
        r.body
    );

    // A channel's history is read back through the same strict parser.
    app.post_text("/channels/sur/messages", r#"{"payload": "\ud800"}"#)
        .await
        .assert_problem(400, "invalid_field");
    let r = app.get("/channels/sur/messages").await;
    assert!(
        r.status == 404 || r.body["messages"] == json!([]),
        "{}",
        r.body
    );

    // An ack's emits, to a topic and to a channel, are refused whole.
    app.group("src", "g", &json!({})).await;
    app.publish("src", &json!({"payload": "work"})).await;
    let got = app.fetch("src", "g", "w", 1, 0).await;
    let receipt = got[0]["receipt"].as_str().unwrap();
    for emit in [
        r#"{"topic": "sur-out", "payload": "\udfff"}"#,
        r#"{"channel": "sur-out", "payload": ["\ud800"]}"#,
    ] {
        let body = format!(r#"{{"receipts": ["{receipt}"], "emit": [{emit}]}}"#);
        app.post_text("/topics/src/groups/g/ack", body)
            .await
            .assert_problem(400, "invalid_field");
    }
    for path in ["/topics/sur-out/messages", "/channels/sur-out/messages"] {
        let r = app.get(path).await;
        assert!(
            r.status == 404 || r.body["messages"] == json!([]),
            "{path}: {}",
            r.body
        );
    }
}

/// The lone-surrogate check refuses payloads for a lone surrogate only: a
/// valid pair (an emoji escaped as `\ud83d\ude00`) next to JSON the
/// sidecar otherwise stores as it came, a number beyond a double's range or
/// nesting deeper than 128 levels, is accepted, as that JSON is without the
/// pair. It used to be refused as "a lone UTF-16 surrogate escape", the
/// check decoding the whole payload rather than its strings.
#[tokio::test]
async fn valid_surrogate_pairs_are_accepted_beside_any_json() {
    let app = TestApp::start().await;
    let deep = format!("{}\"\\ud83d\\ude00\"{}", "[".repeat(200), "]".repeat(200));
    for payload in [
        r#"{"n": 1e400}"#.to_owned(),
        r#"{"n": 1e400, "s": "\ud83d\ude00"}"#.to_owned(),
        deep.replace("\\ud83d\\ude00", "x"),
        deep,
    ] {
        for path in ["/topics/pairs/messages", "/channels/pairs/messages"] {
            let body = format!(r#"{{"payload": {payload}}}"#);
            let resp = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let r = TestApp::reply(resp).await;
            assert_eq!(r.status, 201, "{path} {payload}: {}", r.body);
        }
    }
}

/// A publish that creates a topic races a DELETE of it. Whatever order
/// their commands land in, once both have answered the listing agrees with
/// the topic: listed while it exists, not listed once it is gone. The
/// DELETE could run whole (script, unlisting, its check that the topic is
/// gone) between the publish's script and the publish's listing, which
/// then listed a topic that no longer existed until another DELETE.
#[tokio::test]
async fn a_publish_racing_a_delete_leaves_the_listing_agreeing_with_the_topic() {
    const TOPICS: usize = 640;
    const AT_ONCE: usize = 16;
    let app = TestApp::start().await;
    let mut deleted_after_publish = 0;
    for first in (0..TOPICS).step_by(AT_ONCE) {
        let pairs = (first..first + AT_ONCE).map(|i| {
            let app = &app;
            async move {
                let topic = format!("/topics/race-{i}");
                let (messages, body) = (format!("{topic}/messages"), json!({"payload": i}));
                // The DELETE reads the group set first: give it a head start
                // of 0 to 7 turns of the runtime, so it lands on either side.
                let delete = async {
                    for _ in 0..i % 8 {
                        tokio::task::yield_now().await;
                    }
                    app.delete(&topic).await
                };
                let publish = async {
                    for _ in 0..(i / 8) % 8 {
                        tokio::task::yield_now().await;
                    }
                    app.post(&messages, &body).await
                };
                let (published, deleted) = tokio::join!(publish, delete);
                assert_eq!(published.status, 201, "{}", published.body);
                assert!(
                    deleted.status == 204 || deleted.status == 404,
                    "{}",
                    deleted.body
                );
                deleted.status == 204
            }
        });
        for deleted in futures_util::future::join_all(pairs).await {
            deleted_after_publish += usize::from(deleted);
        }
    }
    let (disagree, existing) = app.listing_disagreements("race-", TOPICS).await;
    assert!(
        deleted_after_publish > 0 && existing > 0,
        "{deleted_after_publish} deleted after the publish, {existing} exist"
    );
    assert!(
        disagree.is_empty(),
        "(topic, exists) not listed accordingly: {disagree:?}"
    );
}
