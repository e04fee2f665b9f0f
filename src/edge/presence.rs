//! Presence: which users (`sub`) hold edge connections subscribed to a
//! channel, across every sidecar.
//!
//! Each sidecar counts its own connections per (tenant, channel, sub) in
//! memory and writes them to Redis ([`crate::keys::ChannelKeys::presence`])
//! as heartbeats: at once when a user joins or leaves a channel here, and
//! for every channel every third of the TTL (`--edge-presence-ttl`,
//! default 30 s, so a beat every 10 s). An entry lives one TTL past its
//! sidecar's last beat, so a sidecar killed with -9 stops counting within
//! the TTL with nobody cleaning up after it. Readers ask Redis
//! ([`read`]), never the local map.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::channels::ChannelName;
use crate::error::Result;
use crate::keys::ChannelKeys;
use crate::names::Tenant;
use crate::store::Store;

/// Most entries a presence read returns (sidecars × users of one channel).
pub const MAX_READ: usize = 10_000;
/// Subs per heartbeat script call.
const BEAT_CHUNK: usize = 500;

/// One user present on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Present {
    /// The user (the token's `sub`).
    pub sub: String,
    /// Open edge connections of the user subscribed to the channel, over
    /// every sidecar.
    pub connections: u64,
}

/// `GET …/channels/{channel}/presence`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PresenceInfo {
    /// Users subscribed through the edge, by `sub`.
    pub subscribers: Vec<Present>,
}

/// Who is on `channel` now, over every sidecar whose heartbeat is fresh.
pub async fn read(store: &Store, tenant: &Tenant, channel: &ChannelName) -> Result<PresenceInfo> {
    let keys = ChannelKeys::new(tenant, channel.as_str());
    let mut conn = store.conn().await?;
    let flat: Vec<(String, u64)> = store
        .scripts()
        .presence_read
        .key(keys.presence())
        .key(keys.presence_connections())
        .arg(MAX_READ)
        .invoke_async(&mut conn)
        .await?;
    let mut by_sub: BTreeMap<String, u64> = BTreeMap::new();
    for (member, connections) in flat {
        let sub = member.split_once('|').map_or(member.as_str(), |(_, s)| s);
        *by_sub.entry(sub.to_owned()).or_default() += connections;
    }
    Ok(PresenceInfo {
        subscribers: by_sub
            .into_iter()
            .map(|(sub, connections)| Present { sub, connections })
            .collect(),
    })
}

type ChannelId = (Tenant, ChannelName);

struct Inner {
    store: Store,
    /// This sidecar's id in presence entries.
    sidecar: String,
    ttl: Duration,
    /// Local connections per channel and sub; a count of 0 stays until
    /// the leave was written.
    local: Mutex<HashMap<ChannelId, HashMap<String, u64>>>,
    /// Channels whose counts changed since the last write.
    dirty: Mutex<HashSet<ChannelId>>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Updates are single inserts and counter changes.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sidecar's presence registry. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

/// One connection's presence on one channel; leaves on drop.
pub struct Joined {
    inner: Arc<Inner>,
    channel: ChannelId,
    sub: String,
}

impl Presence {
    /// Starts the heartbeat task (ends at shutdown, after writing that this
    /// sidecar's users left).
    pub fn start(store: Store, ttl: Duration, shutdown: watch::Receiver<bool>) -> Self {
        let inner = Arc::new(Inner {
            store,
            sidecar: uuid::Uuid::new_v4().simple().to_string(),
            ttl,
            local: Mutex::default(),
            dirty: Mutex::default(),
            changed: Notify::new(),
        });
        tokio::spawn(run(inner.clone(), shutdown));
        Self { inner }
    }

    /// `sub` subscribed to `channel` of `tenant` on one more connection.
    pub fn join(&self, tenant: &Tenant, channel: &ChannelName, sub: &str) -> Joined {
        let id = (tenant.clone(), channel.clone());
        *lock(&self.inner.local)
            .entry(id.clone())
            .or_default()
            .entry(sub.to_owned())
            .or_default() += 1;
        self.inner.mark(id.clone());
        Joined {
            inner: self.inner.clone(),
            channel: id,
            sub: sub.to_owned(),
        }
    }
}

impl Inner {
    fn mark(&self, id: ChannelId) {
        lock(&self.dirty).insert(id);
        self.changed.notify_one();
    }

    /// Writes the counts of `channels` (a count of 0 deletes the entry).
    async fn beat(&self, channels: Vec<ChannelId>, leaving: bool) -> Vec<ChannelId> {
        let mut failed = Vec::new();
        for id in channels {
            let counts: Vec<(String, u64)> = match lock(&self.local).get(&id) {
                Some(subs) => subs
                    .iter()
                    .map(|(s, n)| (s.clone(), if leaving { 0 } else { *n }))
                    .collect(),
                None => continue,
            };
            if self.write(&id, &counts).await.is_err() {
                failed.push(id);
                continue;
            }
            // Forget the subs written as gone, unless one came back since
            // (a leave after the snapshot is still marked dirty, and keeps
            // its 0 until it is written).
            let mut local = lock(&self.local);
            if let Some(subs) = local.get_mut(&id) {
                for (sub, n) in &counts {
                    if *n == 0 && subs.get(sub) == Some(&0) {
                        subs.remove(sub);
                    }
                }
                if subs.is_empty() {
                    local.remove(&id);
                }
            }
        }
        failed
    }

    async fn write(&self, (tenant, channel): &ChannelId, counts: &[(String, u64)]) -> Result<()> {
        let keys = ChannelKeys::new(tenant, channel.as_str());
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.store.conn().await?;
        for chunk in counts.chunks(BEAT_CHUNK) {
            let mut call = self.store.scripts().presence_beat.key(keys.presence());
            call.key(keys.presence_connections())
                .arg(ttl_ms)
                .arg(&self.sidecar);
            for (sub, n) in chunk {
                call.arg(sub).arg(*n);
            }
            call.invoke_async::<u64>(&mut conn).await?;
        }
        Ok(())
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.inner.local)
            .get_mut(&self.channel)
            .and_then(|subs| subs.get_mut(&self.sub))
        {
            *n = n.saturating_sub(1);
        }
        self.inner.mark(self.channel.clone());
    }
}

/// Resolves at shutdown (the watch guard is dropped here, so the task
/// stays `Send`).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The heartbeat task: changed channels at once, every channel every
/// third of the TTL.
async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(inner.ttl / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let channels: Vec<ChannelId> = tokio::select! {
            _ = every.tick() => {
                lock(&inner.dirty).clear();
                lock(&inner.local).keys().cloned().collect()
            }
            () = inner.changed.notified() => lock(&inner.dirty).drain().collect(),
            () = stopping(&mut shutdown) => {
                let all: Vec<ChannelId> = lock(&inner.local).keys().cloned().collect();
                inner.beat(all, true).await;
                return;
            }
        };
        let failed = inner.beat(channels, false).await;
        if !failed.is_empty() {
            // Redis is down: the next tick writes everything again.
            tracing::debug!(
                channels = failed.len(),
                "presence heartbeat failed; retrying at the next beat"
            );
        }
    }
}
