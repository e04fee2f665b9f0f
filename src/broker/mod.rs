//! Topics, publishing and history: the domain logic of the message broker.
//!
//! Everything here speaks Redis (through [`Broker`]) and the domain types of
//! [`crate::names`]; nothing here knows about HTTP. Each operation that changes
//! more than one key is one Lua script from [`crate::scripts`].

pub mod message;
pub mod publish;
pub mod topics;

use std::sync::Arc;

use crate::error::Result;
use crate::scripts::Scripts;

/// Default publish idempotency window: 24 hours.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Handle on Redis for the broker operations. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pool: deadpool_redis::Pool,
    scripts: Arc<Scripts>,
}

impl Broker {
    /// Wraps a connection pool and the script registry.
    pub fn new(pool: deadpool_redis::Pool, scripts: Arc<Scripts>) -> Self {
        Self { pool, scripts }
    }

    /// A pooled connection; errors become 503 `redis_unavailable`.
    pub(crate) async fn conn(&self) -> Result<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
    }

    /// The script registry.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Readiness: Redis answers PING and holds every script.
    pub async fn check_ready(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        self.scripts.ensure_loaded(&mut conn).await?;
        Ok(())
    }
}
