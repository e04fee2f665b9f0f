//! Connection limits of the edge: open connections of the sidecar
//! (`--edge-max-connections`), of one user (`--edge-max-connections-per-user`),
//! and the publish rate of one connection (`--edge-publish-rate`).
//!
//! A slot is taken before the WebSocket upgrade or the event stream starts
//! (over the limit: 429) and given back when its guard drops, so a
//! connection that ends in any way frees its slot. Memory is bounded by the
//! sidecar limit: one counter per user with an open connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::names::Tenant;

/// The counters.
#[derive(Debug)]
pub struct Limits {
    max: usize,
    per_user: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    users: HashMap<String, usize>,
    /// Subscribe buckets of the users who subscribed lately (a bucket that
    /// filled up again is forgotten at the next sweep).
    subscribes: HashMap<String, PublishRate>,
    /// Size of `subscribes` after its last sweep.
    swept: usize,
}

/// Subscriptions one user may start at once (WebSocket and SSE, over all
/// its connections of this edge), then [`SUBSCRIBE_RATE`] per second. A
/// subscription to a channel nobody used yet writes the channel's epoch to
/// Redis (kept for the history TTL), so a prefix grant churning made-up
/// names would otherwise grow Redis without bound.
pub const SUBSCRIBE_BURST: u32 = 1024;
/// Subscriptions one user may start per second after [`SUBSCRIBE_BURST`].
pub const SUBSCRIBE_RATE: u32 = 16;

/// How long a client refused for too many connections is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn too_many(detail: String) -> Error {
    Error::TooManyRequests {
        code: "too_many_connections",
        detail,
        retry_after: RETRY_AFTER,
        limit: None,
    }
}

impl Limits {
    /// Limits of `max` connections, `per_user` of one user.
    pub fn new(max: usize, per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_user,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Updates are counter changes that cannot panic halfway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One connection of the sidecar (before anyone is known).
    pub fn connection(self: &Arc<Self>) -> Result<Slot, Error> {
        let mut state = self.state();
        if state.open >= self.max {
            return Err(too_many(format!(
                "this edge holds its maximum of {} connections; retry (another sidecar may have room)",
                self.max
            )));
        }
        state.open += 1;
        Ok(Slot {
            limits: self.clone(),
        })
    }

    /// One connection of `sub` in `tenant`.
    pub fn user(self: &Arc<Self>, tenant: &Tenant, sub: &str) -> Result<UserSlot, Error> {
        let key = format!("{tenant}\n{sub}");
        let mut state = self.state();
        let count = state.users.entry(key.clone()).or_default();
        if *count >= self.per_user {
            return Err(too_many(format!(
                "this user already holds {} connections on this edge",
                self.per_user
            )));
        }
        *count += 1;
        Ok(UserSlot {
            limits: self.clone(),
            key,
        })
    }

    /// One subscription of `sub` in `tenant`, or how long until one is allowed.
    pub fn subscribe(&self, tenant: &Tenant, sub: &str) -> Result<(), Duration> {
        let mut state = self.state();
        if state.subscribes.len() > 2 * state.swept.max(1024) {
            state.subscribes.retain(|_, bucket| !bucket.is_full());
            state.swept = state.subscribes.len();
        }
        state
            .subscribes
            .entry(format!("{tenant}\n{sub}"))
            .or_insert_with(|| PublishRate::with_burst(SUBSCRIBE_RATE, SUBSCRIBE_BURST))
            .take()
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.state().open
    }
}

/// A sidecar connection slot; freed on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.limits.state();
        state.open = state.open.saturating_sub(1);
    }
}

/// A user's connection slot; freed on drop.
#[derive(Debug)]
pub struct UserSlot {
    limits: Arc<Limits>,
    key: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut state = self.limits.state();
        if let Some(count) = state.users.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.users.remove(&self.key);
            }
        }
    }
}

/// A token bucket: `rate` per second, bursts of `rate` (or of `burst`).
#[derive(Debug)]
pub struct PublishRate {
    rate: f64,
    tokens: f64,
    burst: f64,
    at: Instant,
}

impl PublishRate {
    /// A full bucket of `rate` per second.
    pub fn new(rate: u32) -> Self {
        Self::with_burst(rate, rate)
    }

    /// A full bucket of `burst`, refilled at `rate` per second.
    pub fn with_burst(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            tokens: f64::from(burst.max(1)),
            burst: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Whether the bucket filled up again (as good as a new one).
    fn is_full(&self) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * self.rate >= self.burst
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_freed() {
        let limits = Limits::new(2, 1);
        let t = Tenant::parse("t").unwrap();
        let a = limits.connection().unwrap();
        let _b = limits.connection().unwrap();
        assert!(limits.connection().is_err());
        drop(a);
        let _c = limits.connection().unwrap();
        let u = limits.user(&t, "u1").unwrap();
        assert!(limits.user(&t, "u1").is_err());
        let _v = limits.user(&t, "u2").unwrap();
        drop(u);
        let _u = limits.user(&t, "u1").unwrap();
        assert_eq!(limits.open(), 2);
    }

    #[test]
    fn subscribes_are_limited_per_user() {
        let limits = Limits::new(1, 1);
        let t = Tenant::parse("t").unwrap();
        for _ in 0..SUBSCRIBE_BURST {
            assert!(limits.subscribe(&t, "u1").is_ok());
        }
        assert!(limits.subscribe(&t, "u1").is_err());
        assert!(limits.subscribe(&t, "u2").is_ok());
    }

    #[test]
    fn publish_rate_refuses_past_the_burst() {
        let mut rate = PublishRate::new(3);
        for _ in 0..3 {
            assert!(rate.take().is_ok());
        }
        let wait = rate.take().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334));
    }
}
