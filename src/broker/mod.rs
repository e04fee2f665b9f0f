//! Topics, publishing, consumer groups and delivery: the domain logic of the
//! message broker.
//!
//! Everything here speaks Redis (through [`Broker`]) and the domain types of
//! [`crate::names`]; nothing here knows about HTTP. Each operation that changes
//! more than one key is one Lua script from [`crate::scripts`].

pub mod backoff;
pub mod delivery;
pub mod dlq;
pub mod groups;
pub mod message;
pub mod publish;
pub mod receipt;
pub mod retention;
pub mod retry;
pub mod topics;
pub mod wake;

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::Result;
use crate::keys::TopicKeys;
use crate::scripts::Scripts;
use wake::Wakeups;

/// Default publish idempotency window: 24 hours.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Handle on Redis for the broker operations. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pool: deadpool_redis::Pool,
    scripts: Arc<Scripts>,
    wakeups: Wakeups,
    shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// Wraps a connection pool, the script registry, the long-poll wake-ups
    /// and the shutdown signal (which ends waiting fetches early).
    pub fn new(
        pool: deadpool_redis::Pool,
        scripts: Arc<Scripts>,
        wakeups: Wakeups,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            pool,
            scripts,
            wakeups,
            shutdown,
        }
    }

    /// A pooled connection; errors become 503 `redis_unavailable`.
    pub(crate) async fn conn(&self) -> Result<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
    }

    /// The script registry.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Wakes waiting fetches of a topic on every sidecar.
    pub(crate) async fn wake(
        &self,
        conn: &mut deadpool_redis::Connection,
        keys: &TopicKeys,
    ) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(keys.wake_channel())
            .arg(0)
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// Readiness: Redis answers PING and holds every script.
    pub async fn check_ready(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        self.scripts.ensure_loaded(&mut conn).await?;
        Ok(())
    }
}
