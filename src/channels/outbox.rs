//! The bounded outbound queue of one subscriber connection.
//!
//! The hub pushes without ever waiting (one slow socket must not hold up
//! the fan-out to the others); the connection pops as fast as its client
//! reads. Queued bytes are bounded: a push that would pass the bound marks
//! the connection overflowed instead, drops the queue and every later push,
//! and the connection ends with `slow_consumer`; its client resumes by
//! offset. Memory per connection is therefore at most the bound plus one
//! message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use super::Delivery;

/// Bytes a [`Event::Resync`] counts for (so even those cannot pile up).
const RESYNC_BYTES: usize = 64;

/// What the hub hands a subscription.
#[derive(Debug, Clone)]
pub enum Event {
    /// A live message (shared by every local subscriber of the channel).
    Live(Arc<Live>),
    /// The sidecar was not subscribed in Redis for a while (a new
    /// subscription being confirmed, a reconnect): anything may have been
    /// missed, so the subscriber must check history from its position.
    Resync,
}

/// A live message and its size as it came from Redis.
#[derive(Debug)]
pub struct Live {
    /// The message.
    pub delivery: Delivery,
    /// Its size on the wire, what it costs in a queue.
    pub bytes: usize,
}

/// One queued event for subscription `sub` of the connection.
#[derive(Debug)]
pub struct Item {
    /// Which subscription of the connection (a WebSocket has many).
    pub sub: u64,
    /// What happened.
    pub event: Event,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// This push overflowed the queue: the connection is now a slow consumer.
    Overflowed,
    /// The connection had already overflowed; dropped.
    Dropped,
}

#[derive(Default)]
struct State {
    items: VecDeque<(Item, usize)>,
    bytes: usize,
    overflowed: bool,
}

/// One connection's queue. Shared by the hub (pushing) and the connection.
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    overflow: watch::Sender<bool>,
    limit: usize,
}

impl Outbox {
    /// An empty queue of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            overflow: watch::Sender::new(false),
            limit,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a few field writes that cannot panic halfway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event` for `sub` unless that passes the bound.
    pub fn push(&self, sub: u64, event: Event) -> Pushed {
        let bytes = match &event {
            Event::Live(live) => live.bytes,
            Event::Resync => RESYNC_BYTES,
        };
        let mut state = self.state();
        if state.overflowed {
            return Pushed::Dropped;
        }
        // An empty queue takes any one message: a message larger than the
        // bound must not cut every subscriber of its channel.
        if state.bytes > 0 && state.bytes + bytes > self.limit {
            state.overflowed = true;
            state.items = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.overflow.send_replace(true);
            self.ready.notify_one();
            return Pushed::Overflowed;
        }
        state.bytes += bytes;
        state.items.push_back((Item { sub, event }, bytes));
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// The next event; None once the connection overflowed. One consumer.
    pub async fn recv(&self) -> Option<Item> {
        loop {
            {
                let mut state = self.state();
                if state.overflowed {
                    return None;
                }
                if let Some((item, bytes)) = state.items.pop_front() {
                    state.bytes -= bytes;
                    return Some(item);
                }
            }
            // A push between the check and here left a permit: no lost wake-up.
            self.ready.notified().await;
        }
    }

    /// Resolves once the queue has overflowed (for a writer blocked on a
    /// client that does not read).
    pub async fn overflowed(&self) {
        let mut rx = self.overflow.subscribe();
        let _ = rx.wait_for(|o| *o).await;
    }

    /// Whether the queue has overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.state().overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(bytes: usize) -> Event {
        let delivery: Delivery = serde_json::from_str(
            r#"{"epoch":"1","offset":1,"published_at":0,"headers":{},"payload":null}"#,
        )
        .unwrap();
        Event::Live(Arc::new(Live { delivery, bytes }))
    }

    #[tokio::test]
    async fn bounded_by_bytes_then_dropped() {
        let outbox = Outbox::new(100);
        assert_eq!(outbox.push(1, live(60)), Pushed::Queued);
        assert!(outbox.recv().await.is_some());
        assert_eq!(outbox.push(1, live(500)), Pushed::Queued, "empty: any size");
        assert!(outbox.recv().await.is_some());
        assert_eq!(outbox.push(1, live(60)), Pushed::Queued);
        assert_eq!(outbox.push(1, live(60)), Pushed::Overflowed);
        assert_eq!(outbox.push(1, live(1)), Pushed::Dropped);
        assert!(outbox.is_overflowed());
        assert!(outbox.recv().await.is_none());
        outbox.overflowed().await;
    }
}
