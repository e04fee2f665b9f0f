//! Realtime channels: a light, bounded, ordered history per channel plus
//! live fan-out to local subscribers (SSE and WebSocket connections).
//!
//! Not a work queue: nothing is acked or redelivered. A channel keeps its
//! last `history_size` messages for `history_ttl_ms` after the last publish,
//! numbered 1, 2, 3… under an *epoch* that changes whenever history was lost,
//! so a subscriber's `<epoch>:<offset>` position is either resumed exactly
//! or answered with a reset, never silently skipped.
//!
//! * [`history`]: publish, read, declare (one Lua script each).
//! * [`hub`]: one Redis subscription per channel per sidecar, fanned out to
//!   local subscribers' [`outbox::Outbox`]es.
//! * [`cursor`]: one subscriber's position in one channel; merges live
//!   messages with history reads (no gap, no duplicate).
//! * [`protocol`]: the WebSocket frames.
//!
//! Knows nothing of HTTP; `crate::http::channels` drives it.

pub mod cursor;
pub mod history;
pub mod hub;
pub mod name;
pub mod outbox;
pub mod protocol;

use crate::store::Store;
pub use history::{Delivery, Position};
pub use name::ChannelName;

/// Channel operations and the fan-out hub. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    store: Store,
    hub: hub::Hub,
    queue_bytes: usize,
    /// Redis Cluster: sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    sharded: bool,
}

impl Channels {
    /// Starts the hub's pub/sub connection to `redis_urls` (one Redis, or a
    /// cluster's seed nodes with `cluster`); each connection's outbound
    /// queue holds at most `queue_bytes`.
    pub fn start(store: Store, redis_urls: &[&str], cluster: bool, queue_bytes: usize) -> Self {
        let hub = if cluster {
            hub::Hub::start_sharded(redis_urls)
        } else {
            hub::Hub::start(redis_urls.first().copied().unwrap_or_default())
        };
        Self {
            store,
            hub,
            queue_bytes,
            sharded: cluster,
        }
    }

    /// The fan-out hub.
    pub fn hub(&self) -> &hub::Hub {
        &self.hub
    }

    /// Turns true when the service shuts down: subscriber connections end
    /// then (their clients resume elsewhere by position) instead of
    /// holding the drain until its timeout.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.store.shutdown_signal()
    }

    /// A new outbound queue for one connection.
    pub fn outbox(&self) -> std::sync::Arc<outbox::Outbox> {
        std::sync::Arc::new(outbox::Outbox::new(self.queue_bytes))
    }
}

impl Channels {
    /// Registers subscription `sub` of `outbox` for live messages of
    /// `channel` (see [`hub::Hub::subscribe`]).
    pub fn subscribe(
        &self,
        tenant: &crate::names::Tenant,
        channel: &ChannelName,
        outbox: std::sync::Arc<outbox::Outbox>,
        sub: u64,
    ) -> hub::Subscription {
        let live = crate::keys::ChannelKeys::new(tenant, channel.as_str()).live();
        self.hub.subscribe(live, outbox, sub)
    }
}

/// Counts one open subscriber connection in
/// [`crate::telemetry::CHANNEL_CONNECTIONS`] for as long as it lives.
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    /// One more connection of `transport` (`sse`, `ws`).
    pub fn open(transport: &'static str) -> Self {
        metrics::gauge!(crate::telemetry::CHANNEL_CONNECTIONS, "transport" => transport)
            .increment(1.0);
        Self(transport)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::CHANNEL_CONNECTIONS, "transport" => self.0)
            .decrement(1.0);
    }
}
