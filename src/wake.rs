//! Wake-ups for long-polling fetches, without holding pooled connections.
//!
//! ## Mechanism
//!
//! Every operation that can make a message deliverable now or sooner than
//! waiters know (a publish, a resume, a retry, a key passed on) PUBLISHes
//! on the topic's channel
//! `sc:{T:P}:wake` from Redis. Each sidecar keeps **one** dedicated pub/sub
//! connection (outside the pool) and subscribes to a topic's channel only
//! while some local fetch on that topic is waiting (and for a moment after,
//! see below). A message on the channel
//! wakes one waiter per group ([`tokio::sync::Notify::notify_one`]); a waiter
//! whose fetch then comes back full (more may be waiting) passes the baton to
//! the next waiter of its group, so a burst is drained by as many workers as
//! needed while a single message does not stampede two hundred of them, and a
//! trickle costs one fetch per wake-up.
//!
//! Waiting itself costs no Redis connection: a waiting fetch holds only a
//! [`Waiter`] (an `Arc<Notify>`), so publish and ack keep the whole pool.
//!
//! A channel stays subscribed for [`UNSUBSCRIBE_AFTER`] after its last
//! waiter left: consumers that fetch, ack and fetch again leave moments with
//! no waiter at all, and unsubscribing then would make the next fetch wait
//! for a SUBSCRIBE round trip (and a busy topic churn through both commands
//! dozens of times a second).
//!
//! Pub/sub is at-most-once and a sidecar may be disconnected, so a waiter
//! never relies on it alone: it also wakes at the time the fetch script
//! reports as the next due retry or lease expiry, and at least every
//! `--wake-recheck` (default [`SAFETY_RECHECK`]). A lost notification
//! therefore delays a delivery by at most that long; it never loses one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::pubsub::{Silence, within};

/// Default of the longest a waiting fetch goes without re-checking Redis.
pub const SAFETY_RECHECK: Duration = Duration::from_secs(1);
/// How long a new waiter waits for its SUBSCRIBE to be confirmed.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between reconnection attempts of the pub/sub connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// How long a channel stays subscribed with no waiter (give or take one
/// more of it: channels are swept that often).
const UNSUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

enum Command {
    Subscribe(String, oneshot::Sender<()>),
}

#[derive(Default)]
struct Channel {
    /// One notifier per group that has waiters on this topic.
    groups: HashMap<String, Arc<Notify>>,
    /// Live waiters on this channel, all groups together.
    waiters: usize,
    /// Since when the channel has had no waiter (None while it has some).
    idle_since: Option<Instant>,
}

struct Inner {
    channels: Mutex<HashMap<String, Channel>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Inner {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert/remove), so poisoning is ignored.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake_channel(&self, channel: &str) {
        if let Some(ch) = self.channels().get(channel) {
            ch.groups.values().for_each(|n| n.notify_one());
        }
    }

    fn wake_all(&self) {
        for ch in self.channels().values() {
            ch.groups.values().for_each(|n| n.notify_one());
        }
    }

    /// Forgets the channels that have had no waiter for `UNSUBSCRIBE_AFTER`
    /// and returns them, to unsubscribe.
    fn take_idle(&self, now: Instant) -> Vec<String> {
        let mut channels = self.channels();
        let idle: Vec<String> = channels
            .iter()
            .filter(|(_, ch)| {
                ch.idle_since
                    .is_some_and(|since| now.duration_since(since) >= UNSUBSCRIBE_AFTER)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &idle {
            channels.remove(name);
        }
        idle
    }
}

/// The per-sidecar wake-up registry and its pub/sub connection. Cheap to clone.
#[derive(Clone)]
pub struct Wakeups {
    inner: Arc<Inner>,
    /// Longest a waiter goes without re-checking Redis.
    recheck: Duration,
}

impl Wakeups {
    /// Starts the pub/sub task on the first of `redis_urls` that answers
    /// (it reconnects by itself, moving on to the next URL when one fails:
    /// on a Redis Cluster, where a PUBLISH reaches every node, any live node
    /// will do, and a dead primary must not silence the wake-ups); waiters
    /// re-check Redis at least every `recheck`.
    pub fn start(redis_urls: &[&str], recheck: Duration) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            channels: Mutex::new(HashMap::new()),
            commands,
        });
        match redis_urls
            .iter()
            .map(|url| redis::Client::open(*url))
            .collect::<redis::RedisResult<Vec<_>>>()
        {
            Ok(clients) if !clients.is_empty() => {
                tokio::spawn(run(clients, Arc::downgrade(&inner), rx));
            }
            // The pool reports the same bad URL on every request; waiters
            // fall back to periodic re-checks.
            Ok(_) => tracing::error!("pub/sub disabled: no redis url"),
            Err(e) => tracing::error!(error = %e, "pub/sub disabled: invalid redis url"),
        }
        Self { inner, recheck }
    }

    /// Longest a waiter goes without re-checking Redis.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }

    /// Registers a waiter for `group` on `channel`, subscribing the channel
    /// first unless it still is (see [`UNSUBSCRIBE_AFTER`]).
    ///
    /// Cancel-safe: the [`Waiter`] (whose drop unregisters) exists before
    /// the wait for the SUBSCRIBE confirmation, so a caller dropped during
    /// that wait (a client that went away) leaves nothing registered.
    pub async fn waiter(&self, channel: String, group: &str) -> Waiter {
        let (notify, first) = {
            let mut channels = self.inner.channels();
            let first = !channels.contains_key(&channel);
            let ch = channels.entry(channel.clone()).or_default();
            ch.waiters += 1;
            ch.idle_since = None;
            let notify = ch.groups.entry(group.to_owned()).or_default().clone();
            (notify, first)
        };
        let waiter = Waiter {
            inner: self.inner.clone(),
            channel,
            group: group.to_owned(),
            notify,
        };
        if first {
            let (tx, rx) = oneshot::channel();
            if self
                .inner
                .commands
                .send(Command::Subscribe(waiter.channel.clone(), tx))
                .is_ok()
            {
                // Unconfirmed after the timeout: the periodic re-check covers it.
                let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await;
            }
        }
        waiter
    }
}

/// A registered long-poll waiter; unregisters on drop.
pub struct Waiter {
    inner: Arc<Inner>,
    channel: String,
    group: String,
    notify: Arc<Notify>,
}

impl Waiter {
    /// The notifier this waiter waits on.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    /// After a full fetch: let the next waiter of the group check too.
    pub fn pass_on(&self) {
        self.notify.notify_one();
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut channels = self.inner.channels();
        let Some(ch) = channels.get_mut(&self.channel) else {
            return;
        };
        ch.waiters -= 1;
        // The group's notifier is shared by its waiters: drop it with the last one.
        if Arc::strong_count(&self.notify) <= 2 {
            ch.groups.remove(&self.group);
        }
        if ch.waiters == 0 {
            // Unsubscribed by the pub/sub task once idle for long enough.
            ch.idle_since = Some(Instant::now());
        }
    }
}

/// The pub/sub task: (re)connects, keeps subscriptions in step with the
/// registry and turns messages into wake-ups. Ends when the registry is gone.
async fn run(
    clients: Vec<redis::Client>,
    inner: std::sync::Weak<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut next = 0;
    loop {
        let Some(live) = inner.upgrade() else { return };
        let client = &clients[next % clients.len()];
        // Whatever happens below ends in a reconnect: to the next node.
        next += 1;
        let (mut sink, mut stream) = match within(client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::debug!(error = %e, "pub/sub connect failed; retrying");
                drop(live);
                // Keep answering subscribe requests so waiters do not stall.
                let deadline = tokio::time::sleep(RECONNECT_DELAY);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        cmd = commands.recv() => match cmd {
                            Some(Command::Subscribe(_, done)) => { let _ = done.send(()); }
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        let current: Vec<String> = live.channels().keys().cloned().collect();
        if !current.is_empty() && within(sink.subscribe(&current)).await.is_err() {
            continue;
        }
        // Anything published while we were away: let every waiter re-check.
        live.wake_all();
        drop(live);
        let mut silence = Silence::new();
        let mut sweep = tokio::time::interval(UNSUBSCRIBE_AFTER);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'connected: loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break }; // connection lost
                    let Some(live) = inner.upgrade() else { return };
                    live.wake_channel(msg.get_channel_name());
                    silence.heard();
                }
                () = silence.ended() => {
                    if within(sink.ping::<Value>()).await.is_err() { break; }
                    silence.heard();
                }
                _ = sweep.tick() => {
                    let Some(live) = inner.upgrade() else { return };
                    for channel in live.take_idle(Instant::now()) {
                        if within(sink.unsubscribe(&channel)).await.is_err() { break 'connected; }
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Subscribe(channel, done)) => {
                        let ok = within(sink.subscribe(&channel)).await.is_ok();
                        let _ = done.send(());
                        if !ok { break; }
                        silence.heard();
                    }
                    None => return,
                },
            }
        }
        tracing::debug!("pub/sub connection lost; reconnecting");
    }
}
