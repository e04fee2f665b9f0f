//! The shared handle on Redis that domain modules ([`crate::broker`],
//! [`crate::coord`]) work through: the connections, the script registry,
//! long-poll wake-ups and the shutdown signal. Cheap to clone.
//!
//! ## Connections
//!
//! A few multiplexed connections (redis-rs `ConnectionManager`: pipelined,
//! reconnecting by itself with backoff, with connect and response timeouts)
//! are shared by every request, handed out round-robin. Nothing is checked out
//! exclusively: concurrent requests pipeline on the same socket, and nobody
//! (a long-poll included) can starve the others of a connection. A pool with
//! exclusive checkout (deadpool-redis, the first design) cost one extra
//! round trip per request for its health-check PING and measured at a
//! quarter of raw Redis throughput on single publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::scripts::Scripts;
use crate::wake::Wakeups;

/// A connection handle; clones share one multiplexed socket.
pub type Conn = ConnectionManager;

/// Round-robin set of shared multiplexed connections.
pub struct Connections {
    managers: Vec<ConnectionManager>,
    next: AtomicUsize,
}

impl Connections {
    /// `count` lazily connecting managers for `redis_url`: an unreachable
    /// Redis is not an error here; requests fail with 503 until it answers.
    pub fn new(redis_url: &str, count: usize) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        // Bounded waits: with Redis gone or hung, requests answer 503 within
        // seconds and never hang. The response timeout is generous enough for
        // the largest script (a 1000-message batch).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let managers = (0..count.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<redis::RedisResult<_>>()?;
        Ok(Self {
            managers,
            next: AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.managers.len();
        self.managers[i].clone()
    }

    /// How many connections there are.
    pub fn len(&self) -> usize {
        self.managers.len()
    }

    /// Never true: there is always at least one connection.
    pub fn is_empty(&self) -> bool {
        self.managers.is_empty()
    }
}

/// Connections, scripts, wake-ups and shutdown signal, shared by every operation.
#[derive(Clone)]
pub struct Store {
    connections: Arc<Connections>,
    scripts: Arc<Scripts>,
    wakeups: Wakeups,
    shutdown: watch::Receiver<bool>,
    /// `--strict`: refuse a Redis that may evict keys.
    strict: bool,
}

impl Store {
    /// Wraps the connections, the script registry, the long-poll wake-ups
    /// and the shutdown signal (which ends waiting calls early).
    pub fn new(
        connections: Arc<Connections>,
        scripts: Arc<Scripts>,
        wakeups: Wakeups,
        shutdown: watch::Receiver<bool>,
        strict: bool,
    ) -> Self {
        Self {
            connections,
            scripts,
            wakeups,
            shutdown,
            strict,
        }
    }

    /// A shared connection. Infallible today; kept fallible (and async) so
    /// call sites stay the same whatever hands connections out.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        Ok(self.connections.pick())
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
    pub(crate) async fn wake(&self, conn: &mut Conn, channel: &str) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(0)
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// How many shared Redis connections there are.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Redis's `maxmemory-policy` when it is not `noeviction` (eviction would
    /// silently delete streams, leases and idempotency records). None when
    /// it is safe or Redis does not let us read it (managed services).
    pub async fn eviction_policy(&self) -> Option<String> {
        let mut conn = self.conn().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.get(1).filter(|p| *p != "noeviction").cloned()
    }

    /// Readiness: Redis answers PING and holds every script; with
    /// `--strict`, also that it never evicts keys.
    pub async fn check_ready(&self) -> Result<()> {
        let ready = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            self.scripts.ensure_loaded(&mut conn).await?;
            if self.strict
                && let Some(policy) = self.eviction_policy().await
            {
                return Err(Error::EvictingRedis(policy));
            }
            Ok(())
        }
        .await;
        metrics::gauge!(crate::telemetry::REDIS_UP).set(if ready.is_ok() { 1.0 } else { 0.0 });
        ready
    }
}
