//! The shared handle on Redis that domain modules ([`crate::broker`],
//! [`crate::coord`]) work through: the connection pool, the script registry,
//! long-poll wake-ups and the shutdown signal. Cheap to clone.

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::Result;
use crate::scripts::Scripts;
use crate::wake::Wakeups;

/// Pool, scripts, wake-ups and shutdown signal, shared by every operation.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_redis::Pool,
    scripts: Arc<Scripts>,
    wakeups: Wakeups,
    shutdown: watch::Receiver<bool>,
}

impl Store {
    /// Wraps a connection pool, the script registry, the long-poll wake-ups
    /// and the shutdown signal (which ends waiting calls early).
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

    /// Local wake-ups for waiting calls.
    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// A receiver that turns true when the service shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Wakes calls waiting on `channel` on every sidecar.
    pub(crate) async fn wake(
        &self,
        conn: &mut deadpool_redis::Connection,
        channel: &str,
    ) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(0)
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// Pooled connections: (checked out now, idle).
    pub fn pool_status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size - status.available, status.available)
    }

    /// Readiness: Redis answers PING and holds every script.
    pub async fn check_ready(&self) -> Result<()> {
        let ready = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            self.scripts.ensure_loaded(&mut conn).await?;
            Ok(())
        }
        .await;
        metrics::gauge!(crate::telemetry::REDIS_UP).set(if ready.is_ok() { 1.0 } else { 0.0 });
        ready
    }
}
