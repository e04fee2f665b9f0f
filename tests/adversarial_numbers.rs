//! Numbers at their limits through the Lua scripts (Redis runs Lua 5.1:
//! every number is a double, `..` and `tostring` print 14 significant
//! digits, a number passed to `redis.call` becomes `%.17g` text, `unpack`
//! stops near 8,000 values). Each test feeds the largest values the API
//! allows (365-day ttl/delay, 7-day join, 24-hour claim and lease, full
//! batches of 1000 with every envelope field, 16-digit delivery numbers and
//! fencing tokens, 19-digit stream-id parts, channel offsets past 2^53) and
//! checks every time and counter comes back, and is stored, as exact
//! decimal text. `adversarial_coord.rs` covers the quota, checkpoint and
//! pool/claim bounds themselves; these cover what the scripts compute from
//! them.

mod support;

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

/// Longest publish ttl / delay and nack delay (365 days).
const YEAR_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// True for an integer printed exactly: digits only (no exponent, no dot).
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `<attempt>:<delivery>` tail of a receipt as numbers.
fn receipt_numbers(receipt: &str) -> (u64, u64) {
    let mut parts = receipt.rsplitn(3, ':');
    let delivery = parts.next().unwrap().parse().unwrap();
    let attempt = parts.next().unwrap().parse().unwrap();
    (attempt, delivery)
}

fn redis_hash(app: &TestApp, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query(&mut app.redis.connection())
        .unwrap()
}

fn redis_zscores(app: &TestApp, key: &str) -> Vec<(String, String)> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut app.redis.connection())
        .unwrap()
}

/// Every numeric field of every entry of a stream, as stored.
fn stream_numbers(app: &TestApp, key: &str, names: &[&str]) -> Vec<String> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut app.redis.connection())
        .unwrap();
    entries
        .into_iter()
        .flat_map(|(_, f)| {
            names
                .iter()
                .filter_map(|n| f.get(*n).cloned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A message with every envelope field at its largest ttl, a 64-header map.
fn full_message(i: usize) -> Value {
    let headers: serde_json::Map<String, Value> =
        (0..64).map(|h| (format!("h{h}"), json!("v"))).collect();
    json!({
        "id": format!("m{i}"),
        "payload": {"i": i, "big": 9_007_199_254_740_993_u64},
        "key": format!("k{}", i % 7),
        "idempotency_key": format!("idem-{i}"),
        "causation_id": "c",
        "correlation_id": "w",
        "schema_version": "1",
        "headers": headers,
        "ttl_ms": YEAR_MS,
    })
}

/// A message published with the longest ttl and delay carries
/// `published_at + 365 days` exactly, stored as plain digits, and its
/// retry-schedule score (the delay parks it) is the same exact time.
#[tokio::test]
async fn the_longest_ttl_and_delay_are_exact_times() {
    let app = TestApp::start_quiet().await;
    app.group("t", "g", &json!({})).await;
    let body = json!({"payload": 1, "ttl_ms": YEAR_MS, "delay_ms": YEAR_MS});
    app.publish("t", &body).await;
    let page = app.get("/topics/t/messages").await;
    let m = &page.body["messages"][0];
    let published = m["published_at"].as_u64().expect("published_at");
    assert_eq!(m["expires_at"].as_u64(), Some(published + YEAR_MS), "{m}");
    assert_eq!(m["deliver_at"].as_u64(), Some(published + YEAR_MS), "{m}");
    assert!(app.fetch("t", "g", "w", 10, 0).await.is_empty());
    let stream = format!("sc:{{{}:t}}:stream", app.tenant);
    for n in stream_numbers(
        &app,
        &stream,
        &["seq", "published_at", "expires_at", "deliver_at"],
    ) {
        assert!(is_digits(&n), "stored as {n}");
    }
    let delayed = redis_zscores(&app, &format!("sc:{{{}:t}}:g:g:delayed", app.tenant));
    assert_eq!(delayed.len(), 1, "{delayed:?}");
    assert_eq!(delayed[0].1, (published + YEAR_MS).to_string());
    let meta = redis_hash(&app, &format!("sc:{{{}:t}}:meta", app.tenant));
    assert!(is_digits(&meta["created_at"]), "{meta:?}");
}

/// A full batch (1000 messages, every envelope field, 64 headers) goes
/// through fetch (1000 deliveries numbered from the microsecond clock: 16
/// digits), reject (1000 dead letters, each copying every field), replay,
/// a second fetch and a nack at the longest delay, and every number stays
/// exact: delivery numbers consecutive and above the first round's, the
/// dead letters' attempts and times plain digits, each retry due exactly
/// 365 days after the nack.
#[tokio::test]
async fn a_full_batch_keeps_exact_numbers_through_reject_replay_and_nack() {
    const N: usize = 1000;
    let app = TestApp::start_quiet().await;
    app.group("t", "g", &json!({"max_deliveries": 1000})).await;
    let messages: Vec<Value> = (0..N).map(full_message).collect();
    let published = app.publish_batch("t", &messages).await;
    let results = published["results"].as_array().expect("results");
    assert_eq!(results.len(), N, "{published}");

    let fetch = json!({"consumer": "w", "max": N, "max_bytes": 64 << 20});
    let first = app.post("/topics/t/groups/g/fetch", &fetch).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first = first.body["messages"].as_array().unwrap().clone();
    assert_eq!(first.len(), N);
    let numbers: Vec<(u64, u64)> = first
        .iter()
        .map(|m| receipt_numbers(m["receipt"].as_str().unwrap()))
        .collect();
    let (_, base) = numbers[0];
    assert!(base > 1_000_000_000_000_000, "µs clock: {base}");
    for (i, (attempt, delivery)) in numbers.iter().enumerate() {
        assert_eq!((*attempt, *delivery), (1, base + i as u64));
    }
    for m in &first {
        assert_eq!(
            m["payload"]["big"].to_string(),
            "9007199254740993",
            "payload digits as sent"
        );
    }

    let receipts: Vec<&str> = first
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    let rejected = app
        .post(
            "/topics/t/groups/g/reject",
            &json!({"receipts": receipts, "error": "e"}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
    let dlq = format!("sc:{{{}:t}}:g:g:dlq", app.tenant);
    let stored = stream_numbers(
        &app,
        &dlq,
        &["attempts", "dead_lettered_at", "seq", "expires_at"],
    );
    assert_eq!(stored.len(), 4 * N);
    assert!(stored.iter().all(|n| is_digits(n)), "{:?}", &stored[..8]);
    let page = app.get("/topics/t/groups/g/dlq?limit=1000").await;
    let letters = page.body["messages"].as_array().expect("dead letters");
    assert_eq!(letters.len(), N, "{}", page.body);

    let replayed = app.post("/topics/t/groups/g/dlq/replay", &json!({})).await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.body);
    assert_eq!(replayed.body["replayed"].as_array().map(Vec::len), Some(N));
    let mut second = Vec::new();
    for _ in 0..10 {
        let r = app.post("/topics/t/groups/g/fetch", &fetch).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        second.extend(r.body["messages"].as_array().unwrap().clone());
        if second.len() >= N {
            break;
        }
    }
    assert_eq!(second.len(), N);
    let last_first = base + N as u64 - 1;
    for m in &second {
        let (attempt, delivery) = receipt_numbers(m["receipt"].as_str().unwrap());
        assert_eq!(attempt, 1, "a replay starts again at attempt 1");
        assert!(delivery > last_first, "{delivery} reissued");
    }

    let receipts: Vec<&str> = second
        .iter()
        .map(|m| m["receipt"].as_str().unwrap())
        .collect();
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query(&mut app.redis.connection())
        .unwrap();
    let before = secs * 1000 + micros / 1000;
    let nacked = app
        .post(
            "/topics/t/groups/g/nack",
            &json!({"receipts": receipts, "delay_ms": YEAR_MS}),
        )
        .await;
    assert_eq!(nacked.status, StatusCode::OK, "{}", nacked.body);
    let delayed = redis_zscores(&app, &format!("sc:{{{}:t}}:g:g:delayed", app.tenant));
    assert_eq!(delayed.len(), N);
    for (member, score) in &delayed {
        assert!(is_digits(score), "{member} due at {score}");
        let due: u64 = score.parse().unwrap();
        assert!(
            due >= before + YEAR_MS && due < before + YEAR_MS + 60_000,
            "{due}"
        );
        assert!(member.ends_with("|1"), "{member}");
    }
}

/// The longest join (7 days), idempotency claim (24 h) and pool lease
/// (24 h) give deadlines that are `now + ttl` exactly, read back the same
/// from every answer; fencing tokens (16 digits) come back whole and
/// strictly increasing.
#[tokio::test]
async fn the_longest_join_claim_and_lease_keep_exact_deadlines() {
    let app = TestApp::start_quiet().await;
    let join = app
        .put(
            "/topics/agg/joins/j",
            &json!({"parts": ["a", "b"], "ttl_ms": 604_800_000_u64}),
        )
        .await;
    assert_eq!(join.status, StatusCode::CREATED, "{}", join.body);
    let info = app.get("/topics/agg/joins/j").await.body;
    let created = info["created_at"].as_u64().expect("created_at");
    assert_eq!(
        info["deadline"].as_u64(),
        Some(created + 604_800_000),
        "{info}"
    );
    let stored = redis_hash(&app, &format!("sc:{{{}:agg}}:join:j", app.tenant));
    for f in ["created_at", "deadline", "total", "recorded", "bytes"] {
        assert!(is_digits(&stored[f]), "{f} = {}", stored[f]);
    }

    let claim = app
        .post(
            "/idempotency/k/claim",
            &json!({"owner": "o", "ttl_ms": 86_400_000}),
        )
        .await;
    assert_eq!(claim.status, StatusCode::CREATED, "{}", claim.body);
    let expires = claim.body["expires_at"].as_u64().expect("expires_at");
    let record = app.get("/idempotency/k").await.body;
    assert_eq!(record["expires_at"].as_u64(), Some(expires), "{record}");
    let stored = redis_hash(&app, &format!("sc:{{{}}}:idem:k", app.tenant));
    assert_eq!(stored["expires_at"], expires.to_string());

    app.put("/pools/p", &json!({"capacity": 3, "lease_ms": 86_400_000}))
        .await;
    let mut last_fence = 0;
    let mut holders = Vec::new();
    for i in 0..3 {
        let r = app
            .post("/pools/p/acquire", &json!({"holder": format!("h{i}")}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let fence = r.body["fencing_token"].as_u64().expect("fencing_token");
        assert!(
            fence > 1_000_000_000_000_000 && fence > last_fence,
            "{fence}"
        );
        last_fence = fence;
        holders.push((
            r.body["reservation_id"].clone(),
            r.body["expires_at"].clone(),
            r.body["fencing_token"].clone(),
        ));
    }
    let pool = app.get("/pools/p").await.body;
    for (id, expires_at, fence) in &holders {
        let shown = pool["holders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| &h["reservation_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {pool}"));
        assert_eq!(&shown["expires_at"], expires_at, "{pool}");
        assert_eq!(&shown["fencing_token"], fence, "{pool}");
    }
}

/// Stream-id parts of 19 digits (the most a client may give) and channel
/// offsets past 2^53 are taken or refused whole: a group starting at
/// `1-9999999999999999999` reads what is published after it, one starting
/// in the far future is refused, and a channel position past the top
/// serves no message twice and no 5xx.
#[tokio::test]
async fn nineteen_digit_ids_and_offsets_past_2_53_are_handled_whole() {
    let app = TestApp::start_quiet().await;
    app.publish("t", &json!({"payload": 0})).await;
    app.group("t", "low", &json!({"start": "1-9999999999999999999"}))
        .await;
    app.put(
        "/topics/t/groups/far",
        &json!({"start": "9999999999999999999-9999999999999999999"}),
    )
    .await
    .assert_problem(400, "invalid_field");
    app.publish("t", &json!({"payload": 1})).await;
    let got = app.fetch_and_ack("t", "low", 10).await;
    assert_eq!(got.len(), 2, "{got:?}");

    let r = app
        .post("/channels/c/messages", &json!({"payload": 1}))
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let page = app.get("/channels/c/messages").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let epoch = page.body["epoch"].as_str().expect("epoch").to_owned();
    for offset in [
        9_007_199_254_740_991_u64,
        9_007_199_254_740_992,
        9_007_199_254_740_993,
        9_999_999_999_999_999_999,
    ] {
        let r = app
            .get(&format!("/channels/c/messages?since={epoch}:{offset}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{offset}: {}", r.body);
        let offsets: Vec<u64> = r.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert!(offsets.iter().all(|o| *o == 1), "{offset}: {}", r.body);
    }
}

/// `publish.lua` numbers a call's messages from the stored seq (raised once
/// at the first write and once at the end, not per message). From a stored
/// seq of 15 digits, past Lua's 14-digit `%.14g`, a batch with duplicates
/// between its writes still numbers every written message exactly and
/// consecutively, stored as plain digits, and leaves the stored seq at the
/// last one.
#[tokio::test]
async fn a_batch_numbered_from_a_fifteen_digit_seq_stays_exact() {
    const BASE: u64 = 999_999_999_999_990;
    let app = TestApp::start_quiet().await;
    app.publish("t", &json!({"payload": 0, "idempotency_key": "k0"}))
        .await;
    let meta = format!("sc:{{{}:t}}:meta", app.tenant);
    let () = redis::cmd("HSET")
        .arg(&meta)
        .arg("seq")
        .arg(BASE)
        .query(&mut app.redis.connection())
        .expect("HSET seq");
    // Every third message repeats the first one's key: a duplicate, which
    // takes no seq, between written ones.
    let messages: Vec<Value> = (1..=30)
        .map(|i| {
            let key = if i % 3 == 0 {
                "k0".to_owned()
            } else {
                format!("k{i}")
            };
            json!({"payload": i, "idempotency_key": key})
        })
        .collect();
    let reply = app.publish_batch("t", &messages).await;
    let written: Vec<u64> = reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["duplicate"] == false)
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(written, (BASE + 1..=BASE + 20).collect::<Vec<_>>());
    let stored = stream_numbers(&app, &format!("sc:{{{}:t}}:stream", app.tenant), &["seq"]);
    assert_eq!(stored.len(), 21, "{stored:?}");
    assert_eq!(
        stored[1..],
        (BASE + 1..=BASE + 20)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(redis_hash(&app, &meta)["seq"], (BASE + 20).to_string());
}
