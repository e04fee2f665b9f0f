//! Adversarial probes of the realtime half (channels and their sessions)
//! under faults and races that `tests/adversarial_channels.rs` and
//! `tests/adversarial_edge.rs` do not cover: the pub/sub connections to
//! Redis (live fan-out, long-poll wake-ups) going dead without a word, resumes racing publishes across
//! sidecars, an edge client that vanishes without closing. Black-box, through the public HTTP API, against a real
//! redis-server (through a misbehaving proxy where the fault needs one).

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::proxy::{Act, RedisProxy, carries};
use support::sse::{Sse, SseEvent};
use support::{RedisCluster, RedisServer, StreamcarProcess, edge, ws};

/// Publishes `payload` on `channel` of `tenant` through the sidecar at
/// `base`; the offset.
async fn publish_at(base: &str, tenant: &str, channel: &str, payload: Value) -> u64 {
    let resp = reqwest::Client::new()
        .post(format!(
            "{base}/v1/tenants/{tenant}/channels/{channel}/messages"
        ))
        .json(&json!({ "payload": payload }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("publish reaches the sidecar");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("publish answer");
    body["offset"].as_u64().expect("offset")
}

fn events_url(base: &str, tenant: &str, channel: &str) -> String {
    format!("{base}/v1/tenants/{tenant}/channels/{channel}/events")
}

/// The next event, waiting at most 60 s in all (keep-alive comments
/// included): the stream must say something by then.
async fn next_within(sse: &mut Sse, what: &str) -> SseEvent {
    tokio::time::timeout(Duration::from_secs(60), sse.expect())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 60 s (a silent gap)"))
}

/// Publishes on `channel` until `sse` receives one of them live; the last
/// offset published.
async fn until_live(sse: &mut Sse, base: &str, tenant: &str, channel: &str) -> u64 {
    for i in 0..50 {
        let offset = publish_at(base, tenant, channel, json!(i)).await;
        let event = next_within(sse, "before the fault").await;
        assert_eq!(event.event, "message", "{:?}", event.data);
        if event.data["offset"] == offset {
            return offset;
        }
    }
    panic!("{channel}: never live");
}

/// A proxy rule that does `act` to the first chunk carrying `command`
/// (`SUBSCRIBE`, `SSUBSCRIBE`) of a channel whose name carries `kind`
/// (`:live` for channels' fan-out, `:wake` for long-poll wake-ups), and
/// forwards everything else, later connections' subscriptions included.
fn once_on(
    command: &'static str,
    kind: &'static str,
    act: Act,
) -> impl FnMut(&[u8]) -> Act + Send + 'static {
    let mut done = false;
    move |chunk| {
        if !done && carries(chunk, command) && carries(chunk, kind) {
            done = true;
            return act;
        }
        Act::Forward
    }
}

/// The pub/sub connection that carries live fan-out dies while idle,
/// without closing (a dead host, a NAT that forgot the flow): publishes
/// still succeed through the pool, so unless the sidecar notices, its
/// subscribers wait for ever for messages that are in history, and never
/// learn of the gap. The sidecar must notice (the quiet connection answers
/// no PING), reconnect, and have every subscriber catch up from history.
#[tokio::test]
async fn a_pubsub_connection_gone_silent_while_idle_is_noticed() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port()).await;
    proxy.set_rule(once_on("SUBSCRIBE", ":live", Act::Mark));
    let sidecar = StreamcarProcess::start(&proxy.url(), &[]).await;
    let tenant = "idle";
    let mut a = Sse::open(&events_url(&sidecar.base, tenant, "a"), None).await;
    let first = until_live(&mut a, &sidecar.base, tenant, "a").await;
    assert_eq!(proxy.acted(), 1, "the pub/sub connection was not marked");

    proxy.silence_marked();
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish_at(&sidecar.base, tenant, "a", json!({ "after": i })).await);
    }
    assert_eq!(sent, [first + 1, first + 2, first + 3]);
    for offset in sent {
        let event = next_within(&mut a, "after the connection went silent").await;
        assert_eq!(event.event, "message", "{:?}", event.data);
        assert_eq!(event.data["offset"], offset, "no gap, no duplicate");
    }
}

/// The same death discovered by the next command on the connection (the
/// SUBSCRIBE of another channel): that command must not wait for ever
/// either, holding up the hub and every channel behind it.
#[tokio::test]
async fn a_pubsub_connection_gone_silent_under_a_subscribe_is_noticed() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port()).await;
    let sidecar = StreamcarProcess::start(&proxy.url(), &[]).await;
    let tenant = "silent";

    let mut a = Sse::open(&events_url(&sidecar.base, tenant, "a"), None).await;
    let first = until_live(&mut a, &sidecar.base, tenant, "a").await;

    // The pub/sub connection goes silent both ways at its next command
    // (subscribing `b`), once; a new connection is left alone.
    proxy.set_rule(once_on("SUBSCRIBE", ":live", Act::Blackhole));
    let mut b = Sse::open(&events_url(&sidecar.base, tenant, "b"), None).await;
    for _ in 0..200 {
        if proxy.acted() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(proxy.acted(), 1, "the pub/sub connection was not cut");

    let on_a = publish_at(&sidecar.base, tenant, "a", json!("after a")).await;
    let on_b = publish_at(&sidecar.base, tenant, "b", json!("after b")).await;
    assert_eq!(on_a, first + 1);
    for (sse, channel, offset) in [(&mut a, "a", on_a), (&mut b, "b", on_b)] {
        let event = next_within(sse, channel).await;
        assert_eq!(event.event, "message", "{channel}: {:?}", event.data);
        assert_eq!(event.data["offset"], offset, "{channel}: no gap");
    }
}

/// The long-poll wake-ups have a pub/sub connection of their own (one per
/// sidecar), and it can die the same way, under the SUBSCRIBE of a topic's
/// wake-up channel. That SUBSCRIBE must not wait for ever either: it held
/// up the connection's task, so no wake-up of any topic reached this
/// sidecar's fetches again and each new message waited for the safety
/// re-check (`--wake-recheck`, here 120 s) or the long-poll's last check at
/// its deadline.
#[tokio::test]
async fn a_wakeup_connection_gone_silent_under_a_subscribe_is_noticed() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port()).await;
    proxy.set_rule(once_on("SUBSCRIBE", ":wake", Act::Blackhole));
    let sidecar = StreamcarProcess::start(&proxy.url(), &["--wake-recheck", "120s"]).await;
    let client = reqwest::Client::new();
    let topic = format!("{}/v1/tenants/wakeup/topics/jobs", sidecar.base);
    let declared = client
        .put(format!("{topic}/groups/g"))
        .json(&json!({}))
        .send()
        .await
        .expect("declare");
    assert!(declared.status().is_success(), "{}", declared.status());

    let waiting = tokio::spawn(
        client
            .post(format!("{topic}/groups/g/fetch"))
            .json(&json!({"consumer": "c", "max": 1, "wait_ms": 30000}))
            .timeout(Duration::from_secs(60))
            .send(),
    );
    for _ in 0..200 {
        if proxy.acted() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(proxy.acted(), 1, "the wake-up connection was not cut");
    // The fetch gives up on its SUBSCRIBE's confirmation after a second,
    // checks once (nothing yet) and waits: publish after that.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let published = client
        .post(format!("{topic}/messages"))
        .json(&json!({"payload": "ready"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), StatusCode::CREATED);

    // Well before the long-poll's own end (30 s), where it would check
    // again anyway: only a wake-up answers it by then.
    let fetched = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("no wake-up reached the waiting fetch")
        .expect("task")
        .expect("fetch answered");
    assert_eq!(fetched.status(), StatusCode::OK);
    let body: Value = fetched.json().await.expect("fetch body");
    assert_eq!(
        body["messages"][0]["payload"], "ready",
        "the long-poll ended without the message: {body}"
    );
}

fn hs(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(edge::SECRET),
    )
    .expect("sign")
}

/// An edge client that vanishes without closing its socket (a phone that
/// lost its network, a laptop that went to sleep) on a quiet channel: the
/// sidecar writes nothing, so TCP never tells it the peer is gone. Unless
/// the sidecar checks that the client still answers (WebSocket ping), the
/// session never ends: its presence says the user is online for ever and
/// its connection slots stay taken, so a user whose network drops as many
/// times as `--edge-max-connections-per-user` is refused (429) from then on.
#[tokio::test]
async fn an_edge_client_gone_without_a_word_is_let_go() {
    let (app, _key) = edge::edge_app(|e| e.max_connections_per_user = 1).await;
    let edge_base = app.edge_base().expect("edge on");
    let edge_port: u16 = edge_base.rsplit(':').next().unwrap().parse().unwrap();
    // A network path to the edge that can go dead.
    let path = RedisProxy::start(edge_port).await;
    path.set_rule(|chunk| {
        if carries(chunk, "GET /v1/edge/ws") {
            Act::Mark
        } else {
            Act::Forward
        }
    });
    let token = hs(&edge::claims(&app.tenant, "u", &["quiet"], 3600));
    let url = format!(
        "ws://127.0.0.1:{}/v1/edge/ws",
        path.url().rsplit(':').next().unwrap()
    );
    let mut gone = ws::open(&url, &[ws::bearer(&token)])
        .await
        .expect("token accepted");
    assert_eq!(
        ws::subscribe(&mut gone, "quiet").await["type"],
        "subscribed"
    );
    let presence = app.get("/channels/quiet/presence").await;
    assert_eq!(
        presence.body["subscribers"][0]["sub"], "u",
        "{}",
        presence.body
    );

    // The network goes dead; the client's socket stays open.
    path.silence_marked();
    let direct = edge::ws_url(&app);
    let mut back = None;
    for _ in 0..120 {
        match ws::open(&direct, &[ws::bearer(&token)]).await {
            Ok(ws) => {
                back = Some(ws);
                break;
            }
            Err((status, problem)) => {
                assert_eq!(status, 429, "{problem}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let mut back = back.expect("the user is refused for ever: the vanished session never ended");
    assert_eq!(
        ws::subscribe(&mut back, "quiet").await["type"],
        "subscribed"
    );
    drop(gone);
}

/// On Redis Cluster the fan-out is sharded pub/sub over redis-rs's cluster
/// connection, whose node connection carries a shard's subscriptions and
/// nothing else: when it goes silent without closing, redis-rs never
/// learns (it has no health check, and only a closed socket or a refused
/// request makes it reconnect a node). Publishes on that shard still
/// succeed through the sidecar's other connections, so the channel's
/// subscribers must still get every message: the sidecar has to notice,
/// subscribe again and have them catch up from history.
#[tokio::test]
async fn a_sharded_pubsub_connection_gone_silent_while_idle_is_noticed() {
    let cluster = RedisCluster::start(3);
    // The first node is reached through a proxy the cluster announces.
    let (proxy, proxied) = cluster.proxy_first_node().await;

    // The sidecar's connection that SSUBSCRIBEs on the proxied node is
    // marked (once: a new connection is left alone).
    proxy.set_rule(once_on("SSUBSCRIBE", ":live", Act::Mark));
    let seeds: Vec<String> = std::iter::once(proxy.url())
        .chain(cluster.nodes[1..].iter().map(RedisServer::url))
        .collect();
    let sidecar = StreamcarProcess::start(&seeds.join(","), &["--redis-cluster"]).await;
    let tenant = "sharded";
    let channel = (0..)
        .map(|i| format!("a{i}"))
        .find(|c| proxied.serves(cluster.key_slot(&format!("sc:ch:{{{tenant}:{c}}}:live"))))
        .expect("a channel on the proxied node");

    let mut a = Sse::open(&events_url(&sidecar.base, tenant, &channel), None).await;
    let first = until_live(&mut a, &sidecar.base, tenant, &channel).await;
    assert_eq!(
        proxy.acted(),
        1,
        "the subscription's connection was not marked"
    );

    proxy.silence_marked();
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish_at(&sidecar.base, tenant, &channel, json!({ "after": i })).await);
    }
    assert_eq!(sent, [first + 1, first + 2, first + 3]);
    for offset in sent {
        let event = next_within(&mut a, "after the shard's connection went silent").await;
        assert_eq!(event.event, "message", "{:?}", event.data);
        assert_eq!(event.data["offset"], offset, "no gap, no duplicate");
    }
}
