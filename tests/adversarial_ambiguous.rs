//! Ambiguous outcomes: Redis ran a write but the sidecar never got the
//! reply (the connection closed after the command reached Redis, or the
//! reply came after the sidecar's 5-s response timeout). The sidecar must
//! answer 503 `redis_unavailable` with `Retry-After`, and the client's
//! retry (what the README tells it to do) must converge to what the README
//! promises for that verb: no other 5xx, no effect lost or doubled beyond
//! what is documented. Black-box through HTTP, against a real redis-server
//! behind a [`RedisProxy`] that swallows or delays the one reply.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::proxy::{Act, RedisProxy, carries};
use support::{RedisCluster, RedisServer, Reply, StreamcarProcess, TestApp};

/// The SHA1 of script `lua/<name>.lua` as the sidecar sends it (EVALSHA).
fn sha(
    pick: impl FnOnce(&streamcar::scripts::Scripts) -> &streamcar::scripts::NamedScript,
) -> String {
    let scripts = streamcar::scripts::Scripts::new();
    pick(&scripts).get_hash().to_owned()
}

/// From now on, the first call of the script `sha` whose bytes carry
/// `needle` runs in Redis but its reply is lost with the connection.
fn lose_reply_of(proxy: &RedisProxy, sha: String, needle: &str) {
    arm(proxy, sha, needle, Act::SwallowReply);
}

/// Arms `act` for the first call of script `sha` that carries `needle`.
fn arm(proxy: &RedisProxy, sha: String, needle: &str, act: Act) {
    let needle = needle.to_owned();
    let mut armed = true;
    proxy.set_rule(move |chunk| {
        if armed && carries(chunk, &sha) && carries(chunk, &needle) {
            armed = false;
            return act;
        }
        Act::Forward
    });
}

/// The sidecar's answer to a call whose reply was lost: 503
/// `redis_unavailable` with `Retry-After`, nothing else.
fn assert_ambiguous(reply: &Reply, proxy: &RedisProxy, what: &str) {
    assert_eq!(proxy.acted(), 1, "{what}: the proxy never lost the reply");
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: a lost reply answered {} {}",
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.body["code"], "redis_unavailable",
        "{what}: {}",
        reply.body
    );
    assert!(
        reply.headers.contains_key("retry-after"),
        "{what}: a 503 without Retry-After"
    );
}

/// Sends `body` to `path` until the answer is not a 503 (the connection
/// comes back within a moment), at most 50 times; the first other answer.
async fn retry(app: &TestApp, path: &str, body: &Value) -> Reply {
    for _ in 0..50 {
        let reply = app.post(path, body).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            return reply;
        }
        assert!(reply.headers.contains_key("retry-after"), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} still answers 503 after 50 retries");
}

/// The seqs of a topic's history, in stream order.
async fn seqs(app: &TestApp, topic: &str) -> Vec<u64> {
    app.history(topic)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// The `<attempt>:<delivery>` half of a receipt: what the scripts that
/// take receipts carry on the wire.
fn wire(receipt: &str) -> String {
    let mut parts = receipt.rsplitn(3, ':').collect::<Vec<_>>();
    parts.reverse();
    format!("{}:{}", parts[1], parts[2])
}

/// A group `g` on `topic` with one message published and fetched by `w1`;
/// its delivery.
async fn one_delivery(app: &TestApp, topic: &str, config: Value) -> Value {
    app.group(topic, "g", &config).await;
    app.publish(topic, &json!({"payload": {"n": 1}, "id": "m1"}))
        .await;
    let got = app.fetch(topic, "g", "w1", 1, 0).await;
    assert_eq!(got.len(), 1);
    got[0].clone()
}

/// Publish with an idempotency key whose reply was lost: the retry answers
/// `200 duplicate:true` with the first publish's id and seq, the topic holds
/// the message once, and the next publish takes the next seq (no gap, no
/// double).
#[tokio::test]
async fn a_keyed_publish_whose_reply_was_lost_is_retried_to_one_message() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.publish("p", &json!({"payload": 0})).await;
    lose_reply_of(&proxy, sha(|s| &s.publish), "key-1");
    let body = json!({"payload": {"n": 1}, "idempotency_key": "key-1"});
    let lost = app.post("/topics/p/messages", &body).await;
    assert_ambiguous(&lost, &proxy, "publish");
    let again = retry(&app, "/topics/p/messages", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["seq"], 2);
    app.publish("p", &json!({"payload": 2})).await;
    assert_eq!(seqs(&app, "p").await, [1, 2, 3]);
}

/// A batch with idempotency keys whose reply was lost: the retry answers
/// every item as a duplicate with its first seq, and the topic holds each
/// item once.
#[tokio::test]
async fn a_keyed_batch_whose_reply_was_lost_is_retried_to_one_copy_each() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.publish("b", &json!({"payload": 0})).await;
    lose_reply_of(&proxy, sha(|s| &s.publish), "bk-0");
    let messages: Vec<Value> = (0..5)
        .map(|i| json!({"payload": i, "idempotency_key": format!("bk-{i}")}))
        .collect();
    let body = json!({ "messages": messages });
    let lost = app.post("/topics/b/messages:batch", &body).await;
    assert_ambiguous(&lost, &proxy, "batch");
    let again = retry(&app, "/topics/b/messages:batch", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let results = again.body["results"].as_array().expect("results");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["duplicate"], true, "{}", again.body);
        assert_eq!(r["seq"], i as u64 + 2, "{}", again.body);
    }
    assert_eq!(seqs(&app, "b").await, [1, 2, 3, 4, 5, 6]);
}

/// Group commit: concurrent keyed publishes of one topic that went out in
/// one combined script call whose reply was lost. Every caller gets a 503
/// (never a 500), and each one's retry answers its own first publish: the
/// topic holds every key once, seqs 1…n without a gap.
#[tokio::test]
async fn a_group_commit_whose_reply_was_lost_gives_every_caller_a_safe_retry() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.publish("gc", &json!({"payload": 0, "idempotency_key": "k-0"}))
        .await;
    // The first call's reply comes late, so the others queue behind it and
    // go out together; that combined call's reply is lost.
    let publish = sha(|s| &s.publish);
    let mut calls = 0;
    proxy.set_rule(move |chunk| {
        if carries(chunk, &publish) {
            calls += 1;
            match calls {
                1 => return Act::DelayReply(Duration::from_millis(500)),
                2 => return Act::SwallowReply,
                _ => {}
            }
        }
        Act::Forward
    });
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 1..=20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"payload": i, "idempotency_key": format!("k-{i}")});
            let first = app.post("/topics/gc/messages", &body).await;
            assert!(
                first.status == StatusCode::CREATED
                    || (first.status == StatusCode::SERVICE_UNAVAILABLE
                        && first.headers.contains_key("retry-after")),
                "publish {i}: {} {}",
                first.status,
                first.body
            );
            if i > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let again = retry(&app, "/topics/gc/messages", &body).await;
            assert!(again.status.is_success(), "{}", again.body);
            (first.status, again.body["seq"].as_u64().expect("seq"))
        }));
    }
    let mut lost = 0;
    let mut seen = Vec::new();
    for t in tasks {
        let (status, seq) = t.await.expect("publisher");
        lost += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
        seen.push(seq);
    }
    assert!(
        lost > 1,
        "the lost call carried {lost} publishes: not combined"
    );
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 20, "two keys share a seq: {seen:?}");
    assert_eq!(seqs(&app, "gc").await, (1..=21).collect::<Vec<u64>>());
}

/// Ack whose reply was lost: the message is acked exactly once (never
/// delivered again, nothing pending), and the retry is answered without a
/// 5xx.
#[tokio::test]
async fn an_ack_whose_reply_was_lost_stays_acked() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "a", json!({"lease_ms": 500})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.ack), &wire(receipt));
    let body = json!({"receipts": [receipt]});
    let lost = app.post("/topics/a/groups/g/ack", &body).await;
    assert_ambiguous(&lost, &proxy, "ack");
    let again = retry(&app, "/topics/a/groups/g/ack", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(app.fetch("a", "g", "w2", 10, 0).await.is_empty());
    let info = app.get("/topics/a/groups/g").await.body;
    assert_eq!(info["pending"], 0, "{info}");
    assert_eq!(info["lag"], 0, "{info}");
}

/// Nack with a delay whose reply was lost: the message is scheduled once
/// (delivered again after the delay with attempt 2, not 3), and the retry
/// answers without a 5xx.
#[tokio::test]
async fn a_nack_whose_reply_was_lost_schedules_one_retry() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "n", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.nack), &wire(receipt));
    let body = json!({"receipts": [receipt], "delay_ms": 300, "error": "boom"});
    let lost = app.post("/topics/n/groups/g/nack", &body).await;
    assert_ambiguous(&lost, &proxy, "nack");
    let again = retry(&app, "/topics/n/groups/g/nack", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    let got = app.fetch("n", "g", "w1", 10, 5000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["attempt"], 2, "{}", got[0]);
}

/// Extend whose reply was lost: the retry renews the lease again (200),
/// the receipt stays current and acks.
#[tokio::test]
async fn an_extend_whose_reply_was_lost_is_retried_as_a_renewal() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "e", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.extend), &wire(receipt));
    let body = json!({"receipts": [receipt]});
    let lost = app.post("/topics/e/groups/g/extend", &body).await;
    assert_ambiguous(&lost, &proxy, "extend");
    let again = retry(&app, "/topics/e/groups/g/extend", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(app.ack("e", "g", &[receipt]).await.status, StatusCode::OK);
}

/// Reject whose reply was lost: the message is dead-lettered once, and the
/// retry answers without a 5xx.
#[tokio::test]
async fn a_reject_whose_reply_was_lost_dead_letters_once() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "r", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.reject), &wire(receipt));
    let body = json!({"receipts": [receipt], "error": "bad"});
    let lost = app.post("/topics/r/groups/g/reject", &body).await;
    assert_ambiguous(&lost, &proxy, "reject");
    let again = retry(&app, "/topics/r/groups/g/reject", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    let dlq = app.get("/topics/r/groups/g/dlq").await.body;
    assert_eq!(dlq["messages"].as_array().map(Vec::len), Some(1), "{dlq}");
}

/// Fetch whose reply was lost: the lease it granted holds the message
/// until the lease ends (at-least-once: it comes back), and the next
/// delivery counts it as a failed attempt (attempt 2).
#[tokio::test]
async fn a_fetch_whose_reply_was_lost_delivers_the_message_after_the_lease() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.group("f", "g", &json!({"lease_ms": 500})).await;
    app.publish("f", &json!({"payload": 1})).await;
    lose_reply_of(&proxy, sha(|s| &s.fetch), "w1");
    let body = json!({"consumer": "w1", "max": 1});
    let lost = app.post("/topics/f/groups/g/fetch", &body).await;
    assert_ambiguous(&lost, &proxy, "fetch");
    let got = app.fetch("f", "g", "w1", 1, 5000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["attempt"], 2, "{}", got[0]);
}

/// Fetch with `ack` whose reply was lost: the acked message stays acked,
/// the message the lost reply leased comes back after its lease, and the
/// retry answers without a 5xx.
#[tokio::test]
async fn a_fetch_with_ack_whose_reply_was_lost_keeps_the_ack() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "fa", json!({"lease_ms": 500})).await;
    app.publish("fa", &json!({"payload": 2, "id": "m2"})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.fetch), &wire(receipt));
    let body = json!({"consumer": "w1", "max": 1, "ack": [receipt]});
    let lost = app.post("/topics/fa/groups/g/fetch", &body).await;
    assert_ambiguous(&lost, &proxy, "fetch with ack");
    let again = retry(&app, "/topics/fa/groups/g/fetch", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    let mut ids = Vec::new();
    for m in again.body["messages"].as_array().into_iter().flatten() {
        ids.push(m["id"].as_str().expect("id").to_owned());
    }
    for _ in 0..3 {
        for m in app.fetch("fa", "g", "w2", 10, 0).await {
            let receipt = m["receipt"].as_str().expect("receipt");
            assert_eq!(app.ack("fa", "g", &[receipt]).await.status, StatusCode::OK);
            ids.push(m["id"].as_str().expect("id").to_owned());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(ids, ["m2"], "m1 acked once, m2 delivered once more");
}

/// Ack with emit whose ack's reply was lost (the emits and the ack both
/// ran): the next step is published exactly once, the source message is
/// never delivered again, and the retry answers without a 5xx.
#[tokio::test]
async fn an_ack_with_emit_whose_ack_reply_was_lost_emits_once() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "src", json!({"lease_ms": 500})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    lose_reply_of(&proxy, sha(|s| &s.ack), &wire(receipt));
    let body = json!({"receipts": [receipt], "emit": [{"topic": "next", "payload": {"step": 2}}]});
    let lost = app.post("/topics/src/groups/g/ack", &body).await;
    assert_ambiguous(&lost, &proxy, "ack with emit");
    let again = retry(&app, "/topics/src/groups/g/ack", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(app.fetch("src", "g", "w2", 10, 0).await.is_empty());
    assert_eq!(seqs(&app, "next").await, [1]);
}

/// Ack with emit whose emit's reply was lost (the emit ran, the ack did
/// not): the retry answers the emit as a duplicate and acks; the next step
/// is published exactly once.
#[tokio::test]
async fn an_ack_with_emit_whose_emit_reply_was_lost_emits_once() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "src2", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    app.publish("next2", &json!({"payload": 0})).await;
    lose_reply_of(&proxy, sha(|s| &s.publish), "emitted-step");
    let body =
        json!({"receipts": [receipt], "emit": [{"topic": "next2", "payload": "emitted-step"}]});
    let lost = app.post("/topics/src2/groups/g/ack", &body).await;
    assert_ambiguous(&lost, &proxy, "ack with emit");
    let again = retry(&app, "/topics/src2/groups/g/ack", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        again.body["emitted"][0]["duplicate"], true,
        "{}",
        again.body
    );
    assert_eq!(again.body["emitted"][0]["seq"], 2, "{}", again.body);
    assert_eq!(seqs(&app, "next2").await, [1, 2]);
}

/// The part that completes a join, whose reply was lost: the retry is the
/// same part again (`recorded: false`, state `complete`, the aggregate's
/// stream id), and the aggregate is published once.
#[tokio::test]
async fn a_join_part_whose_reply_was_lost_publishes_one_aggregate() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let join = "/topics/agg/joins/j1";
    let declared = app
        .put(join, &json!({"parts": ["a", "b"], "ttl_ms": 60000}))
        .await;
    assert!(declared.status.is_success(), "{}", declared.body);
    let a = app
        .post(&format!("{join}/parts/a"), &json!({"result": 1}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    lose_reply_of(&proxy, sha(|s| &s.join_part), "j1");
    let body = json!({"result": 2});
    let lost = app.post(&format!("{join}/parts/b"), &body).await;
    assert_ambiguous(&lost, &proxy, "join part");
    let again = retry(&app, &format!("{join}/parts/b"), &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["recorded"], false, "{}", again.body);
    assert_eq!(again.body["state"], "complete", "{}", again.body);
    assert_eq!(seqs(&app, "agg").await, [1]);
}

/// DLQ replay whose reply was lost: the message is back in the group once
/// (delivered once, attempt 1), the dead-letter stream is empty, and the
/// retry answers without a 5xx.
#[tokio::test]
async fn a_dlq_replay_whose_reply_was_lost_replays_once() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "dl", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    let rejected = app
        .post(
            "/topics/dl/groups/g/reject",
            &json!({"receipts": [receipt]}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
    lose_reply_of(&proxy, sha(|s| &s.dlq_replay), "m1");
    let body = json!({"ids": ["m1"]});
    let lost = app.post("/topics/dl/groups/g/dlq/replay", &body).await;
    assert_ambiguous(&lost, &proxy, "dlq replay");
    let again = retry(&app, "/topics/dl/groups/g/dlq/replay", &body).await;
    assert!(again.status.as_u16() < 500, "{}", again.body);
    let got = app.fetch("dl", "g", "w1", 10, 0).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["attempt"], 1);
    let dlq = app.get("/topics/dl/groups/g/dlq").await.body;
    assert_eq!(dlq["messages"].as_array().map(Vec::len), Some(0), "{dlq}");
}

/// Channel publish with an idempotency key whose reply was lost: the retry
/// answers `200 duplicate:true` with the first offset, and the next
/// publish takes the next offset (none skipped or doubled).
#[tokio::test]
async fn a_keyed_channel_publish_whose_reply_was_lost_keeps_offsets_dense() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let path = "/channels/c1/messages";
    let first = app.post(path, &json!({"payload": 0})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    lose_reply_of(&proxy, sha(|s| &s.channel_publish), "ck-1");
    let body = json!({"payload": 1, "idempotency_key": "ck-1"});
    let lost = app.post(path, &body).await;
    assert_ambiguous(&lost, &proxy, "channel publish");
    let again = retry(&app, path, &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true, "{}", again.body);
    assert_eq!(again.body["offset"], 2, "{}", again.body);
    let next = app.post(path, &json!({"payload": 2})).await;
    assert_eq!(next.body["offset"], 3, "{}", next.body);
    let history = app.get("/channels/c1/messages").await.body;
    let offsets: Vec<u64> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, [1, 2, 3], "{history}");
}

/// A publish whose reply comes after the sidecar's 5-s response timeout:
/// 503 with `Retry-After`; the late reply is never taken for another
/// request's (the next publish gets its own seq), and the retry with the
/// key answers the first publish as a duplicate.
#[tokio::test]
async fn a_publish_whose_reply_came_after_the_timeout_is_retried_safely() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.publish("late", &json!({"payload": 0})).await;
    arm(
        &proxy,
        sha(|s| &s.publish),
        "slow-1",
        Act::DelayReply(Duration::from_secs(7)),
    );
    let body = json!({"payload": 1, "idempotency_key": "slow-1"});
    let lost = app.post("/topics/late/messages", &body).await;
    assert_ambiguous(&lost, &proxy, "late publish");
    let other = app
        .post(
            "/topics/late/messages",
            &json!({"payload": 2, "idempotency_key": "other"}),
        )
        .await;
    assert!(
        other.status == StatusCode::CREATED
            || (other.status == StatusCode::SERVICE_UNAVAILABLE
                && other.headers.contains_key("retry-after")),
        "a publish behind a late reply: {} {}",
        other.status,
        other.body
    );
    let again = retry(&app, "/topics/late/messages", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["seq"], 2, "{}", again.body);
    let other = retry(
        &app,
        "/topics/late/messages",
        &json!({"payload": 2, "idempotency_key": "other"}),
    )
    .await;
    assert_eq!(other.body["seq"], 3, "{}", other.body);
    assert_eq!(seqs(&app, "late").await, [1, 2, 3]);
}

/// The first publish to a new topic is written, then the listing of the
/// new topic fails (the connection drops right after the publish's
/// reply). The write is known, so the publish must not answer 503: a
/// client retrying a publish without an idempotency key, as the README
/// tells it to after a 503, would publish it twice. The topic's listing is
/// the sidecar's own business (a task of its own makes it agree).
#[tokio::test]
async fn a_publish_that_created_its_topic_is_not_failed_by_the_listing_after_it() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let publish = sha(|s| &s.publish);
    let mut published = false;
    let mut armed = true;
    proxy.set_rule(move |chunk| {
        if carries(chunk, &publish) && carries(chunk, "fresh") {
            published = true;
        } else if armed && published && carries(chunk, "SADD") {
            armed = false;
            return Act::Close;
        }
        Act::Forward
    });
    let body = json!({"payload": {"n": 1}});
    let first = app.post("/topics/fresh/messages", &body).await;
    assert_eq!(
        proxy.acted(),
        1,
        "the listing after the publish never failed"
    );
    if first.status == StatusCode::SERVICE_UNAVAILABLE {
        retry(&app, "/topics/fresh/messages", &body).await;
    }
    assert_eq!(
        seqs(&app, "fresh").await,
        [1],
        "a written publish answered {} {}",
        first.status,
        first.body
    );
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The listing catches up by itself.
    for _ in 0..100 {
        if app.listed_topics().await.contains("fresh") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new topic was never listed");
}

/// Replies cut off halfway (the connection closed in the middle of the
/// reply, after the command ran), for a publish, a fetch, an ack and a
/// channel publish: each answers 503 with `Retry-After`, never a 500 for a
/// reply that could not be read.
#[tokio::test]
async fn replies_cut_off_halfway_answer_503() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let d = one_delivery(&app, "cut", json!({"lease_ms": 30000})).await;
    app.publish("cut", &json!({"payload": 2, "id": "m2"})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    let calls = [
        (
            sha(|s| &s.publish),
            "cut-key",
            "/topics/cut/messages",
            json!({"payload": "x", "idempotency_key": "cut-key"}),
        ),
        (
            sha(|s| &s.fetch),
            "w9",
            "/topics/cut/groups/g/fetch",
            json!({"consumer": "w9", "max": 10}),
        ),
        (
            sha(|s| &s.ack),
            &wire(receipt),
            "/topics/cut/groups/g/ack",
            json!({"receipts": [receipt]}),
        ),
        (
            sha(|s| &s.channel_publish),
            "cut-ch",
            "/channels/cut-ch/messages",
            json!({"payload": "x"}),
        ),
    ];
    for (n, (script, needle, path, body)) in calls.into_iter().enumerate() {
        arm(&proxy, script, needle, Act::CutReply);
        let reply = app.post(path, &body).await;
        assert_eq!(proxy.acted(), n + 1, "{path}: the reply was never cut");
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: a cut reply answered {} {}",
            reply.status,
            reply.body
        );
        assert!(reply.headers.contains_key("retry-after"), "{path}");
    }
}

/// The other write verbs, each with its reply lost once (a script call, or
/// the plain command that does the write): each answers 503 with
/// `Retry-After`, and its retry answers without a 5xx (a 409 or 404 that
/// reports the first call's effect, e.g. `reservation_lost` for a release
/// that ran, is no 5xx).
#[tokio::test]
async fn every_other_write_verb_whose_reply_was_lost_answers_503_then_no_5xx() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    let pool = app
        .put("/pools/gpu", &json!({"capacity": 4, "lease_ms": 60000}))
        .await;
    assert!(pool.status.is_success(), "{}", pool.body);
    let held = app
        .post("/pools/gpu/acquire", &json!({"holder": "h"}))
        .await;
    let reservation = held.body["reservation_id"].as_str().expect("id").to_owned();
    let claimed = app
        .post(
            "/idempotency/k2/claim",
            &json!({"ttl_ms": 60000, "owner": "w"}),
        )
        .await;
    let token = claimed.body["token"].as_str().expect("token").to_owned();
    let d = one_delivery(&app, "dq", json!({"lease_ms": 30000})).await;
    let receipt = d["receipt"].as_str().expect("receipt");
    let rejected = app
        .post(
            "/topics/dq/groups/g/reject",
            &json!({"receipts": [receipt]}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
    let join = json!({"parts": ["a"], "ttl_ms": 60000});
    let cases: Vec<(String, &str, reqwest::Method, &str, Option<Value>)> = vec![
        (
            sha(|s| &s.pool_declare),
            "gpu2",
            reqwest::Method::PUT,
            "/pools/gpu2",
            Some(json!({"capacity": 1, "lease_ms": 1000})),
        ),
        (
            sha(|s| &s.pool_acquire),
            "gpu",
            reqwest::Method::POST,
            "/pools/gpu/acquire",
            Some(json!({"holder": "w1"})),
        ),
        (
            sha(|s| &s.pool_hold),
            "renew",
            reqwest::Method::POST,
            "/pools/gpu/renew",
            Some(json!({"reservation_id": reservation})),
        ),
        (
            sha(|s| &s.pool_hold),
            "release",
            reqwest::Method::POST,
            "/pools/gpu/release",
            Some(json!({"reservation_id": reservation})),
        ),
        (
            "UNLINK".to_owned(),
            "gpu2",
            reqwest::Method::DELETE,
            "/pools/gpu2",
            None,
        ),
        (
            sha(|s| &s.idem_claim),
            "k1",
            reqwest::Method::POST,
            "/idempotency/k1/claim",
            Some(json!({"ttl_ms": 60000, "owner": "w1"})),
        ),
        (
            sha(|s| &s.idem_finish),
            "complete",
            reqwest::Method::POST,
            "/idempotency/k2/complete",
            Some(json!({"token": token, "result": 1, "ttl_ms": 60000})),
        ),
        (
            sha(|s| &s.checkpoint_advance),
            "cp",
            reqwest::Method::POST,
            "/checkpoints/cp/advance",
            Some(json!({"seq": 7})),
        ),
        (
            "DEL".to_owned(),
            "checkpoint:cp",
            reqwest::Method::DELETE,
            "/checkpoints/cp",
            None,
        ),
        (
            sha(|s| &s.join_declare),
            "j9",
            reqwest::Method::PUT,
            "/topics/jt/joins/j9",
            Some(join),
        ),
        (
            sha(|s| &s.dlq_delete),
            "m1",
            reqwest::Method::DELETE,
            "/topics/dq/groups/g/dlq/m1",
            None,
        ),
        (
            sha(|s| &s.set_group_paused),
            "dq",
            reqwest::Method::POST,
            "/topics/dq/groups/g/pause",
            Some(json!({})),
        ),
        (
            sha(|s| &s.declare_topic),
            "tp",
            reqwest::Method::PUT,
            "/topics/tp",
            Some(json!({"retention_ms": 0})),
        ),
        (
            sha(|s| &s.delete_topic),
            "tp",
            reqwest::Method::DELETE,
            "/topics/tp",
            None,
        ),
        (
            sha(|s| &s.declare_group),
            "dq",
            reqwest::Method::PUT,
            "/topics/dq/groups/g2",
            Some(json!({})),
        ),
        (
            sha(|s| &s.delete_group),
            "dq",
            reqwest::Method::DELETE,
            "/topics/dq/groups/g2",
            None,
        ),
        (
            "HSET".to_owned(),
            "rate",
            reqwest::Method::PUT,
            "/limits",
            Some(json!({"publish_per_sec": 1000, "burst": 1000})),
        ),
        (
            sha(|s| &s.rate_limit),
            "rate",
            reqwest::Method::POST,
            "/topics/q/messages",
            Some(json!({"payload": 1, "idempotency_key": "q1"})),
        ),
        (
            "DEL".to_owned(),
            "rate",
            reqwest::Method::DELETE,
            "/limits",
            None,
        ),
        (
            sha(|s| &s.channel_declare),
            "chd",
            reqwest::Method::PUT,
            "/channels/chd",
            Some(json!({"history_size": 10})),
        ),
    ];
    for (n, (command, needle, method, path, body)) in cases.into_iter().enumerate() {
        arm(&proxy, command, needle, Act::SwallowReply);
        let url = app.url(path);
        let lost = app.send(method.clone(), &url, body.as_ref()).await;
        assert_eq!(proxy.acted(), n + 1, "{method} {path}: no reply was lost");
        assert_eq!(
            lost.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: a lost reply answered {} {}",
            lost.status,
            lost.body
        );
        assert!(lost.headers.contains_key("retry-after"), "{path}");
        let mut again = lost;
        for _ in 0..50 {
            again = app.send(method.clone(), &url, body.as_ref()).await;
            if again.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            again.status.as_u16() < 500,
            "{method} {path}: {} {}",
            again.status,
            again.body
        );
    }
}

/// Group commit of acks: concurrent single acks of one group that went out
/// in one combined script call whose reply was lost. Every caller gets a
/// 503 with `Retry-After` (never a 500), every message stays acked (none is
/// delivered again once the leases end), and the retries answer without a
/// 5xx.
#[tokio::test]
async fn a_combined_ack_whose_reply_was_lost_keeps_every_message_acked() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.group("ca", "g", &json!({"lease_ms": 500})).await;
    let messages: Vec<Value> = (0..20).map(|i| json!({"payload": i})).collect();
    app.publish_batch("ca", &messages).await;
    let got = app.fetch("ca", "g", "w1", 20, 0).await;
    assert_eq!(got.len(), 20);
    let ack = sha(|s| &s.ack);
    let mut calls = 0;
    proxy.set_rule(move |chunk| {
        if carries(chunk, &ack) {
            calls += 1;
            match calls {
                1 => return Act::DelayReply(Duration::from_millis(500)),
                2 => return Act::SwallowReply,
                _ => {}
            }
        }
        Act::Forward
    });
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for (i, m) in got.iter().enumerate() {
        let (app, receipt) = (
            app.clone(),
            m["receipt"].as_str().expect("receipt").to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let body = json!({"receipts": [receipt]});
            let first = app.post("/topics/ca/groups/g/ack", &body).await;
            let lost = first.status == StatusCode::SERVICE_UNAVAILABLE;
            assert!(
                first.status == StatusCode::OK
                    || (lost && first.headers.contains_key("retry-after")),
                "ack {i}: {} {}",
                first.status,
                first.body
            );
            if lost {
                let again = retry(&app, "/topics/ca/groups/g/ack", &body).await;
                assert!(again.status.as_u16() < 500, "{}", again.body);
            }
            lost
        }));
    }
    let mut lost = 0;
    for t in tasks {
        lost += usize::from(t.await.expect("acker"));
    }
    assert!(lost > 1, "the lost call carried {lost} acks: not combined");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(app.fetch("ca", "g", "w2", 20, 0).await.is_empty());
    let info = app.get("/topics/ca/groups/g").await.body;
    assert_eq!(info["pending"], 0, "{info}");
}

/// A keyed publish whose reply was lost and that filled its topic's
/// backlog, or spent the tenant's quota: its retry answers `200
/// duplicate:true`, as the README promises for a written key "even while
/// the quota or the backlog refuses", not a 429 that would send the client
/// into a backoff for a message already written.
#[tokio::test]
async fn a_lost_publish_that_filled_the_backlog_or_quota_is_retried_as_a_duplicate() {
    let (app, proxy) = TestApp::start_behind_proxy(|_| {}).await;
    app.put("/topics/full", &json!({"max_backlog": 2})).await;
    app.group("full", "g", &json!({})).await;
    app.publish("full", &json!({"payload": 0})).await;
    lose_reply_of(&proxy, sha(|s| &s.publish), "fill-1");
    let body = json!({"payload": 1, "idempotency_key": "fill-1"});
    let lost = app.post("/topics/full/messages", &body).await;
    assert_ambiguous(&lost, &proxy, "publish filling the backlog");
    let again = retry(&app, "/topics/full/messages", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true, "{}", again.body);

    let quota = app
        .put("/limits", &json!({"publish_per_sec": 1, "burst": 1}))
        .await;
    assert!(quota.status.is_success(), "{}", quota.body);
    let before = proxy.acted();
    arm(&proxy, sha(|s| &s.publish), "spent-1", Act::SwallowReply);
    let body = json!({"payload": 2, "idempotency_key": "spent-1"});
    let lost = app.post("/topics/quota/messages", &body).await;
    assert_eq!(proxy.acted(), before + 1);
    assert_eq!(
        lost.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        lost.body
    );
    let again = retry(&app, "/topics/quota/messages", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate"], true, "{}", again.body);
}

/// On Redis Cluster, a write whose connection is lost after it reached its
/// node: redis-rs's cluster connection sent a request again when its
/// connection dropped (it reconnects and retries, as for a node that died),
/// and the first copy had already run. A publish without an idempotency key
/// was written twice and answered 201, with nothing to tell the client. The
/// README: a write "must not run twice"; the sidecar must answer 503 (the
/// client decides) and the topic hold what the client was told. Fixed by
/// turning redis-rs's retries off and sending again only what ran nowhere
/// (`src/cluster_link.rs`).
#[tokio::test]
async fn on_a_cluster_a_write_whose_connection_was_lost_is_not_sent_again() {
    let cluster = RedisCluster::start(3);
    // The first node is reached through a proxy the cluster announces.
    let (proxy, proxied) = cluster.proxy_first_node().await;
    let seeds: Vec<String> = std::iter::once(proxy.url())
        .chain(cluster.nodes[1..].iter().map(RedisServer::url))
        .collect();
    let sidecar = StreamcarProcess::start(&seeds.join(","), &["--redis-cluster"]).await;
    let tenant = "amb";
    let topic = (0..)
        .map(|i| format!("p{i}"))
        .find(|t| proxied.serves(cluster.key_slot(&format!("{{{tenant}:{t}}}"))))
        .expect("a topic on the proxied node");
    let url = format!(
        "{}/v1/tenants/{tenant}/topics/{topic}/messages",
        sidecar.base
    );
    let client = reqwest::Client::new();
    let publish = |payload: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(url)
                .json(&json!({ "payload": payload }))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("publish reaches the sidecar");
            TestApp::reply(resp).await
        }
    };
    let warm = publish(json!(0)).await;
    assert_eq!(warm.status, StatusCode::CREATED, "{}", warm.body);

    lose_reply_of(&proxy, sha(|s| &s.publish), "lost-once");
    let lost = publish(json!("lost-once")).await;
    assert_eq!(proxy.acted(), 1, "the reply was never lost");
    let history: Value = client
        .get(format!("{url}?limit=100"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("history body");
    let copies = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["payload"] == "lost-once")
        .count();
    assert_eq!(
        (lost.status, copies),
        (StatusCode::SERVICE_UNAVAILABLE, 1),
        "a publish whose reply was lost answered {} {} and was written {copies} times",
        lost.status,
        lost.body
    );
    assert!(lost.headers.contains_key("retry-after"));
}
