//! Quotas and backpressure through HTTP: per-tenant publish limits (GCRA)
//! with 429 + Retry-After + RateLimit headers, refill, isolation between
//! tenants, exact arithmetic at high rates, only written messages spending
//! the quota, duplicates answered while refused, and a topic's max_backlog
//! (per item, on counters). The one check below HTTP floods the sidecar's
//! own charge call at Redis, for rates a debug build cannot serve.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use streamcar::coord::limits::{RateReply, charge_cmd};
use support::{Reply, TestApp};

#[tokio::test]
async fn burst_then_429_then_refill_and_other_tenants_unaffected() {
    let app = TestApp::start().await;
    let put = app
        .put("/limits", &json!({"publish_per_sec": 1, "burst": 3}))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(app.get("/limits").await.body["limits"]["burst"], 3);

    for i in 0..3 {
        let reply = app.post("/topics/q/messages", &json!({"payload": i})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "burst message {i}");
        assert_eq!(reply.headers["ratelimit-limit"], "3");
    }
    let refused = app
        .post("/topics/q/messages", &json!({"payload": "too many"}))
        .await;
    refused.assert_problem(429, "rate_limited");
    for h in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(refused.headers.contains_key(h), "{h}");
    }
    assert_eq!(refused.headers["ratelimit-remaining"], "0");
    assert_eq!(
        app.history("q").await.len(),
        3,
        "nothing written when refused"
    );

    // Another tenant publishes freely.
    let other = format!(
        "{}/v1/tenants/other-{}/topics/q/messages",
        app.base, app.tenant
    );
    for i in 0..10 {
        let reply = app
            .send(Method::POST, &other, Some(&json!({"payload": i})))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }

    // The bucket refills at 1/s (slow enough that the burst and the
    // refused fourth fit in its first second even on a loaded machine).
    let mut accepted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = app
            .post("/topics/q/messages", &json!({"payload": "later"}))
            .await;
        if reply.status == StatusCode::CREATED {
            accepted = true;
            break;
        }
        reply.assert_problem(429, "rate_limited");
    }
    assert!(accepted, "refilled");

    // A batch counts each message; larger than the burst can never pass.
    let big: Vec<_> = (0..4).map(|i| json!({"payload": i})).collect();
    let reply = app
        .post("/topics/q/messages:batch", &json!({"messages": big}))
        .await;
    reply.assert_problem(400, "invalid_field");

    let cleared = app.delete("/limits").await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/limits").await.body["limits"],
        serde_json::Value::Null
    );
    for i in 0..10 {
        let reply = app.post("/topics/q/messages", &json!({"payload": i})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "no limit any more");
    }
}

#[tokio::test]
async fn limits_are_validated() {
    let app = TestApp::start().await;
    for (body, field) in [
        (json!({"publish_per_sec": 0, "burst": 1}), "publish_per_sec"),
        (json!({"publish_per_sec": 1, "burst": 0}), "burst"),
        (json!({"publish_per_sec": 1}), "burst"),
        (
            json!({"publish_per_sec": 1.5, "burst": 1}),
            "publish_per_sec",
        ),
    ] {
        let reply = app.put("/limits", &body).await;
        assert_eq!(reply.assert_problem(400, "invalid_field")["field"], field);
    }
}

/// The header `name` of `reply` as a number.
fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply.headers[name].to_str().unwrap().parse().unwrap()
}

/// Publishes `payload` to `topic` and asserts it is refused: 429
/// `backlog_full`.
async fn assert_full(app: &TestApp, topic: &str, payload: Value) {
    app.post(
        &format!("/topics/{topic}/messages"),
        &json!({ "payload": payload }),
    )
    .await
    .assert_problem(429, "backlog_full");
}

/// Publishes `payload` to `topic` and asserts it is written (201).
async fn assert_created(app: &TestApp, topic: &str, payload: Value) {
    let reply = app
        .post(
            &format!("/topics/{topic}/messages"),
            &json!({ "payload": payload }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

/// `ZADD index score member`, as an older version would have left it.
fn zadd(redis: &mut redis::Connection, index: &str, score: u64, member: &str) {
    redis::cmd("ZADD")
        .arg(index)
        .arg(score)
        .arg(member)
        .exec(redis)
        .unwrap();
}

/// `ZREM index member`.
fn zrem(redis: &mut redis::Connection, index: &str, member: &str) {
    redis::cmd("ZREM")
        .arg(index)
        .arg(member)
        .exec(redis)
        .unwrap();
}

#[tokio::test]
async fn backlog_full_refuses_publishes_until_the_group_catches_up() {
    let app = TestApp::start().await;
    app.put("/topics/bp", &json!({"max_backlog": 3})).await;
    app.group("bp", "fast", &json!({"lease_ms": 60000})).await;
    app.group("bp", "slow", &json!({"lease_ms": 60000})).await;
    for i in 0..3 {
        app.publish("bp", &json!({"payload": i})).await;
    }
    let full = app
        .post("/topics/bp/messages", &json!({"payload": 3}))
        .await;
    full.assert_problem(429, "backlog_full");
    assert!(full.headers.contains_key("retry-after"));
    assert_eq!(full.headers["ratelimit-limit"], "3");
    assert_eq!(app.history("bp").await.len(), 3, "nothing written");

    // The fast group alone finishing is not enough: the slowest counts.
    app.fetch_and_ack("bp", "fast", 10).await;
    assert_full(&app, "bp", json!(3)).await;

    // Fetched but not acked still counts; a scheduled retry still counts.
    let slow = app.fetch("bp", "slow", "s", 10, 0).await;
    assert_full(&app, "bp", json!(3)).await;
    app.ack("bp", "slow", &[slow[0]["receipt"].as_str().unwrap()])
        .await;
    app.post(
        "/topics/bp/groups/slow/nack",
        &json!({"receipts": [slow[1]["receipt"]], "delay_ms": 60000}),
    )
    .await;
    // Backlog of slow is now 2 (one delayed, one pending): publishes flow.
    assert_created(&app, "bp", json!(3)).await;
    assert_full(&app, "bp", json!(4)).await;
}

/// A connection to the Redis of `app` with `config`, the sidecar's scripts
/// loaded on it, and the app's tenant: what [`charge_cmd`] needs.
async fn charger(
    app: &TestApp,
    config: &redis::AsyncConnectionConfig,
) -> (
    redis::aio::MultiplexedConnection,
    streamcar::scripts::Scripts,
    streamcar::names::Tenant,
) {
    let client = redis::Client::open(app.redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .expect("connect");
    let scripts = streamcar::scripts::Scripts::new();
    scripts
        .ensure_loaded(&mut conn)
        .await
        .expect("load scripts");
    let tenant = streamcar::names::Tenant::parse(&app.tenant).expect("tenant");
    (conn, scripts, tenant)
}

/// Charges `n` one-message publishes to `tenant`'s quota as fast as Redis
/// runs them: the very call the sidecar sends, `n` times in one pipeline
/// between two `TIME` commands. Returns each charge's status (1 charged) and
/// the Redis-clock window, in µs, that holds every charge.
async fn flood_quota(app: &TestApp, n: usize) -> (Vec<i64>, u64) {
    // One reply holds all n: no response timeout.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let (mut conn, scripts, tenant) = charger(app, &config).await;
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for _ in 0..n {
        pipe.add_command(charge_cmd(&scripts, &tenant, 1));
    }
    pipe.cmd("TIME");
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("flood");
    let time_us = |v: redis::Value| {
        let (secs, micros): (u64, u64) = redis::from_redis_value(v).expect("TIME");
        secs * 1_000_000 + micros
    };
    let after = time_us(replies.pop().expect("TIME after"));
    let before = time_us(replies.remove(0));
    let statuses = replies
        .into_iter()
        .map(|v| redis::from_redis_value::<RateReply>(v).expect("charge").0)
        .collect();
    (statuses, after - before)
}

/// Above ~20,000/s a one-message charge used to vanish: the TAT was stored
/// through Lua's 14-digit number formatting (0.1 ms at epoch-millisecond
/// magnitudes) and 40 µs rounded back to nothing, so `25000/s, burst 10`
/// let everything through. No debug-build sidecar serves 25,000 publishes a
/// second, so this sends the sidecar's own charge call (`charge_cmd`)
/// straight at Redis, pipelined. The bound comes from the measured Redis
/// clock, not asserted about it: GCRA admits at most burst + rate × window,
/// exactly, whatever the machine's speed.
#[tokio::test]
async fn a_25000_per_second_quota_admits_at_most_burst_plus_rate_times_window() {
    let app = TestApp::start().await;
    let put = app
        .put("/limits", &json!({"publish_per_sec": 25000, "burst": 10}))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);

    let (statuses, window_us) = flood_quota(&app, 20_000).await;
    assert!(
        statuses[..10].iter().all(|s| *s == 1),
        "a full bucket takes the burst at once"
    );
    let charged = statuses.iter().filter(|s| **s == 1).count() as u64;
    assert!(
        statuses.iter().all(|s| *s == 1 || *s == 0),
        "only charged or refused"
    );
    // charged ≤ burst + rate × window, in integers (rate per µs = 25000/1e6).
    assert!(
        (charged - 10) * 1_000_000 <= 25_000 * window_us,
        "{charged} charges in {window_us} µs: at most {} fit a 25000/s quota with burst 10",
        10 + 25_000 * window_us / 1_000_000
    );
}

/// The arithmetic at the schema's extremes (rate 1/s with a burst of a
/// million: a debt of 11.6 days, 1e12 units inside the script) stays exact
/// and reaches the HTTP headers intact.
#[tokio::test]
async fn the_largest_burst_at_the_lowest_rate_is_exact() {
    let app = TestApp::start().await;
    let put = app
        .put(
            "/limits",
            &json!({"publish_per_sec": 1, "burst": 1_000_000}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let (mut conn, scripts, tenant) = charger(&app, &redis::AsyncConnectionConfig::new()).await;
    let whole: RateReply = charge_cmd(&scripts, &tenant, 1_000_000)
        .query_async(&mut conn)
        .await
        .expect("charge");
    assert_eq!(whole.0, 1, "a full bucket takes the whole burst");
    assert_eq!(whole.2, 0, "nothing remains");
    assert_eq!(whole.3, 1_000_000_000, "full again in 10^6 s");

    // 1000 more need 1000 s of refill: refused whatever the machine's speed.
    let more: Vec<Value> = (0..1000).map(|i| json!({"payload": i})).collect();
    let refused = app
        .post("/topics/q/messages:batch", &json!({"messages": more}))
        .await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(refused.headers["ratelimit-limit"], "1000000");
    let reset = header_u64(&refused, "ratelimit-reset");
    // Time only drains the debt: between the charge and now, at most the
    // test's own duration (bounded by the harness timeouts) went by.
    assert!(
        (999_000..=1_000_000).contains(&reset),
        "reset {reset} s after a 10^6 s debt"
    );
    let retry = header_u64(&refused, "retry-after");
    assert!(
        (999..=1000).contains(&retry),
        "retry after {retry} s: 1000 messages drain in 1000 s"
    );
}

/// A publish the backlog refuses writes nothing and must not spend the
/// quota: once the group catches up, the tenant publishes its whole burst.
/// (Before, each refusal was charged and the next publish after catching up
/// was `rate_limited`.)
#[tokio::test]
async fn backlog_refusals_do_not_spend_the_quota() {
    let app = TestApp::start().await;
    app.put("/limits", &json!({"publish_per_sec": 1, "burst": 3}))
        .await;
    app.put("/topics/bp", &json!({"max_backlog": 1})).await;
    app.group("bp", "g", &json!({"lease_ms": 60000})).await;
    assert_created(&app, "bp", json!(0)).await;

    for i in 1..=5 {
        let full = app
            .post("/topics/bp/messages", &json!({"payload": i}))
            .await;
        full.assert_problem(429, "backlog_full");
    }
    let batch = app
        .post(
            "/topics/bp/messages:batch",
            &json!({"messages": [{"payload": 6}, {"payload": 7}]}),
        )
        .await;
    batch.assert_problem(429, "backlog_full");

    let delivered = app.fetch("bp", "g", "w", 10, 0).await;
    let receipt = delivered[0]["receipt"].as_str().unwrap();
    assert_eq!(app.ack("bp", "g", &[receipt]).await.status, StatusCode::OK);

    // One message written of a burst of 3: two more go through at once
    // (time only adds to what is left).
    let reply = app
        .post(
            "/topics/bp/messages:batch",
            &json!({"messages": [{"payload": "a"}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["results"][0]["seq"], 2);
    let remaining = header_u64(&reply, "ratelimit-remaining");
    assert!(remaining >= 1, "the refusals spent nothing: {remaining}");
}

/// Duplicates are answered as duplicates whatever refuses the rest: the
/// quota (answered from a read-only look-up, nothing charged or written) or
/// the backlog (checked after the idempotency key). And a duplicate never
/// spends the quota.
#[tokio::test]
async fn duplicates_answer_as_duplicates_while_quota_or_backlog_refuse() {
    let app = TestApp::start().await;
    app.put("/limits", &json!({"publish_per_sec": 1, "burst": 2}))
        .await;
    let a = app
        .post(
            "/topics/d/messages",
            &json!({"payload": "a", "idempotency_key": "a"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    // Duplicates answer 200 and are given back to the quota.
    for _ in 0..5 {
        let again = app
            .post(
                "/topics/d/messages",
                &json!({"payload": "a2", "idempotency_key": "a"}),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        assert_eq!(again.body["duplicate"], true);
        assert_eq!(again.body["seq"], 1);
    }
    let b = app
        .post(
            "/topics/d/messages",
            &json!({"payload": "b", "idempotency_key": "b"}),
        )
        .await;
    assert_eq!(
        b.status,
        StatusCode::CREATED,
        "duplicates spent nothing: {}",
        b.body
    );

    // Spend the quota, then publish a duplicate: still 200 duplicate:true.
    let mut refused = false;
    for i in 0..20 {
        let reply = app.post("/topics/d/messages", &json!({"payload": i})).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            reply.assert_problem(429, "rate_limited");
            refused = true;
            break;
        }
    }
    assert!(refused, "20 publishes at once exceed a burst of 2 at 1/s");
    let dup = app
        .post(
            "/topics/d/messages",
            &json!({"payload": "b again", "idempotency_key": "b"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::OK, "{}", dup.body);
    assert_eq!(dup.body["duplicate"], true);
    assert_eq!(dup.body["id"], b.body["id"]);
    assert_eq!(dup.body["stream_id"], b.body["stream_id"]);

    // Backlog full: the duplicate still answers as one, a new message is refused.
    app.put("/topics/f", &json!({"max_backlog": 1})).await;
    app.group("f", "g", &json!({})).await;
    app.delete("/limits").await;
    let k = app
        .post(
            "/topics/f/messages",
            &json!({"payload": 1, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(k.status, StatusCode::CREATED, "{}", k.body);
    let again = app
        .post(
            "/topics/f/messages",
            &json!({"payload": 2, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["seq"], 1);
    app.post(
        "/topics/f/messages",
        &json!({"payload": 3, "idempotency_key": "z"}),
    )
    .await
    .assert_problem(429, "backlog_full");
    assert_eq!(app.history("f").await.len(), 1, "nothing else written");
}

/// A batch the quota refuses: its duplicates answer as duplicates, every
/// other item fails alone with `rate_limited`, nothing is written.
#[tokio::test]
async fn a_batch_refused_by_the_quota_still_answers_its_duplicates() {
    let app = TestApp::start().await;
    // 1000 messages of debt at 1/s: a 500-message batch cannot fit for
    // 500 s, whatever the machine's speed.
    app.put("/limits", &json!({"publish_per_sec": 1, "burst": 1000}))
        .await;
    let first: Vec<Value> = (0..1000)
        .map(|i| json!({"payload": i, "idempotency_key": format!("k{i}")}))
        .collect();
    let reply = app
        .post("/topics/b/messages:batch", &json!({"messages": first}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let mut batch = vec![
        json!({"payload": "dup", "idempotency_key": "k7"}),
        json!({"payload": "new", "idempotency_key": "fresh"}),
        json!({"payload": "bad", "ttl_ms": 0}),
        json!({"payload": "dup", "idempotency_key": "k999"}),
    ];
    batch.extend((0..496).map(|i| json!({"payload": i})));
    let reply = app
        .post("/topics/b/messages:batch", &json!({"messages": batch}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(results[0]["duplicate"], true);
    assert_eq!(results[0]["seq"], 8);
    assert_eq!(errors[0], Value::Null);
    assert_eq!(results[1], Value::Null);
    assert_eq!(errors[1]["code"], "rate_limited", "{}", errors[1]);
    assert_eq!(errors[1]["status"], 429);
    assert_eq!(errors[2]["code"], "invalid_field", "{}", errors[2]);
    assert_eq!(results[3]["duplicate"], true);
    assert_eq!(results[3]["seq"], 1000);
    assert!(errors[4..].iter().all(|e| e["code"] == "rate_limited"));
    let remaining = header_u64(&reply, "ratelimit-remaining");
    assert!(
        remaining < 500,
        "{remaining} left, or the batch would have fit"
    );
    assert_eq!(app.history("b").await.len(), 1000, "nothing written");

    // Without a duplicate to show, the batch as a whole is the 429.
    let none: Vec<Value> = (0..500).map(|i| json!({"payload": i})).collect();
    let refused = app
        .post("/topics/b/messages:batch", &json!({"messages": none}))
        .await;
    refused.assert_problem(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
}

/// A batch never overshoots max_backlog by its size: the first items that
/// fit are written, the rest refused one by one; duplicates, checked first,
/// answer as duplicates even past the limit.
#[tokio::test]
async fn a_batch_fills_the_backlog_exactly_and_refuses_the_rest_item_by_item() {
    let app = TestApp::start().await;
    app.put("/topics/bb", &json!({"max_backlog": 3})).await;
    app.group("bb", "g", &json!({"lease_ms": 60000})).await;
    app.publish("bb", &json!({"payload": "a", "idempotency_key": "a"}))
        .await;
    let reply = app
        .post(
            "/topics/bb/messages:batch",
            &json!({"messages": [
                {"payload": "b", "idempotency_key": "b"},
                {"payload": "c"},
                {"payload": "a again", "idempotency_key": "a"},
                {"payload": "d"},
                {"payload": "e", "idempotency_key": "e"},
                {"payload": "b again", "idempotency_key": "b"}
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(results[0]["seq"], 2);
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[1]["seq"], 3);
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[2]["seq"], 1);
    for i in [3, 4] {
        assert_eq!(results[i], Value::Null);
        assert_eq!(errors[i]["code"], "backlog_full", "{}", errors[i]);
        assert_eq!(errors[i]["status"], 429);
    }
    assert_eq!(
        results[5]["duplicate"], true,
        "a duplicate inside the batch"
    );
    assert_eq!(results[5]["id"], results[0]["id"]);
    let payloads: Vec<Value> = app
        .history("bb")
        .await
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!("a"), json!("b"), json!("c")]);

    // Acking one makes room for exactly one.
    app.fetch_and_ack("bb", "g", 1).await;
    let reply = app
        .post(
            "/topics/bb/messages:batch",
            &json!({"messages": [{"payload": "d"}, {"payload": "e"}]}),
        )
        .await;
    assert_eq!(reply.body["results"][0]["seq"], 4, "{}", reply.body);
    assert_eq!(reply.body["errors"][1]["code"], "backlog_full");
}

/// The backlog check reads the topic's counters (`seq` − `done:<G>`), never
/// the stream: publishing beside a group 3000 messages behind runs no XINFO
/// and no XRANGE (it used to run both, reading up to max_backlog entries),
/// and still refuses exactly at the limit. Counted, not timed.
#[tokio::test]
async fn the_backlog_check_reads_counters_not_the_stream() {
    // No background pass (retention, gauges) may read the stream meanwhile.
    let app = TestApp::start_quiet().await;
    app.put("/topics/cb", &json!({"max_backlog": 100_000}))
        .await;
    app.group("cb", "slow", &json!({})).await;
    app.group("cb", "fast", &json!({})).await;
    for round in 0..3 {
        let batch: Vec<Value> = (0..1000).map(|i| json!({"payload": [round, i]})).collect();
        app.publish_batch("cb", &batch).await;
    }
    let stream_reads = ["xinfo|groups", "xinfo", "xrange", "xlen", "xpending"];
    let before = app.command_calls(&stream_reads);
    assert_created(&app, "cb", json!("one")).await;
    assert_eq!(
        app.command_calls(&stream_reads),
        before,
        "{stream_reads:?} before and after one publish"
    );

    // The limit at exactly what the slowest group owes: 3001 owed by both.
    app.put("/topics/cb", &json!({"max_backlog": 3002})).await;
    assert_created(&app, "cb", json!("last")).await;
    assert_full(&app, "cb", json!("over")).await;
    // The fast group catching up is not enough; the slow one owes 3002.
    app.fetch_and_ack("cb", "fast", 1000).await;
    assert_full(&app, "cb", json!("over")).await;
    // Deleting the slow group leaves the fast one, 2002 behind: room again.
    assert_eq!(
        app.delete("/topics/cb/groups/slow").await.status,
        StatusCode::NO_CONTENT
    );
    assert_created(&app, "cb", json!("after")).await;
}

/// With max_backlog set, a publish finds the slowest group without reading
/// every group's counter: beside 2,000 groups it runs no `SMEMBERS` and no
/// `HMGET` (it used to run both over all of them: 27 ms of Redis per publish
/// at 10,000 groups). The slowest group still decides, and an index left
/// stale by an older version (missing, or a score that is not the group's
/// counter) is rebuilt from the counters, never trusted. Counted, not timed.
#[tokio::test]
async fn the_backlog_check_does_not_read_every_group() {
    const GROUPS: usize = 2_000;
    let app = TestApp::start_quiet().await;
    app.put("/topics/many", &json!({"max_backlog": 3})).await;
    for i in 0..GROUPS {
        app.group("many", &format!("g{i}"), &json!({})).await;
    }
    for i in 0..3 {
        assert_created(&app, "many", json!(i)).await;
    }
    let scans = ["smembers", "hmget"];
    let before = app.command_calls(&scans);
    assert_full(&app, "many", json!("over")).await;
    assert_eq!(
        app.command_calls(&scans),
        before,
        "{scans:?} around one publish"
    );

    // Every group but one catches up: the one left behind still refuses.
    for i in 1..GROUPS {
        app.fetch_and_ack("many", &format!("g{i}"), 10).await;
    }
    assert_full(&app, "many", json!("over")).await;
    app.fetch_and_ack("many", "g0", 1).await;
    assert_created(&app, "many", json!("room")).await;

    // An index from an older version: gone, then with a stale low score.
    // Either way the counters decide (g0 owes 3: full again).
    let index = format!("sc:{{{}:many}}:progress", app.tenant);
    let mut redis = app.redis.connection();
    redis::cmd("DEL").arg(&index).exec(&mut redis).unwrap();
    assert_full(&app, "many", json!("over")).await;
    app.fetch_and_ack("many", "g0", 1).await;
    zadd(&mut redis, &index, 0, "g7");
    assert_created(&app, "many", json!("room")).await;

    // A group deleted by an older version and another created by one: as
    // many members as groups, the slowest a group that is gone (no counter,
    // score 0). Not a group: rebuilt, so the topic does not refuse for good.
    app.fetch_and_ack("many", "g0", 10).await;
    for i in 1..GROUPS {
        app.fetch_and_ack("many", &format!("g{i}"), 10).await;
    }
    zrem(&mut redis, &index, "g7");
    zadd(&mut redis, &index, 0, "gone");
    assert_created(&app, "many", json!("room")).await;
}

/// The gauge pass reads each group's counts without `XINFO GROUPS`, which
/// lists every group of the stream: one such read per group made a pass
/// O(groups²) (at 10,000 groups, 17 ms of Redis per group, every interval,
/// on every sidecar). GET group still shows the last-delivered id. Counted,
/// not timed.
#[tokio::test]
async fn the_gauge_pass_does_not_list_every_group_for_each_group() {
    const GROUPS: usize = 200;
    let app = TestApp::start_with(|c| {
        c.retention_interval = Duration::ZERO;
        c.metrics_interval = Duration::from_millis(50);
    })
    .await;
    for i in 0..GROUPS {
        app.group("gauged", &format!("g{i}"), &json!({})).await;
    }
    app.post("/topics/gauged/messages", &json!({"payload": 1}))
        .await;
    let got = app.fetch("gauged", "g0", "w", 1, 0).await;
    let counted = ["xinfo|groups", "evalsha"];
    let before = app.command_calls(&counted);
    // Two whole passes: at least two script calls per group.
    let mut after = before.clone();
    for _ in 0..400 {
        after = app.command_calls(&counted);
        if after[1] >= before[1] + 2 * GROUPS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        after[1] >= before[1] + 2 * GROUPS as u64,
        "passes ran: {before:?} → {after:?}"
    );
    assert_eq!(after[0], before[0], "XINFO GROUPS calls during the passes");

    let info = app.get("/topics/gauged/groups/g0").await;
    assert_eq!(
        info.body["last_delivered_id"], got[0]["stream_id"],
        "{}",
        info.body
    );
}
