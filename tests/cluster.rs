//! `streamcar serve --redis-cluster` against a three-node Redis Cluster:
//! topics land on different nodes (each topic's keys share one hash tag, so
//! every script stays in one slot), and publishing, idempotency, delivery
//! with long-poll wake-ups, retries, dead letters, history, listing,
//! coordination and deleting all work as on one Redis.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{RedisCluster, StreamcarProcess};

/// A JSON client for one tenant of the sidecar.
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("sidecar answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// The receipts of fetched messages.
fn receipts(messages: &Value) -> Vec<Value> {
    let messages = messages["messages"].as_array().expect("messages");
    messages.iter().map(|m| m["receipt"].clone()).collect()
}

#[tokio::test]
async fn the_api_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let sc = StreamcarProcess::start(
        &cluster.urls(),
        &[
            "--redis-cluster",
            "--metrics-interval",
            "200ms",
            "--retention-interval",
            "200ms",
            // Far beyond the long-poll below: only a pub/sub wake-up can
            // deliver it in time.
            "--wake-recheck",
            "120s",
        ],
    )
    .await;
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        base: format!("{}/v1/tenants/acme", sc.base),
    };
    // Ready once it has reached the cluster (up to 10 s on a loaded machine).
    let mut ready = 0;
    for _ in 0..100 {
        let answer = api.client.get(format!("{}/readyz", sc.base)).send().await;
        ready = answer.expect("readyz").status().as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200, "ready on a cluster");

    let topics: Vec<String> = (0..8).map(|i| format!("topic-{i}")).collect();
    for topic in &topics {
        let (status, _) = api
            .put(
                &format!("/topics/{topic}/groups/g"),
                json!({"lease_ms": 30000}),
            )
            .await;
        assert_eq!(status, 201, "{topic}: declare group");
        // Single, duplicate and batch publishes.
        let (status, first) = api
            .post(
                &format!("/topics/{topic}/messages"),
                json!({"payload": 0, "idempotency_key": "k0"}),
            )
            .await;
        assert_eq!(status, 201, "{topic}: {first}");
        let (status, again) = api
            .post(
                &format!("/topics/{topic}/messages"),
                json!({"payload": 0, "idempotency_key": "k0"}),
            )
            .await;
        assert_eq!((status, &again["seq"]), (200, &first["seq"]), "{topic}");
        let (status, batch) = api
            .post(
                &format!("/topics/{topic}/messages:batch"),
                json!({"messages": [{"payload": 1}, {"payload": 2}]}),
            )
            .await;
        assert_eq!(status, 200, "{topic}: {batch}");
        assert_eq!(batch["results"][1]["seq"], 3, "{topic}: seq has no gaps");

        // Fetch all three, ack one, nack one (retry now), reject one.
        let (status, got) = api
            .post(
                &format!("/topics/{topic}/groups/g/fetch"),
                json!({"consumer": "c1", "max": 10}),
            )
            .await;
        assert_eq!(status, 200, "{topic}: {got}");
        let r = receipts(&got);
        assert_eq!(r.len(), 3, "{topic}: {got}");
        let group = format!("/topics/{topic}/groups/g");
        let (status, acked) = api
            .post(&format!("{group}/ack"), json!({"receipts": [r[0]]}))
            .await;
        assert_eq!(status, 200, "{topic}: {acked}");
        let (status, _) = api
            .post(
                &format!("{group}/nack"),
                json!({"receipts": [r[1]], "delay_ms": 0}),
            )
            .await;
        assert_eq!(status, 200, "{topic}: nack");
        let (status, _) = api
            .post(
                &format!("{group}/reject"),
                json!({"receipts": [r[2]], "error": "poison"}),
            )
            .await;
        assert_eq!(status, 200, "{topic}: reject");
        let (_, retried) = api
            .post(
                &format!("{group}/fetch"),
                json!({"consumer": "c2", "max": 10, "wait_ms": 2000}),
            )
            .await;
        let retried = retried["messages"].as_array().expect("messages").clone();
        assert_eq!(retried.len(), 1, "{topic}: the nacked one comes back");
        assert_eq!(retried[0]["attempt"], 2);
        let (status, _) = api
            .post(
                &format!("{group}/ack"),
                json!({"receipts": [retried[0]["receipt"]]}),
            )
            .await;
        assert_eq!(status, 200, "{topic}: ack the retry");
        let (_, dlq) = api.get(&format!("{group}/dlq")).await;
        assert_eq!(dlq["messages"].as_array().map(Vec::len), Some(1), "{dlq}");
    }

    // Keys of different topics live on different nodes.
    let nodes_with_keys = cluster
        .nodes
        .iter()
        .filter(|node| {
            let size: u64 = redis::cmd("DBSIZE")
                .query(&mut node.connection())
                .expect("DBSIZE");
            size > 0
        })
        .count();
    assert!(nodes_with_keys >= 2, "topics spread over the nodes");

    // A long-poll is woken by a publish through pub/sub, whatever node the
    // topic's slot is on.
    let waiting = api.post(
        "/topics/topic-5/groups/g/fetch",
        json!({"consumer": "waiter", "max": 1, "wait_ms": 10000}),
    );
    let publish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.post("/topics/topic-5/messages", json!({"payload": "late"}))
            .await
    };
    let ((status, woken), (published, _)) = tokio::join!(waiting, publish);
    assert_eq!((status, published), (200, 201));
    assert_eq!(woken["messages"][0]["payload"], "late", "{woken}");

    // Listing, history, group state, coordination, deleting.
    let (_, listed) = api.get("/topics").await;
    assert_eq!(
        listed["topics"].as_array().map(Vec::len),
        Some(8),
        "{listed}"
    );
    let (_, history) = api.get("/topics/topic-3/messages?limit=10").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(3));
    let (_, group) = api.get("/topics/topic-3/groups/g").await;
    assert_eq!((&group["lag"], &group["pending"]), (&json!(0), &json!(0)));
    let (status, claim) = api
        .post(
            "/idempotency/job-1/claim",
            json!({"ttl_ms": 60000, "owner": "w1"}),
        )
        .await;
    assert_eq!(status, 201, "{claim}");
    let (status, _) = api
        .put("/pools/gpu", json!({"capacity": 1, "lease_ms": 60000}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = api
        .post("/pools/gpu/acquire", json!({"holder": "w1"}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = api
        .post("/pools/gpu/acquire", json!({"holder": "w2"}))
        .await;
    assert_eq!(status, 429, "the pool is full");
    let (status, advanced) = api.post("/checkpoints/c/advance", json!({"seq": 5})).await;
    assert_eq!((status, &advanced["accepted"]), (200, &json!(true)));
    let (status, _) = api
        .put("/limits", json!({"publish_per_sec": 1000, "burst": 10}))
        .await;
    assert_eq!(status, 200);

    // Background passes: group gauges, and retention trimming what every
    // group has acked (topic-3: all of it).
    let (status, _) = api.put("/topics/topic-3", json!({"retention_ms": 1})).await;
    assert_eq!(status, 200);
    let mut trimmed = false;
    let mut gauges = false;
    for _ in 0..100 {
        let (_, history) = api.get("/topics/topic-3/messages?limit=10").await;
        trimmed = history["messages"].as_array().is_some_and(Vec::is_empty);
        let metrics = support::get_text(&api.client, format!("{}/metrics", sc.base)).await;
        gauges = metrics.contains("streamcar_group_lag{") && metrics.contains("topic=\"topic-7\"");
        if trimmed && gauges {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(trimmed, "retention trimmed the acked entries");
    assert!(gauges, "group gauges refreshed");

    let deleted = api
        .call(reqwest::Method::DELETE, "/topics/topic-0", None)
        .await;
    assert_eq!(deleted.0, 204, "{:?}", deleted.1);
    let (status, _) = api.get("/topics/topic-0").await;
    assert_eq!(status, 404);

    // Realtime channels: each channel's history, meta and publish are one
    // slot; the sidecar's one pub/sub connection hears every node's PUBLISH.
    use futures_util::StreamExt;
    for room in 0..6 {
        let events = api
            .client
            .get(format!("{}/channels/room-{room}/events", api.base))
            .send()
            .await
            .expect("events");
        assert_eq!(events.status(), 200);
        let mut body = events.bytes_stream();
        let (status, published) = api
            .post(
                &format!("/channels/room-{room}/messages"),
                json!({ "payload": { "room": room } }),
            )
            .await;
        assert_eq!(status, 201, "{published}");
        let epoch = published["epoch"].as_str().expect("epoch").to_owned();
        let mut seen = String::new();
        while !seen.contains("\"offset\":1") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .expect("a live event")
                .expect("stream open")
                .expect("chunk");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(seen.contains(&format!("id: {epoch}:1")), "{seen}");
        // Sharded pub/sub: one subscription, on the shard of the channel.
        let live = format!("sc:ch:{{acme:room-{room}}}:live");
        let subscribers: u64 = cluster
            .nodes
            .iter()
            .map(|node| {
                let (_, n): (String, u64) = redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(&live)
                    .query(&mut node.connection())
                    .expect("PUBSUB SHARDNUMSUB");
                n
            })
            .sum();
        assert_eq!(subscribers, 1, "one sharded subscription for {live}");
        let (status, history) = api
            .get(&format!("/channels/room-{room}/messages?since={epoch}:0"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(history["recovered"], true, "{history}");
        assert_eq!(history["messages"][0]["payload"]["room"], room);
    }
}

/// A primary with no replica dies: its slots have no primary, for good, so
/// `/readyz` must answer 503 (and keep answering it) while the other
/// nodes still serve.
#[tokio::test]
async fn readyz_is_503_while_a_slot_has_no_primary() {
    let mut cluster = RedisCluster::start(3);
    let sc = StreamcarProcess::start(&cluster.urls(), &["--redis-cluster"]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let ready = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(client.clone(), sc.base.clone()).await, 200);
    cluster.nodes[1].kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = ready(client.clone(), sc.base.clone()).await;
        if status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still not ready a moment later: nothing can take the slots over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(client, sc.base.clone()).await, 503);
}

/// A slot in the middle of a migration (resharding): once its keys have
/// moved, its old node answers `ASK` for them, and a request must go to the
/// new node after `ASKING`. The sidecar's command connection turns
/// redis-rs's own retries off (they would resend a write that may have
/// run), so `src/cluster_link.rs` follows `ASK` itself: the publish lands
/// on the new node and reads find it there. (A call that would create a key
/// in a slot being migrated is refused by Redis with `TRYAGAIN` until the
/// migration ends, whoever sends it: that is a 503 meanwhile.)
#[tokio::test]
async fn a_topic_whose_slot_is_being_migrated_is_served_by_its_new_node() {
    let cluster = RedisCluster::start(3);
    let sc = StreamcarProcess::start(&cluster.urls(), &["--redis-cluster"]).await;
    let api = Api {
        client: reqwest::Client::new(),
        base: format!("{}/v1/tenants/mig", sc.base),
    };
    let topology = cluster.topology();
    let primaries: Vec<_> = topology
        .iter()
        .filter(|n| n.master_port.is_none())
        .collect();
    let (from, to) = (primaries[0], primaries[1]);
    let tag = |t: &str| format!("{{mig:{t}}}");
    let topic = (0..)
        .map(|i| format!("m{i}"))
        .find(|t| from.serves(cluster.key_slot(&tag(t))))
        .expect("a topic on the first primary");
    let slot = cluster.key_slot(&tag(&topic));
    let (status, body) = api
        .put(&format!("/topics/{topic}/groups/g"), json!({}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            &format!("/topics/{topic}/messages"),
            json!({"payload": "before"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let node = |port: u16| {
        let server = cluster
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("node");
        server.connection()
    };
    let (mut old, mut new) = (node(from.port), node(to.port));
    let setslot = |conn: &mut redis::Connection, state: &str, other: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(other)
            .query(conn)
            .expect("CLUSTER SETSLOT");
    };
    setslot(&mut new, "IMPORTING", &from.id);
    setslot(&mut old, "MIGRATING", &to.id);
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(100)
        .query(&mut old)
        .expect("GETKEYSINSLOT");
    assert!(keys.len() >= 2, "the topic's keys: {keys:?}");
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to.port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&keys)
        .query(&mut old)
        .expect("MIGRATE");

    // The old node now answers ASK for every key of the topic.
    let (status, body) = api
        .post(
            &format!("/topics/{topic}/messages"),
            json!({"payload": "after"}),
        )
        .await;
    assert_eq!(status, 201, "publish during the migration: {body}");
    assert_eq!(body["seq"], 2, "{body}");
    let stream = format!("sc:{}:stream", tag(&topic));
    let (_, on_new): (String, i64) = redis::pipe()
        .cmd("ASKING")
        .cmd("XLEN")
        .arg(&stream)
        .query(&mut new)
        .expect("XLEN on the new node");
    assert_eq!(on_new, 2, "both messages are on the importing node");

    let (status, history) = api.get(&format!("/topics/{topic}/messages")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(
        support::payloads(&history),
        [&json!("before"), &json!("after")],
        "{history}"
    );
}
