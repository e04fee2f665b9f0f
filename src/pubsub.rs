//! What the two long-lived pub/sub connections (long-poll wake-ups in
//! [`crate::wake`], channel fan-out in [`crate::channels::hub`]) share:
//! a bound on every command, and a PING after a quiet spell.
//!
//! A Redis that vanished without closing the socket (a dead host, a NAT or
//! firewall that forgot the flow) leaves a pub/sub connection open and
//! silent for ever: nothing arrives, and a command sent on it waits for an
//! answer that never comes, stalling the task that owns the connection.
//! So every command gets [`COMMAND_TIMEOUT`], a connection quiet for
//! [`IDLE_PING`] is PINGed, and either failing is taken for a lost
//! connection (the owner reconnects and re-subscribes).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Longest a connection attempt or one pub/sub command (SUBSCRIBE,
/// UNSUBSCRIBE, PING) may take before the connection is taken for dead.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence after which the connection is checked with a PING.
pub const IDLE_PING: Duration = Duration::from_secs(5);

/// `call`, or an error once it took longer than [`COMMAND_TIMEOUT`].
pub async fn within<T>(call: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(result) => result,
        Err(elapsed) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            elapsed,
        ))),
    }
}

/// The quiet-spell timer of one connection: ends [`IDLE_PING`] after the
/// connection was last heard from.
pub struct Silence(Pin<Box<Sleep>>);

impl Silence {
    /// A timer that starts now.
    pub fn new() -> Self {
        Self(Box::pin(tokio::time::sleep(IDLE_PING)))
    }

    /// The connection was just heard from (a message, an answer).
    pub fn heard(&mut self) {
        self.0.as_mut().reset(Instant::now() + IDLE_PING);
    }

    /// Ends once the connection has been quiet for [`IDLE_PING`].
    pub async fn ended(&mut self) {
        self.0.as_mut().await;
    }
}

impl Default for Silence {
    fn default() -> Self {
        Self::new()
    }
}
