//! The fan-out hub: one Redis subscription per channel per sidecar, however
//! many local subscribers, over one dedicated pub/sub connection.
//!
//! A channel is subscribed in Redis when its first local subscriber
//! arrives and released [`LINGER`] after its last one leaves (a client
//! that reconnects right away finds it still there). A message is parsed
//! once and pushed to every local subscriber's [`Outbox`] without waiting.
//!
//! Pub/sub is at-most-once, so the hub says when something may have been
//! missed instead of hoping nothing was: when a channel's SUBSCRIBE is
//! confirmed (subscribers registered before that may have read history
//! before Redis would send them anything) and after every reconnect, each
//! subscriber of the channel gets [`Event::Resync`] and checks history from
//! its position (see [`super::cursor`]). A connection that goes quiet is
//! PINGed, and one that leaves a command unanswered is taken for lost: a
//! socket to a vanished Redis would otherwise stay open and silent for
//! ever while publishes still succeed elsewhere. On Redis Cluster the hub uses
//! sharded pub/sub instead ([`Hub::start_sharded`]): a message then crosses
//! only its channel's shard, not the whole cluster bus; its node connections
//! are PINGed too, and replaced all at once when one does not answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::outbox::{Event, Live, Outbox, Pushed};
use crate::pubsub::{IDLE_PING, Silence, within};
use crate::telemetry;

/// How long a channel stays subscribed in Redis after its last local
/// subscriber left.
pub const LINGER: Duration = Duration::from_secs(2);
/// Pause between reconnection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Channels per SUBSCRIBE command when re-subscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 500;

enum Command {
    /// A channel got its first local subscriber.
    Subscribe(String),
    /// A channel lost its last local subscriber: release it after [`LINGER`].
    Idle(String),
    /// Release the channel now if it still has no subscriber.
    Release(String),
    /// Sharded: subscribe every registered channel again (after a
    /// disconnection, or a failed SSUBSCRIBE).
    Resubscribe,
}

struct Subscriber {
    outbox: Arc<Outbox>,
    sub: u64,
}

#[derive(Default)]
struct Entry {
    subscribers: HashMap<u64, Subscriber>,
}

struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    commands: mpsc::UnboundedSender<Command>,
    next: AtomicU64,
}

impl Inner {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Updates are single inserts/removes: a panic cannot leave one half done.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pushes `event` to every subscriber of `channel`.
    fn fan_out(&self, channel: &str, event: &Event) {
        let entries = self.entries();
        let Some(entry) = entries.get(channel) else {
            return;
        };
        let mut delivered = 0u64;
        for subscriber in entry.subscribers.values() {
            match subscriber.outbox.push(subscriber.sub, event.clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed => {
                    metrics::counter!(telemetry::CHANNEL_SLOW_CONSUMERS).increment(1);
                }
                Pushed::Dropped => {}
            }
        }
        if matches!(event, Event::Live(_)) {
            metrics::counter!(telemetry::CHANNEL_FANOUT).increment(delivered);
        }
    }

    fn resync_all(&self) {
        let channels: Vec<String> = self.entries().keys().cloned().collect();
        for channel in channels {
            self.fan_out(&channel, &Event::Resync);
        }
    }
}

/// The per-sidecar hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the pub/sub task for `redis_url` (it reconnects by itself).
    pub fn start(redis_url: &str) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            commands: commands.clone(),
            next: AtomicU64::new(1),
        });
        match redis::Client::open(redis_url) {
            Ok(client) => {
                tokio::spawn(run(client, Arc::downgrade(&inner), commands, rx));
            }
            Err(e) => tracing::error!(error = %e, "channel fan-out disabled: invalid redis url"),
        }
        Self { inner }
    }

    /// On Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), through a RESP3
    /// cluster connection that routes each channel to the node owning its
    /// slot, so a message crosses only that shard rather than the whole
    /// cluster bus. The publish script uses `SPUBLISH` to match.
    pub fn start_sharded(seed_urls: &[&str]) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            commands: commands.clone(),
            next: AtomicU64::new(1),
        });
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let client =
            crate::store::cluster_client_builder(seed_urls, crate::store::response_timeout(None))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_tx)
                .build();
        match client {
            Ok(client) => {
                tokio::spawn(run_sharded(
                    client,
                    Arc::downgrade(&inner),
                    commands,
                    rx,
                    push_rx,
                ));
            }
            Err(e) => tracing::error!(error = %e, "channel fan-out disabled: invalid cluster urls"),
        }
        Self { inner }
    }

    /// Registers subscription `sub` of `outbox` on pub/sub `channel`. Live
    /// messages flow from the moment Redis confirms the channel's
    /// subscription, which is followed by an [`Event::Resync`] when it was
    /// not confirmed yet; dropping the handle unregisters.
    pub fn subscribe(&self, channel: String, outbox: Arc<Outbox>, sub: u64) -> Subscription {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut entries = self.inner.entries();
            let first = !entries.contains_key(&channel);
            entries
                .entry(channel.clone())
                .or_default()
                .subscribers
                .insert(id, Subscriber { outbox, sub });
            first
        };
        if first {
            let _ = self
                .inner
                .commands
                .send(Command::Subscribe(channel.clone()));
        }
        metrics::gauge!(telemetry::CHANNEL_SUBSCRIPTIONS).increment(1.0);
        Subscription {
            inner: self.inner.clone(),
            channel,
            id,
        }
    }
}

/// A local subscription; unregisters on drop.
pub struct Subscription {
    inner: Arc<Inner>,
    channel: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::CHANNEL_SUBSCRIPTIONS).decrement(1.0);
        let mut entries = self.inner.entries();
        let Some(entry) = entries.get_mut(&self.channel) else {
            return;
        };
        entry.subscribers.remove(&self.id);
        if entry.subscribers.is_empty() {
            let _ = self
                .inner
                .commands
                .send(Command::Idle(self.channel.clone()));
        }
    }
}

/// Drops the entry of `channel` if it has no subscriber; true if it did.
fn release(inner: &Inner, channel: &str) -> bool {
    let mut entries = inner.entries();
    if entries
        .get(channel)
        .is_some_and(|e| e.subscribers.is_empty())
    {
        entries.remove(channel);
        metrics::gauge!(telemetry::CHANNEL_REDIS_SUBSCRIBED).set(entries.len() as f64);
        return true;
    }
    false
}

fn schedule_release(commands: &mpsc::UnboundedSender<Command>, channel: String) {
    let commands = commands.clone();
    tokio::spawn(async move {
        tokio::time::sleep(LINGER).await;
        let _ = commands.send(Command::Release(channel));
    });
}

/// The pub/sub task: (re)connects, keeps Redis subscriptions in step with
/// the registry, fans messages out. Ends when the hub is gone.
async fn run(
    client: redis::Client,
    inner: Weak<Inner>,
    commands_tx: mpsc::UnboundedSender<Command>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    // The task holds a sender itself, so the hub's end is noticed through
    // the weak reference: check it on every turn.
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        let (mut sink, mut stream) = match within(client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::debug!(error = %e, "channel pub/sub connect failed; retrying");
                let deadline = tokio::time::sleep(RECONNECT_DELAY);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        cmd = commands.recv() => match cmd {
                            // Subscribed with all the others once connected.
                            Some(Command::Subscribe(_) | Command::Resubscribe) => {}
                            Some(Command::Idle(channel)) => schedule_release(&commands_tx, channel),
                            Some(Command::Release(channel)) => {
                                let Some(live) = inner.upgrade() else { return };
                                release(&live, &channel);
                            }
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        let Some(live) = inner.upgrade() else { return };
        let current: Vec<String> = live.entries().keys().cloned().collect();
        let mut ok = true;
        for chunk in current.chunks(SUBSCRIBE_CHUNK) {
            if within(sink.subscribe(chunk)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        metrics::gauge!(telemetry::CHANNEL_REDIS_SUBSCRIBED).set(current.len() as f64);
        // Whatever was published while we were not subscribed.
        live.resync_all();
        drop(live);
        let mut silence = Silence::new();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break }; // connection lost
                    silence.heard();
                    let Some(live) = inner.upgrade() else { return };
                    let bytes = msg.get_payload_bytes();
                    match serde_json::from_slice(bytes) {
                        Ok(delivery) => {
                            let event = Event::Live(Arc::new(Live { delivery, bytes: bytes.len() }));
                            live.fan_out(msg.get_channel_name(), &event);
                        }
                        Err(e) => {
                            // Not ours (someone else PUBLISHed on the name):
                            // tell subscribers to check history instead.
                            tracing::warn!(error = %e, channel = msg.get_channel_name(), "unreadable channel message");
                            live.fan_out(msg.get_channel_name(), &Event::Resync);
                        }
                    }
                }
                () = silence.ended() => {
                    // No answer: the connection is dead, reconnect (and
                    // every subscriber then checks history).
                    if within(sink.ping::<redis::Value>()).await.is_err() {
                        break;
                    }
                    silence.heard();
                }
                cmd = commands.recv() => {
                    let Some(live) = inner.upgrade() else { return };
                    match cmd {
                        Some(Command::Subscribe(channel)) => {
                            if !live.entries().contains_key(&channel) {
                                continue;
                            }
                            if within(sink.subscribe(&channel)).await.is_err() {
                                break;
                            }
                            let subscribed = live.entries().len();
                            metrics::gauge!(telemetry::CHANNEL_REDIS_SUBSCRIBED).set(subscribed as f64);
                            live.fan_out(&channel, &Event::Resync);
                        }
                        Some(Command::Idle(channel)) => schedule_release(&commands_tx, channel),
                        Some(Command::Release(channel)) => {
                            if release(&live, &channel)
                                && within(sink.unsubscribe(&channel)).await.is_err()
                            {
                                break;
                            }
                        }
                        Some(Command::Resubscribe) => {}
                        None => return,
                    }
                }
            }
        }
        tracing::debug!("channel pub/sub connection lost; reconnecting");
    }
}

/// The sharded pub/sub task (Redis Cluster). redis-rs keeps the
/// subscriptions on the right nodes and re-subscribes after disconnections
/// and slot moves; every `ssubscribe` confirmation it pushes (the first one
/// and each re-subscription) makes the channel's subscribers check history,
/// which covers whatever was published while not subscribed.
///
/// redis-rs only repairs a node connection that closed or refused a
/// request: one that went silent without closing (a dead host, a NAT that
/// forgot the flow) would keep its shard's subscriptions dead for ever.
/// So while anything is subscribed, every primary is PINGed each
/// [`IDLE_PING`], and a PING or subscription command left unanswered
/// within [`crate::pubsub::COMMAND_TIMEOUT`] (or failing) has the whole cluster connection
/// replaced: every channel is then subscribed again on new connections.
async fn run_sharded(
    client: redis::cluster::ClusterClient,
    inner: Weak<Inner>,
    commands_tx: mpsc::UnboundedSender<Command>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    loop {
        let mut conn = loop {
            if inner.strong_count() == 0 {
                return;
            }
            // Bounded by the client's connection and response timeouts.
            match client.get_async_connection().await {
                Ok(conn) => break conn,
                Err(e) => {
                    tracing::debug!(error = %e, "channel cluster connect failed; retrying");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        };
        // Every registered channel, on the new connection (each
        // confirmation resyncs its subscribers).
        let _ = commands_tx.send(Command::Resubscribe);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + IDLE_PING, IDLE_PING);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    let Some(live) = inner.upgrade() else { return };
                    on_push(&live, &commands_tx, push);
                }
                _ = check.tick() => {
                    let Some(live) = inner.upgrade() else { return };
                    let subscribed = !live.entries().is_empty();
                    drop(live);
                    if subscribed && within(ping_primaries(&mut conn)).await.is_err() {
                        break;
                    }
                }
                cmd = commands.recv() => {
                    let Some(live) = inner.upgrade() else { return };
                    match cmd {
                        Some(Command::Subscribe(channel)) => {
                            if live.entries().contains_key(&channel)
                                && ssubscribe(&mut conn, &commands_tx, &channel).await.is_err()
                            {
                                break;
                            }
                        }
                        Some(Command::Resubscribe) => {
                            let current: Vec<String> = live.entries().keys().cloned().collect();
                            drop(live);
                            let mut alive = true;
                            for channel in current {
                                if ssubscribe(&mut conn, &commands_tx, &channel).await.is_err() {
                                    alive = false;
                                    break;
                                }
                            }
                            if !alive {
                                break;
                            }
                        }
                        Some(Command::Idle(channel)) => schedule_release(&commands_tx, channel),
                        Some(Command::Release(channel)) => {
                            if release(&live, &channel)
                                && within(conn.sunsubscribe(&channel))
                                    .await
                                    .is_err_and(|e| e.is_timeout())
                            {
                                break;
                            }
                        }
                        None => return,
                    }
                }
            }
        }
        tracing::debug!("channel cluster connection unresponsive; reconnecting");
    }
}

/// PING on every primary (where the subscriptions are).
async fn ping_primaries(
    conn: &mut redis::cluster_async::ClusterConnection,
) -> redis::RedisResult<()> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    let routing = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::AllSucceeded),
    ));
    conn.route_command(redis::cmd("PING"), routing)
        .await
        .map(drop)
}

/// SSUBSCRIBE, or try everything again a little later (the node may be
/// failing over); an error when it went unanswered (the connection is then
/// taken for dead).
async fn ssubscribe(
    conn: &mut redis::cluster_async::ClusterConnection,
    commands: &mpsc::UnboundedSender<Command>,
    channel: &str,
) -> Result<(), ()> {
    if let Err(e) = within(conn.ssubscribe(channel)).await {
        tracing::debug!(error = %e, channel, "ssubscribe failed; retrying");
        if e.is_timeout() {
            return Err(());
        }
        let commands = commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RECONNECT_DELAY).await;
            let _ = commands.send(Command::Resubscribe);
        });
    }
    Ok(())
}

fn on_push(inner: &Inner, commands: &mpsc::UnboundedSender<Command>, push: redis::PushInfo) {
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
    match push.kind {
        redis::PushKind::SMessage => {
            let (Some(channel), Some(payload)) = (
                push.data.first().and_then(text),
                push.data
                    .get(1)
                    .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok()),
            ) else {
                return;
            };
            match serde_json::from_slice(&payload) {
                Ok(delivery) => {
                    let event = Event::Live(Arc::new(Live {
                        delivery,
                        bytes: payload.len(),
                    }));
                    inner.fan_out(&channel, &event);
                }
                Err(_) => inner.fan_out(&channel, &Event::Resync),
            }
        }
        redis::PushKind::SSubscribe => {
            if let Some(channel) = push.data.first().and_then(text) {
                metrics::gauge!(telemetry::CHANNEL_REDIS_SUBSCRIBED)
                    .set(inner.entries().len() as f64);
                inner.fan_out(&channel, &Event::Resync);
            }
        }
        // A connection dropped: make sure every channel is subscribed again
        // (each confirmation then resyncs its subscribers).
        redis::PushKind::Disconnection => {
            let commands = commands.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RECONNECT_DELAY).await;
                let _ = commands.send(Command::Resubscribe);
            });
        }
        _ => {}
    }
}
